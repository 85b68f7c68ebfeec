//! The primary's core: the sender state machine behind one lock, the host
//! operations waiting for their answer, and the wake-ups that drive the
//! lanes, the control stream and the timers.
//!
//! Every event (a write submitted, a flush of the nvbuf, a seq handed to the
//! link, an ack from the remote, a timer) goes through [`Core::event`], which
//! runs it against the [`Sender`], answers the host operations the sender
//! completed, frees nvbuf space the remote has stored, and wakes whoever has
//! new work. Critical sections are short: no I/O happens under the lock.

use super::error::Halt;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Instant;

use dtu_proto::sender::{Answer as SenderAnswer, OpKind, Sender};
use dtu_proto::Seq;
use tokio::sync::{oneshot, Notify};

use crate::changemap::{ChangeMap, SparseFile};
use crate::metrics::{QuicMeter, RateMeter};
use crate::nvbuf::Nvbuf;

use super::meta::PrimaryMeta;
use super::mode::Mode;
use super::sync::{Event as SyncEvent, SyncEngine};

use super::local::{release_point, LocalCopy};

use super::{Answer, PrimaryError};

/// The link as the status shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkState {
    /// Trying to reach the remote; the last error if an attempt failed.
    Connecting {
        /// Attempts since the link was last up.
        attempts: u64,
        /// Why the last attempt failed.
        last_error: Option<String>,
    },
    /// Connected and mirroring.
    Connected {
        /// When the connection was made.
        since: Instant,
        /// The remote's address.
        peer: String,
    },
    /// The remote refused this primary; retrying will not help by itself.
    Refused {
        /// The remote's words.
        reason: String,
    },
}

pub(crate) type Waiter = oneshot::Sender<Result<Answer, PrimaryError>>;

pub(crate) struct State {
    pub sender: Sender,
    waiters: VecDeque<(Seq, Waiter)>,
    pub link: LinkState,
    pub conn: Option<quinn::Connection>,
    /// Set when the pipeline failed for good (nvbuf I/O error).
    pub failed: Option<Halt>,
    /// The deadline the timer task sleeps until.
    timer_armed: Option<Instant>,
    /// Journal or ahead (see [`super::mode`]).
    pub mode: Mode,
    /// What to sync and verify.
    pub sync: SyncEngine,
    /// The durable metadata as last written (generations, map base, ...).
    pub meta: PrimaryMeta,
    /// The last connect's decision and its reason, in one line.
    pub decision: Option<String>,
    /// Since when the appender has been waiting for nvbuf space.
    pub full_since: Option<Instant>,
    /// The last seq taken while cut off, once a change is taken connected
    /// again: when the remote stores it, the cut-off writes reached it.
    cut_off_until: Seq,
}

/// Shared by the host-facing API, the ingest threads and the async tasks.
pub(crate) struct Core {
    state: Mutex<State>,
    pub nvbuf: Arc<Nvbuf>,
    /// The local copy, which must hold a record durably before the nvbuf
    /// may free it.
    pub local: Option<Arc<LocalCopy>>,
    /// New seqs to send, or the connection changed.
    pub lanes_wake: Notify,
    /// Control frames to send.
    pub control_wake: Notify,
    /// The next timeout may have moved.
    pub timer_wake: Notify,
    /// The connection came up or went down.
    pub conn_wake: Notify,
    pub shutdown: AtomicBool,
    pub counters: Counters,
    /// QUIC's own figures, across connections.
    pub quic: QuicMeter,
    rates: Mutex<RateState>,
    /// The changed-block map (with a local copy only).
    pub map: Option<Arc<ChangeMap<SparseFile>>>,
    /// Host operations hold it shared while they enter the pipeline; a mode
    /// change holds it alone, so no write is half in the journal and half in
    /// the map.
    pub gate: RwLock<()>,
    /// The sync thread has work (a decision, a stored seq, digests).
    pub sync_wake: (Mutex<bool>, Condvar),
    /// A fold waits for the gate: new host operations hold back.
    pub folding: AtomicBool,
    /// A demotion is under way: host operations are refused while the
    /// remote takes the last records.
    pub demoting: AtomicBool,
    /// A planned switchover: the session's goodbye asks the remote to
    /// promote.
    pub handover: AtomicBool,
    /// The remote asked this primary to hand its role over.
    pub handover_asked: Notify,
    /// A restore of the local copy from the remote, while one runs.
    pub restore: Option<Arc<super::restore::Restore>>,
}

/// Link and host byte rates.
#[derive(Default)]
struct RateState {
    link: RateMeter,
    host: RateMeter,
}

/// Rates the primary samples once a second, in bytes per second.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rates {
    pub link_bps: f64,
    pub host_bps: f64,
}

/// Byte counters kept outside the lock.
#[derive(Default)]
pub(crate) struct Counters {
    /// Host payload bytes accepted.
    pub plain_bytes: AtomicU64,
    /// Encoded bytes appended to the nvbuf (what crosses the link).
    pub encoded_bytes: AtomicU64,
    /// Bytes written to lanes, retransmits included.
    pub wire_bytes: AtomicU64,
    pub writes: AtomicU64,
    pub reads: AtomicU64,
}

impl Core {
    pub fn new(
        sender: Sender,
        nvbuf: Arc<Nvbuf>,
        local: Option<Arc<LocalCopy>>,
        map: Option<Arc<ChangeMap<SparseFile>>>,
        meta: PrimaryMeta,
        mode: Mode,
        restore: Option<Arc<super::restore::Restore>>,
    ) -> Core {
        Core {
            state: Mutex::new(State {
                sender,
                waiters: VecDeque::new(),
                link: LinkState::Connecting {
                    attempts: 0,
                    last_error: None,
                },
                conn: None,
                failed: None,
                timer_armed: None,
                mode,
                sync: SyncEngine::new(),
                meta,
                decision: None,
                full_since: None,
                cut_off_until: 0,
            }),
            nvbuf,
            local,
            map,
            gate: RwLock::new(()),
            sync_wake: (Mutex::new(false), Condvar::new()),
            folding: AtomicBool::new(false),
            demoting: AtomicBool::new(false),
            handover: AtomicBool::new(false),
            handover_asked: Notify::new(),
            restore,
            lanes_wake: Notify::new(),
            control_wake: Notify::new(),
            timer_wake: Notify::new(),
            conn_wake: Notify::new(),
            shutdown: AtomicBool::new(false),
            counters: Counters::default(),
            quic: QuicMeter::default(),
            rates: Mutex::new(RateState::default()),
        }
    }

    /// The remote's digests for the request at `seq`.
    pub fn on_digests(&self, seq: Seq, digests: &[crate::digest::Digest]) {
        let Some(map) = &self.map else { return };
        let events = {
            let mut st = self.lock();
            st.sync.on_digests(seq, digests, map, Instant::now())
        };
        self.on_sync_events(events);
        self.wake_sync();
    }

    /// What the sync engine reports: a finished sync frees the map's base,
    /// a verify's findings are logged (and with repair, a sync starts).
    pub fn on_sync_events(&self, events: Vec<SyncEvent>) {
        for e in events {
            match e {
                SyncEvent::SyncComplete { gen } => {
                    let Some(map) = &self.map else { continue };
                    let mut result = Ok(());
                    let written = self.update_meta(|m| result = super::sync::on_complete(map, m));
                    if let Err(e) = result {
                        tracing::error!("changed-block map after the sync: {e}");
                    }
                    match written {
                        Ok(_) => tracing::info!(
                            "sync complete: the replica holds the primary's volume of generation {gen:016x}"
                        ),
                        Err(e) => tracing::error!("recording the completed sync: {e}"),
                    }
                }
                SyncEvent::Mismatch { ranges, repair } => {
                    let bytes: u64 = ranges.iter().map(|r| r.1).sum();
                    tracing::warn!(
                        "verify: {} ranges ({}) differ between the local copy and the replica{}: {}",
                        ranges.len(),
                        crate::units::format_bytes(bytes),
                        if repair { ", marked for repair" } else { "" },
                        ranges
                            .iter()
                            .take(8)
                            .map(|(o, l)| format!("{o}+{l}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    if repair {
                        self.start_repair();
                    }
                }
                SyncEvent::VerifyComplete {
                    mismatched_bytes,
                    ranges,
                } => {
                    tracing::info!(
                        "verify complete: {ranges} ranges, {} differ",
                        crate::units::format_bytes(mismatched_bytes)
                    );
                    if let Err(e) = self.update_meta(|m| m.verify = None) {
                        tracing::error!("recording the finished verify: {e}");
                    }
                }
            }
        }
    }

    /// A verify with repair found differences (already marked in the map):
    /// a sync towards the current generation brings them over; the replica
    /// is inconsistent until it completes.
    fn start_repair(&self) {
        let Some(map) = &self.map else { return };
        let mut st = self.lock();
        if st.sync.running() {
            return;
        }
        let gen = st.meta.gens.current;
        st.sync.start(gen, false, map, Instant::now());
        let first = st.meta.map_base == 0;
        drop(st);
        if first {
            // The map is relative to the replica as it stands: the same
            // generation (the marks say where it differs).
            let _ = map.set_base(gen);
            let _ = self.update_meta(|m| m.map_base = gen);
        }
    }

    /// Wakes the sync thread.
    pub fn wake_sync(&self) {
        let (m, cv) = &self.sync_wake;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// The sync thread waits for work, at most `timeout`.
    pub fn wait_sync(&self, timeout: std::time::Duration) {
        let (m, cv) = &self.sync_wake;
        let mut woken = m.lock().unwrap_or_else(|p| p.into_inner());
        if !*woken {
            woken = cv
                .wait_timeout(woken, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *woken = false;
    }

    /// Changes the durable metadata and writes it before returning.
    pub fn update_meta(
        &self,
        f: impl FnOnce(&mut PrimaryMeta),
    ) -> Result<PrimaryMeta, crate::nvbuf::NvbufError> {
        let mut st = self.lock();
        f(&mut st.meta);
        let meta = st.meta;
        drop(st);
        self.nvbuf.set_meta(&meta.encode())?;
        Ok(meta)
    }

    /// What a host operation (or a sync batch) holds while it enters the
    /// pipeline; a mode change waits for all of them to leave.
    pub fn enter(&self) -> RwLockReadGuard<'_, ()> {
        loop {
            while self.folding.load(Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let g = self.gate.read().unwrap_or_else(|p| p.into_inner());
            if !self.folding.load(Ordering::Acquire) {
                return g;
            }
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Assigns a seq to a host operation and registers its waiter.
    pub fn submit(
        &self,
        kind: OpKind,
        bytes: u64,
    ) -> Result<(Seq, oneshot::Receiver<Result<Answer, PrimaryError>>), PrimaryError> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        if let Some(why) = &st.failed {
            return Err(PrimaryError::Failed(why.clone()));
        }
        if self.shutdown.load(Ordering::Relaxed) {
            return Err(PrimaryError::ShuttingDown);
        }
        let seq = st.sender.submit(kind, bytes, Instant::now());
        st.waiters.push_back((seq, tx));
        // The first change the host makes while cut off from the remote is
        // recorded before it can be answered: after a failover, writes from
        // here on are ones the promoted side never had (a split brain).
        let change = matches!(kind, OpKind::Write | OpKind::Trim);
        let connected = matches!(st.link, LinkState::Connected { .. });
        let cut_off = change && !connected && st.meta.cut_off_since == 0;
        if cut_off {
            st.meta.cut_off_since = seq;
        }
        if change && st.meta.cut_off_since != 0 {
            st.cut_off_until = if connected {
                match st.cut_off_until {
                    0 => seq - 1,
                    until => until,
                }
            } else {
                0
            };
        }
        let meta = st.meta;
        let done = drain(&mut st);
        drop(st);
        if cut_off {
            if let Err(e) = self.nvbuf.set_meta(&meta.encode()) {
                tracing::warn!("recording the first write while cut off from the remote: {e}");
            }
        }
        answer(done);
        Ok((seq, rx))
    }

    /// Answers whatever the sender has completed (after a fold).
    pub fn answer_ready(&self) {
        let done = drain(&mut self.lock());
        answer(done);
    }

    /// Runs one event against the sender and does what follows from it.
    pub fn event<T>(&self, f: impl FnOnce(&mut Sender, Instant) -> T) -> T {
        let mut st = self.lock();
        // Read the clock under the lock, so events reach the sender in the
        // order of their moments.
        let now = Instant::now();
        let out = f(&mut st.sender, now);
        let done = drain(&mut st);
        let progress = st.sender.progress();
        let sync_events = match &self.map {
            Some(map) if st.sync.running() => st.sync.on_stored(progress.remote_stored, map, now),
            _ => Vec::new(),
        };
        let wake_sync = st.sync.running() || st.sync.verifying();
        let caught_up = st.meta.cut_off_since != 0
            && ((st.cut_off_until != 0 && progress.remote_stored >= st.cut_off_until)
                || (matches!(st.link, LinkState::Connected { .. })
                    && progress.remote_stored >= progress.highest));
        if caught_up {
            st.meta.cut_off_since = 0;
            st.cut_off_until = 0;
        }
        let meta = st.meta;
        let sendable = progress.queued > 0 && st.sender.is_connected();
        // Wake the timer task only if it sleeps past the new deadline.
        let retime = match (st.sender.poll_timeout(), st.timer_armed) {
            (Some(t), Some(armed)) => t < armed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        drop(st);
        if caught_up {
            if let Err(e) = self.nvbuf.set_meta(&meta.encode()) {
                tracing::warn!("recording that the remote caught up: {e}");
            }
        }
        answer(done);
        if !sync_events.is_empty() {
            self.on_sync_events(sync_events);
        }
        if wake_sync {
            self.wake_sync();
        }
        // Space the remote has stored (and the local copy synced) is free.
        let done = release_point(progress.remote_stored, self.local.as_deref());
        if done >= self.nvbuf.first_unreleased_seq() {
            self.nvbuf.release_through(done);
        }
        if sendable {
            self.lanes_wake.notify_waiters();
        }
        self.control_wake.notify_waiters();
        if retime {
            self.timer_wake.notify_one();
        }
        out
    }

    /// Saves how far the remote has stored (and with it the nvbuf's
    /// released tail) when it moved: once a second and at a clean stop, so
    /// the files a crash leaves say which records the remote may lack.
    pub fn persist_progress(&self) -> Result<(), crate::nvbuf::NvbufError> {
        let mut st = self.lock();
        let stored = st.sender.progress().remote_stored;
        if st.meta.note_stored(stored) {
            let meta = st.meta;
            drop(st);
            return self.nvbuf.set_meta(&meta.encode());
        }
        drop(st);
        self.nvbuf.checkpoint_if_released().map(|_| ())
    }

    /// The deadline the timer task should sleep until; remembered so that
    /// events only wake it when they move the deadline earlier.
    pub fn arm_timer(&self) -> Option<Instant> {
        let mut st = self.lock();
        let t = st.sender.poll_timeout();
        st.timer_armed = t;
        t
    }

    /// The pipeline cannot go on: fail every waiting host operation.
    pub fn fail(&self, why: Halt) {
        let mut st = self.lock();
        st.failed = Some(why.clone());
        let waiters: Vec<_> = st.waiters.drain(..).collect();
        drop(st);
        for (_, w) in waiters {
            let _ = w.send(Err(PrimaryError::Failed(why.clone())));
        }
        self.lanes_wake.notify_waiters();
    }

    /// Samples the byte counters (once a second, from the timer task).
    pub fn sample_rates(&self, now: Instant) {
        // What QUIC put on the wire (UDP payload bytes), not what the lanes
        // handed to QUIC: on a slow link the two differ by QUIC's buffer.
        let udp_total = self.quic.udp_tx_bytes();
        let mut r = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        r.link.sample(now, udp_total);
        r.host
            .sample(now, self.counters.plain_bytes.load(Ordering::Relaxed));
    }

    pub fn rates(&self) -> Rates {
        let r = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        Rates {
            link_bps: r.link.per_second(),
            host_bps: r.host.per_second(),
        }
    }

    pub fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

/// Takes the sender's answers and pairs them with their waiters.
fn drain(st: &mut State) -> Vec<(Waiter, SenderAnswer)> {
    let mut out = Vec::new();
    while let Some(c) = st.sender.poll_answer() {
        // Waiters are in seq order; recovered seqs have none.
        while st.waiters.front().is_some_and(|(s, _)| *s < c.seq) {
            st.waiters.pop_front();
        }
        if st.waiters.front().is_some_and(|(s, _)| *s == c.seq) {
            let (_, w) = st.waiters.pop_front().expect("checked");
            out.push((w, c));
        }
    }
    out
}

fn answer(done: Vec<(Waiter, SenderAnswer)>) {
    for (w, c) in done {
        let _ = w.send(Ok(Answer {
            seq: c.seq,
            trigger: c.trigger,
            latency: c.latency,
            ahead: c.folded,
        }));
    }
}
