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

// ---------------------------------------------------------------------------
// Bounds on the counts and lengths a peer controls.

use dtu_proto::chunk::{ChunkPlan, MAX_CHUNKS_PER_WRITE, MAX_WRITE_BYTES, MIN_CHUNK_SIZE};
use dtu_proto::codec::{ChunkFlags, EncodedChunk};
use dtu_proto::frame::{
    ReadRequest, ReadResponse, ReadStatus, Trim, DEFAULT_MAX_FRAME, MAX_READ_LEN,
};

fn write_frame(count: u32, index: u32, plain_len: u32, offset: u64) -> Frame {
    Frame::Write(Write {
        id: ChunkId {
            epoch: 1,
            seq: 1,
            index,
        },
        count,
        offset,
        chunk: EncodedChunk {
            flags: ChunkFlags::empty(),
            plain_len,
            crc: 0,
            key_id: 0,
            payload: bytes::Bytes::from_static(b"data"),
        },
    })
}

fn decode_one(f: &Frame) -> Result<Option<(Frame, usize)>, FrameError> {
    decode_slice(&f.to_bytes(), DEFAULT_MAX_FRAME)
}

fn is_malformed(r: Result<Option<(Frame, usize)>, FrameError>) -> bool {
    matches!(r, Err(FrameError::Malformed { .. }))
}

#[test]
fn chunk_count_is_bounded_by_the_largest_write() {
    assert_eq!(
        MAX_CHUNKS_PER_WRITE as usize,
        MAX_WRITE_BYTES / MIN_CHUNK_SIZE
    );
    // The largest write cut at the smallest chunk size has exactly that
    // many chunks, and its last chunk decodes.
    let plan = ChunkPlan::new(0, MAX_WRITE_BYTES, MIN_CHUNK_SIZE);
    assert_eq!(plan.count(), MAX_CHUNKS_PER_WRITE);
    let last = write_frame(plan.count(), plan.count() - 1, 4, 0);
    assert!(decode_one(&last).unwrap().is_some());
    // One more, or a count a hostile peer picks to make the remote
    // allocate a slot per chunk, is refused before anything is allocated.
    for count in [MAX_CHUNKS_PER_WRITE + 1, 1 << 24, u32::MAX] {
        let ((r, _), largest) = largest_alloc(|| {
            let r = decode_one(&write_frame(count, 0, 4, 0));
            (is_malformed(r), ())
        });
        assert!(r, "count {count} was accepted");
        assert!(
            largest < 4096,
            "allocated {largest} bytes for count {count}"
        );
    }
}

#[test]
fn chunk_lengths_and_ranges_are_bounded() {
    assert!(is_malformed(decode_one(&write_frame(
        1,
        0,
        MAX_CHUNK as u32 + 1,
        0
    ))));
    assert!(decode_one(&write_frame(1, 0, MAX_CHUNK as u32, 0))
        .unwrap()
        .is_some());
    assert!(is_malformed(decode_one(&write_frame(
        1,
        0,
        4,
        u64::MAX - 1
    ))));
    let trim = |offset, length| {
        Frame::Trim(Trim {
            seq: 1,
            epoch: 1,
            offset,
            length,
        })
    };
    assert!(is_malformed(decode_one(&trim(1, u64::MAX))));
    assert!(decode_one(&trim(0, u64::MAX)).unwrap().is_some());
}

#[test]
fn reads_are_bounded_by_what_one_response_frame_holds() {
    let read = |offset, length| {
        Frame::ReadRequest(ReadRequest {
            id: 1,
            offset,
            length,
            after_seq: 0,
            background: false,
        })
    };
    assert!(decode_one(&read(0, MAX_READ_LEN)).unwrap().is_some());
    assert!(is_malformed(decode_one(&read(0, MAX_READ_LEN + 1))));
    assert!(is_malformed(decode_one(&read(0, u32::MAX))));
    assert!(is_malformed(decode_one(&read(u64::MAX, 1))));
    // The largest read's answer fits a default frame.
    let answer = Frame::ReadResponse(ReadResponse {
        id: 1,
        status: ReadStatus::Ok,
        data: bytes::Bytes::from(vec![7u8; MAX_READ_LEN as usize]),
    });
    assert!(decode_one(&answer).unwrap().is_some());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Whatever counts, lengths and offsets a Write carries, a decoded one
    /// is within the bounds.
    #[test]
    fn decoded_writes_are_within_bounds(
        count in any::<u32>(),
        index in any::<u32>(),
        plain_len in any::<u32>(),
        offset in any::<u64>(),
    ) {
        if let Ok(Some((Frame::Write(w), _))) = decode_one(&write_frame(count, index, plain_len, offset)) {
            prop_assert!(w.count >= 1 && w.count <= MAX_CHUNKS_PER_WRITE);
            prop_assert!(w.id.index < w.count);
            prop_assert!(w.chunk.plain_len as usize <= MAX_CHUNK);
            prop_assert!(w.offset.checked_add(w.chunk.plain_len.into()).is_some());
        }
    }
}
