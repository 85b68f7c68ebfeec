//! The remote's state machine on its own: ordering, duplicates, nacks, acks
//! and the handshake's refusals.

use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu_proto::codec::{decode_chunk, encode_chunk, EncodeOptions};
use dtu_proto::frame::{Ack, AckKind, Flush, Frame, Hello, Nack, NackReason, Role, Write};
use dtu_proto::handshake::HandshakeError;
use dtu_proto::receiver::{Apply, Inbound};
use dtu_proto::{ChunkId, Receiver};

fn hello(role: Role, epoch: u32, stored_seq: u64) -> Hello {
    Hello {
        version: dtu_proto::PROTOCOL_VERSION,
        role,
        volume_id: [1; 16],
        volume_size: 1 << 30,
        block_size: 4096,
        features: 0,
        epoch,
        stored_seq,
        highest_seq: 0,
        key_fingerprint: 0,
        flags: 0,
        gens: Default::default(),
        map_base: 0,
        resume_from: 0,
        decision: 0,
        changed_bytes: 0,
        primary_since: 0,
    }
}

fn write(seq: u64, index: u32, count: u32, byte: u8) -> Write {
    let id = ChunkId {
        epoch: 1,
        seq,
        index,
    };
    let offset = seq * 1_000_000 + index as u64 * 100;
    Write {
        id,
        count,
        offset,
        chunk: encode_chunk(&[byte; 100], id, offset, &EncodeOptions::default()),
    }
}

fn connected(now: Instant) -> Receiver {
    let mut r = Receiver::new(0, 0, Duration::from_secs(1), now);
    r.on_hello(
        &hello(Role::Remote, 0, 0),
        &hello(Role::Primary, 1, 0),
        None,
        now,
    )
    .unwrap();
    r
}

/// Feeds a write through receive and decode.
fn deliver(r: &mut Receiver, w: Write, now: Instant) -> bool {
    match r.on_frame(Frame::Write(w), now) {
        Inbound::Decode(w) => {
            let res = decode_chunk(&w.chunk, w.id, w.offset, None);
            r.on_decoded(&w, res);
            true
        }
        Inbound::Duplicate => false,
        other => panic!("unexpected {other:?}"),
    }
}

fn acks(r: &mut Receiver) -> Vec<Frame> {
    std::iter::from_fn(|| r.poll_transmit()).collect()
}

#[test]
fn out_of_order_chunks_are_released_in_seq_order() {
    let now = Instant::now();
    let mut r = connected(now);
    assert!(deliver(&mut r, write(2, 1, 2, 0xb), now));
    assert!(deliver(&mut r, write(3, 0, 1, 0xc), now));
    assert!(deliver(&mut r, write(2, 0, 2, 0xa), now));
    assert!(r.poll_apply().is_none(), "seq 1 is missing");
    assert_eq!(r.received_upto(), 0);
    assert!(r.on_frame(Frame::Flush(Flush { seq: 1, epoch: 1 }), now) == Inbound::Handled);
    let order: Vec<_> = std::iter::from_fn(|| r.poll_apply())
        .map(|a| a.seq())
        .collect();
    assert_eq!(order, vec![1, 2, 3]);
    assert_eq!(r.received_upto(), 3);
    let mut r2 = connected(now);
    deliver(&mut r2, write(1, 1, 2, 2), now);
    deliver(&mut r2, write(1, 0, 2, 1), now);
    let Some(Apply::Write { chunks, .. }) = r2.poll_apply() else {
        panic!("no write released")
    };
    assert_eq!(
        chunks[0].1[0], 1,
        "chunks of a write come out in index order"
    );
    assert_eq!(chunks[1].1[0], 2);
}

#[test]
fn duplicates_are_dropped_before_and_after_release() {
    let now = Instant::now();
    let mut r = connected(now);
    assert!(deliver(&mut r, write(2, 0, 1, 1), now));
    assert!(!deliver(&mut r, write(2, 0, 1, 1), now), "held chunk");
    assert!(deliver(&mut r, write(1, 0, 1, 1), now));
    while let Some(op) = r.poll_apply() {
        r.on_applied(&op);
    }
    assert!(!deliver(&mut r, write(1, 0, 1, 1), now), "released seq");
    assert_eq!(r.stats().duplicates, 2);
}

#[test]
fn acks_are_cumulative_and_follow_syncs() {
    let now = Instant::now();
    let mut r = connected(now);
    deliver(&mut r, write(1, 0, 1, 1), now);
    deliver(&mut r, write(2, 0, 1, 1), now);
    let sent = acks(&mut r);
    assert_eq!(
        sent,
        vec![Frame::Ack(Ack {
            kind: AckKind::Received,
            upto: 2
        })],
        "coalesced to the latest frontier"
    );
    let op = r.poll_apply().unwrap();
    r.on_applied(&op);
    r.on_synced(5); // clipped to what was applied
    assert_eq!(
        acks(&mut r),
        vec![Frame::Ack(Ack {
            kind: AckKind::Stored,
            upto: 1
        })]
    );
}

#[test]
fn a_damaged_chunk_is_nacked_and_accepted_again() {
    let now = Instant::now();
    let mut r = connected(now);
    let mut bad = write(1, 0, 1, 7);
    let mut p = bad.chunk.payload.to_vec();
    p[10] ^= 4;
    bad.chunk.payload = Bytes::from(p);
    deliver(&mut r, bad, now);
    assert!(acks(&mut r).contains(&Frame::Nack(Nack {
        seq: 1,
        index: 0,
        reason: NackReason::Checksum
    })));
    assert_eq!(r.stats().checksum_failures, 1);
    assert!(r.poll_apply().is_none(), "nothing damaged is ever applied");
    assert!(
        deliver(&mut r, write(1, 0, 1, 7), now),
        "the resend is accepted"
    );
    assert!(matches!(r.poll_apply(), Some(Apply::Write { seq: 1, .. })));
}

#[test]
fn the_handshake_refuses_stale_and_amnesiac_primaries() {
    let now = Instant::now();
    let mut r = Receiver::new(0, 0, Duration::from_secs(1), now);
    let ours = hello(Role::Remote, 0, 0);
    r.on_hello(&ours, &hello(Role::Primary, 5, 0), None, now)
        .unwrap();
    deliver(&mut r, write(1, 0, 1, 1), now);
    deliver(&mut r, write(2, 0, 1, 1), now);
    assert_eq!(r.released_upto(), 2);

    assert!(matches!(
        r.on_hello(&ours, &hello(Role::Primary, 4, 2), None, now),
        Err(HandshakeError::StaleEpoch { seen: 5, theirs: 4 })
    ));
    // A restarted primary that carried over only seq 1 would reuse seq 2.
    assert!(matches!(
        r.on_hello(&ours, &hello(Role::Primary, 6, 1), None, now),
        Err(HandshakeError::PrimaryBehind {
            stored: 2,
            primary: 1
        })
    ));
    assert!(matches!(
        r.on_hello(&ours, &hello(Role::Remote, 6, 9), None, now),
        Err(HandshakeError::SameRole(Role::Remote))
    ));
    let mut other_volume = hello(Role::Primary, 6, 9);
    other_volume.volume_id = [2; 16];
    assert!(matches!(
        r.on_hello(&ours, &other_volume, None, now),
        Err(HandshakeError::Volume { .. })
    ));
    let reply = r
        .on_hello(&ours, &hello(Role::Primary, 6, 2), None, now)
        .unwrap();
    assert_eq!(reply.epoch, 6);
    assert_eq!(r.epoch_seen(), 6);
}

#[test]
fn nothing_unreleased_survives_a_new_connection() {
    let now = Instant::now();
    let mut r = connected(now);
    deliver(&mut r, write(2, 0, 1, 1), now);
    assert!(r.pending_bytes() > 0);
    r.on_hello(
        &hello(Role::Remote, 0, 0),
        &hello(Role::Primary, 2, 5),
        None,
        now,
    )
    .unwrap();
    assert_eq!(r.pending_bytes(), 0);
    assert!(
        deliver(&mut r, write(2, 0, 1, 1), now),
        "held data was forgotten"
    );
}

/// The remote bounds what it holds for later seqs on its own: a primary
/// that ignores its window is told off, and the next seq to release is
/// always taken, so an honest stream cannot wedge.
#[test]
fn a_primary_beyond_the_remote_memory_limit_is_refused() {
    let now = Instant::now();
    let mut r = connected(now).with_max_pending_bytes(250);
    assert!(deliver(&mut r, write(2, 0, 1, 1), now));
    assert!(deliver(&mut r, write(3, 0, 1, 2), now));
    assert_eq!(r.pending_bytes(), 200);
    assert_eq!(
        r.on_frame(Frame::Write(write(4, 0, 1, 3)), now),
        Inbound::Overloaded {
            held: 300,
            limit: 250
        }
    );
    // Seq 1 is the next to release: taken although the limit is reached.
    assert!(deliver(&mut r, write(1, 0, 1, 0), now));
    let released: Vec<_> = std::iter::from_fn(|| r.poll_apply())
        .map(|a| a.seq())
        .collect();
    assert_eq!(released, vec![1, 2, 3]);
    assert_eq!(r.pending_bytes(), 0);
    assert!(deliver(&mut r, write(4, 0, 1, 3), now));
}
