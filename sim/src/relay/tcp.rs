//! TCP through the relay: accepting connections and opening the matching
//! upstream ones ([`accept_loop`]), and one direction of one connection
//! ([`TcpHalf`]): the bytes read from the source socket, cut into segments
//! for the link, reassembled in order after it, and written to the
//! destination socket, with the FIN carried as an empty segment so that it
//! too crosses the link after the data.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use super::{connect_upstream, sys, Dir, Shared};
use crate::link::DuplexConfig;

/// Most bytes staged from a source before they are cut into segments.
const STAGE_LIMIT: usize = 256 * 1024;

/// Smallest per-connection window (see [`window_for`]).
const MIN_WINDOW: u64 = 64 * 1024;

/// The per-connection limit of bytes read from a source and not yet written
/// to the destination: enough for the link's bandwidth-delay product (twice,
/// so retransmissions do not stall it) plus its queue, and at least 64 KiB.
/// No more: every byte the relay holds beyond what the emulated link would
/// hold lets the sender run ahead of the link.
pub(crate) fn window_for(link: &DuplexConfig) -> usize {
    let rtt = link.rtt().max(Duration::from_millis(1));
    let need = |c: &crate::link::LinkConfig| -> u64 {
        if c.rate_bps == 0 {
            return 0;
        }
        let bdp = (c.rate_bps as u128 * rtt.as_nanos() / 8 / 1_000_000_000) as u64;
        bdp.saturating_mul(2).saturating_add(c.queue_limit())
    };
    let w = need(&link.up).max(need(&link.down)).max(MIN_WINDOW);
    w.min(256 << 20) as usize
}

/// Both sockets of one relayed connection.
pub(crate) struct TcpConn {
    pub id: u64,
    pub client: TcpStream,
    pub server: TcpStream,
    pub aborted: AtomicBool,
    /// Halves that have finished (0, 1 or 2).
    pub finished: AtomicU8,
}

impl TcpConn {
    fn src(&self, d: Dir) -> &TcpStream {
        match d {
            Dir::Up => &self.client,
            Dir::Down => &self.server,
        }
    }

    fn dst(&self, d: Dir) -> &TcpStream {
        match d {
            Dir::Up => &self.server,
            Dir::Down => &self.client,
        }
    }

    /// Tears the connection down in both directions.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

/// Accepts connections until the relay stops; each gets an upstream
/// connection and is handed to both direction threads.
pub(crate) fn accept_loop(
    listener: TcpListener,
    forward: SocketAddr,
    shared: Arc<Shared>,
    to_workers: [Sender<Arc<TcpConn>>; 2],
) {
    let mut next_id = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let mut fds = [sys::PollFd::new(&listener, sys::PollFlags::IN)];
        if sys::poll(&mut fds, Some(Duration::from_millis(100))).is_err() {
            continue;
        }
        let (client, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                eprintln!("linkemu: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let server = match connect_upstream(forward) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("linkemu: TCP from {peer}: cannot connect to {forward}: {e}");
                continue;
            }
        };
        // Kernel buffers are left to autotuning: forced large ones hold
        // bytes the sender counts as sent that the link model has not seen
        // (with 8 MiB, an iperf3 sender over a T1 reported 33 Mbit/s while
        // its receiver got 1.5). The relay's own buffer is the window above.
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_nodelay(true)?;
            s.set_nonblocking(true)
        };
        if let Err(e) = setup(&client).and_then(|_| setup(&server)) {
            eprintln!("linkemu: TCP from {peer}: {e}");
            continue;
        }
        next_id += 1;
        let conn = Arc::new(TcpConn {
            id: next_id,
            client,
            server,
            aborted: AtomicBool::new(false),
            finished: AtomicU8::new(0),
        });
        shared.tcp_total.fetch_add(1, Ordering::Relaxed);
        shared.tcp_open.fetch_add(1, Ordering::Relaxed);
        for (i, tx) in to_workers.iter().enumerate() {
            let _ = tx.send(conn.clone());
            shared.wake(if i == 0 { Dir::Up } else { Dir::Down });
        }
    }
}

/// A segment ready for the link.
pub(crate) struct Segment {
    pub seq: u64,
    pub data: Vec<u8>,
    pub fin: bool,
}

/// What happened on a socket operation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Io {
    Ok,
    Failed,
}

/// One direction of one connection, owned by that direction's thread.
pub(crate) struct TcpHalf {
    pub conn: Arc<TcpConn>,
    dir: Dir,
    staged: Vec<u8>,
    staged_off: usize,
    src_eof: bool,
    fin_queued: bool,
    /// The source may have data (poll said so and no read has blocked since).
    pub src_readable: bool,
    next_seq: u64,
    next_deliver: u64,
    ooo: BTreeMap<u64, (Vec<u8>, bool)>,
    out: VecDeque<u8>,
    fin_delivered: bool,
    shut: bool,
    /// Bytes read from the source and not yet written to the destination.
    unwritten: usize,
}

impl TcpHalf {
    pub fn new(conn: Arc<TcpConn>, dir: Dir) -> Self {
        Self {
            conn,
            dir,
            staged: Vec::new(),
            staged_off: 0,
            src_eof: false,
            fin_queued: false,
            src_readable: true,
            next_seq: 0,
            next_deliver: 0,
            ooo: BTreeMap::new(),
            out: VecDeque::new(),
            fin_delivered: false,
            shut: false,
            unwritten: 0,
        }
    }

    /// The socket this half reads from.
    pub fn src_socket(&self) -> &TcpStream {
        self.conn.src(self.dir)
    }

    /// The socket this half writes to.
    pub fn dst_socket(&self) -> &TcpStream {
        self.conn.dst(self.dir)
    }

    /// Whether the source should be polled for reading.
    pub fn wants_read(&self, window: usize) -> bool {
        !self.src_eof && self.unwritten < window && self.staged.len() < STAGE_LIMIT
    }

    /// Whether the destination has bytes waiting to be written.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether a segment (data or FIN) is waiting for queue room.
    pub fn has_segment(&self) -> bool {
        self.staged_off < self.staged.len() || (self.src_eof && !self.fin_queued)
    }

    /// This half has carried everything, FIN included.
    pub fn is_done(&self) -> bool {
        self.shut
    }

    /// Reads what the source has, within the window.
    pub fn read_src(&mut self, window: usize, buf: &mut [u8]) -> Io {
        while self.src_readable && self.wants_read(window) {
            let want = buf.len().min(window - self.unwritten);
            match self.conn.src(self.dir).read(&mut buf[..want]) {
                Ok(0) => {
                    self.src_eof = true;
                    self.src_readable = false;
                }
                Ok(n) => {
                    if self.staged_off == self.staged.len() {
                        self.staged.clear();
                        self.staged_off = 0;
                    }
                    self.staged.extend_from_slice(&buf[..n]);
                    self.unwritten += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.src_readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Io::Failed,
            }
        }
        Io::Ok
    }

    /// Cuts the next segment of at most `max` bytes (or the FIN).
    pub fn next_segment(&mut self, max: usize) -> Option<Segment> {
        if self.staged_off < self.staged.len() {
            let end = (self.staged_off + max).min(self.staged.len());
            let data = self.staged[self.staged_off..end].to_vec();
            self.staged_off = end;
            if self.staged_off == self.staged.len() {
                self.staged.clear();
                self.staged_off = 0;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            return Some(Segment {
                seq,
                data,
                fin: false,
            });
        }
        if self.src_eof && !self.fin_queued {
            self.fin_queued = true;
            let seq = self.next_seq;
            self.next_seq += 1;
            return Some(Segment {
                seq,
                data: Vec::new(),
                fin: true,
            });
        }
        None
    }

    /// Takes a segment out of the link; in-order data goes to the output.
    pub fn deliver(&mut self, seq: u64, data: Vec<u8>, fin: bool) {
        if seq < self.next_deliver || self.ooo.contains_key(&seq) {
            return; // a duplicate
        }
        self.ooo.insert(seq, (data, fin));
        while let Some((data, fin)) = self.ooo.remove(&self.next_deliver) {
            self.out.extend(data);
            self.fin_delivered |= fin;
            self.next_deliver += 1;
        }
    }

    /// Writes what the destination accepts; shuts its write side after the FIN.
    pub fn flush(&mut self) -> Io {
        let dst = self.conn.dst(self.dir);
        while !self.out.is_empty() {
            let (a, _) = self.out.as_slices();
            match (&*dst).write(a) {
                Ok(0) => return Io::Failed,
                Ok(n) => {
                    self.out.drain(..n);
                    self.unwritten = self.unwritten.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Io::Ok,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Io::Failed,
            }
        }
        if self.fin_delivered && !self.shut {
            let _ = dst.shutdown(Shutdown::Write);
            self.shut = true;
        }
        Io::Ok
    }
}
