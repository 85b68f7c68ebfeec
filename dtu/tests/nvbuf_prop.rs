//! Property test: random appends (multi-chunk, sizes from tiny to a good part
//! of the ring, so it wraps many times), releases, syncs, clean and dirty
//! reopens and crashes (durable image, torn image) against a simple model of
//! the log. Every recovery must be a gap-free run of exactly the records the
//! model holds for those seqs, contain every unreleased seq the nvbuf reported
//! durable, and equal the unreleased set after a checkpointed reopen.

mod nvbuf_common;

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use dtu::nvbuf::{MemStore, Nvbuf, NvbufError, RecordHeader, Recovery, Seq, Wait};
use nvbuf_common::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<usize>),
    Release(usize),
    Sync,
    ReopenClean,
    ReopenDirty,
    Crash,
    CrashTorn(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![3 => 0usize..3000, 2 => 0usize..400_000];
    prop_oneof![
        10 => prop::collection::vec(size, 1..=4).prop_map(Op::Append),
        3 => (0usize..64).prop_map(Op::Release),
        3 => Just(Op::Sync),
        1 => Just(Op::ReopenClean),
        1 => Just(Op::ReopenDirty),
        1 => Just(Op::Crash),
        1 => any::<u64>().prop_map(Op::CrashTorn),
    ]
}

type Recs = Vec<(RecordHeader, Vec<u8>)>;

struct Model {
    /// Records of every seq of the current history (released or not).
    history: BTreeMap<Seq, Recs>,
    unreleased: VecDeque<Seq>,
    next_seq: Seq,
}

impl Model {
    fn unreleased_records(&self) -> Recs {
        self.unreleased
            .iter()
            .flat_map(|s| self.history[s].iter().cloned())
            .collect()
    }

    /// Checks a recovery against the model and adopts it as the new truth.
    fn recovered(
        &mut self,
        nv: &Nvbuf<MemStore>,
        rec: &Recovery,
        must_have: Option<Seq>,
        exact: bool,
    ) {
        let seqs = check_prefix(&rec.records);
        let mut i = 0;
        for s in &seqs {
            let want = self
                .history
                .get(s)
                .unwrap_or_else(|| panic!("recovered unknown seq {s}"));
            let got = &rec.records[i..i + want.len()];
            assert_eq!(got, &want[..], "seq {s} differs from what was appended");
            i += want.len();
        }
        if exact {
            assert_eq!(rec.records, self.unreleased_records());
        }
        for s in &self.unreleased {
            if must_have.is_some_and(|m| *s <= m) {
                assert!(
                    seqs.contains(s),
                    "durable seq {s} lost ({:?}, {})",
                    rec.stopped,
                    rec.end
                );
            }
        }
        // A lazily persisted tail may bring back released seqs; never skip ahead.
        if let (Some(first), Some(u)) = (seqs.first(), self.unreleased.front()) {
            assert!(first <= u, "recovery skipped unreleased seqs");
        }
        let last = seqs.last().copied();
        self.history.retain(|s, _| last.is_some_and(|l| *s <= l));
        self.unreleased = seqs.into_iter().collect();
        self.next_seq = nv.next_seq();
        if let Some(l) = last {
            assert_eq!(self.next_seq, l + 1);
        }
        assert_eq!(nv.durable_seq(), last.or(nv.durable_seq()));
    }
}

fn run(ops: Vec<Op>) {
    let mut nv = mem_nvbuf(4 * MIB);
    let mut m = Model {
        history: BTreeMap::new(),
        unreleased: VecDeque::new(),
        next_seq: 1,
    };
    for op in ops {
        match op {
            Op::Append(sizes) => {
                let seq = m.next_seq;
                assert_eq!(nv.next_seq(), seq);
                let mut recs = Vec::new();
                for (c, &len) in sizes.iter().enumerate() {
                    let h = header(seq, c as u32, sizes.len() as u32, nv.epoch(), len);
                    let p = payload(seq, c as u32, nv.epoch(), len);
                    match nv.append(&h, &p, Instant::now(), Wait::No) {
                        Ok(_) => {}
                        Err(NvbufError::Full { .. }) => {
                            // The remote catches up: release every complete seq.
                            if let Some(&last) = m.unreleased.back() {
                                nv.release_through(last);
                                m.unreleased.clear();
                            }
                            nv.append(&h, &p, Instant::now(), Wait::No)
                                .expect("fits in an emptied ring");
                        }
                        Err(e) => panic!("append: {e}"),
                    }
                    recs.push((h, p));
                }
                m.history.insert(seq, recs);
                m.unreleased.push_back(seq);
                m.next_seq += 1;
            }
            Op::Release(k) => {
                if !m.unreleased.is_empty() {
                    let n = k % (m.unreleased.len() + 1);
                    if n > 0 {
                        let s = m.unreleased[n - 1];
                        nv.release_through(s);
                        m.unreleased.drain(..n);
                        assert_eq!(nv.first_unreleased_seq(), s + 1);
                    }
                }
            }
            Op::Sync => {
                nv.sync_to(nv.head_lsn()).unwrap();
                assert_eq!(
                    nv.durable_seq(),
                    m.history.keys().next_back().copied().or(nv.durable_seq())
                );
            }
            Op::ReopenClean | Op::ReopenDirty => {
                let clean = matches!(op, Op::ReopenClean);
                if clean {
                    nv.checkpoint().unwrap();
                }
                let epoch = nv.epoch();
                let last = m.history.keys().next_back().copied();
                // A process restart: the page cache (working copy) survives.
                let (n2, rec) = Nvbuf::open_in(nv.into_store(), VOL).unwrap();
                assert_eq!(rec.stopped, None, "{}", rec.end);
                assert!(n2.epoch() > epoch);
                nv = n2;
                m.recovered(&nv, &rec, last, clean);
            }
            Op::Crash | Op::CrashTorn(_) => {
                let durable = nv.durable_seq();
                let img = match op {
                    Op::CrashTorn(seed) => nv.store().crash_image_torn(seed),
                    _ => nv.store().crash_image(),
                };
                let (n2, rec) = Nvbuf::open_in(MemStore::from_image(img), VOL).unwrap();
                nv = n2;
                m.recovered(&nv, &rec, durable, false);
            }
        }
        let st = nv.stats(Instant::now());
        assert_eq!(st.unreleased_seqs as usize, m.unreleased.len());
        assert!(st.used_bytes <= st.capacity);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn nvbuf_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops);
    }
}

/// A long fixed sequence that wraps the ring several times between crashes,
/// in case the random cases above stay short.
#[test]
fn long_wrapping_run_with_crashes() {
    let mut ops = Vec::new();
    for i in 0..400usize {
        ops.push(Op::Append(vec![(i * 7919) % 90_000, (i * 31) % 500]));
        if i % 5 == 0 {
            ops.push(Op::Sync);
        }
        if i % 7 == 0 {
            ops.push(Op::Release(3));
        }
        if i % 97 == 0 {
            ops.push(Op::CrashTorn(i as u64));
        }
        if i % 131 == 0 {
            ops.push(Op::ReopenDirty);
        }
    }
    run(ops);
}
