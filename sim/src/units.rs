//! Human units for link and workload parameters: rates (`1.544Mbit`, `56k`,
//! `100M`), durations (`40ms`, `1.5s`, `250us`), probabilities (`0.1%`,
//! `0.001`) and byte sizes (`64KiB`, `1MB`, `1500`). Decimal prefixes are
//! powers of 1000 (as link rates are quoted), binary ones (`Ki`, `Mi`, `Gi`)
//! powers of 1024. Every parser has a matching formatter so that summaries
//! print values the way a user would type them.

use std::time::Duration;

/// A value that could not be understood; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("`{0}` is not a rate: expected a number of bit/s with an optional k/M/G prefix, e.g. 1.544Mbit, 56k, 100M")]
    Rate(String),
    #[error(
        "`{0}` is not a duration: expected a number with a unit (ns, us, ms, s, min), e.g. 40ms"
    )]
    Duration(String),
    #[error("`{0}` is not a probability: expected a percentage (0.1%) or a fraction between 0 and 1 (0.001)")]
    Probability(String),
    #[error("`{0}` is not a size: expected bytes with an optional prefix, e.g. 1500, 64KiB, 2MB")]
    Bytes(String),
}

fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    // "1e3" is a number but "1ms" must not eat the "m"; only allow 'e' when digits follow.
    let mut end = end;
    while end > 0 && s[..end].ends_with('e') {
        end -= 1;
    }
    let num: f64 = s[..end].parse().ok()?;
    if !num.is_finite() {
        return None;
    }
    Some((num, s[end..].trim()))
}

/// Parses a rate in bit/s. `0`, `unlimited` and `inf` mean "no rate limit" (0).
pub fn parse_rate(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    if matches!(
        t.to_ascii_lowercase().as_str(),
        "unlimited" | "inf" | "none"
    ) {
        return Ok(0);
    }
    let err = || UnitError::Rate(s.to_string());
    let (num, rest) = split_number(t).ok_or_else(err)?;
    if num < 0.0 {
        return Err(err());
    }
    let (mult, unit) = match rest.chars().next() {
        Some('k') | Some('K') => (1e3, &rest[1..]),
        Some('m') | Some('M') => (1e6, &rest[1..]),
        Some('g') | Some('G') => (1e9, &rest[1..]),
        Some('t') | Some('T') => (1e12, &rest[1..]),
        _ => (1.0, rest),
    };
    match unit.to_ascii_lowercase().as_str() {
        "" | "bit" | "bits" | "bps" | "bit/s" | "b/s" | "bits/s" => {}
        _ => return Err(err()),
    }
    // Reject "MB/s"-style byte rates rather than silently reading them as bits.
    if unit.starts_with('B') {
        return Err(err());
    }
    Ok((num * mult).round() as u64)
}

/// Formats a rate in bit/s the way presets are quoted (`1.544Mbit`, `56kbit`).
pub fn format_rate(bps: u64) -> String {
    if bps == 0 {
        return "unlimited".into();
    }
    let (v, p) = if bps >= 1_000_000_000 && (bps / 1_000_000) * 1_000_000 == bps {
        (bps as f64 / 1e9, "G")
    } else if bps >= 1_000_000 {
        (bps as f64 / 1e6, "M")
    } else if bps >= 1_000 {
        (bps as f64 / 1e3, "k")
    } else {
        (bps as f64, "")
    };
    format!("{}{}bit", trim_float(v), p)
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Parses a duration with a unit. A bare `0` is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    let err = || UnitError::Duration(s.to_string());
    let (num, unit) = split_number(t).ok_or_else(err)?;
    if num < 0.0 {
        return Err(err());
    }
    let secs = match unit {
        "ns" => num * 1e-9,
        "us" | "µs" => num * 1e-6,
        "ms" => num * 1e-3,
        "s" | "sec" => num,
        "m" | "min" => num * 60.0,
        "h" => num * 3600.0,
        "" if num == 0.0 => 0.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

/// Formats a duration compactly (`40ms`, `1.5s`, `250us`).
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0".into()
    } else if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{}us", trim_float(ns as f64 / 1e3))
    } else if ns < 1_000_000_000 {
        format!("{}ms", trim_float(ns as f64 / 1e6))
    } else {
        format!("{}s", trim_float(ns as f64 / 1e9))
    }
}

/// Parses a probability: `0.1%` or a fraction `0.001`; must lie in [0, 1].
pub fn parse_probability(s: &str) -> Result<f64, UnitError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    let err = || UnitError::Probability(s.to_string());
    let (num, unit) = split_number(t).ok_or_else(err)?;
    let p = match unit {
        "%" => num / 100.0,
        "" => num,
        _ => return Err(err()),
    };
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(err())
    }
}

/// Formats a probability as a percentage (`0.1%`).
pub fn format_probability(p: f64) -> String {
    let pct = p * 100.0;
    let s = format!("{pct:.4}");
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

/// Parses a byte count: plain, decimal (`64k`, `64KB` = 64000) or binary (`64KiB` = 65536).
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    let err = || UnitError::Bytes(s.to_string());
    let (num, unit) = split_number(t).ok_or_else(err)?;
    if num < 0.0 {
        return Err(err());
    }
    let mult = match unit {
        "" | "B" => 1.0,
        "k" | "K" | "kB" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "Ki" | "KiB" => 1024.0,
        "Mi" | "MiB" => 1024.0 * 1024.0,
        "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "Ti" | "TiB" => 1024.0f64.powi(4),
        _ => return Err(err()),
    };
    Ok((num * mult).round() as u64)
}

/// Formats a byte count with a binary prefix (`64KiB`, `1.5MiB`).
pub fn format_bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let v = b as f64;
    if v < K {
        format!("{b}B")
    } else if v < K * K {
        format!("{}KiB", trim_float(v / K))
    } else if v < K * K * K {
        format!("{}MiB", trim_float(v / K / K))
    } else {
        format!("{}GiB", trim_float(v / K / K / K))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1.544Mbit").unwrap(), 1_544_000);
        assert_eq!(parse_rate("56k").unwrap(), 56_000);
        assert_eq!(parse_rate("33.6kbit/s").unwrap(), 33_600);
        assert_eq!(parse_rate("100M").unwrap(), 100_000_000);
        assert_eq!(parse_rate("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("44.736Mbps").unwrap(), 44_736_000);
        assert_eq!(parse_rate("9600").unwrap(), 9600);
        assert_eq!(parse_rate("unlimited").unwrap(), 0);
        assert!(parse_rate("10MB/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-1M").is_err());
        assert_eq!(format_rate(1_544_000), "1.544Mbit");
        assert_eq!(format_rate(56_000), "56kbit");
        assert_eq!(format_rate(1_000_000_000), "1Gbit");
        assert_eq!(parse_rate(&format_rate(33_600)).unwrap(), 33_600);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("40ms").unwrap(), Duration::from_millis(40));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("2min").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("40").is_err());
        assert!(parse_duration("ms").is_err());
        assert_eq!(format_duration(Duration::from_millis(40)), "40ms");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.5ms");
    }

    #[test]
    fn probabilities() {
        assert!((parse_probability("0.1%").unwrap() - 0.001).abs() < 1e-12);
        assert!((parse_probability("0.001").unwrap() - 0.001).abs() < 1e-12);
        assert_eq!(parse_probability("100%").unwrap(), 1.0);
        assert!(parse_probability("150%").is_err());
        assert!(parse_probability("2").is_err());
        assert_eq!(format_probability(0.001), "0.1%");
    }

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("1500").unwrap(), 1500);
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_bytes("64k").unwrap(), 64000);
        assert_eq!(parse_bytes("2MB").unwrap(), 2_000_000);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert!(parse_bytes("12 apples").is_err());
        assert_eq!(format_bytes(65536), "64KiB");
    }
}
