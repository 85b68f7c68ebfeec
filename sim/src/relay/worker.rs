//! One direction of the relay: a thread that receives (UDP datagrams and
//! TCP bytes), hands them to that direction's link model at the current
//! time, sleeps until the next packet is due or a socket is ready, and sends
//! each packet on when the model releases it. Up receives on the listen
//! socket and sends on the per-client upstream sockets; down does the
//! reverse.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use super::tcp::{Io, TcpConn, TcpHalf};
use super::{sys, Dir, DirectionStats, Flow, Shared, MAX_UDP_FLOWS, SOCKET_BUFFER};
use crate::link::{Delivery, Link, Verdict};

/// Where a packet goes when the link delivers it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tag {
    Udp(u32),
    Tcp {
        conn: u64,
        seq: u64,
        fin: bool,
        attempt: u32,
    },
}

#[derive(Clone)]
pub(crate) struct Params {
    pub forward: SocketAddr,
    pub udp_overhead: u32,
    pub tcp_overhead: u32,
    pub tcp_segment: usize,
    pub rtt: Duration,
    pub tcp_window: usize,
    /// Waits shorter than this are spun (polled without sleeping) instead.
    pub spin: Duration,
}

/// Longest wait, so that a lost wake-up costs at most this much.
const MAX_WAIT: Duration = Duration::from_millis(200);
/// How often the counters are published to `Relay::stats`.
const PUBLISH_EVERY: Duration = Duration::from_millis(10);
/// Datagrams read from one socket before the link is served again.
const RECV_BATCH: usize = 64;

struct Retx {
    at: Duration,
    conn: u64,
    seq: u64,
    data: Vec<u8>,
    fin: bool,
    attempt: u32,
}

impl PartialEq for Retx {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.conn, self.seq) == (o.at, o.conn, o.seq)
    }
}
impl Eq for Retx {}
impl PartialOrd for Retx {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Retx {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.conn, self.seq).cmp(&(o.at, o.conn, o.seq))
    }
}

enum Target {
    Wake,
    UdpIn(usize),
    TcpSrc(u64),
    TcpDst(u64),
}

pub(crate) struct Worker {
    dir: Dir,
    link: Link<Tag>,
    shared: Arc<Shared>,
    listen: Arc<UdpSocket>,
    wake_rx: UnixDatagram,
    new_conns: Receiver<Arc<TcpConn>>,
    p: Params,
    udp: bool,
    flows: Vec<Arc<Flow>>,
    flows_gen: u64,
    flow_index: HashMap<SocketAddr, u32>,
    halves: HashMap<u64, TcpHalf>,
    retx: BinaryHeap<Reverse<Retx>>,
    /// Retransmissions that are due, waiting for queue room (they go first).
    retx_ready: VecDeque<Retx>,
    stats: DirectionStats,
    last_publish: Duration,
    buf: Vec<u8>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: Dir,
        link: Link<Tag>,
        shared: Arc<Shared>,
        listen: Arc<UdpSocket>,
        wake_rx: UnixDatagram,
        new_conns: Receiver<Arc<TcpConn>>,
        mut p: Params,
        udp: bool,
    ) -> Self {
        // The link's own framing comes on top of the protocol headers.
        let framing = link.config().overhead_bytes;
        p.udp_overhead += framing;
        p.tcp_overhead += framing;
        Self {
            dir,
            link,
            shared,
            listen,
            wake_rx,
            new_conns,
            p,
            udp,
            flows: Vec::new(),
            flows_gen: 0,
            flow_index: HashMap::new(),
            halves: HashMap::new(),
            retx: BinaryHeap::new(),
            retx_ready: VecDeque::new(),
            stats: DirectionStats::default(),
            last_publish: Duration::ZERO,
            buf: vec![0; 65536],
        }
    }

    fn rto(&self, attempt: u32) -> Duration {
        let base = self.p.rtt.max(Duration::from_millis(1));
        (base * 2u32.saturating_pow(attempt.min(10))).min(Duration::from_secs(2).max(base))
    }

    pub fn run(mut self) {
        sys::set_timer_slack(1_000);
        let mut targets: Vec<Target> = Vec::new();
        // Which targets were ready; kept apart from the poll list, which
        // borrows the sockets only for the wait itself.
        let mut ready_at: Vec<bool> = Vec::new();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = self.shared.now();
            self.deliver_due(now);
            self.retransmit_due(now);
            self.pump_tcp(now);
            if now >= self.last_publish + PUBLISH_EVERY {
                self.publish(now);
            }

            // When must we look again, at the latest?
            let mut deadline = now + MAX_WAIT;
            if let Some(t) = self.link.next_event() {
                deadline = deadline.min(t);
            }
            if let Some(Reverse(r)) = self.retx.peek() {
                deadline = deadline.min(r.at);
            }
            if !self.retx_ready.is_empty() || self.halves.values().any(|h| h.has_segment()) {
                if let Some(t) = self.link.next_queue_departure() {
                    deadline = deadline.min(t);
                }
            }

            targets.clear();
            let ready = {
                let mut fds: Vec<sys::PollFd<'_>> = Vec::with_capacity(targets.capacity());
                fds.push(sys::PollFd::new(&self.wake_rx, sys::PollFlags::IN));
                targets.push(Target::Wake);
                if self.udp {
                    match self.dir {
                        Dir::Up => {
                            fds.push(sys::PollFd::new(&self.listen, sys::PollFlags::IN));
                            targets.push(Target::UdpIn(0));
                        }
                        Dir::Down => {
                            for (i, f) in self.flows.iter().enumerate() {
                                fds.push(sys::PollFd::new(&f.upstream, sys::PollFlags::IN));
                                targets.push(Target::UdpIn(i));
                            }
                        }
                    }
                }
                for (&id, h) in &self.halves {
                    if h.wants_read(self.p.tcp_window) && !h.src_readable {
                        fds.push(sys::PollFd::new(h.src_socket(), sys::PollFlags::IN));
                        targets.push(Target::TcpSrc(id));
                    }
                    if h.wants_write() {
                        fds.push(sys::PollFd::new(h.dst_socket(), sys::PollFlags::OUT));
                        targets.push(Target::TcpDst(id));
                    }
                }
                let now = self.shared.now();
                let wait = deadline.saturating_sub(now);
                let wait = if wait < self.p.spin {
                    Duration::ZERO
                } else {
                    wait
                };
                let ready = match sys::poll(&mut fds, Some(wait)) {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("linkemu: poll failed: {e}");
                        std::thread::sleep(Duration::from_millis(1));
                        0
                    }
                };
                ready_at.clear();
                ready_at.extend(fds.iter().map(|fd| !fd.revents().is_empty()));
                ready
            };
            if ready == 0 {
                continue;
            }
            for (&is_ready, t) in ready_at.iter().zip(&targets) {
                if !is_ready {
                    continue;
                }
                match *t {
                    Target::Wake => self.on_wake(),
                    Target::UdpIn(i) => self.recv_udp(i),
                    Target::TcpSrc(id) => {
                        if let Some(h) = self.halves.get_mut(&id) {
                            h.src_readable = true;
                        }
                    }
                    Target::TcpDst(id) => {
                        if let Some(h) = self.halves.get_mut(&id) {
                            if h.flush() == Io::Failed {
                                h.conn.abort();
                            }
                        }
                    }
                }
            }
        }
        let now = self.shared.now();
        self.publish(now);
    }

    fn publish(&mut self, now: Duration) {
        self.stats.link = self.link.stats_at(now);
        self.last_publish = now;
        if let Ok(mut s) = self.shared.stats[self.dir.index()].lock() {
            *s = self.stats.clone();
        }
    }

    fn on_wake(&mut self) {
        let mut b = [0u8; 64];
        while self.wake_rx.recv(&mut b).is_ok() {}
        while let Ok(conn) = self.new_conns.try_recv() {
            self.halves
                .insert(conn.id, TcpHalf::new(conn.clone(), self.dir));
        }
        self.refresh_flows();
    }

    fn refresh_flows(&mut self) {
        if self.dir != Dir::Down {
            return;
        }
        let g = self.shared.flows_gen.load(Ordering::Acquire);
        if g != self.flows_gen {
            if let Ok(f) = self.shared.flows.read() {
                self.flows = f.clone();
            }
            self.flows_gen = g;
        }
    }

    fn new_flow(&mut self, client: SocketAddr) -> io::Result<u32> {
        let bind: SocketAddr = if self.p.forward.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal address")
        } else {
            "[::]:0".parse().expect("literal address")
        };
        let upstream = UdpSocket::bind(bind)?;
        upstream.connect(self.p.forward)?;
        upstream.set_nonblocking(true)?;
        sys::set_socket_buffers(&upstream, SOCKET_BUFFER);
        let flow = Arc::new(Flow { client, upstream });
        let id = self.flows.len() as u32;
        self.flows.push(flow.clone());
        self.flow_index.insert(client, id);
        if let Ok(mut f) = self.shared.flows.write() {
            f.push(flow);
        }
        self.shared.flows_gen.fetch_add(1, Ordering::Release);
        self.shared.wake(Dir::Down);
        Ok(id)
    }

    fn recv_udp(&mut self, i: usize) {
        for _ in 0..RECV_BATCH {
            let got = match self.dir {
                Dir::Up => self
                    .listen
                    .recv_from(&mut self.buf)
                    .map(|(n, a)| (n, Some(a))),
                Dir::Down => match self.flows.get(i) {
                    Some(f) => f.upstream.recv(&mut self.buf).map(|n| (n, None)),
                    None => return,
                },
            };
            let (n, from) = match got {
                Ok(x) => x,
                // WouldBlock ends the batch; so does an ICMP error reported
                // on a connected socket (nobody listening at --forward).
                Err(_) => return,
            };
            let id = match from {
                None => i as u32,
                Some(a) => match self.flow_index.get(&a) {
                    Some(&id) => id,
                    None if self.flows.len() >= MAX_UDP_FLOWS => continue,
                    None => match self.new_flow(a) {
                        Ok(id) => id,
                        Err(e) => {
                            eprintln!("linkemu: cannot open an upstream socket for {a}: {e}");
                            continue;
                        }
                    },
                },
            };
            let now = self.shared.now();
            let data = self.buf[..n].to_vec();
            let _ = self
                .link
                .send_with_overhead(now, data, Tag::Udp(id), self.p.udp_overhead);
            // Serve due packets between datagrams: on a fast link they are due now.
            self.deliver_due(now);
        }
    }

    fn deliver_due(&mut self, now: Duration) {
        while let Some(d) = self.link.poll(now) {
            self.deliver(d, now);
        }
    }

    fn deliver(&mut self, d: Delivery<Tag>, now: Duration) {
        self.stats.late.record(now.saturating_sub(d.at));
        match d.tag {
            Tag::Udp(id) => {
                let Some(f) = self.flows.get(id as usize) else {
                    return;
                };
                let r = match self.dir {
                    Dir::Up => f.upstream.send(&d.data),
                    Dir::Down => self.listen.send_to(&d.data, f.client),
                };
                if r.is_err() {
                    self.stats.send_errors += 1;
                }
            }
            Tag::Tcp {
                conn,
                seq,
                fin,
                attempt,
            } => {
                if !self.halves.contains_key(&conn) {
                    return;
                }
                if let Some(bit) = d.corrupted_bit {
                    // The receiver's checksum would reject it: resend the
                    // original bytes a round trip later.
                    if d.duplicate {
                        return;
                    }
                    let mut data = d.data;
                    data[(bit / 8) as usize] ^= 1 << (bit % 8);
                    self.schedule_retx(now, conn, seq, data, fin, attempt);
                    return;
                }
                let h = self.halves.get_mut(&conn).expect("checked above");
                h.deliver(seq, d.data, fin);
                if h.flush() == Io::Failed {
                    h.conn.abort();
                }
            }
        }
    }

    fn schedule_retx(
        &mut self,
        now: Duration,
        conn: u64,
        seq: u64,
        data: Vec<u8>,
        fin: bool,
        attempt: u32,
    ) {
        self.stats.tcp_retransmits += 1;
        self.retx.push(Reverse(Retx {
            at: now + self.rto(attempt),
            conn,
            seq,
            data,
            fin,
            attempt: attempt + 1,
        }));
    }

    fn send_segment(
        &mut self,
        now: Duration,
        conn: u64,
        seq: u64,
        data: Vec<u8>,
        fin: bool,
        attempt: u32,
    ) {
        let tag = Tag::Tcp {
            conn,
            seq,
            fin,
            attempt,
        };
        if let Verdict::Dropped { data, .. } =
            self.link
                .send_with_overhead(now, data, tag, self.p.tcp_overhead)
        {
            self.schedule_retx(now, conn, seq, data, fin, attempt);
        }
    }

    fn retransmit_due(&mut self, now: Duration) {
        while self.retx.peek().is_some_and(|Reverse(r)| r.at <= now) {
            let Reverse(r) = self.retx.pop().expect("peeked");
            if self.halves.contains_key(&r.conn) {
                self.retx_ready.push_back(r);
            }
        }
        // Like new segments, retransmissions wait for queue room rather than
        // being tail-dropped; they go before new data.
        while let Some(r) = self.retx_ready.front() {
            let wire = r.data.len() as u64 + self.p.tcp_overhead as u64;
            if self.link.queue_room(now) < wire {
                break;
            }
            let r = self.retx_ready.pop_front().expect("front");
            if self.halves.contains_key(&r.conn) {
                self.send_segment(now, r.conn, r.seq, r.data, r.fin, r.attempt);
            }
        }
    }

    /// Reads TCP sources and feeds segments to the link while its queue has
    /// room; retires finished or aborted connections.
    fn pump_tcp(&mut self, now: Duration) {
        if self.halves.is_empty() {
            return;
        }
        let ids: Vec<u64> = self.halves.keys().copied().collect();
        let wire = self.p.tcp_segment as u64 + self.p.tcp_overhead as u64;
        for id in ids {
            let mut segs = Vec::new();
            let retire = {
                let h = self.halves.get_mut(&id).expect("listed");
                if h.conn.aborted.load(Ordering::Relaxed) {
                    true
                } else if h.read_src(self.p.tcp_window, &mut self.buf) == Io::Failed {
                    h.conn.abort();
                    true
                } else {
                    // Room for whole segments only, so TCP never causes tail
                    // drops; waiting retransmissions go first.
                    let mut room = if self.retx_ready.is_empty() {
                        self.link.queue_room(now)
                    } else {
                        0
                    };
                    while room >= wire {
                        match h.next_segment(self.p.tcp_segment) {
                            Some(s) => {
                                room -= s.data.len() as u64 + self.p.tcp_overhead as u64;
                                segs.push(s);
                            }
                            None => break,
                        }
                    }
                    h.is_done()
                }
            };
            for s in segs {
                self.send_segment(now, id, s.seq, s.data, s.fin, 0);
            }
            if retire {
                self.retire(id);
            }
        }
    }

    fn retire(&mut self, id: u64) {
        if let Some(h) = self.halves.remove(&id) {
            if h.conn.finished.fetch_add(1, Ordering::SeqCst) == 1 {
                self.shared.tcp_open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
