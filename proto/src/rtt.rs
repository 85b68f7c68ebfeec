//! Heartbeats and the round-trip time they measure, shared by both state
//! machines.
//!
//! Each side sends a heartbeat every interval while connected and answers the
//! peer's heartbeats with a reply echoing the timestamp; a reply yields an RTT
//! sample, smoothed as in RFC 6298. Timestamps are microseconds since an
//! origin chosen by the sender, so no clock value crosses the link with any
//! meaning to the receiver.

use std::time::{Duration, Instant};

use crate::frame::{Frame, Heartbeat};

/// Smoothed round-trip time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RttEstimate {
    pub latest: Option<Duration>,
    pub smoothed: Option<Duration>,
    pub variance: Duration,
    pub min: Option<Duration>,
}

impl RttEstimate {
    pub fn sample(&mut self, rtt: Duration) {
        self.latest = Some(rtt);
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        match self.smoothed {
            None => {
                self.smoothed = Some(rtt);
                self.variance = rtt / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(rtt);
                self.variance = (self.variance * 3 + diff) / 4;
                self.smoothed = Some((s * 7 + rtt) / 8);
            }
        }
    }
}

/// Heartbeat timing and RTT for one side of a connection.
#[derive(Debug, Clone)]
pub struct Heartbeats {
    origin: Instant,
    interval: Duration,
    next_due: Option<Instant>,
    last_heard: Option<Instant>,
    pub rtt: RttEstimate,
}

impl Heartbeats {
    pub fn new(origin: Instant, interval: Duration) -> Self {
        Heartbeats {
            origin,
            interval,
            next_due: None,
            last_heard: None,
            rtt: RttEstimate::default(),
        }
    }

    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_micros() as u64
    }

    /// Starts the heartbeat clock for a new connection.
    pub fn connected(&mut self, now: Instant) {
        self.next_due = Some(now);
        self.last_heard = Some(now);
    }

    pub fn disconnected(&mut self) {
        self.next_due = None;
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_due
    }

    /// The heartbeat to send if one is due.
    pub fn on_timeout(&mut self, now: Instant) -> Option<Frame> {
        let due = self.next_due?;
        if now < due {
            return None;
        }
        self.next_due = Some(now + self.interval);
        Some(Frame::Heartbeat(Heartbeat {
            sent_at_us: self.micros(now),
            echo_us: 0,
            reply: false,
        }))
    }

    /// Handles the peer's heartbeat: a request gets a reply, a reply gives an
    /// RTT sample.
    pub fn on_heartbeat(&mut self, hb: &Heartbeat, now: Instant) -> Option<Frame> {
        self.last_heard = Some(now);
        if hb.reply {
            let now_us = self.micros(now);
            if hb.echo_us <= now_us {
                self.rtt.sample(Duration::from_micros(now_us - hb.echo_us));
            }
            None
        } else {
            Some(Frame::Heartbeat(Heartbeat {
                sent_at_us: self.micros(now),
                echo_us: hb.sent_at_us,
                reply: true,
            }))
        }
    }

    /// Notes any other frame from the peer as a sign of life.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
    }

    /// How long the peer has been silent, if connected.
    pub fn silent_for(&self, now: Instant) -> Option<Duration> {
        self.last_heard.map(|t| now.saturating_duration_since(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_reply_measures_rtt() {
        let t0 = Instant::now();
        let mut a = Heartbeats::new(t0, Duration::from_secs(1));
        let mut b = Heartbeats::new(t0 + Duration::from_secs(5), Duration::from_secs(1));
        a.connected(t0);
        let Some(Frame::Heartbeat(req)) = a.on_timeout(t0) else {
            panic!("no heartbeat due")
        };
        assert!(a.on_timeout(t0 + Duration::from_millis(10)).is_none());
        let Some(Frame::Heartbeat(rep)) = b.on_heartbeat(&req, t0 + Duration::from_millis(20))
        else {
            panic!("no reply")
        };
        assert!(a
            .on_heartbeat(&rep, t0 + Duration::from_millis(40))
            .is_none());
        assert_eq!(a.rtt.latest, Some(Duration::from_millis(40)));
    }
}
