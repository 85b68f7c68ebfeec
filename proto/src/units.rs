//! Human units for everything a user types: rates (`1.544Mbit`, `56k`,
//! `100M`), durations (`40ms`, `1.5s`, `250us`), probabilities (`0.1%`,
//! `0.001`) and byte sizes (`64KiB`, `1MB`, `1500`). Decimal prefixes are
//! powers of 1000 (as link rates are quoted), binary ones (`Ki`, `Mi`, `Gi`)
//! powers of 1024. Every parser has a matching formatter so that summaries
//! print values the way a user would type them. Pure code, shared by the DTU
//! (config files, flags, the control socket) and the link emulator.
//!
//! Numbers from outside are bounded where they are parsed: NaN, infinities,
//! negative values and values that do not fit the type are errors, never a
//! saturated or wrapped number. Rates are bounded here for every user
//! ([`MIN_RATE_BPS`], [`MAX_RATE_BPS`]); durations and sizes have bounds
//! that depend on the field, so [`parse_duration_within`] and
//! [`parse_bytes_within`] take them from the caller's named constants.

use std::time::Duration;

/// Slowest link rate accepted, in bit/s. The patent's slowest link is a
/// 56k modem and the emulator's presets start at 33.6k; below 1 kbit/s a
/// value is almost certainly a unit typo (`1.5` meant as Mbit/s).
pub const MIN_RATE_BPS: u64 = 1_000;
/// Fastest link rate accepted, in bit/s: 1 Tbit/s, above the fastest
/// Ethernet port in use (800 Gbit/s). Rates are multiplied by round-trip
/// times to size windows, so an absurd rate would only overflow those sums.
pub const MAX_RATE_BPS: u64 = 1_000_000_000_000;

/// A value that could not be understood or is out of bounds; the message
/// says what was expected. Callers add the field or flag it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("`{0}` is not a rate: expected a number of bit/s with an optional k/M/G prefix, e.g. 1.544Mbit, 56k, 100M")]
    Rate(String),
    #[error(
        "`{0}` is not a duration: expected a number with a unit (ns, us, ms, s, min, h), e.g. 40ms"
    )]
    Duration(String),
    #[error("`{0}` is not a probability: expected a percentage (0.1%) or a fraction between 0 and 1 (0.001)")]
    Probability(String),
    #[error("`{0}` is not a size: expected bytes with an optional prefix, e.g. 1500, 64KiB, 2MB")]
    Bytes(String),
    #[error("`{0}` is negative")]
    Negative(String),
    #[error("`{value}` is more than the largest value accepted here, {max}")]
    TooLarge { value: String, max: String },
    #[error("`{value}` is less than the smallest value accepted here, {min}")]
    TooSmall { value: String, min: String },
}

/// How a number in the text went wrong.
enum NumberError {
    /// No number at all.
    Missing,
    /// Infinite (or so large that f64 holds it as infinity).
    Huge,
}

fn split_number(s: &str) -> Result<(f64, &str), NumberError> {
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
    // Only digits, signs, dots and exponents reach the parser, so "nan" and
    // "inf" are never numbers; "1e999" is, and parses to infinity.
    let num: f64 = s[..end].parse().map_err(|_| NumberError::Missing)?;
    if !num.is_finite() {
        return Err(NumberError::Huge);
    }
    Ok((num, s[end..].trim()))
}

/// Splits `s` into a non-negative finite number and its unit, with the
/// error of the parser at hand (`what`) for text that holds no number.
fn number<'a>(
    s: &str,
    t: &'a str,
    what: fn(String) -> UnitError,
    max: impl FnOnce() -> String,
) -> Result<(f64, &'a str), UnitError> {
    let (num, rest) = split_number(t).map_err(|e| match e {
        NumberError::Missing => what(s.to_string()),
        NumberError::Huge => UnitError::TooLarge {
            value: s.to_string(),
            max: max(),
        },
    })?;
    if num < 0.0 {
        return Err(UnitError::Negative(s.to_string()));
    }
    Ok((num, rest))
}

/// `num * mult` as a u64, or an error when it does not fit.
fn to_u64(s: &str, v: f64, max: u64, fmt: fn(u64) -> String) -> Result<u64, UnitError> {
    let v = v.round();
    // u64::MAX as f64 rounds up to 2^64, so `>=` catches every value that
    // does not fit before the cast would saturate it.
    if v >= u64::MAX as f64 || v > max as f64 {
        return Err(UnitError::TooLarge {
            value: s.to_string(),
            max: fmt(max),
        });
    }
    Ok(v as u64)
}

/// Parses a rate in bit/s. `0`, `unlimited` and `inf` mean "no rate limit"
/// (0); any other rate lies in [`MIN_RATE_BPS`]..=[`MAX_RATE_BPS`].
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
    let (num, rest) = number(s, t, UnitError::Rate, || format_rate(MAX_RATE_BPS))?;
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
    let bps = to_u64(s, num * mult, MAX_RATE_BPS, format_rate)?;
    if bps != 0 && bps < MIN_RATE_BPS {
        return Err(UnitError::TooSmall {
            value: s.to_string(),
            min: format_rate(MIN_RATE_BPS),
        });
    }
    Ok(bps)
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

/// Parses a duration with a unit. A bare `0` is accepted. Anything that
/// does not fit a [`Duration`] is an error; most fields want
/// [`parse_duration_within`] and their own bounds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    let err = || UnitError::Duration(s.to_string());
    let too_large = || UnitError::TooLarge {
        value: s.to_string(),
        max: format_duration(Duration::MAX),
    };
    let (num, unit) = number(s, t, UnitError::Duration, || format_duration(Duration::MAX))?;
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
    Duration::try_from_secs_f64(secs).map_err(|_| too_large())
}

/// Parses a duration and checks that it lies in `min..=max`.
pub fn parse_duration_within(s: &str, min: Duration, max: Duration) -> Result<Duration, UnitError> {
    let d = parse_duration(s).map_err(|e| match e {
        // Name the field's own maximum rather than the type's.
        UnitError::TooLarge { value, .. } => UnitError::TooLarge {
            value,
            max: format_duration(max),
        },
        other => other,
    })?;
    if d > max {
        return Err(UnitError::TooLarge {
            value: s.to_string(),
            max: format_duration(max),
        });
    }
    if d < min {
        return Err(UnitError::TooSmall {
            value: s.to_string(),
            min: format_duration(min),
        });
    }
    Ok(d)
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
    // Every way a number can go wrong is "not a probability" here.
    let (num, unit) = split_number(t).map_err(|_| err())?;
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

/// Parses a byte count: plain, decimal (`64k`, `64KB` = 64000) or binary
/// (`64KiB` = 65536). Anything that does not fit a u64 is an error; most
/// fields want [`parse_bytes_within`] and their own bounds.
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    parse_bytes_within(s, 0, u64::MAX)
}

/// Parses a byte count and checks that it lies in `min..=max`.
pub fn parse_bytes_within(s: &str, min: u64, max: u64) -> Result<u64, UnitError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    let err = || UnitError::Bytes(s.to_string());
    let (num, unit) = number(s, t, UnitError::Bytes, || format_bytes(max))?;
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
    let b = to_u64(s, num * mult, max, format_bytes)?;
    if b < min {
        return Err(UnitError::TooSmall {
            value: s.to_string(),
            min: format_bytes(min),
        });
    }
    Ok(b)
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
    } else if v < K * K * K * K {
        format!("{}GiB", trim_float(v / K / K / K))
    } else if v < K * K * K * K * K {
        format!("{}TiB", trim_float(v / K / K / K / K))
    } else {
        format!("{}PiB", trim_float(v / K / K / K / K / K))
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

    #[test]
    fn bad_numbers_are_errors_not_saturated_values() {
        for bad in ["nan", "NaN", "inf", "-inf", "infs", "nanms"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("-5ms"),
            Err(UnitError::Negative("-5ms".into()))
        );
        assert!(matches!(parse_bytes("-1"), Err(UnitError::Negative(_))));
        assert!(matches!(parse_rate("-1M"), Err(UnitError::Negative(_))));
        // Larger than the type: an error, never u64::MAX or a panic.
        assert!(matches!(
            parse_bytes("1e30"),
            Err(UnitError::TooLarge { .. })
        ));
        assert!(matches!(parse_bytes("16EiB"), Err(UnitError::Bytes(_)),));
        assert!(matches!(
            parse_bytes("20000000TiB"),
            Err(UnitError::TooLarge { .. })
        ));
        // 1e19 s still fits a Duration (which is why fields need bounds)...
        assert!(parse_duration("1e19s").is_ok());
        // ...1e20 s does not.
        assert!(matches!(
            parse_duration("1e20s"),
            Err(UnitError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_duration("1e999s"),
            Err(UnitError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_rate("1e30"),
            Err(UnitError::TooLarge { .. })
        ));
    }

    #[test]
    fn rates_are_bounded() {
        assert_eq!(parse_rate("1Tbit").unwrap(), MAX_RATE_BPS);
        assert!(matches!(
            parse_rate("1.5Tbit"),
            Err(UnitError::TooLarge { .. })
        ));
        assert_eq!(parse_rate("1k").unwrap(), MIN_RATE_BPS);
        let e = parse_rate("1.5").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`1.5` is less than the smallest value accepted here, 1kbit"
        );
        assert_eq!(parse_rate("0").unwrap(), 0, "0 still means unlimited");
    }

    #[test]
    fn bounded_parsers_name_the_bound() {
        let max = Duration::from_secs(60);
        assert_eq!(
            parse_duration_within("1.5s", Duration::ZERO, max),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_duration_within("61s", Duration::ZERO, max)
                .unwrap_err()
                .to_string(),
            "`61s` is more than the largest value accepted here, 60s"
        );
        // Even beyond Duration's range, the field's bound is what is named.
        assert_eq!(
            parse_duration_within("1e19s", Duration::ZERO, max),
            Err(UnitError::TooLarge {
                value: "1e19s".into(),
                max: "60s".into()
            })
        );
        assert!(matches!(
            parse_duration_within("0", Duration::from_millis(1), max),
            Err(UnitError::TooSmall { .. })
        ));
        assert_eq!(parse_bytes_within("4KiB", 4096, 1 << 20), Ok(4096));
        assert_eq!(
            parse_bytes_within("2MiB", 4096, 1 << 20)
                .unwrap_err()
                .to_string(),
            "`2MiB` is more than the largest value accepted here, 1MiB"
        );
        assert!(matches!(
            parse_bytes_within("1", 4096, 1 << 20),
            Err(UnitError::TooSmall { .. })
        ));
        assert_eq!(format_bytes(1 << 50), "1PiB");
        assert_eq!(format_bytes(3 << 40), "3TiB");
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic_and_keep_their_bounds(s in "\\PC{0,24}") {
            let max = Duration::from_secs(60);
            if let Ok(d) = parse_duration_within(&s, Duration::from_millis(1), max) {
                proptest::prop_assert!(d >= Duration::from_millis(1) && d <= max);
            }
            if let Ok(b) = parse_bytes_within(&s, 4096, 1 << 30) {
                proptest::prop_assert!((4096..=1 << 30).contains(&b));
            }
            if let Ok(r) = parse_rate(&s) {
                proptest::prop_assert!(r == 0 || (MIN_RATE_BPS..=MAX_RATE_BPS).contains(&r));
            }
            if let Ok(p) = parse_probability(&s) {
                proptest::prop_assert!((0.0..=1.0).contains(&p));
            }
            let _ = parse_duration(&s);
            let _ = parse_bytes(&s);
        }

        #[test]
        fn numbers_with_units_never_panic(
            num in proptest::num::f64::ANY,
            unit in proptest::sample::select(vec!["", "s", "ms", "ns", "h", "min", "KiB", "TiB", "G", "Mbit", "%"]),
        ) {
            let s = format!("{num}{unit}");
            let _ = parse_duration(&s);
            let _ = parse_bytes(&s);
            let _ = parse_rate(&s);
            let _ = parse_probability(&s);
            let _ = parse_duration_within(&s, Duration::ZERO, Duration::from_secs(1));
        }
    }
}
