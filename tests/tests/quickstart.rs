//! The README's Quick start is `docs/quickstart.sh`, and it works: the
//! script runs verbatim (this test only gives it an empty directory, free
//! ports through the variables it documents, and the built binaries on
//! PATH), and the README's block is checked to be the file, so the two
//! cannot drift apart.

use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dtu_tests::{dtu_bin, free_udp_port, linkemu_bin, require};

/// The whole script on a T1 takes seconds; this bounds a hang.
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn script_path() -> PathBuf {
    repo().join("docs/quickstart.sh")
}

#[test]
fn the_readme_quick_start_is_the_script() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let script = std::fs::read_to_string(script_path()).unwrap();
    let section = readme
        .split_once("\n## Quick start")
        .expect("README has a Quick start section")
        .1;
    let block = section
        .split_once("\n```sh\n")
        .expect("the Quick start shows a sh block")
        .1
        .split_once("\n```\n")
        .expect("the block ends")
        .0;
    assert_eq!(
        format!("{block}\n"),
        script,
        "the README's Quick start block differs from docs/quickstart.sh"
    );
    assert!(
        !readme.contains("Every step above is what"),
        "a claim about another test is back in the README"
    );
}

/// A port free for both UDP and TCP a moment ago (linkemu relays both).
fn free_udp_and_tcp_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Signals the script's whole process group (the script and what it
/// started); SIGKILL when the test ends, however it ends.
struct Group(u32);

impl Group {
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal("-KILL");
    }
}

#[test]
fn the_quick_start_script_runs_as_written() {
    for tool in ["qemu-io", "qemu-img", "nbdcopy"] {
        require(tool);
    }
    let bin = dtu_bin().parent().unwrap().to_path_buf();
    assert_eq!(linkemu_bin().parent(), Some(bin.as_path()));
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let (stdout_path, stderr_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut child = Command::new("bash")
        .arg(script_path())
        .current_dir(&work)
        .env("PATH", path)
        .env("DTU_REMOTE_PORT", free_udp_port().to_string())
        .env("DTU_LINK_PORT", free_udp_and_tcp_port().to_string())
        .env("DTU_NBD_PORT", free_tcp_port().to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        // Its own process group, so that everything it started can be
        // stopped if it hangs.
        .process_group(0)
        .spawn()
        .expect("running bash");
    let group = Group(child.id());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > SCRIPT_LIMIT {
            // TERM first: the script's trap stops the DTUs cleanly.
            group.signal("-TERM");
            std::thread::sleep(Duration::from_secs(3));
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let logs: String = [
        "stderr",
        "work/primary.log",
        "work/remote.log",
        "work/linkemu.log",
    ]
    .iter()
    .map(|f| {
        let text = std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
        format!("--- {f}\n{text}")
    })
    .collect();
    let status = status.unwrap_or_else(|| {
        panic!("the script did not end within {SCRIPT_LIMIT:?}\n{stdout}\n{logs}")
    });
    assert!(
        status.success(),
        "the script failed: {status}\n{stdout}\n{logs}"
    );
    // What the README says the steps show.
    for want in [
        "wrote pair/primary.toml and pair/remote.toml",
        "wrote 4194304/4194304 bytes at offset 0",
        "wrote 1048576/1048576 bytes at offset 0",
        "role                 primary",
        "\"role\":\"primary\"",
        "dirty 90%: spoofing active",
        "trigger sent, delay 0, spoofing on",
        "role        remote",
        "consistent  yes",
        "read 1048576/1048576 bytes at offset 0",
        "read 3145728/3145728 bytes at offset 1048576",
        "quick start done",
    ] {
        assert!(
            stdout.contains(want),
            "{want:?} missing from\n{stdout}\n{logs}"
        );
    }
    // The primary's status after the writes: every one answered at
    // remote-stored (no dirty % reported yet), all five MiB counted.
    let json = stdout
        .lines()
        .find(|l| l.starts_with("{\"role\":\"primary\""))
        .expect("the --json status line");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["bytes_written"], 5 << 20, "{json}");
    assert_eq!(v["answered"]["buffered"], 0, "{json}");
    assert_eq!(v["highest_seq"], v["remote_stored_seq"], "{json}");
    drop(group);
}
