//! ack-latency: what a host waits for each write. fio's nbd engine writes
//! 4 KiB blocks at queue depth 1 into a real `dtu primary` process's NBD
//! export, once per trigger (`dtu policy set --trigger X
//! --dirty-threshold 0`), with the remote reached directly (RTT 0) or
//! through `linkemu` adding 5 or 25 ms each way (RTT 10 and 50 ms). Beside
//! it, on the same disk: fio with `--fdatasync=1` on a local file (a
//! durable local write = the write plus its fdatasync), and fio against
//! `nbdkit file` (plain writes, and writes each followed by a flush), and
//! at each RTT the peer a user would script today: NBD over TCP through a
//! TCP `linkemu` with the same delay to `nbdkit file` (md RAID1 with a
//! remote NBD leg), write + flush at QD1.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::plot::{bars, Bars};
use super::report::f;
use super::tools::{fio, fio_nbd, free_port_pair, nbd_tcp_uri, Fio, Lat, Nbdkit};
use super::{BenchError, Opts, Report, Result, Table, Target};
use dtu_tests::{Link, Pair};

const TRIGGERS: [&str; 5] = [
    "received",
    "buffered",
    "sent",
    "remote-received",
    "remote-stored",
];
const RTTS: [u32; 3] = [0, 10, 50];

fn qd1(name: &str, ops: u32) -> Vec<String> {
    vec![
        format!("--name={name}"),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        "--iodepth=1".into(),
        format!("--size={}k", ops * 4),
    ]
}

fn local_fdatasync(dir: &Path, ops: u32) -> Result<(Fio, Lat)> {
    let mut a = qd1("local", ops);
    a.extend([
        "--ioengine=psync".into(),
        "--fdatasync=1".into(),
        format!("--filename={}", dir.join("local.img").display()),
    ]);
    let r = fio(&a, dir, Duration::from_secs(300))?;
    let sync = r.sync.ok_or_else(|| BenchError::Tool {
        tool: "fio".into(),
        detail: "no fdatasync latency in the report".into(),
    })?;
    let durable = r.write.plus(sync);
    Ok((r, durable))
}

/// The peer a user scripts today: md RAID1 with a remote NBD leg, whose
/// writes and flushes cross the link to `nbdkit file` over TCP. fio's
/// write + flush at QD1 through a TCP `linkemu` with `link` (none at RTT
/// 0: straight to nbdkit's port).
fn nbdkit_tcp_qd1(dir: &Path, ops: u32, link: &[&str]) -> Result<Lat> {
    let img = dir.join("nbdkit-tcp.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .map_err(|e| BenchError::io("nbdkit image", e))?;
    let port = free_port_pair()?;
    let kit = Nbdkit::start_tcp(&img, dir, port)?;
    let relay = if link.is_empty() {
        None
    } else {
        let forward = ([127, 0, 0, 1], port).into();
        Some(Link::start_tcp(dir, free_port_pair()?, forward, link))
    };
    let uri = relay
        .as_ref()
        .map_or_else(|| kit.uri(), |l| nbd_tcp_uri(l.addr));
    let mut a = fio_nbd("nbdkit-tcp", &uri);
    a.extend(qd1("nbdkit-tcp", ops).into_iter().skip(1));
    a.push("--fsync=1".into());
    let r = fio(&a, dir, Duration::from_secs(600))?;
    drop(relay);
    let _ = std::fs::remove_file(&img);
    let sync = r.sync.ok_or_else(|| BenchError::Tool {
        tool: "fio".into(),
        detail: "no flush latency in the report".into(),
    })?;
    Ok(r.write.plus(sync))
}

/// Writes in a run whose writes wait a round trip each: a time budget
/// over the RTT, 40 to `max` (all of `max` at RTT 0).
fn round_trip_ops(o: &Opts, rtt: u32, max: u32) -> u32 {
    o.pick(20_000u32, 3_000)
        .checked_div(rtt)
        .map_or(max, |n| n.clamp(40, max))
}

fn nbdkit_qd1(dir: &Path, ops: u32, flush: bool) -> Result<Fio> {
    let img = dir.join("nbdkit.img");
    let file = std::fs::File::create(&img).map_err(|e| BenchError::io("nbdkit image", e))?;
    file.set_len(64 << 20)
        .map_err(|e| BenchError::io("nbdkit image", e))?;
    let kit = Nbdkit::start(&img, dir)?;
    let mut a = fio_nbd("nbdkit", &kit.uri());
    a.extend(qd1("nbdkit", ops).into_iter().skip(1));
    if flush {
        // fio's nbd engine turns fsync into NBD_CMD_FLUSH and refuses
        // fdatasync (EINVAL): NBD has one flush.
        a.push("--fsync=1".into());
    }
    let r = fio(&a, dir, Duration::from_secs(300))?;
    Ok(match r.sync {
        Some(s) if flush => Fio {
            write: r.write.plus(s),
            ..r
        },
        _ => r,
    })
}

pub fn run(o: &Opts) -> Result<Report> {
    let mut r = Report::new("ack-latency", o.quick);
    let scratch = tempfile::Builder::new()
        .prefix("dtu-bench-lat-")
        .tempdir()
        .map_err(|e| BenchError::io("temp dir", e))?;
    let spoof_ops = o.pick(2000, 200);
    eprintln!("ack-latency: local fdatasync and nbdkit baselines ({spoof_ops} writes each)");
    let (_, local) = local_fdatasync(scratch.path(), spoof_ops)?;
    let kit = nbdkit_qd1(scratch.path(), spoof_ops, false)?;
    let kit_flush = nbdkit_qd1(scratch.path(), spoof_ops, true)?;

    let mut t = Table::new(
        "QD1 4 KiB write latency (ms) through the primary's NBD export, per trigger and RTT",
        &[
            "trigger",
            "RTT ms",
            "writes",
            "p50",
            "p99",
            "mean",
            "p99 / local fdatasync p99",
        ],
    );
    let mut lat: Vec<(String, u32, Lat)> = Vec::new();
    let mut peer: Vec<(u32, Lat)> = Vec::new();
    let mut quic_rtt = Vec::new();
    for rtt in RTTS {
        let link: Vec<String> = if rtt == 0 {
            Vec::new()
        } else {
            vec![
                "--delay".into(),
                format!("{}us", rtt * 500),
                "--seed".into(),
                o.seed.to_string(),
            ]
        };
        let link_ref: Vec<&str> = link.iter().map(String::as_str).collect();
        let rtt_cfg = format!("{}ms", rtt.max(1));
        let mut pair = Pair::init(
            "64MiB",
            &link_ref,
            &["--link-rate", "1Gbit", "--link-rtt", &rtt_cfg],
        );
        pair.start(&["--trigger", "buffered", "--dirty-threshold", "0"]);
        for trig in TRIGGERS {
            let remote = trig.starts_with("remote");
            // Remote triggers cost a round trip each: fewer writes at long RTTs.
            let ops = if remote {
                round_trip_ops(o, rtt, spoof_ops)
            } else {
                spoof_ops
            };
            pair.dtu(&["policy", "set", "--trigger", trig, "--dirty-threshold", "0"]);
            eprintln!("ack-latency: RTT {rtt} ms, {trig} ({ops} writes)");
            let mut a = fio_nbd("qd1", &pair.nbd_uri());
            a.extend(qd1("qd1", ops).into_iter().skip(1));
            let x = fio(&a, pair.dir.path(), Duration::from_secs(600))?;
            t.row(vec![
                trig.into(),
                rtt.to_string(),
                ops.to_string(),
                f(x.write.p50_ms, 3),
                f(x.write.p99_ms, 3),
                f(x.write.mean_ms, 3),
                f(x.write.p99_ms / local.p99_ms, 2),
            ]);
            lat.push((trig.into(), rtt, x.write));
        }
        let s = pair.primary_status();
        quic_rtt.push(json!({ "rtt_ms": rtt, "quic_rtt_ms": s.rtt_ms }));
        drop(pair);
        let ops = round_trip_ops(o, rtt, spoof_ops);
        eprintln!(
            "ack-latency: RTT {rtt} ms, NBD over TCP to nbdkit, write + flush ({ops} writes)"
        );
        let x = nbdkit_tcp_qd1(scratch.path(), ops, &link_ref)?;
        t.row(vec![
            "nbdkit over TCP, write + flush".into(),
            rtt.to_string(),
            x.n.to_string(),
            f(x.p50_ms, 3),
            f(x.p99_ms, 3),
            f(x.mean_ms, 3),
            f(x.p99_ms / local.p99_ms, 2),
        ]);
        peer.push((rtt, x));
    }
    for (name, x) in [
        ("local file, write + fdatasync", local),
        ("nbdkit file, write", kit.write),
        ("nbdkit file, write + flush", kit_flush.write),
    ] {
        t.row(vec![
            name.into(),
            "-".into(),
            x.n.to_string(),
            f(x.p50_ms, 3),
            f(x.p99_ms, 3),
            f(x.mean_ms, 3),
            f(x.p99_ms / local.p99_ms, 2),
        ]);
    }
    r.tables.push(t);

    let get = |trig: &str, rtt: u32| lat.iter().find(|l| l.0 == trig && l.1 == rtt).map(|l| l.2);
    for rtt in RTTS {
        if let Some(b) = get("buffered", rtt) {
            r.target(Target::new(
                format!("buffered p99 at RTT {rtt} ms vs local fdatasync p99"),
                "≤ 1.5 ×",
                format!(
                    "{:.3} ms vs {:.3} ms = {:.2} ×",
                    b.p99_ms,
                    local.p99_ms,
                    b.p99_ms / local.p99_ms
                ),
                b.p99_ms <= 1.5 * local.p99_ms,
            ));
        }
    }
    if let (Some(b0), Some(b50)) = (get("buffered", 0), get("buffered", 50)) {
        let change = b50.p99_ms / b0.p99_ms - 1.0;
        r.target(Target::new(
            "buffered p99 from RTT 0 to 50 ms",
            "changes < 10 %",
            format!(
                "{:.3} → {:.3} ms ({:+.0} %)",
                b0.p99_ms,
                b50.p99_ms,
                change * 100.0
            ),
            change.abs() < 0.10,
        ));
    }
    for (rtt, kit) in &peer {
        if let Some(s) = get("remote-stored", *rtt) {
            r.target(Target::new(
                format!(
                    "remote-stored p50 at RTT {rtt} ms vs NBD over TCP to nbdkit, write + flush"
                ),
                "≤ 1.1 ×",
                format!(
                    "{:.3} ms vs {:.3} ms = {:.2} ×",
                    s.p50_ms,
                    kit.p50_ms,
                    s.p50_ms / kit.p50_ms
                ),
                s.p50_ms <= 1.1 * kit.p50_ms,
            ));
        }
    }
    for rtt in RTTS {
        if let Some(s) = get("remote-stored", rtt) {
            let floor = rtt as f64 + local.p50_ms;
            r.target(Target::new(
                format!("remote-stored p50 at RTT {rtt} ms vs RTT + remote fdatasync p50"),
                "within 0.5 ms",
                format!(
                    "{:.3} ms vs {rtt} + {:.3} ms ({:+.3} ms)",
                    s.p50_ms,
                    local.p50_ms,
                    s.p50_ms - floor
                ),
                s.p50_ms - floor <= 0.5,
            ));
        }
    }
    r.note(
        "The remote's replica lives on the same disk as the local file, so the local \
         write + fdatasync latency stands for the remote's fdatasync.",
    );
    r.note(
        "A durable local write is fio's write latency plus its fdatasync latency, percentile by \
         percentile (a sum of percentiles bounds the percentile of the sum from above).",
    );

    // One bar group per trigger and baseline; p50 and p99 per RTT.
    let mut cats: Vec<String> = TRIGGERS.iter().map(|s| s.to_string()).collect();
    cats.extend([
        "local fdatasync".into(),
        "nbdkit".into(),
        "nbdkit + flush".into(),
        "nbdkit over TCP + flush".into(),
    ]);
    let base = [local, kit.write, kit_flush.write];
    let mut series = Vec::new();
    for (q, pick) in [("p50", 0usize), ("p99", 1)] {
        for rtt in RTTS {
            let v = |l: Lat| Some(if pick == 0 { l.p50_ms } else { l.p99_ms });
            let mut vals: Vec<Option<f64>> =
                TRIGGERS.iter().map(|tr| get(tr, rtt).and_then(v)).collect();
            vals.extend(base.iter().map(|b| if rtt == 0 { v(*b) } else { None }));
            vals.push(peer.iter().find(|p| p.0 == rtt).and_then(|p| v(p.1)));
            series.push((format!("{q}, RTT {rtt} ms"), vals));
        }
    }
    bars(
        &o.out.join("ack-latency"),
        &Bars {
            title: "QD1 4 KiB write latency per trigger (baselines under RTT 0)".into(),
            y_desc: "ms (log)".into(),
            categories: cats,
            series,
            guides: vec![],
            log_y: true,
            digits: None,
        },
    )?;
    r.data = json!({
        "local_fdatasync": local,
        "nbdkit": kit,
        "nbdkit_flush": kit_flush,
        "nbdkit_tcp_write_flush": peer.iter().map(|(rtt, l)| json!({ "rtt_ms": rtt, "lat": l })).collect::<Vec<_>>(),
        "dtu": lat.iter().map(|(t, rtt, l)| json!({ "trigger": t, "rtt_ms": rtt, "lat": l })).collect::<Vec<_>>(),
        "quic_rtt": quic_rtt,
    });
    Ok(r)
}
