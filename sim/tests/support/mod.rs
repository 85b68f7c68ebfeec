//! Helpers for the tests that run real processes: the `linkemu` binary of
//! this crate and `iperf3`, each in a guard that kills and reaps it on drop
//! (also when a test fails), free loopback ports, bounded waits, small echo
//! servers on threads, and a lock that keeps the throughput tests from
//! competing with each other for the machine's two cores.

#![allow(dead_code)] // each test file uses its own subset

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Serializes the tests that measure rates or delays.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process that is killed and reaped when dropped.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the process to exit by itself, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal to a process we started.
pub fn signal(p: &Proc, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(p.pid()).expect("a child's pid is positive");
    rustix::process::kill_process(pid, sig)
        .unwrap_or_else(|e| panic!("kill({}, {sig:?}) failed: {e}", p.name));
}

/// The `iperf3` executable. The tests compare linkemu against it, so its
/// absence is a failure with instructions, not a skip.
pub fn iperf3() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("iperf3");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "iperf3 is not installed (not found in PATH). These tests validate linkemu against \
         iperf3: run `.ci/run`, which installs it when missing, or `apt-get install iperf3`."
    );
}

/// A loopback port free for both TCP and UDP (iperf3 and linkemu use both).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both TCP and UDP");
}

/// Reads lines from `out` on a thread until one satisfies `want` or
/// `timeout` passes; returns that line and everything read before it.
fn wait_for_line(
    out: ChildStdout,
    want: impl Fn(&str) -> bool + Send + 'static,
    timeout: Duration,
) -> (Option<String>, String, Option<ChildStdout>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send((None, seen, None));
                    return;
                }
                Ok(_) => {
                    if want(line.trim_end()) {
                        let _ = tx.send((Some(line.trim_end().to_string()), seen, Some(r)));
                        return;
                    }
                    seen.push_str(&line);
                }
            }
        }
    });
    match rx.recv_timeout(timeout) {
        Ok((line, seen, r)) => (line, seen, r.map(BufReader::into_inner)),
        Err(_) => (None, "(timed out)".into(), None),
    }
}

/// A running `linkemu`.
pub struct Linkemu {
    pub proc: Proc,
    /// The bound listen address, from its first stdout line.
    pub addr: SocketAddr,
    pub stderr: PathBuf,
    pub stats: PathBuf,
    _stdout: Option<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Linkemu {
    /// Starts `linkemu --listen 127.0.0.1:0 --forward FORWARD ARGS...`
    /// with `--stats-json` in a temporary directory, and waits for its
    /// `linkemu listening on ADDR` line.
    pub fn start(forward: SocketAddr, args: &[&str]) -> Linkemu {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr = dir.path().join("linkemu.stderr");
        let stats = dir.path().join("stats.json");
        let err_file = std::fs::File::create(&stderr).expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_linkemu"))
            .args(["--listen", "127.0.0.1:0", "--forward", &forward.to_string()])
            .arg("--stats-json")
            .arg(&stats)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .expect("spawn linkemu");
        let out = child.stdout.take().expect("piped stdout");
        let proc = Proc {
            name: "linkemu",
            child,
        };
        let (line, _, out) = wait_for_line(out, |_| true, Duration::from_secs(20));
        let Some(line) = line else {
            drop(proc);
            panic!(
                "linkemu {args:?} printed no first line; stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        let addr = line
            .strip_prefix("linkemu listening on ")
            .unwrap_or_else(|| panic!("unexpected first line `{line}`"))
            .parse()
            .expect("an address");
        Linkemu {
            proc,
            addr,
            stderr,
            stats,
            _stdout: out,
            _dir: dir,
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The last `--stats-json` snapshot.
    pub fn stats_json(&self) -> Value {
        let body = std::fs::read(&self.stats).expect("stats json written");
        serde_json::from_slice(&body).expect("stats json parses")
    }

    /// SIGTERM, then waits for the exit (which writes the final summary
    /// and stats) and returns the final stats.
    pub fn stop(mut self) -> Value {
        signal(&self.proc, rustix::process::Signal::TERM);
        let st = self
            .proc
            .wait_timeout(Duration::from_secs(10))
            .expect("linkemu exits on SIGTERM");
        assert!(st.success(), "linkemu exit status {st}");
        self.stats_json()
    }
}

/// A one-off `iperf3 -s` on a free loopback port.
pub struct Iperf3Server {
    pub proc: Proc,
    pub port: u16,
    _stdout: Option<ChildStdout>,
}

impl Iperf3Server {
    pub fn start() -> Iperf3Server {
        let bin = iperf3();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string(), "-1"])
                .arg("--forceflush")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn iperf3 -s");
            let out = child.stdout.take().expect("piped stdout");
            let proc = Proc {
                name: "iperf3 -s",
                child,
            };
            let (line, seen, out) = wait_for_line(
                out,
                |l| l.contains("Server listening"),
                Duration::from_secs(10),
            );
            if line.is_some() {
                return Iperf3Server {
                    proc,
                    port,
                    _stdout: out,
                };
            }
            last = seen;
        }
        panic!("iperf3 -s did not start: {last}");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// Runs an iperf3 client against `to` with `args` and `-J`, killing it
/// after `timeout`; returns its JSON report.
pub fn iperf3_client(to: SocketAddr, args: &[&str], timeout: Duration) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("iperf3.json");
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut p = Proc {
        name: "iperf3 -c",
        child: Command::new(iperf3())
            .args([
                "-c",
                &to.ip().to_string(),
                "-p",
                &to.port().to_string(),
                "-J",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn iperf3 -c"),
    };
    let status = p.wait_timeout(timeout);
    let body = std::fs::read_to_string(&out_path).unwrap_or_default();
    let Some(status) = status else {
        panic!("iperf3 {args:?} did not finish within {timeout:?}; output so far:\n{body}");
    };
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("iperf3 {args:?} ({status}) printed no JSON ({e}):\n{body}"));
    if let Some(err) = v.get("error") {
        panic!("iperf3 {args:?} failed: {err}");
    }
    assert!(status.success(), "iperf3 {args:?}: {status}");
    v
}

/// A UDP socket buffer size for iperf3's `-w`: large enough that a briefly
/// descheduled iperf3 does not drop datagrams, within what the kernel allows
/// an unprivileged socket (so that iperf3 never refuses it).
pub fn udp_window() -> Option<String> {
    let read = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let max = read("/proc/sys/net/core/rmem_max")?.min(read("/proc/sys/net/core/wmem_max")?);
    Some((2u64 << 20).min(max).to_string())
}

/// Pulls a number out of a JSON report, with a message naming the path.
pub fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for k in path {
        cur = cur
            .get(*k)
            .unwrap_or_else(|| panic!("no `{}` in {}", path.join("."), short(v)));
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("`{}` is not a number", path.join(".")))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(2000).collect()
}

/// Echo servers (UDP and TCP) on loopback threads, stopped on drop.
pub struct Echo {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    pub fn start() -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        tcp.set_nonblocking(true).expect("nonblocking");
        let (ua, ta) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let s1 = stop.clone();
        let t1 = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s1.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        let s2 = stop.clone();
        let t2 = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !s2.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((c, _)) => {
                        let s3 = s2.clone();
                        conns.push(std::thread::spawn(move || echo_tcp(c, &s3)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Echo {
            udp: ua,
            tcp: ta,
            stop,
            threads: vec![t1, t2],
        }
    }
}

fn echo_tcp(mut c: TcpStream, stop: &AtomicBool) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = c.set_nodelay(true);
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Round-trip times of `count` UDP pings of `size` bytes sent one after
/// the other through `via`, each waited for up to `timeout`.
pub fn udp_pings(via: SocketAddr, count: usize, size: usize, timeout: Duration) -> Vec<Duration> {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.connect(via).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut rtts = Vec::new();
    let mut buf = vec![0u8; size.max(8) + 64];
    for i in 0..count as u64 {
        let mut msg = vec![0xA5u8; size.max(8)];
        msg[..8].copy_from_slice(&i.to_be_bytes());
        let t0 = Instant::now();
        s.send(&msg).expect("send");
        while t0.elapsed() < timeout {
            if let Ok(n) = s.recv(&mut buf) {
                if n >= 8 && buf[..8] == i.to_be_bytes() {
                    rtts.push(t0.elapsed());
                    break;
                }
            }
        }
    }
    rtts
}

/// Round-trip times of `count` request/response exchanges of `size` bytes
/// over one TCP connection through `via`.
pub fn tcp_pings(via: SocketAddr, count: usize, size: usize) -> Vec<Duration> {
    let mut c = TcpStream::connect_timeout(&via, Duration::from_secs(5)).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rtts = Vec::new();
    let msg = vec![0x5Au8; size];
    let mut back = vec![0u8; size];
    for _ in 0..count {
        let t0 = Instant::now();
        c.write_all(&msg).expect("write");
        c.read_exact(&mut back).expect("echo comes back");
        rtts.push(t0.elapsed());
        assert_eq!(back, msg);
    }
    rtts
}

/// The median of some durations.
pub fn median(v: &[Duration]) -> Duration {
    assert!(!v.is_empty(), "no samples");
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}
