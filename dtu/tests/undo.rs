//! The remote's undo journal and checkpoint catalog on real files: the
//! seed's t3/t5/t9/t14 rule, as-of views across eras against images kept by
//! the test, rollback byte for byte, trims and tombstones, a torn last
//! record, a damaged early record, retention oldest first, and reconcile
//! after crashes between the journal and the catalog.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use dtu::replica::{FileReplica, Replica};
use dtu::undo::{
    reconcile, Catalog, CatalogError, Entry, EraId, Journal, Limits, RollbackStep, UndoError,
};

const BS: u64 = 4096;
const SIZE: u64 = 1 << 20;
const SEC: u64 = 1_000_000;
/// 2026-12-02 00:00:00 UTC, in µs.
const T0: u64 = 1_796_169_600 * SEC;

/// A replica on a file, its journal and catalog, and the test's own image
/// of the volume at every checkpoint.
struct Rig {
    dir: tempfile::TempDir,
    replica: FileReplica,
    journal: Journal,
    catalog: Catalog,
    model: Vec<u8>,
    views: Vec<(EraId, Vec<u8>)>,
    seq: u64,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let replica = FileReplica::open(&dir.path().join("replica"), SIZE).unwrap();
        let (journal, report) = Journal::open(&dir.path().join("undo"), BS, SIZE).unwrap();
        assert_eq!(report.eras, 0);
        let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
        Rig {
            dir,
            replica,
            journal,
            catalog,
            model: vec![0; SIZE as usize],
            views: Vec::new(),
            seq: 0,
        }
    }

    fn undo_dir(&self) -> PathBuf {
        self.dir.path().join("undo")
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        self.seq += 1;
        self.journal
            .save_before_write(self.seq, off, data.len() as u64, &self.replica)
            .unwrap();
        self.journal.sync().unwrap();
        self.replica.write_at(off, data).unwrap();
        self.model[off as usize..off as usize + data.len()].copy_from_slice(data);
    }

    fn fill(&mut self, off: u64, len: usize, byte: u8) {
        self.write(off, &vec![byte; len]);
    }

    fn trim(&mut self, off: u64, len: u64) {
        self.seq += 1;
        self.journal
            .save_before_trim(self.seq, off, len, &self.replica)
            .unwrap();
        self.journal.sync().unwrap();
        self.replica.trim(off, len).unwrap();
        self.model[off as usize..(off + len) as usize].fill(0);
    }

    fn checkpoint(&mut self, time_us: u64, label: &str) -> EraId {
        self.seq += 1;
        let era = self.journal.begin_era(self.seq, time_us).unwrap();
        self.catalog
            .append(Entry {
                seq: self.seq,
                time_us,
                kind: 0,
                label: label.into(),
                era,
            })
            .unwrap();
        self.views.push((era, self.model.clone()));
        era
    }

    fn as_of(&self, era: EraId) -> Vec<u8> {
        as_of(&self.journal, &self.replica, era)
    }

    fn image(&self) -> Vec<u8> {
        let mut b = vec![0; SIZE as usize];
        self.replica.read_at(0, &mut b).unwrap();
        b
    }

    fn check_views(&self) {
        for (era, want) in &self.views {
            assert!(self.as_of(*era) == *want, "as-of view of era {era} differs");
        }
    }
}

/// The whole volume as of `era`, read in odd-sized pieces so that reads
/// start and end inside blocks.
fn as_of(journal: &Journal, replica: &FileReplica, era: EraId) -> Vec<u8> {
    let mut out = vec![0; SIZE as usize];
    let mut at = 0;
    for piece in [1usize, 4095, 7000, 100_000].iter().cycle() {
        if at >= out.len() {
            break;
        }
        let end = (at + piece).min(out.len());
        journal
            .read_as_of(era, at as u64, &mut out[at..end], replica)
            .unwrap();
        at = end;
    }
    out
}

fn apply(replica: &FileReplica, plan: &[RollbackStep]) {
    for step in plan {
        match step {
            RollbackStep::Write { off, data } => replica.write_at(*off, data).unwrap(),
            RollbackStep::Zero { off, len } => replica.trim(*off, *len).unwrap(),
        }
    }
    replica.sync().unwrap();
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8) | 1)
        .collect()
}

/// The seed's example: checkpoints at t3, t5, t9 and t14 with writes and
/// trims between; t8 shows t5, t4 shows t3, t15 shows t14, t2 is refused
/// naming the oldest point held.
#[test]
fn t3_t5_t9_t14_rule_with_trims_between() {
    let mut r = Rig::new();
    r.fill(0, 20_000, 1);
    let e3 = r.checkpoint(T0 + 3 * SEC, "t3");
    r.fill(4096, 8192, 2);
    r.trim(16_384, 4096);
    let e5 = r.checkpoint(T0 + 5 * SEC, "t5");
    r.trim(0, 8192);
    r.fill(100_000, 3, 3);
    let e9 = r.checkpoint(T0 + 9 * SEC, "t9");
    r.fill(6000, 50_000, 4);
    r.trim(200_000, 300_000);
    let e14 = r.checkpoint(T0 + 14 * SEC, "t14");
    r.fill(0, 4096, 5);
    r.check_views();

    let pick = |t: u64| r.catalog.at_or_before(T0 + t * SEC).map(|e| e.era);
    assert_eq!(pick(8).unwrap(), e5);
    assert_eq!(pick(4).unwrap(), e3);
    assert_eq!(pick(15).unwrap(), e14);
    assert_eq!(pick(9).unwrap(), e9, "exactly at a checkpoint gives it");
    let err = r.catalog.at_or_before(T0 + 2 * SEC).unwrap_err();
    match &err {
        CatalogError::BeforeOldest { oldest, .. } => assert_eq!(oldest.label, "t3"),
        other => panic!("expected BeforeOldest, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("\"t3\"") && msg.contains("2026-12-02 00:00:03.000000 UTC"),
        "{msg}"
    );
    // The view picked for t8 is the volume at t5.
    let t8 = r.as_of(pick(8).unwrap());
    assert!(t8 == r.views[1].1);
    assert_eq!(r.catalog.by_label("t9").unwrap().era, e9);
    assert!(r.catalog.by_label("t10").is_err());
    // The catalog reads back the same after a reopen.
    let again = Catalog::open(r.catalog.path()).unwrap();
    assert_eq!(again.list(), r.catalog.list());
    assert!(Catalog::open(&r.dir.path().join("none"))
        .unwrap()
        .is_empty());
}

#[test]
fn views_across_three_eras_and_rollback_byte_for_byte() {
    let mut r = Rig::new();
    // Before any checkpoint nothing is saved.
    r.fill(0, SIZE as usize, 9);
    assert_eq!(r.journal.stats().disk_bytes, 0);
    let e1 = r.checkpoint(T0 + SEC, "one");
    r.write(100, &pattern(1, 10_000));
    r.write(5000, &pattern(2, 3)); // saved already this era
    r.trim(65_536, 32_768);
    let e2 = r.checkpoint(T0 + 2 * SEC, "two");
    r.write(0, &pattern(3, 300_000));
    r.write(SIZE - 5, &pattern(4, 5)); // the last block
    let e3 = r.checkpoint(T0 + 3 * SEC, "three");
    r.write(4095, &pattern(5, 2));
    r.trim(0, SIZE);
    r.write(777_777, &pattern(6, 12_345));
    r.check_views();
    let s = r.journal.stats();
    assert_eq!(s.eras.len(), 3);
    assert!(s.eras.iter().all(|e| e.disk_bytes > 64));

    // Reopen: the same views from the files alone.
    let (j, report) = Journal::open(&r.undo_dir(), BS, SIZE).unwrap();
    assert!(report.torn.is_empty(), "{report:?}");
    assert_eq!(report.eras, 3);
    for (era, want) in &r.views {
        assert!(as_of(&j, &r.replica, *era) == *want);
    }
    drop(j);

    // Roll back to the middle checkpoint.
    let plan = r.journal.rollback_plan(e2).unwrap();
    assert!(plan.iter().all(
        |s| matches!(s, RollbackStep::Write { data, .. } if data.len() <= 1 << 20)
            || matches!(s, RollbackStep::Zero { .. })
    ));
    apply(&r.replica, &plan);
    assert!(r.image() == r.views[1].1, "rollback to era 2");
    let dropped = r.journal.drop_eras_after(e2).unwrap();
    assert_eq!(dropped.iter().map(|d| d.era).collect::<Vec<_>>(), vec![e3]);
    let gone = r
        .catalog
        .drop_after(r.catalog.by_era(e2).unwrap().seq)
        .unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].label, "three");
    r.views.truncate(2);
    r.model = r.views[1].1.clone();
    // Era 2 is current again; writes go on and views stay right.
    r.write(50_000, &pattern(7, 70_000));
    r.trim(4096, 4096);
    r.check_views();
    // And all the way back to the first.
    apply(&r.replica, &r.journal.rollback_plan(e1).unwrap());
    assert!(r.image() == r.views[0].1, "rollback to era 1");
    // An unknown era is refused in words.
    let err = r
        .journal
        .read_as_of(99, 0, &mut [0; 8], &r.replica)
        .unwrap_err();
    assert!(matches!(err, UndoError::NoSuchEra { era: 99, .. }), "{err}");
}

#[test]
fn trims_and_zero_blocks_are_tombstones() {
    let mut r = Rig::new();
    let e1 = r.checkpoint(T0, "empty");
    // Writing over never-written blocks saves tombstones only.
    r.fill(0, 256 * 1024, 7);
    let s = r.journal.stats();
    assert_eq!(s.eras[0].data_blocks, 0);
    assert_eq!(s.eras[0].zero_blocks, 64);
    assert_eq!(s.eras[0].extents, 1, "one merged run of tombstones");
    assert!(s.disk_bytes < 64 + 40 * 2, "{} bytes", s.disk_bytes);
    let e2 = r.checkpoint(T0 + SEC, "full");
    // A trim saves what it trims; a write of zeros over data saves the data.
    r.trim(0, 64 * 1024);
    r.fill(64 * 1024, 4096, 0);
    // Writing zeros over zeros costs a tombstone.
    r.fill(512 * 1024, 4096, 0);
    let s = r.journal.stats();
    assert_eq!(s.eras[1].data_blocks, 17);
    assert_eq!(s.eras[1].zero_blocks, 1);
    r.check_views();
    assert!(r.as_of(e1).iter().all(|&b| b == 0));
    apply(&r.replica, &r.journal.rollback_plan(e2).unwrap());
    assert!(r.image() == r.views[1].1);
    apply(&r.replica, &r.journal.rollback_plan(e1).unwrap());
    assert!(r.image().iter().all(|&b| b == 0));
}

/// A crash after a save was appended but before it was synced (so before
/// the replica write): the segment ends inside a record.
#[test]
fn torn_last_record_is_cut_and_reported() {
    let mut r = Rig::new();
    r.fill(0, 200_000, 1);
    r.checkpoint(T0, "a");
    r.fill(0, 50_000, 2);
    r.checkpoint(T0 + SEC, "b");
    r.fill(10_000, 20_000, 3);
    // The crash: a save appended, never synced, the write never happened.
    r.seq += 1;
    r.journal
        .save_before_write(r.seq, 300_000, 40_000, &r.replica)
        .unwrap();
    r.journal
        .save_before_write(r.seq, 150_000, 40_000, &r.replica)
        .unwrap();
    let seg = r.undo_dir().join(format!("era-{:016x}.undo", 2));
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 1000).unwrap();
    drop(f);
    let before = r.journal.stats().eras[1].disk_bytes;
    let (j, report) = Journal::open(&r.undo_dir(), BS, SIZE).unwrap();
    assert_eq!(report.torn.len(), 1, "{report:?}");
    let t = &report.torn[0];
    assert_eq!(t.era, 2);
    assert!(t.offset < before && t.cut_bytes > 0, "{t:?}");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), t.offset);
    r.journal = j;
    r.check_views();
    // Writing goes on after the cut, and a second open finds nothing torn.
    r.fill(150_000, 40_000, 4);
    r.check_views();
    let (_, report) = Journal::open(&r.undo_dir(), BS, SIZE).unwrap();
    assert!(report.torn.is_empty());
    // A tail of garbage that is not a record at all is torn too.
    let f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all_at(&[0xAB; 10], std::fs::metadata(&seg).unwrap().len())
        .unwrap();
    let (_, report) = Journal::open(&r.undo_dir(), BS, SIZE).unwrap();
    assert_eq!(report.torn.len(), 1);
    assert_eq!(report.torn[0].cut_bytes, 10);
}

#[test]
fn damage_before_the_tail_is_a_loud_error() {
    let mut r = Rig::new();
    r.fill(0, 100_000, 1);
    r.checkpoint(T0, "a");
    r.fill(0, 8192, 2);
    r.fill(40_960, 8192, 3);
    r.fill(81_920, 8192, 4);
    let seg = r.undo_dir().join(format!("era-{:016x}.undo", 1));
    // A byte in the first record's data.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, 64 + 40 + 100).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], 64 + 40 + 100).unwrap();
    let err = Journal::open(&r.undo_dir(), BS, SIZE).unwrap_err();
    match &err {
        UndoError::Damaged { path, offset, what } => {
            assert_eq!(path, &seg);
            assert_eq!(*offset, 64);
            assert!(what.contains("checksum"), "{what}");
        }
        other => panic!("expected Damaged, got {other}"),
    }
    assert!(err.to_string().contains("not a torn last write"), "{err}");
    // Repaired, it opens; a record header's bound broken is damage too.
    f.write_all_at(&b, 64 + 40 + 100).unwrap();
    Journal::open(&r.undo_dir(), BS, SIZE).unwrap();
    f.write_all_at(&u32::MAX.to_le_bytes(), 64 + 24).unwrap();
    assert!(matches!(
        Journal::open(&r.undo_dir(), BS, SIZE),
        Err(UndoError::Damaged { .. })
    ));
    // A damaged segment header, another volume's segment: typed errors.
    f.write_all_at(b"X", 0).unwrap();
    let err = Journal::open(&r.undo_dir(), BS, SIZE).unwrap_err();
    assert!(matches!(err, UndoError::BadHeader { .. }), "{err}");
    f.write_all_at(b"D", 0).unwrap();
    f.write_all_at(&[0, 0, 0, 0], 64 + 24).unwrap(); // still bad: blocks 0
    let err = Journal::open(&r.undo_dir(), 512, SIZE).unwrap_err();
    assert!(matches!(err, UndoError::WrongVolume { .. }), "{err}");
    // A damaged catalog names itself.
    let cat = r.catalog.path().to_path_buf();
    let mut bytes = std::fs::read(&cat).unwrap();
    let n = bytes.len();
    bytes[n - 6] ^= 1;
    std::fs::write(&cat, &bytes).unwrap();
    let err = Catalog::open(&cat).unwrap_err();
    assert!(matches!(err, CatalogError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains(&cat.display().to_string()));
}

#[test]
fn retention_drops_the_oldest_eras_first_and_never_the_newest() {
    let mut r = Rig::new();
    r.fill(0, SIZE as usize, 1);
    let mut eras = Vec::new();
    for i in 0..5u8 {
        eras.push(r.checkpoint(T0 + u64::from(i) * 3600 * SEC, &format!("c{i}")));
        r.fill(u64::from(i) * 100_000, 100_000, i + 2);
    }
    let drop_from_catalog = |r: &mut Rig, dropped: &[dtu::undo::DroppedEra]| {
        for d in dropped {
            assert!(r.catalog.drop_era(d.era).unwrap().is_some());
            r.views.retain(|(e, _)| *e != d.era);
        }
    };
    // By count: three generations.
    r.journal.set_limits(Limits {
        max_eras: Some(3),
        ..Limits::default()
    });
    let now = T0 + 5 * 3600 * SEC;
    let dropped = r.journal.retain(now).unwrap();
    assert_eq!(
        dropped.iter().map(|d| d.era).collect::<Vec<_>>(),
        eras[..2].to_vec()
    );
    drop_from_catalog(&mut r, &dropped);
    assert_eq!(r.catalog.oldest().unwrap().label, "c2");
    r.check_views();
    // By age: checkpoints older than 2.5 h go.
    r.journal.set_limits(Limits {
        max_age: Some(Duration::from_secs(9000)),
        ..Limits::default()
    });
    let dropped = r.journal.retain(now).unwrap();
    assert_eq!(
        dropped.iter().map(|d| d.era).collect::<Vec<_>>(),
        vec![eras[2]]
    );
    drop_from_catalog(&mut r, &dropped);
    // By size: a hard limit below what the newest holds keeps the newest;
    // the warning level only warns.
    r.journal.set_limits(Limits {
        warn_bytes: Some(1),
        ..Limits::default()
    });
    assert!(r.journal.over_warning());
    assert!(r.journal.retain(now).unwrap().is_empty());
    r.journal.set_limits(Limits {
        max_bytes: Some(1),
        ..Limits::default()
    });
    assert!(!r.journal.over_warning());
    let dropped = r.journal.retain(now).unwrap();
    assert_eq!(
        dropped.iter().map(|d| d.era).collect::<Vec<_>>(),
        vec![eras[3]]
    );
    drop_from_catalog(&mut r, &dropped);
    assert_eq!(r.journal.eras().len(), 1);
    assert!(r.journal.retain(now + 1_000_000 * SEC).unwrap().is_empty());
    r.check_views();
    assert_eq!(r.catalog.len(), 1);
    // The dropped eras' files are gone.
    let files = std::fs::read_dir(r.undo_dir()).unwrap().count();
    assert_eq!(files, 1);
}

#[test]
fn reconcile_after_crashes_between_journal_and_catalog() {
    let mut r = Rig::new();
    r.fill(0, 100_000, 1);
    let e1 = r.checkpoint(T0, "a");
    r.fill(0, 10_000, 2);
    let e2 = r.checkpoint(T0 + SEC, "b");
    r.fill(0, 20_000, 3);
    // Crash between begin_era and the catalog append: an empty era alone.
    r.seq += 1;
    let orphan = r.journal.begin_era(r.seq, T0 + 2 * SEC).unwrap();
    let report = reconcile(&mut r.catalog, &mut r.journal).unwrap();
    assert_eq!(report.dropped_eras.len(), 1, "{report:?}");
    assert_eq!(report.dropped_eras[0].0.era, orphan);
    assert!(report.dropped_checkpoints.is_empty());
    assert_eq!(r.journal.current_era(), Some(e2));
    r.check_views();
    // Replaying the checkpoint then works, and a replayed begin_era is idempotent.
    let e3 = r.checkpoint(T0 + 3 * SEC, "c");
    assert_eq!(r.journal.begin_era(r.seq, T0 + 3 * SEC).unwrap(), e3);
    assert!(r.journal.begin_era(r.seq - 5, T0).is_err());
    // A write replayed from before the newest checkpoint saves nothing:
    // what its era needed was made durable when the next era began.
    let before = r.journal.stats();
    assert_eq!(
        r.journal
            .save_before_write(r.seq - 1, 0, 65_536, &r.replica)
            .unwrap(),
        0
    );
    assert_eq!(r.journal.stats(), before);
    // Crash after a rollback dropped eras but before the catalog followed:
    // checkpoints whose era is missing at the tail go, older ones stay.
    r.journal.drop_eras_after(e2).unwrap();
    let report = reconcile(&mut r.catalog, &mut r.journal).unwrap();
    assert_eq!(report.dropped_checkpoints.len(), 1, "{report:?}");
    assert_eq!(report.dropped_checkpoints[0].0.label, "c");
    assert_eq!(r.catalog.len(), 2);
    // An era lost from the middle: every older view needed it.
    r.fill(0, 4096, 4);
    r.views.truncate(2);
    let _e4 = r.checkpoint(T0 + 4 * SEC, "d");
    std::fs::remove_file(r.undo_dir().join(format!("era-{e2:016x}.undo"))).unwrap();
    let (j, _) = Journal::open(&r.undo_dir(), BS, SIZE).unwrap();
    r.journal = j;
    let report = reconcile(&mut r.catalog, &mut r.journal).unwrap();
    let labels: Vec<_> = report
        .dropped_checkpoints
        .iter()
        .map(|(c, _)| c.label.as_str())
        .collect();
    assert_eq!(labels, ["a", "b"], "{report:?}");
    assert_eq!(
        report
            .dropped_eras
            .iter()
            .map(|d| d.0.era)
            .collect::<Vec<_>>(),
        vec![e1]
    );
    assert_eq!(r.catalog.list().len(), 1);
    assert_eq!(r.journal.eras().len(), 1);
    r.views.drain(..2);
    r.check_views();
    assert!(reconcile(&mut r.catalog, &mut r.journal)
        .unwrap()
        .is_empty());
    // An era without a checkpoint that holds copies an older view needs
    // (the catalog append failed and applying went on) is kept...
    r.seq += 1;
    let orphan = r.journal.begin_era(r.seq, T0 + 5 * SEC).unwrap();
    r.fill(0, 30_000, 6);
    let report = reconcile(&mut r.catalog, &mut r.journal).unwrap();
    assert_eq!(report.kept_eras.len(), 1, "{report:?}");
    assert_eq!(report.kept_eras[0].0, orphan);
    assert!(report.dropped_eras.is_empty());
    r.check_views();
    // ...until it is the oldest.
    r.catalog.drop_oldest().unwrap().unwrap();
    let report = reconcile(&mut r.catalog, &mut r.journal).unwrap();
    assert_eq!(report.dropped_eras.len(), 2, "{report:?}");
    assert!(r.journal.eras().is_empty());
}

#[test]
fn catalog_refuses_out_of_order_long_labels_and_unknown_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Catalog::open(&dir.path().join("c")).unwrap();
    let e = |seq, time_us, era| Entry {
        seq,
        time_us,
        kind: 3,
        label: "boot".into(),
        era,
    };
    c.append(e(10, 100, 1)).unwrap();
    assert!(matches!(
        c.append(e(9, 200, 2)),
        Err(CatalogError::OutOfOrder { .. })
    ));
    assert!(matches!(
        c.append(e(11, 99, 2)),
        Err(CatalogError::OutOfOrder { .. })
    ));
    assert!(matches!(
        c.append(e(11, 100, 1)),
        Err(CatalogError::OutOfOrder { .. })
    ));
    let mut long = e(11, 100, 2);
    long.label = "x".repeat(257);
    assert!(matches!(
        c.append(long),
        Err(CatalogError::LabelTooLong { .. })
    ));
    let mut kind = e(11, 100, 2);
    kind.kind = 6;
    assert!(matches!(
        c.append(kind),
        Err(CatalogError::Kind { kind: 6 })
    ));
    c.append(e(11, 100, 2)).unwrap();
    assert_eq!(
        c.at_or_before(100).unwrap().seq,
        11,
        "same time: the newest"
    );
    assert_eq!(c.list()[0].kind_name(), "boot");
    assert_eq!(c.drop_oldest().unwrap().unwrap().seq, 10);
    assert_eq!(Catalog::open(c.path()).unwrap().len(), 1);
}

/// A machine crash loses the replica's unsynced writes on both sides of a
/// checkpoint; the primary replays them from the last synced seq. The
/// replayed writes before the checkpoint save nothing, the replayed
/// checkpoint answers its era again, and the view at the checkpoint and the
/// replica come out right.
#[test]
fn replay_after_a_machine_crash_across_a_checkpoint() {
    use dtu::replica::MemReplica;
    let dir = tempfile::tempdir().unwrap();
    let undo = dir.path().join("undo");
    let (mut journal, _) = Journal::open(&undo, BS, SIZE).unwrap();
    let replica = MemReplica::new(SIZE as usize);
    let mut model = vec![0u8; SIZE as usize];
    // (seq, offset, data); seq 10 is the checkpoint.
    let writes: Vec<(u64, u64, Vec<u8>)> = (1..=15u64)
        .filter(|s| *s != 10)
        .map(|s| (s, (s * 37_000) % (SIZE - 50_000), pattern(s as u8, 20_000)))
        .collect();
    let apply_one = |journal: &mut Journal, replica: &MemReplica, w: &(u64, u64, Vec<u8>)| {
        journal
            .save_before_write(w.0, w.1, w.2.len() as u64, replica)
            .unwrap();
        journal.sync().unwrap();
        replica.write_at(w.1, &w.2).unwrap();
    };
    let mut at_checkpoint = Vec::new();
    for w in &writes {
        if w.0 == 11 {
            assert_eq!(journal.begin_era(10, T0).unwrap(), 1);
            at_checkpoint = model.clone();
        }
        apply_one(&mut journal, &replica, w);
        model[w.1 as usize..w.1 as usize + w.2.len()].copy_from_slice(&w.2);
        if w.0 == 5 {
            replica.sync().unwrap(); // the last replica sync: seq 5
        }
    }
    // The machine crash: the replica keeps what was synced; the journal's
    // files (synced before every replica write) survive.
    let replica = MemReplica::from_image(replica.durable_image(), 1);
    let (mut journal, report) = Journal::open(&undo, BS, SIZE).unwrap();
    assert!(report.torn.is_empty());
    let held = journal.stats();
    for w in writes.iter().filter(|w| w.0 > 5) {
        if w.0 == 11 {
            assert_eq!(journal.begin_era(10, T0).unwrap(), 1, "replayed checkpoint");
        }
        apply_one(&mut journal, &replica, w);
    }
    assert_eq!(journal.stats(), held, "the replay saved nothing new");
    assert!(replica.working_image() == model);
    let mut view = vec![0u8; SIZE as usize];
    journal.read_as_of(1, 0, &mut view, &replica).unwrap();
    assert!(view == at_checkpoint, "the view at the checkpoint");
}

/// Every byte of a segment is covered: flipping any one is noticed (a
/// torn tail cut, or a typed error), cutting at any length too; never a
/// panic, never a silent change.
#[test]
fn any_flip_or_cut_of_a_segment_is_noticed() {
    let mut r = Rig::new();
    r.fill(0, 40_000, 1);
    r.checkpoint(T0, "a");
    r.fill(0, 9000, 2); // data
    r.fill(500_000, 5000, 3); // tombstones
    r.trim(30_000, 8000); // data
    let seg = r.undo_dir().join(format!("era-{:016x}.undo", 1));
    let good = std::fs::read(&seg).unwrap();
    let records = Journal::open(&r.undo_dir(), BS, SIZE).unwrap().1.records;
    assert_eq!(records, 3);
    let restore = || std::fs::write(&seg, &good).unwrap();
    // Every byte of the segment header and of each record header, and
    // every 101st byte of the data (each open that cuts a tail syncs).
    let mut headers = vec![false; good.len()];
    headers[..64].fill(true);
    for p in 0..good.len() - 4 {
        if &good[p..p + 4] == b"UNDR" {
            headers[p..p + 40].fill(true);
        }
    }
    let positions: Vec<usize> = (0..good.len())
        .filter(|&at| headers[at] || at % 101 == 0 || at + 1 == good.len())
        .collect();
    assert!(positions.len() > 64 + 3 * 40);
    for &at in &positions {
        let mut bad = good.clone();
        bad[at] ^= 0x01 << (at % 8);
        std::fs::write(&seg, &bad).unwrap();
        match Journal::open(&r.undo_dir(), BS, SIZE) {
            Ok((_, report)) => assert_eq!(report.torn.len(), 1, "flip at {at} unnoticed"),
            Err(
                UndoError::Damaged { .. }
                | UndoError::BadHeader { .. }
                | UndoError::WrongVolume { .. },
            ) => {}
            Err(e) => panic!("flip at {at}: {e}"),
        }
    }
    for &len in &positions {
        std::fs::write(&seg, &good[..len]).unwrap();
        match Journal::open(&r.undo_dir(), BS, SIZE) {
            Ok((_, report)) => assert!(
                len >= 64 && (report.torn.len() == 1 || report.records < 3),
                "cut at {len}"
            ),
            Err(UndoError::BadHeader { .. }) => assert!(len < 64),
            Err(e) => panic!("cut at {len}: {e}"),
        }
    }
    restore();
    r.check_views();
}

/// Descriptors open on the journal's directory (other tests' files are
/// elsewhere, so running in parallel does not disturb the count).
fn fds_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir))
        .count()
}

#[test]
fn one_descriptor_however_many_eras() {
    let mut r = Rig::new();
    r.fill(0, SIZE as usize, 1);
    for i in 0..300u64 {
        r.checkpoint(T0 + i * SEC, &format!("c{i}"));
        r.fill((i * 3001) % (SIZE - 5000), 5000, i as u8 | 1);
    }
    assert_eq!(fds_under(&r.undo_dir()), 1);
    r.check_views();
    assert_eq!(fds_under(&r.undo_dir()), 1, "reads close what they open");
    let (j, report) = Journal::open(&r.undo_dir(), BS, SIZE).unwrap();
    assert_eq!(report.eras, 300);
    r.journal = j;
    assert_eq!(fds_under(&r.undo_dir()), 1);
    // After a rollback the era now current takes appends again.
    let e = r.views[150].0;
    apply(&r.replica, &r.journal.rollback_plan(e).unwrap());
    r.journal.drop_eras_after(e).unwrap();
    r.views.truncate(151);
    r.model = r.views[150].1.clone();
    r.fill(0, 70_000, 0xEE);
    r.check_views();
    assert_eq!(fds_under(&r.undo_dir()), 1);
}
