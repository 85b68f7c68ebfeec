//! The data transfer unit: everything a primary or a remote DTU does with
//! files, sockets, threads and clocks, around the sans-I/O protocol of
//! `dtu-proto`.
//!
//! One module per noun of the design: the [`nvbuf`] journal, the
//! [`primary`] and [`remote`] pipelines, the [`replica`], the QUIC
//! [`transport`] and peer [`identity`], the [`nbd`] front end, the
//! [`control`] socket, the [`status`] display and the [`metrics`] it is
//! built from, the [`config`] files and the [`cli`]; the remote's
//! checkpoint catalog and [`undo`] journal (as-of views and rollback); the
//! [`fence`] hook run before a promotion or demotion.

pub mod changemap;
pub mod cli;
pub mod config;
pub mod control;
pub mod digest;
pub mod fence;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod inproc;
pub mod metrics;
pub mod nbd;
pub mod nvbuf;
pub mod primary;
pub mod remote;
pub mod replica;
mod runtime;
pub mod status;
pub mod transport;
pub mod undo;
pub mod workers;

/// Human units (`1GiB`, `1.544Mbit`, `40ms`); they live in `dtu-proto`
/// (pure code, shared with the link emulator).
pub use dtu_proto::units;
