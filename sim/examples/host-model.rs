//! Runs the host workload model against an ideal mirror device behind a
//! preset link (`RateSink::from_link`: the link's up rate, one round trip of
//! latency) and writes the time series as JSON and CSV, ready for
//! `dtu-plot`. Until the DTU's `Primary` implements `MirrorSink`, this is how
//! to see what a cache of a given size does over a given line.
//!
//! cargo run --release -p dtu-sim --example host-model -- --preset t1 --out /tmp/t1

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;

use dtu_proto::units;
use dtu_sim::host::{self, HostConfig, IdleGap, OffsetPattern, RateSink, WorkloadConfig};
use dtu_sim::presets;

#[derive(Parser, Debug)]
struct Cli {
    /// Link preset the device sits behind.
    #[arg(long, default_value = "t1")]
    preset: String,
    /// Override the preset's rate.
    #[arg(long)]
    rate: Option<String>,
    /// Output path without extension (.json and .csv are written).
    #[arg(long)]
    out: PathBuf,
    /// Scenario name (default: the preset).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "8MiB")]
    cache: String,
    #[arg(long, default_value = "64KiB")]
    block: String,
    #[arg(long, default_value = "2MiB")]
    burst: String,
    /// Application write rate within a burst (bytes/s, e.g. 4MB); 0: unlimited.
    #[arg(long, default_value = "0")]
    burst_rate: String,
    /// Mean idle gap between bursts (exponential).
    #[arg(long, default_value = "3s")]
    idle: String,
    /// sequential, random or zipf:EXPONENT
    #[arg(long, default_value = "sequential")]
    offsets: String,
    /// Target compression ratio 1..4.
    #[arg(long, default_value_t = 1.0)]
    compress: f64,
    #[arg(long, default_value = "20s")]
    duration: String,
    #[arg(long, default_value_t = 16)]
    outstanding: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut link = presets::get(&cli.preset)?.duplex();
    if let Some(r) = &cli.rate {
        link.up.rate_bps = units::parse_rate(r)?;
    }
    let offsets = match cli.offsets.as_str() {
        "sequential" => OffsetPattern::Sequential,
        "random" => OffsetPattern::Random,
        z => {
            let e = z
                .strip_prefix("zipf:")
                .context("--offsets: sequential, random or zipf:EXPONENT")?;
            OffsetPattern::Zipf {
                exponent: e.parse().context("zipf exponent")?,
            }
        }
    };
    let cfg = HostConfig {
        scenario: cli.name.clone().unwrap_or_else(|| cli.preset.clone()),
        workload: WorkloadConfig {
            block_size: units::parse_bytes(&cli.block)? as u32,
            burst_bytes: units::parse_bytes(&cli.burst)?,
            burst_rate: units::parse_bytes(&cli.burst_rate)?,
            idle: IdleGap::Exponential {
                mean: units::parse_duration(&cli.idle)?,
            },
            offsets,
            volume_bytes: 1 << 30,
            compress_ratio: cli.compress,
            seed: cli.seed,
        },
        cache_bytes: units::parse_bytes(&cli.cache)?,
        max_outstanding: cli.outstanding,
        duration: Some(units::parse_duration(&cli.duration)?),
        ..HostConfig::default()
    };
    let sink = Arc::new(RateSink::from_link(&link));
    let ts = host::run(&cfg, sink)?;
    let json = cli.out.with_extension("json");
    let csv = cli.out.with_extension("csv");
    ts.write_json(&json)?;
    ts.write_csv(&csv)?;
    let s = &ts.summary;
    eprintln!(
        "{}: {:.1} s, wrote {}, acknowledged {}, max dirty {:.1}%, stalled {:.1} s, ack p50/p99 {:?}/{:?} ms",
        ts.scenario,
        s.duration_s,
        units::format_bytes(s.app_bytes),
        units::format_bytes(s.acked_bytes),
        s.max_dirty_pct,
        s.stall_s,
        s.ack_p50_ms.map(|x| (x * 10.0).round() / 10.0),
        s.ack_p99_ms.map(|x| (x * 10.0).round() / 10.0)
    );
    println!("{}", json.display());
    Ok(())
}
