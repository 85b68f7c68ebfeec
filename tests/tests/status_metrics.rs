//! What an operator reads from a running pair: `dtu status` as a table, as
//! JSON and under `--watch`, and `/metrics` scraped over HTTP and parsed by
//! the Prometheus project's own OpenMetrics parser (python3's
//! `prometheus_client`), whose families must have the right types,
//! cumulative buckets whose `+Inf` equals `_count`, and values that move
//! when the host writes. The link loses 2 % of its packets: QUIC's own
//! losses must show, beside dtu's.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dtu::status::{ConnectionState, Status};
use dtu_tests::*;
use serde_json::Value;

const FAST_ACKS: [&str; 4] = ["--trigger", "buffered", "--dirty-threshold", "0"];
/// The interpreter Debian's python3-prometheus-client installs into.
const PYTHON: &str = "/usr/bin/python3";

fn require_parser() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{PYTHON} cannot import prometheus_client; `.ci/run` installs it (apt-get install python3-prometheus-client)"
    );
}

/// The address a DTU announced for its metrics endpoint in its log.
fn metrics_addr(proc: &Proc) -> SocketAddr {
    let mut addr = None;
    wait_until(
        "the metrics address in the log",
        Duration::from_secs(20),
        || {
            addr = proc.log_text().lines().find_map(|l| {
                l.strip_prefix("metrics on http://")
                    .and_then(|rest| rest.strip_suffix("/metrics"))
                    .and_then(|a| a.parse().ok())
            });
            addr.is_some()
        },
    );
    addr.unwrap()
}

struct HttpAnswer {
    code: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request with `Connection: close`, bounded in time.
fn http(addr: SocketAddr, method: &str, path: &str) -> HttpAnswer {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("answer");
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line of {head:?}"));
    HttpAnswer {
        code,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// One metric family as the independent parser saw it.
#[derive(Debug)]
struct Family {
    kind: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Scrapes `/metrics` and parses it with python3's prometheus_client.
fn scrape(addr: SocketAddr, dir: &Path, name: &str) -> BTreeMap<String, Family> {
    let a = http(addr, "GET", "/metrics");
    assert_eq!(a.code, 200, "{}", a.head);
    assert!(
        a.head
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{}",
        a.head
    );
    let file = dir.join(format!("{name}.metrics"));
    std::fs::write(&file, &a.body).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openmetrics_to_json.py");
    let mut cmd = Command::new(PYTHON);
    cmd.arg(script).arg(&file);
    let out = run_ok(cmd, Duration::from_secs(30));
    let v: Value = serde_json::from_slice(&out.stdout).expect("the parser's JSON");
    let mut families = BTreeMap::new();
    for f in v.as_array().expect("a list of families") {
        let samples = f["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                (
                    s["name"].as_str().unwrap().to_string(),
                    labels,
                    s["value"].as_f64().unwrap(),
                )
            })
            .collect();
        families.insert(
            f["name"].as_str().unwrap().to_string(),
            Family {
                kind: f["type"].as_str().unwrap().to_string(),
                samples,
            },
        );
    }
    check_histograms(&families);
    families
}

/// Every histogram series: buckets in increasing `le`, cumulative counts,
/// `+Inf` last and equal to `_count`.
fn check_histograms(families: &BTreeMap<String, Family>) {
    for (name, f) in families.iter().filter(|(_, f)| f.kind == "histogram") {
        // Labels but `le` -> ((le, cumulative count) per bucket, _count).
        type Buckets = (Vec<(f64, f64)>, Option<f64>);
        let mut series: BTreeMap<Vec<(String, String)>, Buckets> = BTreeMap::new();
        for (sample, labels, v) in &f.samples {
            let key: Vec<_> = labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let e = series.entry(key).or_default();
            if sample.ends_with("_bucket") {
                let le: f64 = labels["le"].replace("+Inf", "inf").parse().unwrap();
                e.0.push((le, *v));
            } else if sample.ends_with("_count") {
                e.1 = Some(*v);
            }
        }
        assert!(!series.is_empty(), "{name} has no series");
        for (key, (buckets, count)) in series {
            assert!(buckets.len() > 2, "{name}{key:?}: {buckets:?}");
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{name}{key:?} buckets not cumulative: {buckets:?}"
            );
            let last = buckets.last().unwrap();
            assert!(last.0.is_infinite(), "{name}{key:?}: no +Inf bucket");
            assert_eq!(Some(last.1), count, "{name}{key:?}: +Inf vs _count");
        }
    }
}

/// The value of `sample` with `labels` (a subset match).
fn value(
    families: &BTreeMap<String, Family>,
    family: &str,
    sample: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let f = families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}: {:?}", families.keys()));
    f.samples
        .iter()
        .find(|(n, l, _)| {
            n == sample
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {sample}{labels:?} in {family}: {:?}", f.samples))
        .2
}

fn kind(families: &BTreeMap<String, Family>, family: &str) -> String {
    families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}: {:?}", families.keys()))
        .kind
        .clone()
}

#[test]
fn metrics_of_a_running_pair_parse_and_move() {
    require_parser();
    require("nbdcopy");
    let mut pair = Pair::init(
        "16MiB",
        &["--preset", "ethernet-100m", "--loss", "2%", "--seed", "11"],
        &["--link-rate", "100Mbit", "--link-rtt", "1ms"],
    );
    pair.start_link();
    pair.start_remote(&["--metrics", "127.0.0.1:0"]);
    let mut primary_args = FAST_ACKS.to_vec();
    primary_args.extend(["--metrics", "127.0.0.1:0"]);
    pair.start_primary(&primary_args);
    let p_addr = metrics_addr(pair.primary.as_ref().unwrap());
    let r_addr = metrics_addr(pair.remote.as_ref().unwrap());
    wait_until("the link", Duration::from_secs(20), || {
        pair.primary_status().connection == ConnectionState::Connected
    });

    // The HTTP side: what is not /metrics is refused with a word.
    assert_eq!(http(p_addr, "GET", "/nothing").code, 404);
    let post = http(p_addr, "POST", "/metrics");
    assert_eq!(post.code, 405);
    assert!(post.head.contains("allow: get, head"), "{}", post.head);

    let dir = pair.dir.path().to_path_buf();
    let p0 = scrape(p_addr, &dir, "primary-0");
    let r0 = scrape(r_addr, &dir, "remote-0");
    for (f, k) in [
        ("dtu_link_sent_bytes", "counter"),
        ("dtu_quic_lost_packets", "counter"),
        ("dtu_quic_sent_packets", "counter"),
        ("dtu_quic_congestion_events", "counter"),
        ("dtu_answered", "counter"),
        ("dtu_retransmits", "counter"),
        ("dtu_host_written_bytes", "counter"),
        ("dtu_ack_latency_seconds", "histogram"),
        ("dtu_replication_delay_seconds", "histogram"),
        ("dtu_nvbuf_used_bytes", "gauge"),
        ("dtu_nvbuf_capacity_bytes", "gauge"),
        ("dtu_connection_state", "gauge"),
        ("dtu_role", "gauge"),
        ("dtu_quic_path_mtu_bytes", "gauge"),
        ("dtu_quic_cwnd_bytes", "gauge"),
        ("dtu_remote_stored_seq", "gauge"),
    ] {
        assert_eq!(kind(&p0, f), k, "primary {f}");
    }
    for (f, k) in [
        ("dtu_applied_bytes", "counter"),
        ("dtu_stored_bytes", "counter"),
        ("dtu_link_received_bytes", "counter"),
        ("dtu_stored_seq", "gauge"),
        ("dtu_applied_seq", "gauge"),
        ("dtu_consistent", "gauge"),
    ] {
        assert_eq!(kind(&r0, f), k, "remote {f}");
    }
    assert_eq!(
        value(&p0, "dtu_role", "dtu_role", &[("role", "primary")]),
        1.0
    );
    assert_eq!(
        value(&r0, "dtu_role", "dtu_role", &[("role", "remote")]),
        1.0
    );
    for m in [&p0, &r0] {
        let up = |s| {
            value(
                m,
                "dtu_connection_state",
                "dtu_connection_state",
                &[("state", s)],
            )
        };
        assert_eq!(up("connected"), 1.0);
        assert_eq!(up("connecting") + up("refused") + up("waiting"), 0.0);
    }
    let nvbuf = value(
        &p0,
        "dtu_nvbuf_capacity_bytes",
        "dtu_nvbuf_capacity_bytes",
        &[],
    );
    assert!(nvbuf >= (60 << 20) as f64, "nvbuf capacity {nvbuf}");

    let data = random_image(4 << 20, 21);
    pair.nbdcopy(&data, Duration::from_secs(60));
    pair.wait_caught_up(Duration::from_secs(120));
    // The remote's stored frontier reaches the primary's on the next ack.
    let highest = pair.primary_status().highest_seq;
    wait_until("the remote's status", Duration::from_secs(10), || {
        pair.remote_status().stored_seq >= highest
    });

    let p1 = scrape(p_addr, &dir, "primary-1");
    let r1 = scrape(r_addr, &dir, "remote-1");
    let grew = |a: &BTreeMap<String, Family>,
                b: &BTreeMap<String, Family>,
                f: &str,
                s: &str,
                l: &[(&str, &str)]| {
        let (x, y) = (value(a, f, s, l), value(b, f, s, l));
        assert!(y > x, "{s}{l:?} did not grow: {x} -> {y}");
        y - x
    };
    let written = grew(
        &p0,
        &p1,
        "dtu_host_written_bytes",
        "dtu_host_written_bytes_total",
        &[],
    );
    // random_image zeroes the first quarter of every MiB, which nbdcopy
    // sends as zeroing (a trim on the primary): the rest is written.
    assert!(written >= (3 << 20) as f64, "host wrote {written}");
    grew(
        &p0,
        &p1,
        "dtu_link_sent_bytes",
        "dtu_link_sent_bytes_total",
        &[],
    );
    grew(
        &p0,
        &p1,
        "dtu_quic_sent_packets",
        "dtu_quic_sent_packets_total",
        &[],
    );
    let buffered = [("trigger", "buffered")];
    let answered = grew(&p0, &p1, "dtu_answered", "dtu_answered_total", &buffered);
    // One latency sample per answer, in the answering trigger's series.
    let lat = grew(
        &p0,
        &p1,
        "dtu_ack_latency_seconds",
        "dtu_ack_latency_seconds_count",
        &buffered,
    );
    assert_eq!(lat, answered);
    grew(
        &p0,
        &p1,
        "dtu_replication_delay_seconds",
        "dtu_replication_delay_seconds_count",
        &[],
    );
    grew(
        &p0,
        &p1,
        "dtu_remote_stored_seq",
        "dtu_remote_stored_seq",
        &[],
    );
    // 2 % of the packets vanish on the link: QUIC sees it even where dtu
    // resends nothing.
    let lost = value(
        &p1,
        "dtu_quic_lost_packets",
        "dtu_quic_lost_packets_total",
        &[],
    );
    assert!(lost > 0.0, "QUIC lost no packets on a link losing 2 %");
    let applied = grew(
        &r0,
        &r1,
        "dtu_applied_bytes",
        "dtu_applied_bytes_total",
        &[],
    );
    assert!(applied >= (3 << 20) as f64, "remote applied {applied}");
    grew(&r0, &r1, "dtu_stored_bytes", "dtu_stored_bytes_total", &[]);
    grew(
        &r0,
        &r1,
        "dtu_link_received_bytes",
        "dtu_link_received_bytes_total",
        &[],
    );
    assert_eq!(
        value(&r1, "dtu_stored_seq", "dtu_stored_seq", &[]),
        value(&p1, "dtu_remote_stored_seq", "dtu_remote_stored_seq", &[])
    );

    // The same losses in the status, table and JSON.
    let s = pair.primary_status();
    assert!(
        s.quic.lost_packets as f64 >= lost,
        "{} < {lost}",
        s.quic.lost_packets
    );
    assert!(s.quic.lost_packets > 0 && s.quic.sent_packets > s.quic.lost_packets);
    let text = pair.dtu(&["status"]);
    let quic_row = text
        .lines()
        .find(|l| l.trim_start().starts_with("quic "))
        .unwrap_or_else(|| panic!("no quic row in\n{text}"));
    assert!(
        quic_row.contains(" lost (") && quic_row.contains("congestion events"),
        "{quic_row}"
    );
}

/// `dtu status ARGS` against `config`, with a time limit.
fn status_cmd(pair: &Pair, config: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(dtu_bin());
    cmd.arg("status")
        .args(args)
        .arg("--config")
        .arg(pair.path(config));
    cmd
}

/// Lines a `dtu status --watch` prints within `for_`; the process is
/// killed then.
fn watch_lines(mut cmd: Command, for_: Duration) -> Vec<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dtu status --watch");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + for_;
    let mut lines = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "--watch stopped by itself"
    );
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn status_table_json_and_watch_of_a_running_pair() {
    require("nbdcopy");
    let mut pair = Pair::init("16MiB", &[], &[]);
    pair.start(&FAST_ACKS);
    pair.nbdcopy(&random_image(1 << 20, 5), Duration::from_secs(60));
    pair.wait_caught_up(Duration::from_secs(60));

    // The table, both sides.
    let text = String::from_utf8(
        run_ok(
            status_cmd(&pair, "primary.toml", &[]),
            Duration::from_secs(20),
        )
        .stdout,
    )
    .unwrap();
    for want in [
        "dtu primary",
        "connection ",
        "connected to 127.0.0.1:",
        "ack latency ",
        "  at buffered ",
        "replication delay ",
        "quic ",
        "packets sent",
        "trigger ",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    let remote = String::from_utf8(
        run_ok(
            status_cmd(&pair, "remote.toml", &[]),
            Duration::from_secs(20),
        )
        .stdout,
    )
    .unwrap();
    for want in [
        "dtu remote",
        "connected from 127.0.0.1:",
        "consistent",
        "quic ",
    ] {
        assert!(remote.contains(want), "{want:?} not in\n{remote}");
    }

    // JSON: one object per call, the old names and the new distributions.
    let json = run_ok(
        status_cmd(&pair, "primary.toml", &["--json"]),
        Duration::from_secs(20),
    )
    .stdout;
    let v: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["role"], "primary");
    assert_eq!(v["connection"], "connected");
    let answered = v["answered"]["buffered"].as_u64().unwrap();
    assert!(answered > 0);
    assert_eq!(
        v["ack_latency_by_trigger"]["buffered"]["count"].as_u64(),
        Some(answered)
    );
    assert!(v["ack_latency_p50_ms"].as_f64().is_some());
    assert!(v["replication_delay_p99_ms"].as_f64().is_some());
    let Status::Primary(p) = serde_json::from_value::<Status>(v).unwrap() else {
        panic!("not a primary")
    };
    assert!(p.quic.sent_packets > 0 && p.quic.connections >= 1);
    let json = run_ok(
        status_cmd(&pair, "remote.toml", &["--json"]),
        Duration::from_secs(20),
    )
    .stdout;
    let Status::Remote(r) = serde_json::from_slice::<Status>(&json).unwrap() else {
        panic!("not a remote")
    };
    assert_eq!(r.connection, ConnectionState::Connected);
    assert!(r.stored_bytes >= 3 << 18, "{}", r.stored_bytes);

    // --watch: a fresh status each period until stopped.
    let lines = watch_lines(
        status_cmd(&pair, "primary.toml", &["--watch", "0.2", "--json"]),
        Duration::from_secs(3),
    );
    assert!(
        lines.len() >= 3,
        "{} refreshes in 3 s: {lines:?}",
        lines.len()
    );
    let uptimes: Vec<f64> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("one JSON status per line")["uptime_s"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(uptimes.windows(2).all(|w| w[0] < w[1]), "{uptimes:?}");
    let frames = watch_lines(
        status_cmd(&pair, "remote.toml", &["--watch", "0.2"]),
        Duration::from_secs(2),
    )
    .iter()
    .filter(|l| l.ends_with("dtu remote"))
    .count();
    assert!(frames >= 2, "{frames} table frames");

    // Periods that cannot be slept are refused with a word, not a panic.
    for bad in ["inf", "NaN", "-1", "0", "1e19"] {
        // `--watch=-1`: a lone `-1` would read as an option.
        let arg = format!("--watch={bad}");
        let out = run_limited(
            status_cmd(&pair, "primary.toml", &[&arg]),
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--watch {bad} was accepted");
        assert!(err.contains("between 0.1 and 3600"), "--watch {bad}: {err}");
        assert!(!err.contains("panicked"), "--watch {bad}: {err}");
    }
}
