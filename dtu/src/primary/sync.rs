//! The sync engine: what to send to bring the replica to the primary's
//! volume (initial sync, resync from the changed-block map, a repair), and
//! what to compare to prove they agree (online verify). It decides; the
//! drivers (the primary's sync thread, the simulator) do the reading and
//! sending, so both run this same logic.
//!
//! All work travels in the write stream, each piece at one seq: a copy of
//! an extent of the local copy (sent as a write, or as a trim where the
//! local copy has a hole), a digest request (the remote answers the digests
//! of its replica's blocks as they are once every earlier seq is applied),
//! and the markers that begin and end a sync on the remote. A driver
//! reserves the seqs of a batch at once, waits until the local copy holds
//! every seq before them, then reads: so each piece sees the local copy
//! exactly at its seq, host writes are ordered around it by seq (a write
//! the host makes to an extent not yet synced is never overwritten by the
//! sync's older copy of it), and digests on both sides are of the same
//! state (a verify never reports a write in flight as a mismatch).
//!
//! A map bit is cleared only once the piece that made the extent equal is
//! stored on the replica, and only if the primary did not leave the journal
//! since (going ahead bumps an epoch that voids pending clears). With
//! checksum-skip, a digest request goes first and only blocks whose digests
//! differ are copied. The pace is set by the driver's budget (the sender's
//! queue, an optional `sync.rate_max`), so host writes are not starved.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu_proto::frame::{DigestRequest, Frame, Marker, MarkerKind, Trim, MAX_DIGEST_SPAN};
use dtu_proto::generation::Gen;
use dtu_proto::sender::OpKind;
use dtu_proto::{Epoch, Seq};

use crate::changemap::{ChangeMap, MapStore};
use crate::digest::{replica_digests, Digest};
use crate::metrics::RateMeter;
use crate::nvbuf::RecordHeader;
use crate::replica::Replica;

use super::ingest::{encode_jobs, kind_code, EncodeJob, Record};
use super::local::LocalOp;

/// Largest extent one copy carries.
pub const PIECE: u64 = 1 << 20;
/// Bytes per digest when syncing with checksum-skip: small enough that a
/// replica differing in scattered blocks gets only those blocks.
pub const SYNC_DIGEST_BLOCK: u32 = 4096;
/// Bytes per digest when verifying: mismatches are reported at this size.
pub const VERIFY_DIGEST_BLOCK: u32 = 64 << 10;
/// Pieces reserved at one seq boundary (one wait for the local copy).
pub const BATCH: usize = 8;
/// Sync bytes that may be on their way (reserved, not yet stored) at once,
/// unless the driver sets less (see [`SyncEngine::set_max_inflight`]).
pub const MAX_INFLIGHT: u64 = 64 << 20;

/// One item of work, at one seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// The remote becomes a sync target towards `gen`.
    Start { gen: Gen },
    /// The sync towards `gen` is complete: the remote adopts it.
    Done { gen: Gen },
    /// Read this extent of the local copy and send it.
    Copy { offset: u64, len: u64 },
    /// Ask the remote for the digests of this range; compare with the
    /// local copy's at the same seq.
    Digest {
        offset: u64,
        len: u32,
        block: u32,
        verify: bool,
    },
}

impl Work {
    /// Bytes of the volume the item covers (for pacing).
    pub fn bytes(&self) -> u64 {
        match self {
            Work::Copy { len, .. } => *len,
            Work::Digest { .. } | Work::Start { .. } | Work::Done { .. } => 0,
        }
    }
}

/// A sync under way.
#[derive(Debug, Clone)]
struct Run {
    target: Gen,
    checksum: bool,
    cursor: u64,
    start_sent: bool,
    done_seq: Option<Seq>,
    /// Copies decided by digest answers, not yet reserved.
    follow_ups: VecDeque<(u64, u64)>,
    /// Ranges to clear once every seq up to the second is stored.
    pending_clear: Vec<(u64, u64, Seq)>,
    total: u64,
    done: u64,
    started: Instant,
}

/// A verify under way.
#[derive(Debug, Clone)]
struct Verify {
    cursor: u64,
    end: u64,
    repair: bool,
    started: Instant,
    compared: u64,
}

#[derive(Debug, Clone)]
struct InFlight {
    work: Work,
    epoch: u64,
    /// The local copy's digests at this seq, once read.
    local: Option<Vec<Digest>>,
}

/// What happened that the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The sync towards `gen` completed: the replica is the primary's
    /// volume of that generation (the map's base can go).
    SyncComplete { gen: Gen },
    /// A verify finished.
    VerifyComplete {
        mismatched_bytes: u64,
        ranges: usize,
    },
    /// A verify found these ranges different (and, with repair, marked
    /// them in the map: a sync must start).
    Mismatch {
        ranges: Vec<(u64, u64)>,
        repair: bool,
    },
}

pub use crate::status::{Progress, SyncStatus};

/// Decides sync and verify work.
#[derive(Debug)]
pub struct SyncEngine {
    run: Option<Run>,
    verify: Option<Verify>,
    inflight: BTreeMap<Seq, InFlight>,
    /// Bumped when the primary leaves the journal: pending clears are void.
    epoch: u64,
    rate: RateMeter,
    verify_rate: RateMeter,
    status: SyncStatus,
    max_inflight: u64,
}

impl Default for SyncEngine {
    fn default() -> Self {
        SyncEngine::new()
    }
}

impl SyncEngine {
    pub fn new() -> SyncEngine {
        SyncEngine {
            run: None,
            verify: None,
            inflight: BTreeMap::new(),
            epoch: 0,
            rate: RateMeter::default(),
            verify_rate: RateMeter::default(),
            status: SyncStatus::default(),
            max_inflight: MAX_INFLIGHT,
        }
    }

    /// Caps the sync bytes reserved and not yet stored. What is reserved
    /// waits in the nvbuf for the link, delays host writes queued behind it,
    /// and is copied again after a crash of the primary (its map bits clear
    /// only once stored): a few round trips of the link's window is enough.
    pub fn set_max_inflight(&mut self, bytes: u64) {
        self.max_inflight = bytes.clamp(PIECE, MAX_INFLIGHT);
    }

    /// Starts (or continues) a sync towards `target` from what the map has
    /// marked.
    pub fn start<S: MapStore>(
        &mut self,
        target: Gen,
        checksum: bool,
        map: &ChangeMap<S>,
        now: Instant,
    ) {
        let total = map.marked_bytes();
        self.run = Some(Run {
            target,
            checksum,
            cursor: 0,
            start_sent: false,
            done_seq: None,
            follow_ups: VecDeque::new(),
            pending_clear: Vec::new(),
            total,
            done: 0,
            started: now,
        });
        self.status.target = target;
        self.status.checksum = checksum;
        self.rate = RateMeter::default();
        self.rate.sample(now, 0);
    }

    /// Starts a verify of `start..end` (resumed from a stored cursor too).
    pub fn start_verify(&mut self, start: u64, end: u64, repair: bool, now: Instant) {
        self.verify = Some(Verify {
            cursor: start,
            end,
            repair,
            started: now,
            compared: 0,
        });
        self.status.verify_repair = repair;
        self.status.mismatches.clear();
        self.status.mismatched_bytes = 0;
        self.verify_rate = RateMeter::default();
        self.verify_rate.sample(now, 0);
    }

    /// The primary left the journal (it went ahead): nothing in flight may
    /// clear a map bit any more, and the run waits for the next connect.
    pub fn abort(&mut self) {
        self.epoch += 1;
        self.inflight.clear();
        self.run = None;
        self.status.target = 0;
    }

    /// A new session: answers to digest requests of the last one may never
    /// come (the remote applied them, its answer was lost with the link).
    /// They are asked again: a verify rewinds to the first unanswered range,
    /// a sync walks its map again (those ranges are still marked).
    pub fn on_reconnect(&mut self) {
        let lost: Vec<(Seq, Work)> = self
            .inflight
            .iter()
            .filter(|(_, f)| matches!(f.work, Work::Digest { .. }))
            .map(|(s, f)| (*s, f.work.clone()))
            .collect();
        for (seq, work) in lost {
            self.inflight.remove(&seq);
            if let Work::Digest { offset, verify, .. } = work {
                if verify {
                    if let Some(v) = &mut self.verify {
                        v.cursor = v.cursor.min(offset);
                    }
                } else if let Some(run) = &mut self.run {
                    run.cursor = 0;
                }
            }
        }
        if let Some(run) = &mut self.run {
            // Copies a lost answer decided but never got.
            for c in &mut run.pending_clear {
                if c.2 == Seq::MAX {
                    c.2 = 0;
                }
            }
            run.pending_clear.retain(|c| c.2 != 0);
        }
    }

    /// The verify stops (the link went down); it resumes from `cursor`.
    pub fn pause_verify(&mut self) -> Option<(u64, u64)> {
        let v = self.verify.take()?;
        self.inflight
            .retain(|_, f| !matches!(f.work, Work::Digest { verify: true, .. }));
        Some((v.cursor, v.end))
    }

    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    pub fn verifying(&self) -> bool {
        self.verify.is_some()
    }

    /// Where a running verify is, for the metadata (so it resumes).
    pub fn verify_cursor(&self) -> Option<(u64, u64)> {
        self.verify.as_ref().map(|v| (v.cursor, v.end))
    }

    /// Whether `seq` is a piece of work reserved here.
    pub fn is_reserved(&self, seq: Seq) -> bool {
        self.inflight.contains_key(&seq)
    }

    /// Sync bytes reserved and not yet stored.
    pub fn inflight_bytes(&self) -> u64 {
        self.inflight.values().map(|f| f.work.bytes()).sum()
    }

    /// The next batch of work, at most `budget` bytes of copies (the
    /// driver's pacing). Empty when there is nothing to do now.
    pub fn plan<S: MapStore>(&mut self, map: &ChangeMap<S>, budget: u64) -> Vec<Work> {
        let mut out = Vec::new();
        let inflight = self.inflight_bytes();
        let mut room = budget.min(self.max_inflight.saturating_sub(inflight));
        if let Some(run) = &mut self.run {
            if !run.start_sent {
                run.start_sent = true;
                return vec![Work::Start { gen: run.target }];
            }
            if run.done_seq.is_some() {
                return out;
            }
            while out.len() < BATCH && room > 0 {
                let Some((o, l)) = run.follow_ups.pop_front() else {
                    break;
                };
                let l = l.min(PIECE);
                room = room.saturating_sub(l);
                out.push(Work::Copy { offset: o, len: l });
            }
            let busy = |o: u64, l: u64, inflight: &BTreeMap<Seq, InFlight>| {
                inflight.values().any(|f| match f.work {
                    Work::Copy { offset, len } => offset < o + l && o < offset + len,
                    Work::Digest { offset, len, .. } => {
                        offset < o + l && o < offset + u64::from(len)
                    }
                    _ => false,
                })
            };
            while out.len() < BATCH && room > 0 {
                let Some((o, l)) = map.next_marked(run.cursor) else {
                    break;
                };
                if run.checksum {
                    let len = l.min(u64::from(MAX_DIGEST_SPAN)) as u32;
                    run.cursor = o + u64::from(len);
                    if busy(o, u64::from(len), &self.inflight) {
                        continue;
                    }
                    out.push(Work::Digest {
                        offset: o,
                        len,
                        block: SYNC_DIGEST_BLOCK,
                        verify: false,
                    });
                    room = room.saturating_sub(u64::from(len) / 64);
                } else {
                    let len = l.min(PIECE);
                    run.cursor = o + len;
                    if busy(o, len, &self.inflight) {
                        continue;
                    }
                    room = room.saturating_sub(len);
                    out.push(Work::Copy { offset: o, len });
                }
            }
            if out.is_empty()
                && self.inflight.is_empty()
                && run.follow_ups.is_empty()
                && run.pending_clear.is_empty()
            {
                if map.marked_bytes() == 0 {
                    out.push(Work::Done { gen: run.target });
                } else if run.cursor != 0 {
                    // Extents whose clear was voided: walk the map again.
                    run.cursor = 0;
                }
            }
            return out;
        }
        if let Some(v) = &mut self.verify {
            let verifying = self
                .inflight
                .values()
                .filter(|f| matches!(f.work, Work::Digest { verify: true, .. }))
                .count();
            while out.len() + verifying < BATCH && v.cursor < v.end {
                let len = (v.end - v.cursor).min(u64::from(MAX_DIGEST_SPAN)) as u32;
                out.push(Work::Digest {
                    offset: v.cursor,
                    len,
                    block: VERIFY_DIGEST_BLOCK,
                    verify: true,
                });
                v.cursor += u64::from(len);
            }
        }
        out
    }

    /// The driver reserved `seq` for `work`.
    pub fn reserved(&mut self, seq: Seq, work: Work) {
        if let (Work::Done { .. }, Some(run)) = (&work, &mut self.run) {
            run.done_seq = Some(seq);
        }
        self.inflight.insert(
            seq,
            InFlight {
                work,
                epoch: self.epoch,
                local: None,
            },
        );
    }

    /// The local copy's digests of the range a digest request at `seq`
    /// covers, read at that seq.
    pub fn local_digests(&mut self, seq: Seq, digests: Vec<Digest>) {
        if let Some(f) = self.inflight.get_mut(&seq) {
            f.local = Some(digests);
        }
    }

    /// Every seq up to `stored` is stored on the replica: clear what the
    /// pieces made equal, and finish the sync when its last marker is in.
    pub fn on_stored<S: MapStore>(
        &mut self,
        stored: Seq,
        map: &ChangeMap<S>,
        now: Instant,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let epoch = self.epoch;
        let done: Vec<Seq> = self
            .inflight
            .range(..=stored)
            .filter(|(_, f)| !matches!(f.work, Work::Digest { .. }))
            .map(|(s, _)| *s)
            .collect();
        for seq in done {
            let f = self.inflight.remove(&seq).expect("listed");
            match f.work {
                Work::Copy { offset, len } => {
                    if f.epoch == epoch {
                        let _ = map.clear(offset, len);
                    }
                    self.status.copied_bytes += len;
                    if let Some(run) = &mut self.run {
                        run.done += len;
                    }
                }
                Work::Done { gen } => {
                    // Only this run's own marker: a Done an earlier run
                    // reserved towards the same generation can be stored
                    // after a new run started (the remote restarted
                    // before it), and the new run's Start undid it.
                    if self
                        .run
                        .as_ref()
                        .is_some_and(|r| r.target == gen && r.done_seq == Some(seq))
                    {
                        self.run = None;
                        self.status.target = 0;
                        events.push(Event::SyncComplete { gen });
                    }
                }
                Work::Start { .. } | Work::Digest { .. } => {}
            }
        }
        if let Some(run) = &mut self.run {
            let mut i = 0;
            while i < run.pending_clear.len() {
                let (o, l, after) = run.pending_clear[i];
                if after <= stored {
                    run.pending_clear.swap_remove(i);
                    let _ = map.clear(o, l);
                } else {
                    i += 1;
                }
            }
            self.rate.sample(now, run.done);
        }
        events
    }

    /// The remote's digests for the request at `seq`. `marked` is how the
    /// driver marks ranges for a repair.
    pub fn on_digests<S: MapStore>(
        &mut self,
        seq: Seq,
        remote: &[Digest],
        map: &ChangeMap<S>,
        now: Instant,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let Some(f) = self.inflight.remove(&seq) else {
            return events;
        };
        let Work::Digest {
            offset,
            len,
            block,
            verify,
        } = f.work
        else {
            return events;
        };
        let Some(local) = f.local else {
            // Answered before the driver read its own side: cannot happen in
            // seq order; treat the range as different.
            tracing::warn!("digests for seq {seq} arrived before the local ones");
            return events;
        };
        let block = u64::from(block);
        let end = offset + u64::from(len);
        let mut differing: Vec<(u64, u64)> = Vec::new();
        for (i, (l, r)) in local.iter().zip(remote.iter()).enumerate() {
            if l != r {
                let o = offset + i as u64 * block;
                let n = block.min(end - o);
                match differing.last_mut() {
                    Some((po, pl)) if *po + *pl == o => *pl += n,
                    _ => differing.push((o, n)),
                }
            }
        }
        if local.len() != remote.len() {
            differing = vec![(offset, u64::from(len))];
        }
        if verify {
            let bytes: u64 = differing.iter().map(|r| r.1).sum();
            self.status.compared_bytes += u64::from(len);
            self.status.mismatched_bytes += bytes;
            self.status.mismatches.extend(differing.iter().copied());
            let mut done_verify = None;
            if let Some(v) = &mut self.verify {
                v.compared += u64::from(len);
                self.verify_rate.sample(now, v.compared);
                let pending = self
                    .inflight
                    .values()
                    .any(|f| matches!(f.work, Work::Digest { verify: true, .. }));
                if v.cursor >= v.end && !pending {
                    done_verify = Some(v.repair);
                }
            }
            if !differing.is_empty() {
                let repair = self.status.verify_repair;
                if repair {
                    for &(o, l) in &differing {
                        let _ = map.mark(o, l);
                    }
                    let _ = map.persist();
                }
                events.push(Event::Mismatch {
                    ranges: differing,
                    repair,
                });
            }
            if done_verify.is_some() {
                self.verify = None;
                self.status.last_verify_unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs());
                events.push(Event::VerifyComplete {
                    mismatched_bytes: self.status.mismatched_bytes,
                    ranges: self.status.mismatches.len(),
                });
            }
            return events;
        }
        // Checksum-skip during a sync.
        let epoch = self.epoch;
        let Some(run) = &mut self.run else {
            return events;
        };
        let same: u64 = u64::from(len) - differing.iter().map(|r| r.1).sum::<u64>();
        self.status.skipped_bytes += same;
        self.status.compared_bytes += u64::from(len);
        run.done += same;
        if f.epoch != epoch {
            return events;
        }
        if differing.is_empty() {
            let _ = map.clear(offset, u64::from(len));
        } else {
            for &(o, l) in &differing {
                let mut at = o;
                while at < o + l {
                    let n = (o + l - at).min(PIECE);
                    run.follow_ups.push_back((at, n));
                    at += n;
                }
            }
            // Cleared once the copies after this seq are stored: marked
            // with a seq no copy can have yet, fixed when they are reserved.
            run.pending_clear.push((offset, u64::from(len), Seq::MAX));
        }
        events
    }

    /// After the copies a digest answer decided are reserved, the ranges
    /// waiting for them can be cleared once `last` is stored.
    pub fn follow_ups_reserved(&mut self, last: Seq) {
        if let Some(run) = &mut self.run {
            if run.follow_ups.is_empty() {
                for c in &mut run.pending_clear {
                    if c.2 == Seq::MAX {
                        c.2 = last;
                    }
                }
            }
        }
    }

    /// Figures for the status, as of `now`.
    pub fn status<S: MapStore>(&self, map: Option<&ChangeMap<S>>, now: Instant) -> SyncStatus {
        let mut s = self.status.clone();
        if let Some(run) = &self.run {
            let remaining = map.map_or(0, |m| m.marked_bytes());
            let total = run.total.max(run.done + remaining);
            let rate = self.rate.per_second();
            s.sync = Progress {
                active: true,
                done_bytes: total.saturating_sub(remaining),
                total_bytes: total,
                rate_bps: rate * 8.0,
                eta_s: (rate > 0.0).then(|| remaining as f64 / rate),
                elapsed_s: now.saturating_duration_since(run.started).as_secs_f64(),
            };
        }
        if let Some(v) = &self.verify {
            let rate = self.verify_rate.per_second();
            let left = v.end.saturating_sub(v.cursor) + self.inflight_verify_bytes();
            s.verify = Progress {
                active: true,
                done_bytes: v.compared,
                total_bytes: v.compared + left,
                rate_bps: rate * 8.0,
                eta_s: (rate > 0.0).then(|| left as f64 / rate),
                elapsed_s: now.saturating_duration_since(v.started).as_secs_f64(),
            };
        }
        s
    }

    fn inflight_verify_bytes(&self) -> u64 {
        self.inflight
            .values()
            .map(|f| match f.work {
                Work::Digest {
                    verify: true, len, ..
                } => u64::from(len),
                _ => 0,
            })
            .sum()
    }

    /// How long a run has gone (for logs).
    pub fn elapsed(&self, now: Instant) -> Option<Duration> {
        self.run
            .as_ref()
            .map(|r| now.saturating_duration_since(r.started))
    }
}

/// Operations the sender may hold unsent before the sync waits: past it,
/// host writes would queue behind sync pieces.
pub const MAX_QUEUED_BEFORE_SYNC: usize = 32;

/// Plans the next batch (at most `budget` bytes of copies, none while the
/// sender's queue is long) and reserves one seq per piece in the sender.
/// The caller holds out mode changes (a fold) while it does, then waits
/// until the local copy holds every seq before the first and [`prepare`]s
/// each piece. The sync thread and the simulator both run this.
pub fn reserve_batch<S: MapStore>(
    engine: &mut SyncEngine,
    sender: &mut dtu_proto::Sender,
    map: &ChangeMap<S>,
    budget: u64,
    now: Instant,
) -> Vec<(Seq, Work)> {
    let budget = if sender.progress().queued > MAX_QUEUED_BEFORE_SYNC {
        0
    } else {
        budget.min(PIECE * BATCH as u64)
    };
    let plan = engine.plan(map, budget);
    let mut items = Vec::with_capacity(plan.len());
    for w in plan {
        let seq = sender.submit(op_kind(&w), w.bytes(), now);
        engine.reserved(seq, w.clone());
        items.push((seq, w));
    }
    if let Some((last, _)) = items.last() {
        engine.follow_ups_reserved(*last);
    }
    items
}

/// A sync completed: the replica holds the primary's current generation,
/// so the map is relative to nothing any more. The caller writes `meta`.
pub fn on_complete<S: MapStore>(
    map: &ChangeMap<S>,
    meta: &mut super::meta::PrimaryMeta,
) -> Result<(), crate::changemap::ChangeMapError> {
    map.reset(false, 0)?;
    meta.map_base = 0;
    Ok(())
}

/// What a reserved piece of work becomes in the write stream.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// Chunks for the encode workers.
    Jobs(Vec<EncodeJob>),
    /// A ready record for the appender.
    Record(Record),
}

/// Reads what `work` at `seq` needs from the local copy (which must hold
/// exactly the seqs before it) and turns it into records: a copy becomes a
/// write (or a trim where the local copy has a hole), a digest request
/// also gives the local digests (for [`SyncEngine::local_digests`], before
/// the record is sent), a marker is a marker.
pub fn prepare(
    seq: Seq,
    epoch: Epoch,
    work: &Work,
    local: &dyn Replica,
    chunk_size: usize,
) -> std::io::Result<(Prepared, Option<Vec<Digest>>)> {
    let control = |kind: OpKind, offset: u64, length: u64, frame: Frame| Record {
        hdr: RecordHeader {
            seq,
            epoch,
            offset,
            length: length.min(u64::from(u32::MAX)) as u32,
            flags: kind_code(kind),
            chunk_index: 0,
            chunk_count: 1,
        },
        frame: frame.to_bytes(),
        // Read from the local copy, so nothing to give back to it.
        local: LocalOp::None,
    };
    match *work {
        Work::Start { gen } | Work::Done { gen } => {
            let kind = if matches!(work, Work::Start { .. }) {
                MarkerKind::SyncStart
            } else {
                MarkerKind::SyncDone
            };
            let frame = Frame::Marker(Marker {
                seq,
                epoch,
                kind,
                gen,
            });
            Ok((Prepared::Record(control(OpKind::Marker, 0, 0, frame)), None))
        }
        Work::Copy { offset, len } => {
            let spans = local.spans(offset, len)?;
            if !spans.is_empty() && spans.iter().all(|s| s.hole) {
                let frame = Frame::Trim(Trim {
                    seq,
                    epoch,
                    offset,
                    length: len,
                });
                return Ok((
                    Prepared::Record(control(OpKind::Trim, offset, len, frame)),
                    None,
                ));
            }
            let mut buf = vec![0u8; len as usize];
            local.read_at(offset, &mut buf)?;
            let data = Bytes::from(buf);
            let jobs = encode_jobs(seq, epoch, offset, &data, chunk_size)
                .map(|mut j| {
                    j.to_local = false;
                    j
                })
                .collect();
            Ok((Prepared::Jobs(jobs), None))
        }
        Work::Digest {
            offset, len, block, ..
        } => {
            let digests = replica_digests(local, offset, len, block)?;
            let frame = Frame::DigestRequest(DigestRequest {
                seq,
                epoch,
                offset,
                length: len,
                block,
            });
            Ok((
                Prepared::Record(control(OpKind::Digest, offset, u64::from(len), frame)),
                Some(digests),
            ))
        }
    }
}

/// The op kind the sender tracks for a piece of work.
pub fn op_kind(work: &Work) -> OpKind {
    match work {
        Work::Start { .. } | Work::Done { .. } => OpKind::Marker,
        Work::Copy { .. } => OpKind::Write,
        Work::Digest { .. } => OpKind::Digest,
    }
}
