//! The NBD front end of a real pair in one process (a primary with a local
//! copy, a remote, QUIC over loopback): holes written through the primary
//! show up in `nbdinfo --map` of the primary's export and of the remote's
//! read-only export, and a flush on one connection covers the writes
//! answered on another (multi-conn is advertised).

mod nbd_harness;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtu::inproc::{primary_status, remote_status, PairSetup};
use dtu::nbd::{Export, FileExport, NbdServer};
use dtu::primary::{Primary, PrimaryExport};
use dtu::remote::Remote;
use dtu::transport::LinkTuning;
use dtu_proto::{AckPolicy, Trigger};
use nbd_harness::*;
use tokio::sync::watch;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
const SIZE: u64 = 32 * MIB;
const LIMIT: Duration = Duration::from_secs(120);

/// A pair, the primary's export on a unix socket and, once the remote
/// runs, the replica's read-only export on another.
struct Pair {
    dir: tempfile::TempDir,
    setup: PairSetup,
    remote_addr: std::net::SocketAddr,
    remote: Option<Remote>,
    primary: Option<Arc<Primary>>,
    rt: tokio::runtime::Runtime,
    stop: watch::Sender<bool>,
    socket: PathBuf,
    ro_socket: PathBuf,
}

fn tuning() -> LinkTuning {
    LinkTuning {
        rate_bps: 1_000_000_000,
        rtt: Duration::from_millis(1),
        ..LinkTuning::default()
    }
}

impl Pair {
    /// Starts the primary (and the remote, unless `remote_later`).
    fn start(policy: AckPolicy, remote_later: bool) -> Pair {
        let dir = tempfile::Builder::new()
            .prefix("nbd-pair-")
            .tempdir()
            .unwrap();
        let setup = PairSetup::generate(rand::random(), SIZE).unwrap();
        // A free UDP port for the remote, which may start after the primary.
        let remote_addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (stop, _) = watch::channel(false);
        let mut pair = Pair {
            socket: dir.path().join("primary.sock"),
            ro_socket: dir.path().join("replica.sock"),
            dir,
            setup,
            remote_addr,
            remote: None,
            primary: None,
            rt,
            stop,
        };
        if !remote_later {
            pair.start_remote();
        }
        let opts = pair
            .setup
            .primary_options(remote_addr, tuning(), pair.dir.path(), policy);
        let primary = Arc::new(Primary::start(opts).expect("start the primary"));
        let export: Arc<dyn Export> = Arc::new(PrimaryExport::new(primary.clone()));
        pair.serve(export, pair.socket.clone());
        pair.primary = Some(primary);
        pair
    }

    fn start_remote(&mut self) {
        let opts = self
            .setup
            .remote_options(self.remote_addr, tuning(), self.dir.path());
        self.remote = Some(Remote::start(opts).expect("start the remote"));
        let ro = FileExport::open(&self.replica_path(), SIZE, true).expect("replica export");
        self.serve(Arc::new(ro), self.ro_socket.clone());
    }

    fn serve(&self, export: Arc<dyn Export>, socket: PathBuf) {
        let server = Arc::new(NbdServer::new("dtu", export));
        let stop = self.stop.subscribe();
        self.rt.block_on(async {
            let l = tokio::net::UnixListener::bind(&socket).unwrap();
            tokio::spawn(server.serve_unix(l, stop));
        });
    }

    fn primary(&self) -> &Primary {
        self.primary.as_ref().unwrap()
    }

    fn replica_path(&self) -> PathBuf {
        self.dir.path().join("replica.img")
    }

    fn uri(socket: &std::path::Path) -> String {
        format!("nbd+unix:///dtu?socket={}", socket.display())
    }

    /// Waits (bounded) until the remote has stored every operation so far.
    fn wait_replicated(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = primary_status(self.primary());
            let r = remote_status(self.remote.as_ref().unwrap());
            if r.stored_seq >= p.highest_seq {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "remote stored seq {} of {}",
                r.stored_seq,
                p.highest_seq
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let rt = std::mem::replace(
            &mut self.rt,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        );
        rt.shutdown_timeout(Duration::from_secs(5));
        if let Some(p) = self.primary.take() {
            if let Ok(p) = Arc::try_unwrap(p) {
                p.shutdown();
            }
        }
        if let Some(r) = self.remote.take() {
            r.shutdown();
        }
    }
}

fn nbdinfo_map(uri: &str) -> Vec<(u64, u64, u64)> {
    let r = run_tool("nbdinfo", &["--map", "--json", uri], LIMIT);
    r.assert_ok("nbdinfo --map");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn nbdinfo_map_shows_the_holes_of_a_sparse_image_written_through_the_pair() {
    let pair = Pair::start(AckPolicy::default(), false);
    // A sparse source: data at 4 MiB (1 MiB) and 20 MiB (256 KiB) only.
    let src = pair.dir.path().join("src.img");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(SIZE).unwrap();
    let a = random_bytes(MIB as usize, 1);
    let b = random_bytes(256 * KIB as usize, 2);
    std::os::unix::fs::FileExt::write_all_at(&f, &a, 4 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &b, 20 * MIB).unwrap();
    drop(f);
    // The primary's local copy starts as junk-free holes; fill it with data
    // everywhere first, so the holes afterwards can only come from the
    // copy's zeroing (write-zeroes as trims) through the pair.
    let junk = pair.dir.path().join("junk.img");
    std::fs::write(&junk, random_bytes(SIZE as usize, 3)).unwrap();
    let primary_uri = Pair::uri(&pair.socket);
    run_tool("nbdcopy", &[junk.to_str().unwrap(), &primary_uri], LIMIT).assert_ok("junk");
    run_tool(
        "nbdcopy",
        &["--flush", src.to_str().unwrap(), &primary_uri],
        LIMIT,
    )
    .assert_ok("nbdcopy of the sparse image into the primary");
    pair.wait_replicated();

    let want = [
        (0, 4 * MIB, 3),
        (4 * MIB, MIB, 0),
        (5 * MIB, 15 * MIB, 3),
        (20 * MIB, 256 * KIB, 0),
        (20 * MIB + 256 * KIB, 12 * MIB - 256 * KIB, 3),
    ];
    assert_eq!(
        nbdinfo_map(&primary_uri),
        want,
        "primary's export (local copy)"
    );
    assert_eq!(
        nbdinfo_map(&Pair::uri(&pair.ro_socket)),
        want,
        "remote's read-only export (replica)"
    );
    // And the bytes are the source's on both sides.
    let source = std::fs::read(&src).unwrap();
    assert!(
        std::fs::read(pair.replica_path()).unwrap() == source,
        "replica differs"
    );
    let back = pair.dir.path().join("back.img");
    run_tool("nbdcopy", &[&primary_uri, back.to_str().unwrap()], LIMIT).assert_ok("read back");
    assert!(
        std::fs::read(&back).unwrap() == source,
        "primary's export differs"
    );
}

#[test]
fn a_flush_on_one_connection_covers_writes_answered_on_another() {
    // Writes are answered at `received` while the host reports a full
    // cache (spoofing); the flush comes once spoofing is turned off, so it
    // must wait for the true ack: the remote has stored every earlier
    // write, whichever connection it came on. (An empty cache alone would
    // not do: spoofing holds until the backlog it answered early is
    // stored.)
    let policy = AckPolicy {
        trigger: Trigger::Received,
        spoofing: true,
        dirty_threshold: 50.0,
        ..AckPolicy::default()
    };
    let mut pair = Pair::start(policy, true);
    pair.primary().report_dirty(90.0);
    let (mut a, _, flags) = RawClient::transmission_unix(&pair.socket, "dtu");
    assert_ne!(flags & TFLAG_CAN_MULTI_CONN, 0, "multi-conn advertised");
    let (mut b, _, _) = RawClient::transmission_unix(&pair.socket, "dtu");
    let mut written = Vec::new();
    for i in 0..16u64 {
        let data = random_bytes(64 * KIB as usize, 100 + i);
        let at = i * MIB + 4096 * i;
        // Answered with no remote at all: spoofed at `received`.
        assert_eq!(a.write(i + 1, at, &data, 0), 0, "write {i} on connection A");
        written.push((at, data));
    }
    pair.primary().report_dirty(0.0);
    pair.primary().set_policy(AckPolicy {
        spoofing: false,
        ..policy
    });
    // B's flush cannot be answered while nothing is stored.
    b.s.set_timeout(Duration::from_secs(2));
    b.request(CMD_FLUSH, 0, 99, 0, 0);
    let mut head = [0u8; 1];
    let early = std::io::Read::read(&mut b.s, &mut head);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "the flush on B was answered before any write reached the remote"
    );
    pair.start_remote();
    b.s.set_timeout(Duration::from_secs(60));
    let (error, handle) = b.reply();
    assert_eq!((error, handle), (0, 99), "flush reply on B");
    // The flush's answer means stored: the replica holds A's writes now,
    // without waiting any further.
    let replica = std::fs::read(pair.replica_path()).unwrap();
    for (at, data) in &written {
        let at = *at as usize;
        assert!(
            replica[at..at + data.len()] == data[..],
            "write at {at} from connection A missing from the replica after B's flush"
        );
    }
    let stored = remote_status(pair.remote.as_ref().unwrap()).stored_seq;
    assert!(
        stored >= 17,
        "remote stored seq {stored}, flush was seq 17 or later"
    );
}
