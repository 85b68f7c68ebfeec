//! Real crash test: a child process (`nvbuf-bench crash-child`) appends to a
//! real mmap'd nvbuf from several threads and prints each seq once `sync_to`
//! returned; the parent SIGKILLs it at a random moment, recovers the file and
//! must find every printed (and not released) seq with the same payload
//! checksum and epoch. Several rounds run on the same file, so each child also
//! starts from a recovery after a kill, and the ring wraps.

mod nvbuf_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dtu::nvbuf::{Nvbuf, NvbufConfig, Seq};
use nvbuf_common::*;
use rand::{Rng, SeedableRng};

/// Kills and reaps the child even when the test fails.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkilled_appender_loses_no_buffered_seq() {
    let seed: u64 = std::env::var("NVBUF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("NVBUF_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nv");
    drop(Nvbuf::create(&path, &NvbufConfig::new(VOL).with_size(8 << 20)).unwrap());

    // seq -> (epoch, crc of all chunk payloads) as printed by a child.
    let mut printed: BTreeMap<Seq, (u32, u32)> = BTreeMap::new();
    let mut released: Seq = 0;
    for round in 0..6u64 {
        let mut child = Reaper(
            Command::new(env!("CARGO_BIN_EXE_nvbuf-bench"))
                .args(["crash-child", "--path"])
                .arg(&path)
                .args(["--volume", &hex::encode(VOL), "--seed"])
                .arg((seed ^ round).to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn crash child"),
        );
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it get going (bounded), then kill it at a random moment.
        let start = Instant::now();
        let mut lines = Vec::new();
        let mut buffered = 0;
        while buffered < 20 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "child made no progress"
            );
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                buffered += l.starts_with("B ") as usize;
                lines.push(l);
            }
            if let Ok(Some(st)) = child.0.try_wait() {
                panic!("child exited early: {st}");
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(10..400)));
        child.0.kill().expect("SIGKILL");
        child.0.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());

        for l in &lines {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["B", seq, epoch, crc] => {
                    let seq: Seq = seq.parse().unwrap();
                    let prev = printed.insert(seq, (epoch.parse().unwrap(), crc.parse().unwrap()));
                    assert!(
                        prev.is_none(),
                        "seq {seq} was buffered twice: an earlier one was lost"
                    );
                }
                ["R", seq] => released = released.max(seq.parse().unwrap()),
                ["O", ..] => {}
                _ => panic!("unexpected child output {l:?}"),
            }
        }

        let (nv, rec) = Nvbuf::open(&path, VOL).unwrap();
        let mut seqs = Vec::new();
        let mut i = 0;
        while i < rec.records.len() {
            let (h0, _) = rec.records[i];
            let n = h0.chunk_count as usize;
            let chunks = &rec.records[i..i + n];
            let mut crc = crc32fast::Hasher::new();
            for (c, (h, p)) in chunks.iter().enumerate() {
                assert_eq!(
                    (h.seq, h.chunk_index, h.epoch),
                    (h0.seq, c as u32, h0.epoch)
                );
                assert_eq!(
                    (h.offset, h.length, h.flags),
                    (h.seq << 12, p.len() as u32, c as u32 ^ 0x5a)
                );
                crc.update(p);
            }
            if let Some(&(epoch, want)) = printed.get(&h0.seq) {
                assert_eq!(
                    (h0.epoch, crc.finalize()),
                    (epoch, want),
                    "seq {} payload differs",
                    h0.seq
                );
            }
            if let Some(last) = seqs.last() {
                assert_eq!(h0.seq, last + 1, "gap in recovered seqs");
            }
            seqs.push(h0.seq);
            i += n;
        }
        for s in printed.keys().filter(|s| **s > released) {
            assert!(
                seqs.binary_search(s).is_ok(),
                "round {round}: buffered seq {s} lost (recovered {:?}..{:?}, stopped {:?}, end {})",
                seqs.first(),
                seqs.last(),
                rec.stopped,
                rec.end
            );
        }
        eprintln!(
            "round {round}: {} seqs buffered so far, released through {released}, recovered {:?}..={:?}, epoch {}, end: {}",
            printed.len(),
            seqs.first(),
            seqs.last(),
            nv.epoch(),
            rec.end
        );
    }
    assert!(printed.len() >= 80);
}
