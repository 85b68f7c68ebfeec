//! A disaster drill with real processes over an emulated `wan-100m-40ms`
//! line each way: site A (primary) mirrors an ext4 volume to site B
//! (remote); writes answered at `remote-stored`, then a burst answered at
//! `buffered`; site A and its link are SIGKILLed; `dtu promote` turns B's
//! replica into a writable volume (RTO measured to the first answered host
//! write); the promoted export passes `e2fsck -fn`, holds every
//! `remote-stored` write and a prefix of the burst; the host writes 1 % of
//! the volume on B; A comes back with `dtu demote` as B's remote and is
//! resynced with the changed blocks only (wire bytes measured) until it
//! equals B byte for byte. Then a split brain on purpose: both sides write
//! while cut off (A promoted again with B unreachable, B demoted with
//! `--force`); the connect is refused with the decision in one line, the
//! `discard-zero-changes` and `discard-younger-primary` policies refuse and
//! say why, and `--discard-my-data` on B resolves it, keeping a record of
//! what B lost.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dtu::control::{request, Request, Response};
use dtu::status::{PrimaryStatus, RemoteStatus, Status};
use dtu_tests::{
    dtu_bin, free_udp_port, random_image, require, run_limited, run_ok, wait_until, Link, Pair,
    Proc,
};

const MIB: u64 = 1 << 20;
const VOLUME: u64 = 128 * MIB;
/// The ext4 file system covers the first 96 MiB; the rest is raw space
/// for pattern writes.
const FS: u64 = 96 * MIB;
const RAW: u64 = FS;
const WAN: &[&str] = &["--preset", "wan-100m-40ms", "--seed", "7"];

fn status(ctl: &Path) -> Option<Status> {
    match request(ctl, &Request::Status) {
        Ok(Response::Status(s)) => Some(*s),
        _ => None,
    }
}

fn as_primary(ctl: &Path) -> PrimaryStatus {
    match status(ctl) {
        Some(Status::Primary(p)) => *p,
        other => panic!("{} is not a primary: {other:?}", ctl.display()),
    }
}

fn as_remote(ctl: &Path) -> RemoteStatus {
    match status(ctl) {
        Some(Status::Remote(r)) => *r,
        other => panic!("{} is not a remote: {other:?}", ctl.display()),
    }
}

fn dtu(args: &[&str], config: &Path) -> std::process::Output {
    let mut cmd = Command::new(dtu_bin());
    cmd.args(args).arg("--config").arg(config);
    run_limited(cmd, Duration::from_secs(120))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(&out));
    text(&out)
}

fn uri(sock: &Path) -> String {
    format!("nbd+unix:///dtu?socket={}", sock.display())
}

/// Writes 64 KiB of `pattern` at each offset, one qemu-io connection.
fn qemu_writes(sock: &Path, writes: &[(u64, u8)]) -> Duration {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for (off, p) in writes {
        cmd.arg("-c").arg(format!("write -P {p} {off} 64k"));
    }
    cmd.arg(uri(sock));
    let t = Instant::now();
    run_ok(cmd, Duration::from_secs(60));
    t.elapsed()
}

/// Whether 64 KiB at `off` of `img` hold `pattern` throughout.
fn holds(img: &[u8], off: u64, pattern: u8) -> bool {
    img[off as usize..off as usize + 65536]
        .iter()
        .all(|&b| b == pattern)
}

fn read_export(sock: &Path, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new("nbdcopy");
    cmd.arg(uri(sock)).arg(out);
    run_ok(cmd, Duration::from_secs(120));
    std::fs::read(out).unwrap()
}

fn fsck_clean(image: &[u8], dir: &Path) {
    let fs = dir.join("fsck.img");
    std::fs::write(&fs, &image[..FS as usize]).unwrap();
    let mut cmd = Command::new("e2fsck");
    cmd.arg("-fn").arg(&fs);
    let out = run_limited(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "e2fsck -fn: {}", text(&out));
}

fn assert_same(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let n = x.len().max(y.len());
    for i in 0..n {
        let (p, q) = (
            x.get(i).copied().unwrap_or(0),
            y.get(i).copied().unwrap_or(0),
        );
        assert_eq!(
            p,
            q,
            "{} and {} differ at byte {i} (block {})",
            a.display(),
            b.display(),
            i / 4096
        );
    }
}

/// Bytes listed in the record of what a resync discarded.
fn discarded_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        if !e.file_name().to_string_lossy().contains(".discarded-") {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some((_, len)) = line.split_once(' ') {
                n += len.trim().parse::<u64>().unwrap();
            }
        }
    }
    n
}

fn wait_for(ctl: &Path, what: &str, limit: Duration, f: impl Fn(&Status) -> bool) {
    wait_until(what, limit, || status(ctl).as_ref().is_some_and(&f));
}

/// The primary at `ctl` is connected, no sync runs, nothing is out of sync
/// or unstored.
fn in_sync(s: &Status) -> bool {
    match s {
        Status::Primary(p) => {
            p.connection.to_string() == "connected"
                && p.mirror.sync.target == 0
                && p.mirror.out_of_sync_bytes == 0
                && p.remote_stored_seq == p.highest_seq
                && p.mirror.mode == "journal"
        }
        _ => false,
    }
}

#[test]
fn disaster_drill_promote_fail_back_and_split_brain() {
    for tool in ["mkfs.ext4", "e2fsck", "nbdcopy", "qemu-io"] {
        require(tool);
    }
    let a_listen = free_udp_port();
    let back_port = free_udp_port();
    let extra = [
        "--local-copy".to_string(),
        "--primary-listen".into(),
        format!("127.0.0.1:{a_listen}"),
        "--primary-addr".into(),
        format!("127.0.0.1:{back_port}"),
        "--link-rate".into(),
        "100Mbit".into(),
        "--link-rtt".into(),
        "40ms".into(),
    ];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut pair = Pair::init("128MiB", WAN, &extra);
    let dir = pair.dir.path().to_path_buf();
    let (a_ctl, b_ctl) = (pair.path("primary.ctl"), pair.path("remote.ctl"));
    let a_sock = pair.path("primary.nbd.sock");
    let b_sock = pair.path("promoted.nbd.sock");

    // An ext4 file system with files, written through the pair.
    let tree = pair.path("tree");
    std::fs::create_dir_all(tree.join("data")).unwrap();
    for i in 0..6 {
        std::fs::write(
            tree.join(format!("data/f{i}.bin")),
            random_image(1 << 20, i),
        )
        .unwrap();
    }
    let fs_img = pair.path("fs.img");
    std::fs::File::create(&fs_img).unwrap().set_len(FS).unwrap();
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-b", "4096", "-E", "nodiscard", "-d"])
        .arg(&tree)
        .arg(&fs_img);
    run_ok(mkfs, Duration::from_secs(60));
    let mut image = std::fs::read(&fs_img).unwrap();
    image.resize(VOLUME as usize, 0);

    pair.start(&["--trigger", "remote-stored"]);
    pair.nbdcopy(&image, Duration::from_secs(180));
    pair.wait_caught_up(Duration::from_secs(120));

    // Answered at remote-stored: on the replica, whatever follows.
    let stored: Vec<(u64, u8)> = (0..8).map(|i| (RAW + i * 65536, 0x10 + i as u8)).collect();
    qemu_writes(&a_sock, &stored);
    // A burst answered at buffered, then the site is lost at once.
    ok(
        dtu(
            &["policy", "set", "--trigger", "buffered"],
            &pair.path("primary.toml"),
        ),
        "policy set",
    );
    let burst: Vec<(u64, u8)> = (0..32)
        .map(|i| (RAW + (16 + i) * 65536, 0x40 + i as u8))
        .collect();
    qemu_writes(&a_sock, &burst);
    pair.primary.take().unwrap().kill();
    pair.stop_link();

    // Promote B once it has heard nothing from A for 3 s (before that it
    // refuses: A might be alive); the first host write answered there ends
    // the outage.
    let lost = Instant::now();
    let (t, out) = loop {
        let t = Instant::now();
        let out = dtu(&["promote"], &pair.path("remote.toml"));
        if out.status.success() {
            break (t, text(&out));
        }
        assert!(
            text(&out).contains("is connected and mirroring")
                && lost.elapsed() < Duration::from_secs(20),
            "dtu promote: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("{out}");
    let first = [(RAW + 100 * 65536, 0x77u8)];
    qemu_writes(&b_sock, &first);
    let rto = t.elapsed();
    eprintln!("RTO (dtu promote to the first answered host write): {rto:?}");
    let b = as_primary(&b_ctl);
    assert!(
        !b.mirror.generation.is_empty() && b.connection.to_string() != "connected",
        "{b:?}"
    );

    // The promoted volume: a clean file system, every remote-stored write,
    // and of the buffered burst a prefix.
    let promoted = read_export(&b_sock, &pair.path("promoted-read.img"));
    fsck_clean(&promoted, &dir);
    for (off, p) in &stored {
        assert!(
            holds(&promoted, *off, *p),
            "a remote-stored write at {off} is missing"
        );
    }
    let present: Vec<bool> = burst
        .iter()
        .map(|(o, p)| holds(&promoted, *o, *p))
        .collect();
    let n = present.iter().take_while(|&&x| x).count();
    assert!(
        present[n..].iter().all(|&x| !x),
        "the buffered burst on the replica is not a prefix: {present:?}"
    );
    eprintln!(
        "RPO at buffered: {} of {} answered writes were in flight and are lost",
        burst.len() - n,
        burst.len()
    );

    // The host writes 1 % of the volume on B, incompressible.
    let noise = pair.path("noise.bin");
    std::fs::write(&noise, random_image(65536, 99)).unwrap();
    let changes = 20u64;
    let change_at = |i: u64| RAW + (200 + 7 * i) * 65536 % (VOLUME - FS - 65536);
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for i in 0..changes {
        cmd.arg("-c")
            .arg(format!("write -s {} {} 64k", noise.display(), change_at(i)));
    }
    cmd.arg(uri(&b_sock));
    run_ok(cmd, Duration::from_secs(60));
    let changed_on_b = (changes + first.len() as u64) * 65536;

    // A starting again as a primary is refused once demoted; demoted, it
    // becomes B's remote and is resynced with the changed blocks.
    let out = ok(dtu(&["demote"], &pair.path("primary.toml")), "dtu demote");
    eprintln!("{out}");
    let out = dtu(&["primary"], &pair.path("primary.toml"));
    assert!(
        !out.status.success() && text(&out).contains("was demoted"),
        "a demoted primary started: {}",
        text(&out)
    );
    let before = as_primary(&b_ctl).quic;
    let back = Link::start(
        &dir,
        back_port,
        format!("127.0.0.1:{a_listen}").parse().unwrap(),
        WAN,
    );
    let mut cmd = Command::new(dtu_bin());
    cmd.arg("remote")
        .arg("--config")
        .arg(pair.path("demoted.toml"));
    let mut a_remote = Proc::spawn("dtu remote (A)", cmd, dir.join("a-remote.log"));
    wait_for(
        &b_ctl,
        "the failback resync",
        Duration::from_secs(180),
        in_sync,
    );
    let after = as_primary(&b_ctl).quic;
    let wire =
        (after.udp_tx_bytes + after.udp_rx_bytes) - (before.udp_tx_bytes + before.udp_rx_bytes);
    let decision = as_remote(&a_ctl).decision.unwrap_or_default();
    // What A had in flight when it was lost is listed, and resynced too.
    let divergent = discarded_bytes(&dir);
    let changed = changed_on_b + divergent;
    eprintln!(
        "failback: {changed_on_b} bytes changed on B, {divergent} in flight on A, {wire} bytes \
         on the wire ({:.2}x of both); {decision}",
        wire as f64 / changed as f64
    );
    assert!(
        wire as f64 <= 1.2 * changed as f64,
        "failback sent {wire} bytes for {changed} changed"
    );
    let noise_bytes = std::fs::read(&noise).unwrap();
    let a_img = std::fs::read(pair.path("primary.img")).unwrap();
    for i in 0..changes {
        let off = change_at(i) as usize;
        assert!(
            a_img[off..off + 65536] == noise_bytes[..],
            "change {i} missing on A"
        );
    }
    // Stop both so the files are quiet, then compare.
    a_remote.stop(Duration::from_secs(10));
    assert_same(&pair.path("primary.img"), &pair.path("replica.img"));

    // Split brain on purpose: A comes back as B's remote, then the line
    // between them goes down; B writes; A is promoted (B is silent); A
    // writes; B is demoted with --force (its writes never reached A).
    let mut cmd = Command::new(dtu_bin());
    cmd.arg("remote")
        .arg("--config")
        .arg(pair.path("demoted.toml"));
    let mut a_proc = Proc::spawn("dtu remote (A)", cmd, dir.join("a-remote-2.log"));
    wait_for(&b_ctl, "B and A in sync", Duration::from_secs(60), in_sync);
    let mut back = back;
    back.proc.kill();
    // B writes once it knows it is cut off (DRBD, too, can only call a
    // write "while disconnected" once the peer's silence is noticed).
    wait_for(
        &b_ctl,
        "B to notice the line is down",
        Duration::from_secs(60),
        |s| matches!(s, Status::Primary(p) if p.connection.to_string() != "connected"),
    );
    qemu_writes(&b_sock, &[(RAW + 300 * 65536 % (VOLUME - FS), 0xb1)]);
    std::thread::sleep(Duration::from_secs(4));
    ok(dtu(&["promote"], &pair.path("demoted.toml")), "promote A");
    qemu_writes(&a_sock, &[(RAW + 301 * 65536 % (VOLUME - FS), 0xa1)]);
    let out = ok(
        dtu(
            &["demote", "--force", "--wait", "2s"],
            &pair.path("promoted.toml"),
        ),
        "demote B",
    );
    eprintln!("{out}");
    pair.start_link();
    wait_until("A refused: split brain", Duration::from_secs(60), || {
        matches!(status(&a_ctl), Some(Status::Primary(p))
            if p.connection.to_string() == "refused"
                && p.connection_detail.as_deref().is_some_and(|d| d.contains("split brain")))
    });
    let refused = as_remote(&b_ctl).decision.unwrap_or_default();
    assert!(
        refused.contains("split brain") && !refused.contains('\n'),
        "{refused}"
    );

    // A policy that resolves only when the remote changed nothing: both
    // sides wrote, so it refuses and says why.
    pair.remote.take().unwrap().stop(Duration::from_secs(10));
    let b_cfg = pair.path("remote.toml");
    let b_text = std::fs::read_to_string(&b_cfg).unwrap();
    assert!(
        b_text.trim_end().ends_with("primary = \"promoted.toml\""),
        "{b_text}"
    );
    std::fs::write(
        &b_cfg,
        format!("{b_text}split_brain = \"discard-zero-changes\"\n"),
    )
    .unwrap();
    pair.start_remote(&[]);
    wait_until("B's policy to refuse", Duration::from_secs(60), || {
        status(&b_ctl).is_some_and(|s| matches!(s, Status::Remote(r)
            if r.decision.as_deref().is_some_and(|d| d.contains("discard-zero-changes: both sides changed"))))
    });

    // Younger primary: A, promoted after B was, is the younger, so the
    // policy would discard the primary's data: it refuses and says so
    // (which needs both promotion times, from A's Hello and B's record).
    pair.remote.take().unwrap().stop(Duration::from_secs(10));
    std::fs::write(
        &b_cfg,
        format!("{b_text}split_brain = \"discard-younger-primary\"\n"),
    )
    .unwrap();
    pair.start_remote(&[]);
    wait_until(
        "B's younger-primary policy to refuse",
        Duration::from_secs(60),
        || {
            status(&b_ctl).is_some_and(|s| {
                matches!(s, Status::Remote(r)
            if r.decision.as_deref().is_some_and(|d| d.contains("the primary is the younger")))
            })
        },
    );
    std::fs::write(&b_cfg, &b_text).unwrap();

    // B's data goes: restarted with --discard-my-data it is resynced.
    pair.remote.take().unwrap().stop(Duration::from_secs(10));
    pair.start_remote(&["--discard-my-data"]);
    wait_for(
        &a_ctl,
        "the split brain resolved",
        Duration::from_secs(180),
        in_sync,
    );
    let resolved = as_remote(&b_ctl).decision.unwrap_or_default();
    assert!(resolved.contains("resolved by the operator"), "{resolved}");
    let discarded = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".discarded-"));
    assert!(discarded, "no record of what B discarded");
    pair.remote.take().unwrap().stop(Duration::from_secs(10));
    a_proc.stop(Duration::from_secs(10));
    assert_same(&pair.path("primary.img"), &pair.path("replica.img"));
}

#[test]
fn a_planned_switchover_loses_nothing_and_a_failing_fence_aborts_the_promotion() {
    require("nbdcopy");
    let a_listen = free_udp_port();
    let listen = format!("127.0.0.1:{a_listen}");
    let mut pair = Pair::init("64MiB", &[], &["--local-copy", "--primary-listen", &listen]);
    let dir = pair.dir.path().to_path_buf();
    let (a_ctl, b_ctl) = (pair.path("primary.ctl"), pair.path("remote.ctl"));
    // B's fencing: a lease that A holds until the file `allow` appears.
    let allow = pair.path("allow");
    let cfg = pair.path("remote.toml");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap();
    assert!(text_cfg.trim_end().ends_with("primary = \"promoted.toml\""));
    std::fs::write(
        &cfg,
        format!(
            "{text_cfg}fence = \"test \\\"$DTU_ACTION\\\" = promote && test -e {} || {{ echo lease held by site A >&2; exit 1; }}\"\n",
            allow.display()
        ),
    )
    .unwrap();
    pair.start(&[]);
    let data = random_image(8 << 20, 5);
    let mut image = data.clone();
    image.resize(64 << 20, 0);
    pair.nbdcopy(&image, Duration::from_secs(60));
    pair.wait_caught_up(Duration::from_secs(60));

    // B refuses while A mirrors.
    let out = dtu(&["promote"], &pair.path("remote.toml"));
    assert!(
        !out.status.success() && text(&out).contains("connected and mirroring"),
        "{}",
        text(&out)
    );
    // A steps down: it drains and becomes a remote in the same process.
    let out = ok(dtu(&["demote"], &pair.path("primary.toml")), "dtu demote");
    assert!(out.contains("the remote stored everything"), "{out}");
    assert!(matches!(status(&a_ctl), Some(Status::Remote(_))));
    // The fence hook says no: nothing changes on B.
    let out = dtu(&["promote"], &pair.path("remote.toml"));
    assert!(
        !out.status.success()
            && text(&out).contains("lease held by site A")
            && text(&out).contains("promote is aborted"),
        "{}",
        text(&out)
    );
    assert!(matches!(status(&b_ctl), Some(Status::Remote(_))));
    std::fs::write(&allow, b"").unwrap();
    ok(dtu(&["promote"], &pair.path("remote.toml")), "dtu promote");
    // B mirrors to A with nothing to resync: A holds everything already.
    wait_for(&b_ctl, "B mirroring to A", Duration::from_secs(60), in_sync);
    let b = as_primary(&b_ctl);
    let wire = b.quic.udp_tx_bytes + b.quic.udp_rx_bytes;
    let decision = as_remote(&a_ctl).decision.unwrap_or_default();
    eprintln!("switchover: {wire} bytes on the wire; {decision}");
    assert!(decision.contains("changed-block map"), "{decision}");
    assert!(wire < 256 << 10, "a planned switchover sent {wire} bytes");
    let read = read_export(&pair.path("promoted.nbd.sock"), &dir.join("b-read.img"));
    assert!(
        read[..data.len()] == data[..],
        "B lost data in the switchover"
    );
    qemu_writes(&pair.path("promoted.nbd.sock"), &[(32 << 20, 0x33)]);
    wait_for(&b_ctl, "B's write on A", Duration::from_secs(60), in_sync);

    // And back in one command on B's site: B drains, becomes A's remote,
    // and its goodbye makes A promote itself.
    // Asked of B's remote config while B runs as the primary: refused.
    let out = dtu(&["switchover"], &pair.path("remote.toml"));
    assert!(
        !out.status.success() && text(&out).contains("switchover refused, nothing changed"),
        "{}",
        text(&out)
    );
    let out = ok(
        dtu(&["switchover"], &pair.path("promoted.toml")),
        "dtu switchover",
    );
    eprintln!("{out}");
    assert!(out.contains("switchover complete"), "{out}");
    wait_for(
        &a_ctl,
        "A mirroring to B again",
        Duration::from_secs(60),
        in_sync,
    );
    let back = as_primary(&a_ctl);
    let wire = back.quic.udp_tx_bytes + back.quic.udp_rx_bytes;
    let decision = as_remote(&b_ctl).decision.unwrap_or_default();
    eprintln!("switchover back: {wire} bytes on the wire; {decision}");
    assert!(wire < 256 << 10, "the switchover back sent {wire} bytes");
    qemu_writes(&pair.path("primary.nbd.sock"), &[(40 << 20, 0x44)]);
    wait_for(&a_ctl, "A's write on B", Duration::from_secs(60), in_sync);
    let read = read_export(&pair.path("primary.nbd.sock"), &dir.join("a-read.img"));
    assert!(
        read[32 << 20..(32 << 20) + 4096].iter().all(|&b| b == 0x33),
        "A lost B's write in the switchover back"
    );

    // And over again from the remote's site: B asks A to hand over.
    let out = ok(
        dtu(&["switchover"], &pair.path("remote.toml")),
        "dtu switchover at the remote",
    );
    eprintln!("{out}");
    assert!(out.contains("switchover complete"), "{out}");
    wait_for(
        &b_ctl,
        "B mirroring to A once more",
        Duration::from_secs(60),
        in_sync,
    );
    let b = as_primary(&b_ctl);
    let wire = b.quic.udp_tx_bytes + b.quic.udp_rx_bytes;
    assert!(
        wire < 256 << 10,
        "the switchover asked by the remote sent {wire} bytes"
    );
    qemu_writes(&pair.path("promoted.nbd.sock"), &[(48 << 20, 0x55)]);
    wait_for(
        &b_ctl,
        "B's last write on A",
        Duration::from_secs(60),
        in_sync,
    );
    pair.primary.take().unwrap().stop(Duration::from_secs(10));
    pair.remote.take().unwrap().stop(Duration::from_secs(10));
    assert_same(&pair.path("primary.img"), &pair.path("replica.img"));
    let a_img = std::fs::read(pair.path("primary.img")).unwrap();
    for (off, pat) in [(32usize << 20, 0x33u8), (40 << 20, 0x44), (48 << 20, 0x55)] {
        assert!(
            a_img[off..off + 65536].iter().all(|&b| b == pat),
            "a write at {off} was lost"
        );
    }
}

/// Instant restore: site A's disk is replaced by an empty file; started
/// with `--restore-from-remote`, the primary answers reads at once (what
/// is not local yet comes from the remote), `e2fsck -fn` passes on a full
/// read through its export while the rebuild runs, host writes during the
/// rebuild are kept, and the local copy ends equal to the replica.
#[test]
fn instant_restore_of_a_lost_primary_disk() {
    for tool in ["mkfs.ext4", "e2fsck", "nbdcopy", "qemu-io"] {
        require(tool);
    }
    const SIZE: u64 = 256 * MIB;
    let extra = [
        "--local-copy",
        "--link-rate",
        "100Mbit",
        "--link-rtt",
        "40ms",
    ];
    let mut pair = Pair::init("256MiB", WAN, &extra);
    let dir = pair.dir.path().to_path_buf();
    let a_ctl = pair.path("primary.ctl");
    let a_sock = pair.path("primary.nbd.sock");

    // A 256 MiB ext4 file system with files, written through the pair.
    let tree = pair.path("tree");
    std::fs::create_dir_all(tree.join("data")).unwrap();
    for i in 0..24 {
        std::fs::write(
            tree.join(format!("data/f{i}.bin")),
            random_image(1 << 20, 100 + i),
        )
        .unwrap();
    }
    let fs_img = pair.path("fs.img");
    std::fs::File::create(&fs_img)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-b", "4096", "-E", "nodiscard", "-d"])
        .arg(&tree)
        .arg(&fs_img);
    run_ok(mkfs, Duration::from_secs(60));
    let image = std::fs::read(&fs_img).unwrap();
    pair.start(&[]);
    pair.nbdcopy(&image, Duration::from_secs(300));
    pair.wait_caught_up(Duration::from_secs(120));

    // The disk is lost: a new, empty one takes its place.
    pair.primary.take().unwrap().stop(Duration::from_secs(10));
    std::fs::remove_file(pair.path("primary.img")).unwrap();
    std::fs::File::create(pair.path("primary.img")).unwrap();
    let started = Instant::now();
    pair.start_primary(&["--restore-from-remote"]);
    let up = started.elapsed();

    // The first read, near the end of the volume where the rebuild (which
    // starts at the front) has not been yet: answered by the remote.
    let far = SIZE - 8 * MIB;
    let t = Instant::now();
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", "-c", &format!("read -v {far} 4k")])
        .arg(uri(&a_sock));
    let out = run_ok(cmd, Duration::from_secs(60));
    let first_read = t.elapsed();
    assert!(String::from_utf8_lossy(&out.stdout).contains("read 4096/4096"));
    let p = as_primary(&a_ctl);
    assert!(p.mirror.restore.active, "the restore ended too soon");
    eprintln!(
        "first read answered {:.0} ms after the primary was up ({:.0} ms after its start); \
         restore {} of {} bytes",
        first_read.as_secs_f64() * 1e3,
        (up + first_read).as_secs_f64() * 1e3,
        p.mirror.restore.done_bytes,
        p.mirror.restore.total_bytes
    );

    // Host writes during the rebuild, part of an extent not yet local:
    // never lost under the extent's later (older) copy.
    let writes: Vec<(u64, u8)> = (0..4)
        .map(|i| (SIZE - (4 + i) * MIB + 8192, 0x60 + i as u8))
        .collect();
    qemu_writes(&a_sock, &writes);

    // A full read through the export while the rebuild runs: the file
    // system checks clean and the bytes are the volume's.
    let t = Instant::now();
    let read = read_export(&a_sock, &dir.join("restore-read.img"));
    let took = t.elapsed();
    let p = as_primary(&a_ctl);
    eprintln!(
        "full read of {} MiB in {:.1} s ({:.1} Mbit/s), {} bytes of it from the remote on \
         demand; restore still running: {} ({} of {} bytes)",
        SIZE >> 20,
        took.as_secs_f64(),
        SIZE as f64 * 8.0 / took.as_secs_f64() / 1e6,
        p.mirror.restore_on_demand_bytes,
        p.mirror.restore.active,
        p.mirror.restore.done_bytes,
        p.mirror.restore.total_bytes
    );
    assert!(
        p.mirror.restore_on_demand_bytes > 0,
        "no read was served by the remote"
    );
    let mut want = image.clone();
    for (off, pat) in &writes {
        want[*off as usize..*off as usize + 65536].fill(*pat);
    }
    assert!(
        read == want,
        "the read through the export differs from the volume"
    );
    let fs = dir.join("restore-fsck.img");
    std::fs::write(&fs, &read).unwrap();
    let mut cmd = Command::new("e2fsck");
    cmd.arg("-fn").arg(&fs);
    let out = run_limited(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "e2fsck -fn: {}", text(&out));

    // The rebuild completes; the pair is in normal operation.
    wait_for(
        &a_ctl,
        "the restore to complete",
        Duration::from_secs(180),
        |s| matches!(s, Status::Primary(p) if !p.mirror.restore.active),
    );
    let rebuilt = started.elapsed();
    wait_for(&a_ctl, "A in sync", Duration::from_secs(60), in_sync);
    eprintln!(
        "rebuild complete {:.1} s after the start ({:.2} x the volume at the line rate)",
        rebuilt.as_secs_f64(),
        rebuilt.as_secs_f64() / (SIZE as f64 * 8.0 / 100e6)
    );
    assert!(
        !pair.path("primary.img.restore").exists(),
        "the restore map outlived the restore"
    );
    pair.primary.take().unwrap().stop(Duration::from_secs(10));
    let local = std::fs::read(pair.path("primary.img")).unwrap();
    assert!(local == want, "the restored local copy lacks data");

    // A restore killed half way goes on from its map, without the flag.
    std::fs::remove_file(pair.path("primary.img")).unwrap();
    std::fs::File::create(pair.path("primary.img")).unwrap();
    pair.start_primary(&["--restore-from-remote"]);
    wait_for(
        &a_ctl,
        "a quarter restored",
        Duration::from_secs(120),
        |s| matches!(s, Status::Primary(p) if p.mirror.restore.done_bytes >= SIZE / 4),
    );
    pair.primary.take().unwrap().kill();
    assert!(pair.path("primary.img.restore").exists());
    pair.start_primary(&[]);
    let p = as_primary(&a_ctl);
    assert!(
        p.mirror.restore.active && p.mirror.restore.done_bytes > 0,
        "the restore did not go on from its map: {:?}",
        p.mirror.restore
    );
    wait_for(
        &a_ctl,
        "the resumed restore",
        Duration::from_secs(180),
        |s| matches!(s, Status::Primary(p) if !p.mirror.restore.active),
    );
    wait_for(&a_ctl, "A in sync", Duration::from_secs(60), in_sync);
    pair.primary.take().unwrap().stop(Duration::from_secs(10));
    assert_same(&pair.path("primary.img"), &pair.path("replica.img"));

    // Once more with no host reads: the rebuild alone against the line.
    std::fs::remove_file(pair.path("primary.img")).unwrap();
    std::fs::File::create(pair.path("primary.img")).unwrap();
    let started = Instant::now();
    pair.start_primary(&["--restore-from-remote"]);
    wait_for(
        &a_ctl,
        "the second restore",
        Duration::from_secs(180),
        |s| matches!(s, Status::Primary(p) if !p.mirror.restore.active),
    );
    let alone = started.elapsed();
    eprintln!(
        "rebuild alone: {:.1} s from the start ({:.2} x the volume at the line rate)",
        alone.as_secs_f64(),
        alone.as_secs_f64() / (SIZE as f64 * 8.0 / 100e6)
    );
    wait_for(&a_ctl, "A in sync", Duration::from_secs(60), in_sync);
    pair.primary.take().unwrap().stop(Duration::from_secs(10));
    pair.remote.take().unwrap().stop(Duration::from_secs(10));
    assert_same(&pair.path("primary.img"), &pair.path("replica.img"));
}
