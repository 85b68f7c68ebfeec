//! Decoder robustness: random and mutated bytes never panic the frame
//! decoder or the codec, and never make them allocate more than the declared
//! maximum. A counting global allocator in this test binary measures the
//! largest single allocation made while decoding.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use dtu_proto::codec::{decode_chunk, encode_chunk, EncodeOptions, Key, MAX_CHUNK};
use dtu_proto::frame::{decode, decode_slice, Frame, FrameError, Write};
use dtu_proto::ChunkId;
use proptest::prelude::*;

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    // SAFETY: forwards to the system allocator unchanged; only records sizes.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    // SAFETY: as above.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    // SAFETY: as above.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns the largest allocation it made on this thread.
fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(|l| l.get()))
}

const MAX: usize = 64 << 10;

fn valid_stream() -> Vec<u8> {
    let key = Key::from_bytes(&[3; 32]);
    let mut out = BytesMut::new();
    for seq in 1..6u64 {
        let plain: Vec<u8> = (0..5000).map(|i| (i * seq as usize) as u8).collect();
        let id = ChunkId {
            epoch: 1,
            seq,
            index: 0,
        };
        let chunk = encode_chunk(
            &plain,
            id,
            seq * 4096,
            &EncodeOptions {
                compress: seq % 2 == 0,
                key: (seq % 3 == 0).then_some(&key),
            },
        );
        Frame::Write(Write {
            id,
            count: 1,
            offset: seq * 4096,
            chunk,
        })
        .encode(&mut out);
    }
    out.to_vec()
}

/// Decodes everything in `bytes`, then tries the codec on each Write.
fn exercise(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    let key = Key::from_bytes(&[3; 32]);
    loop {
        match decode(&mut buf, MAX) {
            Ok(Some(Frame::Write(w))) => {
                let _ = decode_chunk(&w.chunk, w.id, w.offset, Some(&key));
                let _ = decode_chunk(&w.chunk, w.id, w.offset, None);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let _ = decode_slice(bytes, MAX);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_nor_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let ((), largest) = largest_alloc(|| exercise(&bytes));
        prop_assert!(largest <= MAX + bytes.len(), "allocated {largest} bytes");
    }

    #[test]
    fn mutated_frames_never_panic_nor_overallocate(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = valid_stream();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x | 1;
        }
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep);
        let ((), largest) = largest_alloc(|| exercise(&bytes));
        // Decompression and zero-runs may allocate up to one chunk.
        prop_assert!(largest <= MAX_CHUNK.max(MAX) + bytes.len(), "allocated {largest} bytes");
    }
}

#[test]
fn a_flipped_body_bit_is_caught_by_the_payload_checksum() {
    let stream = valid_stream();
    // Frame 1 is unsealed and uncompressed: flip a payload byte.
    let (first, used) = decode_slice(&stream, MAX).unwrap().unwrap();
    let Frame::Write(w) = first else { panic!() };
    let mut bytes = stream[..used].to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let (Frame::Write(bad), _) = decode_slice(&bytes, MAX).unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(bad.id, w.id);
    assert!(matches!(
        decode_chunk(&bad.chunk, bad.id, bad.offset, None),
        Err(dtu_proto::CodecError::Checksum { .. })
    ));
}

#[test]
fn a_flipped_header_bit_is_caught_by_the_header_checksum() {
    let mut stream = valid_stream();
    stream[9] ^= 0x01; // body length
    assert!(matches!(
        decode_slice(&stream, MAX),
        Err(FrameError::HeaderChecksum { .. })
    ));
}
