//! A primary and a remote in one process over real QUIC on 127.0.0.1, with
//! real files: every write reaches the replica, in order, byte for byte;
//! restarts of either side resume without loss; a wrong certificate is
//! refused and writes nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu::config::{CongestionChoice, Volume};
use dtu::identity::Identity;
use dtu::primary::{Primary, PrimaryOptions};
use dtu::remote::{Remote, RemoteOptions};
use dtu::replica::{FileReplica, Replica};
use dtu::transport::LinkTuning;
use dtu_proto::{AckPolicy, Trigger};
use rand::{Rng, SeedableRng};

const SIZE: u64 = 16 << 20;

struct Pair {
    dir: tempfile::TempDir,
    primary_id: Identity,
    remote_id: Identity,
    volume: Volume,
}

fn tuning() -> LinkTuning {
    LinkTuning {
        rate_bps: 1_000_000_000,
        rtt: Duration::from_millis(1),
        congestion: CongestionChoice::Cubic,
        ..LinkTuning::default()
    }
}

impl Pair {
    fn new(seal: bool) -> Pair {
        Pair {
            dir: tempfile::tempdir().unwrap(),
            primary_id: Identity::generate("dtu-primary").unwrap(),
            remote_id: Identity::generate("dtu-remote").unwrap(),
            volume: Volume {
                id: [9; 16],
                size: SIZE,
                block_size: 4096,
                key: seal.then_some([5; 32]),
            },
        }
    }

    fn remote(&self, port: u16) -> Remote {
        Remote::start(RemoteOptions {
            volume: self.volume.clone(),
            identity: self.remote_id.clone(),
            peer: self.primary_id.fingerprint(),
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            tuning: tuning(),
            replica: self.dir.path().join("replica.img"),
            state: self.dir.path().join("replica.state"),
            workers: 2,
            adopt_replica: false,
            undo: None,
            storage: None,
            split_brain: Default::default(),
            discard_my_data: false,
        })
        .unwrap()
    }

    fn primary(&self, remote_port: u16, policy: AckPolicy, peer_id: &Identity) -> Primary {
        Primary::start(PrimaryOptions {
            peer: peer_id.fingerprint(),
            ..self.primary_options(remote_port, policy)
        })
        .unwrap()
    }

    fn primary_options(&self, remote_port: u16, policy: AckPolicy) -> PrimaryOptions {
        PrimaryOptions {
            volume: self.volume.clone(),
            identity: self.primary_id.clone(),
            peer: self.remote_id.fingerprint(),
            remote: format!("127.0.0.1:{remote_port}").parse().unwrap(),
            server_name: "dtu-remote".into(),
            tuning: tuning(),
            lanes: 3,
            nvbuf_path: self.dir.path().join("primary.nvbuf"),
            nvbuf_size: 64 << 20,
            workers: 2,
            chunk_size: 64 << 10,
            compress: true,
            policy,
            local: None,
            read_timeout: Duration::from_secs(10),
            accept_nvbuf_loss: false,
            peer_lost: false,
            restore_from_remote: false,
            mirror: dtu::primary::MirrorOptions::default(),
        }
    }

    fn replica(&self) -> Vec<u8> {
        let r = FileReplica::open_read_only(&self.dir.path().join("replica.img"), SIZE).unwrap();
        let mut buf = vec![0u8; SIZE as usize];
        r.read_at(0, &mut buf).unwrap();
        buf
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes random data at random offsets; returns the volume image it makes.
fn write_load(p: &Primary, seed: u64, writes: usize, mut image: Vec<u8>) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut pending = Vec::new();
    for i in 0..writes {
        let len = rng.gen_range(1..300_000usize);
        let off = rng.gen_range(0..SIZE as usize - len);
        let data: Vec<u8> = if i % 5 == 0 {
            vec![0; len]
        } else {
            (0..len).map(|_| rng.gen_range(0..16u8)).collect()
        };
        image[off..off + len].copy_from_slice(&data);
        pending.push(p.write(off as u64, Bytes::from(data)).unwrap());
        if i % 7 == 0 {
            pending.push(p.trim((off / 4096 * 4096) as u64, 4096).unwrap());
            image[off / 4096 * 4096..off / 4096 * 4096 + 4096].fill(0);
        }
    }
    pending.push(p.flush().unwrap());
    for w in pending {
        w.wait().unwrap();
    }
    image
}

fn stored_everything(p: &Primary) -> bool {
    match p.status() {
        dtu::status::Status::Primary(s) => s.remote_stored_seq == s.highest_seq,
        _ => false,
    }
}

fn quic_of(p: &Primary) -> dtu::status::QuicStatus {
    match p.status() {
        dtu::status::Status::Primary(s) => s.quic,
        dtu::status::Status::Remote(_) => unreachable!("a primary reports a primary status"),
    }
}

#[test]
fn writes_reach_the_replica_in_order_and_survive_restarts() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("DTU_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let pair = Pair::new(true);
    let port = free_udp_port();
    let remote = pair.remote(port);
    let policy = AckPolicy {
        trigger: Trigger::RemoteStored,
        ..AckPolicy::default()
    };
    let primary = pair.primary(port, policy, &pair.remote_id);
    eprintln!("phase 1");
    let image = write_load(&primary, 1, 200, vec![0; SIZE as usize]);
    eprintln!("phase 1 written");
    assert!(stored_everything(&primary));
    assert_eq!(
        pair.replica(),
        image,
        "replica differs after the first load"
    );

    // Restart the remote while the primary keeps writing (buffered acks).
    let quic_before = quic_of(&primary);
    remote.shutdown();
    primary.set_policy(AckPolicy {
        trigger: Trigger::Buffered,
        dirty_threshold: 0.0,
        ..AckPolicy::default()
    });
    let image = write_load(&primary, 2, 100, image);
    let remote = pair.remote(port);
    wait_for(
        "catch-up after a remote restart",
        Duration::from_secs(30),
        || stored_everything(&primary),
    );
    assert_eq!(
        pair.replica(),
        image,
        "replica differs after the remote restart"
    );
    // QUIC's counters carry on across the reconnect (Prometheus counters
    // must never go down); the second connection carried half the writes.
    let quic_after = quic_of(&primary);
    assert!(quic_after.connections >= 2, "{quic_after:?}");
    assert!(
        quic_after.sent_packets > quic_before.sent_packets
            && quic_after.udp_tx_bytes > quic_before.udp_tx_bytes,
        "{quic_before:?} -> {quic_after:?}"
    );

    // Restart the primary with writes not yet stored: the nvbuf resends them.
    remote.shutdown();
    let image = write_load(&primary, 3, 50, image);
    primary.shutdown();
    let remote = pair.remote(port);
    let primary = pair.primary(port, policy, &pair.remote_id);
    wait_for("resend from the nvbuf", Duration::from_secs(30), || {
        stored_everything(&primary)
    });
    assert_eq!(
        pair.replica(),
        image,
        "replica differs after the primary restart"
    );
    if let dtu::status::Status::Primary(s) = primary.status() {
        assert!(
            s.recovered_at_start > 0,
            "the primary should have recovered records"
        );
    }

    // Reads forwarded to the remote see every earlier write.
    let data = primary
        .runtime()
        .block_on(primary.read(4096, 65536))
        .unwrap();
    assert_eq!(&data[..], &image[4096..4096 + 65536]);
    drop(primary);
    drop(remote);
}

#[test]
fn a_wrong_certificate_is_refused_and_writes_nothing() {
    let pair = Pair::new(false);
    let port = free_udp_port();
    let remote = pair.remote(port);
    let impostor = Identity::generate("dtu-remote").unwrap();
    let primary = pair.primary(port, AckPolicy::default(), &impostor);
    let w = primary.write(0, Bytes::from(vec![0xee; 4096])).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let dtu::status::Status::Primary(s) = primary.status() else {
        panic!()
    };
    assert_ne!(s.connection, dtu::status::ConnectionState::Connected);
    assert!(
        s.connection_detail
            .as_deref()
            .unwrap_or("")
            .contains("pinned"),
        "the refusal names the pinned fingerprint: {:?}",
        s.connection_detail
    );
    assert_eq!(s.remote_stored_seq, 0);
    drop(w);
    drop(primary);
    assert!(
        pair.replica().iter().all(|&b| b == 0),
        "nothing reached the replica"
    );
    assert!(Path::new(&pair.dir.path().join("replica.img")).exists());
    drop(remote);
}

/// Host connections racing on the same blocks: the local copy and the
/// replica must end in the same state, because the local copy sees the
/// writes in the order of their seqs, which is the order the replica
/// applies them in. Each round starts all threads at once on a fresh block,
/// so every block's final contents come from one race.
#[test]
fn racing_overlapping_writes_leave_the_local_copy_equal_to_the_replica() {
    const THREADS: usize = 8;
    const BLOCK: usize = 128 << 10;
    const ROUNDS: usize = SIZE as usize / BLOCK;
    let pair = Pair::new(true);
    let port = free_udp_port();
    let remote = pair.remote(port);
    let local = pair.dir.path().join("local.img");
    let policy = AckPolicy {
        dirty_threshold: 0.0,
        ..AckPolicy::default()
    };
    let primary = Primary::start(PrimaryOptions {
        local: Some(local.clone()),
        ..pair.primary_options(port, policy)
    })
    .unwrap();
    let barrier = std::sync::Barrier::new(THREADS);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // A monitor polling the status keeps the primary's state lock busy,
        // so writers that finished their local write queue up for their seq
        // in whatever order the lock hands it out.
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = primary.status();
            }
        });
        for t in 0..THREADS {
            let (primary, barrier) = (&primary, &barrier);
            s.spawn(move || {
                let mut pending = Vec::new();
                for round in 0..ROUNDS {
                    let data = Bytes::from(vec![(round * THREADS + t) as u8; BLOCK]);
                    barrier.wait();
                    pending.push(primary.write((round * BLOCK) as u64, data).unwrap());
                }
                for p in pending {
                    p.wait().unwrap();
                }
            });
        }
        s.spawn(|| {
            barrier_done(&primary, ROUNDS * THREADS);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    });
    primary.flush().unwrap().wait().unwrap();
    wait_for("the replica to catch up", Duration::from_secs(60), || {
        stored_everything(&primary)
    });
    let local_bytes = std::fs::read(&local).unwrap();
    let replica = pair.replica();
    assert_eq!(local_bytes.len(), replica.len());
    if let Some(i) = local_bytes.iter().zip(&replica).position(|(a, b)| a != b) {
        panic!(
            "local copy and replica differ at byte {i}: local {:#04x}, replica {:#04x}",
            local_bytes[i], replica[i]
        );
    }
    drop(primary);
    drop(remote);
}

/// Waits until `writes` writes have been answered.
fn barrier_done(p: &Primary, writes: usize) {
    wait_for(
        "every racing write to be answered",
        Duration::from_secs(120),
        || matches!(p.status(), dtu::status::Status::Primary(s) if s.writes as usize >= writes && s.highest_seq == s.buffered_seq),
    );
}

/// Two sides holding different volume keys refuse each other at connect,
/// with a message on both sides, instead of refusing every chunk forever;
/// and a primary refused right after connecting backs off instead of
/// reconnecting every 100 ms.
#[test]
fn different_volume_keys_are_refused_at_connect_and_the_primary_backs_off() {
    let pair = Pair::new(true);
    let port = free_udp_port();
    let remote = pair.remote(port);
    let other_key = Pair {
        volume: Volume {
            key: Some([6; 32]),
            ..pair.volume.clone()
        },
        dir: tempfile::tempdir().unwrap(),
        primary_id: pair.primary_id.clone(),
        remote_id: pair.remote_id.clone(),
    };
    let primary = other_key.primary(port, AckPolicy::default(), &pair.remote_id);
    let w = primary.write(0, Bytes::from(vec![0xee; 4096])).unwrap();
    let watch = Duration::from_secs(7);
    std::thread::sleep(watch);
    let dtu::status::Status::Primary(p) = primary.status() else {
        panic!()
    };
    let detail = p.connection_detail.clone().unwrap_or_default();
    assert!(
        p.connection == dtu::status::ConnectionState::Refused
            && detail.contains("volume keys differ"),
        "the primary says why it is refused: {} {detail:?}",
        p.connection
    );
    let dtu::status::Status::Remote(r) = remote.status() else {
        panic!()
    };
    let refusal = r.last_refusal.clone().unwrap_or_default();
    assert!(
        refusal.contains("volume keys differ"),
        "the remote says why it refused: {refusal:?}"
    );
    // 100, 200, 400, 800, 1600, 3200 ms (+-25 %) fit in 7 s: at most about
    // eight attempts; resetting after every refusal made it about 60.
    assert!(
        (1..=10).contains(&r.refused),
        "{} connection attempts in {watch:?}",
        r.refused
    );
    assert_eq!(r.applied_seq, 0, "nothing was applied");
    drop(w);
    drop(primary);
    drop(remote);
}

/// Bytes flipped in the middle of the nvbuf while the primary was down:
/// the primary refuses to start and names what is lost; with
/// `accept_nvbuf_loss` it starts on the intact prefix, and the remote
/// records (durably) that its replica may lack answered writes.
#[test]
fn a_damaged_nvbuf_refuses_to_start_and_an_accepted_loss_marks_the_replica() {
    let pair = Pair::new(true);
    let port = free_udp_port();
    // No remote yet: everything stays in the nvbuf, answered at buffered.
    let policy = AckPolicy {
        trigger: Trigger::Buffered,
        dirty_threshold: 0.0,
        ..AckPolicy::default()
    };
    let primary = pair.primary(port, policy, &pair.remote_id);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for i in 0..40u64 {
        let data: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
        primary
            .write(i * 4096, Bytes::from(data))
            .unwrap()
            .wait()
            .unwrap();
    }
    primary.shutdown();
    let nvbuf = pair.dir.path().join("primary.nvbuf");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&nvbuf)
            .unwrap();
        let at = dtu::nvbuf::format::RING_OFFSET as u64 + 20 * 4400;
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, at).unwrap();
        for x in &mut b {
            *x ^= 0x5a;
        }
        f.write_all_at(&b, at).unwrap();
    }
    let start = |accept: bool| {
        Primary::start(PrimaryOptions {
            accept_nvbuf_loss: accept,
            ..pair.primary_options(port, policy)
        })
    };
    let e = start(false).err().expect("a damaged nvbuf must not start");
    let text = e.to_string();
    assert!(
        text.contains("cannot be recovered") && text.contains("--accept-nvbuf-loss"),
        "{text}"
    );
    let primary = start(true).expect("an accepted loss starts");
    let remote = pair.remote(port);
    wait_for("the replica to catch up", Duration::from_secs(30), || {
        stored_everything(&primary)
    });
    let dtu::status::Status::Remote(r) = remote.status() else {
        panic!()
    };
    assert!(!r.consistent, "the replica may lack answered writes");
    assert!(
        r.inconsistent_reasons
            .iter()
            .any(|x| x.contains("lost answered writes")),
        "{:?}",
        r.inconsistent_reasons
    );
    drop(primary);
    drop(remote);
    // Recorded durably on the remote, and reported once by the primary.
    let remote = pair.remote(port);
    let dtu::status::Status::Remote(r) = remote.status() else {
        panic!()
    };
    assert!(!r.consistent, "the mark survives a restart");
    let primary = start(false).expect("the loss was accepted and reported");
    drop(primary);
    drop(remote);
}

/// A changed `nvbuf.size` is not silently ignored: an nvbuf holding
/// unreplicated records keeps its size (and says so), an empty one is
/// replaced by one of the new size that continues its seqs and epoch, so
/// the remote keeps accepting the primary.
#[test]
fn a_changed_nvbuf_size_resizes_an_empty_nvbuf_and_keeps_a_busy_one() {
    let pair = Pair::new(true);
    let port = free_udp_port();
    let nvbuf = pair.dir.path().join("primary.nvbuf");
    let policy = AckPolicy {
        dirty_threshold: 0.0,
        ..AckPolicy::default()
    };
    let start = |size: u64| {
        Primary::start(PrimaryOptions {
            nvbuf_size: size,
            ..pair.primary_options(port, policy)
        })
        .unwrap()
    };
    // Unreplicated records (no remote yet): the size stays.
    let primary = start(64 << 20);
    primary
        .write(0, Bytes::from(vec![1; 8192]))
        .unwrap()
        .wait()
        .unwrap();
    primary.shutdown();
    let primary = start(32 << 20);
    assert_eq!(std::fs::metadata(&nvbuf).unwrap().len(), 64 << 20);
    let remote = pair.remote(port);
    wait_for("the replica to catch up", Duration::from_secs(30), || {
        stored_everything(&primary)
    });
    primary.shutdown();
    // Empty now: the next start resizes it and the pair goes on.
    let primary = start(32 << 20);
    assert_eq!(std::fs::metadata(&nvbuf).unwrap().len(), 32 << 20);
    primary
        .write(8192, Bytes::from(vec![2; 8192]))
        .unwrap()
        .wait()
        .unwrap();
    wait_for(
        "the write after the resize",
        Duration::from_secs(30),
        || stored_everything(&primary),
    );
    let replica = pair.replica();
    assert!(replica[..8192].iter().all(|&b| b == 1));
    assert!(replica[8192..16384].iter().all(|&b| b == 2));
    drop(primary);
    drop(remote);
}
