//! nvbuf behaviour on a real file and in memory: append / read / release /
//! reopen, wrap-around, refusals (other volume, unknown version, second open,
//! existing file, bad sizes), input validation, full-ring backpressure and the
//! deadline path, group commit accounting and flush failures.

mod nvbuf_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dtu::nvbuf::{MemStore, Nvbuf, NvbufConfig, NvbufError, OnLoss, Wait};
use nvbuf_common::*;

fn cfg(size: usize) -> NvbufConfig {
    NvbufConfig::new(VOL).with_size(size as u64)
}

#[test]
fn append_read_release_reopen_on_a_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nv");
    {
        let nv = Nvbuf::create(&path, &cfg(4 * MIB)).unwrap();
        assert_eq!(nv.epoch(), 1);
        assert_eq!(nv.next_seq(), 1);
        assert_eq!(nv.durable_seq(), None);
        let mut lsn = 0;
        for seq in 1..=50u64 {
            let sizes: Vec<usize> = (0..(seq % 3 + 1))
                .map(|c| (seq as usize * 97 + c as usize * 13) % 5000)
                .collect();
            lsn = append_seq(&nv, seq, &sizes, None).unwrap();
        }
        assert_eq!(nv.durable_seq(), None);
        nv.sync_to(lsn).unwrap();
        assert_eq!(nv.durable_lsn(), lsn);
        assert_eq!(nv.durable_seq(), Some(50));
        let r = nv.read_seq(17).unwrap();
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|(h, p)| h.seq == 17 && genuine(h, p)));
        nv.release_through(20);
        assert!(matches!(
            nv.read_seq(20),
            Err(NvbufError::NotFound { seq: 20 })
        ));
        assert_eq!(nv.first_unreleased_seq(), 21);
        let st = nv.stats(Instant::now());
        assert_eq!(st.unreleased_seqs, 30);
        assert!(st.fill_pct > 0.0 && st.fill_pct < 100.0);
        assert!(st.oldest_unreleased_age.is_some());
        nv.checkpoint().unwrap();
    }
    let (nv, rec) = Nvbuf::open(&path, VOL).unwrap();
    assert_eq!(rec.previous_epoch, 1);
    assert_eq!(nv.epoch(), 2);
    assert_eq!(rec.stopped, None, "{}", rec.end);
    assert_eq!(check_prefix(&rec.records), (21..=50).collect::<Vec<_>>());
    assert_eq!((rec.first_seq, rec.last_seq), (Some(21), Some(50)));
    assert_eq!(nv.next_seq(), 51);
    assert_eq!(nv.durable_seq(), Some(50));
    // Appends continue with the new epoch and survive another reopen.
    let lsn = append_seq(&nv, 51, &[100, 200], None).unwrap();
    nv.sync_to(lsn).unwrap();
    drop(nv);
    let (nv, rec) = Nvbuf::open(&path, VOL).unwrap();
    let seqs = check_prefix(&rec.records);
    assert_eq!(seqs.first(), Some(&21));
    assert_eq!(seqs.last(), Some(&51));
    assert_eq!(rec.records.last().unwrap().0.epoch, 2);
    assert_eq!(nv.epoch(), 3);
}

#[test]
fn wrap_around_many_laps_in_memory() {
    let nv = mem_nvbuf(4 * MIB);
    let ring = nv.capacity();
    let mut written = 0u64;
    let mut seq = 1;
    while written < 5 * ring {
        let sizes = [
            (seq as usize * 7919) % 60_000,
            (seq as usize * 104_729) % 3_000,
        ];
        let lsn = append_seq(&nv, seq, &sizes, Some(Instant::now())).unwrap();
        nv.sync_to(lsn).unwrap();
        written += sizes.iter().map(|s| *s as u64 + 64).sum::<u64>();
        if seq > 20 {
            nv.release_through(seq - 20);
        }
        let back = nv.read_seq(seq).unwrap();
        assert!(back.iter().all(|(h, p)| genuine(h, p)));
        seq += 1;
    }
    nv.checkpoint().unwrap();
    let (_nv, rec) = Nvbuf::open_in(nv.into_store(), VOL).unwrap();
    assert_eq!(rec.stopped, None, "{}", rec.end);
    assert_eq!(
        check_prefix(&rec.records),
        (seq - 20..seq).collect::<Vec<_>>()
    );
}

#[test]
fn refuses_other_volume_unknown_version_second_open_and_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nv");
    let nv = Nvbuf::create(&path, &cfg(4 * MIB)).unwrap();

    // A second DTU on the same file, while the first has it open.
    let e = Nvbuf::open(&path, VOL)
        .err()
        .expect("second open must fail");
    assert!(matches!(e, NvbufError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("already in use"), "{e}");
    let e = Nvbuf::create(&path, &cfg(4 * MIB)).err().unwrap();
    assert!(matches!(e, NvbufError::Locked { .. }), "{e}");
    drop(nv);

    let e = Nvbuf::create(&path, &cfg(4 * MIB)).err().unwrap();
    assert!(matches!(e, NvbufError::Exists { .. }), "{e}");
    assert!(e.to_string().contains(&hex::encode(VOL)), "{e}");

    let other = [9u8; 16];
    let e = Nvbuf::open(&path, other).err().unwrap();
    assert!(matches!(e, NvbufError::WrongVolume { .. }), "{e}");
    assert!(e.to_string().contains(&hex::encode(other)), "{e}");

    // A well-formed superblock of a future format version.
    let mut bytes = std::fs::read(&path).unwrap();
    for slot in [0usize, 4096] {
        let b = &mut bytes[slot..slot + 128];
        if &b[0..8] != b"DTUNVBUF" {
            continue;
        }
        b[8..12].copy_from_slice(&7u32.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&b[0..12]);
        h.update(&b[16..128]);
        let crc = h.finalize();
        b[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    let v7 = dir.path().join("v7");
    std::fs::write(&v7, &bytes).unwrap();
    let e = Nvbuf::open(&v7, VOL).err().unwrap();
    assert!(
        matches!(
            e,
            NvbufError::UnknownVersion {
                found: 7,
                supported: 2
            }
        ),
        "{e}"
    );

    // Overwrite on request gives a fresh, empty nvbuf.
    let mut c = cfg(4 * MIB);
    c.overwrite = true;
    let nv = Nvbuf::create(&v7, &c).unwrap();
    assert_eq!(nv.next_seq(), 1);
    drop(nv);

    let e = Nvbuf::create(&dir.path().join("tiny"), &cfg(MIB))
        .err()
        .unwrap();
    assert!(matches!(e, NvbufError::TooSmall { .. }), "{e}");

    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0xa5u8; 4 * MIB]).unwrap();
    let e = Nvbuf::open(&junk, VOL).err().unwrap();
    assert!(matches!(e, NvbufError::NoValidSuperblock { .. }), "{e}");
    let e = Nvbuf::create(&junk, &cfg(4 * MIB)).err().unwrap();
    assert!(e.to_string().contains("not empty"), "{e}");

    let cut = dir.path().join("cut");
    std::fs::write(&cut, &std::fs::read(&path).unwrap()[..3 * MIB]).unwrap();
    let e = Nvbuf::open_with(&cut, VOL, OnLoss::Refuse).err().unwrap();
    assert!(
        matches!(e, NvbufError::Lost { .. }) && e.to_string().contains("truncated"),
        "{e}"
    );
    let grown = dir.path().join("grown");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0; 4096]);
    std::fs::write(&grown, &bytes).unwrap();
    let e = Nvbuf::open(&grown, VOL).err().unwrap();
    assert!(matches!(e, NvbufError::SizeMismatch { .. }), "{e}");

    // open_or_create creates once, then opens.
    let oc = dir.path().join("oc");
    let (nv, rec) = Nvbuf::open_or_create(&oc, &cfg(4 * MIB)).unwrap();
    assert!(rec.records.is_empty());
    append_seq(&nv, 1, &[10], None)
        .and_then(|l| nv.sync_to(l))
        .unwrap();
    drop(nv);
    let (nv, rec) = Nvbuf::open_or_create(&oc, &cfg(4 * MIB)).unwrap();
    assert_eq!(check_prefix(&rec.records), vec![1]);
    assert_eq!(nv.epoch(), 2);
}

#[test]
fn validates_appends() {
    let nv = mem_nvbuf(4 * MIB);
    let e = nv.epoch();
    let err = |r: Result<u64, NvbufError>| r.expect_err("must fail");
    assert!(matches!(
        err(nv.append(&header(2, 0, 1, e, 1), b"x", Instant::now(), Wait::Forever)),
        NvbufError::OutOfOrder { seq: 2, .. }
    ));
    assert!(matches!(
        err(nv.append(
            &header(1, 0, 1, e + 1, 1),
            b"x",
            Instant::now(),
            Wait::Forever
        )),
        NvbufError::WrongEpoch { .. }
    ));
    assert!(matches!(
        err(nv.append(&header(1, 0, 0, e, 1), b"x", Instant::now(), Wait::Forever)),
        NvbufError::InvalidHeader(_)
    ));
    assert!(matches!(
        err(nv.append(&header(1, 2, 2, e, 1), b"x", Instant::now(), Wait::Forever)),
        NvbufError::InvalidHeader(_)
    ));
    let big = vec![0u8; nv.max_payload() + 1];
    assert!(matches!(
        err(nv.append(&header(1, 0, 1, e, 1), &big, Instant::now(), Wait::Forever)),
        NvbufError::TooLarge { .. }
    ));
    // Mid-seq: only the next chunk of the same seq, with the same count.
    nv.append(&header(1, 0, 3, e, 1), b"a", Instant::now(), Wait::Forever)
        .unwrap();
    assert!(matches!(
        err(nv.append(&header(2, 0, 1, e, 1), b"x", Instant::now(), Wait::Forever)),
        NvbufError::OutOfOrder { .. }
    ));
    assert!(matches!(
        err(nv.append(&header(1, 2, 3, e, 1), b"x", Instant::now(), Wait::Forever)),
        NvbufError::OutOfOrder { .. }
    ));
    assert!(matches!(
        err(nv.append(&header(1, 1, 4, e, 1), b"x", Instant::now(), Wait::Forever)),
        NvbufError::InvalidHeader(_)
    ));
    nv.append(&header(1, 1, 3, e, 1), b"b", Instant::now(), Wait::Forever)
        .unwrap();
    // A release cannot free a seq that is not fully appended.
    nv.release_through(1);
    assert_eq!(nv.read_seq(1).unwrap().len(), 2);
    let lsn = nv
        .append(&header(1, 2, 3, e, 1), b"c", Instant::now(), Wait::Forever)
        .unwrap();
    assert!(matches!(
        nv.sync_to(lsn + 8),
        Err(NvbufError::BeyondHead { .. })
    ));
    nv.sync_to(lsn).unwrap();
    assert_eq!(nv.next_seq(), 2);
    // The largest allowed record fits even when the ring is otherwise empty.
    nv.release_through(1);
    let max = nv.max_payload();
    for seq in 2..6 {
        let l = append_seq(&nv, seq, &[max], Some(Instant::now())).unwrap();
        nv.sync_to(l).unwrap();
        nv.release_through(seq);
    }
}

#[test]
fn full_ring_blocks_writers_until_release_and_deadline_returns_full() {
    let nv = Arc::new(mem_nvbuf(4 * MIB));
    let mut seq = 1;
    loop {
        match append_seq(&nv, seq, &[64 * 1024], Some(Instant::now())) {
            Ok(_) => seq += 1,
            Err(NvbufError::Full {
                needed,
                used,
                capacity,
            }) => {
                assert!(
                    used + needed > capacity - 128 * 1024,
                    "{used} {needed} {capacity}"
                );
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(seq < 1000, "ring never filled");
    }
    let stats = nv.stats(Instant::now());
    assert!(stats.fill_pct > 95.0, "{}", stats.fill_pct);
    assert_eq!(stats.full_waits, 1);

    // Deadline path: waits at least until the deadline, then Full.
    let t = Instant::now();
    let e = append_seq(&nv, seq, &[64 * 1024], Some(t + Duration::from_millis(150)))
        .err()
        .unwrap();
    assert!(matches!(e, NvbufError::Full { .. }), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert!(e.to_string().contains("full"));

    // Blocking path: two writers wait; nothing proceeds without a release.
    // Writers report on a channel so that a writer stuck for good fails the
    // test within a bound instead of hanging it.
    let done = Arc::new(AtomicBool::new(false));
    let order = Arc::new(Mutex::new(seq));
    let (tx, rx) = std::sync::mpsc::channel();
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let nv = nv.clone();
            let order = order.clone();
            let done = done.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut next = order.lock().unwrap();
                let s = *next;
                let l = append_seq(&nv, s, &[64 * 1024], None).unwrap();
                *next += 1;
                drop(next);
                nv.sync_to(l).unwrap();
                done.store(true, Ordering::SeqCst);
                let _ = tx.send(s);
            })
        })
        .collect();
    let t = Instant::now();
    while nv.stats(Instant::now()).waiting_appenders == 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "writer never waited");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !done.load(Ordering::SeqCst),
        "a writer proceeded on a full ring"
    );
    assert_eq!(nv.stats(Instant::now()).waiting_appenders, 1);
    nv.release_through(3);
    let mut got: Vec<u64> = (0..2)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("writers did not proceed after the release")
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    got.sort();
    assert_eq!(got, vec![seq, seq + 1]);
    let st = nv.stats(Instant::now());
    assert_eq!(st.waiting_appenders, 0);
    assert!(st.full_waits >= 3);
    assert_eq!(nv.durable_seq(), Some(seq + 1));
}

#[test]
fn group_commit_accounts_every_record_once() {
    let nv = Arc::new(mem_nvbuf(16 * MIB));
    let order = Arc::new(Mutex::new(()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let nv = nv.clone();
            let order = order.clone();
            std::thread::spawn(move || {
                for i in 0..200usize {
                    let lsn = {
                        let _g = order.lock().unwrap();
                        let s = nv.next_seq();
                        append_seq(&nv, s, &[(t * 1000 + i) % 3000 + 1], None).unwrap()
                    };
                    nv.sync_to(lsn).unwrap();
                    assert!(nv.durable_lsn() >= lsn);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = nv.stats(Instant::now());
    assert_eq!(st.appended_records, 1600);
    assert_eq!(st.flushed_records, 1600);
    assert!(st.flushes >= 1 && st.flushes <= 1600);
    assert_eq!(nv.durable_seq(), Some(1600));
    assert!(st.records_per_flush() >= 1.0);
}

#[test]
fn failed_flush_is_reported_and_retried() {
    let nv = mem_nvbuf(4 * MIB);
    let lsn = append_seq(&nv, 1, &[100], None).unwrap();
    nv.store().set_fail_flushes(true);
    let e = nv.sync_to(lsn).err().unwrap();
    assert!(matches!(e, NvbufError::Io { .. }), "{e}");
    assert_eq!(nv.durable_seq(), None);
    assert!(nv.store().crash_image() != nv.store().working_image());
    nv.store().set_fail_flushes(false);
    nv.sync_to(lsn).unwrap();
    assert_eq!(nv.durable_seq(), Some(1));
    let (_nv, rec) = Nvbuf::open_in(MemStore::from_image(nv.store().crash_image()), VOL).unwrap();
    assert_eq!(check_prefix(&rec.records), vec![1]);
}

/// A store that offers no detached flusher: the nvbuf then flushes under the
/// store's read lock. Same results, appends just wait for flushes.
struct NoDetachedFlush(MemStore);

impl dtu::nvbuf::NvStore for NoDetachedFlush {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn read(&self, off: usize, buf: &mut [u8]) {
        self.0.read(off, buf)
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        self.0.write(off, data)
    }
    fn flush_range(&self, off: usize, len: usize) -> std::io::Result<()> {
        self.0.flush_range(off, len)
    }
}

#[test]
fn store_without_detached_flusher_works_the_same() {
    use dtu::nvbuf::NvStore;
    let nv =
        Arc::new(Nvbuf::create_in(NoDetachedFlush(MemStore::new(4 * MIB)), &cfg(4 * MIB)).unwrap());
    assert!(nv.store().flusher().is_none());
    let order = Arc::new(Mutex::new(()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (nv, order) = (nv.clone(), order.clone());
            std::thread::spawn(move || {
                for i in 0..50usize {
                    let lsn = {
                        let _g = order.lock().unwrap();
                        let s = nv.next_seq();
                        append_seq(&nv, s, &[i * 37 % 2000, 10], None).unwrap()
                    };
                    nv.sync_to(lsn).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(nv.durable_seq(), Some(200));
    let img = nv.store().0.crash_image();
    let (_nv, rec) = Nvbuf::open_in(MemStore::from_image(img), VOL).unwrap();
    assert_eq!(check_prefix(&rec.records), (1..=200).collect::<Vec<_>>());
}

#[test]
fn a_damaged_newer_superblock_falls_back_to_the_older_one() {
    let nv = mem_nvbuf(4 * MIB);
    for seq in 1..=30 {
        let l = append_seq(&nv, seq, &[1000], None).unwrap();
        nv.sync_to(l).unwrap();
        if seq % 10 == 0 {
            nv.release_through(seq - 5);
            nv.checkpoint().unwrap();
        }
    }
    let mut img = nv.store().crash_image();
    // Find the newer slot (higher generation, bytes 40..48) and tear it.
    let gen = |b: &[u8]| u64::from_le_bytes(b[40..48].try_into().unwrap());
    let newer = if gen(&img[0..128]) > gen(&img[4096..4224]) {
        0
    } else {
        4096
    };
    img[newer + 70] ^= 0x10;
    let (_nv, rec) = Nvbuf::open_in(MemStore::from_image(img.clone()), VOL).unwrap();
    let seqs = check_prefix(&rec.records);
    assert_eq!(seqs.last(), Some(&30));
    assert!(seqs.first().unwrap() <= &26, "{seqs:?}");
    // Both slots torn: a clear error.
    img[(4096 - newer) + 70] ^= 0x10;
    let e = Nvbuf::open_in(MemStore::from_image(img), VOL)
        .err()
        .unwrap();
    assert!(matches!(e, NvbufError::NoValidSuperblock { .. }), "{e}");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
}
