//! The deterministic simulator of a DTU pair (after TigerBeetle's VOPR).
//!
//! One `u64` seed decides everything: the host's writes, flushes and policy
//! changes, the link's loss, duplication, reordering and corruption, link
//! outages, crashes and restarts of the primary (its nvbuf reduced to what
//! was flushed, with torn sectors) and of the remote, and the moments all of
//! that happens. It runs the real `dtu-proto` state machines, the real
//! nvbuf format and recovery code over an in-memory store, the real payload
//! codec and the `dtu-sim` link model, all in virtual time, in one thread.
//!
//! Invariants, checked as the run goes:
//! (a) every host write answered at `buffered` or later survives every
//!     crash and is on the replica once the faults heal;
//! (b) after every operation the remote applies, the replica equals the
//!     host's volume after exactly that prefix of its writes;
//! (c) the remote applies each seq once, in order;
//! (d) a write answered at `remote-stored` is synced on the replica at the
//!     moment of the answer;
//! (e) with the faults healed, everything drains within a bounded time.
//!
//! A violation names the seed, the step, the invariant and the last events;
//! the same seed replays the same run, which a hash of the event trace
//! proves.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dtu::nvbuf::{MemStore, Nvbuf, NvbufConfig, NvbufError, RecordHeader, Wait};
use dtu_proto::chunk::ChunkPlan;
use dtu_proto::codec::{decode_chunk, encode_chunk, EncodeOptions, Key};
use dtu_proto::frame::{self, Flush, Frame, Hello, Role, Write};
use dtu_proto::receiver::{Apply, Inbound};
use dtu_proto::sender::{OpKind, SenderConfig};
use dtu_proto::{AckPolicy, ChunkId, Receiver, Sender, Seq, Trigger};
use dtu_sim::link::{Link, LinkConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VOLUME: usize = 128 << 10;
const VOLUME_ID: [u8; 16] = *b"vopr-volume-0001";
const STEP: Duration = Duration::from_millis(1);
const CHUNK: usize = 8 << 10;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub seed: u64,
    pub steps: u64,
    pub trace_hash: String,
    pub writes: u64,
    pub acked: u64,
    pub primary_crashes: u64,
    pub remote_crashes: u64,
    pub outages: u64,
    pub nacks: u64,
}

/// An invariant that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub invariant: &'static str,
    pub detail: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} step {}: invariant {} violated: {}",
            self.seed, self.step, self.invariant, self.detail
        )?;
        writeln!(f, "last events:")?;
        for e in &self.trace {
            writeln!(f, "  {e}")?;
        }
        write!(
            f,
            "replay: cargo run --release -p dtu-vopr -- --seed {}",
            self.seed
        )
    }
}

/// What the seed may throw at the pair.
#[derive(Debug, Clone)]
pub struct Options {
    pub steps: u64,
    /// Steps at the end with every fault healed (invariant e).
    pub heal_steps: u64,
    /// Print every event.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 12_000,
            heal_steps: 20_000,
            verbose: false,
        }
    }
}

/// One host operation, as the host issued it.
#[derive(Debug, Clone)]
enum HostOp {
    Write { offset: usize, data: Vec<u8> },
    Flush,
}

struct Primary {
    nvbuf: Nvbuf<MemStore>,
    sender: Sender,
    carried_over: Seq,
    /// Records encoded but not yet appended (the nvbuf was full).
    backlog: VecDeque<(RecordHeader, Bytes)>,
    /// Host operations waiting for an answer: seq -> when.
    waiting: BTreeMap<Seq, u64>,
}

struct Remote {
    receiver: Receiver,
    replica: Vec<u8>,
    applied: Seq,
    synced: Seq,
    epoch_seen: u32,
}

struct World {
    seed: u64,
    rng: ChaCha8Rng,
    opts: Options,
    step: u64,
    t0: Instant,
    key: Key,
    /// Everything the host issued that still exists, by seq.
    history: BTreeMap<Seq, HostOp>,
    /// The highest seq answered at `buffered` or later.
    acked_durable: Seq,
    expected: Vec<u8>,
    expected_upto: Seq,
    primary: Option<Primary>,
    remote: Option<Remote>,
    /// The last crash image of the primary's nvbuf while it is down.
    primary_image: Option<Vec<u8>>,
    /// What a killed remote leaves on disk: replica, applied seq, epoch seen.
    remote_disk: Option<(Vec<u8>, Seq, u32)>,
    connected: bool,
    reconnect_at: u64,
    link_down_until: u64,
    up: Link,
    down: Link,
    policy: AckPolicy,
    trace: VecDeque<String>,
    hasher: crc32fast::Hasher,
    trace_len: u64,
    out: Outcome,
}

fn random_policy(rng: &mut ChaCha8Rng) -> AckPolicy {
    AckPolicy {
        trigger: Trigger::ALL[rng.gen_range(0..5)],
        delay: Duration::from_millis(if rng.gen_bool(0.2) {
            rng.gen_range(1..20)
        } else {
            0
        }),
        spoofing: rng.gen_bool(0.8),
        dirty_threshold: [0.0, 50.0, 75.0, 100.0][rng.gen_range(0..4)],
    }
}

fn link_config(rng: &mut ChaCha8Rng) -> LinkConfig {
    let mut c = LinkConfig::new(
        rng.gen_range(2..100) * 1_000_000,
        Duration::from_micros(rng.gen_range(100..20_000)),
    );
    c.loss = [0.0, 0.001, 0.01, 0.05][rng.gen_range(0..4)];
    c.duplicate = [0.0, 0.01, 0.05][rng.gen_range(0..3)];
    c.reorder = [0.0, 0.01, 0.1][rng.gen_range(0..3)];
    c.reorder_delay = Duration::from_millis(rng.gen_range(1..10));
    c.corrupt = [0.0, 0.001, 0.01][rng.gen_range(0..3)];
    c.queue_bytes = Some(4 << 20);
    c
}

/// A frame as it crosses the link: QUIC's AEAD means a damaged packet is
/// discarded, never delivered, so the link carries a checksum we check.
fn wrap(f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    let mut v = b.to_vec();
    v.extend_from_slice(&crc32fast::hash(&v).to_be_bytes());
    v
}

fn unwrap_packet(v: &[u8]) -> Option<Frame> {
    let (body, crc) = v.split_at(v.len().checked_sub(4)?);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return None;
    }
    let (f, _) = frame::decode_slice(body, frame::DEFAULT_MAX_FRAME).ok()??;
    Some(f)
}

impl World {
    fn new(seed: u64, opts: Options) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let up = Link::new(link_config(&mut rng), rng.gen()).expect("link config");
        let down = Link::new(link_config(&mut rng), rng.gen()).expect("link config");
        let policy = random_policy(&mut rng);
        let t0 = Instant::now();
        let mut w = World {
            seed,
            opts,
            step: 0,
            t0,
            key: Key::from_bytes(&[seed as u8; 32]),
            history: BTreeMap::new(),
            acked_durable: 0,
            expected: vec![0; VOLUME],
            expected_upto: 0,
            primary: None,
            remote: None,
            primary_image: None,
            remote_disk: None,
            connected: false,
            reconnect_at: 0,
            link_down_until: 0,
            up,
            down,
            policy,
            trace: VecDeque::new(),
            hasher: crc32fast::Hasher::new(),
            trace_len: 0,
            out: Outcome {
                seed,
                steps: 0,
                trace_hash: String::new(),
                writes: 0,
                acked: 0,
                primary_crashes: 0,
                remote_crashes: 0,
                outages: 0,
                nacks: 0,
            },
            rng,
        };
        let nv = Nvbuf::create_in(
            MemStore::new(4 << 20),
            &NvbufConfig::new(VOLUME_ID).with_size(4 << 20),
        )
        .expect("create the nvbuf");
        w.primary = Some(w.new_primary(nv, None));
        w.remote = Some(Remote {
            receiver: Receiver::new(0, 0, Duration::from_millis(100), t0),
            replica: vec![0; VOLUME],
            applied: 0,
            synced: 0,
            epoch_seen: 0,
        });
        w
    }

    fn now(&self) -> Instant {
        self.t0 + STEP * self.step as u32
    }

    fn vnow(&self) -> Duration {
        STEP * self.step as u32
    }

    fn event(&mut self, e: String) {
        let line = format!("{:>7} {e}", self.step);
        self.hasher.update(line.as_bytes());
        self.trace_len += 1;
        if self.opts.verbose {
            eprintln!("{line}");
        }
        self.trace.push_back(line);
        if self.trace.len() > 60 {
            self.trace.pop_front();
        }
    }

    fn fail(&self, invariant: &'static str, detail: String) -> Violation {
        Violation {
            seed: self.seed,
            step: self.step,
            invariant,
            detail,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn new_primary(
        &mut self,
        nvbuf: Nvbuf<MemStore>,
        recovery: Option<dtu::nvbuf::Recovery>,
    ) -> Primary {
        let now = self.now();
        let epoch = nvbuf.epoch();
        let first = recovery
            .as_ref()
            .and_then(|r| r.first_seq)
            .unwrap_or_else(|| nvbuf.next_seq());
        let mut sender = Sender::new(
            SenderConfig {
                policy: self.policy,
                max_inflight_bytes: 1 << 20,
                retransmit_timeout: Some(Duration::from_millis(300)),
                heartbeat_interval: Duration::from_millis(100),
            },
            epoch,
            first,
            now,
        );
        if let Some(r) = recovery {
            let mut seqs: BTreeMap<Seq, (OpKind, u64)> = BTreeMap::new();
            for (h, _) in &r.records {
                let kind = if h.flags == 2 {
                    OpKind::Flush
                } else {
                    OpKind::Write
                };
                let e = seqs.entry(h.seq).or_insert((kind, 0));
                e.1 += h.length as u64;
            }
            for (seq, (kind, bytes)) in seqs {
                sender
                    .recover(seq, kind, bytes, now)
                    .expect("recovered seqs are contiguous");
            }
        }
        Primary {
            carried_over: nvbuf.next_seq() - 1,
            nvbuf,
            sender,
            backlog: VecDeque::new(),
            waiting: BTreeMap::new(),
        }
    }

    fn faults_allowed(&self) -> bool {
        self.step < self.opts.steps
    }

    fn run(mut self) -> Result<Outcome, Violation> {
        let total = self.opts.steps + self.opts.heal_steps;
        while self.step < total {
            self.step += 1;
            if self.faults_allowed() {
                self.inject_faults()?;
                self.host_step()?;
            } else {
                // Healing: everything comes back and the link is clean.
                self.link_down_until = 0;
                if self.primary.is_none() {
                    self.restart_primary()?;
                }
                if self.remote.is_none() {
                    self.restart_remote();
                }
            }
            self.primary_step()?;
            self.deliver()?;
            self.remote_step()?;
            self.connect_step()?;
            if !self.faults_allowed() && self.drained() {
                return self.finish();
            }
        }
        Err(self.fail(
            "e (liveness)",
            format!(
                "not drained {} ms after the faults healed: {:?}",
                self.opts.heal_steps,
                self.primary.as_ref().map(|p| p.sender.progress())
            ),
        ))
    }

    fn drained(&self) -> bool {
        match (&self.primary, &self.remote) {
            (Some(p), Some(r)) => {
                let prog = p.sender.progress();
                p.backlog.is_empty()
                    && prog.remote_stored == prog.highest
                    && r.synced == prog.highest
            }
            _ => false,
        }
    }

    fn finish(mut self) -> Result<Outcome, Violation> {
        // (a): everything that survived is on the replica.
        let mut want = vec![0u8; VOLUME];
        for op in self.history.values() {
            if let HostOp::Write { offset, data } = op {
                want[*offset..offset + data.len()].copy_from_slice(data);
            }
        }
        let replica = &self.remote.as_ref().expect("remote up").replica;
        if let Some(i) = replica.iter().zip(&want).position(|(a, b)| a != b) {
            return Err(self.fail(
                "a (durability)",
                format!("after healing, the replica differs from the host at byte {i}"),
            ));
        }
        let last = self.history.keys().next_back().copied().unwrap_or(0);
        if last < self.acked_durable {
            return Err(self.fail(
                "a (durability)",
                format!(
                    "seq {} was answered durable but the stream ends at {last}",
                    self.acked_durable
                ),
            ));
        }
        self.out.steps = self.step;
        self.out.trace_hash = format!("{:08x}-{}", self.hasher.clone().finalize(), self.trace_len);
        Ok(self.out)
    }

    fn inject_faults(&mut self) -> Result<(), Violation> {
        let r: f64 = self.rng.gen();
        if r < 0.0004 && self.primary.is_some() {
            self.crash_primary()?;
        } else if r < 0.0008 && self.remote.is_some() {
            self.crash_remote();
        } else if r < 0.0012 && self.link_down_until <= self.step {
            let len = self.rng.gen_range(10..3000);
            self.link_down_until = self.step + len;
            self.out.outages += 1;
            self.event(format!("link down for {len} ms"));
        } else if r < 0.0016 {
            self.policy = random_policy(&mut self.rng);
            let p = self.policy;
            self.event(format!("policy {p:?}"));
            if let Some(pr) = &mut self.primary {
                pr.sender.set_policy(p, self.t0 + STEP * self.step as u32);
            }
        } else if r < 0.003 {
            let d = self.rng.gen_range(0.0..100.0);
            let now = self.now();
            if let Some(pr) = &mut self.primary {
                pr.sender.report_dirty(d, now);
            }
        }
        // Restarts.
        if self.primary.is_none() && self.rng.gen_bool(0.01) {
            self.restart_primary()?;
        }
        if self.remote.is_none() && self.rng.gen_bool(0.01) {
            self.restart_remote();
        }
        Ok(())
    }

    fn crash_primary(&mut self) -> Result<(), Violation> {
        let p = self.primary.take().expect("primary up");
        let torn = self.rng.gen_bool(0.5);
        let image = {
            let store = p.nvbuf.store();
            if torn {
                store.crash_image_torn(self.rng.gen())
            } else {
                store.crash_image()
            }
        };
        self.out.primary_crashes += 1;
        self.event(format!(
            "primary crashes (torn: {torn}); {} host ops unanswered",
            p.waiting.len()
        ));
        self.primary_image = Some(image);
        self.disconnect();
        Ok(())
    }

    fn restart_primary(&mut self) -> Result<(), Violation> {
        let image = self
            .primary_image
            .take()
            .expect("image of the crashed primary");
        let (nv, rec) = match Nvbuf::open_in(MemStore::from_image(image), VOLUME_ID) {
            Ok(x) => x,
            Err(e) => {
                return Err(self.fail(
                    "a (durability)",
                    format!("the crashed nvbuf does not reopen: {e}"),
                ))
            }
        };
        let survived = nv.next_seq() - 1;
        self.event(format!(
            "primary restarts: epoch {}, recovered seqs {:?}..={:?}, next seq {}",
            nv.epoch(),
            rec.first_seq,
            rec.last_seq,
            survived + 1
        ));
        // (a): nothing answered durable may be lost by a crash.
        if self.acked_durable > survived {
            return Err(self.fail(
                "a (durability)",
                format!("seq {} was answered at buffered or later, but the nvbuf recovered only up to {survived}", self.acked_durable),
            ));
        }
        // Every recovered record must hold exactly what the host wrote.
        for (h, payload) in &rec.records {
            let Some((Frame::Write(w), _)) = frame::decode_slice(payload, frame::DEFAULT_MAX_FRAME)
                .ok()
                .flatten()
            else {
                continue;
            };
            let plain = decode_chunk(&w.chunk, w.id, w.offset, Some(&self.key)).map_err(|e| {
                self.fail(
                    "a (durability)",
                    format!("recovered seq {} does not decode: {e}", h.seq),
                )
            })?;
            match self.history.get(&h.seq) {
                Some(HostOp::Write { offset, data }) => {
                    let start = w.offset as usize - offset;
                    if data[start..start + plain.len()] != plain[..] {
                        return Err(self.fail(
                            "a (durability)",
                            format!(
                                "recovered seq {} holds other data than the host wrote",
                                h.seq
                            ),
                        ));
                    }
                }
                other => {
                    return Err(self.fail(
                        "a (durability)",
                        format!("recovered seq {} is {other:?} in the host's history", h.seq),
                    ))
                }
            }
        }
        // Writes after what survived are gone; the host was never told
        // they were durable.
        self.history.split_off(&(survived + 1));
        if self.expected_upto > survived {
            return Err(self.fail(
                "b (prefix)",
                format!(
                    "the replica applied seq {} but the primary only kept {survived}",
                    self.expected_upto
                ),
            ));
        }
        let p = self.new_primary(nv, Some(rec));
        self.primary = Some(p);
        Ok(())
    }

    fn crash_remote(&mut self) {
        let r = self.remote.take().expect("remote up");
        // A killed process leaves what it wrote in the page cache and its
        // state file at the last applied seq.
        self.remote_disk = Some((r.replica, r.applied, r.epoch_seen));
        self.out.remote_crashes += 1;
        self.event(format!("remote crashes at applied seq {}", r.applied));
        self.disconnect();
    }

    fn restart_remote(&mut self) {
        let (replica, applied, epoch_seen) = self.remote_disk.take().expect("remote disk");
        self.event(format!("remote restarts at applied seq {applied}"));
        self.remote = Some(Remote {
            receiver: Receiver::new(applied, epoch_seen, Duration::from_millis(100), self.now()),
            replica,
            applied,
            synced: applied,
            epoch_seen,
        });
    }

    fn disconnect(&mut self) {
        if self.connected {
            self.connected = false;
            let now = self.now();
            if let Some(p) = &mut self.primary {
                p.sender.on_disconnected(now);
            }
            if let Some(r) = &mut self.remote {
                r.receiver.on_disconnected();
            }
            self.event("disconnected".into());
        }
        self.reconnect_at = self.step + self.rng.gen_range(5..200);
    }

    fn connect_step(&mut self) -> Result<(), Violation> {
        if self.connected || self.step < self.reconnect_at || self.link_down_until > self.step {
            return Ok(());
        }
        let now = self.now();
        let (Some(p), Some(r)) = (&mut self.primary, &mut self.remote) else {
            return Ok(());
        };
        let hello = |role, epoch, stored_seq| Hello {
            version: dtu_proto::PROTOCOL_VERSION,
            role,
            volume_id: VOLUME_ID,
            volume_size: VOLUME as u64,
            block_size: 4096,
            features: 0,
            epoch,
            stored_seq,
            key_fingerprint: 0,
            flags: 0,
        };
        let ours = hello(Role::Remote, r.epoch_seen, r.synced);
        let theirs = hello(Role::Primary, p.sender.epoch(), p.carried_over);
        match r.receiver.on_hello(&ours, &theirs, now) {
            Ok(reply) => {
                r.epoch_seen = theirs.epoch;
                if let Err(e) = p.sender.on_connected(reply.stored_seq, now) {
                    let detail = e.to_string();
                    return Err(self.fail(
                        "b (prefix)",
                        format!("the primary refuses the remote's position: {detail}"),
                    ));
                }
                self.connected = true;
                let stored = reply.stored_seq;
                self.event(format!("connected; remote stored through {stored}"));
                Ok(())
            }
            Err(e) => {
                let detail = e.to_string();
                Err(self.fail(
                    "a (durability)",
                    format!("the remote refuses the restarted primary: {detail}"),
                ))
            }
        }
    }

    fn host_step(&mut self) -> Result<(), Violation> {
        let Some(p) = &mut self.primary else {
            return Ok(());
        };
        if p.waiting.len() >= 8 || !p.backlog.is_empty() || !self.rng.gen_bool(0.05) {
            return Ok(());
        }
        let now = self.t0 + STEP * self.step as u32;
        let epoch = p.sender.epoch();
        if self.rng.gen_bool(0.1) {
            let seq = p.sender.submit(OpKind::Flush, 0, now);
            let f = Frame::Flush(Flush { seq, epoch });
            p.backlog.push_back((
                RecordHeader {
                    seq,
                    epoch,
                    offset: 0,
                    length: 0,
                    flags: 2,
                    chunk_index: 0,
                    chunk_count: 1,
                },
                f.to_bytes(),
            ));
            p.waiting.insert(seq, self.step);
            self.history.insert(seq, HostOp::Flush);
            self.event(format!("host flush seq {seq}"));
            return Ok(());
        }
        let len = self.rng.gen_range(1..=64) * 512;
        let offset = self.rng.gen_range(0..(VOLUME - len) / 512) * 512;
        let fill: u8 = self.rng.gen();
        let data: Vec<u8> = if self.rng.gen_bool(0.1) {
            vec![0; len]
        } else {
            (0..len)
                .map(|i| fill.wrapping_add((i / 97) as u8))
                .collect()
        };
        let seq = p.sender.submit(OpKind::Write, len as u64, now);
        let plan = ChunkPlan::new(offset as u64, len, CHUNK);
        for s in plan.spans() {
            let id = ChunkId {
                epoch,
                seq,
                index: s.index,
            };
            let chunk = encode_chunk(
                &data[s.range.clone()],
                id,
                s.offset,
                &EncodeOptions {
                    compress: true,
                    key: Some(&self.key),
                },
            );
            let f = Frame::Write(Write {
                id,
                count: plan.count(),
                offset: s.offset,
                chunk,
            });
            p.backlog.push_back((
                RecordHeader {
                    seq,
                    epoch,
                    offset: s.offset,
                    length: s.range.len() as u32,
                    flags: 1,
                    chunk_index: s.index,
                    chunk_count: plan.count(),
                },
                f.to_bytes(),
            ));
        }
        p.waiting.insert(seq, self.step);
        self.history.insert(seq, HostOp::Write { offset, data });
        self.out.writes += 1;
        self.event(format!("host write seq {seq} at {offset}+{len}"));
        Ok(())
    }

    fn primary_step(&mut self) -> Result<(), Violation> {
        let now = self.now();
        let vnow = self.vnow();
        let link_up = self.link_down_until <= self.step && self.connected;
        let Some(p) = &mut self.primary else {
            return Ok(());
        };
        // Append what fits, then one flush for all of it (group commit).
        let mut appended = None;
        while let Some((h, f)) = p.backlog.front() {
            match p.nvbuf.append(h, f, Instant::now(), Wait::No) {
                Ok(lsn) => {
                    appended = Some(lsn);
                    p.backlog.pop_front();
                }
                Err(NvbufError::Full { .. }) => break,
                Err(e) => panic!("seed {}: nvbuf append: {e}", self.seed),
            }
        }
        if let Some(lsn) = appended {
            p.nvbuf.sync_to(lsn).expect("memory store flush");
            if let Some(d) = p.nvbuf.durable_seq() {
                p.sender.on_buffered(d, now);
            }
        }
        if p.sender.poll_timeout().is_some_and(|t| t <= now) {
            p.sender.handle_timeout(now);
        }
        if link_up {
            while let Some(seq) = p.sender.poll_send(now) {
                let records = match p.nvbuf.read_seq(seq) {
                    Ok(r) => r,
                    Err(NvbufError::NotFound { .. }) => continue,
                    Err(e) => panic!("nvbuf read: {e}"),
                };
                for (_, payload) in records {
                    let f = frame::decode_slice(&payload, frame::DEFAULT_MAX_FRAME)
                        .expect("records hold frames")
                        .expect("whole frames")
                        .0;
                    let _ = self.up.send(vnow, wrap(&f));
                }
                p.sender.on_sent(seq, now);
            }
            while let Some(f) = p.sender.poll_transmit() {
                let _ = self.up.send(vnow, wrap(&f));
            }
        }
        // Answers: check (d) and record what the host now counts on.
        let mut answered = Vec::new();
        while let Some(c) = p.sender.poll_completion() {
            p.waiting.remove(&c.seq);
            answered.push(c);
        }
        let stored = p.sender.progress().remote_stored;
        if stored >= p.nvbuf.first_unreleased_seq() {
            p.nvbuf.release_through(stored);
        }
        for c in answered {
            self.out.acked += 1;
            if c.trigger >= Trigger::Buffered {
                self.acked_durable = self.acked_durable.max(c.seq);
            }
            if c.trigger == Trigger::RemoteStored {
                let synced = self
                    .remote
                    .as_ref()
                    .map_or(self.remote_disk.as_ref().map_or(0, |d| d.1), |r| r.synced);
                if synced < c.seq {
                    return Err(self.fail("d (true ack)", format!("seq {} answered at remote-stored while the replica is synced only to {synced}", c.seq)));
                }
            }
            self.event(format!("answer seq {} at {}", c.seq, c.trigger));
        }
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), Violation> {
        let vnow = self.vnow();
        let now = self.now();
        let down = self.link_down_until > self.step;
        while let Some(d) = self.up.poll(vnow) {
            if down || !self.connected {
                continue;
            }
            let Some(f) = unwrap_packet(&d.data) else {
                continue;
            };
            let Some(r) = &mut self.remote else { continue };
            if let Inbound::Decode(w) = r.receiver.on_frame(f, now) {
                let res = decode_chunk(&w.chunk, w.id, w.offset, Some(&self.key));
                if res.is_err() {
                    self.out.nacks += 1;
                }
                r.receiver.on_decoded(&w, res);
            }
        }
        while let Some(d) = self.down.poll(vnow) {
            if down || !self.connected {
                continue;
            }
            let Some(f) = unwrap_packet(&d.data) else {
                continue;
            };
            let Some(p) = &mut self.primary else { continue };
            if let Err(e) = p.sender.on_frame(&f, now) {
                let detail = e.to_string();
                return Err(self.fail(
                    "b (prefix)",
                    format!("the primary refuses an ack: {detail}"),
                ));
            }
        }
        Ok(())
    }

    fn remote_step(&mut self) -> Result<(), Violation> {
        let now = self.now();
        let vnow = self.vnow();
        let link_up = self.link_down_until <= self.step && self.connected;
        let Some(r) = &mut self.remote else {
            return Ok(());
        };
        let mut applied_any = false;
        while let Some(op) = r.receiver.poll_apply() {
            let seq = op.seq();
            // (c)
            if seq != r.applied + 1 {
                let applied = r.applied;
                return Err(self.fail("c (order)", format!("applied seq {seq} after {applied}")));
            }
            if let Apply::Write { chunks, .. } = &op {
                for (off, data) in chunks {
                    let off = *off as usize;
                    r.replica[off..off + data.len()].copy_from_slice(data);
                }
            }
            r.applied = seq;
            r.receiver.on_applied(&op);
            applied_any = true;
            // (b): the model applies the host's op for this seq.
            if seq != self.expected_upto + 1 {
                let upto = self.expected_upto;
                return Err(self.fail(
                    "b (prefix)",
                    format!("replica applied seq {seq}, the model is at {upto}"),
                ));
            }
            match self.history.get(&seq) {
                Some(HostOp::Write { offset, data }) => {
                    self.expected[*offset..offset + data.len()].copy_from_slice(data)
                }
                Some(HostOp::Flush) => {}
                None => {
                    return Err(self.fail(
                        "b (prefix)",
                        format!("replica applied seq {seq}, which the host never issued"),
                    ))
                }
            }
            self.expected_upto = seq;
            if r.replica != self.expected {
                let i = r
                    .replica
                    .iter()
                    .zip(&self.expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(self.fail(
                    "b (prefix)",
                    format!(
                        "after seq {seq} the replica differs from the host's volume at byte {i}"
                    ),
                ));
            }
        }
        // The applier syncs what it applied every few milliseconds.
        if applied_any || (self.step.is_multiple_of(4) && r.synced < r.applied) {
            r.synced = r.applied;
            r.receiver.on_synced(r.applied);
        }
        if r.receiver.poll_timeout().is_some_and(|t| t <= now) {
            r.receiver.handle_timeout(now);
        }
        while let Some(f) = r.receiver.poll_transmit() {
            if link_up {
                let _ = self.down.send(vnow, wrap(&f));
            }
        }
        Ok(())
    }
}

/// Runs one seed.
pub fn run(seed: u64, opts: Options) -> Result<Outcome, Violation> {
    World::new(seed, opts).run()
}

/// A short summary line.
pub fn summary(o: &Outcome) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "seed {}: {} steps, {} writes, {} answers, {} primary crashes, {} remote crashes, {} outages, {} nacks, trace {}",
        o.seed, o.steps, o.writes, o.acked, o.primary_crashes, o.remote_crashes, o.outages, o.nacks, o.trace_hash
    );
    s
}
