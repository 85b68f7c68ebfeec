//! `dtu-bench`: dtu's benchmarks against the link's capacity, local
//! fdatasync, iperf3 and nbdkit, as ratios measured in one run. Each
//! scenario writes DIR/<scenario>.json, .png and .svg; DIR/summary.md
//! collects every scenario's tables. Targets are reported, never asserted:
//! the exit status is non-zero only when a scenario could not run.
//!
//! ```text
//! cargo run --release -p dtu-bench -- all --out bench-out
//! cargo run --release -p dtu-bench -- ack-latency --quick --out /tmp/b
//! cargo run --release -p dtu-bench -- list
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use dtu_bench::{scenario, Opts, Report, SCENARIOS};

#[derive(Parser)]
#[command(about = "dtu benchmarks: ratios against the link, the disk, iperf3 and nbdkit")]
struct Args {
    /// A scenario name, `all`, or `list`.
    scenario: String,
    /// Small sizes and short runs (a few minutes for `all`).
    #[arg(long)]
    quick: bool,
    /// Output directory for JSON, plots and summary.md.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Seed of the link emulator and the workloads.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only the cases on this link preset (repeatable; link-efficiency,
    /// compression and delay have several).
    #[arg(long)]
    preset: Vec<String>,
}

fn run_one(name: &str, o: &Opts) -> Result<Report> {
    let s = scenario(name).with_context(|| format!("unknown scenario {name}"))?;
    println!("== {}: {}", s.name, s.about);
    let t0 = Instant::now();
    // A panic inside the end-to-end harness (a process that would not
    // start) fails this scenario, not the ones after it; its guards have
    // killed their processes while unwinding.
    let out = std::panic::catch_unwind(|| (s.run)(o));
    let mut report = match out {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => bail!("{name}: {e}"),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            bail!("{name} panicked: {msg}");
        }
    };
    report.wall_s = t0.elapsed().as_secs_f64();
    let json = o.out.join(format!("{name}.json"));
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = report.markdown();
    println!("{md}");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(o.out.join("summary.md"))?;
    writeln!(f, "{md}")?;
    Ok(report)
}

fn main() -> ExitCode {
    let a = Args::parse();
    // The in-process pairs log through tracing; RUST_LOG=dtu=debug shows
    // them (the congestion controller's back-offs among them).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if a.scenario == "list" {
        for s in SCENARIOS {
            println!("{:<22} {}", s.name, s.about);
        }
        return ExitCode::SUCCESS;
    }
    let names: Vec<&str> = if a.scenario == "all" {
        SCENARIOS.iter().map(|s| s.name).collect()
    } else {
        a.scenario.split(',').collect()
    };
    if let Some(bad) = names.iter().find(|n| scenario(n).is_none()) {
        eprintln!("unknown scenario `{bad}`; `dtu-bench list` shows them");
        return ExitCode::FAILURE;
    }
    if let Err(e) = std::fs::create_dir_all(&a.out) {
        eprintln!("creating {}: {e}", a.out.display());
        return ExitCode::FAILURE;
    }
    // summary.md holds this invocation's scenarios only.
    if let Err(e) = std::fs::write(a.out.join("summary.md"), "") {
        eprintln!("writing {}: {e}", a.out.join("summary.md").display());
        return ExitCode::FAILURE;
    }
    let o = Opts {
        quick: a.quick,
        out: a.out.clone(),
        seed: a.seed,
        presets: a.preset.clone(),
    };
    let t0 = Instant::now();
    let mut failed = Vec::new();
    let mut missed = 0;
    for n in &names {
        match run_one(n, &o) {
            Ok(r) => missed += r.targets.iter().filter(|t| !t.met).count(),
            Err(e) => {
                eprintln!("FAILED {e:#}");
                failed.push(n.to_string());
            }
        }
    }
    println!(
        "dtu-bench: {} scenario(s) in {:.0} s, {} target(s) missed (reported, not asserted), results in {}",
        names.len(),
        t0.elapsed().as_secs_f64(),
        missed,
        a.out.display()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("dtu-bench: could not run: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
