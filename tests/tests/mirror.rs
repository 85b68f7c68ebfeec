//! The mirror from a full disk and through outages, with real processes and
//! real tools: an ext4 image built by `mkfs.ext4 -d` is the primary's local
//! disk; its initial sync crosses an emulated WAN while fio writes, through
//! a SIGKILL of the primary and then of the remote, and the replica comes
//! out byte-equal and `e2fsck -fn` clean. An outage longer than a small
//! nvbuf holds overflows to the changed-block map without stalling the host
//! and resyncs. `dtu verify` reports bytes flipped in the replica file and
//! `--repair` fixes them.
//!
//! `DTU_LONG=1` runs the overflow case at the full size (a 60 s
//! outage, 200 MiB of host writes) instead of the CI size.

use std::process::Command;
use std::time::{Duration, Instant};

use dtu_tests::{random_image, require, run_limited, run_ok, wait_until, Pair, Proc};

const MIB: u64 = 1 << 20;

/// Adds `local = "local.img"` (the primary's local disk) and extra `[nvbuf]`
/// lines to the primary's config.
fn with_local(pair: &Pair, nvbuf_extra: &str) {
    let path = pair.path("primary.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    let cfg = cfg
        .replace("[nbd]\n", "[nbd]\nlocal = \"local.img\"\n")
        .replace("[nvbuf]\n", &format!("[nvbuf]\n{nvbuf_extra}"));
    std::fs::write(&path, cfg).unwrap();
}

/// The pair is idle and in sync.
fn settled(pair: &Pair) -> bool {
    let s = pair.primary_status();
    let r = pair.remote_status();
    s.mirror.mode == "journal"
        && s.mirror.out_of_sync_bytes == 0
        && !s.mirror.sync.sync.active
        && !s.mirror.sync.verify.active
        && s.remote_stored_seq == s.highest_seq
        && r.consistent
}

fn assert_files_equal(a: &std::path::Path, b: &std::path::Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let n = x.len().max(y.len());
    let at = |v: &[u8], i: usize| v.get(i).copied().unwrap_or(0);
    if let Some(i) = (0..n).find(|&i| at(&x, i) != at(&y, i)) {
        panic!(
            "{} and {} differ at byte {i} (block {}): {:#04x} vs {:#04x}",
            a.display(),
            b.display(),
            i / 4096,
            at(&x, i),
            at(&y, i)
        );
    }
}

/// fio writing random data to `offset..offset+size` of the export.
fn fio(pair: &Pair, offset: u64, size: u64, log: &str, extra: &[&str]) -> Proc {
    require("fio");
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=host",
        "--ioengine=nbd",
        &format!("--uri={}", pair.nbd_uri()),
        "--rw=randwrite",
        "--bs=64k",
        "--iodepth=4",
        &format!("--offset={offset}"),
        &format!("--size={size}"),
        "--refill_buffers",
        "--output-format=json",
        &format!("--output={}", pair.path(&format!("{log}.json")).display()),
    ])
    .args(extra);
    Proc::spawn("fio", cmd, pair.path(&format!("{log}.log")))
}

fn fio_json(pair: &Pair, log: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(pair.path(&format!("{log}.json"))).unwrap();
    // fio may print notes before the JSON document.
    let start = text.find('{').expect("fio's JSON output");
    serde_json::from_str(&text[start..]).expect("fio's JSON output")
}

fn wait_exit(p: &mut Proc, limit: Duration) {
    wait_until("fio to finish", limit, || !p.is_running());
}

/// A directory tree of files with mixed content, about `total` bytes.
fn tree(dir: &std::path::Path, total: usize) {
    let mut made = 0;
    let mut i = 0u64;
    while made < total {
        let sub = dir.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        let len = (64 << 10) + (i as usize * 77_777) % (3 << 20);
        std::fs::write(sub.join(format!("f{i}.bin")), random_image(len, i)).unwrap();
        made += len;
        i += 1;
    }
}

/// Bytes of `path` that are not zero, rounded to 4 KiB blocks.
fn nonzero_bytes(path: &std::path::Path) -> u64 {
    let v = std::fs::read(path).unwrap();
    v.chunks(4096).filter(|b| b.iter().any(|&x| x != 0)).count() as u64 * 4096
}

#[test]
fn an_ext4_disk_syncs_over_a_wan_through_kills_of_both_sides_while_fio_writes() {
    require("mkfs.ext4");
    require("e2fsck");
    // The volume: a 256 MiB ext4 file system, then 64 MiB fio writes to.
    let mut pair = Pair::init(
        "320MiB",
        &["--preset", "wan-100m-40ms", "--seed", "5"],
        &["--link-rate", "100Mbit", "--link-rtt", "40ms"],
    );
    let src = pair.path("tree");
    tree(&src, 48 << 20);
    let local = pair.path("local.img");
    std::fs::File::create(&local)
        .unwrap()
        .set_len(320 * MIB)
        .unwrap();
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-b", "4096", "-E", "nodiscard", "-d"])
        .arg(&src)
        .arg(&local)
        .arg("256M");
    run_ok(mkfs, Duration::from_secs(60));
    let image_bytes = nonzero_bytes(&local);
    with_local(&pair, "");
    pair.start(&[]);
    let mut host = fio(&pair, 256 * MIB, 64 * MIB, "fio", &["--rate=2m"]);

    // Counters restart with each process: add up what each one sent.
    let mut lane_bytes = 0u64;
    let mut host_bytes = 0u64;
    let sync_at = |pair: &Pair, frac: f64| {
        wait_until("the sync to progress", Duration::from_secs(120), || {
            let s = pair.primary_status().mirror.sync.sync;
            s.active && s.done_bytes as f64 >= frac * s.total_bytes as f64
        });
    };
    sync_at(&pair, 0.3);
    let s = pair.primary_status();
    lane_bytes += s.lane_bytes;
    host_bytes += s.bytes_written;
    pair.primary.as_mut().unwrap().kill();
    wait_exit(&mut host, Duration::from_secs(30));
    pair.start_primary(&[]);
    let mut host = fio(&pair, 256 * MIB, 64 * MIB, "fio2", &["--rate=2m"]);
    sync_at(&pair, 0.6);
    pair.remote.as_mut().unwrap().kill();
    pair.start_remote(&[]);
    wait_until("the sync to end", Duration::from_secs(300), || {
        settled(&pair)
    });
    wait_exit(&mut host, Duration::from_secs(120));
    pair.wait_caught_up(Duration::from_secs(60));
    let s = pair.primary_status();
    lane_bytes += s.lane_bytes;
    host_bytes += s.bytes_written;
    let decision = s.mirror.decision.clone().unwrap_or_default();
    eprintln!(
        "image {image_bytes} non-zero bytes, host {host_bytes}, lanes {lane_bytes}; {decision}"
    );
    // The sync resumed instead of starting over: what crossed is at most
    // 1.2 × the image's data plus what the host wrote (incompressible).
    assert!(
        lane_bytes as f64 <= 1.2 * image_bytes as f64 + 1.1 * host_bytes as f64,
        "{lane_bytes} bytes crossed for {image_bytes} of image and {host_bytes} of host writes"
    );
    pair.primary.as_mut().unwrap().stop(Duration::from_secs(10));
    pair.remote.as_mut().unwrap().stop(Duration::from_secs(10));
    assert_files_equal(&pair.path("replica.img"), &local);
    let mut fsck = Command::new("e2fsck");
    fsck.arg("-fn").arg(pair.path("replica.img"));
    let out = run_limited(fsck, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "e2fsck -fn on the replica: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_outage_longer_than_the_nvbuf_goes_ahead_without_stalling_the_host_and_resyncs() {
    let long = std::env::var_os("DTU_LONG").is_some();
    let (outage, written) = if long {
        (Duration::from_secs(60), 200 * MIB)
    } else {
        (Duration::from_secs(8), 48 * MIB)
    };
    let mut pair = Pair::init(
        "128MiB",
        &["--preset", "gige", "--seed", "6"],
        &["--nvbuf-size", "16MiB"],
    );
    std::fs::File::create(pair.path("local.img"))
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    with_local(&pair, "overflow = \"bitmap\"\noverflow_after = \"2s\"\n");
    // The replica starts equal to the empty local disk.
    let cfg = std::fs::read_to_string(pair.path("primary.toml")).unwrap();
    std::fs::write(
        pair.path("primary.toml"),
        cfg.replace("initial = \"full\"", "initial = \"assume-in-sync\""),
    )
    .unwrap();
    pair.start(&[]);
    wait_until("the pair to settle", Duration::from_secs(30), || {
        settled(&pair)
    });

    pair.stop_link();
    let started = Instant::now();
    let mut host = fio(
        &pair,
        0,
        128 * MIB,
        "outage",
        &[&format!("--io_size={written}"), "--rate=12m"],
    );
    let mut modes = vec!["journal".to_string()];
    while host.is_running() || started.elapsed() < outage {
        let m = pair.primary_status().mirror.mode;
        if modes.last() != Some(&m) {
            modes.push(m);
        }
        assert!(
            started.elapsed() < outage + Duration::from_secs(120),
            "the host's writes did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_exit(&mut host, Duration::from_secs(5));
    let s = pair.primary_status();
    assert_eq!(s.mirror.mode, "ahead", "modes seen: {modes:?}");
    let marked = s.mirror.out_of_sync_bytes;
    assert!(marked > 0);
    let lanes_before = s.lane_bytes;
    pair.start_link();
    let mut saw_sync = false;
    wait_until("the resync", Duration::from_secs(300), || {
        let s = pair.primary_status();
        saw_sync |= s.mirror.sync.sync.active;
        if modes.last() != Some(&s.mirror.mode) {
            modes.push(s.mirror.mode.clone());
        }
        settled(&pair)
    });
    let s = pair.primary_status();
    let decision = s.mirror.decision.clone().unwrap_or_default();
    assert!(decision.contains("changed-block map"), "{decision}");
    assert!(saw_sync || s.mirror.sync.copied_bytes > 0);
    assert_eq!(modes, ["journal", "ahead", "journal"]);
    // No host write waited much longer than overflow_after.
    let v = fio_json(&pair, "outage");
    let max_ms = v["jobs"][0]["write"]["clat_ns"]["max"].as_f64().unwrap() / 1e6;
    assert!(max_ms <= 3_000.0, "a host write waited {max_ms:.0} ms");
    let wire = s.lane_bytes - lanes_before;
    eprintln!("marked {marked} bytes, resync sent {wire} bytes, slowest write {max_ms:.0} ms");
    assert!(
        wire as f64 <= 1.2 * marked as f64 + (4 * MIB) as f64,
        "the resync sent {wire} bytes for {marked} marked"
    );
    pair.primary.as_mut().unwrap().stop(Duration::from_secs(10));
    pair.remote.as_mut().unwrap().stop(Duration::from_secs(10));
    assert_files_equal(&pair.path("replica.img"), &pair.path("local.img"));
}

#[test]
fn dtu_verify_reports_flipped_bytes_and_repair_fixes_them_on_a_busy_pair() {
    let mut pair = Pair::init("64MiB", &[], &[]);
    std::fs::write(pair.path("local.img"), random_image(64 << 20, 12)).unwrap();
    with_local(&pair, "");
    pair.start(&[]);
    // `dtu progress` follows the initial sync until it ends.
    let out = pair.dtu(&["progress"]);
    assert!(out.contains("nothing to sync, verify or restore"), "{out}");
    wait_until("the initial sync", Duration::from_secs(120), || {
        settled(&pair)
    });
    let verify = |args: &[&str]| {
        let mut cmd = Command::new(dtu_tests::dtu_bin());
        cmd.arg("verify")
            .arg("--config")
            .arg(pair.path("primary.toml"))
            .arg("--wait")
            .args(args);
        let out = run_limited(cmd, Duration::from_secs(120));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // Busy: fio writes while the verify runs; nothing differs.
    let mut host = fio(&pair, 0, 64 * MIB, "busy", &["--io_size=16m", "--rate=4m"]);
    let (code, out) = verify(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0B in 0 ranges differ"), "{out}");
    wait_exit(&mut host, Duration::from_secs(60));
    wait_until("the pair to settle", Duration::from_secs(60), || {
        settled(&pair)
    });

    let flips = [5 * 4096 + 3, 40 * MIB + 1000];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(pair.path("replica.img"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    for &at in &flips {
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[!b[0]], at).unwrap();
    }
    f.sync_all().unwrap();
    let (code, out) = verify(&[]);
    assert_eq!(
        code,
        Some(2),
        "a verify that found differences exits 2: {out}"
    );
    assert!(out.contains("in 2 ranges differ"), "{out}");
    for at in flips {
        let listed = out
            .lines()
            .filter_map(|l| l.trim().split_once(".."))
            .any(|(a, b)| {
                let a: u64 = a.parse().unwrap_or(u64::MAX);
                let b: u64 = b
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .parse()
                    .unwrap_or(0);
                (a..b).contains(&at)
            });
        assert!(listed, "byte {at} is not in a listed range: {out}");
    }
    let (code, out) = verify(&["--repair"]);
    assert_eq!(code, Some(0), "{out}");
    wait_until("the repair", Duration::from_secs(60), || settled(&pair));
    let (code, out) = verify(&["--range", "0..64MiB"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0B in 0 ranges differ"), "{out}");
    pair.primary.as_mut().unwrap().stop(Duration::from_secs(10));
    pair.remote.as_mut().unwrap().stop(Duration::from_secs(10));
    assert_files_equal(&pair.path("replica.img"), &pair.path("local.img"));
}
