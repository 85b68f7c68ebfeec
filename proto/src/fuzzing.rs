//! The checks the fuzz targets run, in the library so that the fuzzer and
//! the CI replay of its corpus run exactly the same code.

use bytes::BytesMut;

use crate::codec::{decode_chunk, Key};
use crate::frame::{decode, Frame};

/// Decodes every frame in `data`; each must encode back to the bytes it came
/// from, and each Write's payload goes through the codec with and without a
/// key. Returns how many frames decoded. Panics on any violation.
pub fn frame_decoder(data: &[u8]) -> usize {
    let key = Key::from_bytes(&[3; 32]);
    let mut buf = BytesMut::from(data);
    let mut at = 0;
    let mut frames = 0;
    while let Ok(Some(frame)) = decode(&mut buf, 1 << 20) {
        let used = data.len() - at - buf.len();
        assert_eq!(
            &frame.to_bytes()[..],
            &data[at..at + used],
            "re-encoding differs"
        );
        at += used;
        frames += 1;
        if let Frame::Write(w) = &frame {
            let _ = decode_chunk(&w.chunk, w.id, w.offset, Some(&key));
            let _ = decode_chunk(&w.chunk, w.id, w.offset, None);
        }
    }
    frames
}
