//! initial-sync and resync-checksum: how fast dtu brings a replica to a
//! disk that already holds data, over `wan-100m-40ms`.
//!
//! - initial-sync: a 1 GiB image (64 MiB quick) whose 1 MiB extents are
//!   half random data, half zeros or holes, synced in full to an empty
//!   replica. The figure: the time the data alone needs at the line rate,
//!   divided by the time from the primary's start until the replica is
//!   consistent (1.0 is the line; the goal is ≥ 1 / 1.05).
//! - resync-checksum: the same size of random data on both sides, the
//!   replica differing in 1 % of its 4 KiB blocks, scattered; a checksum
//!   sync compares BLAKE3 digests and sends only what differs. The figures:
//!   bytes that crossed the link (both ways) per byte of volume (the goal is
//!   ≤ 3 %), and the time.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use dtu_proto::generation::InitialSync;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::json;

use super::inproc::{InprocPair, PairConfig};
use super::report::{f, mbit};
use super::tools::wait_for;
use super::{BenchError, Opts, Report, Result, Table, Target};

const PRESET: &str = "wan-100m-40ms";
const MIB: u64 = 1 << 20;

/// Writes a `size` image to `path`: each 1 MiB extent random data with
/// probability `data`, else zeros (every other one written, the rest holes).
/// Returns the bytes of data.
fn image(path: &std::path::Path, size: u64, data: f64, seed: u64) -> Result<u64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let f = std::fs::File::create(path).map_err(|e| BenchError::io("creating the image", e))?;
    f.set_len(size)
        .map_err(|e| BenchError::io("sizing the image", e))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut written = 0;
    for i in 0..size / MIB {
        if rng.gen_bool(data) {
            rng.fill_bytes(&mut buf);
            written += MIB;
        } else if i % 2 == 0 {
            buf.fill(0);
        } else {
            continue;
        }
        f.write_all_at(&buf, i * MIB)
            .map_err(|e| BenchError::io("writing the image", e))?;
    }
    f.sync_all()
        .map_err(|e| BenchError::io("syncing the image", e))?;
    Ok(written)
}

/// Waits until the sync is over and the replica consistent; returns when.
fn synced(pair: &InprocPair, limit: Duration) -> Result<Instant> {
    wait_for("the sync to complete", limit, || {
        let s = pair.status();
        let r = pair.remote_status();
        Ok(s.mirror.decision.is_some()
            && !s.mirror.sync.sync.active
            && s.mirror.out_of_sync_bytes == 0
            && s.remote_stored_seq == s.highest_seq
            && r.consistent)
    })?;
    Ok(Instant::now())
}

/// Bytes that crossed the emulated link, both directions.
fn link_bytes(pair: &InprocPair) -> u64 {
    pair.relay_stats().map_or(0, |s| {
        s.up.link.bytes_delivered + s.down.link.bytes_delivered
    })
}

pub fn initial(o: &Opts) -> Result<Report> {
    let mut r = Report::new("initial-sync", o.quick);
    let size = o.pick(1 << 30, 64 * MIB);
    let mut pair = InprocPair::new(PairConfig {
        preset: Some(PRESET.into()),
        seed: o.seed,
        volume_size: size,
        local: Some(InitialSync::Full),
        ..PairConfig::default()
    })?;
    let data = image(&pair.dir.path().join("source.img"), size, 0.5, o.seed)?;
    let line = pair.preset.as_ref().map_or(1.0, |p| p.up.rate_bps as f64);
    pair.start_remote()?;
    pair.start_relay()?;
    let t0 = Instant::now();
    pair.start_primary()?;
    let ideal = data as f64 * 8.0 / line;
    let done = synced(&pair, Duration::from_secs_f64((ideal * 10.0).max(120.0)))?;
    let took = (done - t0).as_secs_f64();
    let on_link = link_bytes(&pair);
    let s = pair.status();
    pair.shutdown()?;
    let ratio = ideal / took;
    let mut t = Table::new(
        &format!(
            "{PRESET} ({} Mbit/s), a {} MiB image with {} MiB of data",
            mbit(line),
            size >> 20,
            data >> 20
        ),
        &[
            "sync s",
            "data at line rate s",
            "line time / sync time",
            "link bytes / data bytes",
            "copied (plain) MiB",
        ],
    );
    t.row(vec![
        f(took, 1),
        f(ideal, 1),
        f(ratio, 3),
        f(on_link as f64 / data as f64, 3),
        (s.mirror.sync.copied_bytes >> 20).to_string(),
    ]);
    r.tables.push(t);
    r.target(Target::new(
        "initial sync time ≤ 1.05 × data / line rate",
        "≥ 0.952",
        f(ratio, 3),
        ratio >= 1.0 / 1.05,
    ));
    r.note(
        "Time runs from the primary's start (nvbuf creation, connect, the decision) to the \
         replica marked consistent. Zero extents and holes cross as a flag or a trim.",
    );
    r.data = json!({
        "preset": PRESET, "volume_bytes": size, "data_bytes": data, "sync_s": took,
        "ideal_s": ideal, "ratio": ratio, "link_bytes": on_link,
        "copied_bytes": s.mirror.sync.copied_bytes,
    });
    Ok(r)
}

pub fn checksum(o: &Opts) -> Result<Report> {
    let mut r = Report::new("resync-checksum", o.quick);
    let size = o.pick(1 << 30, 64 * MIB);
    let mut pair = InprocPair::new(PairConfig {
        preset: Some(PRESET.into()),
        seed: o.seed,
        volume_size: size,
        local: Some(InitialSync::Checksum),
        ..PairConfig::default()
    })?;
    let src = pair.dir.path().join("source.img");
    let rep = pair.dir.path().join("replica.img");
    image(&src, size, 1.0, o.seed)?;
    std::fs::copy(&src, &rep).map_err(|e| BenchError::io("seeding the replica", e))?;
    // 1 % of the 4 KiB blocks, scattered.
    let blocks = size / 4096;
    let differ = blocks / 100;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed ^ 0x5eed);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&rep)
        .map_err(|e| BenchError::io("opening the replica", e))?;
    for _ in 0..differ {
        let b = rng.gen_range(0..blocks);
        file.write_all_at(&[rng.gen::<u8>() | 1; 16], b * 4096)
            .map_err(|e| BenchError::io("changing the replica", e))?;
    }
    file.sync_all()
        .map_err(|e| BenchError::io("syncing the replica", e))?;
    let line = pair.preset.as_ref().map_or(1.0, |p| p.up.rate_bps as f64);
    pair.start_remote()?;
    pair.start_relay()?;
    let t0 = Instant::now();
    pair.start_primary()?;
    let done = synced(&pair, Duration::from_secs(600))?;
    let took = (done - t0).as_secs_f64();
    let on_link = link_bytes(&pair);
    let s = pair.status();
    pair.shutdown()?;
    let share = on_link as f64 / size as f64;
    let full_s = size as f64 * 8.0 / line;
    let mut t = Table::new(
        &format!(
            "{PRESET} ({} Mbit/s), {} MiB, {differ} of {blocks} 4 KiB blocks differ",
            mbit(line),
            size >> 20
        ),
        &[
            "sync s",
            "full copy at line rate s",
            "link bytes (both ways) MiB",
            "link bytes / volume",
            "copied MiB",
            "skipped MiB",
        ],
    );
    t.row(vec![
        f(took, 1),
        f(full_s, 1),
        f(on_link as f64 / MIB as f64, 1),
        f(share, 4),
        f(s.mirror.sync.copied_bytes as f64 / MIB as f64, 1),
        f(s.mirror.sync.skipped_bytes as f64 / MIB as f64, 1),
    ]);
    r.tables.push(t);
    r.target(Target::new(
        "checksum resync: bytes on the link ≤ 3 % of the volume",
        "≤ 0.03",
        f(share, 4),
        share <= 0.03,
    ));
    r.note(
        "Digests are BLAKE3 per 4 KiB block, asked per 1 MiB piece; a differing block is sent \
         alone. The link bytes include QUIC's headers, acks and the digests coming back. The \
         comparison with rsync --inplace --no-whole-file through the same link is not run yet.",
    );
    r.data = json!({
        "preset": PRESET, "volume_bytes": size, "differing_blocks": differ, "sync_s": took,
        "link_bytes": on_link, "link_share": share, "copied_bytes": s.mirror.sync.copied_bytes,
        "skipped_bytes": s.mirror.sync.skipped_bytes,
    });
    Ok(r)
}
