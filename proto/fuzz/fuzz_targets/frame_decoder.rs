//! Fuzzes the frame decoder and, for every Write it yields, the payload
//! codec (see `dtu_proto::fuzzing::frame_decoder` for the checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dtu_proto::fuzzing::frame_decoder(data);
});
