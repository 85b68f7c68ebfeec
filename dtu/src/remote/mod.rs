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
mod session;
mod status;
pub mod undo;

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
use self::undo::UndoState;
pub use self::undo::{AsOf, CheckpointInfo, UndoOptions};
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
    }
}

/// Why the remote cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot start the remote: {0}")]
    Start(String),
}

/// Everything the remote needs.
#[derive(Clone)]
pub struct RemoteOptions {
    pub volume: Volume,
    pub identity: Identity,
    pub peer: Fingerprint,
    pub listen: SocketAddr,
    pub tuning: LinkTuning,
    pub replica: PathBuf,
    pub state: PathBuf,
    pub workers: usize,
    /// Use a replica whose identity does not match its state file (another
    /// inode or size, or changed since a clean stop), marking it
    /// inconsistent instead of refusing to start.
    pub adopt_replica: bool,
    /// The undo journal and checkpoint catalog (point in time); `None`
    /// keeps no history: checkpoints are only logged.
    pub undo: Option<UndoOptions>,
}

impl RemoteOptions {
    pub fn from_config(c: &RemoteConfig) -> Result<RemoteOptions, RemoteError> {
        let identity =
            Identity::load(&c.cert, &c.key).map_err(|e| RemoteError::Start(e.to_string()))?;
        let peer: Fingerprint =
            c.peer_fingerprint
                .parse()
                .map_err(|e: crate::identity::IdentityError| {
                    RemoteError::Start(format!("identity.peer_fingerprint: {e}"))
                })?;
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
}

impl Remote {
    /// Starts a remote with its own async runtime.
    pub fn start(opts: RemoteOptions) -> Result<Remote, RemoteError> {
        let rt = crate::runtime::own("dtu-remote-io")
            .map_err(|e| RemoteError::Start(format!("async runtime: {e}")))?;
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
        let err = |e: &dyn std::fmt::Display| RemoteError::Start(e.to_string());
        let replica: Arc<dyn Replica> =
            Arc::new(FileReplica::open(&opts.replica, opts.volume.size).map_err(|e| err(&e))?);
        let (vstate, resume) = VolumeState::open(
            &opts.state,
            opts.volume.id,
            replica.as_ref(),
            opts.adopt_replica,
        )
        .map_err(|e| err(&e))?;
        for why in &resume.inconsistent {
            tracing::warn!("the replica is inconsistent: {why}");
        }
        let hello = hello(&opts.volume, resume.epoch_seen, resume.stored);
        let undo = match &opts.undo {
            Some(u) => Some(Arc::new(Mutex::new(
                UndoState::open(u, u64::from(opts.volume.block_size), opts.volume.size).map_err(
                    |e| RemoteError::Start(format!("undo journal {}: {e}", u.dir.display())),
                )?,
            ))),
            None => None,
        };
        let vstate = Arc::new(Mutex::new(vstate));
        let mut applier = Applier::new(replica.clone(), vstate.clone(), resume.stored);
        if let Some(u) = &undo {
            applier = applier.with_undo(u.clone());
        }
        let (apply_tx, apply_rx) = crossbeam_channel::bounded(1);
        let (applied, _) = watch::channel(resume.stored);
        let core = Arc::new(RCore {
            state: Mutex::new(RState {
                receiver: Receiver::new(
                    resume.stored,
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
            .map_err(|e| err(&e))?,
        );
        let acore = core.clone();
        let applier = std::thread::Builder::new()
            .name("dtu-apply".into())
            .spawn(move || apply::run(acore, apply_rx))
            .map_err(|e| err(&e))?;

        let endpoint = {
            let _g = handle.enter();
            transport::server_endpoint(opts.listen, &opts.identity, &opts.peer, &opts.tuning)
                .map_err(|e| err(&e))?
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
            resume.stored,
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

    pub fn replica(&self) -> Arc<dyn Replica> {
        self.core.replica.clone()
    }

    fn undo(&self) -> Result<std::sync::MutexGuard<'_, UndoState>, String> {
        match &self.core.undo {
            Some(u) => Ok(u.lock().unwrap_or_else(|p| p.into_inner())),
            None => Err("this remote keeps no undo journal (undo.enabled = false)".into()),
        }
    }

    /// The checkpoints held, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointInfo>, String> {
        Ok(self.undo()?.list())
    }

    /// The checkpoint an as-of view at `at` shows: the nearest at or before
    /// the time, or the newest with the label; a time before the oldest is
    /// refused naming the oldest.
    pub fn resolve_as_of(&self, at: &AsOf) -> Result<CheckpointInfo, String> {
        let u = self.undo()?;
        let e = u.resolve(at).map_err(|e| e.to_string())?;
        Ok(u.list()
            .into_iter()
            .find(|c| c.era == e.era)
            .unwrap_or(CheckpointInfo {
                seq: e.seq,
                time_us: e.time_us,
                kind: e.kind_name().to_string(),
                label: e.label.clone(),
                era: e.era,
                undo_bytes: 0,
            }))
    }

    /// Fills `buf` with the volume's bytes at `off` as they were at the
    /// checkpoint `at` resolves to ([`Remote::resolve_as_of`]), while
    /// replication continues; answers that checkpoint.
    pub fn read_as_of(
        &self,
        at: &AsOf,
        off: u64,
        buf: &mut [u8],
    ) -> Result<CheckpointInfo, String> {
        let info = self.resolve_as_of(at)?;
        self.read_era(info.era, off, buf)?;
        Ok(info)
    }

    /// As [`Remote::read_as_of`], at the checkpoint of undo era `era`
    /// (one resolved before: an export keeps showing the same point).
    pub fn read_era(&self, era: u64, off: u64, buf: &mut [u8]) -> Result<(), String> {
        let u = self.undo()?;
        let entry = u.resolve_era(era).ok_or_else(|| {
            format!("the checkpoint of undo era {era} is no longer held (retention dropped it)")
        })?;
        u.read_as_of(&entry, off, buf, self.core.replica.as_ref())
            .map_err(|e| e.to_string())
    }

    /// A read-only NBD export of the replica as it was at the checkpoint
    /// `at` resolves to, while replication continues.
    pub fn as_of_export(&self, at: &AsOf) -> Result<undo::AsOfExport, String> {
        let Some(u) = &self.core.undo else {
            return Err("this remote keeps no undo journal (undo.enabled = false)".into());
        };
        let entry = u
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resolve(at)
            .map_err(|e| e.to_string())?;
        Ok(undo::AsOfExport::new(
            u.clone(),
            self.core.replica.clone(),
            entry,
        ))
    }

    /// Everything the status display shows.
    pub fn status(&self) -> Status {
        Status::Remote(Box::new(status::build(self)))
    }

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
                Err(message) => Response::Error { message },
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
