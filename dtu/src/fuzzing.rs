//! The checks the fuzz targets in `dtu/fuzz` run, kept in the library so
//! that the fuzzer and the CI replay of its corpus (`tests/fuzz_corpus.rs`)
//! run exactly the same code. One entry point per target:
//! [`nbd_requests`] feeds bytes to a live NBD connection as a client's
//! stream and runs the pure NBD parsers over them; [`nvbuf_recovery`]
//! recovers an nvbuf from fuzzed file bytes, raw or as targeted damage to a
//! journal built for the occasion; [`config_control`] parses config files
//! and control-socket lines, arbitrary or valid ones with fields replaced.
//! Every check panics on a violation, which is what the fuzzer reports.

mod config;
mod nbd;
mod nvbuf;

pub use config::{
    config_control, mode as config_control_mode, mutate, ConfigControlRun, CONTROL_TEMPLATE,
    PRIMARY_TEMPLATE, REMOTE_TEMPLATE,
};
pub use nbd::{nbd_requests, NbdSession, NBD_EXPORT_SIZE};
pub use nvbuf::{nvbuf_recovery, NVBUF_VOLUME};

use std::cell::Cell;
use std::sync::Once;

thread_local! {
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

/// Counts panics per thread, so a panic that tokio catches inside a request
/// task (the server never looks at its tasks' results) still fails the
/// check. The previous hook still runs: under libFuzzer it aborts.
pub(crate) fn panics_so_far() -> u64 {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICS.try_with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
    PANICS.with(Cell::get)
}
