//! Writes one seed file per frame kind (and a few sealed / compressed Write
//! frames) into a fuzz corpus directory.
//!
//! `cargo run -p dtu-proto --example fuzz_seeds -- proto/fuzz/corpus/frame_decoder`

use bytes::Bytes;
use dtu_proto::codec::{encode_chunk, EncodeOptions, Key};
use dtu_proto::frame::*;
use dtu_proto::ChunkId;

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).expect("usage: fuzz_seeds DIR");
    std::fs::create_dir_all(&dir)?;
    let key = Key::from_bytes(&[3; 32]);
    let mut frames = vec![
        Frame::Hello(Hello {
            version: dtu_proto::PROTOCOL_VERSION,
            role: Role::Primary,
            volume_id: [1; 16],
            volume_size: 1 << 30,
            block_size: 4096,
            features: 3,
            epoch: 2,
            stored_seq: 9,
            highest_seq: 0,
            key_fingerprint: 0x0123_4567_89ab_cdef,
            flags: 0,
            gens: Default::default(),
            map_base: 0,
            resume_from: 0,
            decision: 0,
            changed_bytes: 0,
            primary_since: 0,
        }),
        Frame::Flush(Flush { seq: 4, epoch: 1 }),
        Frame::Trim(Trim {
            seq: 5,
            epoch: 1,
            offset: 4096,
            length: 8192,
        }),
        Frame::Checkpoint(Checkpoint {
            seq: 6,
            epoch: 1,
            kind: 0,
            time_us: 0,
            label: "nightly".into(),
        }),
        Frame::Ack(Ack {
            kind: AckKind::Stored,
            upto: 6,
        }),
        Frame::Nack(Nack {
            seq: 3,
            index: 1,
            reason: NackReason::Checksum,
        }),
        Frame::Heartbeat(Heartbeat {
            sent_at_us: 100,
            echo_us: 50,
            reply: true,
        }),
        Frame::Goodbye(Goodbye {
            reason: GoodbyeReason::Shutdown,
            message: "bye".into(),
        }),
        Frame::ReadRequest(ReadRequest {
            id: 1,
            offset: 0,
            length: 4096,
            after_seq: 3,
            background: false,
        }),
        Frame::ReadResponse(ReadResponse {
            id: 1,
            status: ReadStatus::Ok,
            data: Bytes::from_static(b"data"),
        }),
        Frame::Marker(Marker {
            seq: 12,
            epoch: 2,
            kind: MarkerKind::SyncStart,
            gen: 0x1234_5678_9abc_def0,
        }),
        Frame::DigestRequest(DigestRequest {
            seq: 13,
            epoch: 2,
            offset: 1 << 20,
            length: 1 << 20,
            block: 4096,
        }),
        Frame::DigestResponse(DigestResponse {
            seq: 13,
            digests: vec![[7; DIGEST_LEN]; 4],
        }),
        Frame::Extents(Extents {
            ranges: vec![(0, 65536), (1 << 30, 4096)],
            last: true,
        }),
        Frame::HandoverRequest,
    ];
    let plain: Vec<u8> = (0..3000u32).map(|i| (i / 7) as u8).collect();
    for (seq, compress, seal, zero) in [
        (1, false, false, false),
        (2, true, false, false),
        (3, true, true, false),
        (4, false, true, true),
    ] {
        let id = ChunkId {
            epoch: 1,
            seq,
            index: 0,
        };
        let data = if zero { vec![0; 4096] } else { plain.clone() };
        let chunk = encode_chunk(
            &data,
            id,
            0,
            &EncodeOptions {
                compress,
                key: seal.then_some(&key),
            },
        );
        frames.push(Frame::Write(Write {
            id,
            count: 1,
            offset: 0,
            chunk,
        }));
    }
    for (i, f) in frames.iter().enumerate() {
        std::fs::write(format!("{dir}/{i:02}-{}", f.kind_name()), f.to_bytes())?;
    }
    // Several frames back to back, as on a lane.
    let stream: Vec<u8> = frames.iter().flat_map(|f| f.to_bytes().to_vec()).collect();
    std::fs::write(format!("{dir}/stream"), stream)?;
    Ok(())
}
