//! The mirror from a full disk and through outages, with a primary and a
//! remote in one process over real QUIC on 127.0.0.1 and real files: an
//! initial full sync and a checksum sync of a disk that already holds data
//! while the host writes; an outage longer than the nvbuf holds overflows
//! into the changed-block map and resyncs only what changed; an online
//! verify finds bytes flipped behind dtu's back and a repair fixes them; a
//! primary with unrelated data is refused. Each ends with the local copy
//! and the replica compared byte for byte.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu::config::CongestionChoice;
use dtu::inproc::{primary_status, remote_status, PairSetup};
use dtu::primary::{Overflow, Primary, PrimaryOptions};
use dtu::remote::Remote;
use dtu::status::ConnectionState;
use dtu::transport::LinkTuning;
use dtu_proto::generation::InitialSync;
use dtu_proto::{AckPolicy, Trigger};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZE: u64 = 32 << 20;

struct Rig {
    dir: tempfile::TempDir,
    setup: PairSetup,
    port: u16,
}

fn tuning() -> LinkTuning {
    LinkTuning {
        rate_bps: 1_000_000_000,
        rtt: Duration::from_millis(1),
        congestion: CongestionChoice::Cubic,
        ..LinkTuning::default()
    }
}

/// Answers at `buffered` whatever the dirty level: writes never wait for
/// the remote, so an outage fills the nvbuf.
fn buffered() -> AckPolicy {
    AckPolicy {
        trigger: Trigger::Buffered,
        spoofing: true,
        dirty_threshold: 0.0,
        ..AckPolicy::default()
    }
}

impl Rig {
    fn new() -> Rig {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Rig {
            dir: tempfile::tempdir().unwrap(),
            setup: PairSetup::generate([4; 16], SIZE).unwrap(),
            port,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    fn remote(&self) -> Remote {
        Remote::start(
            self.setup
                .remote_options(self.addr(), tuning(), self.dir.path()),
        )
        .unwrap()
    }

    fn primary(&self, initial: InitialSync, edit: impl FnOnce(&mut PrimaryOptions)) -> Primary {
        let mut o = self
            .setup
            .primary_options(self.addr(), tuning(), self.dir.path(), buffered());
        o.mirror.initial_sync = initial;
        edit(&mut o);
        Primary::start(o).unwrap()
    }

    fn local(&self) -> Vec<u8> {
        std::fs::read(self.path("source.img")).unwrap()
    }

    fn replica(&self) -> Vec<u8> {
        std::fs::read(self.path("replica.img")).unwrap()
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A used disk: random extents, zeroed extents and holes (never written).
fn fill_disk(path: &Path, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    let mut image = vec![0u8; SIZE as usize];
    let mut at = 0usize;
    while at < SIZE as usize {
        let len = (rng.gen_range(1..=48) * 64 * 1024).min(SIZE as usize - at);
        match rng.gen_range(0..4) {
            0 => {} // a hole
            1 => f.write_all_at(&vec![0; len], at as u64).unwrap(),
            _ => {
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                f.write_all_at(&data, at as u64).unwrap();
                image[at..at + len].copy_from_slice(&data);
            }
        }
        at += len;
    }
    f.sync_all().unwrap();
    image
}

/// Random host writes (some of zeros) and trims; returns the new image.
fn host_writes(p: &Primary, seed: u64, writes: usize, mut image: Vec<u8>) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pending = Vec::new();
    for i in 0..writes {
        let len = rng.gen_range(1..64usize) * 4096;
        let off = rng.gen_range(0..(SIZE as usize - len) / 4096) * 4096;
        let data: Vec<u8> = if i % 6 == 0 {
            vec![0; len]
        } else {
            (0..len).map(|_| rng.gen()).collect()
        };
        image[off..off + len].copy_from_slice(&data);
        pending.push(p.write(off as u64, Bytes::from(data)).unwrap());
        if i % 9 == 0 {
            pending.push(p.trim(off as u64, 4096).unwrap());
            image[off..off + 4096].fill(0);
        }
    }
    pending.push(p.flush().unwrap());
    for w in pending {
        w.wait().unwrap();
    }
    image
}

/// The pair is idle and in sync: journal mode, nothing marked, no sync or
/// verify running, everything stored, the replica consistent.
fn settled(p: &Primary, r: &Remote) -> bool {
    let s = primary_status(p);
    let rs = remote_status(r);
    s.mirror.mode == "journal"
        && s.mirror.out_of_sync_bytes == 0
        && !s.mirror.sync.sync.active
        && !s.mirror.sync.verify.active
        && s.remote_stored_seq == s.highest_seq
        && s.connection == ConnectionState::Connected
        && rs.consistent
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: differ first at byte {i} (block {}): {:#04x} instead of {:#04x}",
            i / 4096,
            got[i],
            want[i]
        );
    }
}

#[test]
fn an_initial_full_sync_brings_a_used_disk_to_the_replica_while_the_host_writes() {
    let rig = Rig::new();
    let image = fill_disk(&rig.path("source.img"), 1);
    let remote = rig.remote();
    let primary = rig.primary(InitialSync::Full, |_| {});
    // The host writes while the sync runs: its writes must win over the
    // sync's older copies of the same extents.
    let image = host_writes(&primary, 2, 300, image);
    wait_for("the initial sync", Duration::from_secs(120), || {
        settled(&primary, &remote)
    });
    let s = primary_status(&primary);
    let decision = s.mirror.decision.clone().unwrap_or_default();
    assert!(
        decision.contains("full sync of every extent") && decision.contains("never synced"),
        "{decision}"
    );
    assert!(s.mirror.sync.copied_bytes > 0);
    let rs = remote_status(&remote);
    assert_eq!(
        rs.generation, s.mirror.generation,
        "the replica took the primary's generation"
    );
    assert_eq!(rs.sync_target, None);
    primary.shutdown();
    remote.shutdown();
    assert_same("local copy vs host's volume", &rig.local(), &image);
    assert_same("replica vs local copy", &rig.replica(), &image);
}

#[test]
fn a_checksum_sync_sends_only_the_extents_that_differ() {
    let rig = Rig::new();
    let image = fill_disk(&rig.path("source.img"), 3);
    // A replica seeded earlier (by truck): the same disk, a few blocks off.
    let mut seeded = image.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut changed = Vec::new();
    for _ in 0..7 {
        let block = rng.gen_range(0..SIZE as usize / 4096);
        seeded[block * 4096] ^= 0x5a;
        changed.push(block);
    }
    std::fs::write(rig.path("replica.img"), &seeded).unwrap();
    let remote = rig.remote();
    let primary = rig.primary(InitialSync::Checksum, |_| {});
    wait_for("the checksum sync", Duration::from_secs(120), || {
        settled(&primary, &remote)
    });
    let s = primary_status(&primary);
    let decision = s.mirror.decision.clone().unwrap_or_default();
    assert!(decision.contains("checksum sync"), "{decision}");
    // At most one copy piece per differing block crossed the link; the
    // rest was compared by digest and skipped.
    assert!(
        s.mirror.sync.copied_bytes <= changed.len() as u64 * (1 << 20),
        "copied {} bytes for {} differing blocks",
        s.mirror.sync.copied_bytes,
        changed.len()
    );
    assert!(
        s.mirror.sync.skipped_bytes >= SIZE / 2,
        "skipped only {} bytes",
        s.mirror.sync.skipped_bytes
    );
    primary.shutdown();
    remote.shutdown();
    assert_same("replica vs local copy", &rig.replica(), &image);
}

#[test]
fn an_outage_longer_than_the_nvbuf_overflows_to_the_map_and_resyncs_only_the_changes() {
    let rig = Rig::new();
    std::fs::File::create(rig.path("source.img"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let remote = rig.remote();
    let edit = |o: &mut PrimaryOptions| {
        o.nvbuf_size = 4 << 20;
        o.mirror.overflow = Some(Overflow::Bitmap);
        o.mirror.overflow_after = Duration::from_millis(300);
    };
    let primary = rig.primary(InitialSync::AssumeInSync, edit);
    wait_for("the pair to connect", Duration::from_secs(30), || {
        settled(&primary, &remote)
    });
    let gen_before = primary_status(&primary).mirror.generation;
    remote.shutdown();
    // 4 MiB of nvbuf against ~30 MiB of writes: the host never waits
    // longer than overflow_after, the primary goes ahead.
    let image = host_writes(&primary, 5, 250, vec![0; SIZE as usize]);
    let s = primary_status(&primary);
    assert_eq!(s.mirror.mode, "ahead", "{:?}", s.mirror);
    assert!(s.mirror.out_of_sync_bytes > 0);
    assert_ne!(
        s.mirror.generation, gen_before,
        "going ahead starts a generation"
    );
    // More writes while ahead: straight to the local copy and the map.
    let image = host_writes(&primary, 6, 60, image);
    let marked = primary_status(&primary).mirror.out_of_sync_bytes;
    let remote = rig.remote();
    wait_for("the resync", Duration::from_secs(120), || {
        settled(&primary, &remote)
    });
    let s = primary_status(&primary);
    let decision = s.mirror.decision.clone().unwrap_or_default();
    assert!(
        decision.contains("resync from the changed-block map"),
        "{decision}"
    );
    assert!(
        s.mirror.sync.copied_bytes <= marked + (4 << 20),
        "copied {} bytes for {} marked",
        s.mirror.sync.copied_bytes,
        marked
    );
    primary.shutdown();
    remote.shutdown();
    assert_same("local copy vs host's volume", &rig.local(), &image);
    assert_same("replica vs local copy", &rig.replica(), &image);
}

#[test]
fn an_online_verify_finds_flipped_bytes_and_a_repair_fixes_them() {
    let rig = Rig::new();
    let image = fill_disk(&rig.path("source.img"), 7);
    let remote = rig.remote();
    let primary = rig.primary(InitialSync::Full, |_| {});
    wait_for("the initial sync", Duration::from_secs(120), || {
        settled(&primary, &remote)
    });
    let image = host_writes(&primary, 8, 50, image);
    wait_for("the writes to be stored", Duration::from_secs(60), || {
        settled(&primary, &remote)
    });
    // Damage behind dtu's back (a bad disk, a stray dd).
    let flips = [3 * 4096 + 17, (SIZE / 2) as usize + 5, SIZE as usize - 100];
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(rig.path("replica.img"))
        .unwrap();
    for &at in &flips {
        f.write_all_at(&[image[at] ^ 0xff], at as u64).unwrap();
    }
    f.sync_all().unwrap();
    let finished = |p: &Primary| {
        let s = primary_status(p);
        !s.mirror.sync.verify.active && s.mirror.sync.last_verify_unix.is_some()
    };
    primary.verify(0, SIZE, false).unwrap();
    wait_for("the verify", Duration::from_secs(120), || {
        finished(&primary)
    });
    let s = primary_status(&primary).mirror.sync;
    for &at in &flips {
        assert!(
            s.mismatches
                .iter()
                .any(|&(o, l)| (o..o + l).contains(&(at as u64))),
            "byte {at} flipped but not reported: {:?}",
            s.mismatches
        );
    }
    assert!(s.mismatched_bytes >= 3 * 4096 && s.mismatched_bytes <= 3 * (1 << 20));
    // A plain verify reports, it does not touch the replica.
    assert_ne!(rig.replica()[flips[0]], image[flips[0]]);

    primary.verify(0, SIZE, true).unwrap();
    wait_for("the repair", Duration::from_secs(120), || {
        finished(&primary) && settled(&primary, &remote)
    });
    assert_same("replica after the repair", &rig.replica(), &image);
    primary.verify(0, SIZE, false).unwrap();
    wait_for(
        "a verify after the repair",
        Duration::from_secs(120),
        || finished(&primary),
    );
    assert_eq!(primary_status(&primary).mirror.sync.mismatched_bytes, 0);
    primary.shutdown();
    remote.shutdown();
}

#[test]
fn a_primary_with_unrelated_data_is_refused_and_the_replica_is_left_alone() {
    let rig = Rig::new();
    let image = fill_disk(&rig.path("source.img"), 9);
    let remote = rig.remote();
    let primary = rig.primary(InitialSync::Full, |_| {});
    wait_for("the initial sync", Duration::from_secs(120), || {
        settled(&primary, &remote)
    });
    primary.shutdown();
    // Another volume's primary (a new nvbuf: a new history) with other
    // data on its disk, pointed at the same remote by mistake.
    std::fs::remove_file(rig.path("primary.nvbuf")).unwrap();
    let _ = std::fs::remove_file(rig.path("primary.nvbuf.map"));
    fill_disk(&rig.path("source.img"), 10);
    let primary = rig.primary(InitialSync::Full, |_| {});
    wait_for("the refusal", Duration::from_secs(30), || {
        primary_status(&primary).connection == ConnectionState::Refused
    });
    let s = primary_status(&primary);
    let why = s.connection_detail.unwrap_or_default();
    assert!(why.contains("unrelated data"), "{why}");
    std::thread::sleep(Duration::from_millis(500));
    primary.shutdown();
    remote.shutdown();
    assert_same("the refused primary's replica", &rig.replica(), &image);
}

#[test]
fn a_split_brain_is_refused_and_nothing_is_overwritten() {
    let rig = Rig::new();
    let image = fill_disk(&rig.path("source.img"), 11);
    let small = |o: &mut PrimaryOptions| {
        o.nvbuf_size = 4 << 20;
        o.mirror.overflow = Some(Overflow::Bitmap);
        o.mirror.overflow_after = Duration::from_millis(300);
    };
    let remote = rig.remote();
    let primary = rig.primary(InitialSync::Full, small);
    wait_for("the initial sync", Duration::from_secs(120), || {
        settled(&primary, &remote)
    });
    primary.shutdown();
    remote.shutdown();
    // A second primary with the same history: a copy of the first one's
    // nvbuf, map and disk (a site restored from a backup, a cloned VM).
    let twin = rig.path("twin");
    std::fs::create_dir(&twin).unwrap();
    for f in ["primary.nvbuf", "primary.nvbuf.map", "source.img"] {
        std::fs::copy(rig.path(f), twin.join(f)).unwrap();
    }
    let at_twin = |o: &mut PrimaryOptions| {
        small(o);
        o.nvbuf_path = twin.join("primary.nvbuf");
        o.local = Some(twin.join("source.img"));
    };
    // Both write while the remote is away: each goes ahead into a new
    // generation of its own.
    let first = rig.primary(InitialSync::Full, small);
    host_writes(&first, 12, 250, image.clone());
    assert_eq!(primary_status(&first).mirror.mode, "ahead");
    first.shutdown();
    let second = rig.primary(InitialSync::Full, at_twin);
    let second_image = host_writes(&second, 13, 250, image.clone());
    assert_eq!(primary_status(&second).mirror.mode, "ahead");
    // The twin reaches the remote first and resyncs it to its generation.
    let remote = rig.remote();
    wait_for("the twin's resync", Duration::from_secs(120), || {
        settled(&second, &remote)
    });
    second.shutdown();
    assert_same(
        "replica after the twin's resync",
        &rig.replica(),
        &second_image,
    );
    // The first primary comes back: both sides changed since the
    // generation they share.
    let first = rig.primary(InitialSync::Full, small);
    wait_for("the refusal", Duration::from_secs(30), || {
        primary_status(&first).connection == ConnectionState::Refused
    });
    let why = primary_status(&first).connection_detail.unwrap_or_default();
    assert!(why.contains("split brain"), "{why}");
    let rs = remote_status(&remote);
    assert!(
        rs.decision.as_deref().unwrap_or("").contains("split brain")
            || rs
                .last_refusal
                .as_deref()
                .unwrap_or("")
                .contains("split brain"),
        "{:?} / {:?}",
        rs.decision,
        rs.last_refusal
    );
    std::thread::sleep(Duration::from_millis(500));
    first.shutdown();
    remote.shutdown();
    assert_same(
        "the replica after the refusal",
        &rig.replica(),
        &second_image,
    );
}

#[test]
fn a_periodic_verify_runs_by_itself() {
    let rig = Rig::new();
    let _ = fill_disk(&rig.path("source.img"), 14);
    let remote = rig.remote();
    let primary = rig.primary(InitialSync::Full, |o| {
        o.mirror.verify_every = Some(Duration::from_secs(1));
    });
    wait_for("a periodic verify", Duration::from_secs(120), || {
        let s = primary_status(&primary).mirror.sync;
        s.last_verify_unix.is_some() && !s.verify.active
    });
    assert_eq!(primary_status(&primary).mirror.sync.mismatched_bytes, 0);
    primary.shutdown();
    remote.shutdown();
}

#[test]
fn primary_checkpoint_reaches_the_remote_in_stream_order() {
    let rig = Rig::new();
    std::fs::File::create(rig.path("source.img"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let remote = rig.remote();
    let primary = rig.primary(InitialSync::AssumeInSync, |_| {});
    let image = host_writes(&primary, 15, 20, vec![0; SIZE as usize]);
    primary.checkpoint("after-twenty").unwrap().wait().unwrap();
    wait_for(
        "the checkpoint on the remote",
        Duration::from_secs(30),
        || {
            remote_status(&remote)
                .last_checkpoint
                .is_some_and(|c| c.contains("after-twenty"))
        },
    );
    primary.shutdown();
    remote.shutdown();
    assert_same("replica", &rig.replica(), &image);
}
