//! Frames: the units that cross the link between the two DTUs.
//!
//! Every frame is a 16-byte header followed by a body:
//!
//! ```text
//! offset size field
//!      0    4 magic       b"DTU1"
//!      4    1 version     PROTOCOL_VERSION
//!      5    1 kind        1 Hello, 2 Write, 3 Flush, 4 Trim, 5 Checkpoint, 6 Ack,
//!                         7 Nack, 8 Heartbeat, 9 Goodbye, 10 ReadRequest, 11 ReadResponse
//!      6    2 reserved    zero
//!      8    4 body length bytes after the header
//!     12    4 header crc  crc32 of bytes 0..12
//! ```
//!
//! Integers are big-endian. The header checksum lets a reader reject garbage
//! before trusting the body length, and the body length is checked against a
//! configurable maximum ([`DEFAULT_MAX_FRAME`]) before a single byte of it is
//! buffered, so a hostile or corrupt peer cannot make a reader allocate more
//! than that. Every count and length inside a body is bounded at decode too
//! (chunk counts by [`MAX_CHUNKS_PER_WRITE`], plaintext lengths by
//! [`MAX_CHUNK`], reads by [`MAX_READ_LEN`], labels and messages by
//! [`MAX_LABEL`] and [`MAX_MESSAGE`]), and offset + length never overflows,
//! so no decoded frame can make a state machine allocate or compute beyond
//! those bounds. Write payloads carry their own checksum (see [`crate::codec`]).
//! Decoding arbitrary bytes returns a typed [`FrameError`], never panics, and a
//! frame that is not yet complete decodes to `Ok(None)` ("need more").
//!
//! The same encoded Write, Flush, Trim and Checkpoint frames are what the
//! primary keeps in its nvbuf, so a resend copies bytes and re-encodes nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::chunk::MAX_CHUNKS_PER_WRITE;
use crate::codec::{ChunkFlags, ChunkId, EncodedChunk, MAX_CHUNK};
use crate::generation::{Decision, Gen, Generations, HISTORY};
use crate::{Epoch, Seq, VolumeId, PROTOCOL_VERSION};

/// `b"DTU1"`.
pub const MAGIC: u32 = 0x4454_5531;
/// Bytes in every frame header.
pub const HEADER_LEN: usize = 16;
/// Largest frame body a reader accepts unless configured otherwise.
pub const DEFAULT_MAX_FRAME: usize = 4 << 20;
/// Longest checkpoint label, in bytes of UTF-8.
pub const MAX_LABEL: usize = 255;
/// Longest goodbye message, in bytes of UTF-8.
pub const MAX_MESSAGE: usize = 1024;
/// Longest read one [`ReadRequest`] may ask for: the most data whose
/// [`ReadResponse`] fits a frame of [`DEFAULT_MAX_FRAME`].
pub const MAX_READ_LEN: u32 = (DEFAULT_MAX_FRAME - READ_RESPONSE_FIXED) as u32;

/// Why a byte sequence is not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a dtu frame: magic {0:#010x}, expected {MAGIC:#010x}")]
    BadMagic(u32),
    #[error("frame uses protocol version {0}, this build speaks version {PROTOCOL_VERSION}")]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("frame body of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {kind} frame: {why}")]
    Malformed {
        kind: &'static str,
        why: &'static str,
    },
}

/// Which side of the mirror a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary = 1,
    Remote = 2,
}

/// Feature bits announced in [`Hello::features`].
pub mod features {
    /// Payloads are sealed with the volume key.
    pub const SEALING: u32 = 1;
    /// Payloads may be compressed.
    pub const COMPRESSION: u32 = 2;
    /// The remote serves read requests.
    pub const READS: u32 = 4;
}

/// First frame on a connection, sent by each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u8,
    pub role: Role,
    pub volume_id: VolumeId,
    pub volume_size: u64,
    pub block_size: u32,
    pub features: u32,
    pub epoch: Epoch,
    /// From the remote: the highest seq stored on the replica (0: none).
    /// From the primary: the last seq it carried over from earlier epochs
    /// (recovered from its nvbuf); its new writes start after it. The remote
    /// refuses a new epoch that would reuse seqs it already holds.
    pub stored_seq: Seq,
    /// From the primary: the highest seq it has assigned (0 from the
    /// remote). No seq above it can have reached the replica, which bounds
    /// the replay after the remote's machine crashed.
    pub highest_seq: Seq,
    /// [`crate::codec::Key::fingerprint`] of the volume key, 0 without one:
    /// the two sides must hold the same key (or both none).
    pub key_fingerprint: u64,
    /// See [`hello_flags`].
    pub flags: u32,
    /// This side's generations (see [`crate::generation`]).
    pub gens: Generations,
    /// From the primary: the remote generation its changed-block map is
    /// relative to (0: none).
    pub map_base: Gen,
    /// From the primary: the lowest seq it can still send; a remote that
    /// syncs from it continues its stream there.
    pub resume_from: Seq,
    /// From the remote: what the pair does now ([`DecisionCode`]; 0 from
    /// the primary).
    pub decision: u8,
    /// Bytes this side changed on its own: from the primary, what its
    /// changed-block map marks and its nvbuf holds; from the remote, the
    /// ranges a demoted
    /// primary's replica lists as its divergence. Split-brain policies
    /// compare them.
    pub changed_bytes: u64,
    /// When (Unix seconds) the primary this side speaks for became primary:
    /// from the primary, its own role's start (its first start or its
    /// promotion); from the remote, that of the demoted primary whose
    /// changes its replica lists (0: not known). The younger/older-primary
    /// split-brain policies compare them.
    pub primary_since: u64,
}

/// [`Decision`] as a byte in the remote's Hello.
pub struct DecisionCode;

impl DecisionCode {
    pub fn encode(d: &Decision) -> u8 {
        match d {
            Decision::Resume => 1,
            Decision::Resync {
                all: false,
                checksum: false,
            } => 2,
            Decision::Resync {
                all: false,
                checksum: true,
            } => 3,
            Decision::Resync {
                all: true,
                checksum: false,
            } => 4,
            Decision::Resync {
                all: true,
                checksum: true,
            } => 5,
            Decision::Adopt => 6,
            // Refusals travel as a Goodbye, never in a Hello.
            Decision::Refuse(_) => 0,
        }
    }

    pub fn decode(b: u8) -> Option<Decision> {
        Some(match b {
            1 => Decision::Resume,
            2 => Decision::Resync {
                all: false,
                checksum: false,
            },
            3 => Decision::Resync {
                all: false,
                checksum: true,
            },
            4 => Decision::Resync {
                all: true,
                checksum: false,
            },
            5 => Decision::Resync {
                all: true,
                checksum: true,
            },
            6 => Decision::Adopt,
            _ => return None,
        })
    }
}

/// Bits of [`Hello::flags`].
pub mod hello_flags {
    /// From the primary: answered writes were lost on its side (a damaged
    /// nvbuf whose loss the operator accepted), so the replica may lack
    /// writes the host was told are safe; the remote records itself as
    /// inconsistent until a resync or verify clears it.
    pub const LOST_WRITES: u32 = 1;
    /// From the remote: its replica is marked inconsistent.
    pub const INCONSISTENT: u32 = 2;
    /// From the primary: it has a local copy to sync from.
    pub const HAS_LOCAL: u32 = 4;
    /// From the primary: the operator's initial-sync choice
    /// ([`crate::generation::InitialSync::bits`]) in these two bits.
    pub const INITIAL_SHIFT: u32 = 3;
    pub const INITIAL_MASK: u32 = 3 << INITIAL_SHIFT;
    /// From the remote: [`super::Extents`] frames follow its Hello, the
    /// last with `last` set; the primary marks them before it resyncs.
    pub const EXTENTS_FOLLOW: u32 = 32;
    /// Every bit this version knows.
    pub const KNOWN: u32 = LOST_WRITES | INCONSISTENT | HAS_LOCAL | INITIAL_MASK | EXTENTS_FOLLOW;
}

/// One chunk of one mirrored write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub id: ChunkId,
    /// Chunks in this write (>= 1).
    pub count: u32,
    /// Volume offset of this chunk's first byte.
    pub offset: u64,
    pub chunk: EncodedChunk,
}

/// A barrier: the remote syncs the replica through this seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flush {
    pub seq: Seq,
    pub epoch: Epoch,
}

/// Discard a range of the volume (the replica reads it back as zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    pub seq: Seq,
    pub epoch: Epoch,
    pub offset: u64,
    pub length: u64,
}

/// A named point in the write stream the replica can be identified with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: Seq,
    pub epoch: Epoch,
    /// What moment of the host it marks ([`CheckpointKind`] as a byte).
    pub kind: u8,
    /// The primary's wall time, microseconds since the Unix epoch.
    pub time_us: u64,
    pub label: String,
}

/// What a checkpoint marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointKind {
    Manual = 0,
    Timer = 1,
    Shutdown = 2,
    Boot = 3,
    Install = 4,
    Change = 5,
}

impl CheckpointKind {
    pub const ALL: [CheckpointKind; 6] = [
        CheckpointKind::Manual,
        CheckpointKind::Timer,
        CheckpointKind::Shutdown,
        CheckpointKind::Boot,
        CheckpointKind::Install,
        CheckpointKind::Change,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CheckpointKind::Manual => "manual",
            CheckpointKind::Timer => "timer",
            CheckpointKind::Shutdown => "shutdown",
            CheckpointKind::Boot => "boot",
            CheckpointKind::Install => "install",
            CheckpointKind::Change => "change",
        }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        CheckpointKind::ALL.get(b as usize).copied()
    }
}

impl std::str::FromStr for CheckpointKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CheckpointKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("{s:?}: expected manual, timer, shutdown, boot, install or change")
            })
    }
}

/// A point in the stream where a generation changes hands on the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub seq: Seq,
    pub epoch: Epoch,
    pub kind: MarkerKind,
    /// The primary's generation the marker is about.
    pub gen: Gen,
}

/// What a [`Marker`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MarkerKind {
    /// A sync towards `gen` begins: the replica is inconsistent from here.
    SyncStart = 1,
    /// The sync towards `gen` is complete: the replica adopts `gen`.
    SyncDone = 2,
}

/// Largest range one [`DigestRequest`] covers.
pub const MAX_DIGEST_SPAN: u32 = 16 << 20;
/// Smallest and largest block a digest covers.
pub const MIN_DIGEST_BLOCK: u32 = 4096;
pub const MAX_DIGEST_BLOCK: u32 = 4 << 20;
/// Bytes of one block digest (BLAKE3 cut to 128 bits).
pub const DIGEST_LEN: usize = 16;

/// In the stream: the remote answers the digests of its replica's blocks in
/// this range as they are once every earlier seq is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestRequest {
    pub seq: Seq,
    pub epoch: Epoch,
    pub offset: u64,
    pub length: u32,
    /// Bytes per digest (a power of two; the last block may be shorter).
    pub block: u32,
}

impl DigestRequest {
    /// Digests the answer holds.
    pub fn blocks(&self) -> usize {
        self.length.div_ceil(self.block.max(1)) as usize
    }
}

/// The remote's answer to a [`DigestRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestResponse {
    pub seq: Seq,
    pub digests: Vec<[u8; DIGEST_LEN]>,
}

/// What an acknowledgement says the remote has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AckKind {
    /// Every chunk of every seq up to `upto` is in the remote DTU's memory.
    Received = 1,
    /// Every seq up to `upto` is written and synced on the replica.
    Stored = 2,
}

/// Cumulative acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub kind: AckKind,
    pub upto: Seq,
}

/// Why the remote asks for a chunk again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackReason {
    /// The payload's checksum did not match.
    Checksum = 1,
    /// The payload could not be decompressed or unsealed.
    Decode = 2,
}

/// Request to retransmit one seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack {
    pub seq: Seq,
    pub index: u32,
    pub reason: NackReason,
}

/// Liveness and RTT probe; a reply echoes the request's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender's clock, microseconds since an origin of its choosing.
    pub sent_at_us: u64,
    /// For a reply: the `sent_at_us` being echoed.
    pub echo_us: u64,
    pub reply: bool,
}

/// Why a peer closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoodbyeReason {
    Shutdown = 1,
    VolumeMismatch = 2,
    StaleEpoch = 3,
    VersionMismatch = 4,
    ProtocolError = 5,
    RoleMismatch = 6,
    /// The generations say the pair must not mirror (split brain,
    /// unrelated data, a remote that moved on).
    Refused = 7,
    /// A planned switchover: the primary stopped after the remote stored
    /// every record and takes the remote role; the remote is to promote.
    Handover = 8,
}

/// Last frame on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goodbye {
    pub reason: GoodbyeReason,
    pub message: String,
}

/// Read `length` bytes at `offset` from the replica once it has applied
/// every seq up to `after_seq` (so the reader sees its own writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    pub id: u64,
    pub offset: u64,
    pub length: u32,
    pub after_seq: Seq,
    /// A background copy (a restore's rebuild): the remote sends it after
    /// reads a host waits for.
    pub background: bool,
}

/// Outcome of a read request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    Ok = 0,
    OutOfRange = 1,
    IoError = 2,
}

/// Answer to a [`ReadRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResponse {
    pub id: u64,
    pub status: ReadStatus,
    pub data: Bytes,
}

/// Most ranges one [`Extents`] frame carries (16 bytes each).
pub const MAX_EXTENTS_PER_FRAME: usize = 4096;

/// From the remote, right after its Hello when that has
/// [`hello_flags::EXTENTS_FOLLOW`]: ranges of the volume the replica
/// changed that the primary must send again (a demoted primary's writes
/// that never reached the side promoted meanwhile). The primary marks them
/// in its changed-block map before the resync the decision starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extents {
    /// (offset, length) in bytes.
    pub ranges: Vec<(u64, u64)>,
    /// The last of them.
    pub last: bool,
}

/// Everything that crosses the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Write(Write),
    Flush(Flush),
    Trim(Trim),
    Checkpoint(Checkpoint),
    Ack(Ack),
    Nack(Nack),
    Heartbeat(Heartbeat),
    Goodbye(Goodbye),
    ReadRequest(ReadRequest),
    ReadResponse(ReadResponse),
    Marker(Marker),
    DigestRequest(DigestRequest),
    DigestResponse(DigestResponse),
    Extents(Extents),
    /// From the remote on the control stream (`dtu switchover` at the
    /// remote's site): the primary is asked to drain, hand its role over
    /// and become this site's remote. It has no body.
    HandoverRequest,
}

const HELLO_LEN: usize =
    1 + 1 + 16 + 8 + 4 + 4 + 4 + 8 + 8 + 8 + 4 + 8 * (1 + HISTORY) + 8 + 8 + 1 + 8 + 8;
const WRITE_FIXED: usize = 8 + 4 + 4 + 4 + 8 + 1 + 4 + 4 + 4;
const FLUSH_LEN: usize = 8 + 4;
const TRIM_LEN: usize = 8 + 4 + 8 + 8;
const CHECKPOINT_FIXED: usize = 8 + 4 + 1 + 8 + 2;
const MARKER_LEN: usize = 8 + 4 + 1 + 8;
const DIGEST_REQUEST_LEN: usize = 8 + 4 + 8 + 4 + 4;
const DIGEST_RESPONSE_FIXED: usize = 8 + 4;
const ACK_LEN: usize = 1 + 8;
const NACK_LEN: usize = 8 + 4 + 1;
const HEARTBEAT_LEN: usize = 8 + 8 + 1;
const GOODBYE_FIXED: usize = 1 + 2;
const READ_REQUEST_LEN: usize = 8 + 8 + 4 + 8 + 1;
const READ_RESPONSE_FIXED: usize = 8 + 1;
const EXTENTS_FIXED: usize = 4 + 1;
/// The highest frame kind code this version knows.
const LAST_KIND: u8 = 16;

impl Frame {
    fn kind_code(&self) -> u8 {
        match self {
            Frame::Hello(_) => 1,
            Frame::Write(_) => 2,
            Frame::Flush(_) => 3,
            Frame::Trim(_) => 4,
            Frame::Checkpoint(_) => 5,
            Frame::Ack(_) => 6,
            Frame::Nack(_) => 7,
            Frame::Heartbeat(_) => 8,
            Frame::Goodbye(_) => 9,
            Frame::ReadRequest(_) => 10,
            Frame::ReadResponse(_) => 11,
            Frame::Marker(_) => 12,
            Frame::DigestRequest(_) => 13,
            Frame::DigestResponse(_) => 14,
            Frame::Extents(_) => 15,
            Frame::HandoverRequest => 16,
        }
    }

    /// A short name for logs and errors.
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind_code())
    }

    fn body_len(&self) -> usize {
        match self {
            Frame::Hello(_) => HELLO_LEN,
            Frame::Write(w) => WRITE_FIXED + w.chunk.payload.len(),
            Frame::Flush(_) => FLUSH_LEN,
            Frame::Trim(_) => TRIM_LEN,
            Frame::Checkpoint(c) => CHECKPOINT_FIXED + clip(&c.label, MAX_LABEL).len(),
            Frame::Ack(_) => ACK_LEN,
            Frame::Nack(_) => NACK_LEN,
            Frame::Heartbeat(_) => HEARTBEAT_LEN,
            Frame::Goodbye(g) => GOODBYE_FIXED + clip(&g.message, MAX_MESSAGE).len(),
            Frame::ReadRequest(_) => READ_REQUEST_LEN,
            Frame::ReadResponse(r) => READ_RESPONSE_FIXED + r.data.len(),
            Frame::Marker(_) => MARKER_LEN,
            Frame::DigestRequest(_) => DIGEST_REQUEST_LEN,
            Frame::DigestResponse(r) => DIGEST_RESPONSE_FIXED + r.digests.len() * DIGEST_LEN,
            Frame::Extents(e) => EXTENTS_FIXED + 16 * e.ranges.len().min(MAX_EXTENTS_PER_FRAME),
            Frame::HandoverRequest => 0,
        }
    }

    /// Bytes this frame occupies on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// The seq a data-path frame carries (Write, Flush, Trim, Checkpoint).
    pub fn seq(&self) -> Option<Seq> {
        match self {
            Frame::Write(w) => Some(w.id.seq),
            Frame::Flush(f) => Some(f.seq),
            Frame::Trim(t) => Some(t.seq),
            Frame::Checkpoint(c) => Some(c.seq),
            Frame::Marker(m) => Some(m.seq),
            Frame::DigestRequest(d) => Some(d.seq),
            _ => None,
        }
    }

    /// Appends the encoded frame to `out`. Labels and messages longer than
    /// their maximum are cut at a character boundary.
    pub fn encode(&self, out: &mut BytesMut) {
        let body_len = self.body_len();
        out.reserve(HEADER_LEN + body_len);
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        header[4] = PROTOCOL_VERSION;
        header[5] = self.kind_code();
        header[8..12].copy_from_slice(&(body_len as u32).to_be_bytes());
        let crc = crc32fast::hash(&header[0..12]);
        header[12..16].copy_from_slice(&crc.to_be_bytes());
        out.put_slice(&header);
        let body_at = out.len();
        match self {
            Frame::Hello(h) => {
                out.put_u8(h.version);
                out.put_u8(h.role as u8);
                out.put_slice(&h.volume_id);
                out.put_u64(h.volume_size);
                out.put_u32(h.block_size);
                out.put_u32(h.features);
                out.put_u32(h.epoch);
                out.put_u64(h.stored_seq);
                out.put_u64(h.highest_seq);
                out.put_u64(h.key_fingerprint);
                out.put_u32(h.flags);
                out.put_u64(h.gens.current);
                for g in h.gens.history {
                    out.put_u64(g);
                }
                out.put_u64(h.map_base);
                out.put_u64(h.resume_from);
                out.put_u8(h.decision);
                out.put_u64(h.changed_bytes);
                out.put_u64(h.primary_since);
            }
            Frame::Write(w) => {
                out.put_u64(w.id.seq);
                out.put_u32(w.id.epoch);
                out.put_u32(w.id.index);
                out.put_u32(w.count);
                out.put_u64(w.offset);
                out.put_u8(w.chunk.flags.bits());
                out.put_u32(w.chunk.plain_len);
                out.put_u32(w.chunk.crc);
                out.put_u32(w.chunk.key_id);
                out.put_slice(&w.chunk.payload);
            }
            Frame::Flush(f) => {
                out.put_u64(f.seq);
                out.put_u32(f.epoch);
            }
            Frame::Trim(t) => {
                out.put_u64(t.seq);
                out.put_u32(t.epoch);
                out.put_u64(t.offset);
                out.put_u64(t.length);
            }
            Frame::Checkpoint(c) => {
                let label = clip(&c.label, MAX_LABEL);
                out.put_u64(c.seq);
                out.put_u32(c.epoch);
                out.put_u8(c.kind);
                out.put_u64(c.time_us);
                out.put_u16(label.len() as u16);
                out.put_slice(label.as_bytes());
            }
            Frame::Ack(a) => {
                out.put_u8(a.kind as u8);
                out.put_u64(a.upto);
            }
            Frame::Nack(n) => {
                out.put_u64(n.seq);
                out.put_u32(n.index);
                out.put_u8(n.reason as u8);
            }
            Frame::Heartbeat(h) => {
                out.put_u64(h.sent_at_us);
                out.put_u64(h.echo_us);
                out.put_u8(h.reply as u8);
            }
            Frame::Goodbye(g) => {
                let msg = clip(&g.message, MAX_MESSAGE);
                out.put_u8(g.reason as u8);
                out.put_u16(msg.len() as u16);
                out.put_slice(msg.as_bytes());
            }
            Frame::ReadRequest(r) => {
                out.put_u64(r.id);
                out.put_u64(r.offset);
                out.put_u32(r.length);
                out.put_u64(r.after_seq);
                out.put_u8(u8::from(r.background));
            }
            Frame::ReadResponse(r) => {
                out.put_u64(r.id);
                out.put_u8(r.status as u8);
                out.put_slice(&r.data);
            }
            Frame::Marker(m) => {
                out.put_u64(m.seq);
                out.put_u32(m.epoch);
                out.put_u8(m.kind as u8);
                out.put_u64(m.gen);
            }
            Frame::DigestRequest(d) => {
                out.put_u64(d.seq);
                out.put_u32(d.epoch);
                out.put_u64(d.offset);
                out.put_u32(d.length);
                out.put_u32(d.block);
            }
            Frame::DigestResponse(r) => {
                out.put_u64(r.seq);
                out.put_u32(r.digests.len() as u32);
                for d in &r.digests {
                    out.put_slice(d);
                }
            }
            Frame::Extents(e) => {
                let ranges = &e.ranges[..e.ranges.len().min(MAX_EXTENTS_PER_FRAME)];
                out.put_u32(ranges.len() as u32);
                for (off, len) in ranges {
                    out.put_u64(*off);
                    out.put_u64(*len);
                }
                out.put_u8(u8::from(e.last));
            }
            Frame::HandoverRequest => {}
        }
        // The header's length is what the peer reads: a body of another
        // length would shift every frame after it.
        assert_eq!(
            out.len() - body_at,
            body_len,
            "{} frame body length",
            self.kind_name()
        );
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out.freeze()
    }
}

/// Cuts `s` to at most `max` bytes without splitting a character.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn kind_name(code: u8) -> &'static str {
    match code {
        1 => "Hello",
        2 => "Write",
        3 => "Flush",
        4 => "Trim",
        5 => "Checkpoint",
        6 => "Ack",
        7 => "Nack",
        8 => "Heartbeat",
        9 => "Goodbye",
        10 => "ReadRequest",
        11 => "ReadResponse",
        12 => "Marker",
        13 => "DigestRequest",
        14 => "DigestResponse",
        15 => "Extents",
        16 => "HandoverRequest",
        _ => "unknown",
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub body_len: usize,
}

/// Validates the header at the start of `buf`; `Ok(None)` if fewer than
/// [`HEADER_LEN`] bytes are present.
pub fn decode_header(buf: &[u8], max_frame: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        // Reject a wrong magic as early as possible, even on a short read.
        let have = buf.len().min(4);
        if buf[..have] != MAGIC.to_be_bytes()[..have] {
            let mut m = [0u8; 4];
            m[..have].copy_from_slice(&buf[..have]);
            return Err(FrameError::BadMagic(u32::from_be_bytes(m)));
        }
        return Ok(None);
    }
    let magic = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let stored = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
    let computed = crc32fast::hash(&buf[0..12]);
    if stored != computed {
        return Err(FrameError::HeaderChecksum { stored, computed });
    }
    if buf[4] != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(buf[4]));
    }
    let kind = buf[5];
    if !(1..=LAST_KIND).contains(&kind) {
        return Err(FrameError::UnknownKind(kind));
    }
    if buf[6] != 0 || buf[7] != 0 {
        return Err(FrameError::Malformed {
            kind: kind_name(kind),
            why: "reserved header bytes are not zero",
        });
    }
    let body_len = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if body_len > max_frame {
        return Err(FrameError::TooLarge {
            len: body_len,
            max: max_frame,
        });
    }
    Ok(Some(Header { kind, body_len }))
}

/// Decodes one frame from the front of `buf`, removing its bytes. Returns
/// `Ok(None)` and leaves `buf` untouched when the frame is incomplete.
/// Payloads share `buf`'s memory rather than being copied.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, FrameError> {
    let Some(header) = decode_header(buf, max_frame)? else {
        return Ok(None);
    };
    if buf.len() < HEADER_LEN + header.body_len {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(header.body_len).freeze();
    decode_body(header.kind, body).map(Some)
}

/// Decodes one frame from the front of a slice; returns the frame and the
/// bytes it used. For callers without a `BytesMut` (fuzzers, nvbuf recovery).
pub fn decode_slice(buf: &[u8], max_frame: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(header) = decode_header(buf, max_frame)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + header.body_len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = Bytes::copy_from_slice(&buf[HEADER_LEN..total]);
    decode_body(header.kind, body).map(|f| Some((f, total)))
}

/// Reads the fixed-size fields of a body, failing with the frame's name
/// rather than panicking when the body is short.
struct Body {
    kind: &'static str,
    bytes: Bytes,
}

impl Body {
    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.bytes.remaining() < n {
            Err(FrameError::Malformed {
                kind: self.kind,
                why: "body is shorter than its fields",
            })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.bytes.get_u8())
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        self.need(2)?;
        Ok(self.bytes.get_u16())
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.bytes.get_u32())
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.bytes.get_u64())
    }
    fn take(&mut self, n: usize) -> Result<Bytes, FrameError> {
        self.need(n)?;
        Ok(self.bytes.split_to(n))
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }
    fn string(&mut self, len: usize) -> Result<String, FrameError> {
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| FrameError::Malformed {
            kind: self.kind,
            why: "text is not UTF-8",
        })
    }
    fn malformed(&self, why: &'static str) -> FrameError {
        FrameError::Malformed {
            kind: self.kind,
            why,
        }
    }
    /// Fixed-size frames must not carry trailing bytes: it would mean the
    /// peer and we disagree about the layout.
    fn done(self) -> Result<(), FrameError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("body is longer than its fields"))
        }
    }
}

fn decode_body(kind: u8, bytes: Bytes) -> Result<Frame, FrameError> {
    let mut b = Body {
        kind: kind_name(kind),
        bytes,
    };
    let frame = match kind {
        1 => {
            let version = b.u8()?;
            let role = match b.u8()? {
                1 => Role::Primary,
                2 => Role::Remote,
                _ => return Err(b.malformed("unknown role")),
            };
            let mut volume_id = [0u8; 16];
            volume_id.copy_from_slice(&b.take(16)?);
            let hello = Hello {
                version,
                role,
                volume_id,
                volume_size: b.u64()?,
                block_size: b.u32()?,
                features: b.u32()?,
                epoch: b.u32()?,
                stored_seq: b.u64()?,
                highest_seq: b.u64()?,
                key_fingerprint: b.u64()?,
                flags: b.u32()?,
                gens: {
                    let current = b.u64()?;
                    let mut history = [0; HISTORY];
                    for g in &mut history {
                        *g = b.u64()?;
                    }
                    Generations { current, history }
                },
                map_base: b.u64()?,
                resume_from: b.u64()?,
                decision: b.u8()?,
                changed_bytes: b.u64()?,
                primary_since: b.u64()?,
            };
            if hello.flags & !hello_flags::KNOWN != 0 {
                return Err(b.malformed("unknown hello flags"));
            }
            b.done()?;
            Frame::Hello(hello)
        }
        2 => {
            let seq = b.u64()?;
            let epoch = b.u32()?;
            let index = b.u32()?;
            let count = b.u32()?;
            let offset = b.u64()?;
            let flags = ChunkFlags::from_bits(b.u8()?).ok_or(b.malformed("unknown chunk flags"))?;
            let plain_len = b.u32()?;
            let crc = b.u32()?;
            let key_id = b.u32()?;
            if seq == 0 {
                return Err(b.malformed("seq 0 is never assigned"));
            }
            if count == 0 || index >= count {
                return Err(b.malformed("chunk index outside chunk count"));
            }
            if count > MAX_CHUNKS_PER_WRITE {
                return Err(b.malformed("more chunks than the largest write has"));
            }
            if plain_len as usize > MAX_CHUNK {
                return Err(b.malformed("chunk longer than the largest chunk"));
            }
            if offset.checked_add(plain_len.into()).is_none() {
                return Err(b.malformed("chunk ends past the largest offset"));
            }
            let payload = b.rest();
            if flags.contains(ChunkFlags::ZERO)
                && !flags.contains(ChunkFlags::SEALED)
                && !payload.is_empty()
            {
                return Err(b.malformed("zero-run chunk carries a payload"));
            }
            Frame::Write(Write {
                id: ChunkId { epoch, seq, index },
                count,
                offset,
                chunk: EncodedChunk {
                    flags,
                    plain_len,
                    crc,
                    key_id,
                    payload,
                },
            })
        }
        3 => {
            let f = Flush {
                seq: b.u64()?,
                epoch: b.u32()?,
            };
            b.done()?;
            Frame::Flush(f)
        }
        4 => {
            let t = Trim {
                seq: b.u64()?,
                epoch: b.u32()?,
                offset: b.u64()?,
                length: b.u64()?,
            };
            if t.offset.checked_add(t.length).is_none() {
                return Err(b.malformed("range ends past the largest offset"));
            }
            b.done()?;
            Frame::Trim(t)
        }
        5 => {
            let seq = b.u64()?;
            let epoch = b.u32()?;
            let kind = b.u8()?;
            if CheckpointKind::from_byte(kind).is_none() {
                return Err(b.malformed("unknown checkpoint kind"));
            }
            let time_us = b.u64()?;
            let len = b.u16()? as usize;
            if len > MAX_LABEL {
                return Err(b.malformed("label longer than 255 bytes"));
            }
            let label = b.string(len)?;
            if seq == 0 {
                return Err(b.malformed("seq 0 is never assigned"));
            }
            b.done()?;
            Frame::Checkpoint(Checkpoint {
                seq,
                epoch,
                kind,
                time_us,
                label,
            })
        }
        6 => {
            let kind = match b.u8()? {
                1 => AckKind::Received,
                2 => AckKind::Stored,
                _ => return Err(b.malformed("unknown ack kind")),
            };
            let a = Ack {
                kind,
                upto: b.u64()?,
            };
            b.done()?;
            Frame::Ack(a)
        }
        7 => {
            let seq = b.u64()?;
            let index = b.u32()?;
            let reason = match b.u8()? {
                1 => NackReason::Checksum,
                2 => NackReason::Decode,
                _ => return Err(b.malformed("unknown nack reason")),
            };
            b.done()?;
            Frame::Nack(Nack { seq, index, reason })
        }
        8 => {
            let sent_at_us = b.u64()?;
            let echo_us = b.u64()?;
            let reply = match b.u8()? {
                0 => false,
                1 => true,
                _ => return Err(b.malformed("reply flag is neither 0 nor 1")),
            };
            b.done()?;
            Frame::Heartbeat(Heartbeat {
                sent_at_us,
                echo_us,
                reply,
            })
        }
        9 => {
            let reason = match b.u8()? {
                1 => GoodbyeReason::Shutdown,
                2 => GoodbyeReason::VolumeMismatch,
                3 => GoodbyeReason::StaleEpoch,
                4 => GoodbyeReason::VersionMismatch,
                5 => GoodbyeReason::ProtocolError,
                6 => GoodbyeReason::RoleMismatch,
                7 => GoodbyeReason::Refused,
                8 => GoodbyeReason::Handover,
                _ => return Err(b.malformed("unknown goodbye reason")),
            };
            let len = b.u16()? as usize;
            if len > MAX_MESSAGE {
                return Err(b.malformed("message longer than 1024 bytes"));
            }
            let message = b.string(len)?;
            b.done()?;
            Frame::Goodbye(Goodbye { reason, message })
        }
        10 => {
            let r = ReadRequest {
                id: b.u64()?,
                offset: b.u64()?,
                length: b.u32()?,
                after_seq: b.u64()?,
                background: match b.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(b.malformed("background flag is neither 0 nor 1")),
                },
            };
            if r.length > MAX_READ_LEN {
                return Err(b.malformed("read longer than a response frame holds"));
            }
            if r.offset.checked_add(r.length.into()).is_none() {
                return Err(b.malformed("range ends past the largest offset"));
            }
            b.done()?;
            Frame::ReadRequest(r)
        }
        11 => {
            let id = b.u64()?;
            let status = match b.u8()? {
                0 => ReadStatus::Ok,
                1 => ReadStatus::OutOfRange,
                2 => ReadStatus::IoError,
                _ => return Err(b.malformed("unknown read status")),
            };
            Frame::ReadResponse(ReadResponse {
                id,
                status,
                data: b.rest(),
            })
        }
        12 => {
            let seq = b.u64()?;
            let epoch = b.u32()?;
            let kind = match b.u8()? {
                1 => MarkerKind::SyncStart,
                2 => MarkerKind::SyncDone,
                _ => return Err(b.malformed("unknown marker kind")),
            };
            let gen = b.u64()?;
            if seq == 0 {
                return Err(b.malformed("seq 0 is never assigned"));
            }
            b.done()?;
            Frame::Marker(Marker {
                seq,
                epoch,
                kind,
                gen,
            })
        }
        13 => {
            let d = DigestRequest {
                seq: b.u64()?,
                epoch: b.u32()?,
                offset: b.u64()?,
                length: b.u32()?,
                block: b.u32()?,
            };
            if d.seq == 0 {
                return Err(b.malformed("seq 0 is never assigned"));
            }
            if d.length == 0 || d.length > MAX_DIGEST_SPAN {
                return Err(b.malformed("digest range empty or larger than 16 MiB"));
            }
            if !d.block.is_power_of_two()
                || !(MIN_DIGEST_BLOCK..=MAX_DIGEST_BLOCK).contains(&d.block)
            {
                return Err(b.malformed("digest block not a power of two from 4 KiB to 4 MiB"));
            }
            if d.offset.checked_add(u64::from(d.length)).is_none() {
                return Err(b.malformed("digest range overflows"));
            }
            b.done()?;
            Frame::DigestRequest(d)
        }
        14 => {
            let seq = b.u64()?;
            let count = b.u32()? as usize;
            if count > (MAX_DIGEST_SPAN / MIN_DIGEST_BLOCK) as usize {
                return Err(b.malformed("more digests than a request can ask for"));
            }
            let raw = b.take(count * DIGEST_LEN)?;
            b.done()?;
            let digests = raw
                .chunks_exact(DIGEST_LEN)
                .map(|c| c.try_into().expect("chunks of DIGEST_LEN"))
                .collect();
            Frame::DigestResponse(DigestResponse { seq, digests })
        }
        15 => {
            let count = b.u32()? as usize;
            if count > MAX_EXTENTS_PER_FRAME {
                return Err(b.malformed("more ranges than one Extents frame carries"));
            }
            let mut ranges = Vec::with_capacity(count);
            for _ in 0..count {
                let (off, len) = (b.u64()?, b.u64()?);
                if len == 0 || off.checked_add(len).is_none() {
                    return Err(b.malformed("an empty or overflowing range"));
                }
                ranges.push((off, len));
            }
            let last = match b.u8()? {
                0 => false,
                1 => true,
                _ => return Err(b.malformed("last flag is neither 0 nor 1")),
            };
            b.done()?;
            Frame::Extents(Extents { ranges, last })
        }
        16 => {
            b.done()?;
            Frame::HandoverRequest
        }
        other => return Err(FrameError::UnknownKind(other)),
    };
    Ok(frame)
}

/// Reassembles frames from a byte stream (a QUIC stream, a file).
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameReader {
    pub fn new(max_frame: usize) -> Self {
        FrameReader {
            buf: BytesMut::with_capacity(64 << 10),
            max_frame,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        decode(&mut self.buf, self.max_frame)
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new(DEFAULT_MAX_FRAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_needs_more() {
        let f = Frame::Ack(Ack {
            kind: AckKind::Stored,
            upto: 7,
        });
        let bytes = f.to_bytes();
        for cut in 0..bytes.len() {
            let mut b = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode(&mut b, DEFAULT_MAX_FRAME), Ok(None), "cut at {cut}");
            assert_eq!(b.len(), cut, "an incomplete frame must not be consumed");
        }
        let mut b = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut b, DEFAULT_MAX_FRAME), Ok(Some(f)));
        assert!(b.is_empty());
    }

    #[test]
    fn oversize_body_is_refused_before_buffering() {
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        header[4] = PROTOCOL_VERSION;
        header[5] = 2;
        header[8..12].copy_from_slice(&(u32::MAX).to_be_bytes());
        let crc = crc32fast::hash(&header[0..12]);
        header[12..16].copy_from_slice(&crc.to_be_bytes());
        let mut b = BytesMut::from(&header[..]);
        assert_eq!(
            decode(&mut b, 1 << 20),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn wrong_magic_is_reported_on_first_bytes() {
        let mut b = BytesMut::from(&b"GET "[..]);
        assert!(matches!(
            decode(&mut b, DEFAULT_MAX_FRAME),
            Err(FrameError::BadMagic(_))
        ));
    }

    #[test]
    fn long_label_is_clipped_on_a_char_boundary() {
        let label = "é".repeat(200); // 400 bytes
        let f = Frame::Checkpoint(Checkpoint {
            seq: 1,
            epoch: 1,
            kind: 0,
            time_us: 0,
            label,
        });
        let mut b = BytesMut::new();
        f.encode(&mut b);
        let Some(Frame::Checkpoint(c)) = decode(&mut b, DEFAULT_MAX_FRAME).unwrap() else {
            panic!("not a checkpoint");
        };
        assert_eq!(c.label.len(), 254);
        assert!(c.label.chars().all(|ch| ch == 'é'));
    }
}
