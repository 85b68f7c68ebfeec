//! Tests of the link model in virtual time: exact serialization timing,
//! determinism per seed, queue limit, loss statistics, outages, jitter
//! without reordering, reordering, duplication and corruption.

use super::*;
use proptest::prelude::*;
use std::time::Duration;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

/// Drains every delivery due by `until`, in order.
fn drain<T: Clone>(l: &mut Link<T>, until: Duration) -> Vec<Delivery<T>> {
    let mut out = Vec::new();
    while let Some(t) = l.next_event() {
        if t > until {
            break;
        }
        out.push(l.poll(t).expect("due"));
    }
    out
}

fn ceil_ns(bits: u128, rate: u64) -> Duration {
    Duration::from_nanos((bits * 1_000_000_000).div_ceil(rate as u128) as u64)
}

#[test]
fn serialization_and_delay_are_exact() {
    let cfg = LinkConfig::new(1_544_000, ms(5));
    let mut l: Link = Link::new(cfg, 1).unwrap();
    for i in 0..10u8 {
        assert!(!l.send(Duration::ZERO, vec![i; 1500]).is_dropped());
    }
    let got = drain(&mut l, Duration::from_secs(10));
    assert_eq!(got.len(), 10);
    for (i, d) in got.iter().enumerate() {
        let want = ceil_ns((i as u128 + 1) * 1500 * 8, 1_544_000) + ms(5);
        assert_eq!(d.at, want, "packet {i}");
        assert_eq!(d.data[0], i as u8);
    }
    // 1500 bytes at 1.544 Mbit/s take 7.772 ms.
    assert_eq!(l.serialization_time(1500), Duration::from_nanos(7_772_021));
}

#[test]
fn idle_link_restarts_serialization_at_send_time() {
    let mut l: Link = Link::new(LinkConfig::new(8_000_000, ms(1)), 1).unwrap();
    l.send(Duration::ZERO, vec![0; 1000]); // 1 ms on the wire
    l.send(ms(10), vec![0; 1000]);
    let got = drain(&mut l, Duration::from_secs(1));
    assert_eq!(got[0].at, ms(2));
    assert_eq!(got[1].at, ms(12));
}

#[test]
fn overhead_counts_on_the_wire_not_in_payload() {
    let mut cfg = LinkConfig::new(8_000_000, Duration::ZERO);
    cfg.overhead_bytes = 28;
    let mut l: Link = Link::new(cfg, 1).unwrap();
    l.send(Duration::ZERO, vec![0; 972]);
    let d = l.poll(ms(5)).unwrap();
    assert_eq!(d.at, ms(1));
    assert_eq!(l.stats().bytes_delivered, 972);
}

#[test]
fn unlimited_rate_only_delays() {
    let mut l: Link = Link::new(LinkConfig::new(0, ms(40)), 1).unwrap();
    for i in 0..100 {
        l.send(ms(i), vec![0; 65000]);
    }
    let got = drain(&mut l, Duration::from_secs(1));
    assert_eq!(got.len(), 100);
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.at, ms(i as u64 + 40));
    }
}

#[test]
fn saturated_throughput_equals_rate() {
    // Offer 2x the rate for 10 s of virtual time; the delivered bits per
    // second over the busy period equal the rate.
    let rate = 2_048_000;
    let mut cfg = LinkConfig::new(rate, ms(10));
    cfg.queue_bytes = Some(30_000);
    let mut l: Link = Link::new(cfg, 3).unwrap();
    let mut t = Duration::ZERO;
    let gap = ceil_ns(1200 * 8, rate * 2);
    let mut delivered = Vec::new();
    while t < Duration::from_secs(10) {
        l.send(t, vec![0; 1200]);
        while let Some(d) = l.poll(t) {
            delivered.push(d);
        }
        t += gap;
    }
    delivered.extend(drain(&mut l, Duration::from_secs(20)));
    let first = delivered.first().unwrap().at;
    let last = delivered.last().unwrap().at;
    let bits = (delivered.len() as u64 - 1) * 1200 * 8;
    let measured = bits as f64 / (last - first).as_secs_f64();
    assert!((measured / rate as f64 - 1.0).abs() < 1e-6, "{measured}");
    assert!(l.stats().dropped_queue > 0);
    assert_eq!(l.stats().dropped_loss, 0);
}

#[test]
fn queue_limit_is_drop_tail() {
    let mut cfg = LinkConfig::new(1_000_000, Duration::ZERO);
    cfg.queue_bytes = Some(10_000);
    let mut l: Link = Link::new(cfg, 1).unwrap();
    let verdicts: Vec<_> = (0..20)
        .map(|i| l.send(Duration::ZERO, vec![i; 1000]))
        .collect();
    for (i, v) in verdicts.iter().enumerate() {
        if i < 10 {
            assert!(matches!(v, Verdict::Scheduled { .. }), "{i}");
        } else {
            assert!(
                matches!(v, Verdict::Dropped { cause: DropCause::Queue, data, .. } if data[0] == i as u8),
                "{i}"
            );
        }
    }
    assert_eq!(l.stats().dropped_queue, 10);
    assert_eq!(l.stats().queue_peak_bytes, 10_000);
    // After one packet's time (8 ms) there is room for one more.
    assert_eq!(l.queue_room(ms(8)), 1000);
    assert!(!l.send(ms(8), vec![0; 1000]).is_dropped());
    assert!(l.send(ms(8), vec![0; 1000]).is_dropped());
}

#[test]
fn random_loss_matches_configuration() {
    let mut cfg = LinkConfig::new(0, ms(1));
    cfg.loss = 0.02;
    let mut l: Link = Link::new(cfg, 42).unwrap();
    let n = 200_000u64;
    for i in 0..n {
        l.send(Duration::from_micros(i), vec![0; 10]);
    }
    let lost = l.stats().dropped_loss as f64;
    let sigma = (n as f64 * 0.02 * 0.98).sqrt();
    assert!((lost - n as f64 * 0.02).abs() < 5.0 * sigma, "lost {lost}");
    assert_eq!(
        drain(&mut l, Duration::from_secs(1)).len() as f64,
        n as f64 - lost
    );
}

#[test]
fn bursty_loss_has_mean_and_bursts() {
    let mut cfg = LinkConfig::new(0, Duration::ZERO);
    cfg.loss = 0.01;
    cfg.loss_burst = Some(4.0);
    let mut l: Link<u32> = Link::new(cfg, 9).unwrap();
    let n = 400_000u32;
    let mut lost = Vec::new();
    for i in 0..n {
        if l.send_tagged(Duration::from_micros(i as u64), vec![], i)
            .is_dropped()
        {
            lost.push(i);
        }
    }
    let rate = lost.len() as f64 / n as f64;
    assert!((rate - 0.01).abs() < 0.002, "loss {rate}");
    let bursts = 1 + lost.windows(2).filter(|w| w[1] != w[0] + 1).count();
    let mean_burst = lost.len() as f64 / bursts as f64;
    assert!((mean_burst - 4.0).abs() < 0.6, "burst {mean_burst}");
}

#[test]
fn outage_drops_what_is_sent_or_due_during_it() {
    let mut cfg = LinkConfig::new(0, ms(50));
    cfg.outages.push("1s..2s/10s".parse().unwrap());
    let mut l: Link<u64> = Link::new(cfg, 1).unwrap();
    let mut delivered = 0;
    for t in (0..25_000).step_by(10) {
        let v = l.send_tagged(ms(t), vec![1], t);
        let down = (1000..2000).contains(&(t % 10_000));
        assert_eq!(
            matches!(
                v,
                Verdict::Dropped {
                    cause: DropCause::Outage,
                    ..
                }
            ),
            down,
            "t={t}"
        );
        delivered += usize::from(!down);
    }
    // Packets in propagation when the outage starts still arrive.
    assert_eq!(drain(&mut l, Duration::from_secs(30)).len(), delivered);
    assert_eq!(l.stats().dropped_outage, 300);

    // A queued packet whose turn comes during the outage is dropped too.
    let mut cfg = LinkConfig::new(8_000, Duration::ZERO);
    cfg.queue_bytes = Some(10_000);
    cfg.outages.push("1s..5s".parse().unwrap());
    let mut l: Link = Link::new(cfg, 1).unwrap();
    assert!(!l.send(Duration::ZERO, vec![0; 1000]).is_dropped()); // on the wire 0..1 s
    assert!(matches!(
        l.send(Duration::ZERO, vec![0; 1000]),
        Verdict::Dropped {
            cause: DropCause::Outage,
            ..
        }
    ));
}

#[test]
fn reordering_and_duplication_and_corruption() {
    let mut cfg = LinkConfig::new(0, ms(10));
    cfg.reorder = 0.1;
    cfg.reorder_delay = ms(5);
    cfg.duplicate = 0.05;
    cfg.corrupt = 0.05;
    let mut l: Link<u32> = Link::new(cfg, 5).unwrap();
    let n = 20_000u32;
    for i in 0..n {
        l.send_tagged(
            Duration::from_micros(i as u64 * 100),
            i.to_be_bytes().repeat(8),
            i,
        );
    }
    let got = drain(&mut l, Duration::from_secs(10));
    let s = l.stats().clone();
    assert_eq!(got.len() as u64, n as u64 + s.duplicated);
    let close = |x: u64, p: f64| (x as f64 - n as f64 * p).abs() < 5.0 * (n as f64 * p).sqrt();
    assert!(close(s.reordered, 0.1), "{}", s.reordered);
    assert!(close(s.duplicated, 0.05), "{}", s.duplicated);
    assert!(close(s.corrupted, 0.05), "{}", s.corrupted);
    let out_of_order = got.windows(2).filter(|w| w[1].tag < w[0].tag).count();
    assert!(out_of_order > 0);
    for d in &got {
        let clean = d.tag.to_be_bytes().repeat(8);
        let flipped: u32 = d
            .data
            .iter()
            .zip(&clean)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(flipped, u32::from(d.corrupted_bit.is_some()));
        if d.reordered {
            assert_eq!(d.at, d.sent_at + ms(15));
        }
    }
}

#[test]
fn different_seeds_give_different_losses() {
    let run = |seed| {
        let mut cfg = LinkConfig::new(0, Duration::ZERO);
        cfg.loss = 0.1;
        let mut l: Link<u32> = Link::new(cfg, seed).unwrap();
        (0..1000)
            .filter(|&i| l.send_tagged(Duration::ZERO, vec![], i).is_dropped())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn duplex_directions_draw_independent_streams() {
    let mut cfg = LinkConfig::new(0, Duration::ZERO);
    cfg.loss = 0.5;
    let mut d: Duplex = Duplex::new(DuplexConfig::symmetric(cfg), 7).unwrap();
    let up: Vec<bool> = (0..200)
        .map(|_| d.up.send(Duration::ZERO, vec![]).is_dropped())
        .collect();
    let down: Vec<bool> = (0..200)
        .map(|_| d.down.send(Duration::ZERO, vec![]).is_dropped())
        .collect();
    assert_ne!(up, down);
}

fn impaired() -> impl Strategy<Value = LinkConfig> {
    (
        prop_oneof![Just(0u64), 9_600u64..2_000_000_000],
        0u64..50_000,
        0u64..5_000,
        0.0f64..0.3,
        proptest::option::of(1.0f64..8.0),
        0.0f64..0.2,
        0.0f64..0.2,
        0.0f64..0.2,
        proptest::option::of(2_000u64..200_000),
    )
        .prop_map(
            |(rate, delay_us, jitter_us, loss, burst, dup, reo, cor, q)| LinkConfig {
                rate_bps: rate,
                delay: Duration::from_micros(delay_us),
                jitter: Duration::from_micros(jitter_us),
                loss,
                loss_burst: burst,
                duplicate: dup,
                reorder: reo,
                corrupt: cor,
                queue_bytes: q,
                outages: vec![Outage {
                    start: ms(30),
                    duration: ms(5),
                    every: Some(ms(70)),
                }],
                ..LinkConfig::default()
            },
        )
}

fn inputs() -> impl Strategy<Value = Vec<(u64, usize)>> {
    proptest::collection::vec((0u64..2_000, 0usize..1500), 1..300)
}

/// Runs a schedule of (gap in µs, size) sends, polling as it goes.
fn run_schedule(cfg: &LinkConfig, seed: u64, sched: &[(u64, usize)]) -> Vec<Delivery<usize>> {
    let mut l: Link<usize> = Link::new(cfg.clone(), seed).unwrap();
    let mut t = Duration::ZERO;
    let mut out = Vec::new();
    for (i, &(gap, size)) in sched.iter().enumerate() {
        t += Duration::from_micros(gap);
        while let Some(d) = l.poll(t) {
            out.push(d);
        }
        l.send_tagged(t, vec![(i % 251) as u8; size], i);
        assert!(l.stats().queue_bytes <= cfg.queue_limit());
    }
    out.extend(drain(&mut l, Duration::MAX));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn same_seed_same_output(cfg in impaired(), seed in any::<u64>(), sched in inputs()) {
        let a = run_schedule(&cfg, seed, &sched);
        let b = run_schedule(&cfg, seed, &sched);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn back_to_back_serialization_is_exact(
        rate in 9_600u64..10_000_000_000,
        sizes in proptest::collection::vec(1usize..9000, 1..50),
        delay_us in 0u64..100_000,
        overhead in 0u32..64,
    ) {
        let mut cfg = LinkConfig::new(rate, Duration::from_micros(delay_us));
        cfg.overhead_bytes = overhead;
        cfg.queue_bytes = Some(u64::MAX / 4);
        let mut l: Link = Link::new(cfg, 0).unwrap();
        for &s in &sizes {
            prop_assert!(!l.send(Duration::ZERO, vec![0; s]).is_dropped());
        }
        let got = drain(&mut l, Duration::MAX);
        let mut bits = 0u128;
        for (d, &s) in got.iter().zip(&sizes) {
            bits += (s as u128 + overhead as u128) * 8;
            prop_assert_eq!(d.at, ceil_ns(bits, rate) + Duration::from_micros(delay_us));
        }
    }

    #[test]
    fn jitter_never_reorders_unless_asked(
        rate in prop_oneof![Just(0u64), 100_000u64..1_000_000_000],
        delay_us in 0u64..20_000,
        jitter_us in 1u64..20_000,
        sched in inputs(),
        seed in any::<u64>(),
    ) {
        let mut cfg = LinkConfig::new(rate, Duration::from_micros(delay_us));
        cfg.jitter = Duration::from_micros(jitter_us);
        cfg.queue_bytes = Some(u64::MAX / 4);
        let got = run_schedule(&cfg, seed, &sched);
        prop_assert_eq!(got.len(), sched.len());
        for (i, d) in got.iter().enumerate() {
            prop_assert_eq!(d.tag, i);
        }
        let (delay, jitter) = (Duration::from_micros(delay_us), Duration::from_micros(jitter_us));
        let mut prev = Duration::ZERO;
        for d in &got {
            prop_assert!(d.at >= d.sent_at);
            if rate == 0 {
                // Within delay ± jitter, or held behind the packet before it.
                prop_assert!(d.at >= d.sent_at + delay.saturating_sub(jitter));
                prop_assert!(d.at <= (d.sent_at + delay + jitter).max(prev));
            }
            prev = d.at;
        }
    }

    #[test]
    fn queue_never_exceeds_limit(cfg in impaired(), sched in inputs(), seed in any::<u64>()) {
        // run_schedule asserts the bound after every send.
        let got = run_schedule(&cfg, seed, &sched);
        prop_assert!(got.len() <= sched.len() * 2);
    }
}
