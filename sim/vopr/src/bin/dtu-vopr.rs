//! `dtu-vopr`: runs the deterministic simulator of a DTU pair over many
//! seeds, or replays one.
//!
//! ```text
//! cargo run --release -p dtu-vopr -- --seeds 10000
//! cargo run --release -p dtu-vopr -- --seed 42 --verbose
//! ```

use clap::Parser;
use dtu_vopr::{run, summary, Options};

#[derive(Parser)]
#[command(about = "Deterministic simulation of a DTU pair under faults")]
struct Args {
    /// Replay exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run this many seeds, starting at --first.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Virtual milliseconds of faults per seed.
    #[arg(long, default_value_t = 12_000)]
    steps: u64,
    /// Print every event of the run.
    #[arg(long)]
    verbose: bool,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let opts = Options {
        steps: a.steps,
        verbose: a.verbose,
        ..Options::default()
    };
    let seeds: Vec<u64> = match a.seed {
        Some(s) => vec![s],
        None => (a.first..a.first + a.seeds).collect(),
    };
    let started = std::time::Instant::now();
    let mut crashes = (0, 0);
    let mut restores = (0, 0, 0, 0);
    let mut roles = (0, 0, 0, 0);
    for seed in &seeds {
        match run(*seed, opts.clone()) {
            Ok(o) => {
                crashes.0 += o.primary_crashes;
                crashes.1 += o.remote_crashes;
                restores.0 += o.restores;
                restores.1 += o.restore_installs;
                restores.2 += o.restore_refetches;
                restores.3 += o.restore_reads;
                roles.0 += o.switchovers;
                roles.1 += o.failovers;
                roles.2 += o.failback_bytes;
                roles.3 += o.split_brains;
                if a.seed.is_some() || a.verbose {
                    println!("{}", summary(&o));
                }
            }
            Err(v) => {
                eprintln!("{v}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{} seeds passed in {:.1}s ({} primary crashes, {} remote crashes in all; {} restores \
         of a lost local copy: {} extents installed, {} refetched after a host write, {} reads \
         checked; {} switchovers, {} failovers with {} bytes failed back, {} split brains \
         resolved)",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        crashes.0,
        crashes.1,
        restores.0,
        restores.1,
        restores.2,
        restores.3,
        roles.0,
        roles.1,
        roles.2,
        roles.3
    );
    std::process::ExitCode::SUCCESS
}
