//! nvbuf benchmark: append throughput, `buffered` latency (append + sync_to)
//! and group-commit ratio for several record sizes and writer counts on a real
//! mmap'd file, printed as a table and as JSON. Also hosts `crash-child`, the
//! appender that the SIGKILL crash test runs as a separate process.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use dtu::nvbuf::{Nvbuf, NvbufConfig, RecordHeader, Wait};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "nvbuf append / group-commit benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Directory for the nvbuf file (use the disk you want to measure).
    #[arg(long, default_value = "/tmp/nvbuf-bench")]
    dir: PathBuf,
    /// nvbuf file size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Seconds per configuration.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Record sizes in KiB.
    #[arg(long, value_delimiter = ',', default_value = "4,64")]
    record_kib: Vec<usize>,
    /// Concurrent writer counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    writers: Vec<usize>,
    /// Also write the JSON results to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Append to an existing nvbuf forever, printing `B <seq> <epoch> <crc>`
    /// once each seq is durable and `R <seq>` before releasing through seq.
    /// Used by the crash test, which kills it with SIGKILL.
    CrashChild {
        #[arg(long)]
        path: PathBuf,
        /// Volume id, 32 hex digits.
        #[arg(long)]
        volume: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Writer threads.
        #[arg(long, default_value_t = 3)]
        threads: usize,
    },
}

#[derive(serde::Serialize)]
struct Row {
    record_bytes: usize,
    writers: usize,
    secs: f64,
    records: u64,
    mb_per_s: f64,
    records_per_s: f64,
    buffered_p50_us: f64,
    buffered_p99_us: f64,
    flushes: u64,
    records_per_flush: f64,
    full_waits: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::CrashChild {
            path,
            volume,
            seed,
            threads,
        }) => crash_child(&path, &volume, seed, threads),
        None => bench(&cli),
    }
}

fn bench(cli: &Cli) -> Result<()> {
    std::fs::create_dir_all(&cli.dir).with_context(|| format!("mkdir {}", cli.dir.display()))?;
    let path = cli.dir.join("bench.nvbuf");
    let _ = std::fs::remove_file(&path);
    let volume = [0x42; 16];
    let mut cfg = NvbufConfig::new(volume).with_size(cli.size_mib << 20);
    cfg.overwrite = true;
    let t = Instant::now();
    drop(Nvbuf::create(&path, &cfg)?);
    eprintln!(
        "created {} ({} MiB) in {:.2}s",
        path.display(),
        cli.size_mib,
        t.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    for &kib in &cli.record_kib {
        for &w in &cli.writers {
            let row = run_one(
                &path,
                volume,
                kib << 10,
                w,
                Duration::from_secs_f64(cli.secs),
            )?;
            eprintln!(
                "{:>6} B x {:>2} writers: {:>8.1} MB/s {:>9.0} rec/s p50 {:>8.0} us p99 {:>8.0} us {:>6.2} rec/flush",
                row.record_bytes, row.writers, row.mb_per_s, row.records_per_s,
                row.buffered_p50_us, row.buffered_p99_us, row.records_per_flush
            );
            rows.push(row);
        }
    }
    println!(
        "{:>8} {:>7} {:>10} {:>11} {:>10} {:>10} {:>9} {:>10}",
        "record", "writers", "MB/s", "records/s", "p50 us", "p99 us", "flushes", "rec/flush"
    );
    for r in &rows {
        println!(
            "{:>8} {:>7} {:>10.1} {:>11.0} {:>10.0} {:>10.0} {:>9} {:>10.2}",
            r.record_bytes,
            r.writers,
            r.mb_per_s,
            r.records_per_s,
            r.buffered_p50_us,
            r.buffered_p99_us,
            r.flushes,
            r.records_per_flush
        );
    }
    let json = serde_json::json!({
        "file": path.display().to_string(),
        "size_mib": cli.size_mib,
        "results": rows,
    });
    let text = serde_json::to_string_pretty(&json)?;
    println!("{text}");
    if let Some(p) = &cli.json {
        std::fs::write(p, &text).with_context(|| format!("write {}", p.display()))?;
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn run_one(
    path: &Path,
    volume: [u8; 16],
    size: usize,
    writers: usize,
    dur: Duration,
) -> Result<Row> {
    let (nv, _rec) = Nvbuf::open(path, volume)?;
    let nv = Arc::new(nv);
    let before = nv.stats(Instant::now());
    let order = Arc::new(Mutex::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    // An infinitely fast remote: everything durable is released at once, so
    // the ring never limits the measurement.
    let releaser = {
        let nv = nv.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(d) = nv.durable_seq() {
                    nv.release_through(d);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|i| {
            let nv = nv.clone();
            let order = order.clone();
            std::thread::spawn(move || -> Result<Vec<u32>> {
                let mut payload = vec![0u8; size];
                rand::rngs::StdRng::seed_from_u64(i as u64).fill(&mut payload[..]);
                let mut lat = Vec::new();
                while start.elapsed() < dur {
                    let t0 = Instant::now();
                    let lsn = {
                        let _g = order.lock().unwrap_or_else(|p| p.into_inner());
                        let seq = nv.next_seq();
                        let hdr = RecordHeader {
                            seq,
                            epoch: nv.epoch(),
                            offset: seq * size as u64,
                            length: size as u32,
                            flags: 0,
                            chunk_index: 0,
                            chunk_count: 1,
                        };
                        nv.append(&hdr, &payload, Instant::now(), Wait::Forever)?
                    };
                    nv.sync_to(lsn)?;
                    lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
                Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        match h.join() {
            Ok(r) => lat.extend(r?),
            Err(_) => bail!("writer thread panicked"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = releaser.join();
    let after = nv.stats(Instant::now());
    if let Some(d) = nv.durable_seq() {
        nv.release_through(d);
    }
    nv.checkpoint()?;
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize] as f64
        }
    };
    let records = lat.len() as u64;
    let flushes = after.flushes - before.flushes;
    let flushed = after.flushed_records - before.flushed_records;
    Ok(Row {
        record_bytes: size,
        writers,
        secs,
        records,
        mb_per_s: records as f64 * size as f64 / secs / 1e6,
        records_per_s: records as f64 / secs,
        buffered_p50_us: pct(0.50),
        buffered_p99_us: pct(0.99),
        flushes,
        records_per_flush: if flushes == 0 {
            0.0
        } else {
            flushed as f64 / flushes as f64
        },
        full_waits: after.full_waits - before.full_waits,
    })
}

fn crash_child(path: &Path, volume: &str, seed: u64, threads: usize) -> Result<()> {
    let vol: [u8; 16] = hex::decode(volume)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("volume id must be 16 bytes"))?;
    let (nv, rec) = Nvbuf::open(path, vol)?;
    println!(
        "O epoch={} records={} next={}",
        nv.epoch(),
        rec.records.len(),
        nv.next_seq()
    );
    let nv = Arc::new(nv);
    let order = Arc::new(Mutex::new(()));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let nv = nv.clone();
            let order = order.clone();
            let out = out.clone();
            std::thread::spawn(move || -> Result<()> {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (t as u64) << 32);
                loop {
                    let chunks = rng.gen_range(1..=3u32);
                    let mut crc = crc32fast::Hasher::new();
                    let (seq, lsn) = {
                        let _g = order.lock().unwrap_or_else(|p| p.into_inner());
                        let seq = nv.next_seq();
                        let mut lsn = 0;
                        for c in 0..chunks {
                            let len = rng.gen_range(0..24_000usize);
                            let mut payload = vec![0u8; len];
                            rng.fill(&mut payload[..]);
                            crc.update(&payload);
                            let hdr = RecordHeader {
                                seq,
                                epoch: nv.epoch(),
                                offset: seq << 12,
                                length: len as u32,
                                flags: c ^ 0x5a,
                                chunk_index: c,
                                chunk_count: chunks,
                            };
                            lsn = nv.append(&hdr, &payload, Instant::now(), Wait::Forever)?;
                        }
                        (seq, lsn)
                    };
                    nv.sync_to(lsn)?;
                    use std::io::Write;
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    writeln!(o, "B {seq} {} {}", nv.epoch(), crc.finalize())?;
                    // Keep a window of unreleased seqs so the ring wraps.
                    let first = nv.first_unreleased_seq();
                    if let Some(d) = nv.durable_seq() {
                        if d > first + 150 {
                            writeln!(o, "R {}", d - 100)?;
                            o.flush()?;
                            nv.release_through(d - 100);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        match h.join() {
            Ok(r) => r?,
            Err(_) => bail!("appender panicked"),
        }
    }
    Ok(())
}
