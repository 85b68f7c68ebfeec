//! The data transfer unit: everything a primary or a remote DTU does with
//! files, sockets, threads and clocks, around the sans-I/O protocol of
//! `dtu-proto`.
//!
//! # Embedding
//!
//! A storage stack starts a [`Primary`] where the host writes and a
//! [`Remote`] where the replica lives, each from its options
//! ([`PrimaryOptions`], [`RemoteOptions`], or a [`config`] file), with
//! peer [`identity`] certificates that pin each other. Every host write,
//! flush or trim returns a [`Pending`] that resolves to an [`Answer`] at the
//! [`Trigger`] the [`AckPolicy`] names; a remote applies to any [`Replica`]
//! ([`FileReplica`], [`MemReplica`], or the stack's own). Both sides report
//! a [`Status`]. Errors are enums to match on ([`PrimaryError`],
//! [`RemoteError`]). `dtu/examples/embed.rs` is a whole embedding.
//!
//! Depend on `dtu` with `default-features = false`: the default feature
//! `demo` adds `dtu demo`'s link emulator and host model.
//!
//! # Internals
//!
//! One module per noun of the design: the nvbuf journal, the primary and
//! remote pipelines, the replica, the QUIC transport, the NBD front end,
//! the control socket, the status and the metrics it is built from, the
//! CLI, the remote's checkpoint catalog and undo journal, the fence hook.
//! The workspace's simulator, benchmarks, fuzzers and tests drive those
//! components directly; the feature `internals` makes the modules public
//! for them. They are not a stable API.

#![cfg_attr(not(feature = "internals"), warn(missing_docs))]
// Without `internals`, parts that only the simulator and the benchmarks
// call are unreachable from the public API.
#![cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]

/// Declares modules that are public with the feature `internals` and
/// private without it.
macro_rules! internal_modules {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {$(
        $(#[$attr])*
        #[cfg(feature = "internals")]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(feature = "internals"))]
        mod $name;
    )*};
}

pub mod config;
pub mod identity;

internal_modules! {
    changemap,
    cli,
    control,
    digest,
    fence,
    fuzzing,
    #[cfg(feature = "demo")]
    inproc,
    metrics,
    nbd,
    nvbuf,
    primary,
    remote,
    replica,
    status,
    transport,
    undo,
    workers,
}
mod runtime;

pub use dtu_proto::generation::InitialSync;
pub use dtu_proto::{AckPolicy, Seq, Trigger, VolumeId};
pub use primary::{
    Answer, Halt, LinkState, MirrorOptions, Overflow, Pending, Primary, PrimaryError,
    PrimaryOptions, ReadUnavailable, StartError,
};
pub use remote::{
    AsOf, CheckpointInfo, HistoryError, Listen, Remote, RemoteError, RemoteOptions, UndoOptions,
};
pub use replica::{FileReplica, MemReplica, Replica, ReplicaError, Span};
pub use status::{
    ByTrigger, ConnectionState, LatencyStats, MirrorStatus, PrimaryStatus, Progress, QuicStatus,
    RemoteStatus, Status, SyncStatus, LATENCY_BUCKETS_S,
};
pub use transport::{
    Congestion, LinkTuning, INFLIGHT_CAP, INFLIGHT_FLOOR, MAX_RTT, UNKNOWN_RATE_BPS,
};
pub use undo::MAX_CHECKPOINTS;

/// Human units (`1GiB`, `1.544Mbit`, `40ms`); they live in `dtu-proto`
/// (pure code, shared with the link emulator).
pub use dtu_proto::units;

/// The `dtu` binary: parses the command line and runs the subcommand.
#[doc(hidden)]
pub fn cli_main() -> anyhow::Result<()> {
    cli::main()
}
