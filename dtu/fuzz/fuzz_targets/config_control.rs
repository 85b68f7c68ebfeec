//! Fuzzes config files and control-socket requests: arbitrary text and
//! valid ones with fields replaced (see `dtu::fuzzing::config_control` for
//! the input layout and the checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dtu::fuzzing::config_control(data);
});
