//! Fuzzes the NBD server with arbitrary bytes as a client's stream, and the
//! pure NBD parsers over the same bytes (see `dtu::fuzzing::nbd_requests`
//! for the checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dtu::fuzzing::nbd_requests(data);
});
