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
        })
        .unwrap()
    }

    fn primary(&self, remote_port: u16, policy: AckPolicy, peer_id: &Identity) -> Primary {
        Primary::start(PrimaryOptions {
            volume: self.volume.clone(),
            identity: self.primary_id.clone(),
            peer: peer_id.fingerprint(),
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
        })
        .unwrap()
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
