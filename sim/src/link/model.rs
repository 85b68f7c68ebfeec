//! [`Link`]: one direction of an emulated link as a pure, seeded state
//! machine on an abstract clock. The caller passes `now` (a `Duration` since
//! any origin it likes: the relay's start, or the simulator's virtual zero)
//! to [`Link::send`], then asks [`Link::next_event`] when something is due
//! and collects it with [`Link::poll`]. No I/O, no clock, no threads: the
//! same seed and the same calls give the same deliveries, bit for bit.
//!
//! A packet's life: refused if an outage is in force; tail-dropped if the
//! queue (wire bytes still to serialize, including the packet being sent)
//! would exceed the limit; otherwise serialized after the packets ahead of
//! it at `rate` (wire bytes = payload + overhead; timing is exact: the end
//! of serialization is computed from the bits sent since the link was last
//! idle, so rounding never accumulates); refused if an outage has begun when
//! its turn comes; lost on the wire (it did use the link) by the loss
//! process; then delayed by `delay ± jitter`, never overtaking the packet
//! before it unless picked for reordering, which holds it back by
//! `reorder_delay` outside that order; maybe corrupted (one bit flipped) and
//! maybe duplicated (the copy arrives right after the original). Packets
//! already in propagation when an outage begins still arrive.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use super::config::{ConfigError, LinkConfig, LossModel};
use super::loss::GeState;
use super::stats::{DropCause, LinkStats};

/// What became of a packet handed to [`Link::send_tagged`].
#[derive(Debug, PartialEq)]
pub enum Verdict<T> {
    /// It will be delivered at `at` (a duplicate, if any, at the same time).
    Scheduled { at: Duration },
    /// It will never be delivered; the data is handed back (the TCP relay
    /// retransmits it).
    Dropped {
        cause: DropCause,
        data: Vec<u8>,
        tag: T,
    },
}

impl<T> Verdict<T> {
    pub fn is_dropped(&self) -> bool {
        matches!(self, Verdict::Dropped { .. })
    }
}

/// A packet coming out of the link.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<T> {
    pub data: Vec<u8>,
    pub tag: T,
    /// When it was handed to the link.
    pub sent_at: Duration,
    /// When it is delivered (may be earlier than the `now` it was polled at).
    pub at: Duration,
    /// Index of the bit that was flipped, if corrupted.
    pub corrupted_bit: Option<u64>,
    /// Whether this is the extra copy of a duplicated packet.
    pub duplicate: bool,
    /// Whether this packet was held back to be reordered.
    pub reordered: bool,
}

struct Scheduled<T> {
    at: Duration,
    seq: u64,
    d: Delivery<T>,
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<T> Eq for Scheduled<T> {}
impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Scheduled<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

enum LossState {
    None,
    Random(f64),
    Bursty(GeState),
}

/// One direction of an emulated link. `T` is an opaque tag carried with each
/// packet (the relay uses it to know where to deliver); `()` by default.
pub struct Link<T = ()> {
    cfg: LinkConfig,
    queue_limit: u64,
    loss: LossState,
    rng: ChaCha8Rng,
    busy_epoch: Duration,
    busy_bits: u128,
    busy_until: Duration,
    /// (end of serialization, wire bytes) of packets not yet fully sent.
    queue: VecDeque<(Duration, u64)>,
    last_fifo_at: Duration,
    pending: BinaryHeap<Reverse<Scheduled<T>>>,
    seq: u64,
    stats: LinkStats,
}

impl<T: Clone> Link<T> {
    /// A link with this configuration and random seed.
    pub fn new(cfg: LinkConfig, seed: u64) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let loss = match cfg.loss_model() {
            LossModel::None => LossState::None,
            LossModel::Random(p) => LossState::Random(p),
            LossModel::Bursty(ge) => LossState::Bursty(GeState::new(ge)),
        };
        Ok(Self {
            queue_limit: cfg.queue_limit(),
            cfg,
            loss,
            rng: ChaCha8Rng::seed_from_u64(seed),
            busy_epoch: Duration::ZERO,
            busy_bits: 0,
            busy_until: Duration::ZERO,
            queue: VecDeque::new(),
            last_fifo_at: Duration::ZERO,
            pending: BinaryHeap::new(),
            seq: 0,
            stats: LinkStats::default(),
        })
    }

    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    /// Whether the link is in a scheduled outage at `t`.
    pub fn is_down(&self, t: Duration) -> bool {
        self.cfg.outages.iter().any(|o| o.is_down(t))
    }

    /// Time the link needs to serialize `wire_bytes` (zero when unlimited).
    pub fn serialization_time(&self, wire_bytes: u64) -> Duration {
        if self.cfg.rate_bps == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(ceil_div(
                wire_bytes as u128 * 8 * 1_000_000_000,
                self.cfg.rate_bps as u128,
            ) as u64)
        }
    }

    fn advance(&mut self, now: Duration) {
        while let Some(&(end, bytes)) = self.queue.front() {
            if end > now {
                break;
            }
            self.queue.pop_front();
            self.stats.queue_bytes -= bytes;
        }
    }

    /// Free queue space at `now`, in wire bytes.
    pub fn queue_room(&mut self, now: Duration) -> u64 {
        self.advance(now);
        self.queue_limit.saturating_sub(self.stats.queue_bytes)
    }

    /// Wire bytes in the queue at `now`.
    pub fn queue_bytes(&mut self, now: Duration) -> u64 {
        self.advance(now);
        self.stats.queue_bytes
    }

    /// When the packet at the head of the queue finishes serializing, i.e.
    /// when queue room next grows (`None` if the queue is empty).
    pub fn next_queue_departure(&self) -> Option<Duration> {
        self.queue.front().map(|&(end, _)| end)
    }

    /// Sends a packet with the configured per-packet overhead.
    pub fn send_tagged(&mut self, now: Duration, data: Vec<u8>, tag: T) -> Verdict<T> {
        let overhead = self.cfg.overhead_bytes;
        self.send_with_overhead(now, data, tag, overhead)
    }

    /// Sends a packet that costs `overhead` bytes on the wire besides its data.
    pub fn send_with_overhead(
        &mut self,
        now: Duration,
        data: Vec<u8>,
        tag: T,
        overhead: u32,
    ) -> Verdict<T> {
        self.stats.packets_in += 1;
        self.stats.bytes_in += data.len() as u64;
        self.advance(now);
        let drop = |s: &mut Self, cause, data: Vec<u8>, tag| {
            s.stats.count_drop(cause, data.len());
            Verdict::Dropped { cause, data, tag }
        };
        if self.is_down(now) {
            return drop(self, DropCause::Outage, data, tag);
        }
        let wire = data.len() as u64 + overhead as u64;
        let tx_end = if self.cfg.rate_bps == 0 {
            now
        } else {
            if self.stats.queue_bytes + wire > self.queue_limit {
                return drop(self, DropCause::Queue, data, tag);
            }
            let start = now.max(self.busy_until);
            if start > now && self.is_down(start) {
                return drop(self, DropCause::Outage, data, tag);
            }
            if now >= self.busy_until {
                self.busy_epoch = now;
                self.busy_bits = 0;
            }
            self.busy_bits += wire as u128 * 8;
            let end = self.busy_epoch
                + Duration::from_nanos(ceil_div(
                    self.busy_bits * 1_000_000_000,
                    self.cfg.rate_bps as u128,
                ) as u64);
            self.busy_until = end;
            self.queue.push_back((end, wire));
            self.stats.queue_bytes += wire;
            self.stats.queue_peak_bytes = self.stats.queue_peak_bytes.max(self.stats.queue_bytes);
            end
        };
        let lost = match &mut self.loss {
            LossState::None => false,
            LossState::Random(p) => self.rng.gen::<f64>() < *p,
            LossState::Bursty(ge) => ge.lose(&mut self.rng),
        };
        if lost {
            return drop(self, DropCause::Loss, data, tag);
        }
        let mut arrive = tx_end + self.cfg.delay;
        if !self.cfg.jitter.is_zero() {
            let j = self.cfg.jitter.as_nanos() as i128;
            let off = self.rng.gen_range(-j..=j);
            let base = arrive.as_nanos() as i128 + off;
            arrive = Duration::from_nanos(base.max(tx_end.as_nanos() as i128) as u64);
        }
        let reordered = self.cfg.reorder > 0.0 && self.rng.gen::<f64>() < self.cfg.reorder;
        if reordered {
            arrive += self.cfg.reorder_delay;
            self.stats.reordered += 1;
        } else {
            arrive = arrive.max(self.last_fifo_at);
            self.last_fifo_at = arrive;
        }
        let mut data = data;
        let mut corrupted_bit = None;
        if self.cfg.corrupt > 0.0 && self.rng.gen::<f64>() < self.cfg.corrupt && !data.is_empty() {
            let bit = self.rng.gen_range(0..data.len() as u64 * 8);
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
            corrupted_bit = Some(bit);
            self.stats.corrupted += 1;
        }
        let duplicate = self.cfg.duplicate > 0.0 && self.rng.gen::<f64>() < self.cfg.duplicate;
        let d = Delivery {
            data,
            tag,
            sent_at: now,
            at: arrive,
            corrupted_bit,
            duplicate: false,
            reordered,
        };
        let seq = self.seq;
        self.seq += 2;
        if duplicate {
            self.stats.duplicated += 1;
            let copy = Delivery {
                duplicate: true,
                ..d.clone()
            };
            // The copy sorts right after the original.
            self.schedule(copy, seq + 1);
        }
        self.schedule(d, seq);
        Verdict::Scheduled { at: arrive }
    }

    fn schedule(&mut self, d: Delivery<T>, seq: u64) {
        self.stats.in_flight += 1;
        self.pending.push(Reverse(Scheduled { at: d.at, seq, d }));
    }

    /// When the next packet is due, if any is in flight.
    pub fn next_event(&self) -> Option<Duration> {
        self.pending.peek().map(|Reverse(s)| s.at)
    }

    /// The next packet due at or before `now`, in delivery order.
    pub fn poll(&mut self, now: Duration) -> Option<Delivery<T>> {
        if self.pending.peek()?.0.at > now {
            return None;
        }
        let Reverse(s) = self.pending.pop()?;
        self.stats.in_flight -= 1;
        self.stats.packets_delivered += 1;
        self.stats.bytes_delivered += s.d.data.len() as u64;
        self.stats.delay.record(s.d.at - s.d.sent_at);
        Some(s.d)
    }

    /// Like [`Link::poll`], keeping only the payload.
    pub fn poll_deliver(&mut self, now: Duration) -> Option<Vec<u8>> {
        self.poll(now).map(|d| d.data)
    }

    /// The counters, with the queue depth brought up to `now`.
    pub fn stats_at(&mut self, now: Duration) -> LinkStats {
        self.advance(now);
        self.stats.clone()
    }

    /// The counters as of the last call.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }
}

impl Link<()> {
    /// Sends an untagged packet.
    pub fn send(&mut self, now: Duration, data: Vec<u8>) -> Verdict<()> {
        self.send_tagged(now, data, ())
    }
}

fn ceil_div(a: u128, b: u128) -> u128 {
    a.div_ceil(b)
}
