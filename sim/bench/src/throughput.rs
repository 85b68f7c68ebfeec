//! throughput-unlimited: how fast the whole pipeline goes when the link is
//! not the limit. fio writes 1 MiB blocks sequentially at queue depth 8
//! into a real `dtu primary` process's NBD export (trigger `buffered`), the
//! remote process is reached directly over loopback, sealing and crc32 are
//! on; compression off and on, and 1 or 2 encode/decode workers
//! (`pipeline.workers` in both config files). Two figures per run: what fio
//! saw (the host's throughput, `--end_fsync=1` included), and the
//! replicated throughput: bytes over the time from fio's start until the
//! remote has stored everything. Beside it, the same fio job against
//! `nbdkit file` on the same disk. CPU seconds per GB of each process come
//! from `/proc/<pid>/stat`. fio's data compresses about 2:1
//! (`--buffer_compress_percentage=50`) in every run, nbdkit's included.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::plot::{bars, Bars};
use super::report::f;
use super::tools::{cpu_seconds, fio, fio_nbd, wait_for, Nbdkit};
use super::{BenchError, Opts, Report, Result, Table, Target};
use dtu_tests::Pair;

fn seq_job(name: &str, uri: &str, size: u64) -> Vec<String> {
    let mut a = fio_nbd(name, uri);
    a.extend([
        "--rw=write".into(),
        "--bs=1M".into(),
        "--iodepth=8".into(),
        format!("--size={}", size),
        "--buffer_compress_percentage=50".into(),
        "--end_fsync=1".into(),
    ]);
    a
}

/// Sets `pipeline.workers` and `pipeline.compress` in a config file.
fn set_pipeline(path: &Path, workers: usize, compress: bool) -> Result<()> {
    let text =
        std::fs::read_to_string(path).map_err(|e| BenchError::io(path.display().to_string(), e))?;
    let mut v: toml::Table = text
        .parse()
        .map_err(|e| BenchError::Dtu(format!("{}: {e}", path.display())))?;
    let p = v
        .entry("pipeline")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| BenchError::Dtu(format!("{}: [pipeline] is not a table", path.display())))?;
    p.insert("workers".into(), toml::Value::Integer(workers as i64));
    if path.file_name().is_some_and(|n| n == "primary.toml") {
        p.insert("compress".into(), toml::Value::Boolean(compress));
    }
    let out = toml::to_string(&v).map_err(|e| BenchError::Dtu(e.to_string()))?;
    std::fs::write(path, out).map_err(|e| BenchError::io(path.display().to_string(), e))
}

#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    name: String,
    compress: bool,
    workers: usize,
    bytes: u64,
    fio_bytes_s: f64,
    replicated_bytes_s: f64,
    seconds: f64,
    primary_cpu_s_per_gb: f64,
    remote_cpu_s_per_gb: f64,
    compression: f64,
}

fn dtu_run(size: u64, workers: usize, compress: bool) -> Result<Run> {
    let name = format!(
        "dtu, {} worker{}, compression {}",
        workers,
        if workers == 1 { "" } else { "s" },
        if compress { "on" } else { "off" }
    );
    eprintln!("throughput-unlimited: {name}");
    let vol = format!("{}MiB", size >> 20);
    let mut pair = Pair::init(
        &vol,
        &[],
        &[
            "--link-rate",
            "10Gbit",
            "--link-rtt",
            "1ms",
            "--nvbuf-size",
            "256MiB",
        ],
    );
    set_pipeline(&pair.path("primary.toml"), workers, compress)?;
    set_pipeline(&pair.path("remote.toml"), workers, compress)?;
    pair.start(&["--trigger", "buffered", "--dirty-threshold", "0"]);
    let pid = |p: &Option<dtu_tests::Proc>| {
        p.as_ref()
            .and_then(dtu_tests::Proc::pid)
            .ok_or_else(|| BenchError::Dtu("no process".into()))
    };
    let (pp, rp) = (pid(&pair.primary)?, pid(&pair.remote)?);
    let (pc0, rc0) = (cpu_seconds(pp)?, cpu_seconds(rp)?);
    let t0 = Instant::now();
    let x = fio(
        &seq_job("seq", &pair.nbd_uri(), size),
        pair.dir.path(),
        Duration::from_secs(900),
    )?;
    wait_for("the replica to catch up", Duration::from_secs(900), || {
        let s = pair.primary_status();
        Ok(s.highest_seq > 0 && s.remote_stored_seq == s.highest_seq)
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let (pc, rc) = (cpu_seconds(pp)? - pc0, cpu_seconds(rp)? - rc0);
    let s = pair.primary_status();
    let gb = size as f64 / 1e9;
    Ok(Run {
        name,
        compress,
        workers,
        bytes: size,
        fio_bytes_s: x.bw_bytes_s,
        replicated_bytes_s: size as f64 / secs,
        seconds: secs,
        primary_cpu_s_per_gb: pc / gb,
        remote_cpu_s_per_gb: rc / gb,
        compression: s.compression_ratio,
    })
}

fn nbdkit_run(size: u64) -> Result<Run> {
    eprintln!("throughput-unlimited: nbdkit file");
    let dir = tempfile::Builder::new()
        .prefix("dtu-bench-nbdkit-")
        .tempdir()
        .map_err(|e| BenchError::io("temp dir", e))?;
    let img = dir.path().join("nbdkit.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(size))
        .map_err(|e| BenchError::io("nbdkit image", e))?;
    let kit = Nbdkit::start(&img, dir.path())?;
    let c0 = cpu_seconds(kit.pid())?;
    let x = fio(
        &seq_job("seq", &kit.uri(), size),
        dir.path(),
        Duration::from_secs(900),
    )?;
    let c = cpu_seconds(kit.pid())? - c0;
    Ok(Run {
        name: "nbdkit file".into(),
        compress: false,
        workers: 0,
        bytes: size,
        fio_bytes_s: x.bw_bytes_s,
        replicated_bytes_s: x.bw_bytes_s,
        seconds: x.runtime_s,
        primary_cpu_s_per_gb: c / (size as f64 / 1e9),
        remote_cpu_s_per_gb: 0.0,
        compression: 1.0,
    })
}

/// Encode + decode throughput (bytes/s of plaintext) of `threads` threads
/// doing what the primary's encode workers and the remote's decode workers
/// do to 64 KiB chunks (crc32, snap when `compress`, the seal: AES-256-GCM with AES in hardware),
/// with nothing else of the pipeline around them: how the worker pools
/// themselves scale when cores are free.
fn codec_rate(threads: usize, bytes_per_thread: u64, compress: bool, seed: u64) -> f64 {
    use dtu_proto::codec::{decode_chunk, encode_chunk, ChunkId, EncodeOptions, Key};
    let key = Key::from_bytes(&[7; 32]);
    let blocks = super::inproc::Blocks::new(64 << 10, 2.0, 16, seed);
    let chunks = (bytes_per_thread / (64 << 10)).max(1);
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        for t in 0..threads {
            let (key, mut blocks) = (&key, blocks.clone());
            sc.spawn(move || {
                let opts = EncodeOptions {
                    compress,
                    key: Some(key),
                };
                for i in 0..chunks {
                    let id = ChunkId {
                        epoch: 1,
                        seq: (t as u64) << 32 | i,
                        index: 0,
                    };
                    let plain = blocks.next_block();
                    let enc = encode_chunk(&plain, id, i << 16, &opts);
                    let back = decode_chunk(&enc, id, i << 16, Some(key)).expect("decodes");
                    assert_eq!(back.len(), plain.len());
                }
            });
        }
    });
    (threads as u64 * chunks * (64 << 10)) as f64 / t0.elapsed().as_secs_f64()
}

pub fn run(o: &Opts) -> Result<Report> {
    let mut r = Report::new("throughput-unlimited", o.quick);
    let size: u64 = o.pick(1 << 30, 128 << 20);
    let kit = nbdkit_run(size)?;
    let mut runs = Vec::new();
    for (workers, compress) in [(2, false), (2, true), (1, false), (1, true)] {
        runs.push(dtu_run(size, workers, compress)?);
    }
    let mut t = Table::new(
        &format!(
            "fio 1 MiB sequential writes, QD8, {} MiB, no link limit (MB/s = 10^6 bytes/s)",
            size >> 20
        ),
        &[
            "run",
            "fio MB/s",
            "replicated MB/s",
            "replicated / nbdkit",
            "compression",
            "primary CPU s/GB",
            "remote CPU s/GB",
        ],
    );
    for x in runs.iter().chain(std::iter::once(&kit)) {
        t.row(vec![
            x.name.clone(),
            f(x.fio_bytes_s / 1e6, 0),
            f(x.replicated_bytes_s / 1e6, 0),
            f(x.replicated_bytes_s / kit.fio_bytes_s, 2),
            f(x.compression, 2),
            f(x.primary_cpu_s_per_gb, 2),
            if x.workers == 0 {
                "-".into()
            } else {
                f(x.remote_cpu_s_per_gb, 2)
            },
        ]);
    }
    r.tables.push(t);
    let find = |w: usize, c: bool| runs.iter().find(|x| x.workers == w && x.compress == c);
    for c in [false, true] {
        if let Some(x) = find(2, c) {
            let ratio = x.replicated_bytes_s / kit.fio_bytes_s;
            r.target(Target::new(
                format!(
                    "compression {}: replicated throughput / nbdkit",
                    if c { "on" } else { "off" }
                ),
                "≥ 0.5",
                f(ratio, 2),
                ratio >= 0.5,
            ));
        }
        if let (Some(a), Some(b)) = (find(1, c), find(2, c)) {
            let s = b.replicated_bytes_s / a.replicated_bytes_s;
            r.target(Target::new(
                format!(
                    "compression {}: workers 1 → 2 scaling",
                    if c { "on" } else { "off" }
                ),
                "≥ 1.6 ×",
                format!("{s:.2} ×"),
                s >= 1.6,
            ));
        }
    }
    let per_thread: u64 = o.pick(512 << 20, 64 << 20);
    let mut ct = Table::new(
        "encode + decode of 64 KiB chunks alone (crc32, the seal: AES-256-GCM with AES in hardware, snap when on), 1 and 2 threads",
        &["compression", "1 thread MB/s", "2 threads MB/s", "scaling"],
    );
    let mut codec = Vec::new();
    for c in [false, true] {
        let one = codec_rate(1, per_thread, c, o.seed);
        let two = codec_rate(2, per_thread, c, o.seed);
        let sc = two / one;
        ct.row(vec![
            if c { "on" } else { "off" }.into(),
            f(one / 1e6, 0),
            f(two / 1e6, 0),
            format!("{sc:.2} ×"),
        ]);
        r.target(Target::new(
            format!(
                "compression {}: codec workers alone, 1 → 2 threads",
                if c { "on" } else { "off" }
            ),
            "≥ 1.6 ×",
            format!("{sc:.2} ×"),
            sc >= 1.6,
        ));
        codec.push(json!({ "compress": c, "one_thread_bytes_s": one, "two_threads_bytes_s": two, "scaling": sc }));
    }
    r.tables.push(ct);
    r.note(format!(
        "This machine has {} cores shared by fio, the primary, the remote and (for the baseline) \
         nbdkit, plus other work: a second worker can only help while a core is idle.",
        r.machine.nproc
    ));
    r.note("CPU s/GB counts user + system time of the whole process (network, nvbuf, NBD, crypto) per 10^9 bytes written by fio.");
    let cats: Vec<String> = runs
        .iter()
        .map(|x| {
            format!(
                "{}w, comp {}",
                x.workers,
                if x.compress { "on" } else { "off" }
            )
        })
        .chain(std::iter::once("nbdkit".to_string()))
        .collect();
    let all: Vec<&Run> = runs.iter().chain(std::iter::once(&kit)).collect();
    bars(
        &o.out.join("throughput-unlimited"),
        &Bars {
            title: "unlimited link: fio 1 MiB QD8 through the primary's export vs nbdkit".into(),
            y_desc: "MB/s".into(),
            categories: cats,
            series: vec![
                (
                    "fio (host)".into(),
                    all.iter().map(|x| Some(x.fio_bytes_s / 1e6)).collect(),
                ),
                (
                    "replicated".into(),
                    all.iter()
                        .map(|x| Some(x.replicated_bytes_s / 1e6))
                        .collect(),
                ),
            ],
            guides: vec![(kit.fio_bytes_s / 2e6, "target: half of nbdkit".into())],
            log_y: false,
            digits: Some(0),
        },
    )?;
    r.data = json!({ "runs": runs, "nbdkit": kit, "codec_scaling": codec });
    Ok(r)
}
