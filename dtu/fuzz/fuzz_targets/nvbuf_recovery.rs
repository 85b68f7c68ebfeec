//! Fuzzes nvbuf recovery with raw file bytes and with targeted damage to a
//! journal built from the input (see `dtu::fuzzing::nvbuf_recovery` for the
//! input layout and the checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dtu::fuzzing::nvbuf_recovery(data);
});
