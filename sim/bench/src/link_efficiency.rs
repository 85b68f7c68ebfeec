//! link-efficiency: how much of an emulated link's line rate dtu turns into
//! replicated payload. Incompressible 64 KiB writes stream into the primary
//! (trigger `buffered`, so the host is never the bottleneck); goodput is the
//! payload divided by the time from the first write until the remote has
//! stored the last one. Capacity is the preset's line rate, an IP-level
//! rate: every UDP datagram also costs its 28 bytes of IPv4 + UDP header,
//! so QUIC's packet headers, its AEAD tags, those 28 bytes and dtu's own
//! frame headers all count against dtu. Beside it, iperf3 TCP through the
//! same relay (its TCP mode; 52 header bytes per 1448-byte segment, so at
//! most 96.5 % of the line) is the peer figure.

use std::time::Duration;

use serde_json::json;

use dtu::transport::Congestion;

use super::inproc::{write_stream, Blocks, InprocPair, PairConfig};
use super::plot::{bars, Bars};
use super::report::{f, mbit};
use super::tools::{fio, fio_nbd, iperf3_tcp, nbd_tcp_uri, own_cpu_seconds, Iperf3Server, Nbdkit};
use super::{BenchError, Opts, Report, Result, Table, Target};

/// A link, how much to send over it (full run, quick run), the share of the
/// line wanted with `rate` (the controller a stated line should use), and whether cubic and BBR
/// also run on it (the links where the controller's reaction to loss or
/// reordering decides the result).
struct Case {
    preset: &'static str,
    /// How its rows and targets are named (the preset, unless a preset runs
    /// at two sizes).
    name: &'static str,
    /// Bytes in a full run, and in a quick one (0: not run when quick).
    full: u64,
    quick: u64,
    goal: f64,
    peers: bool,
}

const MIB: u64 = 1 << 20;

const fn case(preset: &'static str, full: u64, quick: u64, goal: f64, peers: bool) -> Case {
    Case {
        preset,
        name: preset,
        full,
        quick,
        goal,
        peers,
    }
}

const CASES: &[Case] = &[
    case("t1", 4 * MIB, MIB, 0.95, false),
    case("e1", 4 * MIB, MIB, 0.95, false),
    case("bridged-10m", 32 * MIB, 4 * MIB, 0.95, false),
    case("wan-100m-40ms", 256 * MIB, 32 * MIB, 0.95, false),
    // The second size: 90 s at the line, so a controller that
    // drifts or backs off late shows; full runs only.
    Case {
        name: "wan-100m-40ms 1 GiB",
        ..case("wan-100m-40ms", 1024 * MIB, 0, 0.95, false)
    },
    case("wan-1g-10ms", 1024 * MIB, 128 * MIB, 0.85, false),
    // Loss-based cubic runs at a tenth of the line here: 64 MiB keeps its
    // peer run to about a minute.
    case("lossy-wan", 64 * MIB, 32 * MIB, 0.90, true),
    case("bonded-reorder", 64 * MIB, 16 * MIB, 0.80, true),
    case("corrupt-wan", 64 * MIB, 16 * MIB, 0.80, true),
    case("thin-return", 32 * MIB, 8 * MIB, 0.80, false),
];

/// One transfer of `bytes` of `ratio`:1 data over `preset`, measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transfer {
    pub preset: String,
    pub line_bps: f64,
    pub bytes: u64,
    pub seconds: f64,
    pub goodput_bps: f64,
    /// Goodput over the line rate.
    pub ratio: f64,
    /// Wire bits (payload + 28 per datagram) the link carried up, over
    /// line rate × duration: how busy the link was.
    pub link_busy: f64,
    /// Payload over the UDP wire bytes that carried it (protocol overhead).
    pub payload_share: f64,
    pub datagrams: u64,
    /// Datagrams the link model lost (loss process) and tail-dropped (queue full).
    pub lost: u64,
    pub queue_drops: u64,
    pub retransmits: u64,
    /// QUIC packets declared lost (spurious ones included), and the times
    /// the congestion controller was told of a loss.
    pub quic_lost: u64,
    pub quic_congestion_events: u64,
    /// QUIC's smoothed RTT at the end, ms.
    pub quic_rtt_ms: Option<f64>,
    pub compression: f64,
    /// CPU seconds of this whole process (primary, remote and relay) per GB of payload.
    pub cpu_s_per_gb: f64,
}

/// Streams `bytes` of `ratio`:1 data through a pair that is already
/// connected over `preset`, and measures it.
pub fn transfer(pair: &InprocPair, bytes: u64, ratio: f64, seed: u64) -> Result<Transfer> {
    let preset = pair.preset.as_ref().expect("a link preset");
    let line_bps = preset.up.rate_bps as f64;
    let mut blocks = Blocks::new(64 << 10, ratio, 64, seed);
    let before = pair.relay_stats().expect("a relay");
    let quic0 = pair.status().quic;
    let cpu0 = own_cpu_seconds();
    let ideal = bytes as f64 * 8.0 / ratio / line_bps;
    let w = write_stream(pair.primary(), &mut blocks, bytes, 64)?;
    // Generous: a loss-based controller on a lossy link runs far below
    // the line, and that is a result to report, not a reason to fail.
    let limit = Duration::from_secs_f64((ideal * 40.0).max(120.0));
    let done = pair.wait_stored(w.last_seq, limit)?;
    let cpu = own_cpu_seconds() - cpu0;
    let after = pair.relay_stats().expect("a relay");
    let s = pair.status();
    let secs = (done - w.first).as_secs_f64();
    let up = |x: &dtu_sim::relay::RelayStats| {
        let l = &x.up.link;
        (
            l.bytes_delivered,
            l.packets_delivered,
            l.dropped_loss,
            l.dropped_queue,
        )
    };
    let (b0, p0, l0, q0) = up(&before);
    let (b1, p1, l1, q1) = up(&after);
    let overhead = pair
        .relay
        .as_ref()
        .map_or(28, |r| r.config().udp_overhead()) as u64;
    let wire = (b1 - b0) + (p1 - p0) * overhead;
    let goodput = bytes as f64 * 8.0 / secs;
    Ok(Transfer {
        preset: preset.name.into(),
        line_bps,
        bytes,
        seconds: secs,
        goodput_bps: goodput,
        ratio: goodput / line_bps,
        link_busy: wire as f64 * 8.0 / (line_bps * secs),
        payload_share: bytes as f64 / ratio / wire.max(1) as f64,
        datagrams: p1 - p0,
        lost: l1 - l0,
        queue_drops: q1 - q0,
        retransmits: s.retransmits,
        quic_lost: s.quic.lost_packets - quic0.lost_packets,
        quic_congestion_events: s.quic.congestion_events - quic0.congestion_events,
        quic_rtt_ms: s.quic.rtt_ms,
        compression: s.compression_ratio,
        cpu_s_per_gb: cpu / (bytes as f64 / 1e9),
    })
}

/// The round trip of a preset's line, ms: both one-way delays plus the
/// time the line takes to carry one full 1500-byte packet (on a T1 that is
/// 7.8 ms, more than its 4 ms of delay).
fn pair_rtt_ms(preset: &str) -> Option<f64> {
    let p = dtu_sim::presets::get(preset).ok()?;
    let serialize = if p.up.rate_bps == 0 {
        0.0
    } else {
        1500.0 * 8.0 / p.up.rate_bps as f64
    };
    Some(((p.up.delay + p.down.delay).as_secs_f64() + serialize) * 1e3).filter(|r| *r >= 1.0)
}

/// What a user scripts today: NBD over TCP through the same relay to
/// `nbdkit file` at the remote's address (md RAID1 with a remote NBD leg
/// sees this), fio writing `bytes` sequentially in 1 MiB blocks at queue
/// depth 8 and flushing at the end. Goodput in bit/s, from fio's start to
/// its exit.
fn nbdkit_tcp_peer(pair: &InprocPair, bytes: u64) -> Result<f64> {
    let dir = pair.dir.path();
    let img = dir.join("nbdkit-peer.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(bytes))
        .map_err(|e| BenchError::io("nbdkit image", e))?;
    let _kit = Nbdkit::start_tcp(&img, dir, pair.remote_port)?;
    let mut a = fio_nbd("nbdkit-tcp", &nbd_tcp_uri(pair.link_addr()));
    a.extend([
        "--rw=write".into(),
        "--bs=1M".into(),
        "--iodepth=8".into(),
        format!("--size={bytes}"),
        "--end_fsync=1".into(),
    ]);
    let line = pair.preset.as_ref().map_or(1e9, |p| p.up.rate_bps as f64);
    let limit = Duration::from_secs_f64((bytes as f64 * 8.0 / line * 40.0).max(120.0));
    let t0 = std::time::Instant::now();
    let r = fio(&a, dir, limit)?;
    let secs = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&img);
    Ok(r.io_bytes as f64 * 8.0 / secs)
}

pub fn run(o: &Opts) -> Result<Report> {
    let mut r = Report::new("link-efficiency", o.quick);
    let mut t = Table::new(
        "goodput of incompressible 64 KiB writes over the line rate, and iperf3 TCP through the same relay",
        &[
            "link", "line Mbit/s", "payload", "dtu Mbit/s", "dtu / line", "link busy", "payload share",
            "lost / queue-dropped", "iperf3 Mbit/s", "iperf3 / line", "dtu / iperf3",
            "nbdkit TCP / line", "CPU s/GB",
        ],
    );
    let mut rows = Vec::new();
    let secs = o.pick(10, 3);
    for c in CASES.iter().filter(|c| o.wants(c.preset)) {
        let bytes = o.pick(c.full, c.quick);
        if bytes == 0 {
            continue;
        }
        eprintln!(
            "link-efficiency: {} ({} MiB, iperf3 {secs} s)",
            c.name,
            bytes >> 20
        );
        let start = |congestion| {
            InprocPair::start(PairConfig {
                preset: Some(c.preset.into()),
                tcp: true,
                seed: o.seed,
                volume_size: bytes.clamp(64 * MIB, 1024 * MIB),
                nvbuf_size: (bytes + 16 * MIB).min(1024 * MIB),
                congestion,
                ..PairConfig::default()
            })
        };
        let pair = start(None)?;
        let iperf = {
            let _srv = Iperf3Server::start(pair.remote_port, pair.dir.path())?;
            iperf3_tcp(pair.link_addr(), secs)?
        };
        let iperf_ratio = iperf / pair.preset.as_ref().map_or(1.0, |p| p.up.rate_bps as f64);
        let kit = nbdkit_tcp_peer(&pair, bytes)?;
        let kit_ratio = kit / pair.preset.as_ref().map_or(1.0, |p| p.up.rate_bps as f64);
        // Where loss or reordering decides, cubic and BBR (what a user of
        // such a link would otherwise pick) run too.
        let mut runs = vec![("rate", transfer(&pair, bytes, 1.0, o.seed)?)];
        pair.shutdown()?;
        if c.peers {
            for (name, cc) in [("cubic", Congestion::Cubic), ("bbr", Congestion::Bbr)] {
                let pair = start(Some(cc))?;
                runs.push((name, transfer(&pair, bytes, 1.0, o.seed)?));
                pair.shutdown()?;
            }
        }
        let best_peer = runs[1..]
            .iter()
            .map(|(_, x)| x.ratio)
            .fold(0.0_f64, f64::max);
        for (cc, x) in &runs {
            let label = if runs.len() > 1 {
                format!("{} ({cc})", c.name)
            } else {
                c.name.to_string()
            };
            t.row(vec![
                label.clone(),
                mbit(x.line_bps),
                format!("{} MiB", bytes >> 20),
                mbit(x.goodput_bps),
                f(x.ratio, 3),
                f(x.link_busy, 3),
                f(x.payload_share, 3),
                format!("{} / {}", x.lost, x.queue_drops),
                mbit(iperf),
                f(iperf_ratio, 3),
                f(x.goodput_bps / iperf, 2),
                f(kit_ratio, 3),
                f(x.cpu_s_per_gb, 1),
            ]);
            if *cc == "rate" {
                r.target(Target::new(
                    format!("{}: goodput / line rate with `rate`", c.name),
                    format!("≥ {:.2}", c.goal),
                    f(x.ratio, 3),
                    x.ratio >= c.goal,
                ));
                // What a `remote-stored` write on this link waits for while
                // the bulk copy runs: the round trip through the queue the
                // controller keeps (cubic filled it to 374 ms on a 100 ms
                // line). Writes of the same volume also wait for the ones
                // ahead of them, in order: that backlog is the host's.
                if let (Some(rtt), Some(p)) = (x.quic_rtt_ms, pair_rtt_ms(c.preset)) {
                    r.target(Target::new(
                        format!(
                            "{}: QUIC RTT at the end of the bulk copy vs the line's RTT (+ one packet's time)",
                            c.name
                        ),
                        "≤ 1.5 ×",
                        format!("{rtt:.1} ms vs {p:.0} ms = {:.2} ×", rtt / p),
                        rtt <= 1.5 * p,
                    ));
                }
                // dtu's share of the line against a peer's, as a target.
                let versus = |what: &str, want: &'static str, peer: f64, ok: bool| {
                    Target::new(
                        format!("{}: {what}", c.name),
                        want,
                        format!("{:.2} × ({:.3} vs {peer:.3})", x.ratio / peer, x.ratio),
                        ok,
                    )
                };
                r.target(versus(
                    "above NBD over TCP to nbdkit",
                    "> 1.0 ×",
                    kit_ratio,
                    x.ratio > kit_ratio,
                ));
                if c.peers {
                    r.target(versus(
                        "`rate` over the better of cubic and BBR",
                        "≥ 0.9 ×",
                        best_peer,
                        x.ratio >= 0.9 * best_peer,
                    ));
                }
            }
            rows.push(json!({ "label": label, "congestion": cc, "dtu": x, "iperf3_bps": iperf, "iperf3_ratio": iperf_ratio, "nbdkit_tcp_bps": kit, "nbdkit_tcp_ratio": kit_ratio }));
            eprintln!(
                "  {label}: dtu {} Mbit/s ({:.3} of the line, link busy {:.3}, payload share {:.3}, lost {} / queue-dropped {}, QUIC lost {} in {} congestion events, RTT {:?} ms, {:.1} CPU-s/GB); iperf3 {} Mbit/s ({:.3}), nbdkit over TCP {} Mbit/s ({:.3})",
                mbit(x.goodput_bps), x.ratio, x.link_busy, x.payload_share, x.lost, x.queue_drops, x.quic_lost, x.quic_congestion_events, x.quic_rtt_ms, x.cpu_s_per_gb, mbit(iperf), iperf_ratio, mbit(kit), kit_ratio
            );
        }
    }
    r.tables.push(t);
    r.note(
        "dtu / line = link busy × payload share: the first is how much of the time the emulated \
         wire was sending, the second how much of what it sent was payload (QUIC, IP/UDP and dtu \
         headers, acknowledgements and retransmissions are the rest).",
    );
    r.note(
        "iperf3's TCP crosses the relay as a byte stream: a segment the model loses is delivered \
         one round trip late instead of shrinking TCP's window, so on lossy-wan the TCP figure is \
         optimistic (see the README's link emulation section).",
    );
    let cats: Vec<String> = rows
        .iter()
        .map(|v| v["label"].as_str().unwrap_or("").to_string())
        .collect();
    let col =
        |k: &dyn Fn(&serde_json::Value) -> Option<f64>| rows.iter().map(k).collect::<Vec<_>>();
    bars(
        &o.out.join("link-efficiency"),
        &Bars {
            title: "link efficiency: goodput / line rate (incompressible 64 KiB writes)".into(),
            y_desc: "share of the line rate".into(),
            categories: cats,
            series: vec![
                ("dtu goodput".into(), col(&|v| v["dtu"]["ratio"].as_f64())),
                (
                    "iperf3 TCP goodput".into(),
                    col(&|v| v["iperf3_ratio"].as_f64()),
                ),
                (
                    "NBD over TCP to nbdkit".into(),
                    col(&|v| v["nbdkit_tcp_ratio"].as_f64()),
                ),
                (
                    "dtu link busy (wire bits)".into(),
                    col(&|v| v["dtu"]["link_busy"].as_f64()),
                ),
            ],
            guides: vec![(0.95, "target 0.95".into()), (0.8, "0.8".into())],
            log_y: false,
            digits: Some(2),
        },
    )?;
    r.data = json!({ "cases": rows });
    Ok(r)
}
