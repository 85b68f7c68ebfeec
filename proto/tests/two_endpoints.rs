//! A sender and a receiver in one thread, joined by a fake link that drops,
//! duplicates, reorders and corrupts frames, under a fake clock. Every write
//! must reach the replica exactly once, in seq order, and the replica must
//! end equal to the host's volume; every host write must be answered once.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dtu_proto::chunk::ChunkPlan;
use dtu_proto::codec::{decode_chunk, encode_chunk, EncodeOptions, Key};
use dtu_proto::frame::{Flush, Frame, Hello, Role, Write};
use dtu_proto::receiver::{Apply, Inbound};
use dtu_proto::sender::{OpKind, SenderConfig};
use dtu_proto::{AckPolicy, ChunkId, Receiver, Sender, Trigger};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VOLUME: usize = 1 << 20;

struct Link {
    rng: ChaCha8Rng,
    queue: BTreeMap<(Duration, u64), Frame>,
    serial: u64,
    loss: f64,
    dup: f64,
    corrupt: f64,
}

impl Link {
    fn send(&mut self, now: Duration, f: Frame) {
        if self.rng.gen_bool(self.loss) {
            return;
        }
        let copies = if self.rng.gen_bool(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut f = f.clone();
            if let Frame::Write(w) = &mut f {
                if !w.chunk.payload.is_empty() && self.rng.gen_bool(self.corrupt) {
                    let mut p = w.chunk.payload.to_vec();
                    let i = self.rng.gen_range(0..p.len());
                    p[i] ^= 1 << self.rng.gen_range(0..8);
                    w.chunk.payload = Bytes::from(p);
                }
            }
            // Delay 5..25 ms: frames overtake each other.
            let at = now + Duration::from_micros(self.rng.gen_range(5_000..25_000));
            self.serial += 1;
            self.queue.insert((at, self.serial), f);
        }
    }

    fn due(&mut self, now: Duration) -> Option<Frame> {
        let (&key, _) = self.queue.first_key_value()?;
        if key.0 > now {
            return None;
        }
        self.queue.remove(&key)
    }
}

fn hello(role: Role) -> Hello {
    Hello {
        version: dtu_proto::PROTOCOL_VERSION,
        role,
        volume_id: [7; 16],
        volume_size: VOLUME as u64,
        block_size: 4096,
        features: 0,
        epoch: 1,
        stored_seq: 0,
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

fn run(seed: u64, seal: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let key = Key::from_bytes(&[seed as u8; 32]);
    let key = seal.then_some(&key);
    let t0 = Instant::now();
    let mut now = Duration::ZERO;
    let mut sender = Sender::new(
        SenderConfig {
            policy: AckPolicy {
                trigger: Trigger::RemoteReceived,
                dirty_threshold: 0.0,
                ..AckPolicy::default()
            },
            max_inflight_bytes: 256 << 10,
            retransmit_timeout: Some(Duration::from_millis(200)),
            heartbeat_interval: Duration::from_millis(50),
            degrade_after: None,
        },
        1,
        1,
        t0,
    );
    let mut receiver = Receiver::new(0, 0, Duration::from_millis(50), t0);
    let mut up = Link {
        rng: ChaCha8Rng::seed_from_u64(seed ^ 1),
        queue: BTreeMap::new(),
        serial: 0,
        loss: 0.05,
        dup: 0.05,
        corrupt: 0.03,
    };
    let mut down = Link {
        rng: ChaCha8Rng::seed_from_u64(seed ^ 2),
        queue: BTreeMap::new(),
        serial: 0,
        loss: 0.05,
        dup: 0.05,
        corrupt: 0.0,
    };

    let reply = receiver
        .on_hello(&hello(Role::Remote), &hello(Role::Primary), None, t0)
        .unwrap();
    sender.on_connected(reply.stored_seq, t0).unwrap();

    // What the primary's nvbuf would hold: the encoded frames of each seq.
    let mut journal: HashMap<u64, Vec<Frame>> = HashMap::new();
    let mut host = vec![0u8; VOLUME];
    let mut replica = vec![0u8; VOLUME];
    let mut answered = 0u64;
    let mut last_applied = 0u64;
    let writes = 150;
    let mut submitted = 0;
    let mut reconnected = false;

    for step in 0..200_000 {
        now += Duration::from_micros(500);
        let at = t0 + now;

        // The host writes now and then; every tenth op is a flush.
        if submitted < writes && rng.gen_bool(0.05) {
            submitted += 1;
            if submitted % 10 == 0 {
                let seq = sender.submit(OpKind::Flush, 0, at);
                journal.insert(seq, vec![Frame::Flush(Flush { seq, epoch: 1 })]);
                sender.on_buffered(seq, at);
            } else {
                let len = rng.gen_range(1..150_000);
                let offset = rng.gen_range(0..VOLUME - len) as u64;
                let data: Vec<u8> = if rng.gen_bool(0.2) {
                    vec![0; len]
                } else {
                    (0..len).map(|_| rng.gen_range(0..4u8)).collect()
                };
                host[offset as usize..offset as usize + len].copy_from_slice(&data);
                let seq = sender.submit(OpKind::Write, len as u64, at);
                let plan = ChunkPlan::new(offset, len, 65536);
                let frames = plan
                    .spans()
                    .map(|s| {
                        let id = ChunkId {
                            epoch: 1,
                            seq,
                            index: s.index,
                        };
                        Frame::Write(Write {
                            id,
                            count: plan.count(),
                            offset: s.offset,
                            chunk: encode_chunk(
                                &data[s.range.clone()],
                                id,
                                s.offset,
                                &EncodeOptions {
                                    compress: true,
                                    key,
                                },
                            ),
                        })
                    })
                    .collect();
                journal.insert(seq, frames);
                sender.on_buffered(seq, at);
            }
        }

        // Halfway, the connection breaks and comes back.
        if !reconnected && submitted == writes / 2 {
            reconnected = true;
            sender.on_disconnected(at);
            receiver.on_disconnected();
            up.queue.clear();
            down.queue.clear();
            let reply = receiver
                .on_hello(&hello(Role::Remote), &hello(Role::Primary), None, at)
                .unwrap();
            sender.on_connected(reply.stored_seq, at).unwrap();
        }

        // Primary → link.
        while let Some(seq) = sender.poll_send(at) {
            for f in &journal[&seq] {
                up.send(now, f.clone());
            }
            sender.on_sent(seq, at);
        }
        if sender.poll_timeout().is_some_and(|t| t <= at) {
            sender.handle_timeout(at);
        }
        while let Some(f) = sender.poll_transmit() {
            up.send(now, f);
        }

        // Link → remote; decode inline; apply in order; sync every few steps.
        while let Some(f) = up.due(now) {
            // Frames cross as bytes, as on a real stream.
            let mut wire = BytesMut::new();
            f.encode(&mut wire);
            let f = dtu_proto::frame::decode(&mut wire, dtu_proto::DEFAULT_MAX_FRAME)
                .unwrap()
                .unwrap();
            if let Inbound::Decode(w) = receiver.on_frame(f, at) {
                let result = decode_chunk(&w.chunk, w.id, w.offset, key);
                receiver.on_decoded(&w, result);
            }
        }
        while let Some(op) = receiver.poll_apply() {
            assert_eq!(op.seq(), last_applied + 1, "applied out of order or twice");
            last_applied = op.seq();
            match &op {
                Apply::Write { chunks, .. } => {
                    for (off, data) in chunks {
                        replica[*off as usize..*off as usize + data.len()].copy_from_slice(data);
                    }
                }
                Apply::Flush { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
            receiver.on_applied(&op);
        }
        if step % 7 == 0 {
            receiver.on_synced(receiver.applied_upto());
        }
        if receiver.poll_timeout().is_some_and(|t| t <= at) {
            receiver.handle_timeout(at);
        }
        while let Some(f) = receiver.poll_transmit() {
            down.send(now, f);
        }
        while let Some(f) = down.due(now) {
            sender.on_frame(&f, at).unwrap();
        }
        while let Some(c) = sender.poll_answer() {
            answered += 1;
            assert_eq!(c.seq, answered, "answers come in seq order, once each");
        }

        if submitted == writes
            && sender.progress().remote_stored == writes as u64
            && answered == writes as u64
        {
            assert_eq!(
                replica, host,
                "seed {seed}: replica differs from the host's volume"
            );
            assert!(
                receiver.stats().duplicates > 0,
                "seed {seed}: the link should have duplicated something"
            );
            return;
        }
    }
    panic!(
        "seed {seed}: did not converge: {:?}, answered {answered}, applied {last_applied}",
        sender.progress()
    );
}

#[test]
fn unsealed_writes_cross_a_bad_link_once_in_order() {
    for seed in 0..6 {
        run(seed, false);
    }
}

#[test]
fn sealed_writes_cross_a_bad_link_once_in_order() {
    for seed in 100..106 {
        run(seed, true);
    }
}
