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
    Primary(Box<PrimaryStatus>),
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
    pub const ALL: [ConnectionState; 4] = [
        ConnectionState::Connecting,
        ConnectionState::Connected,
        ConnectionState::Refused,
        ConnectionState::Waiting,
    ];

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
    pub received: T,
    pub buffered: T,
    pub sent: T,
    pub remote_received: T,
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
    pub count: u64,
    pub sum_s: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
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
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub lost_bytes: u64,
    pub congestion_events: u64,
    pub black_holes_detected: u64,
    pub udp_tx_bytes: u64,
    pub udp_rx_bytes: u64,
    pub udp_tx_datagrams: u64,
    pub udp_rx_datagrams: u64,
    /// Of the current connection; `None` while there is none.
    pub path_mtu: Option<u16>,
    pub cwnd_bytes: Option<u64>,
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
    pub volume: String,
    pub volume_size: u64,
    pub epoch: u32,
    pub uptime_s: f64,
    pub connection: ConnectionState,
    pub peer: Option<String>,
    pub connection_detail: Option<String>,
    pub rtt_ms: Option<f64>,
    pub link_throughput_bps: f64,
    pub host_throughput_bps: f64,
    pub lanes: usize,
    pub encode_workers: usize,
    pub inflight_bytes: u64,
    pub buffered_bytes: u64,
    pub nvbuf_capacity: u64,
    pub nvbuf_fill_pct: f64,
    pub nvbuf_waiting_writers: u64,
    pub nvbuf_full_waits: u64,
    pub records_per_flush: f64,
    pub oldest_unreplicated_s: Option<f64>,
    pub trigger: String,
    pub effective_trigger: String,
    pub delay_ms: f64,
    pub spoofing_enabled: bool,
    pub spoofing_active: bool,
    pub dirty_threshold_pct: f64,
    pub dirty_pct: Option<f64>,
    /// Host operations answered per trigger.
    pub answered: AnsweredBy,
    pub compression_ratio: f64,
    /// Seqs dtu sent again (after a nack or a reconnect); QUIC's own
    /// retransmissions are in `quic`.
    pub retransmits: u64,
    pub nacks: u64,
    pub writes: u64,
    pub reads: u64,
    pub bytes_written: u64,
    /// Encoded (compressed, sealed) bytes appended to the nvbuf.
    #[serde(default)]
    pub encoded_bytes: u64,
    /// Bytes dtu wrote to its lanes, resends included.
    #[serde(default)]
    pub lane_bytes: u64,
    pub highest_seq: u64,
    pub buffered_seq: u64,
    pub remote_received_seq: u64,
    pub remote_stored_seq: u64,
    pub recovered_at_start: usize,
    /// Primary→replica delay (submission to remote-stored), p50 and p99.
    pub replication_delay_p50_ms: Option<f64>,
    pub replication_delay_p99_ms: Option<f64>,
    /// Host ack latency, p50 and p99.
    pub ack_latency_p50_ms: Option<f64>,
    pub ack_latency_p99_ms: Option<f64>,
    /// The whole distributions behind the four figures above.
    #[serde(default)]
    pub replication_delay: LatencyStats,
    #[serde(default)]
    pub ack_latency: LatencyStats,
    #[serde(default)]
    pub ack_latency_by_trigger: ByTrigger<LatencyStats>,
    #[serde(default)]
    pub quic: QuicStatus,
    #[serde(default)]
    pub mirror: MirrorStatus,
    pub failed: Option<String>,
}

/// Progress of long work, for the status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub active: bool,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub rate_bps: f64,
    pub eta_s: Option<f64>,
    pub elapsed_s: f64,
}

/// The sync engine's figures for the status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// Generation the running sync brings the replica to (0: none).
    pub target: u64,
    pub checksum: bool,
    pub sync: Progress,
    pub verify: Progress,
    pub verify_repair: bool,
    /// Mismatched ranges found by the last (or running) verify.
    pub mismatches: Vec<(u64, u64)>,
    pub mismatched_bytes: u64,
    /// Seconds since the Unix epoch when the last verify finished.
    pub last_verify_unix: Option<u64>,
    /// Bytes copied and blocks compared since start.
    pub copied_bytes: u64,
    pub compared_bytes: u64,
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
    /// Current generation, hex, and the ones before it (newest first).
    pub generation: String,
    pub generation_history: Vec<String>,
    /// What the last connect decided, and why, in one line.
    pub decision: Option<String>,
    /// Bytes the changed-block map marks: what the replica lacks until a
    /// resync (0 without a map).
    pub out_of_sync_bytes: u64,
    /// Whether the primary has a changed-block map (it needs a local copy).
    pub has_map: bool,
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
    pub volume: String,
    pub volume_size: u64,
    pub uptime_s: f64,
    pub connection: ConnectionState,
    pub peer: Option<String>,
    pub primary_epoch: u32,
    pub rtt_ms: Option<f64>,
    pub replica: String,
    /// False after a machine crash until the replay passes `inconsistent_until`.
    pub consistent: bool,
    pub inconsistent_until: Option<u64>,
    /// Why the replica cannot be trusted (empty when consistent).
    #[serde(default)]
    pub inconsistent_reasons: Vec<String>,
    pub received_seq: u64,
    pub applied_seq: u64,
    pub stored_seq: u64,
    pub pending_bytes: u64,
    pub apply_throughput_bps: f64,
    pub decode_workers: usize,
    pub lanes: usize,
    pub chunks: u64,
    pub duplicates: u64,
    pub checksum_failures: u64,
    pub decode_failures: u64,
    pub applied_ops: u64,
    pub applied_bytes: u64,
    /// Payload bytes applied and synced on the replica.
    #[serde(default)]
    pub stored_bytes: u64,
    pub syncs: u64,
    pub ops_per_sync: f64,
    pub last_checkpoint: Option<String>,
    /// Checkpoints the remote holds (its catalog), the oldest of them, and
    /// the bytes its undo journal holds; `None` without an undo journal.
    #[serde(default)]
    pub checkpoints: Option<usize>,
    #[serde(default)]
    pub oldest_checkpoint: Option<String>,
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
    pub refused: u64,
    pub last_refusal: Option<String>,
    /// The replica's generation, hex, and the ones before it.
    #[serde(default)]
    pub generation: String,
    #[serde(default)]
    pub generation_history: Vec<String>,
    /// The generation a sync under way brings the replica to.
    #[serde(default)]
    pub sync_target: Option<String>,
    /// What the last connect decided, and why.
    #[serde(default)]
    pub decision: Option<String>,
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
