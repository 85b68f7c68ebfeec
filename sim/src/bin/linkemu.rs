//! `linkemu`: a UDP and TCP relay that applies the dtu link model in both
//! directions. The first stdout line is `linkemu listening on ADDR` (so a
//! caller that asked for port 0 learns the port); a one-line summary goes to
//! stderr every `--report-interval`, a full one on exit (SIGINT, SIGTERM,
//! `--duration`) and on SIGUSR1, and `--stats-json` is rewritten on each of
//! those occasions.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtu_proto::units;
use dtu_sim::link::LinkOverrides;
use dtu_sim::presets;
use dtu_sim::relay::{format_interval, format_summary, Relay, RelayConfig, RelayStats};

#[derive(Parser, Debug)]
#[command(
    name = "linkemu",
    version,
    about = "Emulate a slow, lossy, long link between two addresses (UDP and TCP relay)",
    after_help = "Directions: \"up\" is from the --listen side (the side that connects, e.g. the \
primary DTU) to --forward; \"down\" is the way back. Flags without a direction set both; \
--up-*/--down-* and --up/--down KEY=VALUE,... set one (keys: rate, overhead, delay, jitter, queue, \
loss, loss-burst, ge, duplicate, reorder, reorder-delay, corrupt, outage; write ge values with ':' \
in such lists, e.g. ge=1%:25%).\n\nUnits: rates 1.544Mbit, 56k, 100M, 1G; durations 40ms, 1.5s, \
250us; probabilities 0.1% or 0.001; sizes 1500, 64KiB, 2MB.\n\nOn the wire each UDP datagram \
counts 28 extra bytes (IPv4+UDP, 48 over IPv6) and each TCP segment 52 (IPv4+TCP+timestamps, 72 \
over IPv6), plus the link's own --overhead (framing, default 0)."
)]
struct Cli {
    /// Address to listen on, UDP and TCP (port 0 picks a free port).
    #[arg(long, required_unless_present = "list_presets")]
    listen: Option<SocketAddr>,
    /// Address to relay to.
    #[arg(long, required_unless_present = "list_presets")]
    forward: Option<SocketAddr>,
    /// Start from a named preset (see --list-presets).
    #[arg(long)]
    preset: Option<String>,
    /// List the presets and exit.
    #[arg(long)]
    list_presets: bool,
    /// Random seed: the same seed and the same traffic give the same fates.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Line rate, both directions (0 or "unlimited": no limit).
    #[arg(long)]
    rate: Option<String>,
    /// One-way delay, both directions.
    #[arg(long)]
    delay: Option<String>,
    /// Delay variation (± around the delay; keeps order).
    #[arg(long)]
    jitter: Option<String>,
    /// Drop-tail queue limit in bytes (default: rate × max(RTT, 100 ms)).
    #[arg(long)]
    queue: Option<String>,
    /// Packet loss; with --loss-burst, the mean of a bursty (Gilbert) loss.
    #[arg(long)]
    loss: Option<String>,
    /// Mean loss burst length in packets (makes --loss bursty).
    #[arg(long, alias = "burst")]
    loss_burst: Option<String>,
    /// Explicit Gilbert–Elliott loss: p,r[,loss_in_bad[,loss_in_good]].
    #[arg(long, alias = "gilbert-elliott")]
    ge: Option<String>,
    /// Duplication probability.
    #[arg(long)]
    duplicate: Option<String>,
    /// Reordering probability (a reordered packet is held back by --reorder-delay).
    #[arg(long)]
    reorder: Option<String>,
    /// Extra delay of a reordered packet.
    #[arg(long)]
    reorder_delay: Option<String>,
    /// Corruption probability (one bit flipped).
    #[arg(long)]
    corrupt: Option<String>,
    /// Outage START..END or START+LENGTH, optional /PERIOD (repeatable), times since start.
    #[arg(long)]
    outage: Vec<String>,
    /// Link framing bytes per packet, besides IP/UDP/TCP headers.
    #[arg(long)]
    overhead: Option<String>,

    #[arg(long)]
    up_rate: Option<String>,
    #[arg(long)]
    down_rate: Option<String>,
    #[arg(long)]
    up_delay: Option<String>,
    #[arg(long)]
    down_delay: Option<String>,
    #[arg(long)]
    up_loss: Option<String>,
    #[arg(long)]
    down_loss: Option<String>,
    /// Up-direction overrides, KEY=VALUE,... (repeatable).
    #[arg(long)]
    up: Vec<String>,
    /// Down-direction overrides, KEY=VALUE,... (repeatable).
    #[arg(long)]
    down: Vec<String>,

    /// Wire bytes added to each UDP datagram (default 28 over IPv4, 48 over IPv6).
    #[arg(long)]
    udp_overhead: Option<u32>,
    /// Wire bytes added to each TCP segment (default 52 over IPv4, 72 over IPv6).
    #[arg(long)]
    tcp_overhead: Option<u32>,
    /// TCP segment payload size.
    #[arg(long, default_value_t = dtu_sim::relay::DEFAULT_TCP_SEGMENT)]
    tcp_segment: usize,
    /// Do not relay TCP.
    #[arg(long)]
    no_tcp: bool,
    /// Do not relay UDP.
    #[arg(long)]
    no_udp: bool,

    /// Waits for the next due packet shorter than this are spun, not slept.
    #[arg(long, default_value = "0")]
    spin: String,
    /// Interval of the one-line summaries on stderr (0: none).
    #[arg(long, default_value = "1s")]
    report_interval: String,
    /// Write the counters as JSON here (on exit, on SIGUSR1 and every report interval).
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// Exit after this long.
    #[arg(long)]
    duration: Option<String>,
}

fn overrides(cli: &Cli) -> Result<(LinkOverrides, LinkOverrides, LinkOverrides)> {
    let mut both = LinkOverrides::default();
    let pairs: [(&str, &Option<String>); 12] = [
        ("rate", &cli.rate),
        ("delay", &cli.delay),
        ("jitter", &cli.jitter),
        ("queue", &cli.queue),
        ("loss", &cli.loss),
        ("loss-burst", &cli.loss_burst),
        ("ge", &cli.ge),
        ("duplicate", &cli.duplicate),
        ("reorder", &cli.reorder),
        ("reorder-delay", &cli.reorder_delay),
        ("corrupt", &cli.corrupt),
        ("overhead", &cli.overhead),
    ];
    for (k, v) in pairs {
        if let Some(v) = v {
            both.set(k, v).with_context(|| format!("--{k} {v}"))?;
        }
    }
    for o in &cli.outage {
        both.set("outage", o)
            .with_context(|| format!("--outage {o}"))?;
    }
    let mut up = LinkOverrides::default();
    let mut down = LinkOverrides::default();
    for (o, rate, delay, loss, lists, name) in [
        (
            &mut up,
            &cli.up_rate,
            &cli.up_delay,
            &cli.up_loss,
            &cli.up,
            "up",
        ),
        (
            &mut down,
            &cli.down_rate,
            &cli.down_delay,
            &cli.down_loss,
            &cli.down,
            "down",
        ),
    ] {
        for (k, v) in [("rate", rate), ("delay", delay), ("loss", loss)] {
            if let Some(v) = v {
                o.set(k, v).with_context(|| format!("--{name}-{k} {v}"))?;
            }
        }
        for l in lists {
            o.merge_list(l).with_context(|| format!("--{name} {l}"))?;
        }
    }
    Ok((both, up, down))
}

fn write_json(path: &Path, stats: &RelayStats) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(stats)?;
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.list_presets {
        for p in presets::all() {
            println!("{:<15} {}", p.name, p.description);
            println!("{:<15}   up:   {}", "", p.up.describe());
            println!("{:<15}   down: {}", "", p.down.describe());
        }
        return Ok(());
    }
    let (Some(listen), Some(forward)) = (cli.listen, cli.forward) else {
        bail!("--listen and --forward are required");
    };
    let (both, up, down) = overrides(&cli)?;
    let link = presets::build(cli.preset.as_deref(), &both, &up, &down)?;
    let report_every = units::parse_duration_within(
        &cli.report_interval,
        Duration::ZERO,
        dtu_sim::link::MAX_SCHEDULE,
    )
    .context("--report-interval")?;
    let duration = cli
        .duration
        .as_deref()
        .map(|d| units::parse_duration_within(d, Duration::ZERO, dtu_sim::link::MAX_SCHEDULE))
        .transpose()
        .context("--duration")?;
    let mut cfg = RelayConfig::new(listen, forward, link);
    cfg.seed = cli.seed;
    cfg.udp_overhead = cli.udp_overhead;
    cfg.tcp_overhead = cli.tcp_overhead;
    cfg.tcp_segment = cli.tcp_segment;
    cfg.udp = !cli.no_udp;
    cfg.tcp = !cli.no_tcp;
    // Spinning burns a core; more than a few milliseconds of it is a typo.
    cfg.spin = units::parse_duration_within(&cli.spin, Duration::ZERO, Duration::from_millis(10))
        .context("--spin")?;
    if !cfg.udp && !cfg.tcp {
        bail!("--no-udp and --no-tcp together leave nothing to relay");
    }

    let term = Arc::new(AtomicBool::new(false));
    let usr1 = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, usr1.clone())?;

    let relay = Relay::start(cfg.clone())
        .with_context(|| format!("starting the relay on {listen} toward {forward}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "linkemu listening on {}", relay.local_addr())?;
        out.flush()?;
    }
    eprintln!(
        "linkemu: {} -> {} ({}), seed {}, udp overhead {} B, tcp overhead {} B, tcp segment {} B",
        relay.local_addr(),
        forward,
        cli.preset.as_deref().unwrap_or("no preset"),
        cfg.seed,
        cfg.udp_overhead(),
        cfg.tcp_overhead(),
        cfg.tcp_segment
    );
    eprintln!("linkemu: up:   {}", cfg.link.up.describe());
    eprintln!("linkemu: down: {}", cfg.link.down.describe());

    let start = Instant::now();
    let mut prev = relay.stats();
    let mut next_report = start + report_every;
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        if duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if usr1.swap(false, Ordering::Relaxed) {
            let s = relay.stats();
            eprint!("{}", format_summary(&s));
            if let Some(p) = &cli.stats_json {
                write_json(p, &s)?;
            }
        }
        if !report_every.is_zero() && Instant::now() >= next_report {
            let s = relay.stats();
            eprintln!("{}", format_interval(&prev, &s));
            if let Some(p) = &cli.stats_json {
                write_json(p, &s)?;
            }
            prev = s;
            next_report += report_every;
        }
    }
    let mut relay = relay;
    relay.stop();
    let s = relay.stats();
    eprint!("{}", format_summary(&s));
    if let Some(p) = &cli.stats_json {
        write_json(p, &s)?;
    }
    Ok(())
}
