//! Encode/decode throughput of the payload codec on one core, per mode.
//!
//! `cargo run --release -p dtu-proto --example codec_bench [-- --mib 256 --json]`
//!
//! Uses 64 KiB chunks of incompressible data (compression is then tried and
//! abandoned, its worst case) and of 2:1 compressible data. A benchmark, not
//! a test: the numbers depend on the machine and its load.

use std::time::Instant;

use dtu_proto::codec::{decode_chunk, encode_chunk, EncodeOptions, Key};
use dtu_proto::ChunkId;

const CHUNK: usize = 64 << 10;

fn data(compressible: bool) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut out: Vec<u8> = Vec::with_capacity(CHUNK);
    while out.len() < CHUNK {
        // 64 random bytes, then (for 2:1 data) the same 64 again.
        let start = out.len();
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push(x as u8);
        }
        if compressible {
            out.extend_from_within(start..start + 64);
        }
    }
    out.truncate(CHUNK);
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let json = args.iter().any(|a| a == "--json");
    let chunks = mib * (1 << 20) / CHUNK;
    let key = Key::from_bytes(&[42; 32]);
    let mut rows = Vec::new();
    for (name, compressible, compress, seal) in [
        ("crc only", false, false, false),
        ("crc+snap (incompressible)", false, true, false),
        ("crc+snap (2:1 data)", true, true, false),
        ("crc+seal", false, false, true),
        ("crc+snap+seal (2:1 data)", true, true, true),
    ] {
        let plain = data(compressible);
        let opts = EncodeOptions {
            compress,
            key: seal.then_some(&key),
        };
        // One untimed pass so page faults and lazy CPU-feature detection do
        // not land in the first mode's figure.
        for i in 0..chunks.min(64) {
            let id = ChunkId {
                epoch: 1,
                seq: i as u64 + 1,
                index: 0,
            };
            std::hint::black_box(encode_chunk(&plain, id, 0, &opts));
        }
        let mut encoded = Vec::with_capacity(chunks);
        let t = Instant::now();
        for i in 0..chunks {
            let id = ChunkId {
                epoch: 1,
                seq: i as u64 + 1,
                index: 0,
            };
            encoded.push(encode_chunk(&plain, id, 0, &opts));
        }
        let enc_s = t.elapsed().as_secs_f64();
        let wire: usize = encoded.iter().map(|c| c.payload.len()).sum();
        let t = Instant::now();
        for (i, c) in encoded.iter().enumerate() {
            let id = ChunkId {
                epoch: 1,
                seq: i as u64 + 1,
                index: 0,
            };
            let out = decode_chunk(c, id, 0, opts.key).expect("round trip");
            assert_eq!(out.len(), CHUNK);
        }
        let dec_s = t.elapsed().as_secs_f64();
        let total = (chunks * CHUNK) as f64 / (1 << 20) as f64;
        rows.push((
            name,
            total / enc_s,
            total / dec_s,
            (chunks * CHUNK) as f64 / wire as f64,
        ));
    }
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|(n, e, d, r)| {
                format!("{{\"mode\":\"{n}\",\"encode_mib_s\":{e:.1},\"decode_mib_s\":{d:.1},\"ratio\":{r:.2}}}")
            })
            .collect();
        println!("[{}]", items.join(","));
    } else {
        println!(
            "{:<28} {:>14} {:>14} {:>8}",
            "mode (64 KiB chunks, 1 core)", "encode MiB/s", "decode MiB/s", "ratio"
        );
        for (n, e, d, r) in rows {
            println!("{n:<28} {e:>14.0} {d:>14.0} {r:>8.2}");
        }
    }
}
