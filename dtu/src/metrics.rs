//! The measurements both sides keep for their status: a per-second rate
//! from a growing counter, QUIC's connection figures summed across
//! reconnects, and the summary of a latency histogram that the status
//! carries (quantiles and counts at the exposition's bucket bounds).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dtu_proto::histogram::Histogram;

use crate::status::{LatencyStats, QuicStatus, LATENCY_BUCKETS_S};

/// Per-second rates from periodic samples of a counter.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    last: Option<(Instant, u64)>,
    rate: f64,
}

impl RateMeter {
    /// Records the counter's value; the rate is the change since the last
    /// sample, smoothed over a few samples.
    pub fn sample(&mut self, now: Instant, value: u64) {
        if let Some((t, v)) = self.last {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let r = value.saturating_sub(v) as f64 / dt;
                self.rate = if self.rate == 0.0 {
                    r
                } else {
                    0.5 * self.rate + 0.5 * r
                };
            }
        }
        self.last = Some((now, value));
    }

    pub fn per_second(&self) -> f64 {
        self.rate
    }
}

/// The quantiles and bucket counts of a latency histogram.
pub fn latency_stats(h: &Histogram) -> LatencyStats {
    let ms = |q: f64| h.quantile(q).map(|d| d.as_secs_f64() * 1e3);
    LatencyStats {
        count: h.count(),
        sum_s: h.sum().as_secs_f64(),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: (!h.is_empty()).then(|| h.max().as_secs_f64() * 1e3),
        saturated: h.saturated(),
        buckets: LATENCY_BUCKETS_S
            .iter()
            .map(|s| h.count_at_or_below(Duration::from_secs_f64(*s)))
            .collect(),
    }
}

/// QUIC's counters of one connection.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    sent_packets: u64,
    lost_packets: u64,
    lost_bytes: u64,
    congestion_events: u64,
    black_holes_detected: u64,
    udp_tx_bytes: u64,
    udp_rx_bytes: u64,
    udp_tx_datagrams: u64,
    udp_rx_datagrams: u64,
}

impl Totals {
    fn of(s: &quinn::ConnectionStats) -> Totals {
        Totals {
            sent_packets: s.path.sent_packets,
            lost_packets: s.path.lost_packets,
            lost_bytes: s.path.lost_bytes,
            congestion_events: s.path.congestion_events,
            black_holes_detected: s.path.black_holes_detected,
            udp_tx_bytes: s.udp_tx.bytes,
            udp_rx_bytes: s.udp_rx.bytes,
            udp_tx_datagrams: s.udp_tx.datagrams,
            udp_rx_datagrams: s.udp_rx.datagrams,
        }
    }

    fn plus(self, o: Totals) -> Totals {
        Totals {
            sent_packets: self.sent_packets + o.sent_packets,
            lost_packets: self.lost_packets + o.lost_packets,
            lost_bytes: self.lost_bytes + o.lost_bytes,
            congestion_events: self.congestion_events + o.congestion_events,
            black_holes_detected: self.black_holes_detected + o.black_holes_detected,
            udp_tx_bytes: self.udp_tx_bytes + o.udp_tx_bytes,
            udp_rx_bytes: self.udp_rx_bytes + o.udp_rx_bytes,
            udp_tx_datagrams: self.udp_tx_datagrams + o.udp_tx_datagrams,
            udp_rx_datagrams: self.udp_rx_datagrams + o.udp_rx_datagrams,
        }
    }
}

#[derive(Default)]
struct QuicInner {
    /// Final counters of the connections before the current one.
    earlier: Totals,
    current: Option<quinn::Connection>,
    connections: u64,
}

/// QUIC's own figures across the connections of a DTU's life: counters
/// keep growing over reconnects (as Prometheus counters must), path
/// figures come from the live connection.
#[derive(Default)]
pub struct QuicMeter {
    inner: Mutex<QuicInner>,
}

impl QuicMeter {
    fn lock(&self) -> std::sync::MutexGuard<'_, QuicInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session with the peer is up on `conn`; the previous connection's
    /// counters are final from now on.
    pub fn attach(&self, conn: &quinn::Connection) {
        let mut i = self.lock();
        if let Some(old) = i.current.take() {
            if old.stable_id() == conn.stable_id() {
                i.current = Some(old);
                return;
            }
            i.earlier = i.earlier.plus(Totals::of(&old.stats()));
        }
        i.current = Some(conn.clone());
        i.connections += 1;
    }

    fn totals(i: &QuicInner) -> Totals {
        match &i.current {
            Some(c) => i.earlier.plus(Totals::of(&c.stats())),
            None => i.earlier,
        }
    }

    /// UDP payload bytes sent over every connection so far.
    pub fn udp_tx_bytes(&self) -> u64 {
        Self::totals(&self.lock()).udp_tx_bytes
    }

    pub fn status(&self) -> QuicStatus {
        let i = self.lock();
        let t = Self::totals(&i);
        // Path figures only while the connection lives.
        let path = i
            .current
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .map(|c| c.stats().path);
        QuicStatus {
            connections: i.connections,
            sent_packets: t.sent_packets,
            lost_packets: t.lost_packets,
            lost_bytes: t.lost_bytes,
            congestion_events: t.congestion_events,
            black_holes_detected: t.black_holes_detected,
            udp_tx_bytes: t.udp_tx_bytes,
            udp_rx_bytes: t.udp_rx_bytes,
            udp_tx_datagrams: t.udp_tx_datagrams,
            udp_rx_datagrams: t.udp_rx_datagrams,
            path_mtu: path.map(|p| p.current_mtu),
            cwnd_bytes: path.map(|p| p.cwnd),
            rtt_ms: path.map(|p| p.rtt.as_secs_f64() * 1e3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_stats_are_cumulative_and_precise() {
        let mut h = Histogram::default();
        for us in [80, 900, 4_000, 4_000, 70_000, 2_000_000] {
            h.record(Duration::from_micros(us));
        }
        let s = latency_stats(&h);
        assert_eq!(s.count, 6);
        assert_eq!(s.buckets.len(), LATENCY_BUCKETS_S.len());
        assert!(s.buckets.windows(2).all(|w| w[0] <= w[1]));
        let at = |le: f64| s.buckets[LATENCY_BUCKETS_S.iter().position(|b| *b == le).unwrap()];
        assert_eq!(at(0.0001), 1);
        assert_eq!(at(0.001), 2);
        assert_eq!(at(0.005), 4);
        assert_eq!(at(0.1), 5);
        assert_eq!(at(2.5), 6);
        assert!((s.sum_s - 2.07898).abs() < 1e-9, "{}", s.sum_s);
        let p50 = s.p50_ms.unwrap();
        assert!((p50 - 4.0).abs() <= 0.04, "{p50}");
        assert!(latency_stats(&Histogram::default()).p50_ms.is_none());
    }

    #[test]
    fn rate_meter_smooths() {
        let t = Instant::now();
        let mut r = RateMeter::default();
        r.sample(t, 0);
        r.sample(t + Duration::from_secs(1), 1000);
        assert_eq!(r.per_second(), 1000.0);
        r.sample(t + Duration::from_secs(2), 1000);
        assert_eq!(r.per_second(), 500.0);
    }
}
