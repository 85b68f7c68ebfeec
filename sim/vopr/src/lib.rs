//! The deterministic simulator of a DTU pair (after TigerBeetle's VOPR):
//! the primary and remote drivers as they ship, over simulated storage, a
//! simulated link and virtual time, all decided by one `u64` seed.
//!
//! What runs is dtu's own code: the sender and receiver state machines, the
//! codec, the nvbuf with its recovery, the [`Appender`] (reorder, group
//! commit, buffered frontier), the [`LocalCopy`] fed from the journal, the
//! replay of recovered records into the sender and the local copy, the
//! primary's [`connect`] offer and reply checks, the remote's
//! [`accept_primary`], the [`Applier`] with the replica's state file, and the
//! `dtu-sim` link model. What the simulator adds is only what the threads
//! and sockets of the real DTUs do around them: it moves records from the
//! encoders (finishing in a random order) to the appender, frames between
//! the link and the state machines, and operations from the receiver to the
//! applier. Storage is [`MemStore`], [`MemReplica`] and [`MemStateStore`],
//! whose crash images model a killed process (the page cache survives) and
//! a crashed machine (only what was synced survives, torn sectors too).
//!
//! The seed decides the host's operations (writes, flushes, trims,
//! checkpoints), policy and dirty-% changes, the link's loss, duplication,
//! reordering and corruption, outages, and kills and machine crashes of
//! either side. Invariants, checked as the run goes:
//! (a) every host operation answered at `buffered` or later survives every
//!     crash and is on the replica once the faults heal;
//! (b) whenever the replica is marked consistent, it equals the host's
//!     volume after exactly the prefix of operations it has applied;
//! (c) the remote applies each seq once, in order (the applier refuses
//!     anything else, and the simulator checks it too);
//! (d) an operation answered at `remote-stored` is synced on the replica at
//!     the moment of the answer;
//! (e) with the faults healed, everything drains within a bounded time;
//! (f) the primary's local copy equals the replica once drained, and
//!     recovery never reports the loss of durable records (no damage is
//!     injected: only crashes);
//! (i) every checkpoint the remote's catalog holds that was applied while
//!     the replica was consistent shows, as of it, exactly the host's
//!     volume after that checkpoint's seq: across crashes of the remote
//!     between the undo journal's save and the replica's sync, retention
//!     drops under a small size limit, and at the end of some runs a
//!     rollback (some cut short by a crash and finished by the restart)
//!     leaves the replica equal to that volume, in a generation of its own;
//! (j) a primary restarted on an empty local disk restores it from the
//!     remote through dtu's restore map ([`Restore`], [`RestoringDisk`]):
//!     a host read during the restore never returns data older than the
//!     last answered write to it, a restore begins only where the remote
//!     holds the volume, and once it completes (across crashes, which
//!     resume it from its map) the local copy equals the replica (f);
//! (k) roles change through dtu's role functions, as `dtu switchover`,
//!     `dtu promote` and `dtu demote` run them, while the faults go on: a
//!     planned switchover (the host pauses, the pair drains, the remote is
//!     promoted and the old primary demoted) loses no answered write and
//!     leaves nothing to resync; a failover (the primary's site lost with
//!     writes in flight) keeps every write answered at `remote-stored` on
//!     the promoted replica, which is a state the host's volume passed
//!     through; the old primary's site comes back as the remote with the
//!     ranges it holds on its own listed, a split brain (it went ahead
//!     while cut off) is refused until the operator discards its data, and
//!     after the failback resync both sides equal the promoted side's
//!     volume ((a) and (f)).
//!
//! A violation names the seed, the step, the invariant and the last events;
//! the same seed replays the same run, which a hash of the event trace
//! proves.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dtu::changemap::{ChangeMap, MemMapStore};
use dtu::config::Volume;
use dtu::nvbuf::{MemStore, Nvbuf, NvbufConfig, NvbufError, OnLoss, Recovery};
use dtu::primary::appender::Appender;
use dtu::primary::connect::{self, Offer};
use dtu::primary::ingest::{encode_jobs, encode_one, EncodeJob, EncodeSettings, Record};
use dtu::primary::local::{release_point, LocalCopy};
use dtu::primary::meta::PrimaryMeta;
use dtu::primary::mode::{self, Mode};
use dtu::primary::replay;
use dtu::primary::restore::{Restore, RestoringDisk};
use dtu::primary::role;
use dtu::primary::sync::{self, Event as SyncEvent, Prepared, SyncEngine, Work};
use dtu::remote::accept::{accept_primary, AcceptError};
use dtu::remote::applier::Applied;
use dtu::remote::applier::Applier;
use dtu::remote::promote::promotion_refused;
use dtu::remote::rollback;
use dtu::remote::undo::{AsOf, UndoOptions, UndoState};
use dtu::replica::{MemReplica, MemStateStore, OpenState, Replica, VolumeState};
use dtu_proto::codec::{decode_chunk, Key};
use dtu_proto::frame::{
    self, Checkpoint, CheckpointKind, DigestResponse, Flush, Frame, Hello, Trim, Write,
};
use dtu_proto::generation::{Generations, InitialSync, Refusal};
use dtu_proto::receiver::Inbound;
use dtu_proto::sender::{OpKind, SenderConfig};
use dtu_proto::{AckPolicy, Epoch, Receiver, Sender, Seq, Trigger};
use dtu_sim::link::{Link, LinkConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VOLUME: usize = 128 << 10;
const VOLUME_ID: [u8; 16] = *b"vopr-volume-0001";
const NVBUF: usize = 4 << 20;
const STEP: Duration = Duration::from_millis(1);
const CHUNK: usize = 8 << 10;
/// How often the simulated primary syncs its local copy (the real one: 1 s).
const LOCAL_SYNC: Duration = Duration::from_millis(5);
/// How often the simulated remote syncs its state file (the real one: 1 s).
const STATE_SYNC_STEPS: u64 = 250;
/// The restore map's extent in the simulator: 16 of them in the volume.
const RESTORE_EXTENT: u64 = 8 << 10;
/// Extents a restore fetches at once (the real one: 4).
const RESTORE_PARALLEL: usize = 4;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub seed: u64,
    pub steps: u64,
    pub trace_hash: String,
    pub writes: u64,
    pub trims: u64,
    pub checkpoints: u64,
    pub acked: u64,
    pub primary_crashes: u64,
    pub remote_crashes: u64,
    pub outages: u64,
    pub nacks: u64,
    pub local_copy: bool,
    /// The initial sync the seed chose.
    pub initial: String,
    /// Times the primary went ahead (nvbuf full), host writes made ahead,
    /// syncs completed, verifies completed.
    pub folds: u64,
    pub ahead_writes: u64,
    pub syncs: u64,
    pub verifies: u64,
    /// As-of views compared with the host's volume at their checkpoint,
    /// checkpoints dropped (retention, a restart of the stream), rollbacks
    /// committed (some cut short
    /// by a crash and finished at the restart).
    pub views_checked: u64,
    pub checkpoints_dropped: u64,
    pub rollbacks: u64,
    /// Restores of a lost local copy begun, extents installed, installs
    /// refused because a host write reached the extent during its fetch,
    /// and host reads checked during a restore.
    pub restores: u64,
    pub restore_installs: u64,
    pub restore_refetches: u64,
    pub restore_reads: u64,
    /// Planned switchovers and failovers done, bytes the old primary's
    /// replica listed as its own changes at a failover (resynced from the
    /// promoted side), and split brains the operator resolved.
    pub switchovers: u64,
    pub failovers: u64,
    pub failback_bytes: u64,
    pub split_brains: u64,
}

/// An invariant that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub invariant: &'static str,
    pub detail: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} step {}: invariant {} violated: {}",
            self.seed, self.step, self.invariant, self.detail
        )?;
        writeln!(f, "last events:")?;
        for e in &self.trace {
            writeln!(f, "  {e}")?;
        }
        write!(
            f,
            "replay: cargo run --release -p dtu-vopr -- --seed {}",
            self.seed
        )
    }
}

/// What the seed may throw at the pair.
#[derive(Debug, Clone)]
pub struct Options {
    pub steps: u64,
    /// Steps at the end with every fault healed (invariant e).
    pub heal_steps: u64,
    /// Print every event.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 12_000,
            heal_steps: 20_000,
            verbose: false,
        }
    }
}

/// One host operation, as the host issued it.
#[derive(Debug, Clone)]
enum HostOp {
    Write {
        offset: usize,
        data: Vec<u8>,
    },
    Flush,
    Trim {
        offset: usize,
        len: usize,
    },
    Checkpoint,
    /// A piece of sync or verify work in the stream (a copy of the local
    /// copy, a marker, a digest request): the host's volume is unchanged.
    Sync,
    /// After a machine crash while ahead: writes the host never flushed may
    /// or may not have reached the local copy, which is the volume now.
    Image(Vec<u8>),
}

/// Where an operation stands in the host's history: a seq, and for writes
/// made while ahead (which have none), a position after the last seq.
type At = (Seq, u32);

/// The volume after the operations of `history` up to and including seq
/// `upto` (and nothing written ahead after it).
fn volume_after(base: &[u8], history: &BTreeMap<At, HostOp>, upto: Seq) -> Vec<u8> {
    let mut v = base.to_vec();
    for (_, op) in history.range(..=(upto, 0)) {
        apply_op(&mut v, op);
    }
    v
}

/// The whole volume as the host sees it now.
fn volume_now(base: &[u8], history: &BTreeMap<At, HostOp>) -> Vec<u8> {
    let mut v = base.to_vec();
    for op in history.values() {
        apply_op(&mut v, op);
    }
    v
}

fn apply_op(v: &mut [u8], op: &HostOp) {
    match op {
        HostOp::Write { offset, data } => v[*offset..offset + data.len()].copy_from_slice(data),
        HostOp::Trim { offset, len } => v[*offset..offset + len].fill(0),
        HostOp::Image(img) => v.copy_from_slice(img),
        HostOp::Flush | HostOp::Checkpoint | HostOp::Sync => {}
    }
}

/// A volume image that is not all zeros: runs of patterned data, zeros
/// and holes, as a used disk has.
fn filled_image(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut v = vec![0u8; VOLUME];
    let mut at = 0;
    while at < VOLUME {
        let len = (rng.gen_range(1..=16) * 4096).min(VOLUME - at);
        if rng.gen_bool(0.7) {
            let fill: u8 = rng.gen();
            for (i, b) in v[at..at + len].iter_mut().enumerate() {
                *b = fill.wrapping_add((i / 61) as u8);
            }
        }
        at += len;
    }
    v
}

/// A primary DTU: dtu's primary components, driven step by step.
struct PrimaryNode {
    nvbuf: Nvbuf<MemStore>,
    sender: Sender,
    appender: Appender,
    local: Option<Arc<LocalCopy>>,
    local_disk: Option<MemReplica>,
    encode: EncodeSettings,
    epoch: Epoch,
    hello: Hello,
    /// Chunks handed to the encode workers, not yet encoded.
    jobs: Vec<EncodeJob>,
    /// Host operations waiting for an answer: seq -> step submitted.
    waiting: BTreeMap<Seq, u64>,
    /// The primary's durable metadata (generations, the map's base, ahead).
    meta: PrimaryMeta,
    /// The changed-block map (with a local copy only).
    map: Option<ChangeMap<MemMapStore>>,
    sync: SyncEngine,
    mode: Mode,
    /// Since which step the appender has been waiting for nvbuf space.
    full_since: Option<u64>,
    /// Sync work reserved, waiting for the local copy to reach its seqs.
    batch: Vec<(Seq, Work)>,
    /// Ranges written ahead since the last flush (a machine crash may lose
    /// them: the host did not flush).
    unflushed: Vec<(usize, usize)>,
}

/// A remote DTU: dtu's remote components, driven step by step.
struct RemoteNode {
    receiver: Receiver,
    applier: Applier,
    /// The checkpoint catalog and undo journal (files in the run's directory).
    undo: Arc<Mutex<UndoState>>,
    state: Arc<Mutex<VolumeState>>,
    replica: MemReplica,
    state_store: MemStateStore,
    hello: Hello,
    /// Chunks handed to the decode workers, not yet decoded.
    decoding: Vec<Write>,
}

/// A restore of the primary's local copy from the remote (its disk was
/// lost at a restart): dtu's restore map over the local copy's disk, and
/// the fetches the simulator plays the rebuild's tasks for.
struct SimRestore {
    restore: Arc<Restore>,
    disk: MemReplica,
    /// Extent, the seq the remote must have applied before it is read,
    /// and its bytes once read.
    fetches: Vec<(u64, Seq, Option<Vec<u8>>)>,
}

/// The local copy's image a restarting primary starts on, and the restore
/// that fills it, if its disk was lost.
type LocalStart = (Option<Vec<u8>>, Option<Arc<Restore>>);

/// What a crashed primary leaves on its disks.
struct PrimaryDisks {
    nvbuf: Vec<u8>,
    local: Option<Vec<u8>>,
    map: Option<Vec<u8>>,
}

/// What a crashed remote leaves on its disks.
struct RemoteDisks {
    replica: Vec<u8>,
    state: Vec<u8>,
    /// The seq the replica's bytes are at (what the last sync made durable,
    /// or everything applied if only the process died).
    replica_at: Seq,
}

struct World {
    seed: u64,
    rng: ChaCha8Rng,
    opts: Options,
    step: u64,
    t0: Instant,
    volume: Volume,
    key: Key,
    /// The volume before the host's first operation (a used disk).
    base: Vec<u8>,
    /// Everything the host issued that still exists, in order.
    history: BTreeMap<At, HostOp>,
    /// How the remote's replica is brought to the primary's volume.
    initial: InitialSync,
    /// `nvbuf.overflow = bitmap`: a nvbuf full for this many steps makes
    /// the primary go ahead (with a local copy); `None`: it stalls.
    overflow_after: Option<u64>,
    /// Seqs of digest requests the remote answered while its replica was
    /// marked consistent: a verify may find no difference there.
    digests_consistent: BTreeMap<Seq, bool>,
    /// The chance per step that the host issues an operation.
    write_rate: f64,
    /// The sender answers at `buffered` once the link is down this long.
    degrade_after: Option<Duration>,
    /// Every policy answers at `buffered` (see [`World::new`]).
    spoof_all: bool,
    /// A violation found where no `Result` could carry it (a crash).
    violation: Option<Violation>,
    /// The highest seq answered at `buffered` or later.
    acked_durable: Seq,
    /// The host's volume after `expected_upto`, for invariant (b).
    expected: Vec<u8>,
    expected_upto: Seq,
    primary: Option<PrimaryNode>,
    remote: Option<RemoteNode>,
    /// A restore of the primary's local copy under way (with the primary).
    restore: Option<SimRestore>,
    primary_disks: Option<PrimaryDisks>,
    remote_disks: Option<RemoteDisks>,
    /// Changes on every machine crash of the remote.
    remote_boot: u64,
    /// Each site's files that dtu keeps as real files (the remote's undo
    /// journal and catalog, the replica state's divergence record, the
    /// primary's restore map), one directory per site: the roles move
    /// between them at a switchover or failover.
    site_dirs: [tempfile::TempDir; 2],
    /// Which site runs the remote role.
    remote_site: usize,
    /// Role changes still to come: the step, and whether it is a planned
    /// switchover (else a failover after the primary's site is lost).
    role_changes: Vec<(u64, bool)>,
    /// A planned switchover waits for the pair to drain: the host pauses.
    handing_over: bool,
    /// A failover left the old primary's replica with changes of its own
    /// (ahead of the promoted side): the next connect may see a split
    /// brain, which the operator resolves with --discard-my-data.
    after_failover: bool,
    /// The highest seq answered at `remote-stored` in this generation.
    acked_remote: Seq,
    /// The journal's size limit: small, so that retention drops checkpoints.
    undo_max: u64,
    /// Checkpoints the replica applied, and whether it was consistent then
    /// (only those views must equal the host's volume at their seq).
    views: BTreeMap<Seq, bool>,
    connected: bool,
    /// The QUIC connection in use: counts connects.
    session: u64,
    reconnect_at: u64,
    link_down_until: u64,
    up: Link,
    down: Link,
    policy: AckPolicy,
    trace: VecDeque<String>,
    hasher: crc32fast::Hasher,
    trace_len: u64,
    out: Outcome,
}

fn random_policy(rng: &mut ChaCha8Rng) -> AckPolicy {
    AckPolicy {
        trigger: Trigger::ALL[rng.gen_range(0..5)],
        delay: Duration::from_millis(if rng.gen_bool(0.2) {
            rng.gen_range(1..20)
        } else {
            0
        }),
        spoofing: rng.gen_bool(0.8),
        dirty_threshold: [0.0, 50.0, 75.0, 100.0][rng.gen_range(0..4)],
    }
}

/// `p` answering every write once it is in the nvbuf.
fn spoof_to_buffered(p: AckPolicy) -> AckPolicy {
    AckPolicy {
        trigger: Trigger::Buffered,
        spoofing: true,
        dirty_threshold: 0.0,
        ..p
    }
}

fn link_config(rng: &mut ChaCha8Rng) -> LinkConfig {
    let mut c = LinkConfig::new(
        rng.gen_range(2..100) * 1_000_000,
        Duration::from_micros(rng.gen_range(100..20_000)),
    );
    c.loss = [0.0, 0.001, 0.01, 0.05][rng.gen_range(0..4)];
    c.duplicate = [0.0, 0.01, 0.05][rng.gen_range(0..3)];
    c.reorder = [0.0, 0.01, 0.1][rng.gen_range(0..3)];
    c.reorder_delay = Duration::from_millis(rng.gen_range(1..10));
    c.corrupt = [0.0, 0.001, 0.01][rng.gen_range(0..3)];
    c.queue_bytes = Some(4 << 20);
    c
}

/// A frame as it crosses the link: QUIC's AEAD means a damaged packet is
/// discarded, never delivered, so the link carries a checksum we check.
/// It carries its session too: a packet of an ended QUIC connection never
/// reaches a newer one's streams, however late it arrives.
fn wrap(session: u64, f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    wrap_bytes(session, &b)
}

fn wrap_bytes(session: u64, frame: &[u8]) -> Vec<u8> {
    let mut v = session.to_be_bytes().to_vec();
    v.extend_from_slice(frame);
    v.extend_from_slice(&crc32fast::hash(&v).to_be_bytes());
    v
}

/// The session and frame of an intact packet.
fn unwrap_packet(v: &[u8]) -> Option<(u64, Frame)> {
    let (body, crc) = v.split_at(v.len().checked_sub(4)?);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return None;
    }
    let (session, body) = body.split_at_checked(8)?;
    let session = u64::from_be_bytes(session.try_into().ok()?);
    let (f, _) = frame::decode_slice(body, frame::DEFAULT_MAX_FRAME).ok()??;
    Some((session, f))
}

/// A site's directory for the files dtu keeps as real files.
fn site_dir(seed: u64) -> Result<tempfile::TempDir, Violation> {
    tempfile::tempdir().map_err(|e| Violation {
        seed,
        step: 0,
        invariant: "setup",
        detail: format!("no directory for a site's files: {e}"),
        trace: Vec::new(),
    })
}

fn boot_id(n: u64) -> [u8; 36] {
    let mut id = [b'-'; 36];
    let s = format!("vopr-boot-{n:020}");
    id[..s.len()].copy_from_slice(s.as_bytes());
    id
}

impl World {
    fn new(seed: u64, opts: Options) -> Result<World, Violation> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let up = Link::new(link_config(&mut rng), rng.gen()).expect("link config");
        let down = Link::new(link_config(&mut rng), rng.gen()).expect("link config");
        let mut policy = random_policy(&mut rng);
        let with_local = rng.gen_bool(0.5);
        // A used disk; the replica is a copy of it, partly stale, unless the
        // primary has no local copy (then the replica is the volume) or the
        // operator says they are equal.
        let base = filled_image(&mut rng);
        let initial = if with_local {
            InitialSync::ALL[rng.gen_range(0..3)]
        } else {
            InitialSync::Full
        };
        let mut replica = base.clone();
        if with_local && initial != InitialSync::AssumeInSync {
            let stale = filled_image(&mut rng);
            for block in 0..VOLUME / 4096 {
                if rng.gen_bool(0.3) {
                    let r = block * 4096..(block + 1) * 4096;
                    replica[r.clone()].copy_from_slice(&stale[r]);
                }
            }
        }
        let overflow_after = (with_local && rng.gen_bool(0.7)).then(|| rng.gen_range(50..1000));
        // Some seeds write hard enough to fill the nvbuf during an outage.
        let write_rate = if rng.gen_bool(0.3) { 0.4 } else { 0.05 };
        // Those that also overflow answer at `buffered`, so the host keeps
        // writing while the link is down and the nvbuf fills.
        let spoof_all = overflow_after.is_some() && write_rate > 0.1;
        if spoof_all {
            policy = spoof_to_buffered(policy);
        }
        let degrade_after = rng
            .gen_bool(0.5)
            .then(|| Duration::from_millis(rng.gen_range(200..3000)));
        let key_bytes = [seed as u8; 32];
        let undo_max = rng.gen_range(64u64..1024) << 10;
        // A third of the runs change roles once or twice while the faults
        // go on: planned switchovers and failovers after a lost site.
        let mut role_changes: Vec<(u64, bool)> = (0..[0, 0, 1, 2][rng.gen_range(0..4)])
            .map(|_| (rng.gen_range(1000..opts.steps.max(1001)), rng.gen_bool(0.5)))
            .collect();
        role_changes.sort_unstable();
        let t0 = Instant::now();
        let mut w = World {
            seed,
            opts,
            step: 0,
            t0,
            base,
            volume: Volume {
                id: VOLUME_ID,
                size: VOLUME as u64,
                block_size: 4096,
                key: Some(key_bytes),
            },
            key: Key::from_bytes(&key_bytes),
            history: BTreeMap::new(),
            initial,
            overflow_after,
            digests_consistent: BTreeMap::new(),
            write_rate,
            degrade_after,
            spoof_all,
            violation: None,
            acked_durable: 0,
            expected: Vec::new(),
            expected_upto: 0,
            primary: None,
            restore: None,
            remote: None,
            primary_disks: None,
            remote_disks: Some(RemoteDisks {
                replica,
                state: Vec::new(),
                replica_at: 0,
            }),
            remote_boot: 0,
            site_dirs: [site_dir(seed)?, site_dir(seed)?],
            remote_site: 1,
            role_changes,
            handing_over: false,
            after_failover: false,
            acked_remote: 0,
            undo_max,
            views: BTreeMap::new(),
            connected: false,
            session: 0,
            reconnect_at: 0,
            link_down_until: 0,
            up,
            down,
            policy,
            trace: VecDeque::new(),
            hasher: crc32fast::Hasher::new(),
            trace_len: 0,
            out: Outcome {
                seed,
                steps: 0,
                trace_hash: String::new(),
                writes: 0,
                trims: 0,
                checkpoints: 0,
                acked: 0,
                primary_crashes: 0,
                remote_crashes: 0,
                outages: 0,
                nacks: 0,
                local_copy: with_local,
                initial: initial.name().to_string(),
                folds: 0,
                ahead_writes: 0,
                syncs: 0,
                verifies: 0,
                views_checked: 0,
                checkpoints_dropped: 0,
                rollbacks: 0,
                restores: 0,
                restore_installs: 0,
                restore_refetches: 0,
                restore_reads: 0,
                switchovers: 0,
                failovers: 0,
                failback_bytes: 0,
                split_brains: 0,
            },
            rng,
        };
        let nv = Nvbuf::create_in(
            MemStore::new(NVBUF),
            &NvbufConfig::new(VOLUME_ID).with_size(NVBUF as u64),
        )
        .expect("create the nvbuf");
        w.expected = w.base.clone();
        let meta = PrimaryMeta {
            gens: Generations::new(w.rng.gen::<u64>() | 1),
            ..Default::default()
        };
        nv.set_meta(&meta.encode())
            .expect("a new nvbuf takes its metadata");
        let local = with_local.then(|| w.base.clone());
        let map = with_local.then(Vec::new);
        let p = w.new_primary(nv, Recovery::default(), local, map, None)?;
        w.primary = Some(p);
        w.restart_remote()?;
        Ok(w)
    }

    fn now(&self) -> Instant {
        self.t0 + STEP * self.step as u32
    }

    fn vnow(&self) -> Duration {
        STEP * self.step as u32
    }

    fn event(&mut self, e: String) {
        let line = format!("{:>7} {e}", self.step);
        self.hasher.update(line.as_bytes());
        self.trace_len += 1;
        if self.opts.verbose {
            eprintln!("{line}");
        }
        self.trace.push_back(line);
        if self.trace.len() > 60 {
            self.trace.pop_front();
        }
    }

    fn fail(&self, invariant: &'static str, detail: String) -> Violation {
        Violation {
            seed: self.seed,
            step: self.step,
            invariant,
            detail,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    /// A primary over `nvbuf` as `Primary::start` builds one: the sender
    /// with the recovered operations replayed into it, and the local copy
    /// with the recovered records applied again.
    fn new_primary(
        &mut self,
        nvbuf: Nvbuf<MemStore>,
        recovery: Recovery,
        local_image: Option<Vec<u8>>,
        map_image: Option<Vec<u8>>,
        restore: Option<Arc<Restore>>,
    ) -> Result<PrimaryNode, Violation> {
        let now = self.now();
        let meta = PrimaryMeta::decode(&nvbuf.meta())
            .map_err(|e| self.fail("a (durability)", format!("primary metadata: {e}")))?;
        let epoch = nvbuf.epoch();
        let first = recovery.first_seq.unwrap_or_else(|| nvbuf.next_seq());
        let mut sender = Sender::new(
            SenderConfig {
                policy: self.policy,
                max_inflight_bytes: 1 << 20,
                retransmit_timeout: Some(Duration::from_millis(300)),
                heartbeat_interval: Duration::from_millis(100),
                degrade_after: self.degrade_after,
            },
            epoch,
            first,
            now,
        );
        replay::into_sender(&recovery, &mut sender, now)
            .map_err(|e| self.fail("a (durability)", format!("replay into the sender: {e}")))?;
        let carried_over = nvbuf.next_seq() - 1;
        let (local, local_disk) = match local_image {
            Some(img) => {
                let disk = MemReplica::from_image(img, 1);
                // As `Primary::start` wraps it while a restore runs.
                let under: Arc<dyn Replica> = match restore {
                    Some(r) if !r.done() => Arc::new(RestoringDisk {
                        inner: Arc::new(disk.clone()),
                        restore: r,
                    }),
                    _ => Arc::new(disk.clone()),
                };
                let local = Arc::new(LocalCopy::new(under, carried_over));
                replay::into_local(&recovery, &local, Some(&self.key)).map_err(|e| {
                    self.fail("f (local copy)", format!("replay into the local copy: {e}"))
                })?;
                (Some(local), Some(disk))
            }
            None => (None, None),
        };
        // The map as `Primary::start` opens it.
        let map = match map_image {
            Some(img) if img.is_empty() => Some(
                ChangeMap::create(
                    MemMapStore::new(),
                    VOLUME_ID,
                    VOLUME as u64,
                    4096,
                    meta.map_base,
                )
                .map_err(|e| self.fail("g (resync)", format!("creating the map: {e}")))?,
            ),
            Some(img) => Some(
                ChangeMap::open(MemMapStore::from_image(img), VOLUME_ID, VOLUME as u64)
                    .map_err(|e| self.fail("g (resync)", format!("reopening the map: {e}")))?
                    .0,
            ),
            None => None,
        };
        if let Some(map) = &map {
            mode::reconcile_map(map, &meta)
                .map_err(|e| self.fail("g (resync)", format!("reconciling the map: {e}")))?;
        }
        let mut mode = Mode::Journal;
        if let (Some(map), false) = (&map, meta.ahead) {
            mode::clear_replayed(&nvbuf, map)
                .map_err(|e| self.fail("g (resync)", format!("clearing replayed extents: {e}")))?;
        }
        if meta.ahead {
            let (Some(map), Some(_)) = (&map, &local) else {
                return Err(self.fail("g (resync)", "ahead without a local copy".into()));
            };
            mode::resume_ahead(&nvbuf, map, &mut sender, now)
                .map_err(|e| self.fail("g (resync)", format!("resuming ahead: {e}")))?;
            mode = Mode::Ahead { since: now };
        }
        Ok(PrimaryNode {
            meta,
            map,
            sync: SyncEngine::new(),
            mode,
            full_since: None,
            batch: Vec::new(),
            unflushed: Vec::new(),
            appender: Appender::new(nvbuf.next_seq()),
            hello: connect::hello(&self.volume, epoch, carried_over, true),
            encode: EncodeSettings {
                key: Some(self.key.clone()),
                compress: true,
                chunk_size: CHUNK,
                keep_plain: local.is_some(),
            },
            nvbuf,
            sender,
            local,
            local_disk,
            epoch,
            jobs: Vec::new(),
            waiting: BTreeMap::new(),
        })
    }

    /// The remote's replica state, beside its divergence record.
    fn state_path(&self) -> std::path::PathBuf {
        self.site_dirs[self.remote_site]
            .path()
            .join("replica.state")
    }

    fn faults_allowed(&self) -> bool {
        self.step < self.opts.steps
    }

    fn run(mut self) -> Result<Outcome, Violation> {
        // Healing lasts while the replica keeps moving: a slow, lossy link
        // with a long backlog drains late, not never. It must not stand
        // still for `heal_steps`, and all of it ends at ten times that.
        let cap = self.opts.steps + 10 * self.opts.heal_steps;
        let mut moved = (self.opts.steps, 0);
        while self.step < cap && self.step < moved.0 + self.opts.heal_steps {
            self.step += 1;
            if !self.faults_allowed() {
                let at = self.remote.as_ref().map_or(0, |r| r.applier.synced());
                if at > moved.1 {
                    moved = (self.step, at);
                }
            }
            if self.faults_allowed() {
                self.inject_faults()?;
                self.role_change_step()?;
                self.host_step();
            } else {
                self.handing_over = false;
                // Healing: everything comes back and the link is clean.
                self.link_down_until = 0;
                if self.primary.is_none() {
                    self.restart_primary()?;
                }
                if self.remote.is_none() {
                    self.restart_remote()?;
                }
            }
            if let Some(v) = self.violation.take() {
                return Err(v);
            }
            self.primary_step()?;
            self.restore_step()?;
            self.deliver()?;
            self.remote_step()?;
            self.connect_step()?;
            if self.step.is_multiple_of(500) {
                self.check_views()?;
            }
            if self.step.is_multiple_of(1000) {
                self.persist_progress()?;
            }
            if !self.faults_allowed() && self.drained() {
                return self.finish();
            }
        }
        Err(self.fail(
            "e (liveness)",
            format!(
                "not drained {} ms after the faults healed (stuck for {} ms): primary {:?}, appender holds {}, \
                 remote received {:?} released {:?} applied {:?} synced {:?}, {} decoding, connected {}, \
                 mode {:?}, sync running {}, batch {}, local applied {:?}, remote inconsistencies {:?}",
                self.step - self.opts.steps,
                self.step - moved.0,
                self.primary.as_ref().map(|p| p.sender.progress()),
                self.primary.as_ref().map_or(0, |p| p.appender.waiting()),
                self.remote.as_ref().map(|r| r.receiver.received_upto()),
                self.remote.as_ref().map(|r| r.receiver.released_upto()),
                self.remote.as_ref().map(|r| r.applier.applied()),
                self.remote.as_ref().map(|r| r.applier.synced()),
                self.remote.as_ref().map_or(0, |r| r.decoding.len()),
                self.connected,
                self.primary.as_ref().map(|p| p.mode),
                self.primary.as_ref().is_some_and(|p| p.sync.running()),
                self.primary.as_ref().map_or(0, |p| p.batch.len()),
                self.primary
                    .as_ref()
                    .and_then(|p| p.local.as_ref().map(|l| l.applied())),
                self.remote
                    .as_ref()
                    .map(|r| r.state.lock().expect("state").inconsistencies()),
            ),
        ))
    }

    /// Everything the primary holds is stored on the replica, through a
    /// session the remote accepted: a demoted site that has not yet met the
    /// promoted one (and its resync of what only the demoted side holds)
    /// is not drained, however empty the new primary's stream is.
    fn drained(&self) -> bool {
        if !self.connected || self.after_failover {
            return false;
        }
        match (&self.primary, &self.remote) {
            (Some(p), Some(r)) => {
                let prog = p.sender.progress();
                p.jobs.is_empty()
                    && p.appender.waiting() == 0
                    && prog.remote_stored == prog.highest
                    && r.applier.synced() == prog.highest
                    && p.local.as_ref().is_none_or(|l| l.applied() == prog.highest)
                    && matches!(p.mode, Mode::Journal)
                    && !p.sync.running()
                    && p.batch.is_empty()
                    && r.state.lock().expect("state").inconsistencies().is_empty()
                    && self.restore.is_none()
            }
            _ => false,
        }
    }

    fn finish(mut self) -> Result<Outcome, Violation> {
        let last = self.history.keys().next_back().map_or(0, |k| k.0);
        // (a): everything that survived is on the replica.
        let want = volume_now(&self.base, &self.history);
        let replica = self
            .remote
            .as_ref()
            .expect("remote up")
            .replica
            .working_image();
        if let Some(i) = replica.iter().zip(&want).position(|(a, b)| a != b) {
            return Err(self.fail(
                "a (durability)",
                format!("after healing, the replica differs from the host at byte {i}"),
            ));
        }
        if last < self.acked_durable {
            return Err(self.fail(
                "a (durability)",
                format!(
                    "seq {} was answered durable but the stream ends at {last}",
                    self.acked_durable
                ),
            ));
        }
        // (f): the local copy is the same volume.
        if let Some(disk) = self.primary.as_ref().and_then(|p| p.local_disk.as_ref()) {
            let local = disk.working_image();
            if let Some(i) = local.iter().zip(&replica).position(|(a, b)| a != b) {
                return Err(self.fail(
                    "f (local copy)",
                    format!(
                        "after healing, the local copy differs from the replica at byte {i} \
                         (local {:#04x}, replica {:#04x})",
                        local[i], replica[i]
                    ),
                ));
            }
        }
        let consistent = self
            .remote
            .as_ref()
            .map(|r| r.state.lock().expect("state").inconsistencies())
            .unwrap_or_default();
        if !consistent.is_empty() {
            return Err(self.fail(
                "b (prefix)",
                format!("after healing, the replica is still marked inconsistent: {consistent:?}"),
            ));
        }
        self.check_views()?;
        if self.rng.gen_bool(0.5) {
            self.rollback_finale()?;
        }
        self.out.steps = self.step;
        self.out.trace_hash = format!("{:08x}-{}", self.hasher.clone().finalize(), self.trace_len);
        Ok(self.out)
    }

    fn inject_faults(&mut self) -> Result<(), Violation> {
        let r: f64 = self.rng.gen();
        if r < 0.0004 && self.primary.is_some() {
            let machine = self.rng.gen_bool(0.5);
            self.crash_primary(machine);
        } else if r < 0.0008 && self.remote.is_some() {
            let machine = self.rng.gen_bool(0.5);
            self.crash_remote(machine);
        } else if r < 0.0012 && self.link_down_until <= self.step {
            let len = self.rng.gen_range(10..3000);
            self.link_down_until = self.step + len;
            self.out.outages += 1;
            self.event(format!("link down for {len} ms"));
        } else if r < 0.0016 {
            self.policy = random_policy(&mut self.rng);
            if self.spoof_all {
                self.policy = spoof_to_buffered(self.policy);
            }
            let p = self.policy;
            self.event(format!("policy {p:?}"));
            let now = self.now();
            if let Some(pr) = &mut self.primary {
                pr.sender.set_policy(p, now);
            }
        } else if r < 0.003 {
            let d = self.rng.gen_range(0.0..100.0);
            let now = self.now();
            if let Some(pr) = &mut self.primary {
                pr.sender.report_dirty(d, now);
            }
        }
        // Restarts.
        if self.primary.is_none() && self.rng.gen_bool(0.01) {
            self.restart_primary()?;
        }
        if self.remote.is_none() && self.rng.gen_bool(0.01) {
            self.restart_remote()?;
        }
        Ok(())
    }

    fn crash_primary(&mut self, machine: bool) {
        let p = self.primary.take().expect("primary up");
        let torn = machine && self.rng.gen_bool(0.5);
        let nvbuf = {
            let store = p.nvbuf.store();
            if !machine {
                store.working_image()
            } else if torn {
                store.crash_image_torn(self.rng.gen())
            } else {
                store.crash_image()
            }
        };
        let local = p.local_disk.as_ref().map(|d| {
            if machine {
                d.durable_image()
            } else {
                d.working_image()
            }
        });
        let map = p.map.as_ref().map(|m| {
            let store = m.store();
            if !machine {
                store.working_image()
            } else if torn {
                store.crash_image_torn(self.rng.gen())
            } else {
                store.crash_image()
            }
        });
        if machine && matches!(p.mode, Mode::Ahead { .. }) {
            // Writes made ahead and not flushed may be lost; everything
            // else the host wrote must be on the local copy's disk.
            let img = local.clone().expect("ahead only with a local copy");
            let want = volume_now(&self.base, &self.history);
            let mut maybe = vec![false; VOLUME];
            for &(o, l) in &p.unflushed {
                maybe[o..o + l].fill(true);
            }
            if let Some(i) = (0..VOLUME).find(|&i| !maybe[i] && img[i] != want[i]) {
                self.violation = Some(self.fail(
                    "a (durability)",
                    format!(
                        "a machine crash while ahead lost a flushed write: the local copy \
                         differs from the host's volume at byte {i}"
                    ),
                ));
            }
            let sub = self.next_sub(p.sender.highest_seq());
            self.history
                .insert((p.sender.highest_seq(), sub), HostOp::Image(img));
        }
        self.out.primary_crashes += 1;
        self.event(format!(
            "primary {} (torn: {torn}); {} host ops unanswered",
            if machine {
                "machine crashes"
            } else {
                "is killed"
            },
            p.waiting.len()
        ));
        self.primary_disks = Some(PrimaryDisks { nvbuf, local, map });
        // The rebuild's fetches die with the process; its map file stays.
        self.restore = None;
        self.disconnect();
    }

    fn restart_primary(&mut self) -> Result<(), Violation> {
        let disks = self
            .primary_disks
            .take()
            .expect("disks of the crashed primary");
        let (nv, rec) =
            match Nvbuf::open_in_with(MemStore::from_image(disks.nvbuf), VOLUME_ID, OnLoss::Refuse)
            {
                Ok(x) => x,
                Err(NvbufError::Lost { loss, .. }) => {
                    return Err(self.fail(
                        "f (recovery)",
                        format!(
                            "recovery reports lost durable records after a plain crash: {loss}"
                        ),
                    ))
                }
                Err(e) => {
                    return Err(self.fail(
                        "a (durability)",
                        format!("the crashed nvbuf does not reopen: {e}"),
                    ))
                }
            };
        let survived = nv.next_seq() - 1;
        self.event(format!(
            "primary restarts: epoch {}, recovered seqs {:?}..={:?}, next seq {}",
            nv.epoch(),
            rec.first_seq,
            rec.last_seq,
            survived + 1
        ));
        // (a): nothing answered durable may be lost by a crash.
        if self.acked_durable > survived {
            return Err(self.fail(
                "a (durability)",
                format!("seq {} was answered at buffered or later, but the nvbuf recovered only up to {survived}", self.acked_durable),
            ));
        }
        // Every recovered record must hold exactly what the host issued.
        for (h, payload) in &rec.records {
            let f = frame::decode_slice(payload, frame::DEFAULT_MAX_FRAME)
                .ok()
                .flatten()
                .map(|x| x.0);
            let ok = match (f, self.history.get(&(h.seq, 0))) {
                (Some(Frame::Write(w)), Some(HostOp::Write { offset, data })) => {
                    match decode_chunk(&w.chunk, w.id, w.offset, Some(&self.key)) {
                        Ok(plain) => {
                            let start = w.offset as usize - offset;
                            data[start..start + plain.len()] == plain[..]
                        }
                        Err(_) => false,
                    }
                }
                (Some(Frame::Trim(t)), Some(HostOp::Trim { offset, len })) => {
                    t.offset == *offset as u64 && t.length == *len as u64
                }
                (Some(Frame::Flush(_)), Some(HostOp::Flush)) => true,
                (Some(Frame::Checkpoint(_)), Some(HostOp::Checkpoint)) => true,
                (
                    Some(
                        Frame::Write(_)
                        | Frame::Trim(_)
                        | Frame::Marker(_)
                        | Frame::DigestRequest(_),
                    ),
                    Some(HostOp::Sync),
                ) => true,
                _ => false,
            };
            if !ok {
                return Err(self.fail(
                    "a (durability)",
                    format!(
                        "recovered seq {} is not what the host issued ({:?})",
                        h.seq,
                        self.history.get(&(h.seq, 0))
                    ),
                ));
            }
        }
        // Operations after what survived are gone; the host was never told
        // they were durable.
        self.history.split_off(&(survived + 1, 0));
        if self.expected_upto > survived {
            return Err(self.fail(
                "b (prefix)",
                format!(
                    "the replica applied seq {} but the primary only kept {survived}",
                    self.expected_upto
                ),
            ));
        }
        let (local, restore) = self.maybe_restore(&nv, disks.local, disks.map.as_deref())?;
        let p = self.new_primary(nv, rec, local, disks.map, restore.clone())?;
        if let (Some(r), Some(disk)) = (restore, &p.local_disk) {
            self.restore = Some(SimRestore {
                restore: r,
                disk: disk.clone(),
                fetches: Vec::new(),
            });
        }
        self.primary = Some(p);
        Ok(())
    }

    fn crash_remote(&mut self, machine: bool) {
        let r = self.remote.take().expect("remote up");
        let (replica, state, replica_at) = if machine {
            (
                r.replica.durable_image(),
                r.state_store.durable_image(),
                r.applier.synced(),
            )
        } else {
            (
                r.replica.working_image(),
                r.state_store.working_image(),
                r.applier.applied(),
            )
        };
        if machine {
            self.remote_boot += 1;
        }
        self.out.remote_crashes += 1;
        self.event(format!(
            "remote {} at applied seq {}, synced {}",
            if machine {
                "machine crashes"
            } else {
                "is killed"
            },
            r.applier.applied(),
            r.applier.synced()
        ));
        self.remote_disks = Some(RemoteDisks {
            replica,
            state,
            replica_at,
        });
        self.disconnect();
    }

    /// Starts the remote as `Remote::start` does: its state file checked
    /// against the replica, the applier and receiver from where it resumes.
    fn restart_remote(&mut self) -> Result<(), Violation> {
        let disks = self
            .remote_disks
            .take()
            .expect("disks of the crashed remote");
        let replica = MemReplica::from_image(disks.replica, 7);
        let state_store = MemStateStore::from_image(disks.state);
        let (state, resume) = VolumeState::open_in(
            Box::new(state_store.clone()),
            &replica,
            OpenState {
                volume_id: VOLUME_ID,
                boot_id: boot_id(self.remote_boot),
                adopt: false,
                path: &self.state_path(),
            },
        )
        .map_err(|e| {
            self.fail(
                "b (prefix)",
                format!("the replica state does not reopen: {e}"),
            )
        })?;
        self.event(format!(
            "remote restarts: stored {}, inconsistent {:?}",
            resume.stored, resume.inconsistent
        ));
        // The model follows the replica's bytes, which may be ahead of what
        // the state file recorded; invariant (b) is only checked while the
        // replica is marked consistent.
        self.expected_upto = disks.replica_at;
        self.expected = volume_after(&self.base, &self.history, disks.replica_at);
        // A demoted primary's replica holds changes of its own until the
        // first resync: it is no prefix of this primary's stream.
        let diverged = state.diverged();
        if resume.inconsistent.is_empty() && disks.replica_at != resume.stored {
            return Err(self.fail(
                "b (prefix)",
                format!(
                    "the replica holds seq {} but its state says {} and claims to be consistent",
                    disks.replica_at, resume.stored
                ),
            ));
        }
        if resume.inconsistent.is_empty() && !diverged {
            let replica_now = replica.working_image();
            if replica_now != self.expected {
                return Err(self.fail(
                    "b (prefix)",
                    format!(
                        "the restarted replica claims consistency at seq {} but differs from the host's volume",
                        resume.stored
                    ),
                ));
            }
        }
        let undo = self.open_undo()?;
        let state = Arc::new(Mutex::new(state));
        let replica_dyn: Arc<dyn Replica> = Arc::new(replica.clone());
        self.remote = Some(RemoteNode {
            undo: undo.clone(),
            receiver: Receiver::new(
                resume.stored,
                resume.epoch_seen,
                Duration::from_millis(100),
                self.now(),
            ),
            applier: Applier::new(replica_dyn, state.clone(), resume.stored).with_undo(undo),
            state,
            hello: dtu::remote::hello(&self.volume, resume.epoch_seen, resume.stored),
            replica,
            state_store,
            decoding: Vec::new(),
        });
        // (i) across the crash: the journal and the catalog reopened.
        self.check_views()
    }

    /// Opens the remote's catalog and undo journal as `Remote::start`
    /// does (reconciling them after a crash).
    fn open_undo(&mut self) -> Result<Arc<Mutex<UndoState>>, Violation> {
        let opts = UndoOptions {
            dir: self.site_dirs[self.remote_site].path().join("undo"),
            max_bytes: self.undo_max,
            max_age: None,
        };
        match UndoState::open(&opts, 4096, VOLUME as u64) {
            Ok(u) => Ok(Arc::new(Mutex::new(u))),
            Err(e) => Err(self.fail(
                "i (as-of views)",
                format!("the undo journal does not reopen: {e}"),
            )),
        }
    }

    /// (i): every checkpoint the remote holds that was applied while the
    /// replica was consistent shows, as of it, exactly the host's volume
    /// after that checkpoint's seq.
    fn check_views(&mut self) -> Result<(), Violation> {
        let Some(r) = &self.remote else {
            return Ok(());
        };
        let u = r.undo.lock().expect("undo");
        let held = u.list();
        let mut bad = None;
        let mut checked = 0;
        for c in &held {
            if self.views.get(&c.seq) != Some(&true) {
                continue;
            }
            let mut view = vec![0u8; VOLUME];
            if let Err(e) = u.read_as_of(
                &u.resolve(&AsOf::Label(c.label.clone())).expect("held"),
                0,
                &mut view,
                &r.replica,
            ) {
                bad = Some(format!("as of {} (seq {}): {e}", c.label, c.seq));
                break;
            }
            let want = volume_after(&self.base, &self.history, c.seq);
            if let Some(i) = view.iter().zip(&want).position(|(a, b)| a != b) {
                bad = Some(format!(
                    "the view as of checkpoint {} (seq {}) differs from the host's volume at that seq at byte {i} (view {:#04x}, volume {:#04x}, replica now {:#04x})",
                    c.label, c.seq, view[i], want[i], r.replica.working_image()[i]
                ));
                break;
            }
            checked += 1;
        }
        drop(u);
        // Checkpoints that left the catalog (retention, a restart of the
        // stream) do not come back.
        let before = self.views.len();
        let held_seqs: std::collections::BTreeSet<Seq> = held.iter().map(|c| c.seq).collect();
        self.views.retain(|seq, _| held_seqs.contains(seq));
        self.out.checkpoints_dropped += (before - self.views.len()) as u64;
        self.out.views_checked += checked;
        match bad {
            Some(d) => Err(self.fail("i (as-of views)", d)),
            None => Ok(()),
        }
    }

    /// The end of a run, now and then: the remote rolls its replica back
    /// to a checkpoint it holds (one applied while consistent) through
    /// dtu's rollback, crashing part way through the rewrite on some seeds
    /// and finishing it at the restart; the replica must then equal the
    /// host's volume at that checkpoint, in a generation of its own, with
    /// the later checkpoints gone.
    fn rollback_finale(&mut self) -> Result<(), Violation> {
        let Some(r) = self.remote.take() else {
            return Ok(());
        };
        let pick = {
            let u = r.undo.lock().expect("undo");
            let good: Vec<_> = u
                .list()
                .into_iter()
                .filter(|c| self.views.get(&c.seq) == Some(&true))
                .collect();
            (!good.is_empty()).then(|| good[self.rng.gen_range(0..good.len())].clone())
        };
        let Some(c) = pick else {
            self.remote = Some(r);
            return Ok(());
        };
        let gen: u64 = self.rng.gen::<u64>() | 1;
        let entry = r
            .undo
            .lock()
            .expect("undo")
            .resolve(&AsOf::Label(c.label.clone()))
            .expect("held");
        let m = rollback::marker_for(&entry, gen);
        let crash = self.rng.gen_bool(0.5);
        self.event(format!(
            "rollback to checkpoint {} (seq {}){}",
            c.label,
            c.seq,
            if crash { ", cut short by a crash" } else { "" }
        ));
        let fail = |w: &Self, d: String| w.fail("i (as-of views)", d);
        let (replica, state_store) = if crash {
            let plan = {
                let u = r.undo.lock().expect("undo");
                rollback::begin(&u, m).map_err(|e| fail(self, e.to_string()))?;
                u.rollback_plan(entry.era)
                    .map_err(|e| fail(self, e.to_string()))?
            };
            let n = self.rng.gen_range(0..=plan.len());
            for step in &plan[..n] {
                let _ = match step {
                    dtu::undo::RollbackStep::Write { off, data } => r.replica.write_at(*off, data),
                    dtu::undo::RollbackStep::Zero { off, len } => r.replica.trim(*off, *len),
                };
            }
            let img = if self.rng.gen_bool(0.5) {
                r.replica.durable_image()
            } else {
                r.replica.working_image()
            };
            let state = r.state_store.durable_image();
            drop(r);
            (
                MemReplica::from_image(img, 7),
                MemStateStore::from_image(state),
            )
        } else {
            let mut u = r.undo.lock().expect("undo");
            let mut vs = r.state.lock().expect("state");
            rollback::commit(&mut u, m, &r.replica, &mut vs)
                .map_err(|e| fail(self, e.to_string()))?;
            drop((u, vs));
            let img = r.replica.durable_image();
            let state = r.state_store.durable_image();
            drop(r);
            (
                MemReplica::from_image(img, 7),
                MemStateStore::from_image(state),
            )
        };
        // The restart: a marker left behind finishes the rollback.
        let undo = self.open_undo()?;
        let (mut vs, _) = VolumeState::open_in(
            Box::new(state_store.clone()),
            &replica,
            OpenState {
                volume_id: VOLUME_ID,
                boot_id: boot_id(self.remote_boot + 1),
                adopt: false,
                path: &self.state_path(),
            },
        )
        .map_err(|e| {
            fail(
                self,
                format!("the state does not reopen after the rollback: {e}"),
            )
        })?;
        let mut u = undo.lock().expect("undo");
        let finished = rollback::finish_pending(&mut u, &replica, &mut vs)
            .map_err(|e| fail(self, format!("finishing the rollback: {e}")))?;
        if crash != finished.is_some() {
            return Err(fail(
                self,
                format!(
                    "a rollback {} was left to finish",
                    if crash { "cut short" } else { "committed" }
                ),
            ));
        }
        let want = volume_after(&self.base, &self.history, c.seq);
        let got = replica.working_image();
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            return Err(fail(
                self,
                format!("after the rollback to seq {} the replica differs from the host's volume then at byte {i}", c.seq),
            ));
        }
        if replica.durable_image() != got {
            return Err(fail(self, "the rollback's rewrite was not synced".into()));
        }
        if vs.gens().current != gen || vs.synced() != c.seq {
            return Err(fail(
                self,
                format!(
                    "after the rollback the replica is at generation {:x} seq {}, not {gen:x} seq {}",
                    vs.gens().current,
                    vs.synced(),
                    c.seq
                ),
            ));
        }
        if let Some(after) = u.list().iter().find(|x| x.seq > c.seq) {
            return Err(fail(
                self,
                format!(
                    "checkpoint {} (seq {}) outlived the rollback to seq {}",
                    after.label, after.seq, c.seq
                ),
            ));
        }
        self.out.rollbacks += 1;
        Ok(())
    }

    /// At a restart with a local copy, sometimes its disk is lost: the
    /// primary starts on an empty one and restores it from the remote (as
    /// `--restore-from-remote`), only where `Primary::start` would allow it
    /// (nothing marked in the map, not ahead) and the remote holds the
    /// volume. A restore a crash interrupted goes on from its map file.
    fn maybe_restore(
        &mut self,
        nv: &Nvbuf<MemStore>,
        local: Option<Vec<u8>>,
        map: Option<&[u8]>,
    ) -> Result<LocalStart, Violation> {
        let Some(img) = local else {
            return Ok((None, None));
        };
        let path = self.site_dirs[1 - self.remote_site]
            .path()
            .join("local.restore");
        match Restore::open_by(path.clone(), VOLUME as u64, RESTORE_EXTENT) {
            Err(e) => Err(self.fail(
                "j (restore)",
                format!("the restore map does not reopen: {e}"),
            )),
            Ok(Some(r)) => {
                let p = r.progress();
                self.event(format!(
                    "the restore goes on: {} of {} bytes local",
                    p.done_bytes, p.total_bytes
                ));
                Ok((Some(img), Some(Arc::new(r))))
            }
            Ok(None) => {
                if !self.faults_allowed() || !self.rng.gen_bool(0.3) {
                    return Ok((Some(img), None));
                }
                let Ok(meta) = PrimaryMeta::decode(&nv.meta()) else {
                    return Ok((Some(img), None));
                };
                let marked = match map {
                    Some(m) if !m.is_empty() => ChangeMap::open(
                        MemMapStore::from_image(m.to_vec()),
                        VOLUME_ID,
                        VOLUME as u64,
                    )
                    .map_or(1, |x| x.0.marked_bytes()),
                    _ => 1,
                };
                let holds = self.remote.as_ref().is_some_and(|r| {
                    let st = r.state.lock().expect("state");
                    st.inconsistencies().is_empty() && st.gens().current == meta.gens.current
                });
                if meta.ahead || marked > 0 || !holds {
                    return Ok((Some(img), None));
                }
                let r = Restore::everything_by(path, VOLUME as u64, RESTORE_EXTENT);
                r.save().map_err(|e| {
                    self.fail("j (restore)", format!("saving the restore map: {e}"))
                })?;
                self.out.restores += 1;
                self.event(
                    "the primary's local disk is lost: it starts on an empty one and restores it \
                     from the remote"
                        .into(),
                );
                Ok((Some(vec![0; VOLUME]), Some(Arc::new(r))))
            }
        }
    }

    /// The restore's rebuild, played as its tasks do: fetch extents from
    /// the remote once it has applied every seq submitted before the fetch
    /// began, install them (refused if a host write reached the extent
    /// meanwhile), save the map after syncing the local copy; and host reads
    /// during the restore, checked by invariant (j): a read never returns
    /// data older than the last answered write to it.
    fn restore_step(&mut self) -> Result<(), Violation> {
        let Some(mut sr) = self.restore.take() else {
            return Ok(());
        };
        let Some(p) = &self.primary else {
            return Ok(());
        };
        let remote_ok =
            self.connected && self.link_down_until <= self.step && sr.restore.source_ok();
        let applied = self.remote.as_ref().map_or(0, |r| r.applier.applied());
        if remote_ok && sr.fetches.len() < RESTORE_PARALLEL && self.rng.gen_bool(0.3) {
            if let Some(e) = sr.restore.next_extent() {
                sr.fetches.push((e, p.sender.highest_seq(), None));
            }
        }
        let replica = self.remote.as_ref().map(|r| r.replica.working_image());
        let mut i = 0;
        while i < sr.fetches.len() {
            let (e, after, data) = &mut sr.fetches[i];
            let (off, len) = sr.restore.extent_range(*e);
            if data.is_none() {
                if !remote_ok {
                    if self.rng.gen_bool(0.05) {
                        sr.restore.abandon(*e);
                        sr.fetches.swap_remove(i);
                        continue;
                    }
                } else if applied >= *after && self.rng.gen_bool(0.3) {
                    let img = replica.as_ref().expect("a remote to read");
                    *data = Some(img[off as usize..off as usize + len as usize].to_vec());
                }
            } else if self.rng.gen_bool(0.3) {
                let (e, _, data) = sr.fetches.swap_remove(i);
                let data = data.expect("fetched");
                match sr.restore.install(e, &data, &sr.disk) {
                    Ok(true) => self.out.restore_installs += 1,
                    Ok(false) => self.out.restore_refetches += 1,
                    Err(err) => {
                        return Err(
                            self.fail("j (restore)", format!("installing extent {e}: {err}"))
                        )
                    }
                }
                continue;
            }
            i += 1;
        }
        if self.step.is_multiple_of(20) || sr.restore.missing_extents() == 0 {
            if let Err(err) = sr.disk.sync().and_then(|()| sr.restore.save()) {
                return Err(self.fail("j (restore)", format!("saving the restore map: {err}")));
            }
            if sr.restore.done() {
                self.event("the restore is complete: the local copy is whole".into());
                return Ok(());
            }
        }
        if self.rng.gen_bool(0.05) {
            self.check_restoring_read(&sr)?;
        }
        self.restore = Some(sr);
        Ok(())
    }

    /// A host read of 4 KiB during the restore, as `Primary::read` serves
    /// it: local extents once the local copy has applied every answered
    /// operation, the others from the remote once it has applied every
    /// submitted one. Each byte must hold the value of the last answered
    /// write to it or of a later one.
    fn check_restoring_read(&mut self, sr: &SimRestore) -> Result<(), Violation> {
        let (Some(p), Some(r)) = (&self.primary, &self.remote) else {
            return Ok(());
        };
        let Some(local) = &p.local else {
            return Ok(());
        };
        let prog = p.sender.progress();
        let (answered, highest) = (prog.answered, prog.highest);
        let at = self.rng.gen_range(0..VOLUME / 4096) * 4096;
        let mut got = Vec::with_capacity(4096);
        for (o, n, is_local) in sr.restore.runs(at as u64, 4096) {
            if is_local {
                if local.applied() < answered {
                    return Ok(());
                }
                let mut buf = vec![0u8; n as usize];
                if let Err(e) = local.disk().read_at(o, &mut buf) {
                    return Err(self.fail(
                        "j (restore)",
                        format!("a read of a restored extent at {o} failed: {e}"),
                    ));
                }
                got.extend_from_slice(&buf);
            } else {
                if !self.connected || r.applier.applied() < highest {
                    return Ok(());
                }
                sr.restore.steer_to(o, n);
                got.extend_from_slice(&r.replica.working_image()[o as usize..(o + n) as usize]);
            }
        }
        let want = volume_after(&self.base, &self.history, answered);
        for (k, &b) in got.iter().enumerate() {
            let pos = at + k;
            if b == want[pos] {
                continue;
            }
            let later = self
                .history
                .range((answered + 1, 0)..)
                .any(|(_, op)| match op {
                    HostOp::Write { offset, data } => {
                        (*offset..offset + data.len()).contains(&pos) && data[pos - offset] == b
                    }
                    HostOp::Trim { offset, len } => {
                        (*offset..offset + len).contains(&pos) && b == 0
                    }
                    HostOp::Image(img) => img[pos] == b,
                    _ => false,
                });
            if !later {
                return Err(self.fail(
                    "j (restore)",
                    format!(
                        "a read during the restore returned {b:#04x} at byte {pos}, older than \
                         the last answered write there ({:#04x}; answered through seq {answered})",
                        want[pos]
                    ),
                ));
            }
        }
        self.out.restore_reads += 1;
        Ok(())
    }

    /// Starts the role change due at this step: a planned switchover
    /// pauses the host until the pair drains (as `dtu switchover` drains
    /// before its goodbye); a failover needs both sites up and a replica
    /// the promotion accepts, else it waits.
    fn role_change_step(&mut self) -> Result<(), Violation> {
        if self.handing_over {
            // `dtu switchover` hands over a connected pair: the goodbye
            // that makes the remote promote crosses the session.
            if self.connected && self.drained() {
                self.handing_over = false;
                self.change_roles(true)?;
            }
            return Ok(());
        }
        let Some(&(at, planned)) = self.role_changes.first() else {
            return Ok(());
        };
        if self.step < at {
            return Ok(());
        }
        if planned {
            self.role_changes.remove(0);
            self.handing_over = true;
            self.event("switchover: the host pauses while the primary drains".into());
            return Ok(());
        }
        let ready = self.primary.is_some()
            && self.restore.is_none()
            && self.remote.as_ref().is_some_and(|r| {
                let st = r.state.lock().expect("state");
                st.inconsistencies().is_empty() && !st.diverged()
            });
        if ready {
            self.role_changes.remove(0);
            self.change_roles(false)?;
        } else {
            self.role_changes[0].0 = self.step + 200;
        }
        Ok(())
    }

    /// The remote's site takes the primary role and the primary's site
    /// the remote role, through dtu's role functions: the promotion's
    /// checks and state ([`promotion_refused`], `VolumeState::promote`,
    /// [`role::promoted_meta`]) and the demotion's divergence record
    /// ([`role::divergence`], [`role::record_demotion`]). `planned`: the
    /// pair drained and the primary stops; else the primary's machine
    /// crashes or its process dies with writes in flight (a lost site),
    /// and its site comes back later as the remote. Invariant (k): a
    /// switchover loses no answered write, a failover none answered at
    /// `remote-stored`, and the promoted replica is a state the host's
    /// volume passed through; after the failback resync both sides are
    /// equal ((a) and (f) at the end).
    fn change_roles(&mut self, planned: bool) -> Result<(), Violation> {
        let inconsistencies = {
            let r = self.remote.as_ref().expect("remote up");
            let st = r.state.lock().expect("state");
            st.inconsistencies()
        };
        // The old primary's session has ended (its goodbye, or its loss).
        if let Err(e) = promotion_refused(None, &inconsistencies, false) {
            return Err(self.fail("k (role change)", format!("promotion refused: {e}")));
        }
        let machine = !planned && self.rng.gen_bool(0.5);
        if planned {
            // A clean stop saves how far the remote stored.
            self.persist_progress()?;
        }
        self.crash_primary(machine);
        let mut r = self.remote.take().expect("remote up");
        let synced = match r.applier.sync() {
            Ok(_) => r.applier.synced(),
            Err(e) => {
                let detail = e.to_string();
                return Err(self.fail("k (role change)", format!("syncing the replica: {detail}")));
            }
        };
        let fresh = self.rng.gen::<u64>() | 1;
        let promoted = r.state.lock().expect("state").promote(fresh);
        let (gens, base) = match promoted {
            Ok(x) => x,
            Err(e) => {
                let detail = e.to_string();
                return Err(self.fail("k (role change)", format!("promoting: {detail}")));
            }
        };
        let image = r.replica.working_image();
        drop(r);
        // (k): what the promoted side starts from.
        let want = if planned {
            volume_now(&self.base, &self.history)
        } else {
            if synced < self.acked_remote {
                return Err(self.fail(
                    "k (role change)",
                    format!(
                        "seq {} was answered at remote-stored but the promoted replica holds \
                         only {synced}",
                        self.acked_remote
                    ),
                ));
            }
            volume_after(&self.base, &self.history, synced)
        };
        if let Some(i) = image.iter().zip(&want).position(|(a, b)| a != b) {
            return Err(self.fail(
                "k (role change)",
                format!(
                    "the promoted replica (at seq {synced}) differs from the host's volume at \
                     byte {i}{}",
                    if planned {
                        " after a planned switchover"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let lost = self.history.keys().next_back().map_or(0, |k| k.0);
        self.event(format!(
            "{}: the remote's site is promoted at seq {synced} (the old primary reached {lost}), \
             generation {:016x} after {base:016x}",
            if planned { "switchover" } else { "failover" },
            gens.current
        ));
        // The promoted side's host starts from its replica.
        self.base = image.clone();
        self.history.clear();
        self.acked_durable = 0;
        self.acked_remote = 0;
        self.expected = self.base.clone();
        self.expected_upto = 0;
        self.views.clear();
        self.digests_consistent.clear();
        self.initial = InitialSync::Full;
        self.remote_site = 1 - self.remote_site;
        let nv = Nvbuf::create_in(
            MemStore::new(NVBUF),
            &NvbufConfig::new(VOLUME_ID).with_size(NVBUF as u64),
        )
        .expect("create the nvbuf");
        if let Err(e) =
            nv.set_meta(&role::promoted_meta(gens, base, 1 + self.vnow().as_secs()).encode())
        {
            return Err(self.fail(
                "k (role change)",
                format!("the new primary's metadata: {e}"),
            ));
        }
        let p = self.new_primary(nv, Recovery::default(), Some(image), Some(Vec::new()), None)?;
        self.primary = Some(p);
        // The old primary's site, demoted: its local copy is the replica.
        let disks = self.primary_disks.take().expect("the old primary's disks");
        let demoted = self.demote(disks, planned)?;
        self.remote_disks = Some(demoted);
        if planned {
            self.out.switchovers += 1;
            self.restart_remote()?;
        } else {
            self.out.failovers += 1;
            self.after_failover = true;
        }
        Ok(())
    }

    /// Saves how far the remote stored, as the primary does once a second
    /// and at a clean stop.
    fn persist_progress(&mut self) -> Result<(), Violation> {
        let Some(p) = &mut self.primary else {
            return Ok(());
        };
        if p.meta.note_stored(p.sender.progress().remote_stored) {
            if let Err(e) = p.nvbuf.set_meta(&p.meta.encode()) {
                let detail = e.to_string();
                return Err(self.fail("a (durability)", format!("primary metadata: {detail}")));
            }
        }
        Ok(())
    }

    /// The old primary's files as its remote role's (what `dtu demote`
    /// does to them), in the site's new remote directory.
    fn demote(&mut self, disks: PrimaryDisks, planned: bool) -> Result<RemoteDisks, Violation> {
        let (nv, rec) = match Nvbuf::open_in_with(
            MemStore::from_image(disks.nvbuf),
            VOLUME_ID,
            OnLoss::Salvage,
        ) {
            Ok(x) => x,
            Err(e) => return Err(self.fail("k (role change)", format!("demoting: the nvbuf: {e}"))),
        };
        let meta = PrimaryMeta::decode(&nv.meta())
            .map_err(|e| self.fail("k (role change)", format!("demoting: metadata: {e}")))?;
        let Some(local) = disks.local else {
            // No local copy: the remote role starts from an empty replica.
            let _ = std::fs::remove_file(role::divergence_record(&self.state_path()));
            role::mark_demoted(&nv, meta)
                .map_err(|e| self.fail("k (role change)", format!("demoting: {e}")))?;
            return Ok(RemoteDisks {
                replica: vec![0; VOLUME],
                state: Vec::new(),
                replica_at: 0,
            });
        };
        // The same disk the remote role opens (its identity is the replica's).
        let disk = MemReplica::from_image(local, 7);
        let map = match disks.map {
            Some(img) if !img.is_empty() => Some(
                ChangeMap::open(MemMapStore::from_image(img), VOLUME_ID, VOLUME as u64)
                    .map_err(|e| self.fail("k (role change)", format!("demoting: the map: {e}")))?
                    .0,
            ),
            _ => None,
        };
        let fresh = self.rng.gen::<u64>() | 1;
        let d = role::divergence(
            &nv,
            &rec,
            &meta,
            Arc::new(disk.clone()),
            map.as_ref(),
            Some(&self.key),
            fresh,
        )
        .map_err(|e| self.fail("k (role change)", format!("demoting: {e}")))?;
        let state_store = MemStateStore::from_image(Vec::new());
        let path = self.state_path();
        let (mut vs, _) = VolumeState::open_in(
            Box::new(state_store.clone()),
            &disk,
            OpenState {
                volume_id: VOLUME_ID,
                boot_id: boot_id(self.remote_boot),
                adopt: false,
                path: &path,
            },
        )
        .map_err(|e| self.fail("k (role change)", format!("demoting: the state: {e}")))?;
        if planned && !d.divergent.is_empty() {
            return Err(self.fail(
                "k (role change)",
                format!(
                    "a planned switchover left {} ranges to resync: a drained pair needs none",
                    d.divergent.len()
                ),
            ));
        }
        role::record_demotion(&mut vs, &disk, &d, false)
            .map_err(|e| self.fail("k (role change)", format!("demoting: {e}")))?;
        role::mark_demoted(&nv, meta)
            .map_err(|e| self.fail("k (role change)", format!("demoting: {e}")))?;
        self.event(format!(
            "the old primary's site is demoted: {} bytes of its own in {} ranges, {} of them \
             written while cut off",
            d.divergent.iter().map(|r| r.1).sum::<u64>(),
            d.divergent.len(),
            d.cut_off_bytes
        ));
        Ok(RemoteDisks {
            replica: disk.durable_image(),
            state: state_store.durable_image(),
            replica_at: 0,
        })
    }

    fn disconnect(&mut self) {
        if self.connected {
            self.connected = false;
            let now = self.now();
            if let Some(p) = &mut self.primary {
                p.sender.on_disconnected(now);
            }
            if let Some(r) = &mut self.remote {
                r.receiver.on_disconnected();
            }
            self.event("disconnected".into());
        }
        self.reconnect_at = self.step + self.rng.gen_range(5..200);
    }

    /// The handshake, with the functions the QUIC sessions use.
    fn connect_step(&mut self) -> Result<(), Violation> {
        if self.connected || self.step < self.reconnect_at || self.link_down_until > self.step {
            return Ok(());
        }
        let now = self.now();
        let (Some(p), Some(r)) = (&mut self.primary, &mut self.remote) else {
            return Ok(());
        };
        let offer = connect::offer(
            &p.hello,
            &Offer {
                highest: p.sender.highest_seq(),
                resume_from: p.sender.base(),
                meta: &p.meta,
                has_local: p.local.is_some(),
                initial: self.initial,
                changed_bytes: p.map.as_ref().map_or(0, |m| m.marked_bytes())
                    + p.sender.unstored_bytes(),
            },
        );
        let fresh = self.rng.gen::<u64>() | 1;
        let accepted = {
            let mut st = r.state.lock().expect("state");
            accept_primary(
                &mut r.receiver,
                &mut st,
                &r.hello,
                &offer,
                fresh,
                dtu::config::SplitBrainPolicy::Disconnect,
                now,
            )
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(
                e @ AcceptError::Decision {
                    refusal: Refusal::SplitBrain,
                    ..
                },
            ) if self.after_failover => {
                // The old primary's host wrote while cut off (it went
                // ahead): both sides changed. The operator keeps the
                // promoted side's data, as the refusal says how.
                let detail = e.to_string();
                let resolved = r.state.lock().expect("state").set_discard_my_data();
                if let Err(e) = resolved {
                    return Err(self.fail("k (role change)", format!("--discard-my-data: {e}")));
                }
                self.out.split_brains += 1;
                self.event(format!(
                    "refused: {detail}; the operator discards the remote's data"
                ));
                self.disconnect();
                return Ok(());
            }
            Err(e) => {
                let detail = e.to_string();
                return Err(self.fail(
                    "g (resync)",
                    format!("the remote refuses the primary: {detail}"),
                ));
            }
        };
        if let Some(pos) = accepted.rebase {
            // The stream restarts after `pos`: the replica is inconsistent
            // until the sync completes (or was adopted as the volume).
            r.applier.rebase(pos);
            r.decoding.clear();
        }
        let explained = accepted.explained.clone();
        let rebase = accepted.rebase;
        let reply = accepted.reply;
        let extents = accepted.extents;
        let mut accepted = match connect::check_reply(&offer, &reply) {
            Ok(a) => a,
            Err(e) => {
                let detail = e.to_string();
                return Err(self.fail(
                    "b (prefix)",
                    format!("the primary refuses the remote: {detail}"),
                ));
            }
        };
        if accepted.extents_follow {
            // The Extents frames that follow the answer, as the session
            // reads them.
            let ranges = extents.unwrap_or_default();
            if ranges.len() > connect::MAX_EXTENTS {
                return Err(self.fail("k (role change)", "too many extents".into()));
            }
            self.out.failback_bytes += ranges.iter().map(|r| r.1).sum::<u64>();
            accepted.extents = ranges;
        }
        p.sync.on_reconnect();
        let markers_pending = p.sender.holds_after(OpKind::Marker, accepted.remote_stored);
        let changed = connect::on_accepted(
            &accepted,
            markers_pending,
            &mut p.meta,
            p.map.as_ref(),
            p.local.as_deref(),
            &mut p.sync,
            &mut p.mode,
            false,
            now,
        );
        match changed {
            Ok(true) => {
                if let Err(e) = p.nvbuf.set_meta(&p.meta.encode()) {
                    let detail = e.to_string();
                    return Err(self.fail("g (resync)", format!("primary metadata: {detail}")));
                }
            }
            Ok(false) => {}
            Err(e) => {
                let detail = e.to_string();
                return Err(self.fail("g (resync)", format!("carrying out the decision: {detail}")));
            }
        }
        if !matches!(p.mode, Mode::Ahead { .. }) {
            p.unflushed.clear();
        }
        if let Some(sr) = &self.restore {
            // As the primary's session decides whether the restore may read.
            let marked = p.map.as_ref().map_or(0, |m| m.marked_bytes());
            let ok = dtu::primary::restore::source_holds_volume(&accepted.decision, marked);
            sr.restore.set_source(ok);
            if !ok {
                return Err(self.fail(
                    "j (restore)",
                    format!(
                        "a restore began from a remote that does not hold the volume: {explained}"
                    ),
                ));
            }
        }
        if let Some(pos) = rebase {
            self.expected_upto = pos;
            self.expected = volume_after(&self.base, &self.history, pos);
        }
        if let Err(e) = p.sender.on_connected(accepted.remote_stored, now) {
            let detail = e.to_string();
            return Err(self.fail(
                "b (prefix)",
                format!("the primary refuses the remote's position: {detail}"),
            ));
        }
        self.event(format!("decision: {explained}"));
        self.after_failover = false;
        self.connected = true;
        self.session += 1;
        self.event(format!(
            "connected; remote stored through {}",
            accepted.remote_stored
        ));
        Ok(())
    }

    /// The next position for a write made ahead after `seq`.
    fn next_sub(&self, seq: Seq) -> u32 {
        self.history
            .range((seq, 1)..(seq + 1, 0))
            .next_back()
            .map_or(1, |(k, _)| k.1 + 1)
    }

    fn host_step(&mut self) {
        if self.handing_over {
            return;
        }
        let Some(p) = &mut self.primary else {
            return;
        };
        if p.waiting.len() >= 8 || p.appender.waiting() > 64 || !self.rng.gen_bool(self.write_rate)
        {
            return;
        }
        let now = self.t0 + STEP * self.step as u32;
        let epoch = p.epoch;
        let pick: f64 = self.rng.gen();
        if pick < 0.005 {
            // An operator's online verify (only one at a time, in journal
            // mode with a map).
            if p.map.is_some()
                && matches!(p.mode, Mode::Journal)
                && !p.sync.verifying()
                && self.restore.is_none()
            {
                p.sync.start_verify(0, VOLUME as u64, false, now);
                self.event("verify starts".into());
            }
            return;
        }
        if let (Mode::Ahead { .. }, Some(map), Some(local)) = (p.mode, &p.map, &p.local) {
            // Ahead: the host's operation goes to the local copy and the map
            // and is answered at once; it has no seq.
            let highest = p.sender.highest_seq();
            let (op, what, done) = if pick < 0.1 {
                let done = mode::flush_ahead(map, local);
                p.unflushed.clear();
                (HostOp::Flush, "flush".to_string(), done)
            } else if pick < 0.2 {
                let len = self.rng.gen_range(1..=16) * 512;
                let offset = self.rng.gen_range(0..(VOLUME - len) / 512) * 512;
                let done = mode::trim_ahead(map, local, offset as u64, len as u64);
                p.unflushed.push((offset, len));
                (
                    HostOp::Trim { offset, len },
                    format!("trim {offset}+{len}"),
                    done,
                )
            } else {
                let len = self.rng.gen_range(1..=64) * 512;
                let offset = self.rng.gen_range(0..(VOLUME - len) / 512) * 512;
                let fill: u8 = self.rng.gen();
                let data: Vec<u8> = (0..len)
                    .map(|i| fill.wrapping_add((i / 89) as u8))
                    .collect();
                let done = mode::write_ahead(map, local, offset as u64, &data);
                p.unflushed.push((offset, len));
                self.out.ahead_writes += 1;
                (
                    HostOp::Write { offset, data },
                    format!("write {offset}+{len}"),
                    done,
                )
            };
            if let Err(e) = done {
                self.violation = Some(self.fail("a (durability)", format!("writing ahead: {e}")));
                return;
            }
            let sub = self.next_sub(highest);
            self.history.insert((highest, sub), op);
            self.event(format!("host {what} ahead after seq {highest}"));
            return;
        }
        let (seq, op, what) = if pick < 0.08 {
            let seq = p.sender.submit(OpKind::Flush, 0, now);
            let f = Frame::Flush(Flush { seq, epoch });
            p.appender
                .push(Record::control(OpKind::Flush, seq, epoch, 0, 0, &f))
                .expect("a new seq");
            (seq, HostOp::Flush, "flush".to_string())
        } else if pick < 0.18 {
            let len = self.rng.gen_range(1..=16) * 512;
            let offset = self.rng.gen_range(0..(VOLUME - len) / 512) * 512;
            let seq = p.sender.submit(OpKind::Trim, 0, now);
            if let Some(map) = &p.map {
                mode::overwritten(map, offset as u64, len as u64).expect("the map in memory");
            }
            let f = Frame::Trim(Trim {
                seq,
                epoch,
                offset: offset as u64,
                length: len as u64,
            });
            p.appender
                .push(Record::control(
                    OpKind::Trim,
                    seq,
                    epoch,
                    offset as u64,
                    len as u64,
                    &f,
                ))
                .expect("a new seq");
            self.out.trims += 1;
            (
                seq,
                HostOp::Trim { offset, len },
                format!("trim {offset}+{len}"),
            )
        } else if pick < 0.22 {
            let seq = p.sender.submit(OpKind::Checkpoint, 0, now);
            let f = Frame::Checkpoint(Checkpoint {
                seq,
                epoch,
                kind: CheckpointKind::Manual as u8,
                time_us: (self.step + 1) * 1000,
                label: format!("cp-{seq}"),
            });
            p.appender
                .push(Record::control(OpKind::Checkpoint, seq, epoch, 0, 0, &f))
                .expect("a new seq");
            self.out.checkpoints += 1;
            (seq, HostOp::Checkpoint, "checkpoint".to_string())
        } else {
            let len = self.rng.gen_range(1..=64) * 512;
            let offset = self.rng.gen_range(0..(VOLUME - len) / 512) * 512;
            let fill: u8 = self.rng.gen();
            let data: Vec<u8> = if self.rng.gen_bool(0.1) {
                vec![0; len]
            } else {
                (0..len)
                    .map(|i| fill.wrapping_add((i / 97) as u8))
                    .collect()
            };
            let seq = p.sender.submit(OpKind::Write, len as u64, now);
            if let Some(map) = &p.map {
                mode::overwritten(map, offset as u64, len as u64).expect("the map in memory");
            }
            let bytes = Bytes::from(data.clone());
            p.jobs
                .extend(encode_jobs(seq, epoch, offset as u64, &bytes, CHUNK));
            self.out.writes += 1;
            (
                seq,
                HostOp::Write { offset, data },
                format!("write {offset}+{len}"),
            )
        };
        p.waiting.insert(seq, self.step);
        self.history.insert((seq, 0), op);
        self.event(format!("host {what} seq {seq}"));
    }

    fn primary_step(&mut self) -> Result<(), Violation> {
        let now = self.now();
        let vnow = self.vnow();
        let session = self.session;
        let link_up = self.link_down_until <= self.step && self.connected;
        let Some(p) = &mut self.primary else {
            return Ok(());
        };
        let mut notes: Vec<String> = Vec::new();
        // Encode workers finish in any order.
        let finish = if p.jobs.is_empty() {
            0
        } else {
            self.rng.gen_range(1..=p.jobs.len().min(4))
        };
        for _ in 0..finish {
            let i = self.rng.gen_range(0..p.jobs.len());
            let job = p.jobs.swap_remove(i);
            let rec = encode_one(&p.encode, job);
            if let Err(e) = p.appender.push(rec) {
                let detail = e.to_string();
                return Err(self.fail("c (order)", format!("appender: {detail}")));
            }
        }
        // The appender thread's step: append, one sync, local copy, answer.
        let step = match p.appender.step(&p.nvbuf, p.local.as_deref(), now) {
            Ok(s) => s,
            Err(e) => {
                let detail = e.to_string();
                return Err(self.fail("a (durability)", format!("appender: {detail}")));
            }
        };
        // A nvbuf full for too long: go ahead (as the appender thread does).
        if !step.blocked {
            p.full_since = None;
        } else {
            let since = *p.full_since.get_or_insert(self.step);
            let due = self
                .overflow_after
                .is_some_and(|after| self.step - since >= after);
            // A restoring primary stalls instead (`Primary::start`).
            if due && matches!(p.mode, Mode::Journal) && self.restore.is_none() {
                if let (Some(map), Some(local)) = (&p.map, &p.local) {
                    // Every record of every seq so far reaches the appender
                    // first; sync work still being read is void.
                    for job in std::mem::take(&mut p.jobs) {
                        let rec = encode_one(&p.encode, job);
                        if let Err(e) = p.appender.push(rec) {
                            let detail = e.to_string();
                            return Err(self.fail("c (order)", format!("appender: {detail}")));
                        }
                    }
                    p.batch.clear();
                    p.sync.abort();
                    let held = p.sender.progress();
                    let fresh = self.rng.gen::<u64>() | 1;
                    if let Err(e) = mode::fold(
                        &p.nvbuf,
                        map,
                        local,
                        &mut p.appender,
                        &mut p.sender,
                        &mut p.meta,
                        fresh,
                        now,
                    ) {
                        let detail = e.to_string();
                        return Err(self.fail("a (durability)", format!("fold: {detail}")));
                    }
                    p.mode = Mode::Ahead { since: now };
                    p.full_since = None;
                    self.out.folds += 1;
                    let line = format!(
                        "primary goes ahead: seqs {}..={} folded into the map ({} bytes marked)",
                        held.remote_stored + 1,
                        held.highest,
                        map.marked_bytes()
                    );
                    self.event(line);
                    // The remote must decide a resync: a new session makes it.
                    self.disconnect();
                    return Ok(());
                }
            }
        }
        // The sync thread: reserve a batch, wait for the local copy to
        // reach it, read and send each piece.
        if let (Some(map), Some(local)) = (&p.map, &p.local) {
            let active = self.connected
                && matches!(p.mode, Mode::Journal)
                && (p.sync.running() || p.sync.verifying());
            if active && p.batch.is_empty() {
                p.batch = sync::reserve_batch(&mut p.sync, &mut p.sender, map, u64::MAX, now);
                for (seq, work) in &p.batch {
                    self.history.insert((*seq, 0), HostOp::Sync);
                    notes.push(format!("sync reserves seq {seq}: {work:?}"));
                }
            }
            if let Some(first) = p.batch.first().map(|b| b.0) {
                if local.applied() >= first - 1 {
                    for (seq, work) in std::mem::take(&mut p.batch) {
                        match sync::prepare(seq, p.epoch, &work, local.disk().as_ref(), CHUNK) {
                            Ok((Prepared::Jobs(jobs), _)) => p.jobs.extend(jobs),
                            Ok((Prepared::Record(rec), digests)) => {
                                if let Some(d) = digests {
                                    p.sync.local_digests(seq, d);
                                }
                                if let Err(e) = p.appender.push(rec) {
                                    let detail = e.to_string();
                                    return Err(
                                        self.fail("c (order)", format!("appender: {detail}"))
                                    );
                                }
                            }
                            Err(e) => {
                                let detail = e.to_string();
                                return Err(self.fail(
                                    "g (resync)",
                                    format!("reading the local copy: {detail}"),
                                ));
                            }
                        }
                    }
                }
            }
        }
        if let Some(seq) = step.buffered {
            p.sender.on_buffered(seq, now);
        }
        if let Some(local) = &p.local {
            if let Err(e) = local.sync_due(now, LOCAL_SYNC, step.blocked) {
                let detail = e.to_string();
                return Err(self.fail("f (local copy)", format!("local sync: {detail}")));
            }
        }
        if p.sender.poll_timeout().is_some_and(|t| t <= now) {
            p.sender.handle_timeout(now);
        }
        if link_up {
            while let Some(seq) = p.sender.poll_send(now) {
                let records = match p.nvbuf.read_seq(seq) {
                    Ok(r) => r,
                    Err(NvbufError::NotFound { .. }) => {
                        notes.push(format!("seq {seq} to send is not in the nvbuf"));
                        continue;
                    }
                    Err(e) => panic!("seed {}: nvbuf read: {e}", self.seed),
                };
                for (_, payload) in records {
                    let _ = self.up.send(vnow, wrap_bytes(session, &payload));
                }
                p.sender.on_sent(seq, now);
            }
            while let Some(f) = p.sender.poll_transmit() {
                let _ = self.up.send(vnow, wrap(session, &f));
            }
        }
        // The sync engine learns what the replica stored.
        if let Some(map) = &p.map {
            if p.sync.running() {
                let stored = p.sender.progress().remote_stored;
                for e in p.sync.on_stored(stored, map, now) {
                    if let SyncEvent::SyncComplete { gen } = e {
                        let done = sync::on_complete(map, &mut p.meta)
                            .map_err(|e| e.to_string())
                            .and_then(|()| {
                                p.nvbuf
                                    .set_meta(&p.meta.encode())
                                    .map_err(|e| e.to_string())
                            });
                        if let Err(detail) = done {
                            return Err(
                                self.fail("g (resync)", format!("completing the sync: {detail}"))
                            );
                        }
                        self.out.syncs += 1;
                        notes.push(format!("sync towards {gen:016x} complete"));
                    }
                }
            }
        }
        // Answers: check (d) and record what the host now counts on.
        let mut answered = Vec::new();
        while let Some(c) = p.sender.poll_answer() {
            p.waiting.remove(&c.seq);
            answered.push(c);
        }
        // The nvbuf frees what the remote stored and the local copy synced.
        let done = release_point(p.sender.progress().remote_stored, p.local.as_deref());
        if done >= p.nvbuf.first_unreleased_seq() {
            p.nvbuf.release_through(done);
        }
        for c in answered {
            self.out.acked += 1;
            if c.trigger >= Trigger::Buffered {
                self.acked_durable = self.acked_durable.max(c.seq);
            }
            if c.trigger == Trigger::RemoteStored {
                self.acked_remote = self.acked_remote.max(c.seq);
                let synced = self.remote.as_ref().map_or(
                    self.remote_disks.as_ref().map_or(0, |d| d.replica_at),
                    |r| r.applier.synced(),
                );
                if synced < c.seq {
                    return Err(self.fail("d (true ack)", format!("seq {} answered at remote-stored while the replica is synced only to {synced}", c.seq)));
                }
            }
            self.event(format!("answer seq {} at {}", c.seq, c.trigger));
        }
        for n in notes {
            self.event(n);
        }
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), Violation> {
        let vnow = self.vnow();
        let now = self.now();
        let down = self.link_down_until > self.step;
        while let Some(d) = self.up.poll(vnow) {
            if down || !self.connected {
                continue;
            }
            let Some((session, f)) = unwrap_packet(&d.data) else {
                continue;
            };
            if session != self.session {
                continue;
            }
            let Some(r) = &mut self.remote else { continue };
            if let Inbound::Decode(w) = r.receiver.on_frame(f, now) {
                r.decoding.push(w);
            }
        }
        while let Some(d) = self.down.poll(vnow) {
            if down || !self.connected {
                continue;
            }
            let Some((session, f)) = unwrap_packet(&d.data) else {
                continue;
            };
            if session != self.session {
                continue;
            }
            let Some(p) = &mut self.primary else { continue };
            if let Frame::DigestResponse(d) = &f {
                let Some(map) = &p.map else { continue };
                for e in p.sync.on_digests(d.seq, &d.digests, map, now) {
                    match e {
                        SyncEvent::Mismatch { ranges, .. } => {
                            // Digests of a replica marked consistent at that
                            // seq must equal the local copy's at that seq.
                            if self.digests_consistent.get(&d.seq) == Some(&true) {
                                return Err(self.fail(
                                    "h (verify)",
                                    format!(
                                        "verify at seq {} found {ranges:?} different on a replica marked consistent",
                                        d.seq
                                    ),
                                ));
                            }
                        }
                        SyncEvent::VerifyComplete { .. } => self.out.verifies += 1,
                        SyncEvent::SyncComplete { .. } => {}
                    }
                }
                continue;
            }
            if let Err(e) = p.sender.on_frame(&f, now) {
                let detail = e.to_string();
                return Err(self.fail(
                    "b (prefix)",
                    format!("the primary refuses an ack: {detail}"),
                ));
            }
        }
        Ok(())
    }

    fn remote_step(&mut self) -> Result<(), Violation> {
        let faults = self.faults_allowed();
        let mut crash_mid_batch = false;
        let now = self.now();
        let vnow = self.vnow();
        let session = self.session;
        let link_up = self.link_down_until <= self.step && self.connected;
        let Some(r) = &mut self.remote else {
            return Ok(());
        };
        // Decode workers finish in any order.
        let finish = if r.decoding.is_empty() {
            0
        } else {
            self.rng.gen_range(1..=r.decoding.len().min(4))
        };
        for _ in 0..finish {
            let i = self.rng.gen_range(0..r.decoding.len());
            let w = r.decoding.swap_remove(i);
            let res = decode_chunk(&w.chunk, w.id, w.offset, Some(&self.key));
            if res.is_err() {
                self.out.nacks += 1;
            }
            r.receiver.on_decoded(&w, res);
        }
        // The apply thread: released operations through the applier.
        let mut applied_any = false;
        while let Some(op) = r.receiver.poll_apply() {
            let seq = op.seq();
            // (c), besides the applier's own refusal.
            if seq != r.applier.applied() + 1 {
                let applied = r.applier.applied();
                return Err(self.fail("c (order)", format!("released seq {seq} after {applied}")));
            }
            match r.applier.apply(&op) {
                Ok(Applied::Digests { seq, digests }) => {
                    let consistent = r.state.lock().expect("state").inconsistencies().is_empty();
                    self.digests_consistent.insert(seq, consistent);
                    r.receiver
                        .push_transmit(Frame::DigestResponse(DigestResponse { seq, digests }));
                }
                Ok(_) => {}
                Err(e) => {
                    let detail = e.to_string();
                    return Err(self.fail("c (order)", format!("applier: {detail}")));
                }
            }
            r.receiver.on_applied(&op);
            applied_any = true;
            // A machine crash after the undo journal saved (and synced)
            // what the batch overwrites, before the replica's sync.
            if faults && self.rng.gen_bool(0.0005) {
                crash_mid_batch = true;
                break;
            }
            // (b): the model applies the host's op for this seq.
            if seq <= self.expected_upto {
                // A replay after a machine crash re-applies what the
                // replica's bytes already hold.
            } else if seq != self.expected_upto + 1 {
                let upto = self.expected_upto;
                return Err(self.fail(
                    "b (prefix)",
                    format!("replica applied seq {seq}, the model is at {upto}"),
                ));
            } else {
                if !self.history.contains_key(&(seq, 0)) {
                    return Err(self.fail(
                        "b (prefix)",
                        format!("replica applied seq {seq}, which the host never issued"),
                    ));
                }
                // Writes made ahead after the previous seq come before it.
                for op in self
                    .history
                    .range((seq - 1, 1)..=(seq, 0))
                    .map(|(_, op)| op)
                {
                    apply_op(&mut self.expected, op);
                }
                self.expected_upto = seq;
            }
            let consistent = r.state.lock().expect("state").inconsistencies().is_empty();
            if matches!(op, dtu_proto::receiver::Apply::Checkpoint { .. }) {
                self.views
                    .entry(seq)
                    .or_insert(consistent && seq == self.expected_upto);
            }
            if consistent && seq >= self.expected_upto {
                let replica = r.replica.working_image();
                if replica != self.expected {
                    let i = replica
                        .iter()
                        .zip(&self.expected)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    return Err(self.fail(
                        "b (prefix)",
                        format!(
                            "after seq {seq} the replica, marked consistent, differs from the host's volume at byte {i}"
                        ),
                    ));
                }
            }
        }
        if crash_mid_batch {
            self.crash_remote(true);
            return Ok(());
        }
        // One sync per batch, as the apply thread does.
        if applied_any || self.step.is_multiple_of(4) {
            match r.applier.sync() {
                Ok(Some((seq, _))) => {
                    r.receiver.on_synced(seq);
                    // (b) as soon as a sync's end makes the replica consistent.
                    let consistent = r.state.lock().expect("state").inconsistencies().is_empty();
                    let image = r.replica.working_image();
                    if consistent && seq == self.expected_upto && image != self.expected {
                        let i = image
                            .iter()
                            .zip(&self.expected)
                            .position(|(a, b)| a != b)
                            .unwrap_or(0);
                        return Err(self.fail(
                            "b (prefix)",
                            format!(
                                "at seq {seq} the replica is marked consistent but differs from the host's volume at byte {i} (replica {:#04x}, expected {:#04x}, base {:#04x}, local copy {:?})",
                                image[i], self.expected[i], self.base[i],
                                self.primary.as_ref().and_then(|p| p.local_disk.as_ref()).map(|d| d.working_image()[i])
                            ),
                        ));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let detail = e.to_string();
                    return Err(self.fail("d (true ack)", format!("applier sync: {detail}")));
                }
            }
        }
        if self.step.is_multiple_of(STATE_SYNC_STEPS) {
            let _ = r.state.lock().expect("state").sync();
        }
        if r.receiver.poll_timeout().is_some_and(|t| t <= now) {
            r.receiver.handle_timeout(now);
        }
        while let Some(f) = r.receiver.poll_transmit() {
            if link_up {
                let _ = self.down.send(vnow, wrap(session, &f));
            }
        }
        Ok(())
    }
}

/// Runs one seed.
pub fn run(seed: u64, opts: Options) -> Result<Outcome, Violation> {
    World::new(seed, opts)?.run()
}

/// A short summary line.
pub fn summary(o: &Outcome) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "seed {}: {} steps, {} writes, {} trims, {} checkpoints, {} answers, {} primary crashes, {} remote crashes, {} outages, {} nacks, local copy {}, initial {}, {} folds, {} writes ahead, {} syncs, {} verifies, {} views checked, {} checkpoints dropped, {} rollbacks, {} restores ({} installs, {} refetched, {} reads checked), {} switchovers, {} failovers ({} bytes failed back, {} split brains resolved), trace {}",
        o.seed,
        o.steps,
        o.writes,
        o.trims,
        o.checkpoints,
        o.acked,
        o.primary_crashes,
        o.remote_crashes,
        o.outages,
        o.nacks,
        o.local_copy,
        o.initial,
        o.folds,
        o.ahead_writes,
        o.syncs,
        o.verifies,
        o.views_checked,
        o.checkpoints_dropped,
        o.rollbacks,
        o.restores,
        o.restore_installs,
        o.restore_refetches,
        o.restore_reads,
        o.switchovers,
        o.failovers,
        o.failback_bytes,
        o.split_brains,
        o.trace_hash
    );
    s
}
