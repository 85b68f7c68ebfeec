//! QUIC transport parameters derived from what the user says about the link
//! (rate, round-trip time, congestion controller).
//!
//! quinn's defaults are tuned for 100 Mbit/s at 100 ms: a 1.25 MB stream
//! receive window and a 10 MB connection send window. A sender may have at
//! most one window of unacknowledged data per round trip, so one stream tops
//! out at window / RTT: 1.25 MB / 80 ms = 125 Mbit/s on a transatlantic
//! gigabit link, whatever the congestion controller does. Long fat links
//! (rate × RTT larger than those windows) therefore need windows sized from
//! the bandwidth-delay product, which is what [`transport_config`] does.

use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::ControllerFactory;
use quinn::{AckFrequencyConfig, IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};

pub use crate::config::CongestionChoice as Congestion;
use super::line_rate::LineRateConfig;
use crate::config::Link;

/// Windows are this many bandwidth-delay products. One BDP only fills the
/// pipe while nothing is lost: after a loss the receiver cannot release data
/// past the hole, so its credit stalls for the retransmission's round trip
/// while the sender still has a window in flight. Four BDPs ride through a
/// loss recovery (and a second loss inside it) plus RTT jitter without the
/// flow control, rather than the congestion controller, setting the pace.
pub const WINDOW_HEADROOM: u64 = 4;
/// Smallest receive windows. Receive credit costs no memory until the peer
/// uses it, and a window of at least one largest frame
/// ([`dtu_proto::DEFAULT_MAX_FRAME`]) lets a frame cross without waiting
/// for a credit update.
pub const RECEIVE_WINDOW_FLOOR: u64 = 4 << 20;
/// Smallest send window. On a slow link (a T1 carries 4 MiB in 22 s)
/// anything beyond what the link drains in a few round trips is better kept
/// in the nvbuf, where it is durable and counted, than in QUIC's buffers.
pub const SEND_WINDOW_FLOOR: u64 = 1 << 20;
/// Largest window: bounds what one connection can make the peer buffer.
/// 512 MiB covers 10 Gbit/s at 100 ms with the headroom above.
pub const WINDOW_CAP: u64 = 512 << 20;
/// Link rate assumed when the user gives none (`rate = 0`): fast, so that
/// the windows never limit a link faster than what the user wrote down.
pub const UNKNOWN_RATE_BPS: u64 = 10_000_000_000;
/// Longest round-trip time a link may be configured with: 10 s. A
/// geostationary satellite hop is 600 ms and the worst bufferbloated mobile
/// links reach a few seconds; beyond that the connection's own timers
/// (keep-alive, idle timeout) declare the link dead anyway. Windows and
/// timeouts are RTT multiples, so the bound also keeps them finite.
pub const MAX_RTT: Duration = Duration::from_secs(10);
/// Longest keep-alive interval used; quinn arms a timer this far ahead.
pub const MAX_KEEP_ALIVE: Duration = Duration::from_secs(600);
/// Smallest and largest in-flight window of the sender (payload bytes sent
/// and not yet stored): the floor fills a slow link for a few round trips
/// plus the remote's sync; the cap bounds the remote's reorder memory.
pub const INFLIGHT_FLOOR: u64 = 16 << 20;
/// See [`INFLIGHT_FLOOR`].
pub const INFLIGHT_CAP: u64 = 512 << 20;
/// Reordering the loss detection rides through: a packet overtaken by
/// packets sent up to this much later is not yet lost.
pub const REORDER_TOLERANCE: Duration = Duration::from_millis(5);
/// Largest packet threshold: bounds how long a real loss goes unrepaired
/// on a fast line (2048 packets are 25 ms at 1 Gbit/s).
const MAX_REORDER_PACKETS: u32 = 2048;
/// Largest time threshold, in RTTs.
const MAX_TIME_THRESHOLD: f32 = 2.0;
/// Acks per round trip the receiver is asked for at most (one per
/// `ack_every` packets): enough to clock the window out smoothly, few
/// enough that acks do not cost the CPU a packet each.
const ACKS_PER_RTT: u64 = 32;
/// Acks per second the receiver is asked for at most, at the line's rate:
/// a thin return path (a 128 kbit/s line back carries about 250 small
/// packets a second) must not queue acks, or every RTT sample grows with
/// that queue (on `thin-return`, 20 Mbit/s out: 0.29 of the line with an
/// ack every 2 packets, 0.92 with one every 8).
const ACKS_PER_SECOND: u64 = 200;
/// Largest `ack_every`: coarser acks held a lossy 100 Mbit/s line to 0.88
/// (an ack every 32 packets) where 16 gave 0.93.
const MAX_ACK_EVERY: u32 = 16;

/// quinn's default initial congestion window for Cubic/NewReno (10 packets
/// of 1472 bytes, RFC 9002 §7.2); the floor of ours.
const MIN_INITIAL_CWND: u64 = 14_720;
/// Cap on the initial congestion window.
const MAX_INITIAL_CWND: u64 = 16 << 20;

/// What the user says about the link, plus connection liveness settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkTuning {
    /// Link rate in bits per second (0: unknown, see [`UNKNOWN_RATE_BPS`]).
    pub rate_bps: u64,
    /// Round-trip time of the link when idle.
    pub rtt: Duration,
    /// The congestion controller.
    pub congestion: Congestion,
    /// Interval of QUIC keep-alive pings; they also keep NAT bindings open.
    pub keep_alive: Duration,
    /// A connection that hears nothing for this long is declared lost (at
    /// least three keep-alive intervals, so one lost ping is not fatal).
    pub idle_timeout: Duration,
    /// Probe for a larger path MTU than 1200 bytes (with black-hole
    /// detection). Switch off for paths that drop probes in odd ways.
    pub mtu_discovery: bool,
}

impl Default for LinkTuning {
    /// 1 Gbit/s, 50 ms, the `rate` controller, keep-alive 2 s, idle
    /// timeout 15 s.
    fn default() -> Self {
        LinkTuning {
            rate_bps: 1_000_000_000,
            rtt: Duration::from_millis(50),
            congestion: Congestion::Rate,
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(15),
            mtu_discovery: true,
        }
    }
}

impl LinkTuning {
    /// Tuning from a config file's `[link]` section; an unknown rate (0)
    /// becomes [`UNKNOWN_RATE_BPS`] so that callers sizing their own
    /// buffers from `rate_bps` see the same assumption, and the `rate`
    /// controller, which needs a stated rate, becomes cubic.
    pub fn from_link(l: &Link) -> LinkTuning {
        let congestion = match l.congestion {
            Congestion::Rate if l.rate_bps == 0 => Congestion::Cubic,
            c => c,
        };
        LinkTuning {
            rate_bps: if l.rate_bps == 0 {
                UNKNOWN_RATE_BPS
            } else {
                l.rate_bps
            },
            rtt: l.rtt,
            congestion,
            ..LinkTuning::default()
        }
    }

    fn effective_rate_bps(&self) -> u64 {
        if self.rate_bps == 0 {
            UNKNOWN_RATE_BPS
        } else {
            self.rate_bps
        }
    }

    /// The RTT windows and timers are sized from: under 1 ms counts as
    /// 1 ms, over [`MAX_RTT`] as [`MAX_RTT`] (config files never hold more;
    /// embedders filling [`LinkTuning`] in may).
    pub fn sizing_rtt(&self) -> Duration {
        self.rtt.clamp(Duration::from_millis(1), MAX_RTT)
    }

    /// Bytes in flight needed to fill the link (rate × RTT, RTT as in
    /// [`LinkTuning::sizing_rtt`]); saturates rather than overflows.
    pub fn bdp(&self) -> u64 {
        bytes_in(self.effective_rate_bps(), self.sizing_rtt())
    }

    /// Stream and connection receive window.
    pub fn receive_window(&self) -> u64 {
        self.bdp()
            .saturating_mul(WINDOW_HEADROOM)
            .clamp(RECEIVE_WINDOW_FLOOR, WINDOW_CAP)
    }

    /// Connection send window (application bytes quinn keeps until acked).
    pub fn send_window(&self) -> u64 {
        self.bdp()
            .saturating_mul(WINDOW_HEADROOM)
            .clamp(SEND_WINDOW_FLOOR, WINDOW_CAP)
    }

    /// Initial congestion window: half a BDP. Slow start from 10 packets
    /// needs log2(BDP / 14 KB) round trips to fill the link (about ten on a
    /// gigabit transatlantic link), which a reconnecting DTU pays every time
    /// the link comes back. quinn paces a window over the RTT, so this goes
    /// out at about half the configured rate, not as a burst.
    pub fn initial_cwnd(&self) -> u64 {
        (self.bdp() / 2).clamp(MIN_INITIAL_CWND, MAX_INITIAL_CWND)
    }

    /// The idle timeout actually used: never under three keep-alives.
    pub fn effective_idle_timeout(&self) -> Duration {
        self.idle_timeout
            .max(self.keep_alive.min(MAX_KEEP_ALIVE).saturating_mul(3))
    }

    /// Payload bytes the sender may have sent and not yet seen stored:
    /// enough to fill the link for a few round trips (plus the remote's
    /// sync), within [`INFLIGHT_FLOOR`]..=[`INFLIGHT_CAP`]. An unknown rate
    /// (0) gets the floor.
    pub fn inflight_window(&self) -> u64 {
        bytes_in(self.rate_bps, self.rtt.min(MAX_RTT))
            .saturating_mul(WINDOW_HEADROOM)
            .clamp(INFLIGHT_FLOOR, INFLIGHT_CAP)
    }

    /// Packets the line carries in `REORDER_TOLERANCE` (at least 3, RFC
    /// 9002's packet threshold; at most `MAX_REORDER_PACKETS`); an
    /// unknown rate gets 3.
    pub fn reorder_packets(&self) -> u32 {
        if self.rate_bps == 0 {
            return 3;
        }
        let packets = bytes_in(self.rate_bps, REORDER_TOLERANCE) / 1500;
        u32::try_from(packets)
            .unwrap_or(u32::MAX)
            .clamp(3, MAX_REORDER_PACKETS)
    }

    /// QUIC's packet threshold: [`LinkTuning::reorder_packets`] plus two
    /// acks' worth of packets, because an ack covers up to
    /// [`LinkTuning::ack_every`] newer packets at once (with the bare
    /// reordering allowance, a bonded line's late packets were declared
    /// lost by the hundred and the line ran at 0.39).
    pub fn packet_threshold(&self) -> u32 {
        self.reorder_packets()
            .saturating_add(self.ack_every().saturating_mul(2))
            .min(MAX_REORDER_PACKETS)
    }

    /// Loss delay in RTTs: RFC 9002's 9/8, or enough to cover
    /// `REORDER_TOLERANCE` on top of the RTT, at most 2.
    pub fn reorder_time_threshold(&self) -> f32 {
        let rtt = self.sizing_rtt().as_secs_f32();
        (1.0 + REORDER_TOLERANCE.as_secs_f32() / rtt).clamp(9.0 / 8.0, MAX_TIME_THRESHOLD)
    }

    /// Ack-eliciting packets per ack asked of the peer: 2 (QUIC's
    /// default) up to `MAX_ACK_EVERY`, so that at the line's rate a
    /// round trip draws at most `ACKS_PER_RTT` acks and a second at most
    /// `ACKS_PER_SECOND`.
    pub fn ack_every(&self) -> u32 {
        if self.rate_bps == 0 {
            return 2;
        }
        let per_rtt = self.bdp() / 1500 / ACKS_PER_RTT;
        let per_second = self.rate_bps / 8 / 1500 / ACKS_PER_SECOND;
        u32::try_from(per_rtt.max(per_second))
            .unwrap_or(u32::MAX)
            .clamp(2, MAX_ACK_EVERY)
    }

    /// The longest delayed-ack wait asked of the peer: a quarter of the
    /// RTT, between 1 and 25 ms.
    pub fn max_ack_delay(&self) -> Duration {
        (self.sizing_rtt() / 4).clamp(Duration::from_millis(1), Duration::from_millis(25))
    }

    /// How long the primary waits for a connection: four round trips, at
    /// least 5 s.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(5).max(self.rtt.min(MAX_RTT) * 4)
    }
}

/// Bytes a link of `rate_bps` carries in `span`, saturating at u64::MAX.
fn bytes_in(rate_bps: u64, span: Duration) -> u64 {
    let bytes = (rate_bps as u128).saturating_mul(span.as_nanos()) / 8 / 1_000_000_000;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// QUIC transport parameters for a link, used by both sides.
pub fn transport_config(t: &LinkTuning) -> TransportConfig {
    let rwnd =
        VarInt::from_u64(t.receive_window()).expect("window is capped below the varint limit");
    let mut c = TransportConfig::default();
    // Both the per-stream and the connection window: the smaller of the two
    // applies, and one lane may carry most of the traffic for a while.
    c.stream_receive_window(rwnd);
    c.receive_window(rwnd);
    c.send_window(t.send_window());
    // The default (333 ms) makes the first loss timers far too slow on a
    // LAN and too fast on a satellite hop.
    c.initial_rtt(t.sizing_rtt());
    // Lanes are long-lived uni streams and reads are short bidi streams;
    // 256 of each leaves room for many lanes and deep read queues.
    c.max_concurrent_uni_streams(VarInt::from_u32(256));
    c.max_concurrent_bidi_streams(VarInt::from_u32(256));
    c.keep_alive_interval(Some(t.keep_alive.min(MAX_KEEP_ALIVE)));
    let idle = IdleTimeout::try_from(t.effective_idle_timeout())
        .unwrap_or_else(|_| IdleTimeout::from(VarInt::MAX));
    c.max_idle_timeout(Some(idle));
    // Start at the 1200-byte minimum every QUIC path carries and let MTU
    // discovery find more (up to 1452, quinn's default bound).
    c.mtu_discovery_config(t.mtu_discovery.then(MtuDiscoveryConfig::default));
    // dtu uses streams only; unreliable datagrams would just reserve memory.
    c.datagram_receive_buffer_size(None);
    c.congestion_controller_factory(congestion_factory(t));
    // A line that reorders (bonded links deliver a tenth of the packets a
    // few ms late) must not read reordering as loss: each spurious loss is
    // a retransmission the line carries twice and, for cubic, a halved
    // window. Loss is declared only once a packet is REORDER_TOLERANCE
    // older than the newest acked one, in packets at the line's rate and
    // in time; a real loss costs that much longer to repair.
    c.packet_threshold(t.packet_threshold());
    c.time_threshold(t.reorder_time_threshold());
    let mut ack = AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(t.ack_every().saturating_sub(1)));
    ack.reordering_threshold(VarInt::from_u32(t.packet_threshold().saturating_sub(1)));
    // A delayed ack waits at most a quarter of the RTT (QUIC's default is
    // 25 ms): at a low rate, where `ack_every` packets take long to come,
    // a 25 ms wait would make a reordered packet look lost and every RTT
    // sample look like a queue.
    ack.max_ack_delay(Some(t.max_ack_delay()));
    c.ack_frequency_config(Some(ack));
    c
}

/// The congestion controller for a link, starting at [`LinkTuning::initial_cwnd`].
///
/// `rate` (see [`LineRate`](super::line_rate::LineRate)) needs the line's
/// rate; with none stated (`rate_bps` 0) it is cubic. quinn's BBR is an
/// experimental BBRv1 and stays selectable, as do cubic and NewReno for
/// paths shared with other traffic.
pub fn congestion_factory(t: &LinkTuning) -> Arc<dyn ControllerFactory + Send + Sync> {
    let initial = t.initial_cwnd();
    match t.congestion {
        Congestion::Rate if t.rate_bps != 0 => Arc::new(LineRateConfig {
            rate_bps: t.rate_bps,
            rtt: t.sizing_rtt(),
        }),
        Congestion::Bbr => {
            let mut cc = quinn::congestion::BbrConfig::default();
            cc.initial_window(initial);
            Arc::new(cc)
        }
        Congestion::Cubic | Congestion::Rate => {
            let mut cc = quinn::congestion::CubicConfig::default();
            cc.initial_window(initial);
            Arc::new(cc)
        }
        Congestion::NewReno => {
            let mut cc = quinn::congestion::NewRenoConfig::default();
            cc.initial_window(initial);
            Arc::new(cc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(rate_bps: u64, rtt_ms: u64) -> LinkTuning {
        LinkTuning {
            rate_bps,
            rtt: Duration::from_millis(rtt_ms),
            ..LinkTuning::default()
        }
    }

    #[test]
    fn windows_follow_the_bandwidth_delay_product() {
        let atlantic = link(1_000_000_000, 80);
        assert_eq!(atlantic.bdp(), 10_000_000);
        assert_eq!(atlantic.receive_window(), 40_000_000);
        assert_eq!(atlantic.send_window(), 40_000_000);
        assert_eq!(atlantic.initial_cwnd(), 5_000_000);

        let twice_the_rtt = link(1_000_000_000, 160);
        assert_eq!(
            twice_the_rtt.receive_window(),
            2 * atlantic.receive_window()
        );
        let twice_the_rate = link(2_000_000_000, 80);
        assert_eq!(twice_the_rate.send_window(), 2 * atlantic.send_window());
        // Well above quinn's 1.25 MB default stream window.
        assert!(atlantic.receive_window() > 30 * 1_250_000);
    }

    #[test]
    fn slow_links_keep_the_floors_and_huge_ones_the_cap() {
        let t1 = link(1_544_000, 20);
        assert_eq!(t1.bdp(), 3_860);
        assert_eq!(t1.receive_window(), RECEIVE_WINDOW_FLOOR);
        assert_eq!(t1.send_window(), SEND_WINDOW_FLOOR);
        assert_eq!(t1.initial_cwnd(), MIN_INITIAL_CWND);
        let huge = link(100_000_000_000, 300);
        assert_eq!(huge.receive_window(), WINDOW_CAP);
        assert_eq!(huge.initial_cwnd(), MAX_INITIAL_CWND);
        let unknown = link(0, 10);
        assert_eq!(unknown.bdp(), UNKNOWN_RATE_BPS / 8 / 100);
        let lan = link(10_000_000_000, 0);
        assert_eq!(lan.bdp(), 1_250_000, "sub-millisecond RTT counts as 1 ms");
    }

    #[test]
    fn idle_timeout_outlasts_three_keep_alives() {
        let t = LinkTuning {
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            ..LinkTuning::default()
        };
        assert_eq!(t.effective_idle_timeout(), Duration::from_secs(30));
        assert_eq!(
            LinkTuning::default().effective_idle_timeout(),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn congestion_choice_picks_the_controller_and_its_initial_window() {
        use super::super::LineRate;
        use quinn::congestion::{Bbr, Cubic, NewReno};
        let t = |congestion| LinkTuning {
            congestion,
            ..LinkTuning::default()
        };
        let build = |t: &LinkTuning| congestion_factory(t).build(std::time::Instant::now(), 1200);
        let bbr = build(&t(Congestion::Bbr));
        assert_eq!(bbr.initial_window(), t(Congestion::Bbr).initial_cwnd());
        assert!(bbr.into_any().downcast::<Bbr>().is_ok());
        let cubic = build(&t(Congestion::Cubic));
        assert_eq!(cubic.initial_window(), 3_125_000);
        assert!(cubic.into_any().downcast::<Cubic>().is_ok());
        assert!(build(&t(Congestion::NewReno))
            .into_any()
            .downcast::<NewReno>()
            .is_ok());
        // `rate` at the stated rate: a window of 1.25 BDPs from the start.
        let rate = build(&t(Congestion::Rate));
        assert_eq!(rate.initial_window(), 7_812_500);
        assert!(rate.into_any().downcast::<LineRate>().is_ok());
        // No stated rate: cubic.
        let unknown = LinkTuning {
            rate_bps: 0,
            ..t(Congestion::Rate)
        };
        assert!(build(&unknown).into_any().downcast::<Cubic>().is_ok());
    }

    #[test]
    fn loss_detection_rides_through_a_few_ms_of_reordering() {
        // 100 Mbit/s carries 41 full packets in 5 ms; at 20 ms RTT the time
        // threshold covers 5 ms on top of the RTT.
        let bonded = link(100_000_000, 20);
        assert_eq!(bonded.reorder_packets(), 41);
        assert!((bonded.reorder_time_threshold() - 1.25).abs() < 1e-6);
        // Long links keep RFC 9002's 9/8; short ones stop at 2 RTTs.
        assert!((link(100_000_000, 80).reorder_time_threshold() - 1.125).abs() < 1e-6);
        assert!((link(100_000_000, 1).reorder_time_threshold() - 2.0).abs() < 1e-6);
        // Slow or unknown links keep QUIC's 3 packets and an ack every 2.
        assert_eq!(link(1_544_000, 20).reorder_packets(), 3);
        assert_eq!(link(0, 20).reorder_packets(), 3);
        assert_eq!(link(0, 20).ack_every(), 2);
        assert_eq!(link(u64::MAX, 20).reorder_packets(), MAX_REORDER_PACKETS);
        // 100 Mbit/s is 8,333 packets a second: an ack per 16 of them
        // (at most); 20 Mbit/s, 1,666: an ack per 8; a T1, every 2.
        assert_eq!(link(100_000_000, 40).ack_every(), 16);
        assert_eq!(link(20_000_000, 40).ack_every(), 8);
        assert_eq!(link(1_544_000, 20).ack_every(), 2);
        // The packet threshold adds two acks' worth.
        assert_eq!(link(100_000_000, 20).packet_threshold(), 41 + 32);
        assert_eq!(link(1_544_000, 20).packet_threshold(), 3 + 4);
        assert_eq!(link(10_000_000_000 - 1, 100).ack_every(), MAX_ACK_EVERY);
        assert_eq!(link(1_000_000_000, 10).reorder_packets(), 416);
        assert_eq!(link(9_000_000_000, 10).reorder_packets(), MAX_REORDER_PACKETS);
    }

    #[test]
    fn transport_config_carries_the_windows() {
        let dbg = format!("{:?}", transport_config(&LinkTuning::default()));
        for field in [
            "stream_receive_window: 25000000",
            "receive_window: 25000000",
            "send_window: 25000000",
            "initial_rtt: 50ms",
            "max_concurrent_uni_streams: 256",
            "keep_alive_interval: Some(2s)",
        ] {
            assert!(dbg.contains(field), "{field} missing in {dbg}");
        }
    }

    #[test]
    fn extreme_links_neither_overflow_nor_panic() {
        let extremes = [
            (u64::MAX, Duration::MAX),
            (u64::MAX, Duration::ZERO),
            (0, Duration::MAX),
            (1, Duration::from_nanos(1)),
            (u64::MAX, MAX_RTT),
        ];
        for (rate_bps, rtt) in extremes {
            let t = LinkTuning {
                rate_bps,
                rtt,
                keep_alive: Duration::MAX,
                idle_timeout: Duration::MAX,
                ..LinkTuning::default()
            };
            assert!(t.sizing_rtt() <= MAX_RTT);
            assert!((RECEIVE_WINDOW_FLOOR..=WINDOW_CAP).contains(&t.receive_window()));
            assert!((SEND_WINDOW_FLOOR..=WINDOW_CAP).contains(&t.send_window()));
            assert!((INFLIGHT_FLOOR..=INFLIGHT_CAP).contains(&t.inflight_window()));
            assert!((MIN_INITIAL_CWND..=MAX_INITIAL_CWND).contains(&t.initial_cwnd()));
            assert!(t.connect_timeout() <= MAX_RTT * 4);
            assert_eq!(t.effective_idle_timeout(), Duration::MAX);
            let _ = transport_config(&t);
        }
        let huge = LinkTuning {
            rate_bps: u64::MAX,
            rtt: Duration::MAX,
            ..LinkTuning::default()
        };
        assert_eq!(huge.bdp(), bytes_in(u64::MAX, MAX_RTT));
        assert_eq!(huge.inflight_window(), INFLIGHT_CAP);
    }

    #[test]
    fn inflight_window_follows_the_link() {
        // 1 Gbit/s × 80 ms = 10 MB; four of them.
        assert_eq!(link(1_000_000_000, 80).inflight_window(), 40_000_000);
        assert_eq!(link(1_544_000, 20).inflight_window(), INFLIGHT_FLOOR);
        assert_eq!(link(0, 20).inflight_window(), INFLIGHT_FLOOR);
        assert_eq!(
            link(1_000_000_000, 80).connect_timeout(),
            Duration::from_secs(5)
        );
        assert_eq!(
            link(1_000_000_000, 2000).connect_timeout(),
            Duration::from_secs(8)
        );
    }
}
