//! The primary's state machine: one record per mirrored operation, from the
//! moment the host hands it over until the remote has stored it.
//!
//! The sender assigns seqs, follows each operation through the stages
//! received → buffered → sent → remote-received → remote-stored, decides
//! which seq a lane should send next (new writes and retransmits, within an
//! in-flight window that bounds the remote's memory), reacts to the remote's
//! cumulative Acks and its Nacks, and computes when each host operation is
//! answered under the [`AckPolicy`] in force.
//!
//! Host operations are answered strictly in seq order. That makes a flush
//! trivially correct (it is answered once every earlier write is) and means
//! the acknowledged writes always form a prefix of the stream, the property
//! the remote's in-order apply preserves on the replica.
//!
//! The sender holds no data: payloads live in the nvbuf, and the driver
//! fetches the records of the seq that [`Sender::poll_send`] names. It never
//! reads a clock; every event carries `now`.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::frame::{Ack, AckKind, Frame, Nack};
use crate::histogram::Histogram;
use crate::policy::{AckPolicy, PerTrigger, Trigger};
use crate::rtt::{Heartbeats, RttEstimate};
use crate::{Epoch, Seq};

/// What a seq stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Write,
    Flush,
    Trim,
    Checkpoint,
    /// A generation marker ([`crate::frame::Marker`]).
    Marker,
    /// A digest request ([`crate::frame::DigestRequest`]).
    Digest,
}

/// Sender settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub policy: AckPolicy,
    /// Payload bytes that may be sent and not yet stored by the remote.
    pub max_inflight_bytes: u64,
    /// Resend a seq the remote has not acknowledged as received after this
    /// long. `None` relies on the transport's own reliability (QUIC); a
    /// reconnect resends everything unstored either way.
    pub retransmit_timeout: Option<Duration>,
    pub heartbeat_interval: Duration,
    /// Once the link has been down this long, operations waiting for a
    /// later trigger are answered at `buffered` (the nvbuf holds them) until
    /// it is back, like VVR's `synchronous=override`: a dead link must not
    /// take the host down. `None` waits for the remote however long.
    pub degrade_after: Option<Duration>,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            policy: AckPolicy::default(),
            max_inflight_bytes: 64 << 20,
            retransmit_timeout: None,
            heartbeat_interval: Duration::from_secs(1),
            degrade_after: None,
        }
    }
}

/// A host operation answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub seq: Seq,
    pub kind: OpKind,
    /// The stage that answered it.
    pub trigger: Trigger,
    /// Time from submission to answer.
    pub latency: Duration,
    /// Answered by a fold: the operation reached the primary's local copy
    /// and its changed-block map instead of the journal (see
    /// [`Sender::fold`]).
    pub folded: bool,
}

/// Why the sender refuses an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenderError {
    #[error("remote acknowledged seq {acked} as {kind:?}, but only seqs up to {highest} exist")]
    AckBeyondHighest {
        kind: AckKind,
        acked: Seq,
        highest: Seq,
    },
    #[error("recovered seq {got} does not follow seq {expected_after}")]
    RecoveryOutOfOrder { got: Seq, expected_after: Seq },
}

/// Counters for the status display.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SenderStats {
    /// Host operations answered by each trigger.
    pub answered_by: PerTrigger<u64>,
    /// Seqs sent again (after a Nack, a timeout or a reconnect).
    pub retransmits: u64,
    pub nacks: u64,
    pub sent_bytes: u64,
    /// From submission to `remote-stored`, for host operations: the
    /// primary→replica delay.
    pub replication_delay: Histogram,
    /// From submission to the host's answer.
    pub answer_latency: Histogram,
    /// The same, split by the trigger that answered.
    pub answer_latency_by_trigger: PerTrigger<Histogram>,
    /// Operations answered by a fold into the changed-block map.
    pub folded: u64,
}

#[derive(Debug, Clone)]
struct Op {
    kind: OpKind,
    bytes: u64,
    submitted: Instant,
    /// When each stage was first reached.
    stage_at: PerTrigger<Option<Instant>>,
    answered: bool,
    queued: bool,
    in_flight: bool,
    /// The remote of the current session acknowledged it as received (a
    /// remote that restarted has forgotten what it only held in memory).
    received_now: bool,
    last_sent: Option<Instant>,
    /// Times the retransmit timer fired for it this session: each doubles
    /// the wait before the next (up to [`MAX_BACKOFF_SHIFT`]), so a link
    /// that drops a full window is not flooded with the same window again.
    timeouts: u32,
    /// Recovered from the nvbuf after a restart: no host waits for it.
    recovered: bool,
}

/// Most doublings of the retransmit timeout for one operation.
pub const MAX_BACKOFF_SHIFT: u32 = 4;

/// `rto` doubled once per earlier timeout, at most [`MAX_BACKOFF_SHIFT`] times.
fn backoff(rto: Duration, timeouts: u32) -> Duration {
    rto.saturating_mul(1 << timeouts.min(MAX_BACKOFF_SHIFT))
}

/// The primary side of the protocol.
#[derive(Debug)]
pub struct Sender {
    cfg: SenderConfig,
    epoch: Epoch,
    /// Seq of `ops[0]`.
    base: Seq,
    ops: VecDeque<Op>,
    answered_upto: Seq,
    buffered_upto: Seq,
    received_upto: Seq,
    stored_upto: Seq,
    queue: BTreeSet<Seq>,
    inflight_bytes: u64,
    connected: bool,
    dirty: Option<f64>,
    /// The highest seq answered before the replica stored it while the
    /// dirty threshold (or a dead link) called for it. Until the replica
    /// stores it, spoofing stays on: see [`Sender::draining_spoofed`].
    spoofed_upto: Seq,
    answers: VecDeque<Answer>,
    transmits: VecDeque<Frame>,
    answer_timer: Option<Instant>,
    heartbeats: Heartbeats,
    stats: SenderStats,
    /// The latest `now` seen: time never goes backwards for the sender.
    last_now: Instant,
    /// Since when no connection is up (a new sender has none yet).
    down_since: Option<Instant>,
}

impl Sender {
    /// A sender whose next seq is `next_seq` (1 for a new volume, or one past
    /// the last record recovered from the nvbuf).
    pub fn new(cfg: SenderConfig, epoch: Epoch, next_seq: Seq, now: Instant) -> Self {
        let next_seq = next_seq.max(1);
        Sender {
            heartbeats: Heartbeats::new(now, cfg.heartbeat_interval),
            cfg,
            epoch,
            base: next_seq,
            ops: VecDeque::new(),
            answered_upto: next_seq - 1,
            buffered_upto: next_seq - 1,
            received_upto: next_seq - 1,
            stored_upto: next_seq - 1,
            queue: BTreeSet::new(),
            inflight_bytes: 0,
            connected: false,
            dirty: None,
            spoofed_upto: 0,
            answers: VecDeque::new(),
            transmits: VecDeque::new(),
            answer_timer: None,
            stats: SenderStats::default(),
            last_now: now,
            down_since: Some(now),
        }
    }

    /// Whether the link has been down longer than
    /// [`SenderConfig::degrade_after`]: operations are answered at
    /// `buffered` at the latest.
    pub fn degraded(&self, now: Instant) -> bool {
        self.degrade_at(now).is_some_and(|t| t <= now)
    }

    /// When the link will count as down for [`SenderConfig::degrade_after`]
    /// if nothing is heard: a connection QUIC still holds open counts as
    /// down once the remote has been silent that long (QUIC's own idle
    /// timeout is far longer).
    fn degrade_at(&self, now: Instant) -> Option<Instant> {
        let after = self.cfg.degrade_after?;
        let since = if self.connected {
            let silent = self.heartbeats.silent_for(now)?;
            now.checked_sub(silent)?
        } else {
            self.down_since?
        };
        since.checked_add(after)
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The seq the next submitted operation gets.
    pub fn next_seq(&self) -> Seq {
        self.base + self.ops.len() as Seq
    }

    /// The highest seq assigned so far (0: none).
    pub fn highest_seq(&self) -> Seq {
        self.next_seq() - 1
    }

    fn op_mut(&mut self, seq: Seq) -> Option<&mut Op> {
        seq.checked_sub(self.base)
            .and_then(|i| self.ops.get_mut(i as usize))
    }

    fn op(&self, seq: Seq) -> Option<&Op> {
        seq.checked_sub(self.base)
            .and_then(|i| self.ops.get(i as usize))
    }

    /// A host operation arrives; `bytes` is its payload size (0 for a flush).
    /// Returns its seq. It has reached the `received` stage.
    pub fn submit(&mut self, kind: OpKind, bytes: u64, now: Instant) -> Seq {
        let seq = self.next_seq();
        let mut stage_at = PerTrigger::default();
        stage_at[Trigger::Received] = Some(now);
        self.ops.push_back(Op {
            kind,
            bytes,
            submitted: now,
            stage_at,
            answered: false,
            queued: false,
            in_flight: false,
            received_now: false,
            last_sent: None,
            timeouts: 0,
            recovered: false,
        });
        self.advance(now);
        seq
    }

    /// Re-adds an operation recovered from the nvbuf after a restart: it is
    /// buffered already and no host is waiting for it. Must be called in seq
    /// order before any `submit`.
    pub fn recover(
        &mut self,
        seq: Seq,
        kind: OpKind,
        bytes: u64,
        now: Instant,
    ) -> Result<(), SenderError> {
        if self.ops.is_empty() {
            // The first recovered record sets where the stream resumes.
            self.base = seq;
            self.answered_upto = seq - 1;
            self.buffered_upto = seq - 1;
            self.received_upto = seq - 1;
            self.stored_upto = seq - 1;
        }
        if seq != self.next_seq() {
            return Err(SenderError::RecoveryOutOfOrder {
                got: seq,
                expected_after: self.highest_seq(),
            });
        }
        let mut stage_at = PerTrigger::default();
        stage_at[Trigger::Received] = Some(now);
        stage_at[Trigger::Buffered] = Some(now);
        self.ops.push_back(Op {
            kind,
            bytes,
            submitted: now,
            stage_at,
            answered: true,
            queued: true,
            in_flight: false,
            received_now: false,
            last_sent: None,
            timeouts: 0,
            recovered: true,
        });
        self.queue.insert(seq);
        self.buffered_upto = seq;
        self.answered_upto = seq;
        Ok(())
    }

    /// Every seq up to `upto` is durable in the nvbuf.
    pub fn on_buffered(&mut self, upto: Seq, now: Instant) {
        let upto = upto.min(self.highest_seq());
        while self.buffered_upto < upto {
            let seq = self.buffered_upto + 1;
            self.buffered_upto = seq;
            let stored = seq <= self.stored_upto;
            if let Some(op) = self.op_mut(seq) {
                op.stage_at[Trigger::Buffered].get_or_insert(now);
                if !stored && !op.in_flight && !op.queued {
                    op.queued = true;
                    self.queue.insert(seq);
                }
            }
        }
        self.advance(now);
    }

    /// The next seq a lane should send, if the link is up and the window has
    /// room. The driver sends that seq's records and calls [`Sender::on_sent`].
    #[must_use]
    pub fn poll_send(&mut self, now: Instant) -> Option<Seq> {
        self.clock(now);
        if !self.connected {
            return None;
        }
        let first = *self.queue.first()?;
        let bytes = self.op(first).map_or(0, |op| op.bytes);
        // The seqs the remote needs before it can release anything go
        // whatever the window says: the window may be full of later seqs
        // the remote holds but cannot release without them (one lost, one
        // nacked, or resent after a reconnect).
        let seq = if self.inflight_bytes == 0
            || self.inflight_bytes + bytes <= self.cfg.max_inflight_bytes
            || first <= self.received_upto + 1
        {
            first
        } else {
            let needed = self.received_upto + 1;
            if !self.queue.contains(&needed) {
                return None;
            }
            needed
        };
        let bytes = self.op(seq).map_or(0, |op| op.bytes);
        self.queue.remove(&seq);
        let resend;
        {
            let op = self.op_mut(seq).expect("queued seqs are tracked");
            op.queued = false;
            op.in_flight = true;
            resend = op.last_sent.is_some();
        }
        if resend {
            self.stats.retransmits += 1;
        }
        self.inflight_bytes += bytes;
        Some(seq)
    }

    /// The records of `seq` have been handed to the link.
    pub fn on_sent(&mut self, seq: Seq, now: Instant) {
        if let Some(op) = self.op_mut(seq) {
            op.stage_at[Trigger::Sent].get_or_insert(now);
            op.last_sent = Some(now);
            let bytes = op.bytes;
            self.stats.sent_bytes += bytes;
        }
        self.advance(now);
    }

    /// A frame from the remote on the control stream.
    pub fn on_frame(&mut self, frame: &Frame, now: Instant) -> Result<(), SenderError> {
        self.heartbeats.heard(now);
        match frame {
            Frame::Ack(a) => self.on_ack(*a, now)?,
            Frame::Nack(n) => self.on_nack(*n, now),
            Frame::Heartbeat(hb) => {
                if let Some(reply) = self.heartbeats.on_heartbeat(hb, now) {
                    self.transmits.push_back(reply);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_ack(&mut self, ack: Ack, now: Instant) -> Result<(), SenderError> {
        if ack.upto > self.highest_seq() {
            return Err(SenderError::AckBeyondHighest {
                kind: ack.kind,
                acked: ack.upto,
                highest: self.highest_seq(),
            });
        }
        match ack.kind {
            AckKind::Received => {
                self.mark_range(self.received_upto, ack.upto, Trigger::RemoteReceived, now);
                self.received_upto = self.received_upto.max(ack.upto);
            }
            AckKind::Stored => {
                self.mark_range(self.stored_upto, ack.upto, Trigger::RemoteStored, now);
                for seq in self.stored_upto + 1..=ack.upto {
                    let mut freed = 0;
                    let mut delay = None;
                    if let Some(op) = self.op_mut(seq) {
                        if !op.recovered {
                            delay = Some(now.saturating_duration_since(op.submitted));
                        }
                        if op.in_flight {
                            op.in_flight = false;
                            freed = op.bytes;
                        }
                        op.queued = false;
                    }
                    self.inflight_bytes -= freed;
                    self.queue.remove(&seq);
                    if let Some(d) = delay {
                        self.stats.replication_delay.record(d);
                    }
                }
                self.stored_upto = self.stored_upto.max(ack.upto);
                self.received_upto = self.received_upto.max(ack.upto);
                self.buffered_upto = self.buffered_upto.max(ack.upto);
            }
        }
        self.advance(now);
        Ok(())
    }

    /// Marks `stage` (and every earlier stage not yet reached) on the seqs
    /// in `(from, to]`: a later stage implies the earlier ones.
    fn mark_range(&mut self, from: Seq, to: Seq, stage: Trigger, now: Instant) {
        let start = (from + 1).max(self.base);
        for seq in start..=to {
            if let Some(op) = self.op_mut(seq) {
                for t in &mut op.stage_at.0[..=stage.index()] {
                    t.get_or_insert(now);
                }
                if stage >= Trigger::RemoteReceived {
                    op.received_now = true;
                }
            }
        }
    }

    fn on_nack(&mut self, nack: Nack, now: Instant) {
        self.stats.nacks += 1;
        if nack.seq <= self.stored_upto {
            return;
        }
        self.requeue(nack.seq);
        self.advance(now);
    }

    fn requeue(&mut self, seq: Seq) {
        let Some(op) = self.op_mut(seq) else { return };
        if op.queued || op.stage_at[Trigger::Buffered].is_none() {
            return;
        }
        let freed = if op.in_flight { op.bytes } else { 0 };
        op.in_flight = false;
        op.queued = true;
        self.inflight_bytes -= freed;
        self.queue.insert(seq);
    }

    /// The connection is up and the remote has stored every seq up to
    /// `remote_stored`. Everything after it that is buffered will be (re)sent.
    pub fn on_connected(&mut self, remote_stored: Seq, now: Instant) -> Result<(), SenderError> {
        self.connected = true;
        self.down_since = None;
        self.heartbeats.connected(now);
        // This remote has received nothing of this session yet: what an
        // earlier one held in memory only may be gone with it.
        self.received_upto = self.stored_upto.max(remote_stored.min(self.highest_seq()));
        for op in &mut self.ops {
            op.received_now = false;
            op.timeouts = 0;
        }
        if remote_stored > self.stored_upto {
            self.on_ack(
                Ack {
                    kind: AckKind::Stored,
                    upto: remote_stored,
                },
                now,
            )?;
        }
        Ok(())
    }

    /// The remote is known to be gone since `since` (a promoted primary's
    /// peer was the site that was lost): while no connection is up, the
    /// link counts as down from then, so operations are not held back
    /// waiting for it longer than [`SenderConfig::degrade_after`] from then.
    pub fn down_since(&mut self, since: Instant) {
        if !self.connected {
            self.down_since = Some(since);
        }
    }

    /// The connection is gone: whatever was in flight must be sent again.
    pub fn on_disconnected(&mut self, now: Instant) {
        self.connected = false;
        self.down_since.get_or_insert(now);
        self.heartbeats.disconnected();
        let in_flight: Vec<Seq> = self
            .ops
            .iter()
            .enumerate()
            .filter(|(_, op)| op.in_flight)
            .map(|(i, _)| self.base + i as Seq)
            .collect();
        for seq in in_flight {
            self.requeue(seq);
        }
        self.advance(now);
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The host's dirty cache share, 0..=100.
    pub fn report_dirty(&mut self, pct: f64, now: Instant) {
        self.dirty = Some(pct.clamp(0.0, 100.0));
        self.advance(now);
    }

    /// Changes the policy; it applies to every operation not yet answered.
    pub fn set_policy(&mut self, policy: AckPolicy, now: Instant) {
        self.cfg.policy = policy;
        self.advance(now);
    }

    pub fn policy(&self) -> AckPolicy {
        self.cfg.policy
    }

    pub fn dirty(&self) -> Option<f64> {
        self.dirty
    }

    /// Whether spoof acks are in force right now: the dirty threshold is
    /// reached, or the backlog spoofed while it was is still draining.
    pub fn spoofing_active(&self) -> bool {
        self.cfg.policy.spoofing_active(self.dirty) || self.draining_spoofed()
    }

    /// Spoofing stays on after the dirty % falls below the threshold until
    /// the replica has stored every write answered early because of it (or
    /// because the link was down). Without this hold, the first write after
    /// the fall waits for `remote-stored` behind the whole spoofed backlog
    /// still on the link: seconds on a slow line, longer than with spoofing
    /// off. Writes answered during the hold do not extend it, so it ends
    /// once that backlog is stored even while the host keeps writing.
    pub fn draining_spoofed(&self) -> bool {
        let p = &self.cfg.policy;
        p.spoofing && p.trigger.is_spoof() && self.spoofed_upto > self.stored_upto
    }

    /// The trigger and delay that answer host operations now.
    pub fn effective(&self) -> (Trigger, Duration) {
        self.cfg.policy.answer_when(self.spoofing_active())
    }

    /// Answers host operations, in seq order, whose trigger has been reached.
    /// Time must not go backwards: a driver that reads its clock outside
    /// the lock that serialises events would hand out stale moments.
    fn clock(&mut self, now: Instant) {
        debug_assert!(
            now >= self.last_now,
            "the sender's clock went backwards by {:?}",
            self.last_now - now
        );
        self.last_now = self.last_now.max(now);
    }

    /// The frontiers and counters agree (checked in debug builds after
    /// every event).
    fn check(&self) {
        let highest = self.highest_seq();
        debug_assert!(
            self.answered_upto <= highest
                && self.buffered_upto <= highest
                && self.stored_upto <= highest
                && self.received_upto <= highest,
            "a frontier is past the highest seq {highest}: {:?}",
            self.progress()
        );
        debug_assert!(
            self.stored_upto <= self.received_upto && self.stored_upto <= self.buffered_upto,
            "stored is past received or buffered: {:?}",
            self.progress()
        );
        debug_assert!(
            self.base > self.answered_upto.min(self.stored_upto),
            "an answered and stored op is still tracked"
        );
        #[cfg(debug_assertions)]
        {
            let inflight: u64 = self
                .ops
                .iter()
                .filter(|op| op.in_flight)
                .map(|op| op.bytes)
                .sum();
            debug_assert_eq!(inflight, self.inflight_bytes, "in-flight accounting");
            debug_assert_eq!(
                self.ops.iter().filter(|op| op.queued).count(),
                self.queue.len(),
                "queue accounting"
            );
        }
    }

    fn advance(&mut self, now: Instant) {
        self.clock(now);
        self.answer_timer = None;
        let (mut trigger, mut delay) = self.effective();
        // Whether an early answer now starts (or extends) a backlog the
        // hold must drain: the threshold or the dead link calls for it.
        let mut counts = self.cfg.policy.spoofing_active(self.dirty);
        if trigger > Trigger::Buffered && self.degraded(now) {
            (trigger, delay) = (Trigger::Buffered, Duration::ZERO);
            counts = true;
        }
        while self.answered_upto < self.highest_seq() {
            let seq = self.answered_upto + 1;
            let op = self.op_mut(seq).expect("unanswered seqs are tracked");
            if !op.answered {
                let Some(reached) = op.stage_at[trigger] else {
                    break;
                };
                // `effective` caps the delay at MAX_DELAY; checked all the
                // same, so that no policy can make this overflow. A delay
                // past the end of time cannot be waited for: the trigger has
                // been reached, so the write is answered.
                let due = reached.checked_add(delay).unwrap_or(reached);
                if now < due {
                    self.answer_timer = Some(due);
                    break;
                }
                op.answered = true;
                let early = counts && op.stage_at[Trigger::RemoteStored].is_none();
                let done = Answer {
                    seq,
                    kind: op.kind,
                    trigger,
                    latency: now.saturating_duration_since(op.submitted),
                    folded: false,
                };
                self.stats.answered_by[trigger] += 1;
                self.stats.answer_latency.record(done.latency);
                self.stats.answer_latency_by_trigger[trigger].record(done.latency);
                self.answers.push_back(done);
                if early {
                    self.spoofed_upto = self.spoofed_upto.max(seq);
                }
            }
            self.answered_upto = seq;
        }
        // Forget operations that are both answered and stored.
        while self.base <= self.answered_upto.min(self.stored_upto) {
            self.ops.pop_front();
            self.base += 1;
        }
        self.check();
    }

    /// The primary stops journaling: every operation so far has gone to
    /// its local copy and changed-block map instead, and will never be sent.
    /// Answers every one not yet answered (as `folded`, at `buffered`, the
    /// stage it now matches: durable on the primary) and forgets them all;
    /// the stream continues after the highest seq.
    pub fn fold(&mut self, now: Instant) {
        self.clock(now);
        let highest = self.highest_seq();
        for (i, op) in self.ops.iter_mut().enumerate() {
            let seq = self.base + i as Seq;
            if seq > self.answered_upto && !op.answered && !op.recovered {
                let done = Answer {
                    seq,
                    kind: op.kind,
                    trigger: Trigger::Buffered,
                    latency: now.saturating_duration_since(op.submitted),
                    folded: true,
                };
                self.stats.folded += 1;
                self.stats.answer_latency.record(done.latency);
                self.answers.push_back(done);
            }
        }
        self.ops.clear();
        self.queue.clear();
        self.inflight_bytes = 0;
        self.base = highest + 1;
        self.answered_upto = highest;
        self.buffered_upto = highest;
        self.received_upto = highest;
        self.stored_upto = highest;
        self.answer_timer = None;
        self.check();
    }

    /// Whether an operation of `kind` after `seq` is still held (not known
    /// to be stored, so a remote that has stored up to `seq` gets it again).
    pub fn holds_after(&self, kind: OpKind, seq: Seq) -> bool {
        self.ops
            .iter()
            .enumerate()
            .any(|(i, op)| self.base + i as Seq > seq && op.kind == kind)
    }

    /// Payload bytes of the operations the remote has not stored.
    pub fn unstored_bytes(&self) -> u64 {
        self.ops
            .iter()
            .enumerate()
            .filter(|(i, _)| self.base + *i as Seq > self.stored_upto)
            .map(|(_, op)| op.bytes)
            .sum()
    }

    /// The lowest seq this sender may still send: everything below is stored.
    pub fn base(&self) -> Seq {
        self.base
    }

    /// The next answered host operation.
    #[must_use]
    pub fn poll_answer(&mut self) -> Option<Answer> {
        self.answers.pop_front()
    }

    /// The next control frame to send (heartbeats and their replies).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmits.pop_front()
    }

    /// When [`Sender::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let rto = self.cfg.retransmit_timeout.and_then(|rto| {
            self.ops
                .iter()
                .enumerate()
                .filter(|(_, op)| op.in_flight && !op.received_now)
                .filter_map(|(i, op)| {
                    let wait = self.rto_of(self.base + i as Seq, op.timeouts, rto);
                    op.last_sent.map(|t| t + wait)
                })
                .min()
        });
        let degrade = if self.answered_upto < self.highest_seq() {
            self.degrade_at(self.last_now)
                .filter(|t| *t > self.last_now)
        } else {
            None
        };
        [
            self.answer_timer,
            self.heartbeats.poll_timeout(),
            rto,
            degrade,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The retransmit timeout of `seq`: backed off, except for the seq the
    /// remote needs next, which nothing after it can stand in for.
    fn rto_of(&self, seq: Seq, timeouts: u32, rto: Duration) -> Duration {
        if seq == self.received_upto + 1 {
            rto
        } else {
            backoff(rto, timeouts)
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(hb) = self.heartbeats.on_timeout(now) {
            self.transmits.push_back(hb);
        }
        if let Some(rto) = self.cfg.retransmit_timeout {
            let late: Vec<Seq> = self
                .ops
                .iter()
                .enumerate()
                .filter(|(i, op)| {
                    let wait = self.rto_of(self.base + *i as Seq, op.timeouts, rto);
                    op.in_flight
                        && !op.received_now
                        && op.last_sent.is_some_and(|t| t + wait <= now)
                })
                .map(|(i, _)| self.base + i as Seq)
                .collect();
            for seq in late {
                if let Some(op) = self.op_mut(seq) {
                    op.timeouts = op.timeouts.saturating_add(1);
                }
                self.requeue(seq);
            }
        }
        self.advance(now);
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    pub fn rtt(&self) -> RttEstimate {
        self.heartbeats.rtt
    }

    /// How long the remote has been silent.
    pub fn peer_silent_for(&self, now: Instant) -> Option<Duration> {
        self.heartbeats.silent_for(now)
    }

    /// Progress frontiers for the status display.
    pub fn progress(&self) -> Progress {
        Progress {
            highest: self.highest_seq(),
            answered: self.answered_upto,
            buffered: self.buffered_upto,
            remote_received: self.received_upto,
            remote_stored: self.stored_upto,
            inflight_bytes: self.inflight_bytes,
            queued: self.queue.len(),
        }
    }

    /// When the oldest operation the remote has not stored was submitted.
    pub fn oldest_unstored(&self) -> Option<Instant> {
        self.op(self.stored_upto + 1).map(|op| op.submitted)
    }
}

/// Where the stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub highest: Seq,
    pub answered: Seq,
    pub buffered: Seq,
    pub remote_received: Seq,
    pub remote_stored: Seq,
    pub inflight_bytes: u64,
    pub queued: usize,
}
