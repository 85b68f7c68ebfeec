//! The dtu wire protocol and the mirroring state machines, with no I/O.
//!
//! This crate owns everything about mirroring that needs no socket, thread,
//! file or clock: the frames that cross the link ([`frame`]), the payload codec
//! that checksums, compresses and seals each chunk ([`codec`], [`chunk`]), the
//! acknowledgement policy that decides when a host write is answered
//! ([`policy`]), the human units users type ([`units`]), and the two state machines: the primary's [`sender::Sender`]
//! and the remote's [`receiver::Receiver`]. Like quinn-proto, the state machines
//! take events plus an explicit `now` and hand back what to transmit, which
//! timers to arm and which host writes complete, so the same code runs in the
//! real DTU and, in virtual time, in the deterministic simulator.

#![forbid(unsafe_code)]

pub mod chunk;
pub mod codec;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod generation;
pub mod handshake;
pub mod histogram;
pub mod planted;
pub mod policy;
pub mod receiver;
pub mod rtt;
pub mod sender;
pub mod units;

/// The number of a mirrored operation, assigned at ingest, dense and
/// increasing. Seq 0 is never assigned: it means "nothing yet".
pub type Seq = u64;

/// Grows on each primary restart or promotion; part of every seal nonce.
pub type Epoch = u32;

/// Identifies the mirrored volume; both DTUs and the nvbuf must agree on it.
pub type VolumeId = [u8; 16];

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 2;

pub use chunk::{
    ChunkPlan, DEFAULT_CHUNK_SIZE, MAX_CHUNKS_PER_WRITE, MAX_CHUNK_SIZE, MAX_WRITE_BYTES,
    MIN_CHUNK_SIZE,
};
pub use codec::{decode_chunk, encode_chunk, ChunkId, CodecError, EncodedChunk, Key};
pub use frame::{Frame, FrameError, FrameReader, DEFAULT_MAX_FRAME};
pub use policy::{AckPolicy, Trigger};
pub use receiver::Receiver;
pub use sender::Sender;
