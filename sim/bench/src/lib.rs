//! The benchmark harness behind `dtu-bench`: each scenario measures dtu
//! against a physical limit (the emulated link's line rate, the local
//! disk's fdatasync) or a peer (iperf3 TCP through the same link emulator,
//! nbdkit's file plugin) in one run on the same machine, and reports ratios
//! rather than absolute times, which are noise on a shared machine. Every
//! scenario writes `<scenario>.json`, `<scenario>.png` and `<scenario>.svg`
//! into the output directory; targets are reported as met or missed, never
//! asserted.

#![forbid(unsafe_code)]

pub mod ack_latency;
pub mod burst;
pub mod compression;
pub mod delay;
pub mod failover;
pub mod inproc;
pub mod link_efficiency;
pub mod plot;
pub mod replay;
pub mod report;
pub mod restore;
pub mod sync;
pub mod throughput;
pub mod tools;
pub mod undo;

use std::path::PathBuf;
use std::time::Duration;

pub use report::{Machine, Report, Table, Target};

/// How a scenario runs.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Small sizes and short runs (CI: the harness must not rot).
    pub quick: bool,
    /// Where the JSON and plots go.
    pub out: PathBuf,
    /// Seed of the link emulator and the workloads.
    pub seed: u64,
    /// Only the cases on these link presets (scenarios with several links).
    pub presets: Vec<String>,
}

impl Opts {
    /// `full` normally, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// Whether the cases on `preset` run.
    pub fn wants(&self, preset: &str) -> bool {
        self.presets.is_empty() || self.presets.iter().any(|p| p == preset)
    }
}

/// Why a scenario could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("`{0}` is not installed; `.ci/run` installs it (apt-get install fio libnbd-bin nbdkit qemu-utils iperf3)")]
    Missing(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    #[error("dtu: {0}")]
    Dtu(String),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { after: Duration, what: String },
    #[error("plot {path}: {msg}")]
    Plot { path: String, msg: String },
}

impl BenchError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    pub fn dtu(e: impl std::fmt::Display) -> BenchError {
        BenchError::Dtu(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;

/// A scenario: its name, one line on what it measures, and its runner.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Opts) -> Result<Report>,
}

/// Every scenario, in the order `all` runs them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "link-efficiency",
        about: "goodput of incompressible 64 KiB writes / line rate, beside iperf3 TCP",
        run: link_efficiency::run,
    },
    Scenario {
        name: "compression",
        about: "effective throughput / line rate with 2:1 and 4:1 compressible data",
        run: compression::run,
    },
    Scenario {
        name: "ack-latency",
        about:
            "QD1 4 KiB write latency per trigger at RTT 0/10/50 ms vs local fdatasync and nbdkit",
        run: ack_latency::run,
    },
    Scenario {
        name: "throughput-unlimited",
        about: "fio 1 MiB QD8 through the export, no link limit, vs nbdkit; workers 1 vs 2; CPU/GB",
        run: throughput::run,
    },
    Scenario {
        name: "burst-absorption",
        about:
            "host bursts at 4x a T1: dirty % and ack latency with spoofing off / at 75 % / always",
        run: burst::run,
    },
    Scenario {
        name: "replay",
        about: "draining an nvbuf filled while the link was down, after a primary restart",
        run: replay::run,
    },
    Scenario {
        name: "initial-sync",
        about: "a 1 GiB image, half of it zero extents, synced over wan-100m-40ms: time / (data / line rate)",
        run: sync::initial,
    },
    Scenario {
        name: "resync-checksum",
        about: "a 1 GiB replica differing in 1 % of its 4 KiB blocks: bytes on the link and time of a checksum sync",
        run: sync::checksum,
    },
    Scenario {
        name: "overflow",
        about: "host write throughput during a 60 s outage with a 16 MiB nvbuf: overflow bitmap vs stall",
        run: sync::overflow,
    },
    Scenario {
        name: "undo",
        about: "remote apply throughput with the undo journal on / off (random overwrites, fresh sequential), as-of reads / live",
        run: undo::run,
    },
    Scenario {
        name: "failover",
        about: "disaster drills: RTO from dtu promote to the first answered host write, failback wire bytes / changed bytes",
        run: failover::run,
    },
    Scenario {
        name: "restore",
        about: "instant restore of a lost primary disk over wan-100m-40ms: first read, read throughput during the rebuild, rebuild time / line time",
        run: restore::run,
    },
    Scenario {
        name: "delay",
        about: "primary->replica delay p50/p99 at 80 % of capacity on t1 and wan-100m-40ms",
        run: delay::run,
    },
];

/// The scenario called `name`.
pub fn scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}
