//! The real-time relay behind `linkemu`: UDP and TCP on one listen port,
//! forwarded to one address, through a [`Link`](crate::link::Link) per
//! direction driven by the wall clock (time since the relay started).
//!
//! UDP is relayed NAT-style: each client address seen on the listen socket
//! gets its own upstream socket toward `forward`, and replies on it go back
//! to that client. TCP connections are accepted, a connection to `forward`
//! is opened for each, and each byte stream is cut into segments (default
//! 1448 bytes, a full Ethernet MSS with timestamps) that cross the same link
//! model as the UDP datagrams, sharing its rate and queue. A byte stream
//! cannot lose bytes, so a segment the model drops (loss, outage) or
//! corrupts is offered again one round trip later (doubling per further
//! attempt, as a TCP retransmission timer would), and segments are handed
//! on in order. This makes the TCP baseline optimistic under loss: a real
//! TCP would also shrink its window. The relay holds at most about twice
//! the link's bandwidth-delay product plus its queue per connection and
//! direction (64 KiB at least), and hands segments to the link only while
//! its queue has room, so a fast sender is slowed by flow control instead of
//! being tail-dropped, and runs at most that far ahead of the link.
//!
//! Wire overhead: besides the payload, each UDP datagram costs 28 bytes
//! (IPv4 + UDP headers; 48 over IPv6) and each TCP segment 52 (IPv4 + TCP +
//! timestamp option; 72 over IPv6) on the emulated link, so the configured
//! rate is an IP-level rate as on a real line. TCP acknowledgements are not
//! carried over the emulated link (each side's TCP ends at the relay).
//!
//! Threads: one per direction (receive, shape, send), one accepting TCP
//! connections. The direction threads wait with `ppoll` until the next
//! packet is due or a socket is ready, with a 1 µs timer slack.

mod report;
pub(crate) mod sys;
mod tcp;
mod worker;

pub use report::{format_interval, format_summary};

use serde::Serialize;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::link::{direction_seeds, DelayStats, DuplexConfig, Link, LinkStats};

/// Default TCP segment payload: 1500-byte MTU − 20 (IP) − 20 (TCP) − 12 (timestamps).
pub const DEFAULT_TCP_SEGMENT: usize = 1448;
/// Default spin threshold (see [`RelayConfig::spin`]).
pub const DEFAULT_SPIN: Duration = Duration::ZERO;
/// Kernel socket buffer asked for on every relay UDP socket (TCP sockets
/// are left to autotuning, see `tcp::accept_loop`).
pub const SOCKET_BUFFER: usize = 8 << 20;
/// Most UDP client addresses relayed at once; further clients are ignored.
pub const MAX_UDP_FLOWS: usize = 4096;

/// What the relay does.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub forward: SocketAddr,
    pub link: DuplexConfig,
    pub seed: u64,
    /// Wire bytes added to each UDP datagram; `None`: 28 (IPv4) or 48 (IPv6).
    pub udp_overhead: Option<u32>,
    /// Wire bytes added to each TCP segment; `None`: 52 (IPv4) or 72 (IPv6).
    pub tcp_overhead: Option<u32>,
    pub tcp_segment: usize,
    pub udp: bool,
    pub tcp: bool,
    /// Waits for the next due packet shorter than this are spun instead of
    /// slept: more precise release times for more CPU.
    pub spin: Duration,
}

impl RelayConfig {
    pub fn new(listen: SocketAddr, forward: SocketAddr, link: DuplexConfig) -> Self {
        Self {
            listen,
            forward,
            link,
            seed: 0,
            udp_overhead: None,
            tcp_overhead: None,
            tcp_segment: DEFAULT_TCP_SEGMENT,
            udp: true,
            tcp: true,
            spin: DEFAULT_SPIN,
        }
    }

    pub fn udp_overhead(&self) -> u32 {
        self.udp_overhead
            .unwrap_or(if self.forward.is_ipv4() { 28 } else { 48 })
    }

    pub fn tcp_overhead(&self) -> u32 {
        self.tcp_overhead
            .unwrap_or(if self.forward.is_ipv4() { 52 } else { 72 })
    }
}

/// Relay-level counters of one direction, besides the link's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DirectionStats {
    pub link: LinkStats,
    /// TCP segments offered again after the model dropped or corrupted them.
    pub tcp_retransmits: u64,
    /// Datagrams that the OS refused to send (e.g. nobody listening).
    pub send_errors: u64,
    /// How late packets were handed to the OS after the model released
    /// them (scheduling latency of the relay thread).
    pub late: DelayStats,
}

/// A snapshot of the whole relay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelayStats {
    pub elapsed_s: f64,
    pub listen: SocketAddr,
    pub forward: SocketAddr,
    pub seed: u64,
    pub config: DuplexConfig,
    pub up: DirectionStats,
    pub down: DirectionStats,
    pub udp_flows: u64,
    pub tcp_connections: u64,
    pub tcp_open: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Up,
    Down,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::Up => 0,
            Dir::Down => 1,
        }
    }
}

/// A UDP client and its upstream socket.
pub(crate) struct Flow {
    pub client: SocketAddr,
    pub upstream: UdpSocket,
}

pub(crate) struct Shared {
    pub origin: Instant,
    pub stop: AtomicBool,
    pub flows: RwLock<Vec<Arc<Flow>>>,
    pub flows_gen: AtomicU64,
    pub stats: [Mutex<DirectionStats>; 2],
    pub tcp_total: AtomicU64,
    pub tcp_open: AtomicU64,
    /// Writing a byte here wakes the direction thread (index by `Dir`).
    pub wake: [UnixDatagram; 2],
}

impl Shared {
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    pub fn wake(&self, d: Dir) {
        let _ = self.wake[d.index()].send(&[1]);
    }
}

/// A running relay. Dropping it stops the threads.
pub struct Relay {
    cfg: RelayConfig,
    local: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn bind_pair(listen: SocketAddr, tcp: bool) -> io::Result<(UdpSocket, Option<TcpListener>)> {
    // With port 0, the UDP port the OS picks may be taken for TCP: retry.
    let tries = if listen.port() == 0 { 50 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(listen)?;
        if !tcp {
            return Ok((udp, None));
        }
        let mut addr = listen;
        addr.set_port(udp.local_addr()?.port());
        match TcpListener::bind(addr) {
            Ok(l) => return Ok((udp, Some(l))),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("could not bind")))
}

impl Relay {
    /// Binds the listen port (UDP and TCP) and starts relaying.
    pub fn start(cfg: RelayConfig) -> io::Result<Relay> {
        let (su, sd) = direction_seeds(cfg.seed);
        let invalid = |e: crate::link::ConfigError| io::Error::new(io::ErrorKind::InvalidInput, e);
        let up_link: Link<worker::Tag> = Link::new(cfg.link.up.clone(), su).map_err(invalid)?;
        let down_link: Link<worker::Tag> = Link::new(cfg.link.down.clone(), sd).map_err(invalid)?;

        let (udp, tcp) = bind_pair(cfg.listen, cfg.tcp)?;
        let local = udp.local_addr()?;
        udp.set_nonblocking(true)?;
        sys::set_socket_buffers(&udp, SOCKET_BUFFER);
        let udp = Arc::new(udp);

        let (w_up_tx, w_up_rx) = UnixDatagram::pair()?;
        let (w_down_tx, w_down_rx) = UnixDatagram::pair()?;
        for s in [&w_up_tx, &w_up_rx, &w_down_tx, &w_down_rx] {
            s.set_nonblocking(true)?;
        }
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            stop: AtomicBool::new(false),
            flows: RwLock::new(Vec::new()),
            flows_gen: AtomicU64::new(0),
            stats: [
                Mutex::new(DirectionStats::default()),
                Mutex::new(DirectionStats::default()),
            ],
            tcp_total: AtomicU64::new(0),
            tcp_open: AtomicU64::new(0),
            wake: [w_up_tx, w_down_tx],
        });

        let (conn_up_tx, conn_up_rx) = mpsc::channel();
        let (conn_down_tx, conn_down_rx) = mpsc::channel();
        let rtt = cfg.link.rtt();
        let params = worker::Params {
            forward: cfg.forward,
            udp_overhead: cfg.udp_overhead(),
            tcp_overhead: cfg.tcp_overhead(),
            tcp_segment: cfg.tcp_segment.max(1),
            rtt,
            tcp_window: tcp::window_for(&cfg.link),
            spin: cfg.spin,
        };

        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(f)
        };
        {
            let w = worker::Worker::new(
                Dir::Up,
                up_link,
                shared.clone(),
                udp.clone(),
                w_up_rx,
                conn_up_rx,
                params.clone(),
                cfg.udp,
            );
            threads.push(spawn("linkemu-up", Box::new(move || w.run()))?);
        }
        {
            let w = worker::Worker::new(
                Dir::Down,
                down_link,
                shared.clone(),
                udp.clone(),
                w_down_rx,
                conn_down_rx,
                params.clone(),
                cfg.udp,
            );
            threads.push(spawn("linkemu-down", Box::new(move || w.run()))?);
        }
        if let Some(listener) = tcp {
            listener.set_nonblocking(true)?;
            let shared2 = shared.clone();
            let forward = cfg.forward;
            threads.push(spawn(
                "linkemu-accept",
                Box::new(move || {
                    tcp::accept_loop(listener, forward, shared2, [conn_up_tx, conn_down_tx])
                }),
            )?);
        }
        Ok(Relay {
            cfg,
            local,
            shared,
            threads,
        })
    }

    /// The bound listen address (UDP and TCP share the port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn config(&self) -> &RelayConfig {
        &self.cfg
    }

    /// Time since the relay started: the link model's clock.
    pub fn elapsed(&self) -> Duration {
        self.shared.now()
    }

    /// A consistent-enough snapshot of every counter (each direction's
    /// counters are published by its thread every few milliseconds).
    pub fn stats(&self) -> RelayStats {
        let get = |d: Dir| {
            self.shared.stats[d.index()]
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default()
        };
        RelayStats {
            elapsed_s: self.shared.now().as_secs_f64(),
            listen: self.local,
            forward: self.cfg.forward,
            seed: self.cfg.seed,
            config: self.cfg.link.clone(),
            up: get(Dir::Up),
            down: get(Dir::Down),
            udp_flows: self
                .shared
                .flows
                .read()
                .map(|f| f.len() as u64)
                .unwrap_or(0),
            tcp_connections: self.shared.tcp_total.load(Ordering::Relaxed),
            tcp_open: self.shared.tcp_open.load(Ordering::Relaxed),
        }
    }

    /// Stops the threads and waits for them (the relay's counters stay
    /// readable with [`Relay::stats`]).
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Like [`Relay::shutdown`], keeping the handle.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake(Dir::Up);
        self.shared.wake(Dir::Down);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects a TCP stream to `addr` for the relay's upstream side.
pub(crate) fn connect_upstream(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    Ok(s)
}
