//! The data transfer unit (being assembled; see the final lib.rs).
pub mod config;
pub mod identity;
pub mod nbd;
pub mod nvbuf;
pub mod replica;
pub mod transport;
pub mod workers;

/// Human units, shared with the link emulator.
pub use dtu_sim::units;
