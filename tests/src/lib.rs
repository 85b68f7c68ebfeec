//! The harness of dtu's end-to-end tests: real `dtu` and `linkemu`
//! processes on 127.0.0.1, set up with `dtu init` in a temporary directory,
//! driven by real NBD clients, and killed (with their files removed) when
//! the test ends, pass or fail.

#![forbid(unsafe_code)]

pub mod nbd_client;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dtu::control::{request, Request, Response};
use dtu::status::{PrimaryStatus, RemoteStatus, Status};

/// The directory holding the workspace's binaries for this build profile.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>
        let exe = std::env::current_exe().expect("test executable path");
        let mut dir = exe.parent().expect("target dir").to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let release = dir.file_name().is_some_and(|n| n == "release");
        // `cargo test --workspace` builds them already; `cargo test -p
        // dtu-tests` does not, so build them here (a no-op when fresh).
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args([
            "build", "-q", "-p", "dtu", "--bin", "dtu", "-p", "dtu-sim", "--bin", "linkemu",
        ]);
        if release {
            cmd.arg("--release");
        }
        // `cargo test` gives the test process the variables it sets for a
        // crate (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). Passed on, they
        // change the environment build scripts watch (ring's reruns on
        // CARGO_MANIFEST_DIR), and every alternation between this build and
        // the outer one rebuilt ring, rustls, quinn and dtu: 95 s per test
        // binary. The user's own settings (CARGO_HOME, CARGO_TARGET_DIR,
        // CARGO_BUILD_*, CARGO_PROFILE_*) stay.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let per_crate = [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || k == "CARGO_PRIMARY_PACKAGE"
                || k == "CARGO_TARGET_TMPDIR"
                || k == "OUT_DIR";
            if per_crate {
                cmd.env_remove(k.as_ref());
            }
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the dtu and linkemu binaries");
        assert!(status.success(), "building dtu and linkemu failed");
        dir
    })
}

pub fn dtu_bin() -> PathBuf {
    bin_dir().join("dtu")
}

pub fn linkemu_bin() -> PathBuf {
    bin_dir().join("linkemu")
}

/// Fails with a clear message when a client program is missing.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "`{tool}` is not installed; `.ci/run` installs it (apt-get install fio libnbd-bin nbdkit qemu-utils iperf3)");
}

/// A child process killed when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stderr (and stdout unless taken) going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).expect("log file");
        cmd.stderr(f.try_clone().expect("log file"))
            .stdin(Stdio::null());
        if cmd.get_program().to_string_lossy().ends_with("linkemu") {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(f);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    /// Kills with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops with SIGTERM and waits up to `within`, then kills.
    pub fn stop(&mut self, within: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let end = Instant::now() + within;
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it is true; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command with a time limit; returns its output.
pub fn run_limited(mut cmd: Command, limit: Duration) -> Output {
    let name = format!("{:?}", cmd.get_program());
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{name}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{name} did not finish within {limit:?}");
        }
    }
}

/// Runs a command that must succeed.
pub fn run_ok(cmd: Command, limit: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let out = run_limited(cmd, limit);
    assert!(
        out.status.success(),
        "{desc} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Random bytes from a seed; a quarter of each MiB is zeros, so zero
/// detection and compression both get exercised.
pub fn random_image(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    for mib in v.chunks_mut(1 << 20) {
        let n = mib.len() / 4;
        mib[..n].fill(0);
    }
    v
}

/// A link emulator between the primary and the remote.
pub struct Link {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Link {
    /// A UDP relay (dtu's QUIC).
    pub fn start(dir: &Path, listen_port: u16, forward: SocketAddr, args: &[&str]) -> Link {
        Link::spawn(dir, listen_port, forward, "--no-tcp", args)
    }

    /// A TCP relay with the same link model (a peer's NBD over TCP).
    pub fn start_tcp(dir: &Path, listen_port: u16, forward: SocketAddr, args: &[&str]) -> Link {
        Link::spawn(dir, listen_port, forward, "--no-udp", args)
    }

    fn spawn(dir: &Path, listen_port: u16, forward: SocketAddr, only: &str, args: &[&str]) -> Link {
        let mut cmd = Command::new(linkemu_bin());
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{listen_port}"))
            .arg("--forward")
            .arg(forward.to_string())
            .args([only, "--report-interval", "0"])
            .args(args);
        let mut proc = Proc::spawn(
            "linkemu",
            cmd,
            dir.join(format!("linkemu-{listen_port}.log")),
        );
        let out = proc.stdout().expect("linkemu stdout");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("linkemu announces its address");
        let addr = line
            .trim()
            .strip_prefix("linkemu listening on ")
            .unwrap_or_else(|| panic!("unexpected linkemu output {line:?}: {}", proc.log_text()))
            .parse()
            .expect("an address");
        Link { proc, addr }
    }
}

/// A pair of DTUs set up by `dtu init` in a temporary directory.
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub remote_port: u16,
    pub link_port: u16,
    pub link: Option<Link>,
    pub link_args: Vec<String>,
    pub primary: Option<Proc>,
    pub remote: Option<Proc>,
    pub volume_size: u64,
}

impl Pair {
    /// Writes the configs; `link_args` are linkemu flags (empty: no emulator,
    /// the primary talks to the remote directly).
    pub fn init(volume: &str, link_args: &[&str], extra_init: &[&str]) -> Pair {
        let dir = tempfile::Builder::new()
            .prefix("dtu-e2e-")
            .tempdir()
            .expect("tempdir");
        let remote_port = free_udp_port();
        let link_port = if link_args.is_empty() {
            remote_port
        } else {
            free_udp_port()
        };
        let mut cmd = Command::new(dtu_bin());
        cmd.arg("init")
            .arg("--dir")
            .arg(dir.path())
            .args(["--volume-size", volume]);
        if !extra_init.contains(&"--nvbuf-size") {
            cmd.args(["--nvbuf-size", "64MiB"]);
        }
        cmd.arg("--remote-listen")
            .arg(format!("127.0.0.1:{remote_port}"))
            .arg("--remote-addr")
            .arg(format!("127.0.0.1:{link_port}"))
            .arg("--nbd-tcp")
            .arg("127.0.0.1:0")
            .args(extra_init);
        run_ok(cmd, Duration::from_secs(30));
        Pair {
            dir,
            remote_port,
            link_port,
            link: None,
            link_args: link_args.iter().map(|s| s.to_string()).collect(),
            primary: None,
            remote: None,
            volume_size: dtu::units::parse_bytes(volume).expect("volume size"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn nbd_uri(&self) -> String {
        format!(
            "nbd+unix:///dtu?socket={}",
            self.path("primary.nbd.sock").display()
        )
    }

    pub fn start_link(&mut self) {
        if self.link_args.is_empty() {
            return;
        }
        let args: Vec<&str> = self.link_args.iter().map(String::as_str).collect();
        let remote: SocketAddr = format!("127.0.0.1:{}", self.remote_port).parse().unwrap();
        self.link = Some(Link::start(self.dir.path(), self.link_port, remote, &args));
    }

    pub fn stop_link(&mut self) {
        if let Some(mut l) = self.link.take() {
            l.proc.kill();
        }
    }

    pub fn start_remote(&mut self, extra: &[&str]) {
        let mut cmd = Command::new(dtu_bin());
        cmd.arg("remote")
            .arg("--config")
            .arg(self.path("remote.toml"))
            .args(extra);
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        self.remote = Some(Proc::spawn(
            "dtu remote",
            cmd,
            self.path(&format!("remote-{n}.log")),
        ));
        let ctl = self.path("remote.ctl");
        let remote = self.remote.as_mut().unwrap();
        wait_until(
            "the remote's control socket",
            Duration::from_secs(20),
            || {
                assert!(
                    remote.is_running(),
                    "dtu remote exited: {}",
                    remote.log_text()
                );
                request(&ctl, &Request::Status).is_ok()
            },
        );
    }

    pub fn start_primary(&mut self, extra: &[&str]) {
        let mut cmd = Command::new(dtu_bin());
        cmd.arg("primary")
            .arg("--config")
            .arg(self.path("primary.toml"))
            .args(extra);
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        self.primary = Some(Proc::spawn(
            "dtu primary",
            cmd,
            self.path(&format!("primary-{n}.log")),
        ));
        let ctl = self.path("primary.ctl");
        let sock = self.path("primary.nbd.sock");
        let primary = self.primary.as_mut().unwrap();
        wait_until("the primary's NBD socket", Duration::from_secs(20), || {
            assert!(
                primary.is_running(),
                "dtu primary exited: {}",
                primary.log_text()
            );
            request(&ctl, &Request::Status).is_ok()
                && std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
    }

    /// Starts link, remote and primary.
    pub fn start(&mut self, primary_args: &[&str]) {
        self.start_link();
        self.start_remote(&[]);
        self.start_primary(primary_args);
    }

    pub fn primary_status(&self) -> PrimaryStatus {
        match request(&self.path("primary.ctl"), &Request::Status).expect("primary status") {
            Response::Status(s) => match *s {
                Status::Primary(p) => *p,
                other => panic!("not a primary: {other:?}"),
            },
            other => panic!("unexpected answer {other:?}"),
        }
    }

    pub fn remote_status(&self) -> RemoteStatus {
        match request(&self.path("remote.ctl"), &Request::Status).expect("remote status") {
            Response::Status(s) => match *s {
                Status::Remote(r) => *r,
                other => panic!("not a remote: {other:?}"),
            },
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// Runs a `dtu` admin subcommand against the primary.
    pub fn dtu(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(dtu_bin());
        cmd.args(args)
            .arg("--config")
            .arg(self.path("primary.toml"));
        String::from_utf8_lossy(&run_ok(cmd, Duration::from_secs(20)).stdout).into_owned()
    }

    /// Waits until the remote has stored every seq the primary assigned.
    pub fn wait_caught_up(&self, timeout: Duration) {
        wait_until("the replica to catch up", timeout, || {
            let s = self.primary_status();
            s.highest_seq > 0 && s.remote_stored_seq == s.highest_seq
        });
    }

    pub fn replica_bytes(&self) -> Vec<u8> {
        let mut v = std::fs::read(self.path("replica.img")).expect("replica");
        v.resize(self.volume_size as usize, 0);
        v
    }

    /// The first differing offset between the replica and `want`.
    pub fn assert_replica_equals(&self, want: &[u8]) {
        let got = self.replica_bytes();
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            panic!(
                "replica differs from the source at byte {i} (block {}): replica {:02x}, source {:02x}",
                i / 4096,
                got[i],
                want[i]
            );
        }
    }

    /// Writes `data` into the primary's export with nbdcopy.
    pub fn nbdcopy(&self, data: &[u8], limit: Duration) {
        require("nbdcopy");
        let src = self.path("source.img");
        std::fs::write(&src, data).expect("source image");
        let mut cmd = Command::new("nbdcopy");
        cmd.arg(&src).arg(self.nbd_uri());
        run_ok(cmd, limit);
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Primary first, so it does not spend its last moments reconnecting.
        if let Some(mut p) = self.primary.take() {
            p.stop(Duration::from_secs(5));
        }
        if let Some(mut r) = self.remote.take() {
            r.stop(Duration::from_secs(5));
        }
        self.stop_link();
        // DTU_TEST_LOGS=1 shows them after a passing test too: a slow pass
        // is a finding.
        if std::thread::panicking() || std::env::var_os("DTU_TEST_LOGS").is_some() {
            for entry in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "log") {
                    eprintln!(
                        "--- {}:\n{}",
                        p.display(),
                        std::fs::read_to_string(&p).unwrap_or_default()
                    );
                }
            }
        }
    }
}
