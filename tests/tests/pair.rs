//! The DTU pair end to end: real `dtu` processes, `linkemu` between them,
//! real NBD clients as the host, and the replica compared byte for byte.

use std::process::Command;
use std::time::Duration;

use dtu_tests::*;

/// Acknowledge at `buffered` whatever the host's dirty %, so copies finish
/// at local speed and the link catches up behind them.
const FAST_ACKS: [&str; 4] = ["--trigger", "buffered", "--dirty-threshold", "0"];

#[test]
fn nbdcopy_over_a_t1_reaches_the_replica() {
    // A T1 carries under 0.2 MiB/s: 4 MiB (a quarter zeros) is ~20 s.
    let mut pair = Pair::init(
        "16MiB",
        &["--preset", "t1", "--seed", "3"],
        &["--link-rate", "1.544Mbit", "--link-rtt", "4ms"],
    );
    pair.start(&FAST_ACKS);
    let mut image = vec![0u8; 16 << 20];
    image[..4 << 20].copy_from_slice(&random_image(4 << 20, 1));
    pair.nbdcopy(&image[..4 << 20], Duration::from_secs(60));
    pair.wait_caught_up(Duration::from_secs(120));
    pair.assert_replica_equals(&image);
    let s = pair.primary_status();
    assert!(s.answered.buffered > 0);
    let r = pair.remote_status();
    assert!(r.consistent);
    assert_eq!(r.checksum_failures, 0);
}

#[test]
fn nbdcopy_over_a_lossy_wan_reaches_the_replica() {
    let mut pair = Pair::init(
        "64MiB",
        &["--preset", "lossy-wan", "--seed", "5"],
        &["--link-rate", "100Mbit", "--link-rtt", "30ms"],
    );
    pair.start(&FAST_ACKS);
    let image = random_image(64 << 20, 2);
    pair.nbdcopy(&image, Duration::from_secs(120));
    pair.wait_caught_up(Duration::from_secs(180));
    pair.assert_replica_equals(&image);
    let link = pair.link.as_mut().unwrap();
    assert!(link.proc.is_running());
}

#[test]
fn a_link_outage_mid_copy_loses_nothing() {
    let mut pair = Pair::init(
        "32MiB",
        &["--preset", "bridged-10m", "--seed", "7"],
        &["--link-rate", "10Mbit", "--link-rtt", "2ms"],
    );
    pair.start(&FAST_ACKS);
    let image = random_image(32 << 20, 3);
    let src = pair.path("source.img");
    std::fs::write(&src, &image).unwrap();
    require("nbdcopy");
    let mut copy = Command::new("nbdcopy");
    copy.arg(&src).arg(pair.nbd_uri());
    let copier = std::thread::spawn(move || run_ok(copy, Duration::from_secs(120)));
    // Let some data cross, then cut the link for several seconds.
    wait_until("data to cross the link", Duration::from_secs(30), || {
        pair.primary_status().remote_stored_seq > 10
    });
    pair.stop_link();
    std::thread::sleep(Duration::from_secs(4));
    let during = pair.primary_status();
    pair.start_link();
    copier
        .join()
        .expect("nbdcopy finished while the link was down or after");
    pair.wait_caught_up(Duration::from_secs(120));
    pair.assert_replica_equals(&image);
    let after = pair.primary_status();
    assert!(
        after.highest_seq > during.remote_stored_seq,
        "writes went on during the outage"
    );
}

/// fio's JSON report (fio may print notes before it).
fn fio_json(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let start = text.find("\n{").map_or(0, |i| i + 1);
    serde_json::from_str(&text[start..]).unwrap_or_else(|e| panic!("fio JSON: {e}: {text}"))
}

fn fio_qd1_median_ms(uri: &str, ops: u32) -> f64 {
    require("fio");
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=qd1",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=1",
        &format!("--size={}k", ops * 4),
        "--output-format=json",
    ]);
    let out = run_ok(cmd, Duration::from_secs(120));
    let v = fio_json(&out.stdout);
    let clat = &v["jobs"][0]["write"]["clat_ns"]["percentile"]["50.000000"];
    clat.as_f64().expect("fio's clat p50") / 1e6
}

#[test]
fn each_trigger_answers_before_or_after_the_round_trip() {
    // 50 ms each way: a 100 ms round trip.
    let mut pair = Pair::init(
        "16MiB",
        &["--delay", "50ms", "--seed", "1"],
        &["--link-rate", "100Mbit", "--link-rtt", "100ms"],
    );
    pair.start(&[]);
    let rtt_ms = 100.0;
    let uri = pair.nbd_uri();
    for (trigger, before_rtt) in [
        ("received", true),
        ("buffered", true),
        ("sent", true),
        ("remote-received", false),
        ("remote-stored", false),
    ] {
        pair.dtu(&[
            "policy",
            "set",
            "--trigger",
            trigger,
            "--dirty-threshold",
            "0",
        ]);
        let p50 = fio_qd1_median_ms(&uri, 12);
        if before_rtt {
            assert!(
                p50 < 0.5 * rtt_ms,
                "{trigger}: median {p50:.1} ms, expected well under the {rtt_ms} ms RTT"
            );
        } else {
            assert!(
                p50 >= 0.95 * rtt_ms,
                "{trigger}: median {p50:.1} ms, expected at least the {rtt_ms} ms RTT"
            );
        }
        eprintln!("{trigger}: QD1 4 KiB write median {p50:.2} ms (RTT {rtt_ms} ms)");
    }
    // Below the dirty threshold, spoofing is off: every write waits for
    // the remote, whatever the trigger.
    pair.dtu(&[
        "policy",
        "set",
        "--trigger",
        "buffered",
        "--dirty-threshold",
        "75",
    ]);
    pair.dtu(&["dirty", "10"]);
    let p50 = fio_qd1_median_ms(&uri, 12);
    assert!(
        p50 >= 0.95 * rtt_ms,
        "dirty 10% < 75%: median {p50:.1} ms should be at least the RTT"
    );
    let s = pair.primary_status();
    assert!(!s.spoofing_active);
    assert_eq!(s.effective_trigger, "remote-stored");
    pair.dtu(&["dirty", "90"]);
    let p50 = fio_qd1_median_ms(&uri, 12);
    assert!(
        p50 < 0.5 * rtt_ms,
        "dirty 90% >= 75%: spoofing at buffered, median {p50:.1} ms"
    );
    let s = pair.primary_status();
    assert!(s.spoofing_active);
    assert!(s.answered.received > 0 && s.answered.sent > 0 && s.answered.remote_received > 0);
}

#[test]
fn a_wrong_certificate_is_refused_and_nothing_reaches_the_replica() {
    let mut pair = Pair::init("16MiB", &[], &[]);
    // The primary pins a certificate the remote does not have.
    let other = dtu::identity::Identity::generate("dtu-remote").unwrap();
    let cfg = std::fs::read_to_string(pair.path("primary.toml")).unwrap();
    let pinned = cfg
        .lines()
        .find(|l| l.starts_with("peer_fingerprint"))
        .unwrap()
        .to_string();
    let cfg = cfg.replace(
        &pinned,
        &format!("peer_fingerprint = \"{}\"", other.fingerprint()),
    );
    std::fs::write(pair.path("primary.toml"), cfg).unwrap();
    pair.start(&FAST_ACKS);
    let image = random_image(1 << 20, 4);
    pair.nbdcopy(&image, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let s = pair.primary_status();
    assert_ne!(s.connection, dtu::status::ConnectionState::Connected);
    let detail = s.connection_detail.unwrap_or_default();
    assert!(
        detail.contains("pinned"),
        "the refusal names the fingerprints: {detail}"
    );
    assert!(
        pair.primary
            .as_ref()
            .unwrap()
            .log_text()
            .contains(&other.fingerprint().to_string())
            || detail.contains(&other.fingerprint().to_string())
    );
    assert_eq!(s.remote_stored_seq, 0);
    assert!(
        pair.replica_bytes().iter().all(|&b| b == 0),
        "nothing was written to the replica"
    );
    let r = pair.remote_status();
    assert_eq!(r.applied_ops, 0);
}

#[test]
fn fio_verifies_crc32c_through_the_export_with_reads_from_the_remote() {
    require("fio");
    let mut pair = Pair::init("32MiB", &[], &[]);
    // No local image: fio's verify reads are forwarded to the replica.
    pair.start(&FAST_ACKS);
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", pair.nbd_uri()),
        "--rw=randwrite",
        "--bsrange=4k-128k",
        "--size=16M",
        "--iodepth=8",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=json",
    ])
    .current_dir(pair.dir.path());
    let out = run_ok(cmd, Duration::from_secs(180));
    let v = fio_json(&out.stdout);
    assert_eq!(v["jobs"][0]["error"], 0, "fio reported an error");
    assert!(
        v["jobs"][0]["read"]["io_bytes"].as_u64().unwrap_or(0) > 0,
        "fio read back what it wrote"
    );
    pair.wait_caught_up(Duration::from_secs(60));
    assert!(pair.primary_status().reads > 0);
}

/// Whether one 4 KiB write through qemu-io is answered within `limit`.
fn write_answered_within(pair: &Pair, offset: u64, limit: Duration) -> bool {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", "-c", &format!("write -P 0x5a {offset} 4k")])
        .arg(pair.nbd_uri());
    let mut p = Proc::spawn("qemu-io", cmd, pair.path(&format!("qemu-io-{offset}.log")));
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if !p.is_running() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    p.kill();
    false
}

#[test]
fn with_the_remote_frozen_only_the_local_triggers_answer() {
    require("qemu-io");
    let mut pair = Pair::init("16MiB", &[], &[]);
    pair.start(&FAST_ACKS);
    assert!(write_answered_within(&pair, 0, Duration::from_secs(10)));
    pair.wait_caught_up(Duration::from_secs(30));
    // SIGSTOP: the remote's socket still takes packets, nothing answers.
    let pid = pair.remote.as_mut().unwrap().pid().unwrap().to_string();
    run_ok(
        {
            let mut c = Command::new("kill");
            c.args(["-STOP", &pid]);
            c
        },
        Duration::from_secs(5),
    );
    let mut offset = 4096;
    for (trigger, answers) in [
        ("received", true),
        ("buffered", true),
        ("sent", true),
        ("remote-received", false),
        ("remote-stored", false),
    ] {
        pair.dtu(&[
            "policy",
            "set",
            "--trigger",
            trigger,
            "--dirty-threshold",
            "0",
        ]);
        let answered = write_answered_within(&pair, offset, Duration::from_secs(3));
        assert_eq!(
            answered, answers,
            "trigger {trigger}: answered {answered} with the remote frozen"
        );
        offset += 4096;
    }
    run_ok(
        {
            let mut c = Command::new("kill");
            c.args(["-CONT", &pid]);
            c
        },
        Duration::from_secs(5),
    );
    // Thawed, everything reaches the replica, the writes that were never
    // answered included (their clients gave up, the primary did not).
    pair.wait_caught_up(Duration::from_secs(60));
    let replica = pair.replica_bytes();
    for block in 0..6 {
        assert!(
            replica[block * 4096..(block + 1) * 4096]
                .iter()
                .all(|&b| b == 0x5a),
            "block {block} did not reach the replica"
        );
    }
}

#[test]
fn a_checkpoint_from_the_library_and_the_cli_reaches_the_remote() {
    let mut pair = Pair::init("16MiB", &[], &[]);
    pair.start(&FAST_ACKS);
    pair.dtu(&["checkpoint", "before-upgrade"]);
    wait_until("the remote to record it", Duration::from_secs(30), || {
        pair.remote_status()
            .last_checkpoint
            .is_some_and(|c| c.contains("before-upgrade"))
    });
}
