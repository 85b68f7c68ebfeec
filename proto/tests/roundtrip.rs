//! Round-trip property tests: every frame kind and the payload codec, with
//! and without compression and sealing.

use bytes::{Bytes, BytesMut};
use dtu_proto::chunk::{ChunkPlan, Joiner};
use dtu_proto::codec::{decode_chunk, encode_chunk, ChunkFlags, ChunkId, EncodeOptions, Key};
use dtu_proto::frame::*;
use dtu_proto::generation::Generations;
use dtu_proto::MAX_CHUNKS_PER_WRITE;
use proptest::prelude::*;

/// Chunk ids a decoder accepts: indexes below the most chunks a write has.
fn chunk_id() -> impl Strategy<Value = ChunkId> {
    (any::<u32>(), 1..u64::MAX, 0..MAX_CHUNKS_PER_WRITE).prop_map(|(epoch, seq, index)| ChunkId {
        epoch,
        seq,
        index,
    })
}

/// Data that is sometimes zero, sometimes compressible, sometimes noise.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0usize..70_000).prop_map(|n| vec![0u8; n]),
        (1usize..70_000, any::<u8>())
            .prop_map(|(n, b)| (0..n).map(|i| b.wrapping_add((i / 64) as u8)).collect()),
        proptest::collection::vec(any::<u8>(), 0..9000),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    let hello = (
        (
            any::<u8>(),
            prop_oneof![Just(Role::Primary), Just(Role::Remote)],
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
        ),
        (
            any::<u64>(),
            any::<u64>(),
            0..=dtu_proto::frame::hello_flags::KNOWN,
            any::<u64>(),
        ),
        (
            any::<u64>(),
            any::<[u64; 4]>(),
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (version, role, volume_id, volume_size, block_size, features, epoch, stored_seq),
                (highest_seq, key_fingerprint, flags, primary_since),
                (current, history, map_base, resume_from, decision, changed_bytes),
            )| {
                Frame::Hello(Hello {
                    version,
                    role,
                    volume_id,
                    volume_size,
                    block_size,
                    features,
                    epoch,
                    stored_seq,
                    highest_seq,
                    key_fingerprint,
                    flags,
                    gens: Generations { current, history },
                    map_base,
                    resume_from,
                    decision,
                    changed_bytes,
                    primary_since,
                })
            },
        );
    let write = (
        chunk_id(),
        1u32..64,
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..3000),
        prop::sample::select(vec![0u8, 1, 2, 3, 4, 6, 10, 11, 14]),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(mut id, count, offset, payload, flags, crc, key_id)| {
            id.index %= count;
            Frame::Write(Write {
                id,
                count,
                // A decoder refuses chunks ending past u64::MAX.
                offset: offset.min(u64::MAX - payload.len() as u64),
                chunk: dtu_proto::EncodedChunk {
                    flags: ChunkFlags::from_bits(flags).unwrap(),
                    plain_len: payload.len() as u32,
                    crc,
                    key_id,
                    payload: Bytes::from(payload),
                },
            })
        });
    prop_oneof![
        hello,
        write,
        (any::<u64>(), any::<u32>()).prop_map(|(seq, epoch)| Frame::Flush(Flush { seq, epoch })),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(seq, epoch, offset, length)| Frame::Trim(Trim {
            seq,
            epoch,
            offset,
            length: length.min(u64::MAX - offset)
        })),
        (1..u64::MAX, any::<u32>(), 0u8..6, any::<u64>(), "[a-z0-9 é-]{0,80}").prop_map(|(seq, epoch, kind, time_us, label)| Frame::Checkpoint(Checkpoint {
            seq,
            epoch,
            kind,
            time_us,
            label
        })),
        (1..u64::MAX, any::<u32>(), prop_oneof![Just(MarkerKind::SyncStart), Just(MarkerKind::SyncDone)], any::<u64>())
            .prop_map(|(seq, epoch, kind, gen)| Frame::Marker(Marker { seq, epoch, kind, gen })),
        (1..u64::MAX, any::<u32>(), any::<u64>(), 1..=MAX_DIGEST_SPAN, 12u32..=22)
            .prop_map(|(seq, epoch, offset, length, shift)| Frame::DigestRequest(DigestRequest {
                seq,
                epoch,
                offset: offset.min(u64::MAX - u64::from(length)),
                length,
                block: 1 << shift,
            })),
        (any::<u64>(), proptest::collection::vec(any::<[u8; 16]>(), 0..300))
            .prop_map(|(seq, digests)| Frame::DigestResponse(DigestResponse { seq, digests })),
        (proptest::collection::vec((0..u64::MAX / 2, 1..u64::MAX / 2), 0..100), any::<bool>())
            .prop_map(|(ranges, last)| Frame::Extents(Extents { ranges, last })),
        Just(Frame::HandoverRequest),
        (prop_oneof![Just(AckKind::Received), Just(AckKind::Stored)], any::<u64>())
            .prop_map(|(kind, upto)| Frame::Ack(Ack { kind, upto })),
        (any::<u64>(), any::<u32>(), prop_oneof![Just(NackReason::Checksum), Just(NackReason::Decode)])
            .prop_map(|(seq, index, reason)| Frame::Nack(Nack { seq, index, reason })),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(sent_at_us, echo_us, reply)| Frame::Heartbeat(Heartbeat {
            sent_at_us,
            echo_us,
            reply
        })),
        (
            prop_oneof![
                Just(GoodbyeReason::Shutdown),
                Just(GoodbyeReason::VolumeMismatch),
                Just(GoodbyeReason::StaleEpoch),
                Just(GoodbyeReason::VersionMismatch),
                Just(GoodbyeReason::ProtocolError),
                Just(GoodbyeReason::RoleMismatch)
            ],
            ".{0,200}"
        )
            .prop_map(|(reason, message)| Frame::Goodbye(Goodbye { reason, message })),
        (any::<u64>(), any::<u64>(), 0..=MAX_READ_LEN, any::<u64>(), any::<bool>()).prop_map(|(id, offset, length, after_seq, background)| {
            Frame::ReadRequest(ReadRequest {
                id,
                offset: offset.min(u64::MAX - length as u64),
                length,
                after_seq,
                background,
            })
        }),
        (
            any::<u64>(),
            prop_oneof![Just(ReadStatus::Ok), Just(ReadStatus::OutOfRange), Just(ReadStatus::IoError)],
            proptest::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(id, status, data)| Frame::ReadResponse(ReadResponse {
                id,
                status,
                data: Bytes::from(data)
            })),
    ]
    .prop_filter("seq 0 is never a write", |f| !matches!(f, Frame::Write(w) if w.id.seq == 0))
    .prop_filter("zero-run chunks carry no plain payload", |f| {
        !matches!(f, Frame::Write(w) if w.chunk.flags == ChunkFlags::ZERO && !w.chunk.payload.is_empty())
    })
}

proptest! {
    #[test]
    fn every_frame_round_trips(frames in proptest::collection::vec(frame(), 1..8), split in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        for f in &frames {
            let before = wire.len();
            f.encode(&mut wire);
            prop_assert_eq!(wire.len() - before, f.encoded_len());
        }
        // Feed the stream in two pieces through a reader, as a socket would.
        let bytes = wire.freeze();
        let cut = split.index(bytes.len() + 1);
        let mut reader = FrameReader::default();
        let mut got = Vec::new();
        reader.push(&bytes[..cut]);
        while let Some(f) = reader.next_frame().unwrap() {
            got.push(f);
        }
        reader.push(&bytes[cut..]);
        while let Some(f) = reader.next_frame().unwrap() {
            got.push(f);
        }
        prop_assert_eq!(reader.buffered(), 0);
        prop_assert_eq!(got, frames.clone());

        // The slice decoder agrees.
        let mut at = 0;
        for f in &frames {
            let (g, used) = decode_slice(&bytes[at..], DEFAULT_MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(&g, f);
            at += used;
        }
    }

    #[test]
    fn codec_round_trips(plain in data(), id in chunk_id(), offset in 0..u64::MAX / 2, compress in any::<bool>(), seal in any::<bool>(), key_byte in any::<u8>()) {
        let key = Key::from_bytes(&[key_byte; 32]);
        let key = seal.then_some(&key);
        let enc = encode_chunk(&plain, id, offset, &EncodeOptions { compress, key });
        prop_assert_eq!(enc.flags.contains(ChunkFlags::SEALED), seal);
        if !seal && !enc.flags.contains(ChunkFlags::ZERO) && !enc.flags.contains(ChunkFlags::COMPRESSED) {
            prop_assert_eq!(&enc.payload[..], &plain[..]);
        }
        if enc.flags.contains(ChunkFlags::COMPRESSED) {
            let overhead = if seal { 20 } else { 0 };
            prop_assert!(enc.payload.len() <= plain.len() - plain.len() / 8 + overhead);
        }
        // Through a frame and back, then decoded.
        let frame = Frame::Write(Write { id, count: id.index.saturating_add(1), offset, chunk: enc });
        let mut wire = BytesMut::new();
        frame.encode(&mut wire);
        let Some(Frame::Write(w)) = decode(&mut wire, DEFAULT_MAX_FRAME).unwrap() else { panic!("not a write") };
        let out = decode_chunk(&w.chunk, w.id, w.offset, key).unwrap();
        prop_assert_eq!(&out[..], &plain[..]);
    }

    #[test]
    fn chunked_writes_reassemble(plain in proptest::collection::vec(any::<u8>(), 0..300_000), chunk_size in 1usize..100_000, seal in any::<bool>()) {
        let key = Key::from_bytes(&[9; 32]);
        let key = seal.then_some(&key);
        let plan = ChunkPlan::new(4096, plain.len(), chunk_size);
        let encoded: Vec<_> = plan.spans().map(|s| {
            let id = ChunkId { epoch: 1, seq: 5, index: s.index };
            (s.clone(), encode_chunk(&plain[s.range.clone()], id, s.offset, &EncodeOptions { compress: true, key }))
        }).collect();
        let mut joiner = Joiner::new(plan.count());
        for (s, e) in encoded.iter().rev() {
            let id = ChunkId { epoch: 1, seq: 5, index: s.index };
            prop_assert!(joiner.insert(s.index, decode_chunk(e, id, s.offset, key).unwrap()));
        }
        prop_assert_eq!(&joiner.join().unwrap()[..], &plain[..]);
    }
}
