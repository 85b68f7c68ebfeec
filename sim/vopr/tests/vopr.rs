//! The deterministic simulator in CI: a fixed set of seeds must pass every
//! invariant, and a seed must replay to the same event trace.

use dtu_vopr::{run, summary, Options};

#[test]
fn two_hundred_seeds_keep_every_invariant() {
    let mut crashes = 0;
    for seed in 0..200 {
        match run(seed, Options::default()) {
            Ok(o) => crashes += o.primary_crashes + o.remote_crashes,
            Err(v) => panic!("{v}"),
        }
    }
    assert!(
        crashes > 500,
        "the seeds should crash the DTUs often: {crashes}"
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
