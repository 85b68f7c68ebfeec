//! The appender: puts encoded records into the nvbuf in (seq, chunk) order,
//! makes each batch durable with one sync (group commit), applies the batch
//! to the local copy, and names the seq that is now `buffered`.
//!
//! Encode workers finish out of order, so records wait here until the one
//! the nvbuf expects next arrives. [`Appender::step`] never blocks: when the
//! ring is full it first makes durable what it did append (so those records
//! can be sent, stored and freed) and reports the stall; the caller decides
//! how to wait (the real appender thread waits for space, the simulator
//! moves on to its next step). The real thread and the simulator drive this
//! same code.

use std::collections::BTreeMap;
use std::time::Instant;

use dtu_proto::planted::{self, Bug};
use dtu_proto::Seq;

use crate::nvbuf::{Lsn, NvStore, Nvbuf, NvbufError, Wait};

use super::ingest::Record;
use super::local::LocalCopy;

/// Records an appender holds at most while waiting for an earlier one;
/// beyond it the producer is out of step with the nvbuf (a bug).
pub const MAX_WAITING_RECORDS: usize = 1 << 20;

/// Why a step failed: the primary cannot keep its promises any more.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    #[error(transparent)]
    Nvbuf(#[from] NvbufError),
    #[error("the local copy failed at seq {seq}: {source}")]
    Local {
        seq: Seq,
        #[source]
        source: std::io::Error,
    },
    #[error("record seq {seq} chunk {chunk} arrived twice or after its turn")]
    Duplicate { seq: Seq, chunk: u32 },
    #[error(
        "{0} records wait for an earlier one: the encoder and the nvbuf disagree on the next seq"
    )]
    TooManyWaiting(usize),
    #[error("going ahead: {0}")]
    Fold(#[from] super::mode::FoldError),
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Step {
    /// Every seq up to this is now durable (and in the local copy).
    pub buffered: Option<Seq>,
    /// Records appended in this step.
    pub appended: usize,
    /// The ring was full: the next record waits for space.
    pub blocked: bool,
}

/// Reorders records and appends them with group commit.
#[derive(Debug)]
pub struct Appender {
    waiting: BTreeMap<(Seq, u32), Record>,
    next: (Seq, u32),
    /// Records below this seq arriving after a fold are void (sync pieces
    /// that were still being read): dropped.
    void_below: Seq,
    /// Records of a seq whose later chunks are not appended yet: they reach
    /// the local copy only with the seq's last chunk, so a crash between
    /// chunks cannot leave on the local copy part of a seq that recovery
    /// drops (and the replica never sees).
    held: Vec<Record>,
}

impl Appender {
    /// An appender whose next record is chunk 0 of `next_seq`.
    pub fn new(next_seq: Seq) -> Appender {
        Appender {
            waiting: BTreeMap::new(),
            next: (next_seq, 0),
            void_below: 0,
            held: Vec::new(),
        }
    }

    /// A record from an encode worker (or a control operation).
    pub fn push(&mut self, rec: Record) -> Result<(), AppendError> {
        let key = (rec.hdr.seq, rec.hdr.chunk_index);
        if key.0 < self.void_below {
            return Ok(());
        }
        if key < self.next || self.waiting.contains_key(&key) {
            return Err(AppendError::Duplicate {
                seq: key.0,
                chunk: key.1,
            });
        }
        if self.waiting.len() >= MAX_WAITING_RECORDS {
            return Err(AppendError::TooManyWaiting(self.waiting.len()));
        }
        self.waiting.insert(key, rec);
        Ok(())
    }

    /// Takes every record held, in (seq, chunk) order, and continues after
    /// `next_seq` (the primary folded them into its map).
    pub fn drain(&mut self, next_seq: Seq) -> Vec<Record> {
        self.next = (next_seq, 0);
        self.void_below = next_seq;
        let mut out = std::mem::take(&mut self.held);
        out.extend(std::mem::take(&mut self.waiting).into_values());
        out
    }

    /// Whether every record of every seq up to `highest` is here (or
    /// appended), except seqs `skip` says need none (sync pieces still being
    /// read, which a fold voids).
    pub fn holds_through(&self, highest: Seq, skip: impl Fn(Seq) -> bool) -> bool {
        let mut seq = self.next.0;
        while seq <= highest {
            let start = if seq == self.next.0 { self.next.1 } else { 0 };
            let recs: Vec<&Record> = self
                .waiting
                .range((seq, start)..(seq + 1, 0))
                .map(|(_, r)| r)
                .collect();
            let complete = recs
                .first()
                .is_some_and(|r| recs.len() as u32 + start == r.hdr.chunk_count);
            if !complete && !skip(seq) {
                return false;
            }
            seq += 1;
        }
        true
    }

    /// The record the appender waits for next.
    pub fn next(&self) -> (Seq, u32) {
        self.next
    }

    /// Records held, waiting for their turn or for space.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether the next record in order is here (so a step would append).
    pub fn ready(&self) -> bool {
        self.waiting.contains_key(&self.next)
    }

    /// Appends every record that is next in order until the ring is full,
    /// makes them durable with one sync, applies them to the local copy,
    /// and returns the seq now buffered.
    pub fn step<S: NvStore>(
        &mut self,
        nv: &Nvbuf<S>,
        local: Option<&LocalCopy>,
        now: Instant,
    ) -> Result<Step, AppendError> {
        let mut step = Step::default();
        let mut batch: Vec<Record> = Vec::new();
        let mut lsn: Option<Lsn> = None;
        let mut complete: Option<Seq> = None;
        while let Some(rec) = self.waiting.remove(&self.next) {
            match nv.append(&rec.hdr, &rec.frame, now, Wait::No) {
                Ok(end) => {
                    lsn = Some(end);
                    step.appended += 1;
                    self.next = if rec.hdr.chunk_index + 1 == rec.hdr.chunk_count {
                        complete = Some(rec.hdr.seq);
                        (rec.hdr.seq + 1, 0)
                    } else {
                        (rec.hdr.seq, rec.hdr.chunk_index + 1)
                    };
                    batch.push(rec);
                }
                Err(NvbufError::Full { .. }) => {
                    self.waiting.insert((rec.hdr.seq, rec.hdr.chunk_index), rec);
                    step.blocked = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let Some(lsn) = lsn else {
            return Ok(step);
        };
        if !planted::active(Bug::BufferedBeforeFlush) {
            nv.sync_to(lsn)?;
        }
        if let Some(local) = local {
            let mut ready = std::mem::take(&mut self.held);
            ready.extend(batch);
            let complete_upto = ready
                .iter()
                .rposition(|r| r.hdr.chunk_index + 1 == r.hdr.chunk_count)
                .map_or(0, |i| i + 1);
            self.held = ready.split_off(complete_upto);
            for rec in &ready {
                let last = rec.hdr.chunk_index + 1 == rec.hdr.chunk_count;
                local
                    .apply(rec.hdr.seq, &rec.local, last)
                    .map_err(|source| AppendError::Local {
                        seq: rec.hdr.seq,
                        source,
                    })?;
            }
        }
        step.buffered = complete;
        Ok(step)
    }
}
