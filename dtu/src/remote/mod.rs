//! The remote DTU as a library: receives the primary's writes and applies
//! them, strictly in seq order, to a [`Replica`].
//!
//! [`Remote::start`] opens the replica and its state file (so a restart
//! resumes exactly where it stopped), listens for the primary on QUIC, and
//! runs the pipeline: lanes → decode workers → in-order release → apply →
//! one sync per batch → Stored ack. At every moment the replica holds the
//! primary's volume as it was after some prefix of its writes.

pub mod accept;
pub mod applier;
mod apply;
pub mod promote;
pub mod rollback;
mod session;
mod status;
pub mod undo;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dtu_proto::codec::Key;
use dtu_proto::frame::{features, Hello, Role};
use dtu_proto::{Epoch, Receiver, Seq};
use tokio::sync::{watch, Notify};

use self::applier::Applier;
pub use self::rollback::HistoryError;
use self::rollback::Hold;
use self::undo::UndoState;
pub use self::undo::{AsOf, CheckpointInfo, UndoOptions};
pub use self::view::Listen;
use crate::config::{RemoteConfig, Volume};
use crate::identity::{Fingerprint, Identity};
use crate::metrics::{QuicMeter, RateMeter};
use crate::replica::{FileReplica, Replica, VolumeState};
use crate::status::Status;
use crate::transport::{self, LinkTuning};
use crate::workers::WorkerPool;

/// The Hello of a remote of `volume` whose replica holds every seq up to
/// `stored`, having last seen a primary of `epoch_seen`.
pub fn hello(volume: &Volume, epoch_seen: Epoch, stored: Seq) -> Hello {
    let mut feats = features::READS;
    if volume.key.is_some() {
        feats |= features::SEALING;
    }
    Hello {
        version: dtu_proto::PROTOCOL_VERSION,
        role: Role::Remote,
        volume_id: volume.id,
        volume_size: volume.size,
        block_size: volume.block_size,
        features: feats,
        epoch: epoch_seen,
        stored_seq: stored,
        highest_seq: 0,
        key_fingerprint: volume
            .key
            .as_ref()
            .map_or(0, |k| Key::from_bytes(k).fingerprint()),
        flags: 0,
        gens: Default::default(),
        map_base: 0,
        resume_from: 0,
        decision: 0,
        changed_bytes: 0,
        primary_since: 0,
    }
}

/// Why the remote cannot start, each with its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The certificate or key could not be read.
    #[error("cannot start the remote: its identity: {0}")]
    Identity(#[source] crate::identity::IdentityError),
    /// `identity.peer_fingerprint` is not a fingerprint.
    #[error("cannot start the remote: identity.peer_fingerprint: {0}")]
    PeerFingerprint(#[source] crate::identity::IdentityError),
    #[error("cannot start the remote: {what}: {source}")]
    /// A file, thread or runtime could not be made.
    Io {
        /// What was being made.
        what: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The replica could not be opened.
    #[error("cannot start the remote: {0}")]
    Replica(#[from] crate::replica::ReplicaError),
    #[error(
        "cannot start the remote: the replica storage holds {storage} bytes, the volume {volume}"
    )]
    /// The storage handed in is smaller or larger than the volume.
    StorageSize {
        /// Bytes the storage holds.
        storage: u64,
        /// Bytes of the volume.
        volume: u64,
    },
    /// The replica's state file could not be read or written.
    #[error("cannot start the remote: {0}")]
    State(#[from] crate::replica::StateError),
    #[error("cannot start the remote: undo journal {dir}: {source}")]
    /// The undo journal could not be opened.
    Undo {
        /// The journal's directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: crate::undo::UndoError,
    },
    /// A rollback a stop interrupted could not be finished.
    #[error("cannot start the remote: finishing a rollback left under way: {0}")]
    Rollback(#[from] rollback::RollbackError),
    /// The QUIC listener could not be made.
    #[error("cannot start the remote: {0}")]
    Listen(#[from] crate::transport::TransportError),
    /// The replica was promoted: this site is a primary now.
    #[error(
        "cannot start the remote: its replica was promoted (generation {:016x}); it is a \
         primary's volume now. Run this site as a primary (roles.primary), or demote that \
         primary to make the replica a remote's again",
        .0.current
    )]
    Promoted(dtu_proto::generation::Generations),
}

/// Everything the remote needs.
#[derive(Clone)]
pub struct RemoteOptions {
    /// The mirrored volume: its id, size, block size and sealing key.
    pub volume: Volume,
    /// This side's certificate and key.
    pub identity: Identity,
    /// The primary's certificate fingerprint; no other peer is accepted.
    pub peer: Fingerprint,
    /// Where to listen for the primary.
    pub listen: SocketAddr,
    /// The link's rate, round trip and congestion controller.
    pub tuning: LinkTuning,
    /// The replica file or block device (unless `storage` is given).
    pub replica: PathBuf,
    /// The replica's state file: its generation, position and consistency.
    pub state: PathBuf,
    /// Threads that check, open and decompress records.
    pub workers: usize,
    /// Use a replica whose identity does not match its state file (another
    /// inode or size, or changed since a clean stop), marking it
    /// inconsistent instead of refusing to start.
    pub adopt_replica: bool,
    /// The undo journal and checkpoint catalog (point in time); `None`
    /// keeps no history: checkpoints are only logged.
    pub undo: Option<UndoOptions>,
    /// The replica's storage when the embedding storage stack provides it
    /// (a volume it manages, an in-memory one): any [`Replica`]. `None`
    /// opens `replica` as a file or block device; with it, `replica` only
    /// names the replica in logs and status.
    pub storage: Option<Arc<dyn Replica>>,
    /// What a split brain at connect does (`roles.split_brain`; refuse by
    /// default).
    pub split_brain: crate::config::SplitBrainPolicy,
    /// Record that this replica's own changes may be discarded at the next
    /// connect (`--discard-my-data`): a split brain is resolved in the
    /// primary's favour.
    pub discard_my_data: bool,
}

impl RemoteOptions {
    /// The options a remote config file describes.
    pub fn from_config(c: &RemoteConfig) -> Result<RemoteOptions, RemoteError> {
        let identity = Identity::load(&c.cert, &c.key).map_err(RemoteError::Identity)?;
        let peer: Fingerprint = c
            .peer_fingerprint
            .parse()
            .map_err(RemoteError::PeerFingerprint)?;
        Ok(RemoteOptions {
            volume: c.volume.clone(),
            identity,
            peer,
            listen: c.link.addr,
            tuning: LinkTuning::from_link(&c.link),
            replica: c.replica.clone(),
            state: c.state.clone(),
            workers: c.pipeline.workers,
            adopt_replica: false,
            undo: c.undo.clone(),
            storage: None,
            split_brain: c.roles.split_brain,
            discard_my_data: false,
        })
    }
}

pub(crate) struct RState {
    pub receiver: Receiver,
    pub peer: Option<String>,
    /// Bumped for every accepted session; an older session stops.
    pub session: u64,
    pub lanes: usize,
    pub last_checkpoint: Option<String>,
    pub refused: u64,
    pub last_refusal: Option<String>,
    pub failed: Option<String>,
    pub syncs: u64,
    /// The last connect's decision and its reason, in one line.
    pub decision: Option<String>,
    /// Payload bytes applied and synced on the replica.
    pub stored_bytes: u64,
    /// Whether the applier may apply (a rollback trial or commit holds it).
    pub hold: Hold,
}

/// Shared by the network tasks, the decode workers and the applier.
pub(crate) struct RCore {
    state: Mutex<RState>,
    pub volume_state: Arc<Mutex<VolumeState>>,
    pub replica: Arc<dyn Replica>,
    /// The checkpoint catalog and undo journal, when on.
    pub undo: Option<Arc<Mutex<UndoState>>>,
    /// Writes released operations to the replica. Taken first when several
    /// locks are needed (applier, then state, then volume state), so a
    /// connect that restarts the stream waits for the batch being applied.
    pub applier: Mutex<Applier>,
    pub key: Option<Key>,
    pub hello: Hello,
    /// Frames to send on the control stream.
    pub control_wake: Notify,
    /// Released operations wait for the applier.
    pub apply_wake: crossbeam_channel::Sender<()>,
    /// The highest applied seq, for reads that must see earlier writes.
    pub applied: watch::Sender<Seq>,
    pub shutdown: AtomicBool,
    pub shutdown_wake: Notify,
    apply_rate: Mutex<RateMeter>,
    /// QUIC's own figures, across the primary's connections.
    pub quic: QuicMeter,
    /// What a split brain at connect does (`roles.split_brain`).
    pub split_brain: crate::config::SplitBrainPolicy,
    /// The primary handed its role over (a planned switchover): set by the
    /// session, told through `handover` once the session has ended.
    pub handover_pending: AtomicBool,
    pub handover: Notify,
    /// `dtu switchover` here: the control stream asks the primary to hand
    /// its role over.
    pub ask_handover: AtomicBool,
}

impl RCore {
    pub fn lock(&self) -> MutexGuard<'_, RState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the receiver, then wakes the applier and the control
    /// writer as needed.
    pub fn event<T>(&self, f: impl FnOnce(&mut Receiver) -> T) -> T {
        let out = f(&mut self.lock().receiver);
        let _ = self.apply_wake.try_send(());
        self.control_wake.notify_waiters();
        out
    }

    pub fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Resolves once shutdown is flagged, even if the wake-up came first.
    pub async fn shutdown_signal(&self) {
        loop {
            let n = self.shutdown_wake.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_shutdown() {
                return;
            }
            n.await;
        }
    }

    /// Samples the applied-bytes counter for the throughput figure.
    pub fn apply_rate_sample(&self, now: Instant) {
        let bytes = self.lock().receiver.stats().applied_bytes;
        self.apply_rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample(now, bytes);
    }
}

/// The remote DTU.
pub struct Remote {
    core: Arc<RCore>,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    applier: Option<std::thread::JoinHandle<()>>,
    decode: Option<Arc<WorkerPool<dtu_proto::frame::Write>>>,
    replica_path: PathBuf,
    volume: Volume,
    started: Instant,
    workers: usize,
    views: view::Views,
}

impl Remote {
    /// Starts a remote with its own async runtime.
    pub fn start(opts: RemoteOptions) -> Result<Remote, RemoteError> {
        let rt = crate::runtime::own("dtu-remote-io").map_err(|source| RemoteError::Io {
            what: "async runtime",
            source,
        })?;
        let handle = rt.handle().clone();
        let mut r = Self::start_on(opts, handle)?;
        r.runtime = Some(rt);
        Ok(r)
    }

    /// Starts a remote whose network tasks run on an existing runtime.
    pub fn start_on(
        opts: RemoteOptions,
        handle: tokio::runtime::Handle,
    ) -> Result<Remote, RemoteError> {
        let io = |what| move |source| RemoteError::Io { what, source };
        let replica: Arc<dyn Replica> = match &opts.storage {
            Some(r) if r.size() != opts.volume.size => {
                return Err(RemoteError::StorageSize {
                    storage: r.size(),
                    volume: opts.volume.size,
                })
            }
            Some(r) => r.clone(),
            None => Arc::new(FileReplica::open(&opts.replica, opts.volume.size)?),
        };
        let (vstate, resume) = VolumeState::open(
            &opts.state,
            opts.volume.id,
            replica.as_ref(),
            opts.adopt_replica,
        )?;
        if vstate.promoted() {
            return Err(RemoteError::Promoted(vstate.gens()));
        }
        let mut vstate = vstate;
        if opts.discard_my_data && !vstate.discard_my_data() {
            vstate
                .set_discard_my_data()
                .map_err(io("recording --discard-my-data in the replica state"))?;
            tracing::warn!(
                "this replica's own changes will be discarded at the next connect if the \
                 primary's and its histories diverged (--discard-my-data)"
            );
        }
        for why in &resume.inconsistent {
            tracing::warn!("the replica is inconsistent: {why}");
        }
        let undo = match &opts.undo {
            Some(u) => Some(Arc::new(Mutex::new(
                UndoState::open(u, u64::from(opts.volume.block_size), opts.volume.size).map_err(
                    |source| RemoteError::Undo {
                        dir: u.dir.clone(),
                        source,
                    },
                )?,
            ))),
            None => None,
        };
        let mut vstate = vstate;
        let mut stored = resume.stored;
        if let Some(u) = &undo {
            // A rollback commit cut short by a crash is finished before
            // anything is applied: the journal still holds what it needs.
            let mut u = u.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = rollback::finish_pending(&mut u, replica.as_ref(), &mut vstate)? {
                tracing::warn!(
                    "a rollback to checkpoint {} was under way at the last stop; it is \
                     finished: the replica holds that checkpoint's state, generation {:016x}",
                    c.checkpoint,
                    c.gen
                );
                stored = c.checkpoint.seq;
            }
        }
        let hello = hello(&opts.volume, resume.epoch_seen, stored);
        let vstate = Arc::new(Mutex::new(vstate));
        let mut applier = Applier::new(replica.clone(), vstate.clone(), stored);
        if let Some(u) = &undo {
            applier = applier.with_undo(u.clone());
        }
        let (apply_tx, apply_rx) = crossbeam_channel::bounded(1);
        let (applied, _) = watch::channel(stored);
        let core = Arc::new(RCore {
            state: Mutex::new(RState {
                receiver: Receiver::new(
                    stored,
                    resume.epoch_seen,
                    Duration::from_secs(1),
                    Instant::now(),
                ),
                peer: None,
                session: 0,
                lanes: 0,
                last_checkpoint: None,
                refused: 0,
                last_refusal: None,
                failed: None,
                syncs: 0,
                stored_bytes: 0,
                decision: None,
                hold: Hold::Applying,
            }),
            applier: Mutex::new(applier),
            volume_state: vstate,
            replica,
            undo,
            key: opts.volume.key.as_ref().map(Key::from_bytes),
            hello,
            control_wake: Notify::new(),
            apply_wake: apply_tx,
            applied,
            shutdown: AtomicBool::new(false),
            shutdown_wake: Notify::new(),
            apply_rate: Mutex::new(RateMeter::default()),
            quic: QuicMeter::default(),
            split_brain: opts.split_brain,
            handover_pending: AtomicBool::new(false),
            handover: Notify::new(),
            ask_handover: AtomicBool::new(false),
        });

        let dcore = core.clone();
        let decode = Arc::new(
            WorkerPool::new(
                "dtu-decode",
                opts.workers,
                opts.workers * 8,
                move |w: dtu_proto::frame::Write| {
                    let result = dtu_proto::codec::decode_chunk(
                        &w.chunk,
                        w.id,
                        w.offset,
                        dcore.key.as_ref(),
                    );
                    if let Err(e) = &result {
                        tracing::warn!(
                            "seq {} chunk {} refused: {e}; asking for it again",
                            w.id.seq,
                            w.id.index
                        );
                    }
                    dcore.event(|r| r.on_decoded(&w, result));
                },
            )
            .map_err(io("decode workers"))?,
        );
        let acore = core.clone();
        let applier = std::thread::Builder::new()
            .name("dtu-apply".into())
            .spawn(move || apply::run(acore, apply_rx))
            .map_err(io("the apply thread"))?;

        let endpoint = {
            let _g = handle.enter();
            transport::server_endpoint(opts.listen, &opts.identity, &opts.peer, &opts.tuning)?
        };
        let tasks = vec![
            handle.spawn(session::accept_loop(
                core.clone(),
                endpoint.clone(),
                decode.clone(),
            )),
            handle.spawn(session::timers(core.clone())),
        ];
        tracing::info!(
            "remote started: volume {}, replica {} holds through seq {}, listening on {}",
            dtu_proto::handshake::volume_hex(&opts.volume.id),
            opts.replica.display(),
            stored,
            endpoint
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        Ok(Remote {
            core,
            runtime: None,
            handle,
            endpoint,
            tasks,
            applier: Some(applier),
            decode: Some(decode),
            replica_path: opts.replica,
            volume: opts.volume,
            started: Instant::now(),
            workers: opts.workers,
            views: view::Views::default(),
        })
    }

    /// The UDP address the remote listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The highest seq synced on the replica.
    pub fn stored_seq(&self) -> Seq {
        self.core.lock().receiver.stored_upto()
    }

    /// The replica the remote applies to.
    pub fn replica(&self) -> Arc<dyn Replica> {
        self.core.replica.clone()
    }

    fn undo(&self) -> Result<std::sync::MutexGuard<'_, UndoState>, HistoryError> {
        match &self.core.undo {
            Some(u) => Ok(u.lock().unwrap_or_else(|p| p.into_inner())),
            None => Err(HistoryError::NoJournal),
        }
    }

    /// The checkpoints held, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointInfo>, HistoryError> {
        Ok(self.undo()?.list())
    }

    /// The checkpoint an as-of view at `at` shows: the nearest at or before
    /// the time, or the newest with the label; a time before the oldest is
    /// refused naming the oldest.
    pub fn resolve_as_of(&self, at: &AsOf) -> Result<CheckpointInfo, HistoryError> {
        let e = self.undo()?.resolve(at)?;
        Ok(self.info_of(&e))
    }

    /// Fills `buf` with the volume's bytes at `off` as they were at the
    /// checkpoint `at` resolves to ([`Remote::resolve_as_of`]), while
    /// replication continues; answers that checkpoint.
    pub fn read_as_of(
        &self,
        at: &AsOf,
        off: u64,
        buf: &mut [u8],
    ) -> Result<CheckpointInfo, HistoryError> {
        let info = self.resolve_as_of(at)?;
        self.read_era(info.era, off, buf)?;
        Ok(info)
    }

    /// As [`Remote::read_as_of`], at the checkpoint of undo era `era`
    /// (one resolved before: an export keeps showing the same point).
    pub fn read_era(&self, era: u64, off: u64, buf: &mut [u8]) -> Result<(), HistoryError> {
        let u = self.undo()?;
        let entry = u.resolve_era(era).ok_or(HistoryError::NoLongerHeld(era))?;
        Ok(u.read_as_of(&entry, off, buf, self.core.replica.as_ref())?)
    }

    /// A read-only NBD export of the replica as it was at the checkpoint
    /// `at` resolves to, while replication continues.
    pub fn as_of_export(&self, at: &AsOf) -> Result<undo::AsOfExport, HistoryError> {
        let Some(u) = &self.core.undo else {
            return Err(HistoryError::NoJournal);
        };
        let entry = u.lock().unwrap_or_else(|p| p.into_inner()).resolve(at)?;
        Ok(undo::AsOfExport::new(
            u.clone(),
            self.core.replica.clone(),
            entry,
        ))
    }

    /// What `--as-of` / `--to` names: a checkpoint's label, else a time
    /// (`@SECS` or `YYYY-MM-DD HH:MM[:SS]` UTC), else a label (refused
    /// when resolved, naming what is held).
    pub fn parse_as_of(&self, s: &str) -> AsOf {
        let labelled = self
            .checkpoints()
            .is_ok_and(|l| l.iter().any(|c| c.label == s));
        match undo::parse_time(s) {
            Some(t) if !labelled => AsOf::Time(t),
            _ => AsOf::Label(s.to_string()),
        }
    }

    fn info_of(&self, e: &crate::undo::Entry) -> CheckpointInfo {
        self.checkpoints()
            .ok()
            .and_then(|l| l.into_iter().find(|c| c.era == e.era))
            .unwrap_or(CheckpointInfo {
                seq: e.seq,
                time_us: e.time_us,
                kind: e.kind_name().to_string(),
                label: e.label.clone(),
                era: e.era,
                undo_bytes: 0,
            })
    }

    /// Serves the replica as it was at the checkpoint `at` resolves to, as
    /// a read-only NBD export at `listen`, while replication continues;
    /// answers the checkpoint and the export's URL. One view at a time.
    pub fn serve_as_of(
        &self,
        at: &AsOf,
        listen: &Listen,
    ) -> Result<(CheckpointInfo, String), HistoryError> {
        let ex = self.as_of_export(at)?;
        let entry = ex.checkpoint().clone();
        let url = self
            .views
            .serve(&self.handle, Arc::new(ex), entry.clone(), listen)?;
        Ok((self.info_of(&entry), url))
    }

    /// Stops the as-of view; answers what it showed and where.
    pub fn stop_as_of(&self) -> Result<String, HistoryError> {
        if let Hold::Trial(e) = &self.core.lock().hold {
            return Err(HistoryError::ViewOfTrial(Box::new(e.clone())));
        }
        match self.views.stop() {
            Some((e, url)) => Ok(format!(
                "the as-of view of checkpoint {e} at {url} is stopped"
            )),
            None => Err(HistoryError::NoView),
        }
    }

    /// Whether the applier is held, and why, in one line.
    pub fn hold(&self) -> Option<String> {
        self.core.lock().hold.describe()
    }

    /// Begins a rollback trial to the checkpoint `at` resolves to: applying
    /// pauses (the replica stays as it is; writes wait in the remote's
    /// queue, then in the primary's nvbuf; a primary reconnecting meanwhile
    /// is asked to wait) and, with `listen`, the checkpoint's view is served
    /// there read-only for inspection. Answers the checkpoint and the URL.
    pub fn rollback_trial(
        &self,
        at: &AsOf,
        listen: Option<&Listen>,
    ) -> Result<(CheckpointInfo, Option<String>), HistoryError> {
        let entry = self.undo()?.resolve(at)?;
        {
            let mut st = self.core.lock();
            if let Some(busy) = Self::held_by(&st.hold) {
                return Err(busy);
            }
            if let Some(why) = &st.failed {
                return Err(HistoryError::Stopped(why.clone()));
            }
            st.hold = Hold::Trial(entry.clone());
        }
        // The batch being applied ends; from here the replica is still.
        drop(self.core.applier.lock().unwrap_or_else(|p| p.into_inner()));
        let url = match listen {
            None => None,
            Some(l) => {
                let ex = self.as_of_export(at)?;
                match self
                    .views
                    .serve(&self.handle, Arc::new(ex), entry.clone(), l)
                {
                    Ok(u) => Some(u),
                    Err(e) => {
                        self.resume_applying();
                        return Err(e.into());
                    }
                }
            }
        };
        tracing::warn!(
            "rollback trial to checkpoint {entry}: applying is paused{}",
            url.as_ref()
                .map_or(String::new(), |u| format!("; its view is at {u}"))
        );
        Ok((self.info_of(&entry), url))
    }

    fn held_by(hold: &Hold) -> Option<HistoryError> {
        match hold {
            Hold::Applying => None,
            Hold::Trial(e) => Some(HistoryError::TrialUnderWay(Box::new(e.clone()))),
            Hold::RolledBack(e) => Some(HistoryError::RolledBack(Box::new(e.clone()))),
            Hold::Promoted => Some(HistoryError::Stopped(
                "the replica was promoted: it is a primary's volume now".into(),
            )),
        }
    }

    fn resume_applying(&self) {
        self.core.lock().hold = Hold::Applying;
        let _ = self.core.apply_wake.try_send(());
    }

    /// Abandons the rollback trial: the view stops, applying resumes where
    /// it paused. Answers the checkpoint the trial was of.
    pub fn rollback_abandon(&self) -> Result<CheckpointInfo, HistoryError> {
        let entry = match &self.core.lock().hold {
            Hold::Trial(e) => e.clone(),
            _ => return Err(HistoryError::NoTrial { needs_to: false }),
        };
        self.views.stop();
        self.resume_applying();
        tracing::info!("rollback trial to checkpoint {entry} abandoned: applying resumes");
        Ok(self.info_of(&entry))
    }

    /// Rolls the replica back to a checkpoint, for good: the one the trial
    /// under way shows (`at` absent, or naming the same checkpoint), or
    /// `at` without a trial. The replica is rewritten from the undo
    /// journal, synced, and given a generation of its own; the later
    /// checkpoints go; the primary's session ends and a primary of the old
    /// generation is refused at connect until the pair is brought back
    /// into line. Crash-safe: a remote restarted half-way finishes it.
    pub fn rollback_commit(&self, at: Option<&AsOf>) -> Result<rollback::Committed, HistoryError> {
        let Some(undo) = self.core.undo.clone() else {
            return Err(HistoryError::NoJournal);
        };
        let asked = match at {
            Some(a) => Some(self.undo()?.resolve(a)?),
            None => None,
        };
        let entry = {
            let mut st = self.core.lock();
            let entry = match (&st.hold, asked) {
                (Hold::Trial(e), None) => e.clone(),
                (Hold::Trial(e), Some(a)) if a.era == e.era => a,
                (Hold::Trial(e), Some(a)) => {
                    return Err(HistoryError::OtherTrial {
                        trial: Box::new(e.clone()),
                        asked: Box::new(a),
                    })
                }
                (Hold::Applying, Some(a)) => a,
                (Hold::Applying, None) => return Err(HistoryError::NoTrial { needs_to: true }),
                (Hold::RolledBack(e), _) => {
                    return Err(HistoryError::RolledBack(Box::new(e.clone())))
                }
                (Hold::Promoted, _) => {
                    return Err(HistoryError::Stopped(
                        "the replica was promoted: it is a primary's volume now".into(),
                    ))
                }
            };
            if let Some(why) = &st.failed {
                return Err(HistoryError::Stopped(why.clone()));
            }
            st.hold = Hold::Trial(entry.clone());
            entry
        };
        let mut applier = self.core.applier.lock().unwrap_or_else(|p| p.into_inner());
        // What was applied is made durable first: the journal's copies
        // protect it, and the rewrite must start from a synced replica.
        let fail = |e: HistoryError| {
            tracing::error!("{e}");
            self.core.lock().failed = Some(e.to_string());
            e
        };
        applier.sync().map_err(|e| {
            fail(HistoryError::Stopped(format!(
                "the rollback cannot start: {e}"
            )))
        })?;
        self.views.stop();
        // The primary's session ends: what it sends follows a history the
        // replica is about to leave.
        {
            let mut st = self.core.lock();
            st.session += 1;
            st.peer = None;
            st.lanes = 0;
        }
        self.core.control_wake.notify_waiters();
        let marker = rollback::marker_for(&entry, rand::random());
        let committed = {
            let mut u = undo.lock().unwrap_or_else(|p| p.into_inner());
            let mut vs = self
                .core
                .volume_state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            rollback::commit(&mut u, marker, self.core.replica.as_ref(), &mut vs)
        }
        .map_err(|source| {
            fail(HistoryError::Failed {
                checkpoint: Box::new(entry.clone()),
                source,
            })
        })?;
        applier.rebase(entry.seq);
        {
            let mut st = self.core.lock();
            let epoch = st.receiver.epoch_seen();
            // Nothing queued for the old history survives.
            st.receiver = Receiver::new(entry.seq, epoch, Duration::from_secs(1), Instant::now());
            st.hold = Hold::RolledBack(entry.clone());
            st.decision = Some(format!(
                "rolled back to checkpoint {entry}: generation {:016x}",
                committed.gen
            ));
        }
        self.core.applied.send_replace(entry.seq);
        tracing::warn!(
            "the replica is rolled back to checkpoint {entry} ({} bytes rewritten, {} zeroed, {} \
             later checkpoints dropped) and takes generation {:016x}: the primary it left is \
             refused until the pair is brought back into line",
            committed.written,
            committed.zeroed,
            committed.dropped.len(),
            committed.gen
        );
        Ok(committed)
    }

    /// Everything the status display shows.
    pub fn status(&self) -> Status {
        Status::Remote(Box::new(status::build(self)))
    }

    /// The async runtime the network tasks run on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Stops listening, finishes applying what was released, syncs the
    /// replica and its state.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.core.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        self.core.shutdown_wake.notify_waiters();
        let _ = self.core.apply_wake.try_send(());
        let tasks = std::mem::take(&mut self.tasks);
        crate::runtime::stop_tasks(
            self.runtime.as_ref(),
            &self.handle,
            tasks,
            self.endpoint.clone(),
            b"remote shutting down",
        );
        self.decode.take();
        if let Some(t) = self.applier.take() {
            let _ = t.join();
        }
        // A clean stop: the replica is synced and its sampled blocks are
        // recorded, so a replica changed before the next start is noticed.
        if self.core.lock().failed.is_none() {
            let replica = self.core.replica.clone();
            let closed = replica.sync().and_then(|()| {
                self.core
                    .volume_state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .close_clean(replica.as_ref())
            });
            if let Err(e) = closed {
                tracing::warn!("replica state at shutdown: {e}");
            }
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.stop();
    }
}

impl crate::control::Controlled for Remote {
    fn handle(&self, req: crate::control::Request) -> crate::control::Response {
        use crate::control::{Request, Response};
        match req {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Checkpoints => match self.checkpoints() {
                Ok(checkpoints) => Response::Checkpoints { checkpoints },
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            },
            Request::Export { as_of, tcp, unix } => {
                let listen = Listen::from_request(tcp, unix)
                    .unwrap_or_else(|| Listen::Tcp("127.0.0.1:0".into()));
                match self.serve_as_of(&self.parse_as_of(&as_of), &listen) {
                    Ok((c, url)) => Response::Ok {
                        message: format!(
                            "serving the replica as of checkpoint {:?} ({}, seq {}) read-only at {url}",
                            c.label,
                            crate::undo::fmt_time_us(c.time_us),
                            c.seq
                        ),
                    },
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                }
            }
            Request::Unexport => match self.stop_as_of() {
                Ok(message) => Response::Ok { message },
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            },
            Request::Rollback {
                action,
                to,
                tcp,
                unix,
            } => {
                use crate::control::RollbackAction;
                let at = to.map(|t| self.parse_as_of(&t));
                let listen = Listen::from_request(tcp, unix);
                let r = match (action, at) {
                    (RollbackAction::Trial, Some(at)) => {
                        self.rollback_trial(&at, listen.as_ref()).map(|(c, url)| {
                            format!(
                                "rollback trial to checkpoint {:?} (seq {}): applying is paused{}; \
                                 `dtu rollback --commit` rewrites the replica to it, \
                                 `dtu rollback --abandon` resumes",
                                c.label,
                                c.seq,
                                url.map(|u| format!(", its view is served read-only at {u}"))
                                    .unwrap_or_default()
                            )
                        })
                    }
                    (RollbackAction::Trial, None) => Err(HistoryError::NoTrial { needs_to: true }),
                    (RollbackAction::Commit, at) => self.rollback_commit(at.as_ref()).map(|c| {
                        format!(
                            "the replica is rolled back to checkpoint {} ({} rewritten, {} \
                                 zeroed, {} later checkpoints dropped) and starts generation \
                                 {:016x}; the primary it left will be refused until the pair \
                                 is brought back into line",
                            c.checkpoint,
                            dtu_proto::units::format_bytes(c.written),
                            dtu_proto::units::format_bytes(c.zeroed),
                            c.dropped.len(),
                            c.gen
                        )
                    }),
                    (RollbackAction::Abandon, _) => self.rollback_abandon().map(|c| {
                        format!(
                            "the rollback trial to checkpoint {:?} is abandoned; applying resumes",
                            c.label
                        )
                    }),
                };
                match r {
                    Ok(message) => Response::Ok { message },
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                }
            }
            Request::Promote { .. } => Response::Error {
                message: "a promotion is run by the dtu process (dtu promote); an embedding \
                          storage stack calls Remote::promote and primary::role::prepare_promoted"
                    .into(),
            },
            Request::Switchover => match self.request_handover() {
                Ok(message) => Response::Ok { message },
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            },
            other => Response::Error {
                message: format!("{other:?} is for the primary; this is the remote"),
            },
        }
    }

    fn status(&self) -> Status {
        Remote::status(self)
    }
}
