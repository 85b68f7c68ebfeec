//! A damaged or truncated nvbuf is loud: records that had been made durable
//! (the host may have been told they were safe) and cannot be recovered are
//! named, the open is refused unless the caller salvages, a salvage keeps
//! the intact prefix and reports the loss once, and an ordinary torn tail
//! after a crash is not mistaken for a loss.

mod nvbuf_common;

use dtu::nvbuf::format::{REC_HEADER_LEN, RING_OFFSET};
use dtu::nvbuf::{MemStore, NvStore, Nvbuf, NvbufConfig, NvbufError, OnLoss};
use nvbuf_common::*;

const SIZE: usize = 4 * MIB;

fn fresh() -> Nvbuf<MemStore> {
    Nvbuf::create_in(
        MemStore::new(SIZE),
        &NvbufConfig::new(VOL).with_size(SIZE as u64),
    )
    .unwrap()
}

/// Ten seqs of 1000 bytes, each synced on its own (answered at `buffered`).
fn ten_synced(nv: &Nvbuf<MemStore>) {
    for seq in 1..=10 {
        let lsn = append_seq(nv, seq, &[1000], None).unwrap();
        nv.sync_to(lsn).unwrap();
    }
}

/// The ring offset of seq `seq`'s first record (1000-byte payloads: each
/// record takes 64 + 1000 bytes).
fn record_at(seq: u64) -> usize {
    RING_OFFSET + (seq as usize - 1) * (REC_HEADER_LEN + 1000)
}

#[test]
fn a_flipped_byte_in_the_middle_refuses_the_open_and_names_the_lost_seqs() {
    let nv = fresh();
    ten_synced(&nv);
    let mut image = nv.store().crash_image();
    image[record_at(4) + REC_HEADER_LEN + 100] ^= 0x40;

    let e = Nvbuf::open_in_with(MemStore::from_image(image.clone()), VOL, OnLoss::Refuse)
        .err()
        .expect("a damaged nvbuf must not open");
    let NvbufError::Lost {
        recovered, loss, ..
    } = &e
    else {
        panic!("wrong error: {e}")
    };
    assert_eq!(*recovered, Some((1, 3)), "{e}");
    assert_eq!(loss.first_seq, 4, "{e}");
    assert_eq!(loss.last_seq, Some(10), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("4..=10") && text.contains("damaged"),
        "{text}"
    );

    // Refusing changed nothing: the same image refuses again.
    assert!(matches!(
        Nvbuf::open_in_with(MemStore::from_image(image.clone()), VOL, OnLoss::Refuse),
        Err(NvbufError::Lost { .. })
    ));

    // Salvage keeps 1..=3, reports the loss once, and the next open is clean.
    let (nv, rec) = Nvbuf::open_in_with(MemStore::from_image(image), VOL, OnLoss::Salvage).unwrap();
    assert_eq!((rec.first_seq, rec.last_seq), (Some(1), Some(3)));
    assert_eq!(rec.loss.as_ref().map(|l| l.first_seq), Some(4));
    assert_eq!(nv.next_seq(), 4);
    let lsn = append_seq(&nv, 4, &[500], None).unwrap();
    nv.sync_to(lsn).unwrap();
    let image = nv.store().crash_image();
    drop(nv);
    let (_, again) = Nvbuf::open_in_with(MemStore::from_image(image), VOL, OnLoss::Refuse).unwrap();
    assert!(again.loss.is_none(), "{:?}", again.loss);
    assert_eq!((again.first_seq, again.last_seq), (Some(1), Some(4)));
}

#[test]
fn a_torn_unsynced_tail_is_not_a_loss() {
    let nv = fresh();
    ten_synced(&nv);
    // Three more appended but never synced; the crash keeps some of their
    // sectors and not others.
    for seq in 11..=13 {
        append_seq(&nv, seq, &[3000], None).unwrap();
    }
    for seed in 0..32 {
        let image = nv.store().crash_image_torn(seed);
        let (_, rec) = Nvbuf::open_in_with(MemStore::from_image(image), VOL, OnLoss::Refuse)
            .unwrap_or_else(|e| panic!("seed {seed}: a torn tail was taken for a loss: {e}"));
        assert!(rec.last_seq.unwrap() >= 10, "seed {seed}: synced seqs lost");
    }
}

#[test]
fn damage_to_the_last_records_is_caught_once_the_superblock_vouches_for_them() {
    let nv = fresh();
    ten_synced(&nv);
    // An idle moment: the superblock records what is durable.
    assert!(nv.checkpoint_if_behind().unwrap());
    assert!(!nv.checkpoint_if_behind().unwrap(), "nothing new to record");
    let mut image = nv.store().crash_image();
    image[record_at(10) + 8] ^= 1;
    let e = Nvbuf::open_in_with(MemStore::from_image(image), VOL, OnLoss::Refuse)
        .err()
        .expect("damage to durable records must not open");
    assert!(
        matches!(&e, NvbufError::Lost { loss, .. } if loss.first_seq == 10),
        "{e}"
    );
}

#[test]
fn a_truncated_file_is_refused_then_salvaged_with_its_intact_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nv");
    let nv = Nvbuf::create(&path, &NvbufConfig::new(VOL).with_size(SIZE as u64)).unwrap();
    ten_synced_file(&nv);
    drop(nv);
    // Cut the file inside seq 6's record.
    let cut = record_at(6) + 10;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    let e = Nvbuf::open_with(&path, VOL, OnLoss::Refuse)
        .err()
        .expect("a truncated nvbuf must not open as if healthy");
    let text = e.to_string();
    assert!(
        text.contains("truncated") && text.contains("1..=5"),
        "the message names the cut and the intact prefix: {text}"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        cut as u64,
        "refusing leaves the file alone"
    );
    let (nv, rec) = Nvbuf::open_with(&path, VOL, OnLoss::Salvage).unwrap();
    assert_eq!((rec.first_seq, rec.last_seq), (Some(1), Some(5)));
    assert!(rec.loss.as_ref().unwrap().cause.contains("truncated"));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE as u64);
    assert_eq!(nv.next_seq(), 6);
    drop(nv);
    let (_, again) = Nvbuf::open_with(&path, VOL, OnLoss::Refuse).unwrap();
    assert!(again.loss.is_none());
}

fn ten_synced_file<S: NvStore>(nv: &Nvbuf<S>) {
    for seq in 1..=10 {
        let lsn = append_seq(nv, seq, &[1000], None).unwrap();
        nv.sync_to(lsn).unwrap();
    }
}
