//! The undo journal on a 16 TiB sparse replica: a few hundred scattered
//! writes across three eras cost RAM and disk in proportion to what they
//! overwrite, not to the volume. Prints the figures the README's "What
//! grows with the volume" row quotes, checks every as-of view of the
//! touched blocks against the test's model, and rolls back to the first
//! checkpoint.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use dtu::replica::{FileReplica, Replica, ReplicaError};
use dtu::undo::{Journal, RollbackStep};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TIB: u64 = 1 << 40;
const BS: u64 = 4096;
const MIB: u64 = 1 << 20;

/// Contents of the touched blocks (the rest of the volume is zeros).
type Model = BTreeMap<u64, Vec<u8>>;

fn write(model: &mut Model, off: u64, data: &[u8]) {
    let mut at = off;
    let end = off + data.len() as u64;
    while at < end {
        let b = at / BS;
        let block = model.entry(b).or_insert_with(|| vec![0; BS as usize]);
        let from = (at - b * BS) as usize;
        let n = ((b + 1) * BS).min(end) - at;
        let src = (at - off) as usize;
        block[from..from + n as usize].copy_from_slice(&data[src..src + n as usize]);
        at += n;
    }
}

#[test]
fn sixteen_tib_sparse_replica_costs_what_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica");
    // ext4 with 4 KiB blocks caps a file at 16 TiB - 4 KiB: take that if
    // 16 TiB itself is refused.
    let (replica, size) = match FileReplica::open(&path, 16 * TIB) {
        Ok(r) => (r, 16 * TIB),
        Err(ReplicaError::Open { source, .. }) if source.raw_os_error() == Some(libc::EFBIG) => {
            std::fs::remove_file(&path).unwrap();
            let size = 16 * TIB - BS;
            eprintln!("this file system refuses a 16 TiB file; using 16 TiB - 4 KiB");
            (FileReplica::open(&path, size).unwrap(), size)
        }
        Err(e) => panic!("{e}"),
    };
    let undo = dir.path().join("undo");
    let (mut journal, _) = Journal::open(&undo, BS, size).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let mut model = Model::new();
    let mut seq = 0u64;
    // Data before the first checkpoint: 200 scattered 64 KiB writes.
    let mut written = Vec::new();
    for _ in 0..200 {
        let off = rng.gen_range(0..size / BS - 16) * BS;
        let data = vec![rng.gen_range(1..=255u8); 64 << 10];
        seq += 1;
        replica.write_at(off, &data).unwrap();
        write(&mut model, off, &data);
        written.push(off);
    }
    let mut views: Vec<(u64, Model)> = Vec::new();
    let start = std::time::Instant::now();
    let mut writes = 0;
    for era in 0..3u64 {
        seq += 1;
        let id = journal.begin_era(seq, 1_000_000 * (era + 1)).unwrap();
        views.push((id, model.clone()));
        for i in 0..300 {
            // Half over earlier data (saved as data), half anywhere
            // (mostly never written: tombstones), unaligned, 1 B to 32 KiB.
            let off = if i % 2 == 0 {
                written[rng.gen_range(0..written.len())] + rng.gen_range(0..64 << 10)
            } else {
                rng.gen_range(0..size - (256 << 10))
            };
            let len = rng.gen_range(1..=32u64 << 10).min(size - off);
            let data: Vec<u8> = (0..len).map(|j| (j as u8) ^ (seq as u8) | 1).collect();
            seq += 1;
            journal.save_before_write(seq, off, len, &replica).unwrap();
            if i % 16 == 15 {
                journal.sync().unwrap();
            }
            replica.write_at(off, &data).unwrap();
            write(&mut model, off, &data);
            writes += 1;
        }
        journal.sync().unwrap();
        // A trim of 1 GiB, mostly holes.
        let off = rng.gen_range(0..size / BS - (1 << 18)) * BS;
        seq += 1;
        journal
            .save_before_trim(seq, off, 1 << 30, &replica)
            .unwrap();
        journal.sync().unwrap();
        replica.trim(off, 1 << 30).unwrap();
        for b in off / BS..(off + (1 << 30)) / BS {
            if let Some(block) = model.get_mut(&b) {
                block.fill(0);
            }
        }
    }
    let save_time = start.elapsed();

    let stats = journal.stats();
    let disk_alloc: u64 = std::fs::read_dir(&undo)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum();
    let saved_data: u64 = stats.eras.iter().map(|e| e.data_blocks * BS).sum();
    let extents: usize = stats.eras.iter().map(|e| e.extents).sum();
    eprintln!(
        "{:.4} TiB volume ({} bytes), {writes} writes + 3 trims of 1 GiB in 3 eras, saved in {save_time:.2?}:",
        size as f64 / TIB as f64,
        size
    );
    for e in &stats.eras {
        eprintln!(
            "  era {}: {} data blocks, {} tombstone blocks, {} extents, {} KiB on disk, {} KiB index",
            e.era,
            e.data_blocks,
            e.zero_blocks,
            e.extents,
            e.disk_bytes / 1024,
            e.index_bytes / 1024
        );
    }
    eprintln!(
        "  total: {extents} extents, RAM (index) {} KiB, journal {} KiB in files ({} KiB allocated) for {} KiB of old data",
        stats.index_bytes / 1024,
        stats.disk_bytes / 1024,
        disk_alloc / 1024,
        saved_data / 1024
    );
    assert!(
        stats.index_bytes < 16 * MIB,
        "index {} bytes",
        stats.index_bytes
    );
    assert!(
        stats.disk_bytes < 16 * MIB,
        "journal {} bytes",
        stats.disk_bytes
    );
    assert!(disk_alloc < 16 * MIB, "allocated {disk_alloc} bytes");
    // Headers cost little beside the data: under 2 % of it here.
    assert!(stats.disk_bytes < saved_data + saved_data / 50 + 3 * 64);

    // Every touched block, as of every checkpoint, equals the model.
    let touched: Vec<u64> = model.keys().copied().collect();
    let mut buf = vec![0u8; BS as usize];
    for (era, want) in &views {
        for &b in &touched {
            let len = (size - b * BS).min(BS) as usize;
            journal
                .read_as_of(*era, b * BS, &mut buf[..len], &replica)
                .unwrap();
            let zeros = vec![0u8; BS as usize];
            let w = want.get(&b).unwrap_or(&zeros);
            assert!(buf[..len] == w[..len], "era {era} block {b}");
        }
    }
    // Roll back to the first checkpoint.
    let plan = journal.rollback_plan(views[0].0).unwrap();
    let (mut w, mut z) = (0u64, 0u64);
    for step in &plan {
        match step {
            RollbackStep::Write { off, data } => {
                replica.write_at(*off, data).unwrap();
                w += data.len() as u64;
            }
            RollbackStep::Zero { off, len } => {
                replica.trim(*off, *len).unwrap();
                z += len;
            }
        }
    }
    replica.sync().unwrap();
    eprintln!(
        "  rollback to era {}: {} steps, {} KiB written, {} MiB zeroed",
        views[0].0,
        plan.len(),
        w / 1024,
        z >> 20
    );
    for &b in &touched {
        let len = (size - b * BS).min(BS) as usize;
        replica.read_at(b * BS, &mut buf[..len]).unwrap();
        let zeros = vec![0u8; BS as usize];
        let want = views[0].1.get(&b).unwrap_or(&zeros);
        assert!(buf[..len] == want[..len], "block {b} after rollback");
    }
}
