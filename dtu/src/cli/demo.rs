//! `dtu demo`: the whole product in one command. A remote, a primary and an
//! emulated link between them (a T1 unless told otherwise), a host that
//! writes in bursts faster than the link can carry, a live status line, and
//! at the end a byte-for-byte comparison of the host's volume and the
//! replica. Exits non-zero if they differ.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dtu_proto::{AckPolicy, Trigger};
use dtu_sim::host::{HostConfig, IdleGap, OffsetPattern, WorkloadConfig};
use dtu_sim::relay::{Relay, RelayConfig};
use sha2::{Digest, Sha256};

use crate::inproc::{preset_tuning, primary_status, PairSetup};
use crate::primary::{HostSink, Primary};
use crate::remote::Remote;
use crate::status::PrimaryStatus;
use crate::units::{
    format_bytes, format_duration, format_rate, parse_bytes_within, parse_duration_within,
};

/// Longest run time, write gap and catch-up wait of a demo: a day, far past
/// any demonstration; the times are added to the clock.
const MAX_DEMO_TIME: Duration = Duration::from_secs(24 * 3600);
/// Largest host burst and write cache of a demo: the host model keeps
/// them in memory.
const MAX_DEMO_BYTES: u64 = 1 << 30;

fn demo_time(flag: &str, s: &str) -> Result<Duration> {
    parse_duration_within(s, Duration::ZERO, MAX_DEMO_TIME).with_context(|| flag.to_string())
}

fn demo_bytes(flag: &str, s: &str) -> Result<u64> {
    parse_bytes_within(s, 1, MAX_DEMO_BYTES).with_context(|| flag.to_string())
}

/// `dtu demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Link preset (see `linkemu --list-presets`): t1, e1, isdn-128k, lossy-wan, ...
    #[arg(long, default_value = "t1")]
    pub preset: String,
    /// How long the host writes.
    #[arg(long, default_value = "15s")]
    pub duration: String,
    /// Bytes per burst.
    #[arg(long, default_value = "1MiB")]
    pub burst: String,
    /// Idle time between bursts.
    #[arg(long, default_value = "1500ms")]
    pub gap: String,
    /// The host's write cache.
    #[arg(long, default_value = "2MiB")]
    pub cache: String,
    /// Data compressibility, 1 (random) to 4.
    #[arg(long, default_value_t = 2.0)]
    pub compress_ratio: f64,
    /// The acknowledgement trigger.
    #[arg(long, default_value = "buffered")]
    pub trigger: String,
    /// Spoof only at or above this dirty %.
    #[arg(long, default_value_t = 75.0)]
    pub dirty_threshold: f64,
    /// Volume size.
    #[arg(long, default_value = "64MiB")]
    pub size: String,
    /// Where the demo's files go (default: a new directory under the
    /// system's temp dir, kept for inspection).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seed of the workload and the link.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Longest wait for the replica to catch up after the host stops.
    #[arg(long, default_value = "300s")]
    pub catch_up_timeout: String,
}

fn line(s: &PrimaryStatus, t: Duration) -> String {
    format!(
        "t={:>5.1}s  dirty {:>5}  spoofing {:<8}  link {:>12}/s  nvbuf {:>9}  stored {}/{}  answered: buffered {} remote-stored {}",
        t.as_secs_f64(),
        s.dirty_pct.map_or("-".into(), |d| format!("{d:.0}%")),
        if s.spoofing_active { "ACTIVE" } else { "off" },
        format_rate(s.link_throughput_bps as u64),
        format_bytes(s.buffered_bytes),
        s.remote_stored_seq,
        s.highest_seq,
        s.answered.buffered,
        s.answered.remote_stored,
    )
}

fn hash_file(path: &Path, size: u64) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(h.finalize()))
}

pub fn run(a: DemoArgs) -> Result<()> {
    let preset = dtu_sim::presets::get(&a.preset)?;
    let size = crate::config::volume_size(&a.size).context("--size")?;
    let trigger: Trigger = a.trigger.parse().context("--trigger")?;
    if !(0.0..=100.0).contains(&a.dirty_threshold) {
        bail!(
            "--dirty-threshold: {} is not a percentage from 0 to 100",
            a.dirty_threshold
        );
    }
    if !a.compress_ratio.is_finite() {
        bail!("--compress-ratio: {} is not a number", a.compress_ratio);
    }
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("dtu-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in [
        "primary.nvbuf",
        "source.img",
        "replica.img",
        "replica.img.state",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }

    let setup = PairSetup::generate(*b"dtu-demo-volume!", size)?;
    let up = &preset.up;
    let tuning = preset_tuning(&preset);

    println!(
        "dtu demo: a primary and a remote over an emulated {} ({})",
        preset.name, preset.description
    );
    println!("files in {}", dir.display());
    let remote = Remote::start(setup.remote_options("127.0.0.1:0".parse()?, tuning, &dir))?;
    let mut relay_cfg = RelayConfig::new(
        "127.0.0.1:0".parse()?,
        remote.local_addr()?,
        preset.duplex(),
    );
    relay_cfg.seed = a.seed;
    relay_cfg.tcp = false;
    let relay = Relay::start(relay_cfg).context("starting the link emulator")?;
    let policy = AckPolicy {
        trigger,
        dirty_threshold: a.dirty_threshold,
        ..AckPolicy::default()
    };
    let primary = Arc::new(Primary::start(setup.primary_options(
        relay.local_addr(),
        tuning,
        &dir,
        policy,
    ))?);
    println!(
        "policy: trigger {trigger}, spoofing while the host's cache is at least {}% dirty; sealing on, compression on",
        a.dirty_threshold
    );

    let duration = demo_time("--duration", &a.duration)?;
    let host = HostConfig {
        scenario: format!("{} {}", preset.name, trigger),
        workload: WorkloadConfig {
            block_size: 64 << 10,
            burst_bytes: demo_bytes("--burst", &a.burst)?,
            burst_rate: 0,
            idle: IdleGap::Fixed {
                gap: demo_time("--gap", &a.gap)?,
            },
            offsets: OffsetPattern::Random,
            volume_bytes: size,
            compress_ratio: a.compress_ratio.clamp(1.0, 4.0),
            seed: a.seed,
        },
        cache_bytes: demo_bytes("--cache", &a.cache)?,
        max_outstanding: 16,
        duration: Some(duration),
        drain: true,
        drain_timeout: Duration::from_secs(600),
        ..HostConfig::default()
    };
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let host_thread = {
        let sink = Arc::new(HostSink(primary.clone()));
        let done = done.clone();
        std::thread::spawn(move || {
            let r = dtu_sim::host::run(&host, sink);
            done.store(true, Ordering::SeqCst);
            r
        })
    };

    // Live status while the host writes and the replica catches up.
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new_spinner();
    if !tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let catch_up = demo_time("--catch-up-timeout", &a.catch_up_timeout)?;
    let mut last_print = Instant::now();
    let mut host_done_at = None;
    loop {
        let s = primary_status(&primary);
        let msg = line(&s, started.elapsed());
        bar.set_message(msg.clone());
        bar.tick();
        if !tty && last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!("{msg}");
            last_print = Instant::now();
        }
        if done.load(Ordering::SeqCst) {
            let at = *host_done_at.get_or_insert_with(Instant::now);
            if s.remote_stored_seq == s.highest_seq {
                break;
            }
            if at.elapsed() > catch_up {
                bar.finish_and_clear();
                bail!(
                    "the replica did not catch up within {}",
                    format_duration(catch_up)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let caught_up = started.elapsed();
    bar.finish_and_clear();
    let series = host_thread
        .join()
        .map_err(|_| anyhow::anyhow!("host thread panicked"))??;
    series.write_json(&dir.join("host-series.json"))?;
    series.write_csv(&dir.join("host-series.csv"))?;
    let s = primary_status(&primary);
    let link = relay.stats();

    let Ok(primary) = Arc::try_unwrap(primary) else {
        bail!("the host model still holds the primary");
    };
    primary.shutdown();
    remote.shutdown();
    relay.shutdown();

    let source = hash_file(&dir.join("source.img"), size)?;
    let replica = hash_file(&dir.join("replica.img"), size)?;
    println!();
    println!(
        "host wrote {} in {} writes; the replica caught up {} after the start",
        format_bytes(s.bytes_written),
        s.writes,
        format_duration(caught_up)
    );
    let carried = link.up.link.bytes_delivered;
    println!(
        "link carried {} ({:.2}:1 compression): {}/s on average over {}, {:.0}% of the {} line rate",
        format_bytes(carried),
        s.compression_ratio,
        format_rate((carried as f64 * 8.0 / caught_up.as_secs_f64()) as u64),
        format_duration(caught_up),
        carried as f64 * 8.0 / caught_up.as_secs_f64() / up.rate_bps.max(1) as f64 * 100.0,
        format_rate(up.rate_bps),
    );
    println!(
        "answered: received {}, buffered {}, sent {}, remote-received {}, remote-stored {}; ack latency p50 {} p99 {}",
        s.answered.received,
        s.answered.buffered,
        s.answered.sent,
        s.answered.remote_received,
        s.answered.remote_stored,
        ms(s.ack_latency_p50_ms),
        ms(s.ack_latency_p99_ms)
    );
    println!(
        "primary→replica delay: p50 {}, p90 {}, p99 {}, max {}",
        ms(s.replication_delay.p50_ms),
        ms(s.replication_delay.p90_ms),
        ms(s.replication_delay.p99_ms),
        ms(s.replication_delay.max_ms)
    );
    println!(
        "QUIC: {} packets sent, {} lost ({:.2}%), {} congestion events; dtu resent {} seqs",
        s.quic.sent_packets,
        s.quic.lost_packets,
        s.quic.loss_pct(),
        s.quic.congestion_events,
        s.retransmits
    );
    println!(
        "host time series: {}",
        dir.join("host-series.json").display()
    );
    println!(
        "source  sha256 {source}  {}",
        dir.join("source.img").display()
    );
    println!(
        "replica sha256 {replica}  {}",
        dir.join("replica.img").display()
    );
    if source != replica {
        bail!("REPLICA DIFFERS from the host's volume");
    }
    println!("verdict: replica identical to the host's volume");
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(ms) if ms >= 1000.0 => format!("{:.2} s", ms / 1000.0),
        Some(ms) => format!("{ms:.1} ms"),
        None => "-".into(),
    }
}
