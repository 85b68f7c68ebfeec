//! The `linkemu` binary as a user runs it: ping-like echo (UDP and TCP)
//! through it shows the configured one-way delays and serialization time;
//! the first stdout line names the bound address; SIGUSR1 prints a summary
//! and writes `--stats-json`; SIGTERM exits cleanly with a final summary;
//! per-direction flags override a preset; bad flags are refused with a
//! message. Timing bounds are ratios to the configured values: the lower
//! bound is exact (the relay never releases a packet early), the upper one
//! generous (a shared machine may deschedule it).

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Checks RTTs against an expected round trip: none shorter (allowing
/// 50 µs of clock granularity), the median within `slack` × expected.
fn check_rtts(what: &str, rtts: &[Duration], count: usize, expected: Duration, slack: f64) {
    assert_eq!(rtts.len(), count, "{what}: lost echoes on a lossless link");
    let min = *rtts.iter().min().unwrap();
    let med = median(rtts);
    eprintln!(
        "{what}: expected RTT {:.3} ms, measured min {:.3} / median {:.3} / max {:.3} ms \
         (median ratio {:.3})",
        ms(expected),
        ms(min),
        ms(med),
        ms(*rtts.iter().max().unwrap()),
        med.as_secs_f64() / expected.as_secs_f64()
    );
    assert!(
        min + Duration::from_micros(50) >= expected,
        "{what}: an echo came back in {min:?}, before {expected:?}"
    );
    assert!(
        med.as_secs_f64() <= expected.as_secs_f64() * slack,
        "{what}: median {med:?} vs expected {expected:?}"
    );
}

#[test]
fn echo_rtt_is_the_sum_of_the_configured_one_way_delays() {
    let _g = serial();
    let echo = Echo::start();
    // 10 ms up (preset-free flag for both), then 30 ms down (per direction).
    let args = ["--delay", "10ms", "--down-delay", "30ms"];
    let le_udp = Linkemu::start(echo.udp, &args);
    let rtts = udp_pings(le_udp.addr, 25, 64, Duration::from_secs(2));
    check_rtts("udp 10ms+30ms", &rtts, 25, Duration::from_millis(40), 1.25);
    let stats = le_udp.stop();
    // The relay's own one-way delays are the configured ones.
    let mean_up = num(&stats, &["up", "link", "delay", "sum_ns"])
        / num(&stats, &["up", "link", "delay", "count"]);
    let mean_down = num(&stats, &["down", "link", "delay", "sum_ns"])
        / num(&stats, &["down", "link", "delay", "count"]);
    assert!((mean_up / 10e6 - 1.0).abs() < 1e-3, "up {mean_up} ns");
    assert!((mean_down / 30e6 - 1.0).abs() < 1e-3, "down {mean_down} ns");

    let le_tcp = Linkemu::start(echo.tcp, &args);
    let rtts = tcp_pings(le_tcp.addr, 20, 64);
    check_rtts("tcp 10ms+30ms", &rtts, 20, Duration::from_millis(40), 1.25);
    le_tcp.stop();
}

#[test]
fn echo_rtt_at_t1_adds_serialization_of_the_wire_bytes() {
    let _g = serial();
    let echo = Echo::start();
    let le = Linkemu::start(echo.udp, &["--preset", "t1"]);
    // 1000 bytes + 28 header bytes at 1.544 Mbit/s, each way, plus 2 ms each way.
    let ser = Duration::from_secs_f64(1028.0 * 8.0 / 1_544_000.0);
    let expected = 2 * ser + Duration::from_millis(4);
    let rtts = udp_pings(le.addr, 25, 1000, Duration::from_secs(2));
    check_rtts("udp t1 1000 B", &rtts, 25, expected, 1.3);
    le.stop();

    let le = Linkemu::start(echo.udp, &["--preset", "transatlantic"]);
    let rtts = udp_pings(le.addr, 10, 64, Duration::from_secs(2));
    check_rtts(
        "udp transatlantic",
        &rtts,
        10,
        Duration::from_millis(80),
        1.15,
    );
    le.stop();
}

#[test]
fn signals_summaries_and_stats_json() {
    let echo = Echo::start();
    let le = Linkemu::start(
        echo.udp,
        &[
            "--preset",
            "isdn-128k",
            "--up-rate",
            "64k",
            "--report-interval",
            "0",
            "--seed",
            "7",
        ],
    );
    assert!(le.addr.ip().is_loopback() && le.addr.port() != 0);
    let rtts = udp_pings(le.addr, 5, 100, Duration::from_secs(2));
    assert_eq!(rtts.len(), 5);
    // No report interval: nothing is written until asked.
    assert!(!le.stats.exists());
    signal(&le.proc, rustix::process::Signal::USR1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !(le.stats.exists() && le.stderr_text().contains("linkemu summary")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no summary after SIGUSR1"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = le.stats_json();
    assert_eq!(num(&s, &["up", "link", "packets_delivered"]), 5.0);
    assert_eq!(num(&s, &["down", "link", "packets_delivered"]), 5.0);
    assert_eq!(num(&s, &["seed"]), 7.0);
    // The override applies to one direction only.
    assert_eq!(num(&s, &["config", "up", "rate_bps"]), 64_000.0);
    assert_eq!(num(&s, &["config", "down", "rate_bps"]), 128_000.0);
    let text = le.stderr_text();
    let final_stats = le.stop();
    assert_eq!(num(&final_stats, &["udp_flows"]), 1.0);
    assert!(text.contains("up    rate 64kbit"), "{text}");
    assert!(text.contains("down  rate 128kbit"), "{text}");
}

#[test]
fn periodic_one_line_reports() {
    let echo = Echo::start();
    let le = Linkemu::start(echo.udp, &["--preset", "e1", "--report-interval", "100ms"]);
    let rtts = udp_pings(le.addr, 10, 500, Duration::from_secs(2));
    assert_eq!(rtts.len(), 10);
    std::thread::sleep(Duration::from_millis(350));
    let text = le.stderr_text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("linkemu ") && l.contains(" | up "))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    assert!(
        lines[0].contains("Mbit/s") && lines[0].contains("drop q"),
        "{}",
        lines[0]
    );
    // The stats file follows the reports.
    assert!(le.stats.exists());
    le.stop();
}

#[test]
fn presets_are_listed_and_bad_flags_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_linkemu"))
        .arg("--list-presets")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for name in dtu_sim::presets::names() {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    assert!(text.contains("rate 1.544Mbit"));

    let bad = |args: &[&str], says: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_linkemu"))
            .args(["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains(says), "{args:?}: {err}");
    };
    bad(&["--preset", "t2"], "unknown preset `t2`");
    bad(&["--loss", "150%"], "not a probability");
    bad(&["--rate", "10MB/s"], "not a rate");
    bad(&["--outage", "5s..2s"], "outage");
    bad(&["--up", "speed=1M"], "unknown link parameter `speed`");
}
