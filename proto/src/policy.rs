//! The acknowledgement policy: at which stage of its journey a host write is
//! answered (the patent's spoof-packet triggers), with an optional delay, a
//! master switch for spoofing, and the dirty-cache threshold below which the
//! host waits for the true acknowledgement.
//!
//! Spoofing (answering at any stage before `remote-stored`) is in force only
//! while the host's last reported dirty % is at or above the threshold. Until
//! the host reports a dirty %, spoofing is off unless the threshold is 0: the
//! safe answer is the default one.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The stages a write passes through, in order; each can be the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trigger {
    /// In the primary DTU's memory.
    Received = 0,
    /// Durable in the primary's nvbuf.
    Buffered = 1,
    /// Handed to the link.
    Sent = 2,
    /// The remote DTU says it has the write in memory.
    RemoteReceived = 3,
    /// Written and synced on the replica: the true acknowledgement.
    RemoteStored = 4,
}

impl Trigger {
    /// How many triggers there are.
    pub const COUNT: usize = 5;

    pub const ALL: [Trigger; Trigger::COUNT] = [
        Trigger::Received,
        Trigger::Buffered,
        Trigger::Sent,
        Trigger::RemoteReceived,
        Trigger::RemoteStored,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Trigger::Received => "received",
            Trigger::Buffered => "buffered",
            Trigger::Sent => "sent",
            Trigger::RemoteReceived => "remote-received",
            Trigger::RemoteStored => "remote-stored",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// True when answering at this stage is a spoof ack.
    pub fn is_spoof(self) -> bool {
        self != Trigger::RemoteStored
    }
}

/// One value per trigger, indexed by [`Trigger`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerTrigger<T>(pub [T; Trigger::COUNT]);

impl<T> PerTrigger<T> {
    /// The values with their triggers, in stage order.
    pub fn iter(&self) -> impl Iterator<Item = (Trigger, &T)> {
        Trigger::ALL.into_iter().zip(self.0.iter())
    }
}

impl<T> std::ops::Index<Trigger> for PerTrigger<T> {
    type Output = T;
    fn index(&self, t: Trigger) -> &T {
        &self.0[t.index()]
    }
}

impl<T> std::ops::IndexMut<Trigger> for PerTrigger<T> {
    fn index_mut(&mut self, t: Trigger) -> &mut T {
        &mut self.0[t.index()]
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A trigger name that is not one of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown trigger {0:?}: expected received, buffered, sent, remote-received or remote-stored"
)]
pub struct UnknownTrigger(pub String);

impl FromStr for Trigger {
    type Err = UnknownTrigger;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Trigger::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownTrigger(s.to_string()))
    }
}

/// Longest delay after the trigger: one minute. It is longer than the I/O
/// timeout of the usual hosts (Linux SCSI and NVMe: 30 s), so a longer
/// delay would only make the host fail its writes. The sender also clamps
/// to it, so a policy built in code cannot push its timers past what an
/// `Instant` holds.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Why an [`AckPolicy`] cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("delay of {0:?} is longer than the maximum of {MAX_DELAY:?}")]
    DelayTooLong(Duration),
    #[error("{0} is not a percentage from 0 to 100")]
    DirtyThreshold(f64),
}

/// The user's choice of when to answer the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AckPolicy {
    pub trigger: Trigger,
    /// Wait this long after the trigger before answering.
    pub delay: Duration,
    /// Off: every write waits for `remote-stored`, whatever the trigger.
    pub spoofing: bool,
    /// Spoof only while the host's dirty % is at or above this (0..=100).
    pub dirty_threshold: f64,
}

impl Default for AckPolicy {
    fn default() -> Self {
        AckPolicy {
            trigger: Trigger::Buffered,
            delay: Duration::ZERO,
            spoofing: true,
            dirty_threshold: 75.0,
        }
    }
}

impl AckPolicy {
    /// Checks the bounds: a delay of at most [`MAX_DELAY`] and a dirty
    /// threshold from 0 to 100 (not NaN).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.delay > MAX_DELAY {
            return Err(PolicyError::DelayTooLong(self.delay));
        }
        if !(0.0..=100.0).contains(&self.dirty_threshold) {
            return Err(PolicyError::DirtyThreshold(self.dirty_threshold));
        }
        Ok(())
    }

    /// Whether spoof acks are in force given the host's last dirty report.
    pub fn spoofing_active(&self, dirty_pct: Option<f64>) -> bool {
        if !self.spoofing || !self.trigger.is_spoof() {
            return false;
        }
        match dirty_pct {
            Some(d) => d >= self.dirty_threshold,
            None => self.dirty_threshold <= 0.0,
        }
    }

    /// The stage that answers a write now, and the delay after it (at most
    /// [`MAX_DELAY`], whatever the policy says). The delay belongs to the
    /// chosen trigger; the fallback to `remote-stored` below the threshold
    /// answers as soon as the replica has the write.
    pub fn effective(&self, dirty_pct: Option<f64>) -> (Trigger, Duration) {
        self.answer_when(self.spoofing_active(dirty_pct))
    }

    /// The stage that answers a write and the delay after it, with spoof
    /// acks in force or not (the sender also keeps them in force while a
    /// spoofed backlog drains).
    pub fn answer_when(&self, spoofing: bool) -> (Trigger, Duration) {
        if spoofing || self.trigger == Trigger::RemoteStored {
            (self.trigger, self.delay.min(MAX_DELAY))
        } else {
            (Trigger::RemoteStored, Duration::ZERO)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Trigger::ALL {
            assert_eq!(t.name().parse::<Trigger>(), Ok(t));
        }
        assert!("stored".parse::<Trigger>().is_err());
    }

    #[test]
    fn effective_trigger_table() {
        for trigger in Trigger::ALL {
            for spoofing in [false, true] {
                for (dirty, above) in [
                    (None, false),
                    (Some(10.0), false),
                    (Some(75.0), true),
                    (Some(99.0), true),
                ] {
                    let p = AckPolicy {
                        trigger,
                        spoofing,
                        ..AckPolicy::default()
                    };
                    let expect = if spoofing && above {
                        trigger
                    } else {
                        Trigger::RemoteStored
                    };
                    assert_eq!(
                        p.effective(dirty).0,
                        expect,
                        "{trigger} spoofing={spoofing} dirty={dirty:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn bounds_are_checked_and_the_effective_delay_clamped() {
        let p = AckPolicy {
            delay: Duration::MAX,
            ..AckPolicy::default()
        };
        assert_eq!(p.validate(), Err(PolicyError::DelayTooLong(Duration::MAX)));
        assert_eq!(p.effective(Some(100.0)), (Trigger::Buffered, MAX_DELAY));
        let ok = AckPolicy {
            delay: MAX_DELAY,
            ..AckPolicy::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        for t in [f64::NAN, -1.0, 100.5, f64::INFINITY] {
            let p = AckPolicy {
                dirty_threshold: t,
                ..AckPolicy::default()
            };
            assert!(p.validate().is_err(), "{t}");
        }
    }

    #[test]
    fn threshold_zero_spoofs_without_a_report() {
        let p = AckPolicy {
            dirty_threshold: 0.0,
            ..AckPolicy::default()
        };
        assert_eq!(p.effective(None).0, Trigger::Buffered);
    }
}
