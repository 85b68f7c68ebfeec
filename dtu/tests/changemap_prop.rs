//! The changed-block map against a model (one flag per extent) over random
//! sequences of marks, clears, persists (some failing), mark_all / clear_all
//! / reset, base changes and crashes with reopen from `MemMapStore` images:
//! only synced bytes, torn sectors, or everything written. After a reopen,
//! every extent whose state was not changed since the last successful
//! persist must read exactly as it was then (so no persisted mark is ever
//! lost, and persisted clears hold); changed ones may read either way.
//! Volumes straddle bitmap pages, end in partial extents and use 4 KiB,
//! 64 KiB and 1 MiB granularity; ranges cluster at page boundaries and the
//! volume's ends.

use dtu::changemap::{ChangeMap, ChangeMapError, MemMapStore, MAX_RUN_BYTES};
use proptest::prelude::*;

const VOLUME_ID: [u8; 16] = *b"changemap-proptt";
/// Extents per bitmap page (see the format description).
const PAGE_EXTENTS: u64 = 511 * 64;

#[derive(Clone, Debug)]
enum Op {
    Mark {
        at: u64,
        len: u64,
    },
    Clear {
        at: u64,
        len: u64,
    },
    Persist {
        fail: bool,
    },
    MarkAll {
        fail: bool,
    },
    ClearAll {
        fail: bool,
    },
    Reset {
        marked: bool,
        base: u64,
        fail: bool,
    },
    SetBase {
        base: u64,
        fail: bool,
    },
    /// 0: synced bytes only, 1: torn sectors, 2: everything written.
    Crash {
        how: u8,
        seed: u64,
    },
    Check {
        at: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let fail = || prop::bool::weighted(0.2);
    prop_oneof![
        12 => (any::<u64>(), any::<u64>()).prop_map(|(at, len)| Op::Mark { at, len }),
        6 => (any::<u64>(), any::<u64>()).prop_map(|(at, len)| Op::Clear { at, len }),
        5 => fail().prop_map(|fail| Op::Persist { fail }),
        1 => fail().prop_map(|fail| Op::MarkAll { fail }),
        1 => fail().prop_map(|fail| Op::ClearAll { fail }),
        1 => (any::<bool>(), 0..5u64, fail())
            .prop_map(|(marked, base, fail)| Op::Reset { marked, base, fail }),
        1 => (0..5u64, fail()).prop_map(|(base, fail)| Op::SetBase { base, fail }),
        3 => (0..3u8, any::<u64>()).prop_map(|(how, seed)| Op::Crash { how, seed }),
        2 => any::<u64>().prop_map(|at| Op::Check { at }),
    ]
}

/// The volume: granularity and extent count chosen around page edges.
#[derive(Clone, Debug)]
struct Vol {
    granularity: u64,
    extents: u64,
    size: u64,
}

fn vol() -> impl Strategy<Value = Vol> {
    let shifts = prop::sample::select(vec![12u32, 16, 20]);
    let extents = prop::sample::select(vec![
        1u64,
        7,
        130,
        PAGE_EXTENTS - 1,
        PAGE_EXTENTS,
        PAGE_EXTENTS + 1,
        2 * PAGE_EXTENTS + 300,
    ]);
    (shifts, extents, any::<u64>()).prop_map(|(shift, extents, tail)| {
        let granularity = 1u64 << shift;
        // Sometimes a partial last extent.
        let cut = if tail % 3 == 0 { 0 } else { tail % granularity };
        Vol {
            granularity,
            extents,
            size: extents * granularity - cut,
        }
    })
}

impl Vol {
    fn offset(&self, at: u64) -> u64 {
        let n = self.extents;
        let r = at >> 8;
        let e = match at % 4 {
            0 => r % n,
            1 => (PAGE_EXTENTS.saturating_sub(4) + r % 8).min(n - 1),
            2 => n - 1 - (r % 4).min(n - 1),
            _ => (r % 4).min(n - 1),
        };
        let sub = if (at >> 4) & 1 == 0 {
            0
        } else {
            (at >> 20) % self.granularity
        };
        (e * self.granularity + sub).min(self.size - 1)
    }

    fn len(&self, off: u64, len: u64) -> u64 {
        let extents = match len % 8 {
            0 => 0,
            7 => (len >> 8) % 40_000,
            _ => (len >> 8) % 5 + 1,
        };
        let sub = if (len >> 4) & 1 == 1 {
            (len >> 32) % self.granularity
        } else {
            0
        };
        (extents * self.granularity + sub).min(self.size - off)
    }

    /// Extents the byte range touches (what a mark sets).
    fn touched(&self, off: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        let g = self.granularity;
        // Extent e holds bytes e*g .. (e+1)*g.
        off / g..((off + len - 1) / g + 1).min(self.extents)
    }

    /// Extents lying wholly in the byte range (what a clear clears); the
    /// last extent ends at the volume's end.
    fn covered(&self, off: u64, len: u64) -> Vec<u64> {
        let g = self.granularity;
        let t = self.touched(off, len);
        t.filter(|&e| e * g >= off && ((e + 1) * g).min(self.size) <= off + len)
            .collect()
    }

    fn extent_bytes(&self, e: u64) -> u64 {
        ((e + 1) * self.granularity).min(self.size) - e * self.granularity
    }
}

struct Model {
    ram: Vec<bool>,
    /// As of the last successful persist.
    disk: Vec<bool>,
    /// Changed since the last successful persist.
    touched: Vec<bool>,
    base: u64,
    /// Bases a reopen may find: the durable one and any set since.
    bases: Vec<u64>,
}

impl Model {
    fn new(n: u64, base: u64) -> Model {
        Model {
            ram: vec![false; n as usize],
            disk: vec![false; n as usize],
            touched: vec![false; n as usize],
            base,
            bases: vec![base],
        }
    }

    fn pending(&self) -> bool {
        self.touched.iter().any(|t| *t) || self.bases.len() > 1
    }

    fn persisted(&mut self) {
        self.disk.clone_from(&self.ram);
        self.touched.fill(false);
        self.bases = vec![self.base];
    }

    fn fill(&mut self, marked: bool) {
        self.ram.fill(marked);
        self.touched.fill(true);
    }

    fn set_base(&mut self, base: u64) {
        self.base = base;
        self.bases.push(base);
    }
}

fn flush_result(
    map: &ChangeMap<MemMapStore>,
    model: &mut Model,
    fail: bool,
    r: Result<(), ChangeMapError>,
) {
    if fail {
        assert!(
            r.is_err() || !model.pending(),
            "a failing sync went unnoticed"
        );
        map.store().set_fail_syncs(false);
    } else {
        r.as_ref().unwrap();
    }
    if r.is_ok() {
        model.persisted();
    }
}

/// Compares everything the map reports with the model's RAM view.
fn check(map: &ChangeMap<MemMapStore>, v: &Vol, model: &Model, at: u64) {
    let count = model.ram.iter().filter(|m| **m).count() as u64;
    assert_eq!(map.marked_extents(), count);
    let bytes: u64 = (0..v.extents)
        .filter(|&e| model.ram[e as usize])
        .map(|e| v.extent_bytes(e))
        .sum();
    assert_eq!(map.marked_bytes(), bytes);
    let probe = v.offset(at);
    assert_eq!(
        map.is_marked(probe),
        model.ram[(probe / v.granularity) as usize]
    );
    // Walk every run from the start.
    let longest = (MAX_RUN_BYTES / v.granularity).max(1);
    let mut seen = vec![false; v.extents as usize];
    let mut from = 0;
    let mut runs = 0;
    while let Some((off, len)) = map.next_marked(from) {
        assert_eq!(off % v.granularity, 0, "run not aligned");
        assert!(off >= from && len > 0 && off + len <= v.size);
        let first = off / v.granularity;
        let end = (off + len).div_ceil(v.granularity);
        assert!(end - first <= longest, "run longer than the bound");
        for e in first..end {
            seen[e as usize] = true;
        }
        // Runs are maximal unless cut at the bound.
        if end - first < longest && end < v.extents {
            assert!(
                !model.ram[end as usize],
                "run stopped before a marked extent"
            );
        }
        from = off + len;
        runs += 1;
        assert!(runs <= v.extents + 1, "iteration does not end");
    }
    assert_eq!(seen, model.ram, "iteration differs from the model");
    // Starting inside an extent finds the run holding it.
    if model.ram[(probe / v.granularity) as usize] {
        let (off, _) = map.next_marked(probe).unwrap();
        assert_eq!(off, probe / v.granularity * v.granularity);
    }
}

fn run(v: Vol, ops: Vec<Op>) {
    let mut map =
        ChangeMap::create(MemMapStore::new(), VOLUME_ID, v.size, v.granularity, 7).unwrap();
    let mut model = Model::new(v.extents, 7);
    for op in ops {
        match op {
            Op::Mark { at, len } => {
                let off = v.offset(at);
                let len = v.len(off, len);
                let range = v.touched(off, len);
                let needed = range
                    .clone()
                    .any(|e| !model.ram[e as usize] || model.touched[e as usize]);
                let got = map.mark(off, len).unwrap();
                assert!(got || !needed, "mark said no persist was needed");
                for e in range {
                    if !model.ram[e as usize] {
                        model.ram[e as usize] = true;
                        model.touched[e as usize] = true;
                    }
                }
            }
            Op::Clear { at, len } => {
                let off = v.offset(at);
                let len = v.len(off, len);
                let covered = v.covered(off, len);
                let want = covered.iter().filter(|e| model.ram[**e as usize]).count();
                assert_eq!(map.clear(off, len).unwrap(), want as u64);
                for e in covered {
                    if model.ram[e as usize] {
                        model.ram[e as usize] = false;
                        model.touched[e as usize] = true;
                    }
                }
            }
            Op::Persist { fail } => {
                map.store().set_fail_syncs(fail);
                let r = map.persist();
                flush_result(&map, &mut model, fail, r);
            }
            Op::MarkAll { fail } | Op::ClearAll { fail } => {
                let marked = matches!(op, Op::MarkAll { .. });
                map.store().set_fail_syncs(fail);
                model.fill(marked);
                let r = if marked {
                    map.mark_all()
                } else {
                    map.clear_all()
                };
                flush_result(&map, &mut model, fail, r);
            }
            Op::Reset { marked, base, fail } => {
                map.store().set_fail_syncs(fail);
                model.fill(marked);
                model.set_base(base);
                let r = map.reset(marked, base);
                flush_result(&map, &mut model, fail, r);
            }
            Op::SetBase { base, fail } => {
                map.store().set_fail_syncs(fail);
                model.set_base(base);
                let r = map.set_base(base);
                flush_result(&map, &mut model, fail, r);
            }
            Op::Crash { how, seed } => {
                let image = match how {
                    0 => map.store().crash_image(),
                    1 => map.store().crash_image_torn(seed),
                    _ => map.store().working_image(),
                };
                drop(map);
                let (m, info) =
                    ChangeMap::open(MemMapStore::from_image(image), VOLUME_ID, v.size).unwrap();
                map = m;
                assert!(
                    model.bases.contains(&info.base),
                    "base {} is none of {:?}",
                    info.base,
                    model.bases
                );
                assert_eq!(info.damaged_pages, 0);
                assert_eq!(info.ignored_bits, 0);
                for e in 0..v.extents as usize {
                    let now = map.is_marked(e as u64 * v.granularity);
                    if !model.touched[e] {
                        assert_eq!(
                            now, model.disk[e],
                            "extent {e} persisted as {} reads {now} after the crash",
                            model.disk[e]
                        );
                    }
                    model.ram[e] = now;
                }
                model.base = info.base;
                model.persisted();
                assert_eq!(info.marked_extents, map.marked_extents());
            }
            Op::Check { at } => check(&map, &v, &model, at),
        }
        assert_eq!(
            map.marked_extents(),
            model.ram.iter().filter(|m| **m).count() as u64
        );
        assert_eq!(map.base(), model.base);
    }
    check(&map, &v, &model, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 300, ..ProptestConfig::default() })]
    #[test]
    fn changemap_matches_model(v in vol(), ops in prop::collection::vec(op(), 1..60)) {
        run(v, ops);
    }
}

/// A fixed sequence that goes through every transition with crashes of each
/// kind in between, in case the random cases stay short.
#[test]
fn every_transition_with_crashes() {
    let v = Vol {
        granularity: 4096,
        extents: 2 * PAGE_EXTENTS + 300,
        size: (2 * PAGE_EXTENTS + 300) * 4096 - 100,
    };
    let mut ops = Vec::new();
    for i in 0..300u64 {
        let at = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ops.push(Op::Mark {
            at,
            len: at.rotate_left(17),
        });
        match i % 10 {
            0 => ops.push(Op::Persist { fail: i % 20 == 0 }),
            3 => ops.push(Op::Clear {
                at: at.rotate_left(5),
                len: at.rotate_left(29),
            }),
            5 => ops.push(Op::Crash {
                how: (i % 3) as u8,
                seed: at,
            }),
            7 if i % 70 == 7 => ops.push(Op::MarkAll { fail: i % 140 == 7 }),
            8 if i % 90 == 8 => ops.push(Op::ClearAll { fail: false }),
            9 => ops.push(Op::Check { at }),
            _ => {}
        }
    }
    run(v, ops);
}
