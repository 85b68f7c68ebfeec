//! Counters of one link direction: what came in, what was delivered, what
//! was dropped and why, what was duplicated, reordered or corrupted, the
//! queue's depth, and the one-way delay (send to delivery, queueing
//! included) seen by delivered packets. Byte counts are payload bytes, without
//! the per-packet overhead. `delta` turns two snapshots into an interval.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Why a packet never arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropCause {
    /// The drop-tail queue was full.
    Queue,
    /// Random or bursty loss on the wire.
    Loss,
    /// The link was down (scheduled outage).
    Outage,
}

/// Minimum, mean and maximum of a set of delays, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelayStats {
    pub count: u64,
    pub sum_ns: u128,
    pub min_ns: u64,
    pub max_ns: u64,
}

impl DelayStats {
    pub fn record(&mut self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        if self.count == 0 || ns < self.min_ns {
            self.min_ns = ns;
        }
        self.max_ns = self.max_ns.max(ns);
        self.count += 1;
        self.sum_ns += ns as u128;
    }

    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos((self.sum_ns / self.count as u128) as u64))
    }

    pub fn min(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.min_ns))
    }

    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.max_ns))
    }
}

/// Cumulative counters of one direction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_delivered: u64,
    pub bytes_delivered: u64,
    pub dropped_queue: u64,
    pub dropped_queue_bytes: u64,
    pub dropped_loss: u64,
    pub dropped_loss_bytes: u64,
    pub dropped_outage: u64,
    pub dropped_outage_bytes: u64,
    /// Extra copies made (each is also counted in `packets_delivered`).
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
    /// Wire bytes (payload + overhead) waiting for or in serialization.
    pub queue_bytes: u64,
    pub queue_peak_bytes: u64,
    /// Packets past the queue, in propagation, not yet delivered.
    pub in_flight: u64,
    pub delay: DelayStats,
}

impl LinkStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_queue + self.dropped_loss + self.dropped_outage
    }

    pub(crate) fn count_drop(&mut self, cause: DropCause, bytes: usize) {
        let b = bytes as u64;
        match cause {
            DropCause::Queue => {
                self.dropped_queue += 1;
                self.dropped_queue_bytes += b;
            }
            DropCause::Loss => {
                self.dropped_loss += 1;
                self.dropped_loss_bytes += b;
            }
            DropCause::Outage => {
                self.dropped_outage += 1;
                self.dropped_outage_bytes += b;
            }
        }
    }

    /// The counters accumulated between `earlier` and `self`. Gauges (queue,
    /// in flight) are taken from `self`; the delay keeps only count and sum
    /// (min/max are not recoverable per interval) so only its mean is valid.
    pub fn delta(&self, earlier: &LinkStats) -> LinkStats {
        LinkStats {
            packets_in: self.packets_in - earlier.packets_in,
            bytes_in: self.bytes_in - earlier.bytes_in,
            packets_delivered: self.packets_delivered - earlier.packets_delivered,
            bytes_delivered: self.bytes_delivered - earlier.bytes_delivered,
            dropped_queue: self.dropped_queue - earlier.dropped_queue,
            dropped_queue_bytes: self.dropped_queue_bytes - earlier.dropped_queue_bytes,
            dropped_loss: self.dropped_loss - earlier.dropped_loss,
            dropped_loss_bytes: self.dropped_loss_bytes - earlier.dropped_loss_bytes,
            dropped_outage: self.dropped_outage - earlier.dropped_outage,
            dropped_outage_bytes: self.dropped_outage_bytes - earlier.dropped_outage_bytes,
            duplicated: self.duplicated - earlier.duplicated,
            reordered: self.reordered - earlier.reordered,
            corrupted: self.corrupted - earlier.corrupted,
            queue_bytes: self.queue_bytes,
            queue_peak_bytes: self.queue_peak_bytes,
            in_flight: self.in_flight,
            delay: DelayStats {
                count: self.delay.count - earlier.delay.count,
                sum_ns: self.delay.sum_ns - earlier.delay.sum_ns,
                min_ns: 0,
                max_ns: 0,
            },
        }
    }
}
