//! Wall times of checkpoints (microseconds since the Unix epoch) written the
//! way an operator reads them, in UTC, without a calendar crate.

/// `2026-12-02 12:34:56.789012 UTC` for `us` microseconds since the Unix epoch.
pub fn fmt_time_us(us: u64) -> String {
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{frac:06} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Year, month, day of `days` after 1970-01-01 (H. Hinnant's algorithm,
/// for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(fmt_time_us(0), "1970-01-01 00:00:00.000000 UTC");
        // 2000-02-29 12:00:00.5
        assert_eq!(
            fmt_time_us(951_825_600_500_000),
            "2000-02-29 12:00:00.500000 UTC"
        );
        assert_eq!(
            fmt_time_us(1_796_215_584_000_001),
            "2026-12-02 12:46:24.000001 UTC"
        );
        // The largest value does not overflow.
        let _ = fmt_time_us(u64::MAX);
    }
}
