//! The primary DTU as a library: the object a storage stack embeds to mirror
//! its writes.
//!
//! [`Primary::start`] opens (or creates) the nvbuf, recovers and queues for
//! resending whatever it holds, starts the encode workers and the appender,
//! and keeps a QUIC session to the remote up. The host then calls
//! [`Primary::write`], [`Primary::flush`], [`Primary::trim`] and
//! [`Primary::checkpoint`]; each returns a [`Pending`] that resolves when the
//! operation is answered under the acknowledgement policy in force. A
//! `Pending` can be awaited from async code or waited on from a thread.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dtu::primary::{Primary, PrimaryOptions};
//! let cfg = dtu::config::PrimaryConfig::load("primary.toml".as_ref())?;
//! let primary = Primary::start(PrimaryOptions::from_config(&cfg)?)?;
//! // The storage stack's write path:
//! let answer = primary.write(0, bytes::Bytes::from(vec![0xab; 4096]))?.wait()?;
//! println!("seq {} answered at {}", answer.seq, answer.trigger);
//! primary.report_dirty(82.0); // the host's cache is filling up
//! primary.flush()?.wait()?;
//! # Ok(()) }
//! ```

pub mod appender;
pub mod connect;
mod core;
mod error;
mod export;
#[cfg(feature = "demo")]
mod host;
pub mod ingest;
pub mod local;
pub mod meta;
pub mod mode;
pub mod replay;
pub mod restore;
pub mod role;
mod session;
mod status;
pub mod sync;
mod syncer;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu_proto::codec::Key;
use dtu_proto::frame::{Checkpoint, Flush, Frame, Trim};
use dtu_proto::sender::{OpKind, SenderConfig};
use dtu_proto::{AckPolicy, Seq, Trigger, VolumeId};
use tokio::sync::oneshot;

use crate::config::{PrimaryConfig, Volume};
use crate::identity::{Fingerprint, Identity};
use crate::nvbuf::{Nvbuf, NvbufConfig, NvbufError, OnLoss};
use crate::replica::{FileReplica, Replica};
use crate::status::Status;
use crate::transport::{self, LinkTuning};

use self::core::Core;
pub use self::core::LinkState;
pub use self::error::{Halt, PrimaryError, ReadUnavailable, StartError};
pub use self::export::PrimaryExport;
#[cfg(feature = "demo")]
pub use self::host::HostSink;
use self::ingest::{EncodeSettings, Ingest, Record};
use self::local::LocalCopy;
use self::meta::{LostWrites, PrimaryMeta};
use self::mode::FoldError;
pub use self::mode::{Mode, Overflow};
use crate::changemap::{ChangeMap, ChangeMapError, SparseFile};
use dtu_proto::generation::{Generations, InitialSync};

/// How a host operation was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Its place in the stream (0 for a write made while ahead, which has
    /// none: it went to the local copy and the changed-block map).
    pub seq: Seq,
    /// The stage that answered it; `remote-stored` is the true ack.
    pub trigger: Trigger,
    /// From submission to answer.
    pub latency: Duration,
    /// Answered from the local copy and the changed-block map, not the
    /// journal: the primary was (or went) ahead.
    pub ahead: bool,
}

// Every write the NBD front end accepts must be one the primary accepts.
const _: () = assert!(crate::nbd::wire::MAX_REQUEST_LEN as usize <= dtu_proto::MAX_WRITE_BYTES);

/// A host operation in progress; resolves to its [`Answer`].
#[derive(Debug)]
pub struct Pending {
    rx: oneshot::Receiver<Result<Answer, PrimaryError>>,
}

impl Pending {
    /// Blocks the calling thread until the operation is answered. Do not
    /// call from inside an async task: await the `Pending` instead.
    pub fn wait(self) -> Result<Answer, PrimaryError> {
        self.rx
            .blocking_recv()
            .unwrap_or(Err(PrimaryError::ShuttingDown))
    }
}

impl Future for Pending {
    type Output = Result<Answer, PrimaryError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(PrimaryError::ShuttingDown)))
    }
}

/// Everything the primary needs; [`PrimaryOptions::from_config`] builds it
/// from a config file, embedders fill it in directly.
#[derive(Clone)]
pub struct PrimaryOptions {
    /// The mirrored volume: its id, size, block size and sealing key.
    pub volume: Volume,
    /// This side's certificate and key.
    pub identity: Identity,
    /// The remote's certificate fingerprint; no other peer is accepted.
    pub peer: Fingerprint,
    /// Where the remote listens.
    pub remote: SocketAddr,
    /// The name the remote's certificate is checked against.
    pub server_name: String,
    /// The link's rate, round trip and congestion controller.
    pub tuning: LinkTuning,
    /// Parallel QUIC streams carrying records.
    pub lanes: usize,
    /// The nvbuf file; made if missing, recovered if not.
    pub nvbuf_path: PathBuf,
    /// Bytes of the nvbuf (rounded down to its page).
    pub nvbuf_size: u64,
    /// Threads that compress, seal and checksum chunks.
    pub workers: usize,
    /// Largest piece of a write in one record, in bytes.
    pub chunk_size: usize,
    /// Compress chunks (snappy) before sealing them.
    pub compress: bool,
    /// When host operations are answered.
    pub policy: AckPolicy,
    /// Keep a local copy of the volume and serve reads from it.
    pub local: Option<PathBuf>,
    /// How long a read forwarded to the remote may wait for the link.
    pub read_timeout: Duration,
    /// Start even when the nvbuf lost records that had been made durable
    /// (answered writes): keep the intact prefix and mark the replica as
    /// possibly lacking them. Without it such an nvbuf refuses to start.
    pub accept_nvbuf_loss: bool,
    /// The changed-block map, sync, overflow and verify settings.
    pub mirror: MirrorOptions,
    /// The remote is known to be gone (this primary was just promoted
    /// and its peer is the lost site): host operations are answered at
    /// `buffered` at once instead of after `nvbuf.overflow_after`.
    pub peer_lost: bool,
    /// The local copy is new and empty (its disk was lost): restore it from
    /// the remote in the background while the host runs, reads of what is
    /// not local yet served by the remote (`--restore-from-remote`). A
    /// restore that a stop interrupted goes on without it.
    pub restore_from_remote: bool,
}

/// How the primary keeps a replica that is behind in step: the
/// changed-block map, initial sync, overflow and verify.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// The changed-block map file (default: the nvbuf's path + `.map`).
    pub map_path: Option<PathBuf>,
    /// Bytes one map bit stands for.
    pub map_granularity: u64,
    /// What to do when the nvbuf stays full (default: `bitmap` with a
    /// local copy, `stall` without).
    pub overflow: Option<Overflow>,
    /// How long writers may wait for nvbuf space before `overflow` acts.
    pub overflow_after: Duration,
    /// For a replica that was never synced.
    pub initial_sync: InitialSync,
    /// Compare digests before copying on every resync, not only the ones
    /// that need it.
    pub sync_checksum: bool,
    /// Cap on the sync's pace, bytes per second.
    pub sync_rate_max: Option<u64>,
    /// Verify the whole volume this often.
    pub verify_every: Option<Duration>,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions {
            map_path: None,
            map_granularity: crate::changemap::DEFAULT_GRANULARITY,
            overflow: None,
            overflow_after: DEFAULT_OVERFLOW_AFTER,
            initial_sync: InitialSync::Full,
            sync_checksum: false,
            sync_rate_max: None,
            verify_every: None,
        }
    }
}

/// How long writers wait for nvbuf space before the overflow policy acts,
/// unless configured: longer than a link hiccup, far shorter than a host's
/// I/O timeout (30 s and more).
pub const DEFAULT_OVERFLOW_AFTER: Duration = Duration::from_secs(5);

/// How long a host read waits for the restore's fetch of an extent it
/// needs before it fetches the bytes itself.
const REBUILD_WAIT: Duration = Duration::from_secs(5);

impl PrimaryOptions {
    /// The options a primary config file describes.
    pub fn from_config(c: &PrimaryConfig) -> Result<PrimaryOptions, PrimaryError> {
        let identity =
            Identity::load(&c.cert, &c.key).map_err(|e| StartError::Identity(Arc::new(e)))?;
        let peer: Fingerprint = c
            .peer_fingerprint
            .parse()
            .map_err(|e| StartError::PeerFingerprint(Arc::new(e)))?;
        Ok(PrimaryOptions {
            volume: c.volume.clone(),
            identity,
            peer,
            remote: c.link.addr,
            server_name: c.link.server_name.clone(),
            tuning: LinkTuning::from_link(&c.link),
            lanes: c.link.lanes,
            nvbuf_path: c.nvbuf_path.clone(),
            nvbuf_size: c.nvbuf_size,
            workers: c.pipeline.workers,
            chunk_size: c.pipeline.chunk_size,
            compress: c.pipeline.compress,
            policy: c.policy,
            local: c.local.clone(),
            read_timeout: Duration::from_secs(30),
            accept_nvbuf_loss: false,
            mirror: c.mirror.clone(),
            peer_lost: false,
            restore_from_remote: false,
        })
    }
}

/// The primary DTU.
pub struct Primary {
    core: Arc<Core>,
    ingest: Ingest,
    syncer: Option<std::thread::JoinHandle<()>>,
    local: Option<Arc<LocalCopy>>,
    volume: Volume,
    epoch: u32,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: quinn::Endpoint,
    read_timeout: Duration,
    started: Instant,
    recovered: usize,
    lanes: usize,
}

impl Primary {
    /// Starts a primary with its own async runtime.
    pub fn start(opts: PrimaryOptions) -> Result<Primary, PrimaryError> {
        let rt =
            crate::runtime::own("dtu-primary-io").map_err(StartError::spawn("async runtime"))?;
        let handle = rt.handle().clone();
        let mut p = Self::start_on(opts, handle)?;
        p.runtime = Some(rt);
        Ok(p)
    }

    /// Starts a primary whose network tasks run on an existing runtime.
    pub fn start_on(
        opts: PrimaryOptions,
        handle: tokio::runtime::Handle,
    ) -> Result<Primary, PrimaryError> {
        // Options filled in by an embedder get the bounds a config file has:
        // a chunk size outside them makes writes the remote refuses.
        let chunks = dtu_proto::MIN_CHUNK_SIZE..=dtu_proto::MAX_CHUNK_SIZE;
        if !chunks.contains(&opts.chunk_size) {
            return Err(StartError::ChunkSize {
                size: opts.chunk_size,
                min: *chunks.start(),
                max: *chunks.end(),
            }
            .into());
        }
        opts.policy.validate().map_err(StartError::from)?;
        let mut cfg = NvbufConfig::new(opts.volume.id).with_size(opts.nvbuf_size);
        cfg.on_loss = if opts.accept_nvbuf_loss {
            OnLoss::Salvage
        } else {
            OnLoss::Refuse
        };
        let (nvbuf, recovery) =
            Nvbuf::open_or_create(&opts.nvbuf_path, &cfg).map_err(|e| match e {
                NvbufError::Lost { .. } => StartError::NvbufLost(Arc::new(e)),
                e => StartError::Nvbuf(Arc::new(e)),
            })?;
        if let Some(why) = &recovery.stopped {
            tracing::warn!("nvbuf recovery stopped at a torn record (an unflushed tail): {why}");
        }
        let mut meta = PrimaryMeta::decode(&nvbuf.meta()).map_err(StartError::from)?;
        if meta.demoted {
            return Err(StartError::Demoted {
                nvbuf: opts.nvbuf_path.clone(),
            }
            .into());
        }
        if meta.gens.current == 0 {
            // A new primary: its first generation.
            meta.gens = Generations::new(rand::random::<u64>() | 1);
            meta.primary_since = crate::primary::role::unix_now();
            nvbuf
                .set_meta(&meta.encode())
                .map_err(|e| StartError::Nvbuf(Arc::new(e)))?;
        }
        if let Some(loss) = &recovery.loss {
            tracing::error!(
                "nvbuf: {loss}; continuing with the intact prefix as --accept-nvbuf-loss asks; \
                 the replica will be marked inconsistent"
            );
            meta.unreported_loss = Some(LostWrites {
                epoch: nvbuf.epoch(),
                first_seq: loss.first_seq,
                last_seq: loss.last_seq,
            });
            nvbuf
                .set_meta(&meta.encode())
                .map_err(|e| StartError::Nvbuf(Arc::new(e)))?;
        }
        let wanted = opts.nvbuf_size / crate::nvbuf::PAGE as u64 * crate::nvbuf::PAGE as u64;
        let nvbuf = if nvbuf.file_size() == wanted {
            nvbuf
        } else if recovery.records.is_empty() {
            tracing::info!(
                "nvbuf {} is {} bytes, the config asks for {wanted}: it holds nothing \
                 unreplicated, so it is replaced by one of the new size",
                opts.nvbuf_path.display(),
                nvbuf.file_size()
            );
            nvbuf
                .resize_empty(&opts.nvbuf_path, wanted)
                .map_err(|e| StartError::Nvbuf(Arc::new(e)))?
        } else {
            tracing::warn!(
                "nvbuf {} is {} bytes but nvbuf.size asks for {wanted}: it still holds {} \
                 unreplicated records, so it keeps its size for now; a start after the remote \
                 has stored them resizes it",
                opts.nvbuf_path.display(),
                nvbuf.file_size(),
                recovery.records.len()
            );
            nvbuf
        };
        let nvbuf = Arc::new(nvbuf);
        let epoch = nvbuf.epoch();
        let now = Instant::now();
        let first = recovery.first_seq.unwrap_or_else(|| nvbuf.next_seq());
        let restore = match &opts.local {
            Some(path) => {
                let rpath = restore::map_path(path);
                match restore::Restore::open(rpath.clone(), opts.volume.size).map_err(|e| {
                    StartError::RestoreMap {
                        path: rpath.clone(),
                        source: Arc::new(e),
                    }
                })? {
                    Some(r) => {
                        tracing::warn!(
                            "a restore of the local copy from the remote is under way ({} left): \
                             it goes on",
                            crate::units::format_bytes(
                                r.progress().total_bytes - r.progress().done_bytes
                            )
                        );
                        Some(Arc::new(r))
                    }
                    None if opts.restore_from_remote => Some(Arc::new(
                        restore::Restore::everything(rpath, opts.volume.size),
                    )),
                    None => None,
                }
            }
            None if opts.restore_from_remote => return Err(StartError::RestoreWithoutLocal.into()),
            None => None,
        };
        let restoring = restore.as_ref().is_some_and(|r| !r.done());
        let overflow = opts.mirror.overflow.unwrap_or(if opts.local.is_some() {
            Overflow::Bitmap
        } else {
            Overflow::Stall
        });
        // Writing ahead would later resync extents from a local copy that
        // does not hold them yet.
        let overflow = if restoring && overflow == Overflow::Bitmap {
            tracing::warn!(
                "while the local copy is restored, a full nvbuf makes host writes wait (stall) \
                 instead of writing ahead"
            );
            Overflow::Stall
        } else {
            overflow
        };
        let mut sender = dtu_proto::Sender::new(
            SenderConfig {
                policy: opts.policy,
                max_inflight_bytes: opts.tuning.inflight_window(),
                retransmit_timeout: None,
                heartbeat_interval: Duration::from_secs(1),
                // The host waits for the link at most as long as for nvbuf
                // space, unless the operator chose to stall.
                degrade_after: (overflow != Overflow::Stall).then_some(opts.mirror.overflow_after),
            },
            epoch,
            first,
            now,
        );
        if opts.peer_lost {
            if let Some(since) = now.checked_sub(opts.mirror.overflow_after) {
                sender.down_since(since);
            }
        }
        // Recovered records are resent; no host waits for them any more.
        let recovered = replay::into_sender(&recovery, &mut sender, now)
            .map_err(|e| StartError::Replay(Arc::new(e)))?
            .ops;
        if sender.next_seq() != nvbuf.next_seq() {
            return Err(StartError::Inconsistent {
                records: sender.next_seq(),
                nvbuf: nvbuf.next_seq(),
            }
            .into());
        }
        if recovered > 0 {
            tracing::info!(
                "recovered {recovered} unreplicated operations from the nvbuf (seq {}..={}), resending",
                first,
                sender.highest_seq()
            );
        }
        let carried_over = nvbuf.next_seq() - 1;
        let key = opts.volume.key.as_ref().map(Key::from_bytes);
        let mut restore_into: Option<Arc<dyn Replica>> = None;
        let local = match &opts.local {
            Some(path) => {
                let file: Arc<dyn Replica> = Arc::new(
                    FileReplica::open(path, opts.volume.size)
                        .map_err(|e| StartError::LocalCopy(Arc::new(e)))?,
                );
                let disk: Arc<dyn Replica> = match &restore {
                    Some(r) if !r.done() => {
                        restore_into = Some(file.clone());
                        Arc::new(restore::RestoringDisk {
                            inner: file,
                            restore: r.clone(),
                        })
                    }
                    _ => file,
                };
                let local = Arc::new(LocalCopy::new(disk, carried_over));
                replay::into_local(&recovery, &local, key.as_ref())
                    .map_err(|e| StartError::Replay(Arc::new(e)))?;
                Some(local)
            }
            None => None,
        };
        if overflow == Overflow::Bitmap && local.is_none() {
            return Err(StartError::BitmapWithoutLocal.into());
        }
        let map = match &local {
            Some(_) => Some(Arc::new(
                open_map(&opts, &mut meta).map_err(|e| StartError::ChangeMap(Arc::new(e)))?,
            )),
            None => None,
        };
        let mut mode = Mode::Journal;
        if let (Some(map), false) = (&map, meta.ahead) {
            let cleared = mode::clear_replayed(&nvbuf, map)
                .map_err(|e| StartError::ChangeMap(Arc::new(e)))?;
            if cleared > 0 {
                tracing::info!(
                    "{} of the changed-block map reach the replica with the nvbuf's replay",
                    crate::units::format_bytes(cleared)
                );
            }
        }
        if meta.ahead {
            let (Some(map), Some(_)) = (&map, &local) else {
                return Err(StartError::AheadWithoutLocal.into());
            };
            // A crash in the middle of a fold leaves records in the nvbuf:
            // the replay put them in the local copy; the map gets them now.
            mode::resume_ahead(&nvbuf, map, &mut sender, now)
                .map_err(|e| StartError::Fold(Arc::new(e)))?;
            mode = Mode::Ahead { since: now };
            tracing::warn!(
                "the primary was ahead when it stopped: it goes on writing to its local copy \
                 and map ({} marked) until the remote is back and resynced",
                crate::units::format_bytes(map.marked_bytes())
            );
        }
        if let (Some(r), Some(path)) = (&restore, &opts.local) {
            if !restore::map_path(path).exists() && !r.done() {
                // A new restore: the replica must hold everything the lost
                // disk held, or the restore would bring back older data.
                let marked = map.as_ref().map_or(0, |m| m.marked_bytes());
                if meta.ahead || marked > 0 {
                    return Err(StartError::RestoreOverMarked { marked }.into());
                }
                r.create().map_err(|e| StartError::RestoreMap {
                    path: restore::map_path(path),
                    source: Arc::new(e),
                })?;
                tracing::warn!(
                    "restoring the local copy {} from the remote: reads of what is not local \
                     yet go to the remote; the rest is copied in the background",
                    path.display()
                );
            }
        }
        let core = Arc::new(Core::new(
            sender,
            nvbuf,
            local.clone(),
            map.clone(),
            meta,
            mode,
            restore.clone().filter(|r| !r.done()),
        ));
        // Two round trips of the line keep the link busy; more only waits
        // in the nvbuf (and is sent twice after a crash).
        core.lock()
            .sync
            .set_max_inflight(opts.tuning.bdp().saturating_mul(2).max(4 << 20));
        // A verify that a stop interrupted goes on from where it was.
        if let (Some((cursor, end)), Some(_)) = (meta.verify, &map) {
            tracing::info!("resuming the verify interrupted at byte {cursor} of {end}");
            core.lock().sync.start_verify(cursor, end, false, now);
        }
        let ingest = Ingest::start(
            core.clone(),
            EncodeSettings {
                key,
                compress: opts.compress,
                chunk_size: opts.chunk_size,
                keep_plain: local.is_some(),
            },
            opts.workers,
            local.clone(),
            (overflow, opts.mirror.overflow_after),
        )
        .map_err(StartError::spawn("the pipeline threads"))?;

        let bind: SocketAddr = if opts.remote.is_ipv6() {
            "[::]:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        };
        let endpoint = {
            let _guard = handle.enter();
            transport::client_endpoint(bind, &opts.identity, &opts.peer, &opts.tuning)
                .map_err(|e| StartError::Transport(Arc::new(e)))?
        };
        let hello = connect::hello(&opts.volume, epoch, carried_over, opts.compress);
        let params = session::SessionParams {
            endpoint: endpoint.clone(),
            remote: opts.remote,
            server_name: opts.server_name.clone(),
            hello,
            lanes: opts.lanes,
            connect_timeout: opts.tuning.connect_timeout(),
            initial: opts.mirror.initial_sync,
            sync_checksum: opts.mirror.sync_checksum,
        };
        let mut tasks = vec![
            handle.spawn(session::run(core.clone(), params)),
            handle.spawn(session::timers(core.clone())),
        ];
        if let (Some(r), Some(file)) = (&core.restore, restore_into) {
            tasks.push(handle.spawn(restore::run(
                core.clone(),
                r.clone(),
                file,
                opts.read_timeout,
            )));
        }
        tracing::info!(
            "primary started: volume {}, epoch {epoch}, next seq {}, remote {}",
            dtu_proto::handshake::volume_hex(&opts.volume.id),
            carried_over + 1,
            opts.remote
        );
        let syncer = syncer::Syncer {
            core: core.clone(),
            records: ingest.records.clone(),
            encode: ingest.encode.sender(),
            epoch,
            chunk_size: opts.chunk_size,
            rate_max: opts.mirror.sync_rate_max,
            verify_every: opts.mirror.verify_every,
            volume_size: opts.volume.size,
        }
        .spawn()
        .map_err(StartError::spawn("the sync thread"))?;
        Ok(Primary {
            core,
            ingest,
            syncer: Some(syncer),
            local,
            volume: opts.volume,
            epoch,
            runtime: None,
            handle,
            tasks,
            endpoint,
            read_timeout: opts.read_timeout,
            started: Instant::now(),
            recovered,
            lanes: opts.lanes,
        })
    }

    /// Where a host operation goes now, holding the gate so the mode cannot
    /// change under it.
    fn route(&self) -> Result<Route<'_>, PrimaryError> {
        let gate = self.core.enter();
        if self.core.demoting.load(Ordering::SeqCst) {
            return Err(PrimaryError::Demoting);
        }
        let mode = self.core.lock().mode;
        match mode {
            Mode::Journal => Ok(Route::Journal(gate)),
            Mode::Ahead { .. } => match (&self.core.map, &self.local) {
                (Some(map), Some(local)) => Ok(Route::Ahead(gate, map, local)),
                _ => Ok(Route::Journal(gate)),
            },
            Mode::Failing { since } => Err(PrimaryError::NvbufFull {
                waited: since.elapsed(),
            }),
        }
    }

    /// Runs an operation on the local copy and the map while ahead; the
    /// host is answered once it is done. A failure there means the map can
    /// no longer say what the replica lacks: the primary stops.
    fn ahead(&self, f: impl FnOnce() -> Result<(), FoldError>) -> Result<Pending, PrimaryError> {
        let started = Instant::now();
        if let Err(e) = f() {
            let why = Halt::Ahead(Arc::new(e));
            tracing::error!("{why}; the primary stops accepting writes");
            self.core.fail(why.clone());
            return Err(PrimaryError::Failed(why));
        }
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(Answer {
            seq: 0,
            trigger: Trigger::Buffered,
            latency: started.elapsed(),
            ahead: true,
        }));
        Ok(Pending { rx })
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), PrimaryError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.volume.size => Ok(()),
            _ => Err(PrimaryError::OutOfRange {
                offset,
                len,
                size: self.volume.size,
            }),
        }
    }

    /// A journaled host operation at a seq just given wholly rewrites
    /// `offset..+len`: extents of the map it covers reach the replica with
    /// it, so a sync need not copy them (a host writing ahead of a sync's
    /// cursor would have its data sent twice). After the seq, so that no
    /// sync end can come before the write it counts on.
    fn overwritten(&self, offset: u64, len: u64) {
        if let Some(map) = &self.core.map {
            if let Err(e) = mode::overwritten(map, offset, len) {
                tracing::warn!("changed-block map: {e}");
            }
        }
    }

    /// Mirrors a write. Blocks only while the pipeline is full
    /// (backpressure); the returned [`Pending`] resolves when the write is
    /// answered.
    pub fn write(&self, offset: u64, data: Bytes) -> Result<Pending, PrimaryError> {
        if data.len() > dtu_proto::MAX_WRITE_BYTES {
            return Err(PrimaryError::WriteTooLarge {
                len: data.len(),
                max: dtu_proto::MAX_WRITE_BYTES,
            });
        }
        self.check_range(offset, data.len() as u64)?;
        let len = data.len() as u64;
        let _gate = match self.route()? {
            Route::Journal(g) => g,
            Route::Ahead(_g, map, local) => {
                self.core
                    .counters
                    .plain_bytes
                    .fetch_add(len, Ordering::Relaxed);
                self.core.counters.writes.fetch_add(1, Ordering::Relaxed);
                return self.ahead(|| mode::write_ahead(map, local, offset, &data));
            }
        };
        let (seq, rx) = self.core.submit(OpKind::Write, len)?;
        self.overwritten(offset, len);
        self.core
            .counters
            .plain_bytes
            .fetch_add(len, Ordering::Relaxed);
        self.core.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.ingest
            .submit_write(seq, self.epoch, offset, data)?;
        Ok(Pending { rx })
    }

    /// A barrier: resolves once every earlier operation is answered (and,
    /// with a local copy, the writes before it are durable in the nvbuf,
    /// from which a restart brings the local copy back).
    pub fn flush(&self) -> Result<Pending, PrimaryError> {
        let _gate = match self.route()? {
            Route::Journal(g) => g,
            Route::Ahead(_g, map, local) => return self.ahead(|| mode::flush_ahead(map, local)),
        };
        let (seq, rx) = self.core.submit(OpKind::Flush, 0)?;
        let frame = Frame::Flush(Flush {
            seq,
            epoch: self.epoch,
        });
        self.ingest
            .submit_record(Record::control(
                OpKind::Flush,
                seq,
                self.epoch,
                0,
                0,
                &frame,
            ))?;
        Ok(Pending { rx })
    }

    /// Discards a range; the replica reads it back as zeros.
    pub fn trim(&self, offset: u64, len: u64) -> Result<Pending, PrimaryError> {
        self.check_range(offset, len)?;
        let _gate = match self.route()? {
            Route::Journal(g) => g,
            Route::Ahead(_g, map, local) => {
                return self.ahead(|| mode::trim_ahead(map, local, offset, len))
            }
        };
        let (seq, rx) = self.core.submit(OpKind::Trim, 0)?;
        self.overwritten(offset, len);
        let frame = Frame::Trim(Trim {
            seq,
            epoch: self.epoch,
            offset,
            length: len,
        });
        self.ingest
            .submit_record(Record::control(
                OpKind::Trim,
                seq,
                self.epoch,
                offset,
                len,
                &frame,
            ))?;
        Ok(Pending { rx })
    }

    /// Names the current point of the write stream; the remote records it.
    pub fn checkpoint(&self, label: &str) -> Result<Pending, PrimaryError> {
        self.checkpoint_as(dtu_proto::frame::CheckpointKind::Manual, label)
    }

    /// Takes a `timer` checkpoint every `every` (`checkpoint.every`) until
    /// `stop` turns true. A checkpoint that cannot be taken now (the
    /// primary tracks changes in its map while the remote is behind) is
    /// logged and the next one is tried on time.
    pub async fn checkpoint_every(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let label = format!(
                "timer {}",
                crate::undo::fmt_time_us(crate::remote::undo::now_us())
            );
            match self.checkpoint_as(dtu_proto::frame::CheckpointKind::Timer, &label) {
                Ok(_) => tracing::debug!("checkpoint {label:?} taken (checkpoint.every)"),
                Err(e) => tracing::warn!("the timer checkpoint {label:?} was not taken: {e}"),
            }
        }
    }

    /// A checkpoint of `kind` (boot, shutdown, install, …) labelled
    /// `label`, stamped with this machine's wall time: the remote keeps it
    /// in its catalog and the replica can be read as it was at it.
    pub fn checkpoint_as(
        &self,
        kind: dtu_proto::frame::CheckpointKind,
        label: &str,
    ) -> Result<Pending, PrimaryError> {
        let time_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let _gate = match self.route()? {
            Route::Journal(g) => g,
            Route::Ahead(..) => return Err(PrimaryError::Ahead("a checkpoint")),
        };
        let (seq, rx) = self.core.submit(OpKind::Checkpoint, 0)?;
        let frame = Frame::Checkpoint(Checkpoint {
            seq,
            epoch: self.epoch,
            kind: kind as u8,
            time_us,
            label: label.to_string(),
        });
        self.ingest
            .submit_record(Record::control(
                OpKind::Checkpoint,
                seq,
                self.epoch,
                0,
                0,
                &frame,
            ))?;
        Ok(Pending { rx })
    }

    /// Reads from the local image if there is one, otherwise from the
    /// remote's replica once it has every write made before this call.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, PrimaryError> {
        self.check_range(offset, len as u64)?;
        self.core.counters.reads.fetch_add(1, Ordering::Relaxed);
        if let Some(local) = &self.local {
            // Every write answered before this read must be visible in it.
            let answered = self.core.lock().sender.progress().answered;
            if !local.wait_applied(answered, self.read_timeout).await {
                return Err(PrimaryError::ReadUnavailable(
                    ReadUnavailable::LocalBehind {
                        seq: answered,
                        waited: self.read_timeout,
                    },
                ));
            }
            if let Some(r) = self.core.restore.as_ref().filter(|r| !r.done()) {
                return self.read_restoring(local, r, offset, len).await;
            }
            let mut buf = vec![0u8; len as usize];
            local
                .disk()
                .read_at(offset, &mut buf)
                .map_err(|e| PrimaryError::Local(Arc::new(e)))?;
            return Ok(Bytes::from(buf));
        }
        let after = self.core.lock().sender.highest_seq();
        session::read_remote(
            self.core.clone(),
            offset,
            len,
            after,
            self.read_timeout,
            false,
        )
        .await
    }

    /// A read while the local copy is restored: what is local from it, the
    /// rest from the remote once it holds every write made before this
    /// call (so never older than the last answered write).
    async fn read_restoring(
        &self,
        local: &LocalCopy,
        restore: &restore::Restore,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, PrimaryError> {
        // What the rebuild is fetching is waited for rather than fetched
        // again (a host reading through the volume then runs just behind
        // the rebuild, which the read steers); a fetch that takes too long
        // is overtaken.
        let deadline = tokio::time::Instant::now() + self.read_timeout.min(REBUILD_WAIT);
        loop {
            let ended = restore.fetch_ended();
            tokio::pin!(ended);
            ended.as_mut().enable();
            match restore.read_state(offset, u64::from(len)) {
                restore::ReadState::Local => break,
                restore::ReadState::Missing => {
                    restore.steer_to(offset, u64::from(len));
                    break;
                }
                restore::ReadState::Fetching => {
                    if tokio::time::timeout_at(deadline, ended).await.is_err() {
                        break;
                    }
                }
            }
        }
        let mut out = bytes::BytesMut::with_capacity(len as usize);
        for (at, n, is_local) in restore.runs(offset, u64::from(len)) {
            // A run lies within the read: it fits a u32.
            debug_assert!(n <= u64::from(len), "run of {n} bytes in a read of {len}");
            let n32 = n.min(u64::from(len)) as u32;
            if is_local {
                let mut buf = vec![0u8; n as usize];
                local
                    .disk()
                    .read_at(at, &mut buf)
                    .map_err(|e| PrimaryError::Local(Arc::new(e)))?;
                out.extend_from_slice(&buf);
            } else {
                let after = self.core.lock().sender.highest_seq();
                let data = session::read_remote(
                    self.core.clone(),
                    at,
                    n32,
                    after,
                    self.read_timeout,
                    false,
                )
                .await?;
                if !restore.source_ok() {
                    return Err(PrimaryError::ReadUnavailable(ReadUnavailable::NoSource));
                }
                restore.served_from_remote(n);
                out.extend_from_slice(&data);
            }
        }
        Ok(out.freeze())
    }

    /// Whether the local copy is being restored from the remote.
    pub fn restoring(&self) -> bool {
        self.core.restore.as_ref().is_some_and(|r| !r.done())
    }

    /// Starts an online verify of `start..end`: the local copy and the
    /// replica are compared by block digests at the same seq while the host
    /// keeps writing; differing ranges are reported in the status and the
    /// log (and with `repair`, resynced). Needs a local copy.
    pub fn verify(&self, start: u64, end: u64, repair: bool) -> Result<(), PrimaryError> {
        if self.core.map.is_none() {
            return Err(PrimaryError::NoLocalCopy("a verify"));
        }
        if self.restoring() {
            return Err(PrimaryError::Busy(
                "the local copy is being restored from the remote; verify once it is whole",
            ));
        }
        let end = end.min(self.volume.size);
        if start >= end {
            return Err(PrimaryError::OutOfRange {
                offset: start,
                len: end.saturating_sub(start),
                size: self.volume.size,
            });
        }
        {
            let mut st = self.core.lock();
            if st.sync.verifying() {
                return Err(PrimaryError::Busy("a verify is already running"));
            }
            st.sync.start_verify(start, end, repair, Instant::now());
        }
        self.core
            .update_meta(|m| m.verify = Some((start, end)))
            .map_err(PrimaryError::from)?;
        self.core.wake_sync();
        Ok(())
    }

    /// The host's share of dirty cache, 0..=100: spoofing applies only at or
    /// above the policy's threshold.
    pub fn report_dirty(&self, pct: f64) {
        self.core.event(|s, now| s.report_dirty(pct, now));
    }

    /// Changes the acknowledgement policy; operations not yet answered are
    /// answered under the new one.
    pub fn set_policy(&self, policy: AckPolicy) {
        tracing::info!(
            "policy: trigger {}, delay {:?}, spoofing {}, threshold {}%",
            policy.trigger,
            policy.delay,
            policy.spoofing,
            policy.dirty_threshold
        );
        self.core.event(|s, now| s.set_policy(policy, now));
    }

    /// The acknowledgement policy in force.
    pub fn policy(&self) -> AckPolicy {
        self.core.lock().sender.policy()
    }

    /// The mirrored volume's id.
    pub fn volume_id(&self) -> VolumeId {
        self.volume.id
    }

    /// The mirrored volume's size in bytes.
    pub fn volume_size(&self) -> u64 {
        self.volume.size
    }

    /// The async runtime the network tasks run on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Everything the status display shows.
    pub fn status(&self) -> Status {
        Status::Primary(Box::new(status::build(self)))
    }

    /// Completes when the remote asks this primary to hand its role over
    /// (`dtu switchover` at the remote's site); the caller drains and
    /// demotes, as `dtu switchover` at this site does.
    pub async fn handover_requested(&self) {
        self.core.handover_asked.notified().await;
    }

    /// A planned switchover: when this primary stops, its goodbye asks the
    /// remote to promote. Call after [`Primary::drain`] succeeded.
    pub fn hand_over_on_stop(&self) {
        self.core.handover.store(true, Ordering::SeqCst);
    }

    /// Refuses host operations from now on ([`PrimaryError::Demoting`]),
    /// or takes them again. Operations already past the gate finish
    /// entering the pipeline before this returns.
    pub fn refuse_host_operations(&self, refuse: bool) {
        self.core.demoting.store(refuse, Ordering::SeqCst);
        drop(self.core.gate.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// The first half of a planned demotion: stops taking host operations
    /// (they are answered with [`PrimaryError::Demoting`]) and waits until
    /// the remote has stored every record and the changed-block map is
    /// empty, so the remote holds exactly the volume. On timeout it takes
    /// operations again and says what the remote still lacks.
    pub fn drain(&self, timeout: Duration) -> Result<(), role::Undrained> {
        self.refuse_host_operations(true);
        let deadline = Instant::now() + timeout;
        loop {
            let Status::Primary(p) = self.status() else {
                unreachable!("a primary's status")
            };
            let unstored = p.highest_seq.saturating_sub(p.remote_stored_seq);
            let out_of_sync = p.mirror.out_of_sync_bytes;
            let syncing = p.mirror.sync.target != 0;
            let resync_pending = self.core.lock().meta.map_base != 0;
            if unstored == 0
                && out_of_sync == 0
                && !syncing
                && !resync_pending
                && p.mirror.mode == "journal"
            {
                return Ok(());
            }
            if Instant::now() >= deadline || p.failed.is_some() {
                self.refuse_host_operations(false);
                return Err(role::Undrained {
                    unstored,
                    out_of_sync,
                    resync_pending,
                    connection: p
                        .connection_detail
                        .unwrap_or_else(|| p.connection.to_string()),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops accepting operations, says goodbye to the remote and stops
    /// every thread. Records not yet stored stay in the nvbuf and are resent
    /// by the next start.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.core.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        self.core.conn_wake.notify_waiters();
        self.core.lanes_wake.notify_waiters();
        self.core.timer_wake.notify_one();
        self.core.wake_sync();
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
        self.ingest.join();
        let tasks = std::mem::take(&mut self.tasks);
        crate::runtime::stop_tasks(
            self.runtime.as_ref(),
            &self.handle,
            tasks,
            self.endpoint.clone(),
            b"shutdown",
        );
        if let Err(e) = self
            .core
            .persist_progress()
            .and_then(|()| self.core.nvbuf.checkpoint())
        {
            tracing::warn!("nvbuf superblock at shutdown: {e}");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Where a host operation goes.
enum Route<'a> {
    Journal(std::sync::RwLockReadGuard<'a, ()>),
    Ahead(
        std::sync::RwLockReadGuard<'a, ()>,
        &'a ChangeMap<SparseFile>,
        &'a LocalCopy,
    ),
}

/// Opens (or creates) the changed-block map of a primary with a local copy.
fn open_map(
    opts: &PrimaryOptions,
    meta: &mut PrimaryMeta,
) -> Result<ChangeMap<SparseFile>, ChangeMapError> {
    let path = role::map_path(&opts.nvbuf_path, opts.mirror.map_path.as_deref());
    let exists = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
    let map = if exists {
        let (map, info) =
            ChangeMap::open(SparseFile::open(&path)?, opts.volume.id, opts.volume.size)?;
        tracing::debug!("changed-block map {}: {info:?}", path.display());
        map
    } else {
        ChangeMap::create(
            SparseFile::create(&path, false)?,
            opts.volume.id,
            opts.volume.size,
            opts.mirror.map_granularity,
            meta.map_base,
        )?
    };
    let cleared = mode::reconcile_map(&map, meta)?;
    if cleared > 0 {
        tracing::warn!(
            "changed-block map {} had {} marked but relative to no generation (a fold that \
             stopped before its metadata was written; the journal covers them): cleared",
            path.display(),
            crate::units::format_bytes(cleared)
        );
    }
    Ok(map)
}

impl Drop for Primary {
    fn drop(&mut self) {
        self.stop();
    }
}

impl crate::control::Controlled for Primary {
    fn handle(&self, req: crate::control::Request) -> crate::control::Response {
        use crate::control::{Request, Response};
        match req {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::SetPolicy {
                trigger,
                delay,
                spoofing,
                dirty_threshold,
            } => {
                match crate::control::changed_policy(
                    self.policy(),
                    trigger.as_deref(),
                    delay.as_deref(),
                    spoofing,
                    dirty_threshold,
                ) {
                    Ok(p) => {
                        self.set_policy(p);
                        Response::Ok {
                            message: format!(
                                "trigger {}, delay {}, spoofing {}, dirty threshold {}%",
                                p.trigger,
                                crate::units::format_duration(p.delay),
                                if p.spoofing { "on" } else { "off" },
                                p.dirty_threshold
                            ),
                        }
                    }
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                }
            }
            Request::Dirty { pct } => {
                if !(0.0..=100.0).contains(&pct) {
                    return Response::Error {
                        message: format!("dirty % must be between 0 and 100, not {pct}"),
                    };
                }
                self.report_dirty(pct);
                let active = self.core.lock().sender.spoofing_active();
                Response::Ok {
                    message: format!(
                        "dirty {pct}%: spoofing {}",
                        if active {
                            "active"
                        } else {
                            "inactive"
                        }
                    ),
                }
            }
            Request::Checkpoint { label, kind } => match kind
                .as_deref()
                .unwrap_or("manual")
                .parse::<dtu_proto::frame::CheckpointKind>()
                .map_err(|e| format!("checkpoint kind {e}"))
                .and_then(|k| self.checkpoint_as(k, &label).map_err(|e| e.to_string()))
            {
                Ok(_) => Response::Ok {
                    message: format!("checkpoint {label:?} queued"),
                },
                Err(e) => Response::Error { message: e },
            },
            Request::Verify { start, end, repair } => {
                let start = start.unwrap_or(0);
                let end = end.unwrap_or(self.volume.size).min(self.volume.size);
                match self.verify(start, end, repair) {
                    Ok(()) => Response::Ok {
                        message: format!(
                            "verify of {start}..{end} started{}",
                            if repair { " (with repair)" } else { "" }
                        ),
                    },
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                }
            }
            Request::Checkpoints => Response::Error {
                message: "the remote keeps the checkpoints: ask its control socket".into(),
            },
            Request::Export { .. } | Request::Unexport | Request::Rollback { .. } => {
                Response::Error {
                    message: "as-of views and rollbacks are the remote's: ask its control socket"
                        .into(),
                }
            }
            Request::Promote { .. } => Response::Error {
                message: "this is a primary already".into(),
            },
            Request::Switchover => Response::Error {
                message: "a switchover at the primary's site is run by the dtu process (dtu \
                          switchover); an embedding storage stack calls Primary::drain, \
                          Primary::hand_over_on_stop and primary::role::demote_files"
                    .into(),
            },
            Request::Demote { .. } => Response::Error {
                message: "a demotion is run by the dtu process (dtu demote); an embedding \
                          storage stack calls Primary::drain and primary::role::demote_files"
                    .into(),
            },
        }
    }

    fn status(&self) -> Status {
        Primary::status(self)
    }
}
