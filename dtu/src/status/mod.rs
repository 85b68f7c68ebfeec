//! Status: the numbers an operator looks at, as plain data, rendered three
//! ways: a table in the spirit of `drbdadm status` (`table`), JSON for
//! scripts (serde), and the Prometheus/OpenMetrics exposition for
//! monitoring (`prometheus`). Each side builds its own status (the
//! primary in `primary::status`, the remote in `remote::status`); this
//! module knows nothing of their internals.

mod prometheus;
mod table;

use serde::{Deserialize, Serialize};

pub use self::prometheus::{encode_openmetrics, OPENMETRICS_CONTENT_TYPE};

/// Either side's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Status {
    /// The primary DTU's status.
    Primary(Box<PrimaryStatus>),
    /// The remote DTU's status.
    Remote(Box<RemoteStatus>),
}

/// Where the link to the peer stands. Serialized as the lowercase word
/// (`"connected"`), as the status always was.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// The primary is trying to reach the remote.
    Connecting,
    /// A session with the peer is up.
    Connected,
    /// The remote refused this primary; retrying will not help by itself.
    Refused,
    /// The remote waits for a primary.
    Waiting,
}

impl ConnectionState {
    /// Every state, in the order the Prometheus exposition lists them.
    pub const ALL: [ConnectionState; 4] = [
        ConnectionState::Connecting,
        ConnectionState::Connected,
        ConnectionState::Refused,
        ConnectionState::Waiting,
    ];

    /// The lowercase word the status shows (and serializes) for the state.
    pub fn name(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Refused => "refused",
            ConnectionState::Waiting => "waiting",
        }
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One value per acknowledgement trigger, named as the triggers are.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ByTrigger<T> {
    /// The value at `received`: the write is in the primary DTU's memory.
    pub received: T,
    /// The value at `buffered`: the write is durable in the primary's nvbuf.
    pub buffered: T,
    /// The value at `sent`: the write is handed to the link.
    pub sent: T,
    /// The value at `remote-received`: the remote DTU has the write in memory.
    pub remote_received: T,
    /// The value at `remote-stored`: written and synced on the replica.
    pub remote_stored: T,
}

impl<T> ByTrigger<T> {
    /// From an array indexed by `Trigger::index`.
    pub fn from_array(a: [T; 5]) -> Self {
        let [received, buffered, sent, remote_received, remote_stored] = a;
        ByTrigger {
            received,
            buffered,
            sent,
            remote_received,
            remote_stored,
        }
    }

    /// `(trigger name, value)` in the triggers' order.
    pub fn named(&self) -> [(&'static str, &T); 5] {
        [
            ("received", &self.received),
            ("buffered", &self.buffered),
            ("sent", &self.sent),
            ("remote-received", &self.remote_received),
            ("remote-stored", &self.remote_stored),
        ]
    }
}

/// Host operations answered per trigger.
pub type AnsweredBy = ByTrigger<u64>;

/// The fixed upper bounds (seconds) of the latency histograms in the
/// Prometheus exposition and in [`LatencyStats::buckets`]; `+Inf` follows.
/// From 100 µs (a `received` answer) to 10 min (a long outage).
pub const LATENCY_BUCKETS_S: [f64; 22] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 600.0,
];

/// A latency distribution: quantiles precise to 1 % (from an HdrHistogram)
/// and counts at the fixed bounds of [`LATENCY_BUCKETS_S`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencyStats {
    /// Values recorded since start.
    pub count: u64,
    /// Sum of every value recorded, seconds.
    pub sum_s: f64,
    /// Median, milliseconds; `None` before the first value.
    pub p50_ms: Option<f64>,
    /// 90th percentile, milliseconds; `None` before the first value.
    pub p90_ms: Option<f64>,
    /// 99th percentile, milliseconds; `None` before the first value.
    pub p99_ms: Option<f64>,
    /// Largest value recorded, milliseconds; `None` before the first value.
    pub max_ms: Option<f64>,
    /// Values above the histogram's highest trackable value (one hour),
    /// counted as one hour.
    pub saturated: u64,
    /// Cumulative: `buckets[i]` values at or below `LATENCY_BUCKETS_S[i]`
    /// (within the histogram's 1 % resolution); `count` is the `+Inf` one.
    pub buckets: Vec<u64>,
}

/// QUIC's own view of the link, summed over every connection since start
/// (counters) and from the current connection (path figures). dtu's own
/// retransmits and nacks are beside it in the status; these are the
/// transport's packet losses, which QUIC repairs without dtu seeing them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct QuicStatus {
    /// QUIC connections established with the peer since start.
    pub connections: u64,
    /// QUIC packets sent to the peer.
    pub sent_packets: u64,
    /// QUIC packets declared lost (QUIC resent their data; dtu did not see it).
    pub lost_packets: u64,
    /// Bytes in the QUIC packets declared lost.
    pub lost_bytes: u64,
    /// Times QUIC's congestion controller reduced its window.
    pub congestion_events: u64,
    /// Times QUIC saw its larger packets vanish (an MTU black hole) and went
    /// back to the base MTU.
    pub black_holes_detected: u64,
    /// UDP payload bytes QUIC sent to the peer, headers and resends included.
    pub udp_tx_bytes: u64,
    /// UDP payload bytes QUIC received from the peer.
    pub udp_rx_bytes: u64,
    /// UDP datagrams QUIC sent to the peer.
    pub udp_tx_datagrams: u64,
    /// UDP datagrams QUIC received from the peer.
    pub udp_rx_datagrams: u64,
    /// QUIC's path MTU now, bytes; `None` while no connection is up.
    pub path_mtu: Option<u16>,
    /// QUIC's congestion window now, bytes; `None` while no connection is up.
    pub cwnd_bytes: Option<u64>,
    /// QUIC's RTT estimate now, milliseconds; `None` while no connection is up.
    pub rtt_ms: Option<f64>,
}

impl QuicStatus {
    /// Lost packets as a share of packets sent, in percent.
    pub fn loss_pct(&self) -> f64 {
        if self.sent_packets == 0 {
            0.0
        } else {
            self.lost_packets as f64 / self.sent_packets as f64 * 100.0
        }
    }
}

/// The primary's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrimaryStatus {
    /// The volume's id, 32 hex digits.
    pub volume: String,
    /// The volume's size, bytes.
    pub volume_size: u64,
    /// This primary's epoch: bumped and kept in the nvbuf at every start.
    pub epoch: u32,
    /// Seconds since this DTU started.
    pub uptime_s: f64,
    /// Where the link to the remote stands.
    pub connection: ConnectionState,
    /// The remote's address while connected; `None` otherwise.
    pub peer: Option<String>,
    /// How long the link is up, the attempt and last error, or the refusal.
    pub connection_detail: Option<String>,
    /// dtu's smoothed heartbeat round trip, milliseconds; `None` until known.
    pub rtt_ms: Option<f64>,
    /// What QUIC sends to the remote (UDP payload), bits per second, smoothed.
    pub link_throughput_bps: f64,
    /// Host write payload accepted, bits per second, smoothed.
    pub host_throughput_bps: f64,
    /// Lanes (QUIC streams carrying records) the primary opens to the remote.
    pub lanes: usize,
    /// Threads that compress and seal host writes into records for the nvbuf.
    pub encode_workers: usize,
    /// Payload bytes sent on the lanes and not yet stored by the remote.
    pub inflight_bytes: u64,
    /// nvbuf bytes holding records not yet released (not yet remote-stored).
    pub buffered_bytes: u64,
    /// Size of the nvbuf ring, bytes.
    pub nvbuf_capacity: u64,
    /// `buffered_bytes` as a percentage of `nvbuf_capacity`.
    pub nvbuf_fill_pct: f64,
    /// Writes waiting for nvbuf space right now (above 0: the nvbuf is full).
    pub nvbuf_waiting_writers: u64,
    /// Times since start a write had to wait for nvbuf space.
    pub nvbuf_full_waits: u64,
    /// Records made durable per nvbuf flush (group commit); 0 before any flush.
    pub records_per_flush: f64,
    /// Age of the oldest operation the remote has not stored, seconds; `None`
    /// when it has stored them all.
    pub oldest_unreplicated_s: Option<f64>,
    /// The trigger configured, by name (`received` … `remote-stored`).
    pub trigger: String,
    /// The trigger answering now: `remote-stored` unless spoofing is active;
    /// `buffered (the link is down)` once the link has been down too long.
    pub effective_trigger: String,
    /// Wait after the trigger before answering the host, milliseconds.
    pub delay_ms: f64,
    /// The spoofing switch; off, every write waits for remote-stored.
    pub spoofing_enabled: bool,
    /// Whether host writes are answered before remote-stored right now.
    pub spoofing_active: bool,
    /// Host dirty cache share, percent, at or above which spoofing is in force.
    pub dirty_threshold_pct: f64,
    /// The host's last reported dirty cache share, percent; `None` until then.
    pub dirty_pct: Option<f64>,
    /// Host operations answered per trigger.
    pub answered: AnsweredBy,
    /// Host bytes written per encoded byte; 1.0 before anything is encoded.
    pub compression_ratio: f64,
    /// Seqs dtu sent again (after a nack or a reconnect); QUIC's own
    /// retransmissions are in `quic`.
    pub retransmits: u64,
    /// Chunks the remote refused (checksum or decode) and asked for again.
    pub nacks: u64,
    /// Host write operations accepted since start.
    pub writes: u64,
    /// Host read operations served since start.
    pub reads: u64,
    /// Payload bytes the host wrote since start.
    pub bytes_written: u64,
    /// Encoded (compressed, sealed) bytes appended to the nvbuf.
    #[serde(default)]
    pub encoded_bytes: u64,
    /// Bytes dtu wrote to its lanes, resends included.
    #[serde(default)]
    pub lane_bytes: u64,
    /// Highest seq assigned so far.
    pub highest_seq: u64,
    /// Every seq up to this one is durable in the nvbuf.
    pub buffered_seq: u64,
    /// Every seq up to this one is received by the remote.
    pub remote_received_seq: u64,
    /// Every seq up to this one is stored on the replica.
    pub remote_stored_seq: u64,
    /// Unreplicated operations found in the nvbuf at start and sent again.
    pub recovered_at_start: usize,
    /// Median primary→replica delay (to remote-stored), milliseconds; `None`
    /// before the first.
    pub replication_delay_p50_ms: Option<f64>,
    /// 99th percentile of that delay, milliseconds; `None` before the first.
    pub replication_delay_p99_ms: Option<f64>,
    /// Median host ack latency (submission to answer), milliseconds; `None`
    /// before the first.
    pub ack_latency_p50_ms: Option<f64>,
    /// 99th percentile of that latency, milliseconds; `None` before the first.
    pub ack_latency_p99_ms: Option<f64>,
    /// Primary→replica delay, whole distribution since start.
    #[serde(default)]
    pub replication_delay: LatencyStats,
    /// Host ack latency, whole distribution since start, all triggers together.
    #[serde(default)]
    pub ack_latency: LatencyStats,
    /// Host ack latency since start, split by the trigger that answered.
    #[serde(default)]
    pub ack_latency_by_trigger: ByTrigger<LatencyStats>,
    /// QUIC's own figures for the link to the remote.
    #[serde(default)]
    pub quic: QuicStatus,
    /// Mode, generations, changed-block map, sync, verify and restore.
    #[serde(default)]
    pub mirror: MirrorStatus,
    /// Why the primary stopped answering for good; `None` while it runs.
    pub failed: Option<String>,
}

/// Progress of long work, for the status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Whether the work is under way.
    pub active: bool,
    /// Bytes done so far.
    pub done_bytes: u64,
    /// Bytes the whole work covers.
    pub total_bytes: u64,
    /// Bits per second: recent for sync and verify, average for a restore.
    pub rate_bps: f64,
    /// Seconds left at that rate; `None` while the rate is zero.
    pub eta_s: Option<f64>,
    /// Seconds since the work started.
    pub elapsed_s: f64,
}

/// The sync engine's figures for the status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// Generation the running sync brings the replica to (0: none).
    pub target: u64,
    /// Whether the sync compares digests first and sends only what differs.
    pub checksum: bool,
    /// Progress of the running sync.
    pub sync: Progress,
    /// Progress of the running online verify.
    pub verify: Progress,
    /// Whether the verify marks the ranges that differ for a resync.
    pub verify_repair: bool,
    /// Mismatched ranges found by the last (or running) verify.
    pub mismatches: Vec<(u64, u64)>,
    /// Bytes in those mismatched ranges.
    pub mismatched_bytes: u64,
    /// Seconds since the Unix epoch when the last verify finished.
    pub last_verify_unix: Option<u64>,
    /// Bytes syncs copied to the replica since start.
    pub copied_bytes: u64,
    /// Bytes compared by digest since start, by checksum syncs and verifies.
    pub compared_bytes: u64,
    /// Bytes a checksum sync found equal and did not send, since start.
    pub skipped_bytes: u64,
}

/// A generation id as the status shows it.
pub fn gen_hex(g: u64) -> String {
    format!("{g:016x}")
}

/// The primary's side of the mirror: its mode, generations, what the
/// last connect decided, what the replica lacks, and sync and verify.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MirrorStatus {
    /// `journal` (every write goes through the nvbuf), `ahead` (the nvbuf
    /// overflowed: writes go to the local copy and the changed-block map)
    /// or `full-failing` (it overflowed with `nvbuf.overflow = fail`).
    pub mode: String,
    /// Current generation, 16 hex digits.
    pub generation: String,
    /// Earlier generations, hex, newest first (at most four).
    pub generation_history: Vec<String>,
    /// What the last connect decided, and why, in one line.
    pub decision: Option<String>,
    /// Bytes the changed-block map marks: what the replica lacks until a
    /// resync (0 without a map).
    pub out_of_sync_bytes: u64,
    /// Whether the primary has a changed-block map (it needs a local copy).
    pub has_map: bool,
    /// Sync and verify figures.
    pub sync: SyncStatus,
    /// The restore of a lost local copy from the remote
    /// (`--restore-from-remote`), while it runs.
    #[serde(default)]
    pub restore: Progress,
    /// Bytes of host reads the remote served during the restore.
    #[serde(default)]
    pub restore_on_demand_bytes: u64,
}

/// The remote's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoteStatus {
    /// The volume's id, 32 hex digits.
    pub volume: String,
    /// The volume's size, bytes.
    pub volume_size: u64,
    /// Seconds since this DTU started.
    pub uptime_s: f64,
    /// `connected` while a primary's session is up, else `waiting`.
    pub connection: ConnectionState,
    /// The primary's address while connected; `None` otherwise.
    pub peer: Option<String>,
    /// Epoch of the last primary this remote accepted (kept in its state).
    pub primary_epoch: u32,
    /// dtu's smoothed heartbeat round trip, milliseconds; `None` until known.
    pub rtt_ms: Option<f64>,
    /// Path of the replica.
    pub replica: String,
    /// False after a machine crash until the replay passes `inconsistent_until`.
    pub consistent: bool,
    /// Seq a crash replay must apply again before the replica is consistent;
    /// `None` without such a replay.
    pub inconsistent_until: Option<u64>,
    /// Why the replica cannot be trusted (empty when consistent).
    #[serde(default)]
    pub inconsistent_reasons: Vec<String>,
    /// Every seq up to this one is received.
    pub received_seq: u64,
    /// Every seq up to this one is written to the replica (maybe not synced).
    pub applied_seq: u64,
    /// Every seq up to this one is written and synced on the replica.
    pub stored_seq: u64,
    /// Decoded bytes waiting for an earlier seq before they can be applied.
    pub pending_bytes: u64,
    /// Payload written to the replica, bits per second, smoothed.
    pub apply_throughput_bps: f64,
    /// Threads that check, open and decompress records.
    pub decode_workers: usize,
    /// Lanes the connected primary has open; 0 while none is connected.
    pub lanes: usize,
    /// Chunks received and accepted since start, duplicates not counted.
    pub chunks: u64,
    /// Chunks or operations received again and dropped, since start.
    pub duplicates: u64,
    /// Chunks refused for a checksum mismatch (each one nacked), since start.
    pub checksum_failures: u64,
    /// Chunks refused as undecodable (each one nacked), since start.
    pub decode_failures: u64,
    /// Operations written to the replica since start.
    pub applied_ops: u64,
    /// Payload bytes written to the replica since start.
    pub applied_bytes: u64,
    /// Payload bytes applied and synced on the replica.
    #[serde(default)]
    pub stored_bytes: u64,
    /// Replica syncs since start (one per applied batch).
    pub syncs: u64,
    /// Operations applied per replica sync; 0 before the first sync.
    pub ops_per_sync: f64,
    /// Last checkpoint applied since start, with its seq; `None` before any.
    pub last_checkpoint: Option<String>,
    /// Checkpoints held (the catalog); `None` without an undo journal.
    #[serde(default)]
    pub checkpoints: Option<usize>,
    /// The oldest checkpoint held (label, kind, time, seq); `None` when none.
    #[serde(default)]
    pub oldest_checkpoint: Option<String>,
    /// Bytes the undo journal holds on disk; 0 without one.
    #[serde(default)]
    pub undo_bytes: u64,
    /// How far back the oldest checkpoint held reaches, seconds.
    #[serde(default)]
    pub undo_window_s: Option<f64>,
    /// A rollback trial or commit that holds the applier, in one line.
    #[serde(default)]
    pub hold: Option<String>,
    /// The as-of view served (`dtu export --as-of`), checkpoint and URL.
    #[serde(default)]
    pub view: Option<String>,
    /// Why the remote stopped applying (an I/O error on the replica or the
    /// undo journal); `None` while it applies.
    #[serde(default)]
    pub failed: Option<String>,
    /// Connection attempts refused since start (certificate or handshake).
    pub refused: u64,
    /// The last refusal: who and why; `None` before any.
    pub last_refusal: Option<String>,
    /// The replica's generation, 16 hex digits.
    #[serde(default)]
    pub generation: String,
    /// Earlier generations, hex, newest first (at most four).
    #[serde(default)]
    pub generation_history: Vec<String>,
    /// The generation a sync under way brings the replica to.
    #[serde(default)]
    pub sync_target: Option<String>,
    /// What the last connect decided, and why.
    #[serde(default)]
    pub decision: Option<String>,
    /// QUIC's own figures for the link to the primary.
    #[serde(default)]
    pub quic: QuicStatus,
}

#[cfg(test)]
pub(crate) mod samples {
    //! Statuses with every part filled in, for the renderers' tests.
    use super::*;

    pub fn latency(values_ms: &[f64]) -> LatencyStats {
        let count = values_ms.len() as u64;
        LatencyStats {
            count,
            sum_s: values_ms.iter().sum::<f64>() / 1e3,
            p50_ms: values_ms.get(values_ms.len() / 2).copied(),
            p90_ms: values_ms.last().copied(),
            p99_ms: values_ms.last().copied(),
            max_ms: values_ms.last().copied(),
            saturated: 0,
            buckets: LATENCY_BUCKETS_S
                .iter()
                .map(|le| values_ms.iter().filter(|v| **v / 1e3 <= *le).count() as u64)
                .collect(),
        }
    }

    pub fn quic() -> QuicStatus {
        QuicStatus {
            connections: 2,
            sent_packets: 1000,
            lost_packets: 20,
            lost_bytes: 24_000,
            congestion_events: 3,
            black_holes_detected: 0,
            udp_tx_bytes: 1_200_000,
            udp_rx_bytes: 40_000,
            udp_tx_datagrams: 1000,
            udp_rx_datagrams: 400,
            path_mtu: Some(1452),
            cwnd_bytes: Some(120_000),
            rtt_ms: Some(10.5),
        }
    }

    pub fn primary() -> PrimaryStatus {
        PrimaryStatus {
            volume: "00112233".into(),
            volume_size: 1 << 30,
            epoch: 3,
            uptime_s: 12.5,
            connection: ConnectionState::Connected,
            peer: Some("127.0.0.1:7001".into()),
            connection_detail: Some("for 12s".into()),
            rtt_ms: Some(10.2),
            link_throughput_bps: 8e6,
            host_throughput_bps: 9e6,
            lanes: 4,
            encode_workers: 2,
            inflight_bytes: 65536,
            buffered_bytes: 1 << 20,
            nvbuf_capacity: 64 << 20,
            nvbuf_fill_pct: 1.5625,
            nvbuf_waiting_writers: 0,
            nvbuf_full_waits: 1,
            records_per_flush: 2.5,
            oldest_unreplicated_s: Some(0.25),
            trigger: "buffered".into(),
            effective_trigger: "remote-stored".into(),
            delay_ms: 0.0,
            spoofing_enabled: true,
            spoofing_active: false,
            dirty_threshold_pct: 75.0,
            dirty_pct: Some(40.0),
            answered: AnsweredBy {
                buffered: 3,
                remote_stored: 2,
                ..AnsweredBy::default()
            },
            compression_ratio: 1.8,
            retransmits: 4,
            nacks: 1,
            writes: 5,
            reads: 7,
            bytes_written: 20480,
            encoded_bytes: 11000,
            lane_bytes: 12000,
            highest_seq: 5,
            buffered_seq: 5,
            remote_received_seq: 4,
            remote_stored_seq: 3,
            recovered_at_start: 0,
            replication_delay_p50_ms: Some(20.0),
            replication_delay_p99_ms: Some(30.0),
            ack_latency_p50_ms: Some(0.7),
            ack_latency_p99_ms: Some(25.0),
            replication_delay: latency(&[12.0, 20.0, 30.0]),
            ack_latency: latency(&[0.5, 0.7, 0.9, 15.0, 25.0]),
            ack_latency_by_trigger: ByTrigger {
                buffered: latency(&[0.5, 0.7, 0.9]),
                remote_stored: latency(&[15.0, 25.0]),
                ..ByTrigger::default()
            },
            quic: quic(),
            mirror: MirrorStatus {
                mode: "ahead".into(),
                generation: gen_hex(0xabcd),
                generation_history: vec![gen_hex(0x1234)],
                decision: Some("in sync: both sides at generation 1234".into()),
                out_of_sync_bytes: 3 << 20,
                has_map: true,
                sync: SyncStatus {
                    target: 0xabcd,
                    checksum: true,
                    sync: Progress {
                        active: true,
                        done_bytes: 1 << 20,
                        total_bytes: 4 << 20,
                        rate_bps: 8e6,
                        eta_s: Some(3.0),
                        elapsed_s: 1.0,
                    },
                    verify: Progress::default(),
                    verify_repair: false,
                    mismatches: vec![(0, 4096)],
                    mismatched_bytes: 4096,
                    last_verify_unix: Some(1_700_000_000),
                    copied_bytes: 1 << 20,
                    compared_bytes: 0,
                    skipped_bytes: 0,
                },
                restore: Progress {
                    active: true,
                    done_bytes: 64 << 20,
                    total_bytes: 256 << 20,
                    rate_bps: 12e6,
                    eta_s: Some(16.0),
                    elapsed_s: 5.0,
                },
                restore_on_demand_bytes: 3 << 20,
            },
            failed: None,
        }
    }

    pub fn remote() -> RemoteStatus {
        RemoteStatus {
            volume: "00112233".into(),
            volume_size: 1 << 30,
            uptime_s: 30.0,
            connection: ConnectionState::Waiting,
            peer: None,
            primary_epoch: 3,
            rtt_ms: None,
            replica: "/tmp/replica.img".into(),
            consistent: true,
            inconsistent_until: None,
            inconsistent_reasons: Vec::new(),
            received_seq: 9,
            applied_seq: 8,
            stored_seq: 7,
            pending_bytes: 0,
            apply_throughput_bps: 0.0,
            decode_workers: 2,
            lanes: 0,
            chunks: 12,
            duplicates: 1,
            checksum_failures: 0,
            decode_failures: 0,
            applied_ops: 8,
            applied_bytes: 32768,
            stored_bytes: 28672,
            syncs: 4,
            ops_per_sync: 2.0,
            last_checkpoint: None,
            checkpoints: Some(2),
            oldest_checkpoint: Some(
                "\"c1\" (manual, 2026-12-02 12:46:24.000001 UTC, seq 7)".into(),
            ),
            undo_bytes: 8192,
            undo_window_s: Some(3600.0),
            hold: None,
            view: None,
            failed: None,
            refused: 0,
            last_refusal: None,
            generation: gen_hex(0x1234),
            generation_history: vec![gen_hex(0x99)],
            sync_target: Some(gen_hex(0x5678)),
            decision: Some("resync from the changed-block map".into()),
            quic: QuicStatus {
                path_mtu: None,
                cwnd_bytes: None,
                rtt_ms: None,
                ..quic()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_the_old_field_names_and_words() {
        let v = serde_json::to_value(Status::Primary(Box::new(samples::primary()))).unwrap();
        assert_eq!(v["role"], "primary");
        assert_eq!(v["connection"], "connected");
        for k in [
            "replication_delay_p50_ms",
            "replication_delay_p99_ms",
            "ack_latency_p50_ms",
            "ack_latency_p99_ms",
            "retransmits",
            "nacks",
            "remote_stored_seq",
            "highest_seq",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        assert_eq!(v["answered"]["remote_stored"], 2);
        assert_eq!(v["ack_latency_by_trigger"]["buffered"]["count"], 3);
        assert_eq!(v["quic"]["lost_packets"], 20);
        let r = serde_json::to_value(Status::Remote(Box::new(samples::remote()))).unwrap();
        assert_eq!(r["connection"], "waiting");
        // And back.
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, Status::Primary(Box::new(samples::primary())));
    }

    #[test]
    fn the_table_shows_quic_losses_and_latency_per_trigger() {
        let text = Status::Primary(Box::new(samples::primary())).to_string();
        assert!(text.starts_with("dtu primary\n"), "{text}");
        for want in [
            "connection           connected to 127.0.0.1:7001 (for 12s)",
            "1000 packets sent, 20 lost (2.00%",
            "3 congestion events; path mtu 1452",
            "  at buffered",
            "  at remote-stored",
            "4 seqs resent by dtu, 1 checksum/decode nacks",
            "from the remote: 25.0% of 256",
            "host reads served by the remote 3",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        // Triggers that answered nothing get no row.
        assert!(!text.contains("at sent"), "{text}");
        let remote = Status::Remote(Box::new(samples::remote())).to_string();
        assert!(
            remote.contains("connection  waiting, primary epoch 3"),
            "{remote}"
        );
        assert!(remote.contains("20 lost (2.00%"), "{remote}");
        assert!(!remote.contains("path mtu"), "{remote}");
    }

    #[test]
    fn a_foreign_status_never_panics_the_table() {
        let mut p = samples::primary();
        p.oldest_unreplicated_s = Some(-1.0);
        p.ack_latency.buckets.clear();
        let _ = Status::Primary(Box::new(p.clone())).to_string();
        p.oldest_unreplicated_s = Some(f64::INFINITY);
        let _ = Status::Primary(Box::new(p)).to_string();
    }
}
