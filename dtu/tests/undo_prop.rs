//! Property: for random writes, trims (of data and of zeros), checkpoints,
//! rollbacks, retention, reopens and crashes that tear unsynced saves, on a file replica (holes) or one in
//! memory (no holes, or holes reported to the byte), with block sizes that do and do not divide the
//! volume, every as-of view held equals the test's model of the volume at
//! that checkpoint, and every rollback restores it byte for byte.

use dtu::replica::{FileReplica, MemReplica, Replica, Span};
use dtu::undo::{Catalog, Entry, EraId, Journal, Limits, RollbackStep};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: u64,
        byte: u8,
    },
    Trim {
        off: u64,
        len: u64,
    },
    Checkpoint,
    /// Roll back to the checkpoint this many from the newest (mod held).
    Rollback(usize),
    /// Keep at most this many eras.
    Retain(usize),
    Reopen,
    /// A save appended but never synced, the write never made, then a
    /// crash that keeps `keep` (mod the unsynced bytes + 1) of its bytes.
    Crash {
        off: u64,
        len: u64,
        keep: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u64>(), 1u64..12_000, prop_oneof![Just(0u8), any::<u8>()])
            .prop_map(|(off, len, byte)| Op::Write { off, len, byte }),
        2 => (any::<u64>(), 1u64..20_000).prop_map(|(off, len)| Op::Trim { off, len }),
        3 => Just(Op::Checkpoint),
        1 => (0usize..4).prop_map(Op::Rollback),
        1 => (1usize..4).prop_map(Op::Retain),
        1 => Just(Op::Reopen),
        1 => (any::<u64>(), 1u64..12_000, any::<u64>())
            .prop_map(|(off, len, keep)| Op::Crash { off, len, keep }),
    ]
}

/// A replica in memory that reports every run of 7 or more zero bytes as
/// a hole, at byte precision (a file system reports whole pages): the
/// journal must only take whole blocks inside holes as tombstones.
struct ByteHoles(MemReplica);

impl Replica for ByteHoles {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn trim(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.trim(offset, len)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.0.sync()
    }
    fn spans(&self, offset: u64, len: u64) -> std::io::Result<Vec<Span>> {
        let mut b = vec![0; len as usize];
        self.0.read_at(offset, &mut b)?;
        let mut out: Vec<Span> = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let zero = b[i] == 0;
            let mut j = i + 1;
            while j < b.len() && (b[j] == 0) == zero {
                j += 1;
            }
            let hole = zero && j - i >= 7;
            match out.last_mut() {
                Some(last) if last.hole == hole => last.len += (j - i) as u64,
                _ => out.push(Span {
                    offset: offset + i as u64,
                    len: (j - i) as u64,
                    hole,
                }),
            }
            i = j;
        }
        Ok(out)
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    undo: std::path::PathBuf,
    replica: Box<dyn Replica>,
    journal: Journal,
    catalog: Catalog,
    bs: u64,
    size: u64,
    model: Vec<u8>,
    views: Vec<(EraId, Vec<u8>)>,
    seq: u64,
    time: u64,
}

impl Rig {
    fn check(&self) -> Result<(), TestCaseError> {
        for (era, want) in &self.views {
            let mut got = vec![0u8; self.size as usize];
            // Pieces that start and end inside blocks.
            let mut at = 0usize;
            let mut step = 1usize;
            while at < got.len() {
                let end = (at + step).min(got.len());
                self.journal
                    .read_as_of(*era, at as u64, &mut got[at..end], &*self.replica)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                at = end;
                step = step * 3 + 1;
            }
            prop_assert!(got == *want, "as-of view of era {} differs", era);
        }
        Ok(())
    }

    fn image(&self) -> Vec<u8> {
        let mut b = vec![0; self.size as usize];
        self.replica.read_at(0, &mut b).unwrap();
        b
    }
}

fn run(bs: u64, size: u64, kind: u8, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let replica: Box<dyn Replica> = match kind {
        0 => Box::new(FileReplica::open(&dir.path().join("replica"), size).unwrap()),
        1 => Box::new(MemReplica::new(size as usize)),
        _ => Box::new(ByteHoles(MemReplica::new(size as usize))),
    };
    let undo = dir.path().join("undo");
    let (journal, _) = Journal::open(&undo, bs, size).unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let mut r = Rig {
        _dir: dir,
        undo,
        replica,
        journal,
        catalog,
        bs,
        size,
        model: vec![0; size as usize],
        views: Vec::new(),
        seq: 0,
        time: 1_000_000,
    };
    for op in ops {
        match op {
            Op::Write { off, len, byte } => {
                let off = off % r.size;
                let len = len.min(r.size - off);
                r.seq += 1;
                let data: Vec<u8> = (0..len)
                    .map(|i| {
                        if byte == 0 {
                            0
                        } else {
                            byte ^ (i as u8) ^ (r.seq as u8)
                        }
                    })
                    .collect();
                r.journal
                    .save_before_write(r.seq, off, len, &*r.replica)
                    .unwrap();
                r.journal.sync().unwrap();
                r.replica.write_at(off, &data).unwrap();
                r.model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            Op::Trim { off, len } => {
                let off = off % r.size;
                let len = len.min(r.size - off);
                r.seq += 1;
                r.journal
                    .save_before_trim(r.seq, off, len, &*r.replica)
                    .unwrap();
                r.journal.sync().unwrap();
                r.replica.trim(off, len).unwrap();
                r.model[off as usize..(off + len) as usize].fill(0);
            }
            Op::Checkpoint => {
                r.seq += 1;
                r.time += 1_000_000;
                let era = r.journal.begin_era(r.seq, r.time).unwrap();
                r.catalog
                    .append(Entry {
                        seq: r.seq,
                        time_us: r.time,
                        kind: 1,
                        label: format!("c{}", r.seq),
                        era,
                    })
                    .unwrap();
                r.views.push((era, r.model.clone()));
            }
            Op::Rollback(back) => {
                if r.views.is_empty() {
                    continue;
                }
                let i = r.views.len() - 1 - back % r.views.len();
                let (era, want) = r.views[i].clone();
                for step in r.journal.rollback_plan(era).unwrap() {
                    match step {
                        RollbackStep::Write { off, data } => {
                            r.replica.write_at(off, &data).unwrap()
                        }
                        RollbackStep::Zero { off, len } => r.replica.trim(off, len).unwrap(),
                    }
                }
                r.replica.sync().unwrap();
                prop_assert!(r.image() == want, "rollback to era {} differs", era);
                let dropped = r.journal.drop_eras_after(era).unwrap();
                prop_assert_eq!(dropped.len(), r.views.len() - 1 - i);
                let seq = r.catalog.by_era(era).unwrap().seq;
                r.catalog.drop_after(seq).unwrap();
                r.views.truncate(i + 1);
                r.model = want;
            }
            Op::Retain(max) => {
                r.journal.set_limits(Limits {
                    max_eras: Some(max),
                    ..Limits::default()
                });
                for d in r.journal.retain(r.time).unwrap() {
                    r.catalog.drop_era(d.era).unwrap().unwrap();
                    prop_assert_eq!(r.views.remove(0).0, d.era, "oldest first");
                }
                prop_assert!(r.views.len() <= max.max(1));
            }
            Op::Crash { off, len, keep } => {
                let Some(era) = r.journal.current_era() else {
                    continue;
                };
                let off = off % r.size;
                let len = len.min(r.size - off);
                let synced = r.journal.stats().eras.last().unwrap().disk_bytes;
                r.seq += 1;
                r.journal
                    .save_before_write(r.seq, off, len, &*r.replica)
                    .unwrap();
                let seg = r.undo.join(format!("era-{era:016x}.undo"));
                let now = std::fs::metadata(&seg).unwrap().len();
                let kept = synced + keep % (now - synced + 1);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&seg)
                    .unwrap()
                    .set_len(kept)
                    .unwrap();
                let (j, report) = Journal::open(&r.undo, r.bs, r.size).unwrap();
                prop_assert!(report.torn.len() <= 1, "{:?}", report);
                prop_assert_eq!(report.eras, r.views.len());
                r.journal = j;
            }
            Op::Reopen => {
                let (j, report) = Journal::open(&r.undo, r.bs, r.size).unwrap();
                prop_assert!(report.torn.is_empty());
                prop_assert_eq!(report.eras, r.views.len());
                r.journal = j;
                r.catalog = Catalog::open(r.catalog.path()).unwrap();
                let report = dtu::undo::reconcile(&mut r.catalog, &mut r.journal).unwrap();
                prop_assert!(report.is_empty(), "{:?}", report);
            }
        }
        r.check()?;
    }
    let stats = r.journal.stats();
    prop_assert_eq!(stats.eras.len(), r.views.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_as_of_view_matches_the_model(
        bs in prop_oneof![Just(512u64), Just(4096u64)],
        size in prop_oneof![Just(65_536u64), 1u64..70_000],
        kind in 0u8..3,
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run(bs, size, kind, ops)?;
    }
}
