//! restore: instant restore of a lost primary disk (US 6,598,131) over
//! wan-100m-40ms, with the library the binaries run. The pair mirrors an
//! image; the primary stops and its local copy is replaced by an empty
//! file; it starts again with `restore_from_remote` (`dtu primary
//! --restore-from-remote`). Measured per trial: the time from the start to
//! the first host read answered (4 KiB near the end of the volume, where
//! the background rebuild has not been), a full read of the volume with 8
//! reads in flight while the rebuild runs, against the line rate, and a
//! rebuild with no host reads, against volume ÷ line rate. Each trial ends
//! with the local copy compared with the replica.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtu::primary::Primary;
use dtu::status::Status;
use dtu_proto::generation::InitialSync;
use serde_json::json;

use super::inproc::{InprocPair, PairConfig};
use super::report::f;
use super::sync::{image, synced};
use super::tools::wait_for;
use super::{BenchError, Opts, Report, Result, Table, Target};

const PRESET: &str = "wan-100m-40ms";
const MIB: u64 = 1 << 20;
/// Bytes per host read in the full read, and reads in flight (nbdcopy's
/// default request size and a little over its default parallelism).
const READ: u32 = 256 << 10;
const IN_FLIGHT: u64 = 8;

/// One trial's figures.
#[derive(Debug, Clone, serde::Serialize)]
struct Trial {
    first_read_ms: f64,
    full_read_s: f64,
    full_read_mbit: f64,
    on_demand_bytes: u64,
    rebuilt_during_read_bytes: u64,
    rebuild_alone_s: f64,
}

fn restoring(p: &Primary) -> (bool, u64, u64) {
    match p.status() {
        Status::Primary(s) => (
            s.mirror.restore.active,
            s.mirror.restore.done_bytes,
            s.mirror.restore_on_demand_bytes,
        ),
        _ => (false, 0, 0),
    }
}

/// Replaces the primary's local copy with an empty file and starts it
/// restoring; returns when `Primary::start` returned.
fn lose_disk_and_restart(pair: &mut InprocPair) -> Result<Instant> {
    pair.stop_primary()?;
    let local = pair.dir.path().join("source.img");
    std::fs::remove_file(&local).map_err(|e| BenchError::io("removing the local copy", e))?;
    std::fs::File::create(&local).map_err(|e| BenchError::io("the empty disk", e))?;
    pair.cfg.restore_from_remote = true;
    let t0 = Instant::now();
    pair.start_primary()?;
    Ok(t0)
}

fn wait_restored(pair: &InprocPair, limit: Duration) -> Result<()> {
    wait_for("the rebuild to complete", limit, || {
        Ok(!restoring(pair.primary()).0)
    })
}

/// Reads the whole volume through the primary, `IN_FLIGHT` reads at once.
fn full_read(p: &Arc<Primary>, size: u64) -> Result<Duration> {
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (p, next) = (p.clone(), next.clone());
            std::thread::spawn(move || -> std::result::Result<(), String> {
                loop {
                    let at = next.fetch_add(u64::from(READ), Ordering::Relaxed);
                    if at >= size {
                        return Ok(());
                    }
                    let len = (size - at).min(u64::from(READ)) as u32;
                    let got = p
                        .runtime()
                        .block_on(p.read(at, len))
                        .map_err(|e| format!("read at {at}: {e}"))?;
                    if got.len() != len as usize {
                        return Err(format!("read at {at}: {} bytes", got.len()));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| BenchError::Dtu("a reader panicked".into()))?
            .map_err(BenchError::Dtu)?;
    }
    Ok(t.elapsed())
}

fn same_files(pair: &InprocPair) -> Result<()> {
    let dir = pair.dir.path();
    let a = std::fs::read(dir.join("source.img")).map_err(|e| BenchError::io("local", e))?;
    let b = std::fs::read(dir.join("replica.img")).map_err(|e| BenchError::io("replica", e))?;
    if a != b {
        return Err(BenchError::Dtu(
            "after the restore the local copy differs from the replica".into(),
        ));
    }
    Ok(())
}

fn trial(pair: &mut InprocPair, size: u64, line: f64) -> Result<Trial> {
    let at_line = size as f64 * 8.0 / line;
    let limit = Duration::from_secs_f64((at_line * 10.0).max(120.0));
    // Restore with host reads: the first one, then all of the volume.
    let t0 = lose_disk_and_restart(pair)?;
    let p = pair.primary().clone();
    p.runtime()
        .block_on(p.read(size - 8 * MIB, 4096))
        .map_err(BenchError::dtu)?;
    let first_read_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (_, before, _) = restoring(&p);
    let took = full_read(&p, size)?;
    let (_, after, on_demand) = restoring(&p);
    drop(p);
    wait_restored(pair, limit)?;
    pair.wait_caught_up(limit)?;
    pair.stop_primary()?;
    same_files(pair)?;
    // The rebuild alone.
    let t0 = lose_disk_and_restart(pair)?;
    wait_restored(pair, limit)?;
    let rebuild_alone_s = t0.elapsed().as_secs_f64();
    pair.stop_primary()?;
    same_files(pair)?;
    pair.cfg.restore_from_remote = false;
    pair.start_primary()?;
    Ok(Trial {
        first_read_ms,
        full_read_s: took.as_secs_f64(),
        full_read_mbit: size as f64 * 8.0 / took.as_secs_f64() / 1e6,
        on_demand_bytes: on_demand,
        rebuilt_during_read_bytes: after.saturating_sub(before),
        rebuild_alone_s,
    })
}

/// Median, min and max.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

pub fn run(o: &Opts) -> Result<Report> {
    let mut r = Report::new("restore", o.quick);
    let (size, trials) = o.pick((256 * MIB, 3), (32 * MIB, 1));
    let mut pair = InprocPair::new(PairConfig {
        preset: Some(PRESET.into()),
        seed: o.seed,
        volume_size: size,
        local: Some(InitialSync::Full),
        ..PairConfig::default()
    })?;
    let data = image(&pair.dir.path().join("source.img"), size, 0.9, o.seed)?;
    let line = pair.preset.as_ref().map_or(1.0, |p| p.up.rate_bps as f64);
    pair.start_remote()?;
    pair.start_relay()?;
    pair.start_primary()?;
    synced(&pair, Duration::from_secs(600))?;
    let mut all = Vec::new();
    for i in 0..trials {
        eprintln!("restore: trial {} of {trials}", i + 1);
        all.push(trial(&mut pair, size, line)?);
    }
    pair.shutdown()?;
    let at_line = size as f64 * 8.0 / line;
    let mut t = Table::new(
        &format!(
            "{PRESET} ({:.0} Mbit/s), a {} MiB volume ({} MiB of data): the local copy lost \
             and restored from the remote",
            line / 1e6,
            size >> 20,
            data >> 20
        ),
        &[
            "trial",
            "first read ms",
            "full read Mbit/s",
            "read / line",
            "read from remote MiB",
            "rebuild alone s",
            "rebuild / (volume / line)",
        ],
    );
    for (i, x) in all.iter().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            f(x.first_read_ms, 0),
            f(x.full_read_mbit, 1),
            f(x.full_read_mbit * 1e6 / line, 2),
            (x.on_demand_bytes >> 20).to_string(),
            f(x.rebuild_alone_s, 1),
            f(x.rebuild_alone_s / at_line, 2),
        ]);
    }
    r.tables.push(t);
    let first = spread(all.iter().map(|x| x.first_read_ms).collect());
    let read = spread(all.iter().map(|x| x.full_read_mbit * 1e6 / line).collect());
    let rebuild = spread(all.iter().map(|x| x.rebuild_alone_s / at_line).collect());
    let of = |s: (f64, f64, f64), d: usize| {
        format!(
            "{} ({}–{}, {trials} trials)",
            f(s.0, d),
            f(s.1, d),
            f(s.2, d)
        )
    };
    r.target(Target::new(
        "time from the start to the first host read answered (ms, median)",
        "< 1000",
        of(first, 0),
        first.0 < 1000.0,
    ));
    r.target(Target::new(
        "host read throughput during the rebuild / line rate (median)",
        "≥ 0.5",
        of(read, 2),
        read.0 >= 0.5,
    ));
    r.target(Target::new(
        "rebuild time with no host reads / (volume / line rate) (median)",
        "≤ 1.1",
        of(rebuild, 2),
        rebuild.0 <= 1.1,
    ));
    r.note(
        "In process over the emulated link, the primary started as `dtu primary \
         --restore-from-remote` starts (Primary::start, restore_from_remote). Times run from \
         the primary's start (nvbuf, QUIC connect, the decision). The full read is 256 KiB \
         reads, 8 in flight, through Primary::read (what the NBD export calls); the rebuild \
         fetches 4 extents of 1 MiB at a time at a lower stream priority than host reads. A \
         host read of an extent the rebuild is fetching waits for it (up to 5 s); a read of an \
         extent no fetch holds goes to the remote and steers the rebuild there.",
    );
    r.data = json!({
        "preset": PRESET, "volume_bytes": size, "data_bytes": data, "line_bps": line,
        "trials": all,
        "first_read_ms": {"median": first.0, "min": first.1, "max": first.2},
        "read_over_line": {"median": read.0, "min": read.1, "max": read.2},
        "rebuild_over_line_time": {"median": rebuild.0, "min": rebuild.1, "max": rebuild.2},
    });
    Ok(r)
}
