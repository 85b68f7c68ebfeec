//! The sync thread: a thin loop around the [`SyncEngine`]. While the pair
//! is connected and journaling, it asks the engine for a batch of work,
//! reserves one seq per piece (holding the gate, like a host write, so the
//! mode cannot change under it), waits until the local copy holds every
//! seq before the batch, reads what each piece needs, and hands the records
//! to the encoders and the appender. Pacing: the engine's own in-flight
//! bound, the sender's queue (host writes first), and `sync.rate_max`.

use super::error::Halt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender as Channel;
use dtu_proto::Epoch;

use super::core::Core;
use super::ingest::{EncodeJob, Record};
use super::mode::Mode;
use super::sync::{self, Prepared};

/// How long the thread sleeps when there is nothing to do.
const IDLE: Duration = Duration::from_millis(200);
/// How often the map's progress is saved while a sync runs.
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// How long it waits for the local copy to reach a batch.
const LOCAL_WAIT: Duration = Duration::from_secs(60);

/// What the thread needs besides the core.
pub(crate) struct Syncer {
    pub core: Arc<Core>,
    pub records: Channel<Record>,
    pub encode: Channel<EncodeJob>,
    pub epoch: Epoch,
    pub chunk_size: usize,
    pub rate_max: Option<u64>,
    /// `sync.verify_every`: a whole-volume verify this long after the
    /// previous one ended (or after the start).
    pub verify_every: Option<Duration>,
    pub volume_size: u64,
}

/// A token bucket for `sync.rate_max`.
struct Bucket {
    rate: Option<u64>,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn budget(&mut self, now: Instant) -> u64 {
        let Some(rate) = self.rate else {
            return u64::MAX;
        };
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        // At most one second of burst.
        self.tokens = (self.tokens + dt * rate as f64).min(rate as f64);
        self.tokens.max(0.0) as u64
    }

    fn take(&mut self, bytes: u64) {
        self.tokens -= bytes as f64;
    }
}

impl Syncer {
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("dtu-sync".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let core = &self.core;
        let (Some(map), Some(local)) = (core.map.as_deref(), core.local.as_deref()) else {
            return;
        };
        let mut bucket = Bucket {
            rate: self.rate_max,
            tokens: 0.0,
            at: Instant::now(),
        };
        let mut persisted = Instant::now();
        let mut saved_cursor = None;
        let mut last_verify_end = Instant::now();
        while !core.is_shutdown() {
            core.wait_sync(IDLE);
            {
                let mut st = core.lock();
                if st.sync.verifying() {
                    last_verify_end = Instant::now();
                } else if self
                    .verify_every
                    .is_some_and(|every| last_verify_end.elapsed() >= every)
                    && matches!(st.mode, Mode::Journal)
                {
                    tracing::info!("starting the periodic verify (sync.verify_every)");
                    st.sync
                        .start_verify(0, self.volume_size, false, Instant::now());
                    last_verify_end = Instant::now();
                }
            }
            // The map's clears (pieces the replica stored) reach its file
            // now and then: a primary that crashes re-copies only what was
            // cleared since, not the whole sync again.
            if persisted.elapsed() >= PERSIST_EVERY {
                persisted = Instant::now();
                if let Err(e) = map.persist() {
                    tracing::warn!("sync: saving the changed-block map's progress: {e}");
                }
                // And where a verify is, so that a restart resumes it.
                let cursor = core.lock().sync.verify_cursor();
                if cursor.is_some() && cursor != saved_cursor {
                    saved_cursor = cursor;
                    if let Err(e) = core.update_meta(|m| m.verify = cursor) {
                        tracing::warn!("sync: saving the verify's progress: {e}");
                    }
                }
            }
            loop {
                if core.is_shutdown() {
                    return;
                }
                let batch = {
                    let _gate = core.enter();
                    let mut st = core.lock();
                    let st = &mut *st;
                    let idle = !matches!(st.mode, Mode::Journal)
                        || !st.sender.is_connected()
                        || !(st.sync.running() || st.sync.verifying());
                    if idle {
                        break;
                    }
                    let now = Instant::now();
                    let budget = bucket.budget(now);
                    let items = sync::reserve_batch(&mut st.sync, &mut st.sender, map, budget, now);
                    if items.is_empty() {
                        break;
                    }
                    items
                };
                let first = batch[0].0;
                if !local.wait_applied_blocking(first - 1, LOCAL_WAIT) {
                    tracing::warn!(
                        "sync: the local copy did not reach seq {} within {LOCAL_WAIT:?}",
                        first - 1
                    );
                    break;
                }
                for (seq, work) in &batch {
                    let prepared = sync::prepare(
                        *seq,
                        self.epoch,
                        work,
                        local.disk().as_ref(),
                        self.chunk_size,
                    );
                    match prepared {
                        Ok((Prepared::Jobs(jobs), _)) => {
                            for j in jobs {
                                if self.encode.send(j).is_err() {
                                    return;
                                }
                            }
                        }
                        Ok((Prepared::Record(r), digests)) => {
                            if let Some(d) = digests {
                                core.lock().sync.local_digests(*seq, d);
                            }
                            if self.records.send(r).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let why = Halt::SyncRead {
                                seq: *seq,
                                source: std::sync::Arc::new(e),
                            };
                            tracing::error!("{why}");
                            core.fail(why);
                            return;
                        }
                    }
                    bucket.take(work.bytes());
                }
            }
        }
    }
}
