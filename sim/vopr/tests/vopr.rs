//! The deterministic simulator in CI: a fixed set of seeds must pass every
//! invariant, a seed must replay to the same event trace, and every planted
//! bug must be caught within 50 seeds (so a green run means something).

use dtu_proto::planted::{self, Bug};
use dtu_vopr::{run, summary, Options};

#[test]
fn two_hundred_seeds_keep_every_invariant() {
    let (mut crashes, mut trims, mut checkpoints, mut local) = (0, 0, 0, 0);
    let (mut restores, mut reads) = (0, 0);
    let (mut switchovers, mut failovers, mut failed_back) = (0, 0, 0);
    for seed in 0..200 {
        match run(seed, Options::default()) {
            Ok(o) => {
                crashes += o.primary_crashes + o.remote_crashes;
                trims += o.trims;
                checkpoints += o.checkpoints;
                local += u64::from(o.local_copy);
                restores += o.restores;
                reads += o.restore_reads;
                switchovers += o.switchovers;
                failovers += o.failovers;
                failed_back += o.failback_bytes;
            }
            Err(v) => panic!("{v}"),
        }
    }
    assert!(
        crashes > 500,
        "the seeds should crash the DTUs often: {crashes}"
    );
    assert!(
        trims > 200 && checkpoints > 100,
        "{trims} trims, {checkpoints} checkpoints"
    );
    assert!(
        restores > 20 && reads > 100,
        "{restores} restores of a lost local copy, {reads} reads checked during them"
    );
    assert!(
        switchovers > 20 && failovers > 20 && failed_back > 0,
        "{switchovers} switchovers, {failovers} failovers, {failed_back} bytes failed back"
    );
    assert!(
        (50..150).contains(&local),
        "{local} of 200 seeds with a local copy"
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run(7, Options::default()).unwrap();
    let b = run(7, Options::default()).unwrap();
    assert_eq!(a, b, "{} vs {}", summary(&a), summary(&b));
    let c = run(8, Options::default()).unwrap();
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn every_planted_bug_is_caught_within_fifty_seeds() {
    for bug in Bug::ALL {
        planted::plant(Some(bug));
        let caught = (0..50).find_map(|seed| run(seed, Options::default()).err());
        planted::plant(None);
        let v = caught.unwrap_or_else(|| panic!("planted bug {bug:?} passed 50 seeds"));
        eprintln!(
            "{bug:?} caught by seed {} at step {}: invariant {}: {}",
            v.seed, v.step, v.invariant, v.detail
        );
    }
}
