//! Scaffolding shared by the NBD tests that drive the server from outside:
//! an in-process [`NbdServer`] over a [`FileExport`] in a temporary
//! directory, listening on a unix socket there and on 127.0.0.1 (free port);
//! real client programs run under a deadline (and coreutils `timeout`, so
//! they die even if this process is killed) and killed on drop; and a small
//! blocking raw NBD client for the byte-level tests.
//!
//! Everything a test starts is torn down by `Drop`, so a failing assertion
//! leaves no server task, child process or temporary file behind.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtu::nbd::{Export, FileExport, Limits, NbdServer};
use rand::{RngCore, SeedableRng};
use tempfile::TempDir;
use tokio::sync::watch;

// ---------------------------------------------------------------------------
// The server under test.

/// A running NBD server over one file export.
pub struct Served {
    pub dir: TempDir,
    pub image: PathBuf,
    pub socket: PathBuf,
    pub tcp: SocketAddr,
    pub name: String,
    pub size: u64,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    rt: Option<tokio::runtime::Runtime>,
}

/// How to build the served export.
pub struct ServeOpts<'a> {
    pub name: &'a str,
    pub size: u64,
    pub read_only: bool,
    /// Bytes the image holds before the server starts (padded with zeros).
    pub initial: Option<&'a [u8]>,
    pub description: Option<&'a str>,
    pub limits: Option<Limits>,
    /// Put the image here instead of the server's own temporary directory.
    pub image_dir: Option<&'a Path>,
    /// TLS on the TCP listener (the unix socket stays plaintext).
    pub tls: Option<Arc<dtu::nbd::tls::NbdTls>>,
}

impl Default for ServeOpts<'_> {
    fn default() -> Self {
        ServeOpts {
            name: "vol",
            size: 16 << 20,
            read_only: false,
            initial: None,
            description: None,
            limits: None,
            image_dir: None,
            tls: None,
        }
    }
}

impl Served {
    pub fn start(opts: ServeOpts<'_>) -> Served {
        let dir = tempfile::Builder::new()
            .prefix("nbd-test-")
            .tempdir()
            .expect("tempdir");
        let image = opts.image_dir.unwrap_or(dir.path()).join(format!(
            "{}-{}.img",
            opts.name,
            std::process::id()
        ));
        if opts.read_only || opts.initial.is_some() {
            let mut content = opts.initial.unwrap_or_default().to_vec();
            content.resize(opts.size as usize, 0);
            std::fs::write(&image, &content).expect("write initial image");
        }
        let export =
            FileExport::open(&image, opts.size, opts.read_only).expect("open the file export");
        let mut server = NbdServer::new(opts.name, Arc::new(export) as Arc<dyn Export>);
        if let Some(d) = opts.description {
            server = server.with_description(d);
        }
        if let Some(l) = opts.limits {
            server = server.with_limits(l);
        }
        if let Some(t) = opts.tls {
            server = server.with_tls(t);
        }
        Served::run(dir, image, opts.name, opts.size, server)
    }

    fn run(dir: TempDir, image: PathBuf, name: &str, size: u64, server: NbdServer) -> Served {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let socket = dir.path().join("nbd.sock");
        let server = Arc::new(server);
        let (stop, stop_rx) = watch::channel(false);
        let (tasks, tcp) = rt.block_on(async {
            let unix = tokio::net::UnixListener::bind(&socket).expect("bind unix socket");
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0");
            let addr = tcp.local_addr().expect("local addr");
            let t1 = tokio::spawn(server.clone().serve_unix(unix, stop_rx.clone()));
            let t2 = tokio::spawn(server.clone().serve_tcp(tcp, stop_rx));
            (vec![t1, t2], addr)
        });
        Served {
            dir,
            image,
            socket,
            tcp,
            name: name.to_string(),
            size,
            stop,
            tasks,
            rt: Some(rt),
        }
    }

    pub fn unix_uri(&self) -> String {
        format!("nbd+unix:///{}?socket={}", self.name, self.socket.display())
    }

    pub fn tcp_uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.tcp.port(), self.name)
    }

    pub fn image_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.image).expect("read image")
    }

    /// Signals shutdown and checks both listeners' serve loops return Ok
    /// within `within` (so open connections did drain).
    pub fn shutdown_within(mut self, within: Duration) {
        let _ = self.stop.send(true);
        let rt = self.rt.take().expect("runtime");
        let tasks = std::mem::take(&mut self.tasks);
        rt.block_on(async {
            for t in tasks {
                let r = tokio::time::timeout(within, t)
                    .await
                    .expect("serve_* did not return after shutdown");
                r.expect("serve task panicked").expect("serve_* failed");
            }
        });
        rt.shutdown_timeout(Duration::from_secs(5));
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("runtime").block_on(f)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------
// Real client programs.

/// Debian package providing each client program, for the failure message.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-io" | "qemu-img" => "qemu-utils",
        "nbdcopy" | "nbdinfo" => "libnbd-bin",
        "nbdkit" => "nbdkit",
        "nbdsh" => "libnbd-bin",
        "fio" => "fio",
        "timeout" => "coreutils",
        _ => "?",
    }
}

/// Panics with a useful message when `tool` is not on PATH.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed (Debian package {}); `.ci/run` installs it",
        package_of(tool)
    );
}

/// A child process killed (with its `timeout` wrapper) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The outcome of one client run.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn assert_ok(&self, what: &str) -> &Self {
        assert!(
            self.ok(),
            "{what} failed ({}):\n{}",
            self.status,
            self.output()
        );
        self
    }
}

/// Runs `tool args...` with a deadline: coreutils `timeout` kills it after
/// `limit` even if this test process dies; the guard kills it on unwind.
pub fn run_tool(tool: &str, args: &[&str], limit: Duration) -> Run {
    run_tool_env(tool, args, &[], limit)
}

pub fn run_tool_env(tool: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    require_tool(tool);
    require_tool("timeout");
    let secs = limit.as_secs().max(1).to_string();
    let started = Instant::now();
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg(&secs)
        .arg(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut guard = ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {tool}: {e}")));
    let mut out = guard.0.stdout.take().expect("stdout");
    let mut err = guard.0.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    // `timeout` itself ends the child; this outer bound only guards against
    // a wedged wrapper.
    let hard = started + limit + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = guard.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < hard,
            "{tool} {args:?} still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    assert_ne!(
        status.code(),
        Some(124),
        "{tool} {args:?} timed out after {limit:?}:\n{stdout}{stderr}"
    );
    Run {
        status,
        stdout,
        stderr,
        elapsed,
    }
}

/// A long-running helper process (e.g. a reference server), killed when
/// dropped; `timeout` bounds it even if this process dies first.
pub struct Background(ChildGuard);

pub fn spawn_background(tool: &str, args: &[&str], limit: Duration) -> Background {
    require_tool(tool);
    require_tool("timeout");
    let child = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(limit.as_secs().max(1).to_string())
        .arg(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {tool}: {e}"));
    Background(ChildGuard(child))
}

/// Waits (bounded) until `path` exists, e.g. a pid file a server writes
/// once it accepts connections.
pub fn wait_for_file(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// The first offset where `a` and `b` differ, for readable failures.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

// ---------------------------------------------------------------------------
// A raw, blocking NBD client for byte-level tests.

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = 0x8001;
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;
pub const FLAG_REQ_ONE: u16 = 8;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_TLS_REQD: u32 = 0x8000_0005;
pub const TFLAG_SEND_DF: u16 = 128;
pub const TFLAG_SEND_CACHE: u16 = 1024;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const FLAG_FUA: u16 = 1;
pub const FLAG_NO_HOLE: u16 = 2;
pub const FLAG_DF: u16 = 4;
pub const FLAG_FAST_ZERO: u16 = 16;

pub const TFLAG_HAS_FLAGS: u16 = 1;
pub const TFLAG_READ_ONLY: u16 = 2;
pub const TFLAG_SEND_FLUSH: u16 = 4;
pub const TFLAG_SEND_FUA: u16 = 8;
pub const TFLAG_SEND_TRIM: u16 = 32;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 64;
pub const TFLAG_CAN_MULTI_CONN: u16 = 256;

pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;

pub trait Conn: Read + Write + Send {
    fn set_timeout(&self, t: Duration);
    /// Another handle on the same socket, e.g. for a sending thread.
    fn try_clone_box(&self) -> Box<dyn Conn>;
}

impl Conn for UnixStream {
    fn set_timeout(&self, t: Duration) {
        self.set_read_timeout(Some(t)).expect("timeout");
        self.set_write_timeout(Some(t)).expect("timeout");
    }
    fn try_clone_box(&self) -> Box<dyn Conn> {
        Box::new(self.try_clone().expect("clone socket"))
    }
}

impl Conn for std::net::TcpStream {
    fn set_timeout(&self, t: Duration) {
        self.set_read_timeout(Some(t)).expect("timeout");
        self.set_write_timeout(Some(t)).expect("timeout");
        self.set_nodelay(true).expect("nodelay");
    }
    fn try_clone_box(&self) -> Box<dyn Conn> {
        Box::new(self.try_clone().expect("clone socket"))
    }
}

/// One option reply: (option, reply type, data).
pub type OptReply = (u32, u32, Vec<u8>);

pub struct RawClient {
    pub s: Box<dyn Conn>,
}

impl RawClient {
    /// Connects and reads the server's greeting; returns the handshake flags.
    pub fn connect_unix(path: &Path) -> (RawClient, u16) {
        let s = UnixStream::connect(path).expect("connect unix");
        s.set_timeout(Duration::from_secs(20));
        RawClient::greeted(Box::new(s))
    }

    pub fn connect_tcp(addr: SocketAddr) -> (RawClient, u16) {
        let s = std::net::TcpStream::connect(addr).expect("connect tcp");
        s.set_timeout(Duration::from_secs(20));
        RawClient::greeted(Box::new(s))
    }

    fn greeted(s: Box<dyn Conn>) -> (RawClient, u16) {
        let mut c = RawClient { s };
        assert_eq!(c.u64(), NBDMAGIC, "NBDMAGIC");
        assert_eq!(c.u64(), IHAVEOPT, "IHAVEOPT");
        let flags = c.u16();
        (c, flags)
    }

    /// Fixed newstyle, no zeroes: connected and ready for options.
    pub fn negotiated_unix(path: &Path) -> RawClient {
        let (mut c, flags) = RawClient::connect_unix(path);
        assert_eq!(flags, 3, "FIXED_NEWSTYLE | NO_ZEROES");
        c.put(&3u32.to_be_bytes());
        c
    }

    /// Connected, through NBD_OPT_GO, into the transmission phase.
    pub fn transmission_unix(path: &Path, name: &str) -> (RawClient, u64, u16) {
        let mut c = RawClient::negotiated_unix(path);
        let (size, flags) = c.go(name, &[]).expect("NBD_OPT_GO");
        (c, size, flags)
    }

    pub fn put(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("send");
    }

    /// Like `put` but tolerates the server having closed the connection.
    pub fn try_put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.s.read_exact(&mut v).expect("receive");
        v
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.bytes(2).try_into().unwrap())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.bytes(4).try_into().unwrap())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.bytes(8).try_into().unwrap())
    }

    pub fn option(&mut self, option: u32, payload: &[u8]) {
        let mut b = Vec::with_capacity(16 + payload.len());
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        self.put(&b);
    }

    pub fn option_reply(&mut self) -> OptReply {
        assert_eq!(self.u64(), OPT_REPLY_MAGIC, "option reply magic");
        let option = self.u32();
        let kind = self.u32();
        let len = self.u32();
        assert!(len <= 1 << 20, "option reply of {len} bytes");
        let data = self.bytes(len as usize);
        (option, kind, data)
    }

    /// Replies to one option up to and including its final reply (ACK or
    /// an error).
    pub fn option_replies(&mut self) -> Vec<OptReply> {
        let mut v = Vec::new();
        loop {
            let r = self.option_reply();
            let last = r.1 == REP_ACK || r.1 & 0x8000_0000 != 0;
            v.push(r);
            if last {
                return v;
            }
        }
    }

    /// NBD_OPT_INFO / NBD_OPT_GO payload.
    pub fn info_payload(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&(name.len() as u32).to_be_bytes());
        p.extend_from_slice(name);
        p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            p.extend_from_slice(&i.to_be_bytes());
        }
        p
    }

    /// Sends NBD_OPT_GO; Ok((size, flags)) on NBD_REP_ACK, Err(replies)
    /// otherwise.
    pub fn go(&mut self, name: &str, infos: &[u16]) -> Result<(u64, u16), Vec<OptReply>> {
        self.option(OPT_GO, &RawClient::info_payload(name.as_bytes(), infos));
        let replies = self.option_replies();
        export_info(&replies).ok_or(replies)
    }

    pub fn request(&mut self, cmd: u16, flags: u16, handle: u64, offset: u64, len: u32) {
        self.put(&request_bytes(cmd, flags, handle, offset, len));
    }

    /// A simple reply header: (error, handle).
    pub fn reply(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), SIMPLE_REPLY_MAGIC, "simple reply magic");
        let err = self.u32();
        let handle = self.u64();
        (err, handle)
    }

    pub fn read(&mut self, handle: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(CMD_READ, 0, handle, offset, len);
        let (err, h) = self.reply();
        assert_eq!(h, handle);
        if err != 0 {
            return Err(err);
        }
        Ok(self.bytes(len as usize))
    }

    pub fn write(&mut self, handle: u64, offset: u64, data: &[u8], flags: u16) -> u32 {
        let mut b = request_bytes(CMD_WRITE, flags, handle, offset, data.len() as u32).to_vec();
        b.extend_from_slice(data);
        self.put(&b);
        let (err, h) = self.reply();
        assert_eq!(h, handle);
        err
    }

    pub fn simple(&mut self, cmd: u16, flags: u16, handle: u64, offset: u64, len: u32) -> u32 {
        self.request(cmd, flags, handle, offset, len);
        let (err, h) = self.reply();
        assert_eq!(h, handle);
        err
    }

    /// True when the server closes the connection (EOF or reset) within
    /// the read timeout, reading and dropping whatever it still sends.
    pub fn closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
        false
    }
}

pub fn request_bytes(cmd: u16, flags: u16, handle: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&cmd.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

/// One structured reply chunk: (flags, type, handle, payload).
pub type Chunk = (u16, u16, u64, Vec<u8>);

impl RawClient {
    /// Reads one structured reply chunk.
    pub fn chunk(&mut self) -> Chunk {
        assert_eq!(self.u32(), STRUCTURED_REPLY_MAGIC, "structured reply magic");
        let flags = self.u16();
        let kind = self.u16();
        let handle = self.u64();
        let len = self.u32();
        assert!(len <= 64 << 20, "chunk of {len} bytes");
        (flags, kind, handle, self.bytes(len as usize))
    }

    /// Reads chunks up to and including the one flagged done.
    pub fn chunks(&mut self) -> Vec<Chunk> {
        let mut v = Vec::new();
        loop {
            let c = self.chunk();
            let done = c.0 & REPLY_FLAG_DONE != 0;
            v.push(c);
            if done {
                return v;
            }
        }
    }

    /// A meta context option's payload: export name and queries.
    pub fn meta_payload(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name);
        p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q);
        }
        p
    }
}

/// (size, transmission flags) from a successful INFO/GO reply list.
pub fn export_info(replies: &[OptReply]) -> Option<(u64, u16)> {
    if replies.last()?.1 != REP_ACK {
        return None;
    }
    replies.iter().find_map(|(_, kind, d)| {
        (*kind == REP_INFO && d.len() == 12 && d[..2] == INFO_EXPORT.to_be_bytes()).then(|| {
            (
                u64::from_be_bytes(d[2..10].try_into().unwrap()),
                u16::from_be_bytes(d[10..12].try_into().unwrap()),
            )
        })
    })
}

/// The payload of the NBD_REP_INFO of type `info`, if sent.
pub fn info_of(replies: &[OptReply], info: u16) -> Option<Vec<u8>> {
    replies.iter().find_map(|(_, kind, d)| {
        (*kind == REP_INFO && d.len() >= 2 && d[..2] == info.to_be_bytes()).then(|| d[2..].to_vec())
    })
}
