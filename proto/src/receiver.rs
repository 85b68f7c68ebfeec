//! The remote's state machine: chunks arrive out of order from parallel
//! lanes and leave strictly in seq order for the replica.
//!
//! A Write frame is first *received* (the receiver notes the chunk and hands
//! it to a decode worker), then *decoded* (the worker reports plaintext or a
//! checksum/decode failure, which becomes a Nack and leaves the chunk
//! missing), then *released* once it and every earlier seq are complete, then
//! *applied* by the driver to the replica, and finally *stored* when a sync
//! covers it. Received acks go out as soon as the contiguous frontier moves;
//! Stored acks are cumulative and follow each sync. Duplicates (a seq already
//! released, or a chunk already held) are dropped, which makes every resend
//! by the primary harmless.
//!
//! On a Hello the receiver checks the peer (see [`crate::handshake`]) and
//! forgets everything not yet released: the primary resends every seq after
//! the stored one on each connection, and a new primary epoch may carry
//! different data under seqs the remote held only in memory.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::CodecError;
use crate::frame::{
    Ack, AckKind, Checkpoint, Flush, Frame, Hello, MarkerKind, Nack, NackReason, ReadRequest, Role,
    Trim, Write,
};
use crate::generation::Gen;
use crate::handshake::{self, HandshakeError};
use crate::planted::{self, Bug};
use crate::rtt::{Heartbeats, RttEstimate};
use crate::{Epoch, Seq};

/// One operation, in order, for the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apply {
    /// The chunks of one write, each with its volume offset, in order.
    Write {
        seq: Seq,
        chunks: Vec<(u64, Bytes)>,
    },
    Flush {
        seq: Seq,
    },
    Trim {
        seq: Seq,
        offset: u64,
        length: u64,
    },
    Checkpoint {
        seq: Seq,
        kind: u8,
        time_us: u64,
        label: String,
    },
    /// A generation changes hands (see [`crate::frame::Marker`]).
    Marker {
        seq: Seq,
        kind: MarkerKind,
        gen: Gen,
    },
    /// Answer the digests of this range as the replica is now.
    Digest {
        seq: Seq,
        offset: u64,
        length: u32,
        block: u32,
    },
}

impl Apply {
    pub fn seq(&self) -> Seq {
        match self {
            Apply::Write { seq, .. }
            | Apply::Flush { seq }
            | Apply::Trim { seq, .. }
            | Apply::Checkpoint { seq, .. }
            | Apply::Marker { seq, .. }
            | Apply::Digest { seq, .. } => *seq,
        }
    }

    /// Payload bytes carried.
    pub fn bytes(&self) -> u64 {
        match self {
            Apply::Write { chunks, .. } => chunks.iter().map(|(_, b)| b.len() as u64).sum(),
            _ => 0,
        }
    }
}

/// What the driver must do with an inbound frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Decode this chunk (on a worker) and report with [`Receiver::on_decoded`].
    Decode(Write),
    /// Already held or applied: drop it.
    Duplicate,
    /// Taken care of (a control operation queued, a heartbeat answered).
    Handled,
    /// Serve this read once [`Receiver::applied_upto`] reaches its `after_seq`.
    Read(ReadRequest),
    /// The peer said goodbye.
    Closed(crate::frame::Goodbye),
    /// A frame the remote does not expect from a primary.
    Unexpected(&'static str),
    /// The primary sent more than the remote holds in memory for writes
    /// waiting on an earlier seq: it does not respect its window. The
    /// session must end (a reconnect resends from the stored seq).
    Overloaded { held: u64, limit: u64 },
}

/// Decoded and decoding bytes a receiver holds for seqs not yet released,
/// unless configured otherwise: twice the largest in-flight window a primary
/// uses, so an honest primary never reaches it.
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 1 << 30;

/// Counters for the status display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub chunks: u64,
    pub duplicates: u64,
    pub checksum_failures: u64,
    pub decode_failures: u64,
    pub applied_ops: u64,
    pub applied_bytes: u64,
}

#[derive(Debug, Clone)]
enum Slot {
    Missing,
    Decoding(Epoch),
    Done(u64, Bytes),
}

#[derive(Debug)]
enum Pending {
    Write {
        count: u32,
        slots: Vec<Slot>,
        missing: u32,
        undecoded: u32,
    },
    Ready(Apply),
}

impl Pending {
    /// Every chunk has arrived (decoded or not).
    fn all_received(&self) -> bool {
        match self {
            Pending::Write { missing, .. } => *missing == 0,
            Pending::Ready(_) => true,
        }
    }
    fn all_decoded(&self) -> bool {
        match self {
            Pending::Write {
                missing, undecoded, ..
            } => *missing == 0 && *undecoded == 0,
            Pending::Ready(_) => true,
        }
    }
}

/// The remote side of the protocol.
#[derive(Debug)]
pub struct Receiver {
    epoch_seen: Epoch,
    stored_upto: Seq,
    applied_upto: Seq,
    released_upto: Seq,
    received_upto: Seq,
    ack_received_due: bool,
    ack_stored_due: bool,
    pending: BTreeMap<Seq, Pending>,
    pending_bytes: u64,
    /// Plaintext bytes claimed by chunks handed to the decode workers.
    decoding_bytes: u64,
    max_pending_bytes: u64,
    /// Chunks refused by a decode worker and not yet received again; their
    /// Nacks are repeated with each heartbeat in case one was lost.
    nacked: BTreeMap<(Seq, u32), NackReason>,
    apply: VecDeque<Apply>,
    transmits: VecDeque<Frame>,
    heartbeats: Heartbeats,
    stats: ReceiverStats,
}

impl Receiver {
    /// A receiver whose replica holds every seq up to `stored_upto`, having
    /// last seen a primary of `epoch_seen` (both from the remote's state).
    pub fn new(
        stored_upto: Seq,
        epoch_seen: Epoch,
        heartbeat_interval: Duration,
        now: Instant,
    ) -> Self {
        Receiver {
            epoch_seen,
            stored_upto,
            applied_upto: stored_upto,
            released_upto: stored_upto,
            received_upto: stored_upto,
            ack_received_due: false,
            ack_stored_due: false,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            decoding_bytes: 0,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            nacked: BTreeMap::new(),
            apply: VecDeque::new(),
            transmits: VecDeque::new(),
            heartbeats: Heartbeats::new(now, heartbeat_interval),
            stats: ReceiverStats::default(),
        }
    }

    /// The same receiver holding at most `bytes` for seqs not yet released.
    pub fn with_max_pending_bytes(mut self, bytes: u64) -> Self {
        self.max_pending_bytes = bytes;
        self
    }

    /// Checks the primary's Hello and returns this side's answer. `ours` is
    /// this remote's Hello template (volume, size, block size, features).
    /// With `rebase`, the pair decided to sync (or adopt the primary's
    /// volume): the stream restarts after that seq whatever this side
    /// applied of an earlier history, so the primary's position is taken
    /// as it is.
    pub fn on_hello(
        &mut self,
        ours: &Hello,
        theirs: &Hello,
        rebase: Option<Seq>,
        now: Instant,
    ) -> Result<Hello, HandshakeError> {
        handshake::check(ours, theirs)?;
        if theirs.role != Role::Primary {
            return Err(HandshakeError::SameRole(theirs.role));
        }
        if theirs.epoch < self.epoch_seen {
            return Err(HandshakeError::StaleEpoch {
                seen: self.epoch_seen,
                theirs: theirs.epoch,
            });
        }
        if rebase.is_none()
            && theirs.epoch > self.epoch_seen
            && theirs.stored_seq < self.released_upto
        {
            return Err(HandshakeError::PrimaryBehind {
                stored: self.released_upto,
                primary: theirs.stored_seq,
            });
        }
        if let Some(pos) = rebase {
            self.stored_upto = pos;
            self.applied_upto = pos;
            self.released_upto = pos;
            self.apply.clear();
        }
        self.epoch_seen = theirs.epoch;
        self.pending.clear();
        self.pending_bytes = 0;
        self.decoding_bytes = 0;
        self.nacked.clear();
        self.received_upto = self.released_upto;
        self.heartbeats.connected(now);
        Ok(Hello {
            epoch: theirs.epoch,
            stored_seq: self.stored_upto,
            ..ours.clone()
        })
    }

    pub fn on_disconnected(&mut self) {
        self.heartbeats.disconnected();
    }

    /// A frame from the primary, on a lane or the control stream.
    pub fn on_frame(&mut self, frame: Frame, now: Instant) -> Inbound {
        self.heartbeats.heard(now);
        match frame {
            Frame::Write(w) => self.on_write(w),
            Frame::Flush(Flush { seq, .. }) => self.on_ready(seq, Apply::Flush { seq }),
            Frame::Trim(Trim {
                seq,
                offset,
                length,
                ..
            }) => self.on_ready(
                seq,
                Apply::Trim {
                    seq,
                    offset,
                    length,
                },
            ),
            Frame::Checkpoint(Checkpoint {
                seq,
                kind,
                time_us,
                label,
                ..
            }) => self.on_ready(
                seq,
                Apply::Checkpoint {
                    seq,
                    kind,
                    time_us,
                    label,
                },
            ),
            Frame::Marker(m) => self.on_ready(
                m.seq,
                Apply::Marker {
                    seq: m.seq,
                    kind: m.kind,
                    gen: m.gen,
                },
            ),
            Frame::DigestRequest(d) => self.on_ready(
                d.seq,
                Apply::Digest {
                    seq: d.seq,
                    offset: d.offset,
                    length: d.length,
                    block: d.block,
                },
            ),
            Frame::Heartbeat(hb) => {
                if let Some(reply) = self.heartbeats.on_heartbeat(&hb, now) {
                    self.transmits.push_back(reply);
                    // Repeat acks and nacks with each heartbeat so a lost one heals.
                    self.ack_received_due = true;
                    self.ack_stored_due = true;
                    for (&(seq, index), &reason) in &self.nacked {
                        self.transmits
                            .push_back(Frame::Nack(Nack { seq, index, reason }));
                    }
                }
                Inbound::Handled
            }
            Frame::ReadRequest(r) => Inbound::Read(r),
            Frame::Goodbye(g) => Inbound::Closed(g),
            other => Inbound::Unexpected(other.kind_name()),
        }
    }

    fn on_write(&mut self, w: Write) -> Inbound {
        let seq = w.id.seq;
        if seq <= self.released_upto {
            self.stats.duplicates += 1;
            return Inbound::Duplicate;
        }
        let claimed = u64::from(w.chunk.plain_len);
        let held = self.pending_bytes + self.decoding_bytes + claimed;
        // The next seq to release is always taken: holding it can only let
        // memory go.
        if held > self.max_pending_bytes && seq != self.released_upto + 1 {
            return Inbound::Overloaded {
                held,
                limit: self.max_pending_bytes,
            };
        }
        let entry = self.pending.entry(seq).or_insert_with(|| Pending::Write {
            count: w.count,
            slots: vec![Slot::Missing; w.count as usize],
            missing: w.count,
            undecoded: 0,
        });
        let Pending::Write {
            count,
            slots,
            missing,
            undecoded,
        } = entry
        else {
            // A seq that is a control operation cannot also carry chunks.
            self.stats.duplicates += 1;
            return Inbound::Duplicate;
        };
        if *count != w.count || w.id.index >= *count {
            self.stats.decode_failures += 1;
            self.transmits.push_back(Frame::Nack(Nack {
                seq,
                index: w.id.index,
                reason: NackReason::Decode,
            }));
            return Inbound::Handled;
        }
        let slot = &mut slots[w.id.index as usize];
        if !matches!(slot, Slot::Missing) {
            self.stats.duplicates += 1;
            return Inbound::Duplicate;
        }
        *slot = Slot::Decoding(w.id.epoch);
        self.decoding_bytes += claimed;
        self.nacked.remove(&(seq, w.id.index));
        *missing -= 1;
        *undecoded += 1;
        self.stats.chunks += 1;
        self.advance_received();
        Inbound::Decode(w)
    }

    fn on_ready(&mut self, seq: Seq, op: Apply) -> Inbound {
        if seq <= self.released_upto || self.pending.contains_key(&seq) {
            self.stats.duplicates += 1;
            return Inbound::Duplicate;
        }
        self.pending.insert(seq, Pending::Ready(op));
        self.advance_received();
        self.release();
        Inbound::Handled
    }

    /// A decode worker's result for a chunk handed out by [`Inbound::Decode`].
    /// `offset` is the chunk's volume offset.
    pub fn on_decoded(&mut self, w: &Write, result: Result<Bytes, CodecError>) {
        let seq = w.id.seq;
        let Some(Pending::Write {
            slots,
            missing,
            undecoded,
            ..
        }) = self.pending.get_mut(&seq)
        else {
            return; // forgotten by a reconnect meanwhile
        };
        let Some(slot) = slots.get_mut(w.id.index as usize) else {
            return;
        };
        if !matches!(slot, Slot::Decoding(e) if *e == w.id.epoch) {
            return;
        }
        *undecoded -= 1;
        self.decoding_bytes = self
            .decoding_bytes
            .saturating_sub(u64::from(w.chunk.plain_len));
        match result {
            Ok(data) => {
                self.pending_bytes += data.len() as u64;
                *slot = Slot::Done(w.offset, data);
                self.release();
            }
            Err(e) => {
                *slot = Slot::Missing;
                *missing += 1;
                let reason = match e {
                    CodecError::Checksum { .. } => {
                        self.stats.checksum_failures += 1;
                        NackReason::Checksum
                    }
                    _ => {
                        self.stats.decode_failures += 1;
                        NackReason::Decode
                    }
                };
                self.nacked.insert((seq, w.id.index), reason);
                self.transmits.push_back(Frame::Nack(Nack {
                    seq,
                    index: w.id.index,
                    reason,
                }));
            }
        }
    }

    /// Moves the received frontier over seqs whose every chunk has arrived.
    fn advance_received(&mut self) {
        let before = self.received_upto;
        while let Some(p) = self.pending.get(&(self.received_upto + 1)) {
            if !p.all_received() {
                break;
            }
            self.received_upto += 1;
        }
        if self.received_upto > before {
            self.ack_received_due = true;
        }
    }

    /// Releases complete seqs, in order, to the apply queue.
    fn release(&mut self) {
        loop {
            let mut next = self.released_upto + 1;
            match self.pending.get(&next) {
                Some(p) if p.all_decoded() => {}
                _ if planted::active(Bug::ReleaseOutOfOrder)
                    && self
                        .pending
                        .get(&(next + 1))
                        .is_some_and(Pending::all_decoded) =>
                {
                    next += 1;
                }
                _ => break,
            }
            let op = match self.pending.remove(&next).expect("checked above") {
                Pending::Ready(op) => op,
                Pending::Write { slots, .. } => Apply::Write {
                    seq: next,
                    chunks: slots
                        .into_iter()
                        .map(|s| match s {
                            Slot::Done(off, data) => (off, data),
                            _ => unreachable!("all chunks decoded"),
                        })
                        .collect(),
                },
            };
            self.pending_bytes -= op.bytes();
            self.released_upto = next;
            self.received_upto = self.received_upto.max(next);
            if planted::active(Bug::ApplyTwice) && matches!(op, Apply::Write { .. }) {
                self.apply.push_back(op.clone());
            }
            self.apply.push_back(op);
        }
    }

    /// Queues a frame for the primary that the driver produced (the
    /// digests a [`Apply::Digest`] asked for).
    pub fn push_transmit(&mut self, frame: Frame) {
        self.transmits.push_back(frame);
    }

    /// The next operation to apply to the replica, in seq order.
    #[must_use]
    pub fn poll_apply(&mut self) -> Option<Apply> {
        self.apply.pop_front()
    }

    /// The driver wrote `seq` to the replica (not yet synced).
    pub fn on_applied(&mut self, op: &Apply) {
        self.applied_upto = self.applied_upto.max(op.seq());
        self.stats.applied_ops += 1;
        self.stats.applied_bytes += op.bytes();
    }

    /// A sync made every applied seq up to `upto` durable on the replica.
    pub fn on_synced(&mut self, upto: Seq) {
        let upto = upto.min(self.applied_upto);
        if upto > self.stored_upto {
            self.stored_upto = upto;
            self.ack_stored_due = true;
        }
    }

    /// The next frame for the primary: Nacks, heartbeat replies, acks.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        if let Some(f) = self.transmits.pop_front() {
            return Some(f);
        }
        if self.ack_received_due {
            self.ack_received_due = false;
            return Some(Frame::Ack(Ack {
                kind: AckKind::Received,
                upto: self.received_upto,
            }));
        }
        if self.ack_stored_due {
            self.ack_stored_due = false;
            return Some(Frame::Ack(Ack {
                kind: AckKind::Stored,
                upto: self.stored_upto,
            }));
        }
        None
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.heartbeats.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(hb) = self.heartbeats.on_timeout(now) {
            self.transmits.push_back(hb);
        }
    }

    pub fn epoch_seen(&self) -> Epoch {
        self.epoch_seen
    }
    pub fn stored_upto(&self) -> Seq {
        self.stored_upto
    }
    pub fn applied_upto(&self) -> Seq {
        self.applied_upto
    }
    pub fn released_upto(&self) -> Seq {
        self.released_upto
    }
    pub fn received_upto(&self) -> Seq {
        self.received_upto
    }
    /// Decoded bytes waiting for an earlier seq.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }
    pub fn rtt(&self) -> RttEstimate {
        self.heartbeats.rtt
    }
    pub fn peer_silent_for(&self, now: Instant) -> Option<Duration> {
        self.heartbeats.silent_for(now)
    }
}
