//! The peers and probes the scenarios run beside dtu: fio (its JSON report
//! parsed into latency percentiles and bandwidth), nbdkit's file plugin on
//! a unix socket, an iperf3 server and client, and the CPU time of a
//! process from `/proc/<pid>/stat`. Every child runs in a guard that kills
//! it when dropped, and every run has a time limit.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::{BenchError, Result};
use dtu_tests::Proc;

/// Fails unless `tool` is on the PATH.
pub fn require(tool: &str) -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Ok(())
    } else {
        Err(BenchError::Missing(tool.into()))
    }
}

/// Runs `cmd` to completion within `limit`; a non-zero exit is an error.
pub fn run(mut cmd: Command, limit: Duration) -> Result<Output> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::io(format!("starting {name}"), e))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| BenchError::io(format!("waiting for {name}"), e))?,
        Err(_) => {
            // Our own child, not yet reaped (the waiting thread holds it).
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            return Err(BenchError::Timeout {
                after: limit,
                what: name,
            });
        }
    };
    if !out.status.success() {
        return Err(BenchError::Tool {
            tool: name,
            detail: format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out)
}

/// Latency percentiles of one kind of operation, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Lat {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub n: u64,
}

impl Lat {
    fn from_fio(v: &Value) -> Option<Lat> {
        let p = &v["percentile"];
        Some(Lat {
            p50_ms: p["50.000000"].as_f64()? / 1e6,
            p99_ms: p["99.000000"].as_f64()? / 1e6,
            mean_ms: v["mean"].as_f64()? / 1e6,
            n: v["N"].as_u64().unwrap_or(0),
        })
    }

    /// A write followed by its sync, as the host sees a durable write. The
    /// percentiles of a sum are bounded by the sums of the percentiles;
    /// the sync dominates, so this is close and errs on the slow side.
    pub fn plus(self, o: Lat) -> Lat {
        Lat {
            p50_ms: self.p50_ms + o.p50_ms,
            p99_ms: self.p99_ms + o.p99_ms,
            mean_ms: self.mean_ms + o.mean_ms,
            n: self.n.min(o.n),
        }
    }
}

/// What fio measured for the writes of its one job.
#[derive(Debug, Clone, Serialize)]
pub struct Fio {
    /// Submission to completion of each write.
    pub write: Lat,
    /// fdatasync after each write (`--fdatasync=1`), if asked for.
    pub sync: Option<Lat>,
    pub bw_bytes_s: f64,
    pub io_bytes: u64,
    pub runtime_s: f64,
}

/// Runs fio with `args` (one job) and parses its JSON report.
pub fn fio(args: &[String], dir: &Path, limit: Duration) -> Result<Fio> {
    require("fio")?;
    let mut cmd = Command::new("fio");
    cmd.args(args)
        .args(["--output-format=json", "--lat_percentiles=1"])
        .current_dir(dir);
    let out = run(cmd, limit)?;
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print notes before its JSON.
    let start = if text.starts_with('{') {
        0
    } else {
        text.find("\n{").map_or(0, |i| i + 1)
    };
    let bad = |detail: String| BenchError::Tool {
        tool: "fio".into(),
        detail,
    };
    let v: Value =
        serde_json::from_str(&text[start..]).map_err(|e| bad(format!("JSON: {e}: {text}")))?;
    let job = &v["jobs"][0];
    if job["error"].as_i64().unwrap_or(0) != 0 {
        return Err(bad(format!("job error {}: {text}", job["error"])));
    }
    let w = &job["write"];
    Ok(Fio {
        write: Lat::from_fio(&w["lat_ns"])
            .ok_or_else(|| bad(format!("no write latency: {text}")))?,
        sync: Lat::from_fio(&job["sync"]["lat_ns"]).filter(|l| l.n > 0),
        bw_bytes_s: w["bw_bytes"].as_f64().unwrap_or(0.0),
        io_bytes: w["io_bytes"].as_u64().unwrap_or(0),
        runtime_s: w["runtime"].as_f64().unwrap_or(0.0) / 1e3,
    })
}

/// fio's arguments for a job against an NBD URI.
pub fn fio_nbd(name: &str, uri: &str) -> Vec<String> {
    vec![
        format!("--name={name}"),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
    ]
}

/// nbdkit serving a file on a unix socket, killed when dropped.
pub struct Nbdkit {
    proc: Proc,
    at: NbdkitAt,
}

/// Where an nbdkit listens.
enum NbdkitAt {
    Unix(PathBuf),
    Tcp(u16),
}

impl Nbdkit {
    /// `nbdkit --foreground -U SOCKET file FILE`; waits for the socket.
    pub fn start(file: &Path, dir: &Path) -> Result<Nbdkit> {
        let socket = dir.join("nbdkit.sock");
        // A killed nbdkit leaves its socket behind; the next one in the
        // same directory would refuse to bind it.
        let _ = std::fs::remove_file(&socket);
        Nbdkit::spawn(file, dir, NbdkitAt::Unix(socket))
    }

    /// `nbdkit -i 127.0.0.1 -p PORT file FILE`: the remote leg a user
    /// scripts today (md RAID1 over an NBD device), reached over TCP.
    pub fn start_tcp(file: &Path, dir: &Path, port: u16) -> Result<Nbdkit> {
        Nbdkit::spawn(file, dir, NbdkitAt::Tcp(port))
    }

    fn spawn(file: &Path, dir: &Path, at: NbdkitAt) -> Result<Nbdkit> {
        require("nbdkit")?;
        let mut cmd = Command::new("nbdkit");
        cmd.arg("--foreground").arg("--exit-with-parent");
        match &at {
            NbdkitAt::Unix(socket) => cmd.arg("-U").arg(socket),
            NbdkitAt::Tcp(port) => cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]),
        };
        cmd.arg("file").arg(format!("file={}", file.display()));
        let mut proc = Proc::spawn("nbdkit", cmd, dir.join("nbdkit.log"));
        wait_for("nbdkit's socket", Duration::from_secs(20), || {
            if !proc.is_running() {
                return Err(BenchError::Tool {
                    tool: "nbdkit".into(),
                    detail: proc.log_text(),
                });
            }
            Ok(match &at {
                NbdkitAt::Unix(socket) => std::os::unix::net::UnixStream::connect(socket).is_ok(),
                NbdkitAt::Tcp(port) => std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok(),
            })
        })?;
        Ok(Nbdkit { proc, at })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid().unwrap_or(0)
    }

    /// The URI of the export, to reach it directly.
    pub fn uri(&self) -> String {
        match &self.at {
            NbdkitAt::Unix(socket) => format!("nbd+unix:///?socket={}", socket.display()),
            NbdkitAt::Tcp(port) => format!("nbd://127.0.0.1:{port}/"),
        }
    }
}

/// The URI of an NBD export reached over TCP at `addr` (through a relay).
pub fn nbd_tcp_uri(addr: SocketAddr) -> String {
    format!("nbd://{addr}/")
}

/// Polls `f` every 20 ms until it says yes, fails, or `limit` passes.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(BenchError::Timeout {
                after: limit,
                what: what.into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port free for both TCP and UDP (the remote takes the UDP
/// port, iperf3's server the TCP one, behind one link emulator).
pub fn free_port_pair() -> Result<u16> {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").map_err(|e| BenchError::io("binding UDP", e))?;
        let port = udp
            .local_addr()
            .map_err(|e| BenchError::io("UDP address", e))?
            .port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(BenchError::Dtu(
        "no loopback port free for both TCP and UDP".into(),
    ))
}

/// A one-shot iperf3 server, killed when dropped.
pub struct Iperf3Server {
    _proc: Proc,
}

impl Iperf3Server {
    /// `iperf3 -s -1 -B 127.0.0.1 -p PORT`; waits until it accepts.
    pub fn start(port: u16, dir: &Path) -> Result<Iperf3Server> {
        require("iperf3")?;
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()]);
        let mut proc = Proc::spawn("iperf3 -s", cmd, dir.join(format!("iperf3-{port}.log")));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // A probe connection would be taken for a client by `-1`, so
        // watch the listening socket instead.
        wait_for("iperf3's server", Duration::from_secs(20), || {
            if !proc.is_running() {
                return Err(BenchError::Tool {
                    tool: "iperf3 -s".into(),
                    detail: proc.log_text(),
                });
            }
            Ok(tcp_listening(addr))
        })?;
        Ok(Iperf3Server { _proc: proc })
    }
}

/// Whether something listens on `addr` (from /proc/net/tcp, without
/// connecting).
fn tcp_listening(addr: SocketAddr) -> bool {
    let want = format!("0100007F:{:04X}", addr.port());
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

/// iperf3 TCP from a client to `addr` for `secs`; the receiver's goodput
/// in bit/s.
pub fn iperf3_tcp(addr: SocketAddr, secs: u32) -> Result<f64> {
    let mut cmd = Command::new("iperf3");
    cmd.args([
        "-c",
        &addr.ip().to_string(),
        "-p",
        &addr.port().to_string(),
        "-t",
        &secs.to_string(),
        "-J",
    ]);
    let out = run(cmd, Duration::from_secs(secs as u64 + 60))?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| BenchError::Tool {
        tool: "iperf3".into(),
        detail: format!("JSON: {e}"),
    })?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| BenchError::Tool {
            tool: "iperf3".into(),
            detail: format!("no receiver figure: {v}"),
        })
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| BenchError::io(format!("/proc/{pid}/stat"), e))?;
    // The command name (field 2) may hold spaces; count after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after ')'.
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks(11) + ticks(12)) / hz.max(1.0))
}

/// CPU seconds of this process, all threads.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}
