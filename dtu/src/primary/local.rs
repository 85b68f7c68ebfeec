//! The primary's local copy of the volume (`nbd.local`, like DRBD's local
//! disk): a consumer of the journal, exactly like the replica.
//!
//! A record reaches the local copy only once it is durable in the nvbuf,
//! and in seq order (the appender applies it right after its sync, before
//! the write is answered at `buffered`). So the local copy is always the
//! volume after some prefix of the stream the replica gets: two host
//! connections racing on one block end the same way on both copies, and
//! after any crash the records recovered from the nvbuf are applied again
//! ([`super::replay`]), bringing back writes a machine crash took from the
//! local copy's page cache. The nvbuf frees a record only when the remote
//! has stored it *and* the local copy has synced it, so nothing the local
//! copy may still lose leaves the journal. Reads wait until every write
//! answered before them has reached the local copy.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu_proto::Seq;
use tokio::sync::watch;

use crate::replica::Replica;

/// What a record does to the local copy once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOp {
    /// Nothing (a flush, a checkpoint, or no local copy).
    None,
    /// One chunk of a write: its plaintext at its volume offset.
    Write { offset: u64, data: Bytes },
    /// A discarded range.
    Trim { offset: u64, len: u64 },
}

/// How often the local copy is synced while records wait for it.
pub const LOCAL_SYNC_EVERY: Duration = Duration::from_secs(1);

struct LocalState {
    applied: Seq,
    synced: Seq,
    last_sync: Option<Instant>,
}

/// The local copy and how far the stream has reached it.
pub struct LocalCopy {
    disk: Arc<dyn Replica>,
    state: Mutex<LocalState>,
    applied_tx: watch::Sender<Seq>,
    /// For threads waiting on the applied frontier.
    applied_cv: Condvar,
}

impl std::fmt::Debug for LocalCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("LocalCopy")
            .field("applied", &st.applied)
            .field("synced", &st.synced)
            .finish()
    }
}

impl LocalCopy {
    /// A local copy that holds (durably) every seq up to `applied`.
    pub fn new(disk: Arc<dyn Replica>, applied: Seq) -> LocalCopy {
        LocalCopy {
            disk,
            state: Mutex::new(LocalState {
                applied,
                synced: applied,
                last_sync: None,
            }),
            applied_tx: watch::channel(applied).0,
            applied_cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one record of `seq`; `last_chunk` says it completes the seq.
    /// Records come in (seq, chunk) order, seq after seq.
    pub fn apply(&self, seq: Seq, op: &LocalOp, last_chunk: bool) -> io::Result<()> {
        debug_assert!(
            seq > self.applied(),
            "local copy: seq {seq} after {} was applied",
            self.applied()
        );
        match op {
            LocalOp::None => {}
            LocalOp::Write { offset, data } => self.disk.write_at(*offset, data)?,
            LocalOp::Trim { offset, len } => self.disk.trim(*offset, *len)?,
        }
        if last_chunk {
            self.lock().applied = seq;
            self.applied_tx.send_replace(seq);
            self.applied_cv.notify_all();
        }
        Ok(())
    }

    /// Sets the applied frontier without applying anything: recovery found
    /// nothing to replay below `seq`.
    pub fn set_applied(&self, seq: Seq) {
        let mut st = self.lock();
        st.applied = st.applied.max(seq);
        st.synced = st.synced.max(seq);
        drop(st);
        self.applied_tx.send_replace(seq);
        self.applied_cv.notify_all();
    }

    /// Moves both frontiers to `seq`, backwards too: recovery replays the
    /// records after `seq` again, whatever the local copy already held.
    pub fn rewind_to(&self, seq: Seq) {
        let mut st = self.lock();
        st.applied = seq;
        st.synced = seq;
        drop(st);
        self.applied_tx.send_replace(seq);
        self.applied_cv.notify_all();
    }

    /// Syncs the local copy when it holds unsynced seqs and `every` has
    /// passed since the last sync, or at once with `force`. Returns whether
    /// the synced frontier moved (the nvbuf may free more records).
    pub fn sync_due(&self, now: Instant, every: Duration, force: bool) -> io::Result<bool> {
        let (applied, due) = {
            let st = self.lock();
            let elapsed = st
                .last_sync
                .is_none_or(|t| now.saturating_duration_since(t) >= every);
            (st.applied, st.applied > st.synced && (force || elapsed))
        };
        if !due {
            return Ok(false);
        }
        self.disk.sync()?;
        let mut st = self.lock();
        st.synced = st.synced.max(applied);
        st.last_sync = Some(now);
        Ok(true)
    }

    /// Every seq up to this has reached the local copy.
    pub fn applied(&self) -> Seq {
        self.lock().applied
    }

    /// Every seq up to this is durable in the local copy.
    pub fn synced(&self) -> Seq {
        self.lock().synced
    }

    /// Waits until every seq up to `seq` has reached the local copy, or
    /// `timeout` passes; returns whether it did.
    pub async fn wait_applied(&self, seq: Seq, timeout: Duration) -> bool {
        let mut rx = self.applied_tx.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&a| a >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Blocks the calling thread until every seq up to `seq` has reached
    /// the local copy, or `timeout` passes; returns whether it did.
    pub fn wait_applied_blocking(&self, seq: Seq, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.applied < seq {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .applied_cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// The storage under the local copy.
    pub fn disk(&self) -> &Arc<dyn Replica> {
        &self.disk
    }
}

/// Up to which seq the nvbuf may free records: those the remote has stored
/// and, with a local copy, the local copy has synced.
pub fn release_point(remote_stored: Seq, local: Option<&LocalCopy>) -> Seq {
    match local {
        Some(l) => remote_stored.min(l.synced()),
        None => remote_stored,
    }
}
