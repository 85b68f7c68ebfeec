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
use super::tools::{require, run, wait_for};
use super::{BenchError, Opts, Report, Result, Table, Target};

const PRESET: &str = "wan-100m-40ms";
const MIB: u64 = 1 << 20;

/// Writes a `size` image to `path`: each 1 MiB extent random data with
/// probability `data`, else zeros (every other one written, the rest holes).
/// Returns the bytes of data.
pub(crate) fn image(path: &std::path::Path, size: u64, data: f64, seed: u64) -> Result<u64> {
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
pub(crate) fn synced(pair: &InprocPair, limit: Duration) -> Result<Instant> {
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
        // The relay also carries rsync's TCP.
        tcp: true,
        ..PairConfig::default()
    })?;
    require("rsync")?;
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
    // rsync gets the same starting point in a file of its own.
    let theirs = pair.dir.path().join("rsync").join("replica.img");
    std::fs::create_dir(theirs.parent().expect("a directory"))
        .map_err(|e| BenchError::io("rsync's directory", e))?;
    std::fs::copy(&rep, &theirs).map_err(|e| BenchError::io("rsync's replica", e))?;
    let line = pair.preset.as_ref().map_or(1.0, |p| p.up.rate_bps as f64);
    pair.start_remote()?;
    pair.start_relay()?;
    let t0 = Instant::now();
    pair.start_primary()?;
    let done = synced(&pair, Duration::from_secs(600))?;
    let took = (done - t0).as_secs_f64();
    let on_link = link_bytes(&pair);
    let s = pair.status();
    let rsync = rsync_through(&pair, &src, &theirs)?;
    pair.shutdown()?;
    let share = on_link as f64 / size as f64;
    let full_s = size as f64 * 8.0 / line;
    let mut t2 = Table::new(
        "the same two images, rsync --inplace --no-whole-file --ignore-times through the same link (daemon mode)",
        &[
            "",
            "time s",
            "bytes on the link MiB",
            "link bytes / volume",
        ],
    );
    t2.row(vec![
        "dtu checksum sync".into(),
        f(took, 1),
        f(on_link as f64 / MIB as f64, 1),
        f(share, 4),
    ]);
    t2.row(vec![
        "rsync".into(),
        f(rsync.seconds, 1),
        f(rsync.link_bytes as f64 / MIB as f64, 1),
        f(rsync.link_bytes as f64 / size as f64, 4),
    ]);
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
    r.tables.push(t2);
    r.target(Target::new(
        "checksum resync: time at most rsync's",
        "≤ 1.0 × rsync",
        format!("{:.2} × rsync", took / rsync.seconds),
        took <= rsync.seconds,
    ));
    r.target(Target::new(
        "checksum resync: bytes on the link ≤ 3 % of the volume",
        "≤ 0.03",
        f(share, 4),
        share <= 0.03,
    ));
    r.note(
        "Digests are BLAKE3 per 4 KiB block, asked per 1 MiB piece; a differing block is sent \
         alone. The link bytes include QUIC's headers, acks and the digests coming back; \
         rsync's are what the emulated link carried for its TCP connection, both ways. dtu's \
         time runs from the primary's start, rsync's from its start.",
    );
    r.data = json!({
        "preset": PRESET, "volume_bytes": size, "differing_blocks": differ, "sync_s": took,
        "link_bytes": on_link, "link_share": share, "copied_bytes": s.mirror.sync.copied_bytes,
        "skipped_bytes": s.mirror.sync.skipped_bytes,
        "rsync_s": rsync.seconds, "rsync_link_bytes": rsync.link_bytes,
    });
    Ok(r)
}

/// Whether two files hold the same bytes.
fn same_files(a: &std::path::Path, b: &std::path::Path) -> Result<bool> {
    let (fa, fb) = (
        std::fs::File::open(a).map_err(|e| BenchError::io("comparing", e))?,
        std::fs::File::open(b).map_err(|e| BenchError::io("comparing", e))?,
    );
    let len = fa
        .metadata()
        .map_err(|e| BenchError::io("comparing", e))?
        .len();
    if fb
        .metadata()
        .map_err(|e| BenchError::io("comparing", e))?
        .len()
        != len
    {
        return Ok(false);
    }
    let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut at = 0;
    while at < len {
        let n = (len - at).min(MIB) as usize;
        fa.read_exact_at(&mut x[..n], at)
            .map_err(|e| BenchError::io("comparing", e))?;
        fb.read_exact_at(&mut y[..n], at)
            .map_err(|e| BenchError::io("comparing", e))?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// What an rsync run cost.
struct Rsync {
    seconds: f64,
    link_bytes: u64,
}

/// rsync `src` onto `dst` the way users resync images: a daemon on the
/// remote's side (on the remote's port number, TCP), the client through
/// the pair's emulated link, `--inplace --no-whole-file`.
fn rsync_through(pair: &InprocPair, src: &std::path::Path, dst: &std::path::Path) -> Result<Rsync> {
    let dir = dst.parent().expect("a directory");
    let conf = pair.dir.path().join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            // As this user: a daemon started by root would be nobody.
            "use chroot = no\nuid = {}\ngid = {}\npid file = {}\n[m]\npath = {}\nread only = no\n",
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
            pair.dir.path().join("rsyncd.pid").display(),
            dir.display()
        ),
    )
    .map_err(|e| BenchError::io("rsyncd.conf", e))?;
    let mut daemon = std::process::Command::new("rsync")
        .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
        .arg(format!("--port={}", pair.remote_port))
        .arg(format!("--config={}", conf.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| BenchError::io("starting rsync --daemon", e))?;
    let result = (|| {
        wait_for("rsync's daemon", Duration::from_secs(10), || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", pair.remote_port)).is_ok())
        })?;
        let before = link_bytes(pair);
        let t0 = Instant::now();
        let mut cmd = std::process::Command::new("rsync");
        cmd.args(["--inplace", "--no-whole-file", "--ignore-times", "--stats"])
            .arg(src)
            .arg(format!(
                "rsync://127.0.0.1:{}/m/{}",
                pair.link_addr().port(),
                dst.file_name().expect("a file name").to_string_lossy()
            ));
        let out = run(cmd, Duration::from_secs(900))?;
        let seconds = t0.elapsed().as_secs_f64();
        if !same_files(src, dst)? {
            return Err(BenchError::Tool {
                tool: "rsync".into(),
                detail: format!(
                    "{} does not equal {} afterwards: {}",
                    dst.display(),
                    src.display(),
                    String::from_utf8_lossy(&out.stdout)
                ),
            });
        }
        Ok(Rsync {
            seconds,
            link_bytes: link_bytes(pair).saturating_sub(before),
        })
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    result
}

/// overflow: the host's write throughput during an outage of the link (60 s;
/// 8 s quick) with a 16 MiB nvbuf, `nvbuf.overflow = bitmap` against
/// `stall`: with `bitmap` the primary goes ahead and the host keeps its own
/// disk's pace; with `stall` it stops once the nvbuf is full. Then how long
/// the resync takes once the link is back.
pub fn overflow(o: &Opts) -> Result<Report> {
    let mut r = Report::new("overflow", o.quick);
    let outage = Duration::from_secs(o.pick(60, 8));
    let size = o.pick(1 << 30, 256 * MIB);
    let mut rows = Vec::new();
    let mut data = serde_json::Map::new();
    for mode in ["bitmap", "stall"] {
        let m = overflow_case(o, mode, outage, size)?;
        rows.push(m);
        data.insert(mode.into(), json!(m));
    }
    let mut t = Table::new(
        &format!(
            "{PRESET}, a 16 MiB nvbuf, the link down for {} s while the host writes 64 KiB blocks (QD 8)",
            outage.as_secs()
        ),
        &[
            "nvbuf.overflow",
            "host MiB answered during the outage",
            "host MiB/s",
            "slowest answer s",
            "marked MiB",
            "resync s after the link is back",
        ],
    );
    for (mode, m) in ["bitmap", "stall"].iter().zip(&rows) {
        t.row(vec![
            mode.to_string(),
            f(m.answered_bytes as f64 / MIB as f64, 0),
            f(
                m.answered_bytes as f64 / MIB as f64 / outage.as_secs_f64(),
                1,
            ),
            f(m.slowest_s, 2),
            f(m.marked_bytes as f64 / MIB as f64, 0),
            f(m.resync_s, 1),
        ]);
    }
    r.tables.push(t);
    let (bitmap, stall) = (rows[0], rows[1]);
    r.target(Target::new(
        "bitmap: no host write waits longer than overflow_after (5 s) + 1 s",
        "≤ 6 s",
        format!("{:.2} s", bitmap.slowest_s),
        bitmap.slowest_s <= 6.0,
    ));
    r.note(format!(
        "With stall the host is held as soon as the nvbuf is full: {} MiB in {} s, against {} MiB \
         with bitmap.",
        stall.answered_bytes >> 20,
        outage.as_secs(),
        bitmap.answered_bytes >> 20
    ));
    r.data = serde_json::Value::Object(data);
    Ok(r)
}

/// One outage with one overflow policy.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Outage {
    answered_bytes: u64,
    slowest_s: f64,
    marked_bytes: u64,
    resync_s: f64,
}

fn overflow_case(o: &Opts, mode: &str, outage: Duration, size: u64) -> Result<Outage> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let mut pair = InprocPair::new(PairConfig {
        preset: Some(PRESET.into()),
        seed: o.seed,
        volume_size: size,
        nvbuf_size: 16 * MIB,
        local: Some(InitialSync::AssumeInSync),
        overflow: Some(mode.parse().map_err(BenchError::Dtu)?),
        ..PairConfig::default()
    })?;
    std::fs::File::create(pair.dir.path().join("source.img"))
        .and_then(|f| f.set_len(size))
        .map_err(|e| BenchError::io("the local copy", e))?;
    pair.start_remote()?;
    pair.start_relay()?;
    pair.start_primary()?;
    synced(&pair, Duration::from_secs(60))?;
    // The link goes down.
    if let Some(mut l) = pair.relay.take() {
        l.stop();
    }
    let answered = Arc::new(AtomicU64::new(0));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, answered, slowest_us, stop) = (
            pair.primary().clone(),
            answered.clone(),
            slowest_us.clone(),
            stop.clone(),
        );
        let mut blocks = super::inproc::Blocks::new(64 << 10, 1.0, 64, o.seed);
        std::thread::spawn(move || -> Result<()> {
            let slots = size / (64 << 10);
            let mut pending = std::collections::VecDeque::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if pending.len() >= 8 {
                    let (t, x): (Instant, dtu::primary::Pending) =
                        pending.pop_front().expect("non-empty");
                    x.wait().map_err(BenchError::dtu)?;
                    answered.fetch_add(64 << 10, Ordering::Relaxed);
                    slowest_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                let w = p
                    .write((i % slots) * (64 << 10), blocks.next_block())
                    .map_err(BenchError::dtu)?;
                pending.push_back((Instant::now(), w));
                i += 1;
            }
            for (t, x) in pending {
                x.wait().map_err(BenchError::dtu)?;
                slowest_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    std::thread::sleep(outage);
    let answered_bytes = answered.load(Ordering::Relaxed);
    let marked_bytes = pair.status().mirror.out_of_sync_bytes;
    stop.store(true, Ordering::Relaxed);
    // The link comes back: stalled writes drain, a map resyncs.
    let back = Instant::now();
    pair.start_relay()?;
    writer
        .join()
        .map_err(|_| BenchError::Dtu("the host thread panicked".into()))??;
    // Every write is answered by now: the stalled ones once the link was back.
    let slowest_s = slowest_us.load(Ordering::Relaxed) as f64 / 1e6;
    let done = synced(&pair, Duration::from_secs(900))?;
    let resync_s = (done - back).as_secs_f64();
    pair.shutdown()?;
    Ok(Outage {
        answered_bytes,
        slowest_s,
        marked_bytes,
        resync_s,
    })
}
