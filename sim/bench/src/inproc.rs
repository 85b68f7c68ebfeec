//! A DTU pair in the benchmark's own process, built from
//! `dtu::inproc` (as `dtu demo` builds its own): the remote, the in-process
//! link emulator (`dtu_sim::relay::Relay`, the engine of `linkemu`) with a
//! preset, and the primary, each startable on its own so that a scenario
//! can run the primary with the link down, restart it, or put iperf3's TCP
//! through the very relay the DTUs use. Also: a writer that streams
//! pre-generated blocks into the primary with a bounded number of
//! unanswered writes, and waits on the remote's stored seq.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu::inproc::{preset_tuning, primary_status, remote_status, PairSetup};
use dtu::primary::Primary;
use dtu::remote::Remote;
use dtu::status::{ConnectionState, PrimaryStatus, RemoteStatus};
use dtu::transport::{Congestion, LinkTuning};
use dtu_proto::AckPolicy;
use dtu_sim::host::DataGen;
use dtu_sim::presets::Preset;
use dtu_sim::relay::{Relay, RelayConfig, RelayStats};

use super::tools::{free_port_pair, wait_for};
use super::{BenchError, Result};

/// What to start.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// Emulated link preset; `None`: the primary talks to the remote directly.
    pub preset: Option<String>,
    /// The relay also carries TCP, to the remote's port number (for iperf3).
    pub tcp: bool,
    pub seed: u64,
    pub volume_size: u64,
    pub nvbuf_size: u64,
    pub compress: bool,
    /// Encode workers (primary) and decode workers (remote).
    pub workers: usize,
    pub policy: AckPolicy,
    /// Congestion controller; `None`: the preset's tuning (cubic).
    pub congestion: Option<Congestion>,
    /// A local copy (`source.img` in the pair's directory) and the initial
    /// sync for a replica never synced; `None`: no local copy.
    pub local: Option<dtu_proto::generation::InitialSync>,
    /// `nvbuf.overflow` (the primary's default without it).
    pub overflow: Option<dtu::primary::Overflow>,
    /// Start the primary restoring its local copy from the remote.
    pub restore_from_remote: bool,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            preset: None,
            tcp: false,
            seed: 1,
            volume_size: 256 << 20,
            nvbuf_size: 64 << 20,
            compress: true,
            workers: 2,
            policy: spoof_always(),
            congestion: None,
            local: None,
            overflow: None,
            restore_from_remote: false,
        }
    }
}

/// `buffered` whatever the host's dirty %: the host runs at nvbuf speed
/// and the link drains behind it.
pub fn spoof_always() -> AckPolicy {
    AckPolicy {
        dirty_threshold: 0.0,
        ..AckPolicy::default()
    }
}

/// The pair and its files.
pub struct InprocPair {
    pub dir: tempfile::TempDir,
    pub cfg: PairConfig,
    pub setup: PairSetup,
    pub preset: Option<Preset>,
    pub tuning: LinkTuning,
    /// UDP for the remote, TCP for iperf3's server.
    pub remote_port: u16,
    /// Where the relay listens (reserved up front, so the primary can be
    /// started before the relay exists: the link is down).
    pub relay_port: u16,
    pub relay: Option<Relay>,
    pub remote: Option<Remote>,
    pub primary: Option<Arc<Primary>>,
}

impl InprocPair {
    /// Files, keys and ports; nothing running yet.
    pub fn new(cfg: PairConfig) -> Result<InprocPair> {
        let dir = tempfile::Builder::new()
            .prefix("dtu-bench-")
            .tempdir()
            .map_err(|e| BenchError::io("temp dir", e))?;
        let preset = match &cfg.preset {
            Some(name) => Some(dtu_sim::presets::get(name).map_err(BenchError::dtu)?),
            None => None,
        };
        let mut tuning = match &preset {
            Some(p) => preset_tuning(p),
            None => LinkTuning {
                // No emulated link: unknown (fast) rate, loopback RTT.
                rate_bps: 0,
                rtt: Duration::from_millis(1),
                ..LinkTuning::default()
            },
        };
        if let Some(c) = cfg.congestion {
            tuning.congestion = c;
        }
        let setup =
            PairSetup::generate(*b"dtu-bench-volume", cfg.volume_size).map_err(BenchError::dtu)?;
        Ok(InprocPair {
            remote_port: free_port_pair()?,
            relay_port: free_port_pair()?,
            dir,
            cfg,
            setup,
            preset,
            tuning,
            relay: None,
            remote: None,
            primary: None,
        })
    }

    /// New pair with remote, relay (if a preset) and primary running and
    /// connected.
    pub fn start(cfg: PairConfig) -> Result<InprocPair> {
        let mut p = InprocPair::new(cfg)?;
        p.start_remote()?;
        p.start_relay()?;
        p.start_primary()?;
        p.wait_connected(Duration::from_secs(30))?;
        Ok(p)
    }

    fn remote_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.remote_port).into()
    }

    pub fn start_remote(&mut self) -> Result<()> {
        let mut o = self
            .setup
            .remote_options(self.remote_addr(), self.tuning, self.dir.path());
        o.workers = self.cfg.workers;
        self.remote = Some(Remote::start(o).map_err(BenchError::dtu)?);
        Ok(())
    }

    /// Starts the emulated link (nothing without a preset).
    pub fn start_relay(&mut self) -> Result<()> {
        let Some(preset) = &self.preset else {
            return Ok(());
        };
        let mut rc = RelayConfig::new(
            ([127, 0, 0, 1], self.relay_port).into(),
            self.remote_addr(),
            preset.duplex(),
        );
        rc.seed = self.cfg.seed;
        rc.tcp = self.cfg.tcp;
        self.relay =
            Some(Relay::start(rc).map_err(|e| BenchError::io("starting the link emulator", e))?);
        Ok(())
    }

    /// Where the primary sends: the relay's port with a preset, else the remote.
    pub fn link_addr(&self) -> SocketAddr {
        if self.preset.is_some() {
            ([127, 0, 0, 1], self.relay_port).into()
        } else {
            self.remote_addr()
        }
    }

    pub fn start_primary(&mut self) -> Result<()> {
        let mut o = self.setup.primary_options(
            self.link_addr(),
            self.tuning,
            self.dir.path(),
            self.cfg.policy,
        );
        o.mirror.overflow = self.cfg.overflow;
        match self.cfg.local {
            Some(initial) => o.mirror.initial_sync = initial,
            None => o.local = None,
        }
        o.nvbuf_size = self.cfg.nvbuf_size;
        o.workers = self.cfg.workers;
        o.compress = self.cfg.compress;
        o.restore_from_remote = self.cfg.restore_from_remote;
        self.primary = Some(Arc::new(Primary::start(o).map_err(BenchError::dtu)?));
        Ok(())
    }

    pub fn wait_connected(&self, limit: Duration) -> Result<()> {
        wait_for("the primary to connect", limit, || {
            Ok(self.status().connection == ConnectionState::Connected)
        })
    }

    pub fn primary(&self) -> &Arc<Primary> {
        self.primary.as_ref().expect("the primary is running")
    }

    pub fn remote(&self) -> &Remote {
        self.remote.as_ref().expect("the remote is running")
    }

    pub fn status(&self) -> PrimaryStatus {
        primary_status(self.primary())
    }

    pub fn remote_status(&self) -> RemoteStatus {
        remote_status(self.remote())
    }

    pub fn relay_stats(&self) -> Option<RelayStats> {
        self.relay.as_ref().map(Relay::stats)
    }

    /// Waits until the replica has stored `seq`; returns when it saw it.
    pub fn wait_stored(&self, seq: u64, limit: Duration) -> Result<Instant> {
        let end = Instant::now() + limit;
        let remote = self.remote();
        loop {
            if remote.stored_seq() >= seq {
                return Ok(Instant::now());
            }
            if Instant::now() >= end {
                return Err(BenchError::Timeout {
                    after: limit,
                    what: format!(
                        "the replica to store seq {seq} (at {})",
                        remote.stored_seq()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the replica has every write the primary has numbered.
    pub fn wait_caught_up(&self, limit: Duration) -> Result<Instant> {
        let highest = self.status().highest_seq;
        self.wait_stored(highest, limit)
    }

    /// Stops the primary; what it has not sent stays in its nvbuf.
    pub fn stop_primary(&mut self) -> Result<()> {
        if let Some(p) = self.primary.take() {
            match Arc::try_unwrap(p) {
                Ok(p) => p.shutdown(),
                Err(_) => return Err(BenchError::Dtu("the primary is still shared".into())),
            }
        }
        Ok(())
    }

    /// Primary first, so it does not spend its last moments reconnecting.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_primary()?;
        if let Some(r) = self.remote.take() {
            r.shutdown();
        }
        if let Some(l) = self.relay.take() {
            l.shutdown();
        }
        Ok(())
    }
}

/// A pool of pre-generated blocks handed out round-robin, so that
/// generating data costs nothing during a measurement (`Bytes` clones
/// share the buffer).
#[derive(Clone)]
pub struct Blocks {
    blocks: Vec<Bytes>,
    next: usize,
}

impl Blocks {
    /// `count` blocks of `size` bytes that snap compresses about `ratio`:1.
    pub fn new(size: usize, ratio: f64, count: usize, seed: u64) -> Blocks {
        let mut g = DataGen::new(size, ratio, seed);
        Blocks {
            blocks: (0..count.max(1))
                .map(|_| Bytes::from(g.next_block()))
                .collect(),
            next: 0,
        }
    }

    pub fn size(&self) -> usize {
        self.blocks[0].len()
    }

    pub fn next_block(&mut self) -> Bytes {
        let b = self.blocks[self.next].clone();
        self.next = (self.next + 1) % self.blocks.len();
        b
    }
}

/// What [`write_stream`] did.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub first: Instant,
    pub last_answer: Instant,
    pub bytes: u64,
    pub last_seq: u64,
}

/// Writes `total` bytes in blocks at sequential offsets (wrapping at the
/// volume's end), with at most `depth` writes unanswered.
pub fn write_stream(p: &Primary, blocks: &mut Blocks, total: u64, depth: usize) -> Result<Written> {
    let size = blocks.size() as u64;
    let slots = (p.volume_size() / size).max(1);
    let mut pending = VecDeque::new();
    let (mut bytes, mut last_seq, mut i) = (0u64, 0u64, 0u64);
    let first = Instant::now();
    while bytes < total {
        if pending.len() >= depth.max(1) {
            let a = pending
                .pop_front()
                .map(|x: dtu::primary::Pending| x.wait())
                .expect("non-empty")
                .map_err(BenchError::dtu)?;
            last_seq = last_seq.max(a.seq);
        }
        let off = (i % slots) * size;
        pending.push_back(p.write(off, blocks.next_block()).map_err(BenchError::dtu)?);
        bytes += size;
        i += 1;
    }
    for x in pending {
        last_seq = last_seq.max(x.wait().map_err(BenchError::dtu)?.seq);
    }
    Ok(Written {
        first,
        last_answer: Instant::now(),
        bytes,
        last_seq,
    })
}
