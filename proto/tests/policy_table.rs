//! The acknowledgement policy, end to end through the sender: for each
//! trigger, with spoofing on and off and the dirty % above and below the
//! threshold, the exact stage at which a host write is answered.

use std::time::{Duration, Instant};

use dtu_proto::frame::{Ack, AckKind, Frame, Nack, NackReason};
use dtu_proto::policy::MAX_DELAY;
use dtu_proto::sender::{Answer, OpKind, Sender, SenderConfig};
use dtu_proto::{AckPolicy, Trigger};
use proptest::prelude::*;

fn sender(policy: AckPolicy, now: Instant) -> Sender {
    let mut s = Sender::new(
        SenderConfig {
            policy,
            ..SenderConfig::default()
        },
        1,
        1,
        now,
    );
    s.on_connected(0, now).unwrap();
    s
}

/// Walks one write through every stage; returns the stage after which it
/// was answered and the answer.
fn answered_at(s: &mut Sender, now: Instant) -> (Trigger, Answer) {
    let seq = s.submit(OpKind::Write, 4096, now);
    let mut stage = Trigger::Received;
    loop {
        if let Some(c) = s.poll_answer() {
            assert_eq!(c.seq, seq);
            assert!(s.poll_answer().is_none(), "answered twice");
            return (stage, c);
        }
        stage = match stage {
            Trigger::Received => {
                s.on_buffered(seq, now);
                Trigger::Buffered
            }
            Trigger::Buffered => {
                assert_eq!(s.poll_send(now), Some(seq));
                s.on_sent(seq, now);
                Trigger::Sent
            }
            Trigger::Sent => {
                s.on_frame(
                    &Frame::Ack(Ack {
                        kind: AckKind::Received,
                        upto: seq,
                    }),
                    now,
                )
                .unwrap();
                Trigger::RemoteReceived
            }
            Trigger::RemoteReceived => {
                s.on_frame(
                    &Frame::Ack(Ack {
                        kind: AckKind::Stored,
                        upto: seq,
                    }),
                    now,
                )
                .unwrap();
                Trigger::RemoteStored
            }
            Trigger::RemoteStored => panic!("never answered"),
        };
    }
}

#[test]
fn each_trigger_answers_at_its_stage() {
    let now = Instant::now();
    for trigger in Trigger::ALL {
        for spoofing in [true, false] {
            for dirty in [None, Some(0.0), Some(74.9), Some(75.0), Some(100.0)] {
                let policy = AckPolicy {
                    trigger,
                    spoofing,
                    ..AckPolicy::default()
                };
                let mut s = sender(policy, now);
                if let Some(d) = dirty {
                    s.report_dirty(d, now);
                }
                let above = dirty.is_some_and(|d| d >= 75.0);
                let expect = if spoofing && above {
                    trigger
                } else {
                    Trigger::RemoteStored
                };
                let (stage, c) = answered_at(&mut s, now);
                assert_eq!(
                    stage, expect,
                    "trigger {trigger}, spoofing {spoofing}, dirty {dirty:?}"
                );
                assert_eq!(c.trigger, expect);
                assert_eq!(s.stats().answered_by[expect], 1);
                // The answer's latency lands in its trigger's histogram only.
                for t in Trigger::ALL {
                    let n = s.stats().answer_latency_by_trigger[t].count();
                    assert_eq!(n, u64::from(t == expect), "{t} after answering at {expect}");
                }
            }
        }
    }
}

#[test]
fn threshold_zero_spoofs_always() {
    let now = Instant::now();
    for trigger in Trigger::ALL {
        let mut s = sender(
            AckPolicy {
                trigger,
                dirty_threshold: 0.0,
                ..AckPolicy::default()
            },
            now,
        );
        assert_eq!(answered_at(&mut s, now).0, trigger);
    }
}

#[test]
fn delay_holds_the_answer_after_the_trigger() {
    let t0 = Instant::now();
    let delay = Duration::from_millis(30);
    let mut s = sender(
        AckPolicy {
            trigger: Trigger::Buffered,
            delay,
            dirty_threshold: 0.0,
            ..AckPolicy::default()
        },
        t0,
    );
    let seq = s.submit(OpKind::Write, 10, t0);
    let t1 = t0 + Duration::from_millis(5);
    s.on_buffered(seq, t1);
    assert!(s.poll_answer().is_none());
    let due = s.poll_timeout().unwrap();
    assert!(due <= t1 + delay, "timer must cover the delay");
    s.handle_timeout(t1 + delay - Duration::from_millis(1));
    assert!(s.poll_answer().is_none(), "answered before the delay");
    s.handle_timeout(t1 + delay);
    let c = s.poll_answer().expect("answered after the delay");
    assert_eq!(c.trigger, Trigger::Buffered);
    assert_eq!(c.latency, Duration::from_millis(35));
}

#[test]
fn a_policy_change_applies_to_unanswered_writes() {
    let now = Instant::now();
    let mut s = sender(AckPolicy::default(), now); // buffered, but dirty unreported
    let a = s.submit(OpKind::Write, 10, now);
    let b = s.submit(OpKind::Write, 10, now);
    s.on_buffered(b, now);
    assert!(
        s.poll_answer().is_none(),
        "below threshold: waits for remote-stored"
    );
    s.report_dirty(90.0, now);
    assert_eq!(
        s.poll_answer().map(|c| (c.seq, c.trigger)),
        Some((a, Trigger::Buffered))
    );
    assert_eq!(s.poll_answer().map(|c| c.seq), Some(b));
    assert!(s.spoofing_active());
    // Below the threshold again: a and b are answered but not stored, so
    // spoofing holds until the replica has them.
    s.report_dirty(10.0, now);
    assert!(s.spoofing_active() && s.draining_spoofed());
    assert_eq!(s.effective().0, Trigger::Buffered);
    store_upto(&mut s, b, now);
    assert!(!s.spoofing_active());
    assert_eq!(s.effective().0, Trigger::RemoteStored);
}

/// Sends every queued seq and acks all up to `upto` as received and stored.
fn store_upto(s: &mut Sender, upto: u64, now: Instant) {
    while let Some(seq) = s.poll_send(now) {
        s.on_sent(seq, now);
    }
    for kind in [AckKind::Received, AckKind::Stored] {
        s.on_frame(&Frame::Ack(Ack { kind, upto }), now).unwrap();
    }
}

#[test]
fn the_spoofing_hold_ends_once_the_spoofed_backlog_is_stored() {
    let now = Instant::now();
    let mut s = sender(AckPolicy::default(), now); // buffered at dirty >= 75 %
    s.report_dirty(90.0, now);
    let w1 = s.submit(OpKind::Write, 10, now);
    s.on_buffered(w1, now);
    assert_eq!(s.poll_answer().map(|c| c.trigger), Some(Trigger::Buffered));
    // The cache drains below the threshold while w1 is still on the link:
    // the next write is answered from the nvbuf, not queued behind w1.
    s.report_dirty(10.0, now);
    let w2 = s.submit(OpKind::Write, 10, now);
    s.on_buffered(w2, now);
    assert_eq!(
        s.poll_answer().map(|c| (c.seq, c.trigger)),
        Some((w2, Trigger::Buffered))
    );
    // w2, answered during the hold, does not extend it: once w1 is stored
    // the hold ends although w2 is not.
    store_upto(&mut s, w1, now);
    assert!(!s.draining_spoofed() && !s.spoofing_active());
    let w3 = s.submit(OpKind::Write, 10, now);
    s.on_buffered(w3, now);
    assert!(s.poll_answer().is_none(), "w3 waits for remote-stored");
    store_upto(&mut s, w3, now);
    assert_eq!(
        s.poll_answer().map(|c| (c.seq, c.trigger)),
        Some((w3, Trigger::RemoteStored))
    );
}

#[test]
fn answers_at_buffered_while_the_link_is_down_are_drained_before_remote_stored_resumes() {
    let now = Instant::now();
    let mut s = Sender::new(
        SenderConfig {
            policy: AckPolicy {
                dirty_threshold: 100.0,
                ..AckPolicy::default()
            },
            degrade_after: Some(Duration::from_secs(5)),
            ..SenderConfig::default()
        },
        1,
        1,
        now,
    );
    s.report_dirty(0.0, now);
    // No link for longer than degrade_after: answered at buffered.
    let later = now + Duration::from_secs(6);
    let w1 = s.submit(OpKind::Write, 10, later);
    s.on_buffered(w1, later);
    s.handle_timeout(later);
    assert_eq!(s.poll_answer().map(|c| c.trigger), Some(Trigger::Buffered));
    // The link is back: w1 is not stored yet, so the hold answers the next
    // write from the nvbuf rather than behind the backlog.
    s.on_connected(0, later).unwrap();
    assert!(s.draining_spoofed());
    let w2 = s.submit(OpKind::Write, 10, later);
    s.on_buffered(w2, later);
    assert_eq!(
        s.poll_answer().map(|c| (c.seq, c.trigger)),
        Some((w2, Trigger::Buffered))
    );
    store_upto(&mut s, w1, later);
    assert!(!s.draining_spoofed());
}

#[test]
fn a_flush_waits_for_every_earlier_write() {
    let now = Instant::now();
    let mut s = sender(
        AckPolicy {
            trigger: Trigger::Sent,
            dirty_threshold: 0.0,
            ..AckPolicy::default()
        },
        now,
    );
    let w1 = s.submit(OpKind::Write, 10, now);
    let w2 = s.submit(OpKind::Write, 10, now);
    let f = s.submit(OpKind::Flush, 0, now);
    s.on_buffered(f, now);
    // Send w2 and the flush, but not w1 yet: nothing may be answered, since
    // answers go in seq order.
    let first = s.poll_send(now).unwrap();
    assert_eq!(first, w1);
    let second = s.poll_send(now).unwrap();
    let third = s.poll_send(now).unwrap();
    s.on_sent(second, now);
    s.on_sent(third, now);
    assert!(s.poll_answer().is_none());
    s.on_sent(first, now);
    let order: Vec<_> = std::iter::from_fn(|| s.poll_answer())
        .map(|c| (c.seq, c.kind))
        .collect();
    assert_eq!(
        order,
        vec![(w1, OpKind::Write), (w2, OpKind::Write), (f, OpKind::Flush)]
    );
}

#[test]
fn nack_and_reconnect_resend() {
    let now = Instant::now();
    let mut s = sender(AckPolicy::default(), now);
    let a = s.submit(OpKind::Write, 10, now);
    let b = s.submit(OpKind::Write, 10, now);
    s.on_buffered(b, now);
    assert_eq!(s.poll_send(now), Some(a));
    assert_eq!(s.poll_send(now), Some(b));
    s.on_sent(a, now);
    s.on_sent(b, now);
    assert_eq!(s.poll_send(now), None);
    s.on_frame(
        &Frame::Nack(Nack {
            seq: b,
            index: 0,
            reason: NackReason::Checksum,
        }),
        now,
    )
    .unwrap();
    assert_eq!(s.poll_send(now), Some(b));
    s.on_sent(b, now);
    assert_eq!(s.stats().retransmits, 1);
    // The link drops; the remote had stored `a` only.
    s.on_disconnected(now);
    assert_eq!(s.poll_send(now), None, "nothing is sent while disconnected");
    s.on_connected(a, now).unwrap();
    assert_eq!(s.poll_send(now), Some(b));
    assert_eq!(s.poll_send(now), None);
    assert_eq!(s.progress().remote_stored, a);
}

#[test]
fn the_window_bounds_bytes_in_flight() {
    let now = Instant::now();
    let mut s = Sender::new(
        SenderConfig {
            max_inflight_bytes: 100,
            ..SenderConfig::default()
        },
        1,
        1,
        now,
    );
    s.on_connected(0, now).unwrap();
    for _ in 0..5 {
        s.submit(OpKind::Write, 40, now);
    }
    s.on_buffered(5, now);
    assert_eq!(s.poll_send(now), Some(1));
    assert_eq!(s.poll_send(now), Some(2));
    assert_eq!(s.poll_send(now), None, "a third 40-byte write exceeds 100");
    s.on_frame(
        &Frame::Ack(Ack {
            kind: AckKind::Stored,
            upto: 1,
        }),
        now,
    )
    .unwrap();
    assert_eq!(s.poll_send(now), Some(3));
}

#[test]
fn an_ack_for_an_unknown_seq_is_an_error() {
    let now = Instant::now();
    let mut s = sender(AckPolicy::default(), now);
    s.submit(OpKind::Write, 1, now);
    assert!(s
        .on_frame(
            &Frame::Ack(Ack {
                kind: AckKind::Stored,
                upto: 9
            }),
            now
        )
        .is_err());
}

#[test]
fn recovered_operations_are_resent_but_not_answered() {
    let now = Instant::now();
    let mut s = Sender::new(SenderConfig::default(), 2, 10, now);
    for seq in 10..13 {
        s.recover(seq, OpKind::Write, 100, now).unwrap();
    }
    assert!(s.recover(20, OpKind::Write, 1, now).is_err());
    assert_eq!(s.next_seq(), 13);
    s.on_connected(10, now).unwrap();
    assert_eq!(s.poll_send(now), Some(11));
    assert_eq!(s.poll_send(now), Some(12));
    assert!(s.poll_answer().is_none());
}

/// Any delay, however absurd (up to `Duration::MAX`, set through
/// `set_policy` on a live sender or given at start), answers the write at
/// the trigger plus the delay capped at [`MAX_DELAY`]: no overflow, no
/// write left unanswered, and later writes still answered.
fn delay_is_capped(delay: Duration, via_set_policy: bool, nanos: u64) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let policy = AckPolicy {
        trigger: Trigger::Buffered,
        delay,
        dirty_threshold: 0.0,
        ..AckPolicy::default()
    };
    let mut s = if via_set_policy {
        let mut s = sender(AckPolicy::default(), t0);
        s.set_policy(policy, t0);
        s
    } else {
        sender(policy, t0)
    };
    let capped = delay.min(MAX_DELAY);
    for round in 0..2u32 {
        let t = t0 + Duration::from_nanos(nanos) + MAX_DELAY * round * 2;
        let seq = s.submit(OpKind::Write, 4096, t);
        s.on_buffered(seq, t);
        let due = s.poll_timeout().expect("a timer for the delay");
        prop_assert!(due <= t + capped, "timer at {:?}", due - t);
        if !capped.is_zero() {
            s.handle_timeout(t + capped - Duration::from_nanos(1));
            prop_assert!(s.poll_answer().is_none(), "answered before the delay");
        }
        s.handle_timeout(t + capped);
        let c = s
            .poll_answer()
            .expect("answered once the capped delay passed");
        prop_assert_eq!(c.seq, seq);
        prop_assert_eq!(c.latency, capped);
    }
    Ok(())
}

proptest! {
    #[test]
    fn no_delay_can_poison_the_sender(
        secs in prop_oneof![
            Just(u64::MAX),
            Just(u64::MAX / 2),
            Just(60u64),
            Just(0u64),
            any::<u64>(),
            0u64..120,
        ],
        sub in 0u32..1_000_000_000,
        via_set_policy in any::<bool>(),
        nanos in 0u64..1_000_000_000,
    ) {
        delay_is_capped(Duration::new(secs, sub), via_set_policy, nanos)?;
    }
}

#[test]
fn duration_max_as_delay_is_answered_after_max_delay() {
    delay_is_capped(Duration::MAX, true, 0).unwrap();
    delay_is_capped(Duration::MAX, false, 0).unwrap();
}
