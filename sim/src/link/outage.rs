//! Scheduled outages: the link is down from `start` for `duration`, once or
//! repeating every `every`. Times are on the link's own clock (the same
//! arbitrary origin as the `now` given to the model; for the relay, its
//! start). Text form: `10s..12s` (down from 10 s to 12 s), `10s+2s` (the
//! same), with an optional `/30s` suffix to repeat every 30 s.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::config::ConfigError;
use dtu_proto::units;

/// Latest start, longest outage and longest period: 30 days, past any
/// test or soak run. Outage times are added to each other and to the
/// link's clock, so a bound keeps those sums far from overflowing.
pub const MAX_SCHEDULE: Duration = Duration::from_secs(30 * 24 * 3600);

/// One (possibly repeating) outage window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    pub start: Duration,
    pub duration: Duration,
    /// Period of repetition; `None` for a single outage.
    pub every: Option<Duration>,
}

impl Outage {
    /// A single outage from `start` to `end`.
    pub fn between(start: Duration, end: Duration) -> Self {
        Self {
            start,
            duration: end.saturating_sub(start),
            every: None,
        }
    }

    /// Whether the link is down at `t`.
    pub fn is_down(&self, t: Duration) -> bool {
        if t < self.start || self.duration.is_zero() {
            return false;
        }
        let since = t - self.start;
        match self.every {
            None => since < self.duration,
            Some(p) => {
                let phase = since.as_nanos() % p.as_nanos().max(1);
                phase < self.duration.as_nanos()
            }
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let longest = [Some(self.start), Some(self.duration), self.every]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or_default();
        if longest > MAX_SCHEDULE {
            return Err(ConfigError::Invalid {
                field: "outage",
                msg: format!(
                    "{self}: times must be at most {}",
                    units::format_duration(MAX_SCHEDULE)
                ),
            });
        }
        if self.duration.is_zero() {
            return Err(ConfigError::Invalid {
                field: "outage",
                msg: format!("{self}: the outage must last longer than 0"),
            });
        }
        if let Some(p) = self.every {
            if p < self.duration {
                return Err(ConfigError::Invalid {
                    field: "outage",
                    msg: format!("{self}: the period must be at least the outage's length"),
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}..{}",
            units::format_duration(self.start),
            units::format_duration(self.start.saturating_add(self.duration))
        )?;
        if let Some(p) = self.every {
            write!(f, "/{}", units::format_duration(p))?;
        }
        Ok(())
    }
}

impl FromStr for Outage {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::Invalid {
            field: "outage",
            msg: format!(
                "`{s}`: expected START..END or START+LENGTH, optionally /PERIOD, e.g. 10s..12s/60s"
            ),
        };
        let time = |v: &str| {
            units::parse_duration_within(v, Duration::ZERO, MAX_SCHEDULE).map_err(|e| {
                ConfigError::Invalid {
                    field: "outage",
                    msg: e.to_string(),
                }
            })
        };
        let (window, every) = match s.split_once('/') {
            Some((w, p)) => (w, Some(time(p)?)),
            None => (s, None),
        };
        let o = if let Some((a, b)) = window.split_once("..") {
            let (a, b) = (time(a)?, time(b)?);
            if b <= a {
                return Err(bad());
            }
            Outage {
                start: a,
                duration: b - a,
                every,
            }
        } else if let Some((a, b)) = window.split_once('+') {
            Outage {
                start: time(a)?,
                duration: time(b)?,
                every,
            }
        } else {
            return Err(bad());
        };
        o.validate()?;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn single_and_repeating() {
        let o: Outage = "10s..12s".parse().unwrap();
        assert!(!o.is_down(s(9.999)));
        assert!(o.is_down(s(10.0)));
        assert!(o.is_down(s(11.999)));
        assert!(!o.is_down(s(12.0)));
        assert!(!o.is_down(s(70.5)));
        let r: Outage = "10s+2s/60s".parse().unwrap();
        assert!(r.is_down(s(70.5)));
        assert!(!r.is_down(s(72.5)));
        assert_eq!(r.to_string(), "10s..12s/60s");
    }

    #[test]
    fn rejects_nonsense() {
        assert!("12s..10s".parse::<Outage>().is_err());
        assert!("10s".parse::<Outage>().is_err());
        assert!("0s+5s/1s".parse::<Outage>().is_err());
    }

    #[test]
    fn absurd_times_are_errors_not_overflows() {
        for bad in [
            "1e19s+1e19s",
            "0s+31d",
            "0s+1000h",
            "1s..1e30s",
            "0s+1s/1e19s",
            "nan+1s",
        ] {
            let e = bad.parse::<Outage>().unwrap_err().to_string();
            assert!(e.starts_with("outage"), "{bad}: {e}");
        }
        let huge = Outage {
            start: Duration::MAX,
            duration: Duration::MAX,
            every: None,
        };
        assert!(huge.validate().is_err());
        assert!(huge.to_string().contains(".."));
    }
}
