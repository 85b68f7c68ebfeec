//! Point in time with real processes and real tools: an ext4 image written
//! through the pair by nbdcopy; `dtu checkpoint before-rm`; a file deleted
//! inside the image (debugfs on a copy, written back through NBD); then
//! `dtu export --as-of before-rm` serves the volume as it was, which
//! `e2fsck -fn` finds clean and from which debugfs reads the deleted file's
//! bytes back; `dtu rollback --trial` serves it again while applying
//! pauses, `--commit` rewrites the replica to it; the primary that the
//! replica left is refused. Timer checkpoints (`checkpoint.every`) appear
//! in `dtu checkpoints` beside the manual one.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dtu_tests::{dtu_bin, random_image, require, run_limited, run_ok, wait_until, Pair};

const MIB: u64 = 1 << 20;

fn dtu_remote(pair: &Pair, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(dtu_bin());
    cmd.args(args).arg("--config").arg(pair.path("remote.toml"));
    run_limited(cmd, Duration::from_secs(60))
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads the whole export at `uri` into `out` with nbdcopy.
fn read_export(uri: &str, out: &Path) {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new("nbdcopy");
    cmd.arg(uri).arg(out);
    run_ok(cmd, Duration::from_secs(120));
}

fn fsck_clean(image: &Path) {
    let mut fsck = Command::new("e2fsck");
    fsck.arg("-fn").arg(image);
    let out = run_limited(fsck, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "e2fsck -fn {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn debugfs(image: &Path, write: bool, request: &str) -> String {
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    cmd.arg("-R").arg(request).arg(image);
    let out = run_ok(cmd, Duration::from_secs(60));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!(
            "{} and {} differ at byte {i} (block {})",
            a.display(),
            b.display(),
            i / 4096
        );
    }
}

#[test]
fn a_deleted_file_comes_back_from_an_as_of_export_and_a_committed_rollback() {
    require("mkfs.ext4");
    require("e2fsck");
    require("debugfs");
    require("nbdcopy");
    let size = 64 * MIB;
    let mut pair = Pair::init("64MiB", &[], &[]);
    // Timer checkpoints every 10 s (the shortest allowed).
    let cfg = pair.path("primary.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\n[checkpoint]\nevery = \"10s\"\n")).unwrap();

    // Image A: an ext4 file system holding the file that will be deleted.
    let tree = pair.path("tree");
    std::fs::create_dir_all(tree.join("docs")).unwrap();
    let victim = random_image(3 << 20, 42);
    std::fs::write(tree.join("docs/victim.bin"), &victim).unwrap();
    for i in 0..8 {
        std::fs::write(
            tree.join(format!("docs/keep{i}.bin")),
            random_image(512 << 10, i),
        )
        .unwrap();
    }
    let a = pair.path("a.img");
    std::fs::File::create(&a).unwrap().set_len(size).unwrap();
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-b", "4096", "-E", "nodiscard", "-d"])
        .arg(&tree)
        .arg(&a);
    run_ok(mkfs, Duration::from_secs(60));

    pair.start(&[]);
    pair.nbdcopy(&std::fs::read(&a).unwrap(), Duration::from_secs(120));
    pair.wait_caught_up(Duration::from_secs(60));
    ok(
        {
            let mut cmd = Command::new(dtu_bin());
            cmd.args(["checkpoint", "--kind", "change", "before-rm", "--config"])
                .arg(&cfg);
            run_limited(cmd, Duration::from_secs(20))
        },
        "dtu checkpoint before-rm",
    );

    // Image B: the file deleted (on a copy), written back through NBD.
    let b = pair.path("b.img");
    std::fs::copy(&a, &b).unwrap();
    debugfs(&b, true, "rm /docs/victim.bin");
    assert!(debugfs(&b, false, "ls /docs").contains("keep0.bin"));
    assert!(!debugfs(&b, false, "ls /docs").contains("victim.bin"));
    pair.nbdcopy(&std::fs::read(&b).unwrap(), Duration::from_secs(120));
    pair.wait_caught_up(Duration::from_secs(60));
    pair.assert_replica_equals(&std::fs::read(&b).unwrap());

    // A timer checkpoint shows up beside the manual one.
    wait_until("a timer checkpoint", Duration::from_secs(30), || {
        ok(dtu_remote(&pair, &["checkpoints", "--json"]), "checkpoints").contains("\"timer\"")
    });
    let table = ok(dtu_remote(&pair, &["checkpoints"]), "dtu checkpoints");
    assert!(
        table.contains("before-rm") && table.contains("change"),
        "{table}"
    );

    // The as-of export: the deleted file is there, the file system clean.
    let sock = pair.path("asof.sock");
    let said = ok(
        dtu_remote(
            &pair,
            &[
                "export",
                "--as-of",
                "before-rm",
                "--unix",
                sock.to_str().unwrap(),
            ],
        ),
        "dtu export --as-of before-rm",
    );
    assert!(said.contains("before-rm"), "{said}");
    let uri = format!("nbd+unix:///asof?socket={}", sock.display());
    let view = pair.path("view.img");
    read_export(&uri, &view);
    assert_same_file(&view, &a);
    fsck_clean(&view);
    let back = pair.path("victim.back");
    debugfs(
        &view,
        false,
        &format!("dump /docs/victim.bin {}", back.display()),
    );
    assert!(
        std::fs::read(&back).unwrap() == victim,
        "the deleted file's bytes"
    );
    // The view takes no writes.
    let mut w = Command::new("nbdcopy");
    w.arg(&b).arg(&uri);
    assert!(!run_limited(w, Duration::from_secs(60)).status.success());
    // Before the oldest checkpoint is refused, naming it.
    let e = dtu_remote(
        &pair,
        &["export", "--as-of", "@1000000000", "--unix", "/tmp/x.sock"],
    );
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("oldest"));
    ok(
        dtu_remote(&pair, &["export", "--stop"]),
        "dtu export --stop",
    );

    // The trial: applying pauses, the view is served again.
    let tsock = pair.path("trial.sock");
    let said = ok(
        dtu_remote(
            &pair,
            &[
                "rollback",
                "--to",
                "before-rm",
                "--trial",
                "--unix",
                tsock.to_str().unwrap(),
            ],
        ),
        "dtu rollback --trial",
    );
    assert!(said.contains("paused"), "{said}");
    read_export(
        &format!("nbd+unix:///asof?socket={}", tsock.display()),
        &view,
    );
    assert_same_file(&view, &a);
    let status = ok(dtu_remote(&pair, &["status"]), "dtu status");
    assert!(status.contains("HELD"), "{status}");

    // The commit: the replica is the image as it was at the checkpoint.
    let said = ok(
        dtu_remote(&pair, &["rollback", "--commit"]),
        "dtu rollback --commit",
    );
    assert!(said.contains("rolled back"), "{said}");
    pair.assert_replica_equals(&std::fs::read(&a).unwrap());
    let replica = pair.path("replica.img");
    fsck_clean(&replica);
    // The primary it left is refused, and says why.
    wait_until("the primary refused", Duration::from_secs(30), || {
        let s = pair.primary_status();
        s.connection_detail
            .as_deref()
            .is_some_and(|d| d.contains("moved on"))
    });
    pair.primary.as_mut().unwrap().stop(Duration::from_secs(10));
    pair.remote.as_mut().unwrap().stop(Duration::from_secs(10));
    pair.assert_replica_equals(&std::fs::read(&a).unwrap());
}
