//! Point in time through a real pair in one process (QUIC on 127.0.0.1,
//! real files): the remote's undo journal keeps what each write overwrites
//! since the last checkpoint, so the replica can be read as it was at every
//! checkpoint held while the live replica moves on; the catalog lists them
//! over the control socket and survives a restart of the remote.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu::config::CongestionChoice;
use dtu::control::{Controlled, Request, Response};
use dtu::inproc::{primary_status, remote_status, PairSetup};
use dtu::nbd::Export;
use dtu::primary::Primary;
use dtu::remote::{AsOf, CheckpointInfo, Remote};
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
        let rig = Rig {
            dir: tempfile::tempdir().unwrap(),
            setup: PairSetup::generate([6; 16], SIZE).unwrap(),
            port,
        };
        std::fs::File::create(rig.path("source.img"))
            .unwrap()
            .set_len(SIZE)
            .unwrap();
        rig
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn remote(&self) -> Remote {
        let o = self.setup.remote_options(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            tuning(),
            self.dir.path(),
        );
        assert!(o.undo.is_some(), "the undo journal is on by default");
        Remote::start(o).unwrap()
    }

    fn primary(&self) -> Primary {
        let mut o = self.setup.primary_options(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            tuning(),
            self.dir.path(),
            buffered(),
        );
        o.mirror.initial_sync = InitialSync::AssumeInSync;
        Primary::start(o).unwrap()
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Random host writes (some of zeros, some over earlier ones) and trims;
/// returns the new image.
fn host_writes(p: &Primary, seed: u64, writes: usize, mut image: Vec<u8>) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pending = Vec::new();
    for i in 0..writes {
        let len = rng.gen_range(1..64usize) * 4096;
        // Half the writes land in the first 4 MiB, so they overwrite.
        let span = if i % 2 == 0 { 4 << 20 } else { SIZE as usize };
        let off = rng.gen_range(0..(span - len) / 4096) * 4096;
        let data: Vec<u8> = if i % 6 == 0 {
            vec![0; len]
        } else {
            (0..len).map(|_| rng.gen()).collect()
        };
        image[off..off + len].copy_from_slice(&data);
        pending.push(p.write(off as u64, Bytes::from(data)).unwrap());
        if i % 7 == 0 {
            pending.push(p.trim(off as u64, 8192).unwrap());
            image[off..off + 8192].fill(0);
        }
    }
    pending.push(p.flush().unwrap());
    for w in pending {
        w.wait().unwrap();
    }
    image
}

fn stored_all(p: &Primary) -> bool {
    let s = primary_status(p);
    s.remote_stored_seq == s.highest_seq
}

/// `dtu checkpoints --json`'s request, through the control socket's JSON.
fn listed(r: &Remote) -> Vec<CheckpointInfo> {
    let req: Request = Request::parse(r#"{"op":"checkpoints"}"#).unwrap();
    let line = serde_json::to_string(&r.handle(req)).unwrap();
    match serde_json::from_str::<Response>(&line).unwrap() {
        Response::Checkpoints { checkpoints } => checkpoints,
        other => panic!("unexpected answer {other:?}"),
    }
}

fn as_of(r: &Remote, at: AsOf) -> Vec<u8> {
    let mut buf = vec![0u8; SIZE as usize];
    // In pieces, as an export reads.
    for (i, piece) in buf.chunks_mut(1 << 20).enumerate() {
        r.read_as_of(&at, (i as u64) << 20, piece).unwrap();
    }
    buf
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
fn as_of_views_show_each_checkpoint_while_the_replica_moves_on_and_survive_a_restart() {
    let rig = Rig::new();
    let remote = rig.remote();
    let primary = rig.primary();

    let a = host_writes(&primary, 1, 40, vec![0; SIZE as usize]);
    primary.checkpoint("c1").unwrap().wait().unwrap();
    let b = host_writes(&primary, 2, 40, a.clone());
    // As `dtu checkpoint --kind boot c2` asks it, through the primary's control socket.
    let req = Request::parse(r#"{"op":"checkpoint","label":"c2","kind":"boot"}"#).unwrap();
    assert!(matches!(primary.handle(req), Response::Ok { .. }));
    assert!(Request::parse(r#"{"op":"checkpoint","label":"x","kind":"reboot"}"#).is_err());
    let c = host_writes(&primary, 3, 40, b.clone());
    wait_for("everything stored", Duration::from_secs(60), || {
        stored_all(&primary)
    });
    assert_ne!(a, b);
    assert_ne!(b, c);

    let list = listed(&remote);
    assert_eq!(
        list.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(),
        ["c1", "c2"],
        "{list:?}"
    );
    assert!(list[0].seq < list[1].seq, "{list:?}");
    assert!(list[0].time_us <= list[1].time_us, "{list:?}");
    assert_eq!(
        (list[0].kind.as_str(), list[1].kind.as_str()),
        ("manual", "boot")
    );
    // c2's era saved what the writes after it overwrote.
    assert!(list[1].undo_bytes > 0, "{list:?}");

    let rs = remote_status(&remote);
    assert_eq!(rs.checkpoints, Some(2));
    assert!(rs.undo_bytes > 0, "{rs:?}");
    assert!(
        rs.oldest_checkpoint
            .as_deref()
            .is_some_and(|o| o.contains("c1")),
        "{rs:?}"
    );
    assert_eq!(rs.failed, None);

    assert_same("as of c1", &as_of(&remote, AsOf::Label("c1".into())), &a);
    assert_same("as of c2", &as_of(&remote, AsOf::Label("c2".into())), &b);
    assert_same(
        "as of c2's time",
        &as_of(&remote, AsOf::Time(list[1].time_us)),
        &b,
    );
    assert_same(
        "live replica",
        &std::fs::read(rig.path("replica.img")).unwrap(),
        &c,
    );

    // The read-only NBD export of the view at c1, while the replica is at C.
    let ex = remote.as_of_export(&AsOf::Label("c1".into())).unwrap();
    assert!(ex.read_only());
    let got = remote.runtime().block_on(ex.read(0, 4 << 20)).unwrap();
    assert_same("as-of export at c1", &got, &a[..4 << 20]);
    let w = remote
        .runtime()
        .block_on(ex.write(0, Bytes::from_static(&[1; 512]), true));
    assert!(w.is_err(), "the as-of export takes no writes");
    drop(ex);

    // The nearest checkpoint at or before a time; before the first is refused.
    let at = |t| remote.resolve_as_of(&AsOf::Time(t)).map(|c| c.label);
    assert_eq!(
        at(list[1].time_us - 1).unwrap(),
        if list[0].time_us < list[1].time_us {
            "c1"
        } else {
            "c2"
        }
    );
    assert_eq!(at(u64::MAX).unwrap(), "c2");
    // Typed: a storage stack can tell which point is the oldest held.
    use dtu::remote::HistoryError;
    use dtu::undo::{CatalogError, UndoError};
    let e = at(list[0].time_us - 1).unwrap_err();
    match &e {
        HistoryError::Undo(UndoError::Catalog(CatalogError::BeforeOldest { oldest, .. })) => {
            assert_eq!(oldest.label, "c1")
        }
        other => panic!("expected a time before the oldest, got {other:?}"),
    }
    assert!(e.to_string().contains("oldest"), "{e}");
    let e = remote
        .resolve_as_of(&AsOf::Label("nope".into()))
        .unwrap_err();
    assert!(
        matches!(&e, HistoryError::Undo(UndoError::Catalog(CatalogError::NoSuchLabel { label })) if label == "nope"),
        "{e:?}"
    );

    // A restart of the remote keeps the catalog and the views.
    primary.shutdown();
    remote.shutdown();
    let remote = rig.remote();
    assert_eq!(listed(&remote), list);
    assert_same(
        "as of c1 after a restart",
        &as_of(&remote, AsOf::Label("c1".into())),
        &a,
    );
    assert_same(
        "as of c2 after a restart",
        &as_of(&remote, AsOf::Label("c2".into())),
        &b,
    );
    remote.shutdown();
}

/// One control request, as `dtu export` / `dtu rollback` send it.
fn ask(r: &Remote, json: &str) -> Result<String, String> {
    let req = Request::parse(json).map_err(|e| e.to_string())?;
    match r.handle(req) {
        Response::Ok { message } => Ok(message),
        Response::Error { message } => Err(message),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// The whole volume read through a real NBD client from `uri`.
fn nbd_read_all(uri: &str, dir: &std::path::Path) -> Vec<u8> {
    let out = dir.join("view.img");
    let _ = std::fs::remove_file(&out);
    let st = std::process::Command::new("nbdcopy")
        .args([uri, out.to_str().unwrap()])
        .output()
        .expect("nbdcopy (libnbd-bin) runs");
    assert!(
        st.status.success(),
        "nbdcopy {uri}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::read(&out).unwrap()
}

/// A rollback tried, abandoned, tried again and committed, through the
/// control requests `dtu rollback` sends: the trial pauses applying (the
/// replica stays still while the host goes on writing; its view is served
/// over NBD), abandon resumes it with nothing lost, commit rewrites the
/// replica to the checkpoint, drops the later ones and gives the replica a
/// generation of its own, so that the primary it left is refused; all of
/// it survives a restart of the remote.
#[test]
fn a_rollback_is_tried_abandoned_then_committed_and_the_old_primary_is_refused() {
    let rig = Rig::new();
    let remote = rig.remote();
    let primary = rig.primary();

    let a = host_writes(&primary, 11, 30, vec![0; SIZE as usize]);
    primary.checkpoint("c1").unwrap().wait().unwrap();
    let b = host_writes(&primary, 12, 30, a.clone());
    primary.checkpoint("c2").unwrap().wait().unwrap();
    let c = host_writes(&primary, 13, 30, b.clone());
    wait_for("everything stored", Duration::from_secs(60), || {
        stored_all(&primary)
    });

    // Refused before they reach the remote.
    assert!(ask(&remote, r#"{"op":"rollback","action":"trial"}"#).is_err());
    assert!(ask(&remote, r#"{"op":"rollback","action":"abandon","to":"c1"}"#).is_err());
    let e = ask(&remote, r#"{"op":"rollback","action":"abandon"}"#).unwrap_err();
    assert!(e.contains("no rollback trial"), "{e}");
    let e = ask(&remote, r#"{"op":"rollback","action":"trial","to":"nope"}"#).unwrap_err();
    assert!(e.contains("nope"), "{e}");

    // The trial: applying pauses, the view at c1 is served over NBD.
    let sock = rig.path("view.sock");
    let m = ask(
        &remote,
        &format!(
            r#"{{"op":"rollback","action":"trial","to":"c1","unix":"{}"}}"#,
            sock.display()
        ),
    )
    .unwrap();
    assert!(m.contains("paused") && m.contains("c1"), "{m}");
    let rs = remote_status(&remote);
    assert!(
        rs.hold.as_deref().is_some_and(|h| h.contains("trial")),
        "{rs:?}"
    );
    assert!(rs.view.is_some(), "{rs:?}");
    let uri = format!("nbd+unix:///asof?socket={}", sock.display());
    assert_same("trial view of c1", &nbd_read_all(&uri, rig.dir.path()), &a);
    // A second trial or view is refused while this one runs.
    assert!(ask(&remote, r#"{"op":"rollback","action":"trial","to":"c2"}"#).is_err());
    assert!(ask(&remote, r#"{"op":"unexport"}"#).is_err());
    // The host goes on writing; the replica stays still.
    let stored_before = remote.stored_seq();
    let d = host_writes(&primary, 14, 20, c.clone());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(remote.stored_seq(), stored_before, "applying did not pause");
    assert_same(
        "replica during the trial",
        &std::fs::read(rig.path("replica.img")).unwrap(),
        &c,
    );

    // Abandon: applying resumes where it paused, nothing lost.
    let m = ask(&remote, r#"{"op":"rollback","action":"abandon"}"#).unwrap();
    assert!(m.contains("abandoned"), "{m}");
    wait_for(
        "the writes of the trial stored",
        Duration::from_secs(60),
        || stored_all(&primary),
    );
    assert_same(
        "replica after abandon",
        &std::fs::read(rig.path("replica.img")).unwrap(),
        &d,
    );
    assert_eq!(remote_status(&remote).hold, None);

    // Try c2 and commit it.
    primary.checkpoint("c3").unwrap().wait().unwrap();
    let _e = host_writes(&primary, 15, 10, d.clone());
    wait_for("stored", Duration::from_secs(60), || stored_all(&primary));
    ask(&remote, r#"{"op":"rollback","action":"trial","to":"c2"}"#).unwrap();
    let e = ask(&remote, r#"{"op":"rollback","action":"commit","to":"c1"}"#).unwrap_err();
    assert!(
        e.contains("c2"),
        "a commit of another point is refused: {e}"
    );
    let gen_before = remote_status(&remote).generation;
    let m = ask(&remote, r#"{"op":"rollback","action":"commit"}"#).unwrap();
    assert!(m.contains("rolled back") && m.contains("c2"), "{m}");
    assert_same(
        "replica after the commit",
        &std::fs::read(rig.path("replica.img")).unwrap(),
        &b,
    );
    assert_eq!(
        listed(&remote)
            .iter()
            .map(|c| c.label.as_str())
            .collect::<Vec<_>>(),
        ["c1", "c2"],
        "the later checkpoints went"
    );
    let rs = remote_status(&remote);
    assert_ne!(rs.generation, gen_before, "a new generation");
    assert!(rs.generation_history.contains(&gen_before), "{rs:?}");
    assert!(
        rs.hold
            .as_deref()
            .is_some_and(|h| h.contains("rolled back")),
        "{rs:?}"
    );
    assert_same(
        "as of c1 after the commit",
        &as_of(&remote, AsOf::Label("c1".into())),
        &a,
    );

    // The primary it left is refused at its next connect, and its writes
    // do not reach the replica.
    let _ = host_writes(&primary, 16, 5, vec![0; SIZE as usize]);
    wait_for("the primary refused", Duration::from_secs(30), || {
        remote_status(&remote)
            .decision
            .is_some_and(|d| d.contains("moved on"))
    });
    assert_same(
        "replica after the old primary tried",
        &std::fs::read(rig.path("replica.img")).unwrap(),
        &b,
    );
    primary.shutdown();

    // A restart keeps the rollback.
    remote.shutdown();
    let remote = rig.remote();
    let rs = remote_status(&remote);
    assert_ne!(rs.generation, gen_before);
    assert_same(
        "replica after a restart",
        &std::fs::read(rig.path("replica.img")).unwrap(),
        &b,
    );
    assert_eq!(listed(&remote).len(), 2);
    remote.shutdown();
}
