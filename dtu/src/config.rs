//! Configuration: the TOML files `dtu init` writes and `dtu primary` /
//! `dtu remote` read, with their defaults and their validation.
//!
//! Sizes, rates and durations are written the way people say them (`1GiB`,
//! `1.544Mbit`, `40ms`); relative paths are relative to the config file.
//! Every field has a default except the ones only the user can know (the
//! volume's identity, the peer's address and certificate fingerprint), and
//! every error names the file and the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dtu_proto::chunk::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use dtu_proto::{AckPolicy, Trigger, VolumeId};
use serde::{Deserialize, Serialize};

use crate::primary::MirrorOptions;
use crate::transport::MAX_RTT;
use crate::units::{self, UnitError};

/// Largest volume: 1 PiB, above the largest single block devices in use.
/// Offsets and lengths are added to the size in u64 arithmetic, so a bound
/// far below 2^64 also keeps those sums from overflowing.
pub const MAX_VOLUME_SIZE: u64 = 1 << 50;
/// Largest nvbuf: 1 TiB. It is preallocated and memory-mapped; more than a
/// terabyte of writes the remote has not stored is a misconfiguration.
pub const MAX_NVBUF_SIZE: u64 = 1 << 40;
/// Smallest block size: the sector size of real disks (512 B).
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size: the largest page sizes (64 KiB).
pub const MAX_BLOCK_SIZE: u32 = 64 << 10;
/// Most QUIC streams carrying writes; more lanes than this only add
/// reordering at the remote.
pub const MAX_LANES: usize = 64;
/// Most encode or decode workers; more threads than this is a typo on any
/// machine a DTU runs on.
pub const MAX_WORKERS: usize = 256;

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read: missing, not readable, or not UTF-8 text.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown, missing or of the
    /// wrong type.
    #[error("config {path} is not valid: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML parser's message, with the line and column.
        message: String,
    },
    /// A value cannot be used: out of bounds, in the wrong unit, an unknown
    /// name, or missing where this side needs it.
    #[error("config {path}: {field}: {message}")]
    Field {
        /// The config file.
        path: PathBuf,
        /// The key at fault, as `section.key`.
        field: &'static str,
        /// What is wrong with its value.
        message: String,
    },
}

/// The mirrored volume, identical on both sides.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeSection {
    /// 32 hex digits; `dtu init` picks a random one.
    pub id: String,
    /// Bytes in the volume, e.g. `"10GiB"`.
    pub size: String,
    /// `volume.block_size`: bytes per block, a power of two from 512 B to
    /// 64 KiB (default 4096).
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// File holding the 256-bit sealing key (64 hex digits). Without it,
    /// payloads are not sealed (QUIC still encrypts the link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

fn default_block_size() -> u32 {
    4096
}

/// This side's certificate and the peer's pinned fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// `identity.cert`: this side's certificate (PEM), as `dtu init` writes it.
    pub cert: PathBuf,
    /// `identity.key`: this side's private key (PEM), mode 0600.
    pub key: PathBuf,
    /// `sha256:` + 64 hex digits of the peer's certificate.
    pub peer_fingerprint: String,
}

/// The link as the user knows it; it sizes QUIC's windows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkSection {
    /// Primary: the remote's (or the link emulator's) UDP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Remote: the UDP address to listen on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The name in the remote's certificate.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Link rate, e.g. `"1.544Mbit"`, `"1Gbit"`.
    #[serde(default = "default_rate")]
    pub rate: String,
    /// Round-trip time, e.g. `"40ms"`.
    #[serde(default = "default_rtt")]
    pub rtt: String,
    /// `rate` (the default), `bbr`, `cubic` or `newreno`.
    #[serde(default = "default_congestion")]
    pub congestion: String,
    /// Parallel QUIC streams carrying writes.
    #[serde(default = "default_lanes")]
    pub lanes: usize,
}

fn default_server_name() -> String {
    "dtu-remote".into()
}
fn default_rate() -> String {
    "1Gbit".into()
}
fn default_rtt() -> String {
    "20ms".into()
}
fn default_congestion() -> String {
    "rate".into()
}
fn default_lanes() -> usize {
    4
}

impl Default for LinkSection {
    fn default() -> Self {
        LinkSection {
            remote: None,
            listen: None,
            server_name: default_server_name(),
            rate: default_rate(),
            rtt: default_rtt(),
            congestion: default_congestion(),
            lanes: default_lanes(),
        }
    }
}

/// The primary's non-volatile buffer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NvbufSection {
    /// `nvbuf.path`: the nvbuf file, preallocated and memory-mapped; no
    /// default.
    pub path: PathBuf,
    /// `nvbuf.size`: bytes of the nvbuf file, 4 MiB to 1 TiB (default 1 GiB).
    #[serde(default = "default_nvbuf_size")]
    pub size: String,
    /// The changed-block map (with a local copy); default: `<path>.map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<PathBuf>,
    /// Bytes one map bit stands for: a power of two, 4KiB to 1MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_granularity: Option<String>,
    /// stall | bitmap | fail: what happens when the nvbuf stays full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<String>,
    /// How long writers wait for space before `overflow` acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow_after: Option<String>,
}

/// Initial sync, resync and verify.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// full | checksum | assume-in-sync, for a replica never synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    /// Compare digests before copying on every resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<bool>,
    /// Cap on the sync's pace, e.g. "50MiB" per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_max: Option<String>,
    /// Verify the whole volume this often, e.g. "7d".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_every: Option<String>,
}

/// Checkpoints the primary takes by itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Take a `timer` checkpoint this often, e.g. `"15min"`; none without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
}

fn checkpoint_is_default(s: &CheckpointSection) -> bool {
    *s == CheckpointSection::default()
}

/// Shortest `checkpoint.every`: each checkpoint begins an undo era, and
/// the catalog holds at most [`MAX_CHECKPOINTS`](crate::MAX_CHECKPOINTS).
pub const MIN_CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// Longest `checkpoint.every` (a year).
pub const MAX_CHECKPOINT_EVERY: Duration = Duration::from_secs(366 * 24 * 3600);

fn default_nvbuf_size() -> String {
    "1GiB".into()
}

/// Worker pools and the payload codec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Encode (primary) or decode (remote) workers; 0 = one per core.
    #[serde(default)]
    pub workers: usize,
    /// `pipeline.chunk_size`: writes are cut into chunks of this many bytes,
    /// encoded in parallel; 4 KiB to 1 MiB (default 64 KiB).
    #[serde(default = "default_chunk")]
    pub chunk_size: String,
    /// `pipeline.compress`: compress chunks with snap, kept only where it
    /// saves at least 1/8 (default true).
    #[serde(default = "default_true")]
    pub compress: bool,
}

fn default_chunk() -> String {
    "64KiB".into()
}
fn default_true() -> bool {
    true
}

impl Default for PipelineSection {
    fn default() -> Self {
        PipelineSection {
            workers: 0,
            chunk_size: default_chunk(),
            compress: true,
        }
    }
}

/// When the host is answered (see DESIGN.md, "Acknowledgement triggers").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// received | buffered | sent | remote-received | remote-stored
    #[serde(default = "default_trigger")]
    pub trigger: String,
    /// `policy.delay`: how long the answer is held after the trigger, up to
    /// 60 s (default 0 ms).
    #[serde(default = "default_zero")]
    pub delay: String,
    /// `policy.spoofing`: allow answers before `remote-stored`; `false`
    /// makes every write wait for `remote-stored` (default true).
    #[serde(default = "default_true")]
    pub spoofing: bool,
    /// Spoof only while the host's dirty % is at or above this.
    #[serde(default = "default_threshold")]
    pub dirty_threshold: f64,
}

fn default_trigger() -> String {
    "buffered".into()
}
fn default_zero() -> String {
    "0ms".into()
}
fn default_threshold() -> f64 {
    75.0
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            trigger: default_trigger(),
            delay: default_zero(),
            spoofing: true,
            dirty_threshold: default_threshold(),
        }
    }
}

/// NBD front end (primary) or read-only export (remote).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NbdSection {
    /// TCP address, e.g. `"127.0.0.1:10809"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// Unix socket path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<PathBuf>,
    /// `nbd.export`: the export name NBD clients ask for (default `dtu`).
    #[serde(default = "default_export")]
    pub export: String,
    /// Primary only: keep a local copy of the volume too (reads are served
    /// from it), like DRBD's local disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<PathBuf>,
    /// TLS on the TCP listener (NBD_OPT_STARTTLS): `off`, `on` (clients
    /// choose) or `require`. `off` is the default, fine for a listener on
    /// loopback or a unix socket only (which never speaks TLS).
    #[serde(default = "default_tls", skip_serializing_if = "is_default_tls")]
    pub tls: String,
    /// Directory with `ca-cert.pem`, `server-cert.pem`, `server-key.pem`
    /// (`dtu init` writes it); client certificates must chain to the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<PathBuf>,
}

fn default_tls() -> String {
    "off".into()
}
fn is_default_tls(s: &str) -> bool {
    s == "off"
}

fn default_export() -> String {
    "dtu".into()
}

impl Default for NbdSection {
    fn default() -> Self {
        NbdSection {
            tcp: None,
            unix: None,
            export: default_export(),
            local: None,
            tls: default_tls(),
            tls_dir: None,
        }
    }
}

/// Control socket and metrics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Unix socket for `dtu status`, `dtu policy`, `dtu dirty`.
    pub control: PathBuf,
    /// Prometheus text endpoint, e.g. `"127.0.0.1:9101"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// The remote's replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSection {
    /// `replica.path`: the replica, a file or a block device; no default.
    pub path: PathBuf,
    /// State file; defaults to the replica path plus `.state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PathBuf>,
}

/// The remote's point-in-time history: the checkpoint catalog and the
/// undo journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UndoSection {
    /// Keep the history (on by default).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Directory of the catalog and the journal; defaults to the replica
    /// path plus `.undo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// The oldest checkpoints go while the journal holds more, e.g. `"64GiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<String>,
    /// The oldest checkpoints go once older than this, e.g. `"720h"` (30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

impl Default for UndoSection {
    fn default() -> Self {
        UndoSection {
            enabled: true,
            dir: None,
            max_bytes: None,
            max_age: None,
        }
    }
}

fn undo_is_default(u: &UndoSection) -> bool {
    *u == UndoSection::default()
}

/// Smallest `undo.max_bytes`.
pub const MIN_UNDO_BYTES: u64 = 1 << 20;
/// Largest `undo.max_bytes` (1 PiB).
pub const MAX_UNDO_BYTES: u64 = 1 << 50;
/// Shortest `undo.max_age`.
pub const MIN_UNDO_AGE: Duration = Duration::from_secs(60);
/// Longest `undo.max_age` (ten years).
pub const MAX_UNDO_AGE: Duration = Duration::from_secs(3660 * 24 * 3600);

fn undo(
    c: &Ctx<'_>,
    u: &UndoSection,
    replica: &Path,
) -> Result<Option<crate::remote::UndoOptions>, ConfigError> {
    if !u.enabled {
        return Ok(None);
    }
    let mut o = crate::remote::UndoOptions::beside(replica);
    if let Some(d) = &u.dir {
        o.dir = c.resolve(d);
    }
    if let Some(b) = &u.max_bytes {
        o.max_bytes = units::parse_bytes_within(b, MIN_UNDO_BYTES, MAX_UNDO_BYTES)
            .map_err(|e| c.err("undo.max_bytes", e))?;
    }
    if let Some(a) = &u.max_age {
        o.max_age = Some(
            units::parse_duration_within(a, MIN_UNDO_AGE, MAX_UNDO_AGE)
                .map_err(|e| c.err("undo.max_age", e))?,
        );
    }
    Ok(Some(o))
}

/// This site's other role and the hooks around a role change (`dtu
/// promote`, `dtu demote`): the same section in a primary's and a remote's
/// config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolesSection {
    /// In a remote's config: the config this site runs as a primary once
    /// promoted (its `nbd.local` is this replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<PathBuf>,
    /// In a primary's config: the config this site runs as a remote once
    /// demoted (its `replica.path` is this primary's `nbd.local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<PathBuf>,
    /// A command run (by `sh -c`) before a promotion or demotion takes
    /// effect, with `DTU_ACTION` (promote or demote), `DTU_VOLUME` and
    /// `DTU_CONFIG` in its environment: a site's fencing (STONITH, a cloud
    /// API, a lease). A failure or a timeout aborts the change with its
    /// output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<String>,
    /// How long the fence command may run, e.g. `"30s"` (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_timeout: Option<String>,
    /// In a remote's config: what to do when the primary that connects and
    /// this replica both changed since the generation they share (split
    /// brain): `disconnect` (refuse, the default) or `discard-remote`
    /// (this replica's changes are dropped and it is resynced from the
    /// primary; the extents it loses are kept in a record beside its state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_brain: Option<String>,
}

fn roles_is_default(r: &RolesSection) -> bool {
    *r == RolesSection::default()
}

/// What the pair does on a split brain (`roles.split_brain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SplitBrainPolicy {
    /// Refuse to mirror; the operator decides.
    #[default]
    Disconnect,
    /// The remote's changes are discarded: it is resynced from the primary.
    DiscardRemote,
    /// The remote's changes are discarded if it changed no more bytes than
    /// the primary did since the split; otherwise refused.
    DiscardLeastChanges,
    /// The remote's changes are discarded if it changed nothing on its own;
    /// otherwise refused.
    DiscardZeroChanges,
    /// The changes of the side that became primary more recently are
    /// discarded: the remote's if its old primary is the younger,
    /// otherwise refused (a resync flows only from the primary).
    DiscardYoungerPrimary,
    /// The changes of the side that became primary first are discarded:
    /// the remote's if its old primary is the older, otherwise refused.
    DiscardOlderPrimary,
}

impl SplitBrainPolicy {
    /// Every policy, as the config spells it.
    pub const NAMES: &'static str = "disconnect, discard-remote, discard-least-changes, \
         discard-zero-changes, discard-younger-primary or discard-older-primary";

    /// The policy as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            SplitBrainPolicy::Disconnect => "disconnect",
            SplitBrainPolicy::DiscardRemote => "discard-remote",
            SplitBrainPolicy::DiscardLeastChanges => "discard-least-changes",
            SplitBrainPolicy::DiscardZeroChanges => "discard-zero-changes",
            SplitBrainPolicy::DiscardYoungerPrimary => "discard-younger-primary",
            SplitBrainPolicy::DiscardOlderPrimary => "discard-older-primary",
        }
    }
}

impl std::str::FromStr for SplitBrainPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disconnect" => Ok(SplitBrainPolicy::Disconnect),
            "discard-remote" => Ok(SplitBrainPolicy::DiscardRemote),
            "discard-least-changes" => Ok(SplitBrainPolicy::DiscardLeastChanges),
            "discard-zero-changes" => Ok(SplitBrainPolicy::DiscardZeroChanges),
            "discard-younger-primary" => Ok(SplitBrainPolicy::DiscardYoungerPrimary),
            "discard-older-primary" => Ok(SplitBrainPolicy::DiscardOlderPrimary),
            other => Err(format!("{other:?}: expected {}", SplitBrainPolicy::NAMES)),
        }
    }
}

/// Shortest `roles.fence_timeout`.
pub const MIN_FENCE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest `roles.fence_timeout` (an hour).
pub const MAX_FENCE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The `[roles]` section, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Roles {
    /// The config of this site's other role.
    pub other: Option<PathBuf>,
    /// `roles.fence`: the command run by `sh -c` before a promotion or
    /// demotion takes effect; `None` when unset or blank.
    pub fence: Option<String>,
    /// `roles.fence_timeout`: the fence command is killed and the change
    /// aborted after this, 1 s to 1 h (default 60 s).
    pub fence_timeout: Duration,
    /// `roles.split_brain`: what the remote does on a split brain (default
    /// `disconnect`; always the default in a primary's config).
    pub split_brain: SplitBrainPolicy,
}

fn roles(c: &Ctx<'_>, r: &RolesSection, is_primary: bool) -> Result<Roles, ConfigError> {
    let (other, wrong, field) = if is_primary {
        (&r.remote, &r.primary, "roles.primary")
    } else {
        (&r.primary, &r.remote, "roles.remote")
    };
    if wrong.is_some() {
        return Err(c.err(
            field,
            "names this site's own role; a primary's config names its `remote`, a remote's its `primary`",
        ));
    }
    if is_primary && r.split_brain.is_some() {
        return Err(c.err(
            "roles.split_brain",
            "is decided by the remote: set it in the remote's config",
        ));
    }
    Ok(Roles {
        other: other.as_deref().map(|p| c.resolve(p)),
        fence: r.fence.clone().filter(|f| !f.trim().is_empty()),
        fence_timeout: r
            .fence_timeout
            .as_deref()
            .map(|t| {
                units::parse_duration_within(t, MIN_FENCE_TIMEOUT, MAX_FENCE_TIMEOUT)
                    .map_err(|e| c.err("roles.fence_timeout", e))
            })
            .transpose()?
            .unwrap_or(Duration::from_secs(60)),
        split_brain: r
            .split_brain
            .as_deref()
            .map(|s| s.parse().map_err(|e| c.err("roles.split_brain", e)))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// `primary.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrimaryFile {
    /// `[volume]`: the mirrored volume, the same as in the remote's config.
    pub volume: VolumeSection,
    /// `[identity]`: this side's certificate and key, the remote's fingerprint.
    pub identity: IdentitySection,
    /// `[link]`: the remote's address and the link's rate, RTT and
    /// congestion control.
    pub link: LinkSection,
    /// `[nvbuf]`: the non-volatile buffer and what happens when it is full.
    pub nvbuf: NvbufSection,
    /// `[pipeline]`: encode workers, chunk size, compression (optional).
    #[serde(default)]
    pub pipeline: PipelineSection,
    /// `[policy]`: when the host is answered (default: at `buffered`).
    #[serde(default)]
    pub policy: PolicySection,
    /// `[nbd]`: the NBD front end the host uses, and the local copy.
    #[serde(default)]
    pub nbd: NbdSection,
    /// `[sync]`: initial sync, resync and verify (optional).
    #[serde(default, skip_serializing_if = "sync_is_default")]
    pub sync: SyncSection,
    /// `[checkpoint]`: timer checkpoints (default: none).
    #[serde(default, skip_serializing_if = "checkpoint_is_default")]
    pub checkpoint: CheckpointSection,
    /// `[admin]`: the control socket and the metrics endpoint.
    pub admin: AdminSection,
    /// `[roles]`: the config this site runs once demoted, and the fence
    /// command (optional).
    #[serde(default, skip_serializing_if = "roles_is_default")]
    pub roles: RolesSection,
}

fn sync_is_default(s: &SyncSection) -> bool {
    *s == SyncSection::default()
}

/// `remote.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteFile {
    /// `[volume]`: the mirrored volume, the same as in the primary's config.
    pub volume: VolumeSection,
    /// `[identity]`: this side's certificate and key, the primary's fingerprint.
    pub identity: IdentitySection,
    /// `[link]`: the address to listen on and the link's rate, RTT and
    /// congestion control.
    pub link: LinkSection,
    /// `[replica]`: the replica and its state file.
    pub replica: ReplicaSection,
    /// `[pipeline]`: decode workers (optional).
    #[serde(default)]
    pub pipeline: PipelineSection,
    /// Read-only export of the replica.
    #[serde(default)]
    pub nbd: NbdSection,
    /// Checkpoints and the undo journal.
    #[serde(default, skip_serializing_if = "undo_is_default")]
    pub undo: UndoSection,
    /// `[admin]`: the control socket and the metrics endpoint.
    pub admin: AdminSection,
    /// `[roles]`: the config this site runs once promoted, the fence
    /// command and the split-brain policy (optional).
    #[serde(default, skip_serializing_if = "roles_is_default")]
    pub roles: RolesSection,
}

/// Congestion controller for QUIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CongestionChoice {
    /// `rate` (the default): paces at `link.rate`, rides through random
    /// loss, backs off when the round trip shows a queue building or a
    /// round loses more than 5 %; for a dedicated line whose rate is
    /// stated. With `link.rate = "unlimited"` it is `cubic`.
    Rate,
    /// `bbr`: paces by the measured bandwidth and RTT rather than by loss;
    /// the one to use on lossy links.
    Bbr,
    /// `cubic`: backs off on loss, grows back by a cubic curve.
    Cubic,
    /// `newreno`: the classic loss-based controller; halves its window on loss.
    NewReno,
}

/// A link section, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// `link.remote` (primary: where it connects) or `link.listen` (remote:
    /// where it listens), UDP.
    pub addr: SocketAddr,
    /// `link.server_name`: the name in the remote's certificate (default
    /// `dtu-remote`).
    pub server_name: String,
    /// `link.rate` in bits per second; 0 for `unlimited` (rate unknown).
    pub rate_bps: u64,
    /// `link.rtt`: the round-trip time, up to 10 s (default 20 ms).
    pub rtt: Duration,
    /// `link.congestion` (default `rate`).
    pub congestion: CongestionChoice,
    /// `link.lanes`: parallel QUIC streams carrying writes, 1 to 64
    /// (default 4).
    pub lanes: usize,
}

/// The volume, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// `volume.id`: both sides and the nvbuf must agree on it.
    pub id: VolumeId,
    /// `volume.size` in bytes: a multiple of `block_size`, up to 1 PiB.
    pub size: u64,
    /// `volume.block_size` in bytes: a power of two from 512 B to 64 KiB.
    pub block_size: u32,
    /// The 256-bit key read from the `volume.key` file; `None`: payloads
    /// are not sealed.
    pub key: Option<[u8; 32]>,
}

/// A pipeline section, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pipeline {
    /// Encode (primary) or decode (remote) workers; `pipeline.workers = 0`
    /// is resolved here to one per core.
    pub workers: usize,
    /// `pipeline.chunk_size` in bytes, 4 KiB to 1 MiB.
    pub chunk_size: usize,
    /// `pipeline.compress`: compress chunks with snap.
    pub compress: bool,
}

struct Ctx<'a> {
    path: &'a Path,
    dir: PathBuf,
}

impl Ctx<'_> {
    fn err(&self, field: &'static str, message: impl ToString) -> ConfigError {
        ConfigError::Field {
            path: self.path.to_path_buf(),
            field,
            message: message.to_string(),
        }
    }
    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
    fn addr(&self, field: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|_| {
            self.err(
                field,
                format!("{s:?} is not an address like 127.0.0.1:7000"),
            )
        })
    }
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn ctx(path: &Path) -> Ctx<'_> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ctx { path, dir }
}

/// Parses a volume id from 32 hex digits.
pub fn parse_volume_id(s: &str) -> Option<VolumeId> {
    let bytes = hex::decode(s.trim()).ok()?;
    bytes.try_into().ok()
}

/// Most bytes read from a key file: 64 hex digits and generous whitespace.
/// A config naming a huge file (or a device) is refused after this much.
const MAX_KEY_FILE: u64 = 4096;

/// Reads a 256-bit key file (64 hex digits, whitespace ignored).
pub fn read_key(path: &Path) -> Result<[u8; 32], String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(format!(
            "{} is longer than a key file ({MAX_KEY_FILE} bytes at most)",
            path.display()
        ));
    }
    let bytes = hex::decode(text.trim())
        .map_err(|_| format!("{} does not hold hex digits", path.display()))?;
    bytes.try_into().map_err(|_| {
        format!(
            "{} must hold exactly 64 hex digits (256 bits)",
            path.display()
        )
    })
}

fn volume(c: &Ctx<'_>, v: &VolumeSection) -> Result<Volume, ConfigError> {
    let id = parse_volume_id(&v.id).ok_or_else(|| c.err("volume.id", "must be 32 hex digits"))?;
    // The block size first: the size check below divides by it.
    if !v.block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&v.block_size)
    {
        return Err(c.err(
            "volume.block_size",
            format!(
                "{} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}",
                v.block_size
            ),
        ));
    }
    let size = volume_size(&v.size).map_err(|e| c.err("volume.size", e))?;
    if size % v.block_size as u64 != 0 {
        return Err(c.err(
            "volume.size",
            format!(
                "{size} bytes is not a multiple of the {}-byte block size",
                v.block_size
            ),
        ));
    }
    let key = match &v.key {
        Some(p) => Some(read_key(&c.resolve(p)).map_err(|e| c.err("volume.key", e))?),
        None => None,
    };
    Ok(Volume {
        id,
        size,
        block_size: v.block_size,
        key,
    })
}

fn link(
    c: &Ctx<'_>,
    l: &LinkSection,
    addr: &str,
    field: &'static str,
) -> Result<Link, ConfigError> {
    let rate_bps = link_rate(&l.rate).map_err(|e| c.err("link.rate", e))?;
    let rtt = link_rtt(&l.rtt).map_err(|e| c.err("link.rtt", e))?;
    let congestion = match l.congestion.as_str() {
        "rate" => CongestionChoice::Rate,
        "bbr" => CongestionChoice::Bbr,
        "cubic" => CongestionChoice::Cubic,
        "newreno" => CongestionChoice::NewReno,
        other => {
            return Err(c.err(
                "link.congestion",
                format!("{other:?}: expected rate, bbr, cubic or newreno"),
            ))
        }
    };
    if l.lanes == 0 || l.lanes > MAX_LANES {
        return Err(c.err(
            "link.lanes",
            format!("{} is not between 1 and {MAX_LANES}", l.lanes),
        ));
    }
    Ok(Link {
        addr: c.addr(field, addr)?,
        server_name: l.server_name.clone(),
        rate_bps,
        rtt,
        congestion,
        lanes: l.lanes,
    })
}

fn pipeline(c: &Ctx<'_>, p: &PipelineSection) -> Result<Pipeline, ConfigError> {
    let chunk_size =
        units::parse_bytes_within(&p.chunk_size, MIN_CHUNK_SIZE as u64, MAX_CHUNK_SIZE as u64)
            .map_err(|e| c.err("pipeline.chunk_size", e))? as usize;
    if p.workers > MAX_WORKERS {
        return Err(c.err(
            "pipeline.workers",
            format!("{} is more than {MAX_WORKERS}", p.workers),
        ));
    }
    let workers = if p.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        p.workers
    };
    Ok(Pipeline {
        workers,
        chunk_size,
        compress: p.compress,
    })
}

/// Longest `nvbuf.overflow_after`: past it a host's I/O would time out
/// long before the policy acts.
pub const MAX_OVERFLOW_AFTER: Duration = Duration::from_secs(600);
/// Shortest `sync.verify_every`.
pub const MIN_VERIFY_EVERY: Duration = Duration::from_secs(60);
/// Longest `sync.verify_every` (a year).
pub const MAX_VERIFY_EVERY: Duration = Duration::from_secs(366 * 24 * 3600);

fn mirror(c: &Ctx<'_>, n: &NvbufSection, s: &SyncSection) -> Result<MirrorOptions, ConfigError> {
    let mut m = MirrorOptions {
        map_path: n.map.as_deref().map(|p| c.resolve(p)),
        ..MirrorOptions::default()
    };
    if let Some(g) = &n.map_granularity {
        let g = units::parse_bytes_within(
            g,
            crate::changemap::MIN_GRANULARITY,
            crate::changemap::MAX_GRANULARITY,
        )
        .map_err(|e| c.err("nvbuf.map_granularity", e))?;
        if !g.is_power_of_two() {
            return Err(c.err("nvbuf.map_granularity", "must be a power of two"));
        }
        m.map_granularity = g;
    }
    if let Some(o) = &n.overflow {
        m.overflow = Some(o.parse().map_err(|e: String| c.err("nvbuf.overflow", e))?);
    }
    if let Some(d) = &n.overflow_after {
        m.overflow_after =
            units::parse_duration_within(d, Duration::from_millis(100), MAX_OVERFLOW_AFTER)
                .map_err(|e| c.err("nvbuf.overflow_after", e))?;
    }
    if let Some(i) = &s.initial {
        m.initial_sync = i.parse().map_err(|e: String| c.err("sync.initial", e))?;
    }
    m.sync_checksum = s.checksum.unwrap_or(false);
    if let Some(r) = &s.rate_max {
        m.sync_rate_max = Some(
            units::parse_bytes_within(r, 64 << 10, 1 << 40)
                .map_err(|e| c.err("sync.rate_max", e))?,
        );
    }
    if let Some(v) = &s.verify_every {
        m.verify_every = Some(
            units::parse_duration_within(v, MIN_VERIFY_EVERY, MAX_VERIFY_EVERY)
                .map_err(|e| c.err("sync.verify_every", e))?,
        );
    }
    Ok(m)
}

/// Parses a volume size, bounded by [`MAX_VOLUME_SIZE`].
pub fn volume_size(s: &str) -> Result<u64, UnitError> {
    units::parse_bytes_within(s, 1, MAX_VOLUME_SIZE)
}

/// Parses an nvbuf size: at least the nvbuf's own minimum, at most
/// [`MAX_NVBUF_SIZE`].
pub fn nvbuf_size(s: &str) -> Result<u64, UnitError> {
    units::parse_bytes_within(s, crate::nvbuf::format::MIN_SIZE, MAX_NVBUF_SIZE)
}

/// Parses a link rate (0 or `unlimited`: unknown), bounded by
/// [`units::MIN_RATE_BPS`] and [`units::MAX_RATE_BPS`].
pub fn link_rate(s: &str) -> Result<u64, UnitError> {
    units::parse_rate(s)
}

/// Parses a link round-trip time, bounded by [`MAX_RTT`].
pub fn link_rtt(s: &str) -> Result<Duration, UnitError> {
    units::parse_duration_within(s, Duration::ZERO, MAX_RTT)
}

/// Parses the delay after a trigger, bounded by [`dtu_proto::policy::MAX_DELAY`].
pub fn policy_delay(s: &str) -> Result<Duration, UnitError> {
    units::parse_duration_within(s, Duration::ZERO, dtu_proto::policy::MAX_DELAY)
}

/// Why a policy (from a config file, flags or the control socket) cannot
/// be used; each names the setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The trigger is not one of `received`, `buffered`, `sent`,
    /// `remote-received`, `remote-stored`.
    #[error("trigger: {0}")]
    Trigger(#[from] dtu_proto::policy::UnknownTrigger),
    /// The delay is not a duration, or is negative or longer than 60 s.
    #[error("delay: {0}")]
    Delay(UnitError),
    /// The dirty threshold is not a percentage from 0 to 100.
    #[error("dirty_threshold: {0}")]
    DirtyThreshold(#[from] dtu_proto::policy::PolicyError),
}

impl PolicyError {
    /// The config field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            PolicyError::Trigger(_) => "policy.trigger",
            PolicyError::Delay(_) => "policy.delay",
            PolicyError::DirtyThreshold(_) => "policy.dirty_threshold",
        }
    }

    /// The command-line flag that sets the field at fault.
    pub fn flag(&self) -> &'static str {
        match self {
            PolicyError::Trigger(_) => "--trigger",
            PolicyError::Delay(_) => "--delay",
            PolicyError::DirtyThreshold(_) => "--dirty-threshold",
        }
    }

    /// What is wrong, without the setting's name.
    pub fn detail(&self) -> String {
        match self {
            PolicyError::Trigger(e) => e.to_string(),
            PolicyError::Delay(e) => e.to_string(),
            PolicyError::DirtyThreshold(e) => e.to_string(),
        }
    }
}

/// Parses a policy section.
pub fn policy(p: &PolicySection) -> Result<AckPolicy, PolicyError> {
    let trigger: Trigger = p.trigger.parse()?;
    let delay = policy_delay(&p.delay).map_err(PolicyError::Delay)?;
    let policy = AckPolicy {
        trigger,
        delay,
        spoofing: p.spoofing,
        dirty_threshold: p.dirty_threshold,
    };
    policy.validate()?;
    Ok(policy)
}

/// The NBD listener's TLS, parsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NbdTlsConfig {
    /// `nbd.tls`: `off`, `on` or `require` (default `off`).
    pub mode: crate::nbd::tls::TlsMode,
    /// Set whenever `mode` is not `off`.
    pub dir: Option<PathBuf>,
}

fn nbd_tls(c: &Ctx<'_>, n: &NbdSection) -> Result<NbdTlsConfig, ConfigError> {
    let mode: crate::nbd::tls::TlsMode = n.tls.parse().map_err(|e| c.err("nbd.tls", e))?;
    let dir = n.tls_dir.as_deref().map(|p| c.resolve(p));
    if mode != crate::nbd::tls::TlsMode::Off && dir.is_none() {
        return Err(c.err(
            "nbd.tls_dir",
            format!("needed with nbd.tls = \"{mode}\" (`dtu init` writes one)"),
        ));
    }
    Ok(NbdTlsConfig { mode, dir })
}

/// Everything `dtu primary` needs, parsed and with absolute paths.
#[derive(Debug, Clone)]
pub struct PrimaryConfig {
    /// `[volume]`, parsed.
    pub volume: Volume,
    /// `identity.cert`: this side's certificate (PEM).
    pub cert: PathBuf,
    /// `identity.key`: this side's private key (PEM).
    pub key: PathBuf,
    /// `identity.peer_fingerprint`: `sha256:` and the hex digest of the
    /// peer's certificate, as written; parsed when the DTU starts.
    pub peer_fingerprint: String,
    /// `[link]`, parsed.
    pub link: Link,
    /// `nvbuf.path`: the nvbuf file.
    pub nvbuf_path: PathBuf,
    /// `nvbuf.size` in bytes, 4 MiB to 1 TiB (default 1 GiB).
    pub nvbuf_size: u64,
    /// `[pipeline]`, parsed.
    pub pipeline: Pipeline,
    /// `[policy]`: when the host is answered.
    pub policy: AckPolicy,
    /// `nbd.tcp`: the NBD front end's TCP address, if any.
    pub nbd_tcp: Option<SocketAddr>,
    /// `nbd.unix`: the NBD front end's unix socket, if any.
    pub nbd_unix: Option<PathBuf>,
    /// `nbd.export`: the export name (default `dtu`).
    pub export: String,
    /// `nbd.local`: the local copy of the volume; `None`: reads go to the
    /// remote.
    pub local: Option<PathBuf>,
    /// `nbd.tls` and `nbd.tls_dir`, parsed.
    pub nbd_tls: NbdTlsConfig,
    /// `admin.control`: the control socket.
    pub control: PathBuf,
    /// `admin.metrics`: the Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// The changed-block map, sync, overflow and verify.
    pub mirror: MirrorOptions,
    /// `checkpoint.every`: a `timer` checkpoint this often.
    pub checkpoint_every: Option<Duration>,
    /// `[roles]`: the remote config this site runs once demoted, fencing.
    pub roles: Roles,
}

/// Everything `dtu remote` needs, parsed and with absolute paths.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// `[volume]`, parsed.
    pub volume: Volume,
    /// `identity.cert`: this side's certificate (PEM).
    pub cert: PathBuf,
    /// `identity.key`: this side's private key (PEM).
    pub key: PathBuf,
    /// `identity.peer_fingerprint`: `sha256:` and the hex digest of the
    /// peer's certificate, as written; parsed when the DTU starts.
    pub peer_fingerprint: String,
    /// `[link]`, parsed.
    pub link: Link,
    /// `replica.path`: the replica, a file or a block device.
    pub replica: PathBuf,
    /// `replica.state`: the replica's state file (default `<replica.path>.state`).
    pub state: PathBuf,
    /// `[pipeline]`, parsed.
    pub pipeline: Pipeline,
    /// `nbd.tcp`: TCP address of the replica's read-only export, if any.
    pub nbd_tcp: Option<SocketAddr>,
    /// `nbd.unix`: unix socket of the replica's read-only export, if any.
    pub nbd_unix: Option<PathBuf>,
    /// `nbd.export`: the export name (default `dtu`).
    pub export: String,
    /// `nbd.tls` and `nbd.tls_dir`, parsed.
    pub nbd_tls: NbdTlsConfig,
    /// `admin.control`: the control socket.
    pub control: PathBuf,
    /// `admin.metrics`: the Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// `None` when `undo.enabled = false`.
    pub undo: Option<crate::remote::UndoOptions>,
    /// `[roles]`: the primary config this site runs once promoted, fencing,
    /// the split-brain policy.
    pub roles: Roles,
}

impl PrimaryConfig {
    /// Reads `primary.toml` at `path` and checks every field.
    pub fn load(path: &Path) -> Result<PrimaryConfig, ConfigError> {
        let f: PrimaryFile = read_toml(path)?;
        Self::from_file(path, &f)
    }

    /// Checks an already parsed file: relative paths are resolved against
    /// `path`'s directory, and errors name `path`.
    pub fn from_file(path: &Path, f: &PrimaryFile) -> Result<PrimaryConfig, ConfigError> {
        let c = ctx(path);
        let remote = f
            .link
            .remote
            .as_deref()
            .ok_or_else(|| c.err("link.remote", "the primary needs the remote's address"))?;
        let nvbuf_size = nvbuf_size(&f.nvbuf.size).map_err(|e| c.err("nvbuf.size", e))?;
        let mirror = mirror(&c, &f.nvbuf, &f.sync)?;
        let checkpoint_every = f
            .checkpoint
            .every
            .as_deref()
            .map(|e| {
                units::parse_duration_within(e, MIN_CHECKPOINT_EVERY, MAX_CHECKPOINT_EVERY)
                    .map_err(|e| c.err("checkpoint.every", e))
            })
            .transpose()?;
        Ok(PrimaryConfig {
            roles: roles(&c, &f.roles, true)?,
            mirror,
            checkpoint_every,
            volume: volume(&c, &f.volume)?,
            cert: c.resolve(&f.identity.cert),
            key: c.resolve(&f.identity.key),
            peer_fingerprint: f.identity.peer_fingerprint.clone(),
            link: link(&c, &f.link, remote, "link.remote")?,
            nvbuf_path: c.resolve(&f.nvbuf.path),
            nvbuf_size,
            pipeline: pipeline(&c, &f.pipeline)?,
            policy: policy(&f.policy).map_err(|e| c.err(e.field(), e.detail()))?,
            nbd_tcp: f
                .nbd
                .tcp
                .as_deref()
                .map(|a| c.addr("nbd.tcp", a))
                .transpose()?,
            nbd_unix: f.nbd.unix.as_deref().map(|p| c.resolve(p)),
            export: f.nbd.export.clone(),
            local: f.nbd.local.as_deref().map(|p| c.resolve(p)),
            nbd_tls: nbd_tls(&c, &f.nbd)?,
            control: c.resolve(&f.admin.control),
            metrics: f
                .admin
                .metrics
                .as_deref()
                .map(|a| c.addr("admin.metrics", a))
                .transpose()?,
        })
    }
}

impl RemoteConfig {
    /// Reads `remote.toml` at `path` and checks every field.
    pub fn load(path: &Path) -> Result<RemoteConfig, ConfigError> {
        let f: RemoteFile = read_toml(path)?;
        Self::from_file(path, &f)
    }

    /// Checks an already parsed file: relative paths are resolved against
    /// `path`'s directory, and errors name `path`.
    pub fn from_file(path: &Path, f: &RemoteFile) -> Result<RemoteConfig, ConfigError> {
        let c = ctx(path);
        let listen = f
            .link
            .listen
            .as_deref()
            .ok_or_else(|| c.err("link.listen", "the remote needs an address to listen on"))?;
        let replica = c.resolve(&f.replica.path);
        let state = match &f.replica.state {
            Some(p) => c.resolve(p),
            None => {
                let mut s = replica.clone().into_os_string();
                s.push(".state");
                PathBuf::from(s)
            }
        };
        let undo = undo(&c, &f.undo, &replica)?;
        Ok(RemoteConfig {
            roles: roles(&c, &f.roles, false)?,
            undo,
            volume: volume(&c, &f.volume)?,
            cert: c.resolve(&f.identity.cert),
            key: c.resolve(&f.identity.key),
            peer_fingerprint: f.identity.peer_fingerprint.clone(),
            link: link(&c, &f.link, listen, "link.listen")?,
            replica,
            state,
            pipeline: pipeline(&c, &f.pipeline)?,
            nbd_tcp: f
                .nbd
                .tcp
                .as_deref()
                .map(|a| c.addr("nbd.tcp", a))
                .transpose()?,
            nbd_unix: f.nbd.unix.as_deref().map(|p| c.resolve(p)),
            export: f.nbd.export.clone(),
            nbd_tls: nbd_tls(&c, &f.nbd)?,
            control: c.resolve(&f.admin.control),
            metrics: f
                .admin
                .metrics
                .as_deref()
                .map(|a| c.addr("admin.metrics", a))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_primary() -> PrimaryFile {
        PrimaryFile {
            volume: VolumeSection {
                id: "00112233445566778899aabbccddeeff".into(),
                size: "64MiB".into(),
                block_size: 4096,
                key: None,
            },
            identity: IdentitySection {
                cert: "primary.crt".into(),
                key: "primary.key".into(),
                peer_fingerprint: "sha256:00".into(),
            },
            link: LinkSection {
                remote: Some("127.0.0.1:7000".into()),
                ..LinkSection::default()
            },
            nvbuf: NvbufSection {
                path: "primary.nvbuf".into(),
                size: "64MiB".into(),
                map: None,
                map_granularity: None,
                overflow: None,
                overflow_after: None,
            },
            pipeline: PipelineSection::default(),
            policy: PolicySection::default(),
            nbd: NbdSection::default(),
            sync: SyncSection::default(),
            checkpoint: Default::default(),
            admin: AdminSection {
                control: "primary.ctl".into(),
                metrics: None,
            },
            roles: RolesSection::default(),
        }
    }

    const REMOTE_TOML: &str = r#"
[volume]
id = "00112233445566778899aabbccddeeff"
size = "64MiB"
[identity]
cert = "remote.crt"
key = "remote.key"
peer_fingerprint = "sha256:00"
[link]
listen = "127.0.0.1:7000"
[replica]
path = "replica.img"
[admin]
control = "remote.ctl"
"#;

    fn remote_with(undo: &str) -> Result<RemoteConfig, ConfigError> {
        let f: RemoteFile =
            toml::from_str(&format!("{REMOTE_TOML}{undo}")).map_err(|e| ConfigError::Parse {
                path: "remote.toml".into(),
                message: e.to_string(),
            })?;
        RemoteConfig::from_file(Path::new("/etc/dtu/remote.toml"), &f)
    }

    #[test]
    fn undo_is_on_by_default_beside_the_replica_and_bounded() {
        let u = remote_with("").unwrap().undo.unwrap();
        assert_eq!(u.dir, PathBuf::from("/etc/dtu/replica.img.undo"));
        assert_eq!(u.max_bytes, 64 << 30);
        assert_eq!(u.max_age, None);
        let u = remote_with("[undo]\ndir = \"hist\"\nmax_bytes = \"1GiB\"\nmax_age = \"720h\"\n")
            .unwrap()
            .undo
            .unwrap();
        assert_eq!(u.dir, PathBuf::from("/etc/dtu/hist"));
        assert_eq!(u.max_bytes, 1 << 30);
        assert_eq!(u.max_age, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(remote_with("[undo]\nenabled = false\n").unwrap().undo, None);
        for (bad, field) in [
            ("max_bytes = \"1KiB\"", "undo.max_bytes"),
            ("max_bytes = \"2PiB\"", "undo.max_bytes"),
            ("max_bytes = \"lots\"", "undo.max_bytes"),
            ("max_age = \"1s\"", "undo.max_age"),
            ("max_age = \"1000000h\"", "undo.max_age"),
        ] {
            let e = remote_with(&format!("[undo]\n{bad}\n")).unwrap_err();
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
        assert!(remote_with("[undo]\nmax_eras = 3\n").is_err());
    }

    #[test]
    fn round_trips_through_toml_and_resolves_paths() {
        let f = sample_primary();
        let text = toml::to_string(&f).unwrap();
        let back: PrimaryFile = toml::from_str(&text).unwrap();
        assert_eq!(back, f);
        let c = PrimaryConfig::from_file(Path::new("/etc/dtu/primary.toml"), &f).unwrap();
        assert_eq!(c.nvbuf_path, PathBuf::from("/etc/dtu/primary.nvbuf"));
        assert_eq!(c.volume.size, 64 << 20);
        assert_eq!(c.policy, AckPolicy::default());
        assert_eq!(c.link.rate_bps, 1_000_000_000);
    }

    #[test]
    fn errors_name_the_field() {
        let mut f = sample_primary();
        f.policy.trigger = "eventually".into();
        let e = PrimaryConfig::from_file(Path::new("p.toml"), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy") && e.contains("eventually"), "{e}");
        let mut f = sample_primary();
        f.volume.size = "1000".into();
        let e = PrimaryConfig::from_file(Path::new("p.toml"), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("volume.size"), "{e}");
        let e = toml::from_str::<PrimaryFile>("[volume]\nid='x'\nsize='1'\nbogus=1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    fn primary_err(f: &PrimaryFile) -> String {
        PrimaryConfig::from_file(Path::new("p.toml"), f)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn block_size_zero_or_odd_is_an_error_not_a_division_by_zero() {
        for bs in [0, 1, 3, 256, 4095, 6144, 131072, u32::MAX] {
            let mut f = sample_primary();
            f.volume.block_size = bs;
            let e = primary_err(&f);
            assert!(e.contains("volume.block_size"), "{bs}: {e}");
        }
    }

    #[test]
    fn absurd_numbers_are_errors_that_name_the_field() {
        type Edit = fn(&mut PrimaryFile);
        let cases: [(&str, Edit); 17] = [
            ("policy.delay", |f| f.policy.delay = "1e19s".into()),
            ("policy.delay", |f| f.policy.delay = "2h".into()),
            ("policy.delay", |f| f.policy.delay = "-1ms".into()),
            ("policy.delay", |f| f.policy.delay = "nan".into()),
            ("policy.dirty_threshold", |f| {
                f.policy.dirty_threshold = f64::NAN
            }),
            ("policy.dirty_threshold", |f| {
                f.policy.dirty_threshold = f64::INFINITY
            }),
            ("link.rtt", |f| f.link.rtt = "1e19s".into()),
            ("link.rtt", |f| f.link.rtt = "1h".into()),
            ("link.rate", |f| f.link.rate = "1e30".into()),
            ("link.rate", |f| f.link.rate = "-5M".into()),
            ("volume.size", |f| f.volume.size = "1e30".into()),
            ("volume.size", |f| f.volume.size = "1025TiB".into()),
            ("nvbuf.size", |f| f.nvbuf.size = "1e30".into()),
            ("nvbuf.size", |f| f.nvbuf.size = "4KiB".into()),
            ("pipeline.chunk_size", |f| {
                f.pipeline.chunk_size = "1e30".into()
            }),
            ("pipeline.workers", |f| f.pipeline.workers = 1 << 40),
            ("link.lanes", |f| f.link.lanes = usize::MAX),
        ];
        for (field, edit) in cases {
            let mut f = sample_primary();
            edit(&mut f);
            let e = primary_err(&f);
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn the_largest_accepted_values_are_accepted() {
        let mut f = sample_primary();
        f.policy.delay = units::format_duration(dtu_proto::policy::MAX_DELAY);
        f.link.rtt = units::format_duration(crate::transport::MAX_RTT);
        f.link.rate = "1Tbit".into();
        f.volume.size = "1024TiB".into();
        let c = PrimaryConfig::from_file(Path::new("p.toml"), &f).unwrap();
        assert_eq!(c.policy.delay, dtu_proto::policy::MAX_DELAY);
        assert_eq!(c.volume.size, MAX_VOLUME_SIZE);
    }

    #[test]
    fn nbd_tls_needs_a_directory_and_a_known_mode() {
        let mut f = sample_primary();
        let c = PrimaryConfig::from_file(Path::new("/etc/dtu/p.toml"), &f).unwrap();
        assert_eq!(c.nbd_tls, NbdTlsConfig::default());
        f.nbd.tls = "require".into();
        let e = PrimaryConfig::from_file(Path::new("p.toml"), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nbd.tls_dir"), "{e}");
        f.nbd.tls_dir = Some("nbd-tls".into());
        let c = PrimaryConfig::from_file(Path::new("/etc/dtu/p.toml"), &f).unwrap();
        assert_eq!(c.nbd_tls.mode, crate::nbd::tls::TlsMode::Require);
        assert_eq!(c.nbd_tls.dir, Some(PathBuf::from("/etc/dtu/nbd-tls")));
        f.nbd.tls = "maybe".into();
        let e = PrimaryConfig::from_file(Path::new("p.toml"), &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nbd.tls") && e.contains("maybe"), "{e}");
    }
}
