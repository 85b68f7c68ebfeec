//! undo: what the remote's undo journal costs. The remote's own applier
//! component (`dtu::remote::applier::Applier`, the code its apply thread
//! runs) writes to a real replica file with a real state file, one
//! `fdatasync` per batch as the apply thread does, with the journal on and
//! off, in one run: random 4 KiB overwrites of a full volume (every one
//! saves a block first) and sequential 1 MiB writes to a fresh volume
//! (blocks that read as zeros cost nothing). Then the read side: reading
//! the volume as of a checkpoint through the journal (what `dtu export
//! --as-of` serves) against reading the live replica.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use dtu::remote::applier::Applier;
use dtu::remote::undo::{AsOf, UndoOptions, UndoState};
use dtu::replica::{FileReplica, Replica, VolumeState};
use dtu_proto::receiver::Apply;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::plot::{bars, Bars};
use super::report::f;
use super::{BenchError, Opts, Report, Result, Table, Target};

const MIB: u64 = 1 << 20;
/// Operations per replica sync: one group commit of the apply thread.
const BATCH: usize = 64;

/// One workload's figures.
#[derive(Debug, Clone, serde::Serialize)]
struct Applied {
    workload: &'static str,
    undo: bool,
    bytes: u64,
    secs: f64,
    mib_s: f64,
    undo_disk_bytes: u64,
}

fn err(what: &str) -> impl Fn(String) -> BenchError + '_ {
    move |e| BenchError::Dtu(format!("{what}: {e}"))
}

struct Volume {
    _dir: tempfile::TempDir,
    replica: Arc<dyn Replica>,
    applier: Applier,
    undo: Option<Arc<Mutex<UndoState>>>,
    seq: u64,
}

impl Volume {
    fn new(size: u64, undo: bool, fill_seed: Option<u64>) -> Result<Volume> {
        let dir = tempfile::Builder::new()
            .prefix("dtu-bench-undo-")
            .tempdir()
            .map_err(|e| BenchError::io("temp dir", e))?;
        let path = dir.path().join("replica.img");
        let replica = FileReplica::open(&path, size).map_err(|e| err("replica")(e.to_string()))?;
        if let Some(seed) = fill_seed {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut buf = vec![0u8; MIB as usize];
            for off in (0..size).step_by(MIB as usize) {
                rng.fill(&mut buf[..]);
                replica
                    .write_at(off, &buf)
                    .map_err(|e| BenchError::io("fill", e))?;
            }
            replica.sync().map_err(|e| BenchError::io("fill sync", e))?;
        }
        let replica: Arc<dyn Replica> = Arc::new(replica);
        let (mut vs, resume) = VolumeState::open(
            &dir.path().join("replica.state"),
            [7; 16],
            replica.as_ref(),
            true,
        )
        .map_err(|e| err("state")(e.to_string()))?;
        // A replica in sync with its primary: checkpoints are kept (on a
        // replica never synced they would not be, and nothing is saved).
        vs.adopt(1, false).map_err(|e| BenchError::io("state", e))?;
        let mut applier = Applier::new(replica.clone(), Arc::new(Mutex::new(vs)), resume.stored);
        let undo = if undo {
            let u = UndoState::open(&UndoOptions::beside(&path), 4096, size)
                .map_err(|e| err("undo journal")(e.to_string()))?;
            let u = Arc::new(Mutex::new(u));
            applier = applier.with_undo(u.clone());
            Some(u)
        } else {
            None
        };
        Ok(Volume {
            _dir: dir,
            replica,
            applier,
            undo,
            seq: resume.stored,
        })
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn checkpoint(&mut self, label: &str) -> Apply {
        Apply::Checkpoint {
            seq: self.next(),
            kind: 0,
            time_us: 1_000_000 + self.seq,
            label: label.into(),
        }
    }

    /// Applies `ops` in batches, one sync each, as the apply thread does.
    fn apply_all(&mut self, ops: &[Apply]) -> Result<()> {
        for batch in ops.chunks(BATCH) {
            for i in 0..batch.len() {
                self.applier
                    .apply_in_batch(batch, i)
                    .map_err(|e| err("apply")(e.to_string()))?;
            }
            self.applier
                .sync()
                .map_err(|e| err("sync")(e.to_string()))?;
        }
        Ok(())
    }

    fn undo_bytes(&self) -> u64 {
        self.undo.as_ref().map_or(0, |u| {
            u.lock().unwrap_or_else(|p| p.into_inner()).disk_bytes()
        })
    }
}

/// Random 4 KiB overwrites of a full volume, a checkpoint every
/// `every` writes (so blocks are saved again in each era).
fn random_overwrites(size: u64, total: u64, undo: bool, seed: u64) -> Result<Applied> {
    let mut v = Volume::new(size, undo, Some(seed))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let n = total / 4096;
    let every = 4096;
    let mut ops = vec![v.checkpoint("start")];
    for i in 0..n {
        let off = rng.gen_range(0..size / 4096) * 4096;
        let mut data = vec![0u8; 4096];
        rng.fill(&mut data[..]);
        ops.push(Apply::Write {
            seq: v.next(),
            chunks: vec![(off, Bytes::from(data))],
        });
        if (i + 1) % every == 0 {
            ops.push(v.checkpoint(&format!("c{i}")));
        }
    }
    let t = Instant::now();
    v.apply_all(&ops)?;
    let secs = t.elapsed().as_secs_f64();
    Ok(Applied {
        workload: "random 4 KiB overwrites",
        undo,
        bytes: n * 4096,
        secs,
        mib_s: (n * 4096) as f64 / MIB as f64 / secs,
        undo_disk_bytes: v.undo_bytes(),
    })
}

/// Sequential 1 MiB writes to a fresh (sparse) volume.
fn sequential_fresh(size: u64, undo: bool, seed: u64) -> Result<Applied> {
    let mut v = Volume::new(size, undo, None)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ops = vec![v.checkpoint("start")];
    for off in (0..size).step_by(MIB as usize) {
        let mut data = vec![0u8; MIB as usize];
        rng.fill(&mut data[..]);
        ops.push(Apply::Write {
            seq: v.next(),
            chunks: vec![(off, Bytes::from(data))],
        });
    }
    let t = Instant::now();
    v.apply_all(&ops)?;
    let secs = t.elapsed().as_secs_f64();
    Ok(Applied {
        workload: "sequential 1 MiB writes, fresh volume",
        undo,
        bytes: size,
        secs,
        mib_s: size as f64 / MIB as f64 / secs,
        undo_disk_bytes: v.undo_bytes(),
    })
}

/// Reads the whole volume in 1 MiB pieces, as of the first checkpoint and
/// live, after random overwrites of a quarter of it; answers MiB/s of each.
fn as_of_reads(size: u64, seed: u64) -> Result<(f64, f64)> {
    let mut v = Volume::new(size, true, Some(seed))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xa5);
    let mut ops = vec![v.checkpoint("before")];
    for _ in 0..size / 4 / 4096 {
        let off = rng.gen_range(0..size / 4096) * 4096;
        ops.push(Apply::Write {
            seq: v.next(),
            chunks: vec![(off, Bytes::from(vec![0xee; 4096]))],
        });
    }
    v.apply_all(&ops)?;
    let u = v.undo.clone().expect("journal on");
    let u = u.lock().unwrap_or_else(|p| p.into_inner());
    let entry = u
        .resolve(&AsOf::Label("before".into()))
        .map_err(|e| err("resolve")(e.to_string()))?;
    // Both from a cold page cache would need root; both warm instead:
    // each is read once untimed first.
    let mut buf = vec![0u8; MIB as usize];
    let mut pass = |as_of: bool| -> Result<f64> {
        let t = Instant::now();
        for off in (0..size).step_by(MIB as usize) {
            if as_of {
                u.read_as_of(&entry, off, &mut buf, v.replica.as_ref())
                    .map_err(|e| err("as-of read")(e.to_string()))?;
            } else {
                v.replica
                    .read_at(off, &mut buf)
                    .map_err(|e| BenchError::io("live read", e))?;
            }
        }
        Ok(size as f64 / MIB as f64 / t.elapsed().as_secs_f64())
    };
    pass(true)?;
    pass(false)?;
    let as_of = pass(true)?;
    let live = pass(false)?;
    Ok((as_of, live))
}

pub fn run(o: &Opts) -> Result<Report> {
    let mut r = Report::new("undo", o.quick);
    let (size, random_total) = o.pick((1024 * MIB, 128 * MIB), (64 * MIB, 8 * MIB));
    let mut t = Table::new(
        "remote apply throughput, undo journal off and on (the remote's applier, real files, one fdatasync per 64 operations)",
        &["workload", "undo", "MiB", "s", "MiB/s", "journal on disk", "on / off"],
    );
    let mut runs = Vec::new();
    let mut ratios = Vec::new();
    for (workload, target, goal) in [("random", "≥ 0.5", 0.5), ("sequential", "≥ 0.95", 0.95)] {
        let mut pair = Vec::new();
        for undo in [false, true] {
            eprintln!(
                "undo: {workload}, journal {}",
                if undo { "on" } else { "off" }
            );
            let a = if workload == "random" {
                random_overwrites(size, random_total, undo, o.seed)?
            } else {
                sequential_fresh(size, undo, o.seed)?
            };
            pair.push(a);
        }
        let ratio = pair[1].mib_s / pair[0].mib_s;
        for a in &pair {
            t.row(vec![
                a.workload.to_string(),
                if a.undo { "on" } else { "off" }.into(),
                (a.bytes / MIB).to_string(),
                f(a.secs, 2),
                f(a.mib_s, 1),
                format!("{} MiB", f(a.undo_disk_bytes as f64 / MIB as f64, 1)),
                if a.undo { f(ratio, 2) } else { String::new() },
            ]);
        }
        r.target(Target::new(
            format!(
                "apply throughput with the journal / without: {}",
                pair[0].workload
            ),
            target,
            f(ratio, 2),
            ratio >= goal,
        ));
        ratios.push((pair[0].workload, ratio));
        runs.extend(pair);
    }
    r.tables.push(t);
    eprintln!("undo: as-of reads");
    let (as_of, live) = as_of_reads(o.pick(256 * MIB, 32 * MIB), o.seed)?;
    let read_ratio = as_of / live;
    let mut t = Table::new(
        "reading the volume as of a checkpoint (a quarter of its blocks overwritten since) vs live, 1 MiB reads, page cache warm",
        &["read", "MiB/s"],
    );
    t.row(vec!["as of the checkpoint".into(), f(as_of, 1)]);
    t.row(vec!["live replica".into(), f(live, 1)]);
    r.tables.push(t);
    r.target(Target::new(
        "as-of read throughput / live read throughput",
        "≥ 0.8",
        f(read_ratio, 2),
        read_ratio >= 0.8,
    ));
    r.note(
        "The journal costs the remote only: the primary answers at `buffered` once the record \
         is in its nvbuf, before the remote sees it, so `buffered` latency is unchanged unless \
         the remote falls behind by more than the nvbuf holds (then the apply throughput above \
         is what bounds it).",
    );
    bars(
        &o.out.join("undo"),
        &Bars {
            title: "undo journal: apply throughput on / off, as-of reads / live".into(),
            y_desc: "ratio".into(),
            categories: vec![
                "random 4 KiB overwrites".into(),
                "sequential, fresh volume".into(),
                "as-of reads".into(),
            ],
            series: vec![(
                "journal on / off".into(),
                vec![Some(ratios[0].1), Some(ratios[1].1), Some(read_ratio)],
            )],
            guides: vec![
                (0.5, "random target 0.5".into()),
                (0.95, "sequential target 0.95".into()),
            ],
            log_y: false,
            digits: Some(2),
        },
    )?;
    r.data = json!({ "apply": runs, "as_of_mib_s": as_of, "live_mib_s": live });
    Ok(r)
}
