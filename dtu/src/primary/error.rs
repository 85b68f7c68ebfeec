//! Why the primary refused an operation, could not start, or stopped
//! answering: one enum a storage stack matches on ([`PrimaryError`]), with
//! the cause kept as a typed source ([`StartError`], [`Halt`],
//! [`ReadUnavailable`]) rather than flattened into a message. Every waiter
//! of a failed pipeline gets the same error, so they are `Clone` and share
//! their sources behind `Arc`.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dtu_proto::frame::ReadStatus;
use dtu_proto::policy::PolicyError;
use dtu_proto::Seq;

use super::appender::AppendError;
use super::meta::MetaVersion;
use super::mode::FoldError;
use super::replay::ReplayError;
use crate::changemap::ChangeMapError;
use crate::identity::IdentityError;
use crate::nvbuf::NvbufError;
use crate::replica::ReplicaError;
use crate::transport::TransportError;

/// Why the primary refused or failed an operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PrimaryError {
    /// The request reaches past the end of the volume.
    #[error("range {offset}+{len} is outside the {size}-byte volume")]
    OutOfRange {
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The volume's size.
        size: u64,
    },
    /// One write carries more than the pipeline takes at once.
    #[error("a write of {len} bytes is larger than the largest accepted, {max} bytes")]
    WriteTooLarge {
        /// Bytes in the write.
        len: usize,
        /// The largest write accepted.
        max: usize,
    },
    /// The pipeline stopped and answers nothing more; the primary must be
    /// restarted (it recovers from its nvbuf).
    #[error("the primary has stopped accepting writes: {0}")]
    Failed(#[source] Halt),
    /// The primary is stopping.
    #[error("the primary is shutting down")]
    ShuttingDown,
    /// A read could not be served now; a later one may be.
    #[error("read not possible: {0}")]
    ReadUnavailable(#[source] ReadUnavailable),
    /// The local copy could not be read.
    #[error("local image: {0}")]
    Local(#[source] Arc<io::Error>),
    /// The primary did not start.
    #[error("cannot start the primary: {0}")]
    Start(#[from] StartError),
    /// The nvbuf stayed full and the overflow policy is `fail`.
    #[error(
        "the nvbuf has been full for {waited:?} and nvbuf.overflow = fail: writes are refused \
         until the remote frees space"
    )]
    NvbufFull {
        /// How long the write waited for space.
        waited: Duration,
    },
    /// The operation needs the journal, and the primary writes ahead.
    #[error("{0} needs the journal, and the primary is ahead (writing to its local copy and map) until the remote is resynced")]
    Ahead(&'static str),
    /// The operation needs a local copy and there is none.
    #[error("{0} needs a local copy (nbd.local) to compare or copy from")]
    NoLocalCopy(&'static str),
    /// Another operation of the same kind is running.
    #[error("{0}")]
    Busy(&'static str),
    /// The site is being demoted.
    #[error("this primary is being demoted: the volume takes no more writes here")]
    Demoting,
}

/// Why the pipeline stopped answering (every later operation gets
/// [`PrimaryError::Failed`] with it).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Halt {
    /// The appender could not make a record durable.
    #[error("the appender failed: {0}")]
    Appender(#[source] Arc<AppendError>),
    /// Writing ahead to the local copy and the changed-block map failed:
    /// the map can no longer say what the replica lacks.
    #[error("writing ahead: {0}")]
    Ahead(#[source] Arc<FoldError>),
    /// A sync could not read the local copy it copies from.
    #[error("sync: reading the local copy for seq {seq}: {source}")]
    SyncRead {
        /// The sync record being prepared.
        seq: Seq,
        /// What the read said.
        source: Arc<io::Error>,
    },
    /// The remote does not hold the volume a restore copies from.
    #[error(
        "the local copy is being restored from the remote, but the remote does not hold this \
         volume ({decision}): the restore cannot go on and the missing extents have no source. \
         Nothing more is answered; recover the old disk, or start over from the replica (dtu \
         promote on the remote)"
    )]
    RestoreWithoutSource {
        /// The remote's decision at connect.
        decision: String,
    },
    /// The nvbuf could not be written.
    #[error("{0}")]
    Nvbuf(#[source] Arc<NvbufError>),
    /// A pipeline thread is gone (it logged why).
    #[error("the {0} stopped")]
    Stopped(&'static str),
}

/// Why a read could not be served.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReadUnavailable {
    /// The local copy is behind the writes answered before the read.
    #[error("the local copy did not reach seq {seq} within {waited:?}")]
    LocalBehind {
        /// The seq the read must see.
        seq: Seq,
        /// How long the read waited.
        waited: Duration,
    },
    /// No connection to the remote within the read's time.
    #[error("the link to the remote is down")]
    LinkDown,
    /// The remote did not answer within the read's time.
    #[error("the remote did not answer in time")]
    TimedOut,
    /// The read's stream failed.
    #[error("the read stream failed: {0}")]
    Stream(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The remote answered, but not with the bytes.
    #[error("remote could not read {offset}+{length}: {status:?}")]
    Refused {
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        length: u32,
        /// The remote's answer.
        status: ReadStatus,
    },
    /// The remote closed the stream without an answer.
    #[error("remote closed the read stream")]
    Closed,
    /// A restore needs the remote's bytes and the remote does not hold the
    /// volume.
    #[error(
        "the remote does not hold this volume, and the local copy is not restored there: see \
         the decision in `dtu status`"
    )]
    NoSource,
}

/// Why the primary did not start.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The certificate or key could not be read.
    #[error("{0}")]
    Identity(#[source] Arc<IdentityError>),
    /// `identity.peer_fingerprint` is not a fingerprint.
    #[error("identity.peer_fingerprint: {0}")]
    PeerFingerprint(#[source] Arc<IdentityError>),
    /// The chunk size is outside what the remote accepts.
    #[error("chunk size {size} is not between {min} and {max} bytes")]
    ChunkSize {
        /// The size asked for.
        size: usize,
        /// Smallest accepted.
        min: usize,
        /// Largest accepted.
        max: usize,
    },
    /// The acknowledgement policy is not valid.
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// The nvbuf could not be opened or written.
    #[error("{0}")]
    Nvbuf(#[source] Arc<NvbufError>),
    /// The nvbuf lost answered writes, and salvaging was not asked for.
    #[error(
        "{0}. The host was told these writes were safe and the replica may lack them. To keep \
         the intact prefix and go on, start with --accept-nvbuf-loss: the replica is then marked \
         inconsistent until a resync or verify proves it"
    )]
    NvbufLost(#[source] Arc<NvbufError>),
    /// The nvbuf's metadata is of an unknown version.
    #[error("{0}")]
    Meta(#[from] MetaVersion),
    /// The site was demoted: its volume is a remote's replica now.
    #[error(
        "this site was demoted (dtu demote): its volume is a remote's replica now, and {} keeps \
         only what the demotion found. Run it as a remote (roles.remote), or promote that remote \
         to make this site a primary again",
        nvbuf.display()
    )]
    Demoted {
        /// The demoted site's nvbuf.
        nvbuf: PathBuf,
    },
    /// The recovered records cannot be replayed.
    #[error("{0}")]
    Replay(#[source] Arc<ReplayError>),
    /// Recovery and the nvbuf disagree on where the stream ends.
    #[error("nvbuf recovery is inconsistent: records end at seq {records}, nvbuf expects seq {nvbuf} next")]
    Inconsistent {
        /// The seq after the last recovered record.
        records: Seq,
        /// The nvbuf's next seq.
        nvbuf: Seq,
    },
    /// The local copy could not be opened.
    #[error("{0}")]
    LocalCopy(#[source] Arc<ReplicaError>),
    /// The changed-block map could not be opened or read.
    #[error("{0}")]
    ChangeMap(#[source] Arc<ChangeMapError>),
    /// Picking up where a write-ahead stopped failed.
    #[error("{0}")]
    Fold(#[source] Arc<FoldError>),
    /// `nvbuf.overflow = bitmap` without a local copy.
    #[error(
        "nvbuf.overflow = bitmap needs a local copy (nbd.local) to write ahead to; without one, \
         choose stall or fail"
    )]
    BitmapWithoutLocal,
    /// The primary stopped while ahead and has no local copy now.
    #[error(
        "the primary stopped while ahead (writes in its local copy and map only) but has no \
         local copy now: start it with its nbd.local"
    )]
    AheadWithoutLocal,
    /// `--restore-from-remote` without a local copy.
    #[error("--restore-from-remote needs a local copy (nbd.local) to restore into")]
    RestoreWithoutLocal,
    /// A restore would overwrite changes only the lost disk held.
    #[error(
        "--restore-from-remote refused: the changed-block map marks {} that the remote does \
         not hold (they were only on the lost local disk); a restore would bring back older \
         data there. Recover the old disk, or start without --restore-from-remote and resync",
        crate::units::format_bytes(*marked)
    )]
    RestoreOverMarked {
        /// Bytes the map marks.
        marked: u64,
    },
    /// The restore's map file could not be read or written.
    #[error("restore map {}: {source}", path.display())]
    RestoreMap {
        /// The map file.
        path: PathBuf,
        /// What the file system said.
        source: Arc<io::Error>,
    },
    /// A thread or the async runtime could not be started.
    #[error("{what}: {source}")]
    Spawn {
        /// What was started.
        what: &'static str,
        /// What the system said.
        source: Arc<io::Error>,
    },
    /// The QUIC endpoint could not be made.
    #[error("{0}")]
    Transport(#[source] Arc<TransportError>),
}

impl From<NvbufError> for PrimaryError {
    fn from(e: NvbufError) -> Self {
        PrimaryError::Failed(Halt::Nvbuf(Arc::new(e)))
    }
}

impl From<Halt> for PrimaryError {
    fn from(h: Halt) -> Self {
        PrimaryError::Failed(h)
    }
}

impl StartError {
    pub(crate) fn spawn(what: &'static str) -> impl FnOnce(io::Error) -> StartError {
        move |e| StartError::Spawn {
            what,
            source: Arc::new(e),
        }
    }
}
