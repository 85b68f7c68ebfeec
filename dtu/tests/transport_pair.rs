//! Two pinned endpoints on 127.0.0.1: frames over uni and bidi streams,
//! each congestion controller, framing errors, timeouts and bind errors.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use dtu::identity::Identity;
use dtu::transport::{
    accept_incoming, client_endpoint, connect, server_endpoint, write_bytes, write_frame,
    Congestion, FrameStream, LinkTuning, TransportError,
};
use dtu_proto::codec::{ChunkFlags, ChunkId, EncodedChunk};
use dtu_proto::frame::{
    Ack, AckKind, Checkpoint, Flush, Frame, Goodbye, GoodbyeReason, Heartbeat, Write,
};

const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
/// Bounds every wait in these tests; generous for a loaded machine.
const LIMIT: Duration = Duration::from_secs(30);

struct Pair {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
}

fn pair(tuning: &LinkTuning) -> Pair {
    let (s, c) = (
        Identity::generate("dtu-remote").unwrap(),
        Identity::generate("dtu-primary").unwrap(),
    );
    Pair {
        server: server_endpoint(LOCAL, &s, &c.fingerprint(), tuning).unwrap(),
        client: client_endpoint(LOCAL, &c, &s.fingerprint(), tuning).unwrap(),
    }
}

impl Pair {
    async fn connect(&self) -> (quinn::Connection, quinn::Connection) {
        let addr = self.server.local_addr().unwrap();
        let server = self.server.clone();
        let accept =
            tokio::spawn(async move { accept_incoming(server.accept().await.unwrap()).await });
        let c = connect(&self.client, addr, "dtu-remote", LIMIT)
            .await
            .expect("client connects");
        let s = tokio::time::timeout(LIMIT, accept)
            .await
            .unwrap()
            .unwrap()
            .expect("server accepts");
        (c, s)
    }
}

fn write_frame_of(seq: u64, len: usize) -> Frame {
    let payload: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + seq) as u8).collect();
    Frame::Write(Write {
        id: ChunkId {
            epoch: 3,
            seq,
            index: 0,
        },
        count: 1,
        offset: seq * 4096,
        chunk: EncodedChunk {
            flags: ChunkFlags::empty(),
            plain_len: len as u32,
            crc: crc32fast::hash(&payload),
            key_id: 0,
            payload: Bytes::from(payload),
        },
    })
}

/// Many frames of every common kind, small and large, with one 1 MiB write.
fn frames() -> Vec<Frame> {
    let mut v = Vec::new();
    for seq in 1..=200u64 {
        v.push(write_frame_of(seq, (seq as usize * 97) % 9000));
        if seq % 10 == 0 {
            v.push(Frame::Ack(Ack {
                kind: AckKind::Stored,
                upto: seq,
            }));
            v.push(Frame::Flush(Flush { seq, epoch: 3 }));
        }
    }
    v.push(write_frame_of(201, 1 << 20));
    v.push(Frame::Heartbeat(Heartbeat {
        sent_at_us: 42,
        echo_us: 7,
        reply: true,
    }));
    v.push(Frame::Checkpoint(Checkpoint {
        seq: 202,
        epoch: 3,
        kind: 0,
        time_us: 0,
        label: "nightly".into(),
    }));
    v.push(Frame::Goodbye(Goodbye {
        reason: GoodbyeReason::Shutdown,
        message: "bye".into(),
    }));
    v
}

async fn read_all(recv: quinn::RecvStream) -> Vec<Frame> {
    let mut fs = FrameStream::new(recv);
    let mut out = Vec::new();
    while let Some(f) = tokio::time::timeout(LIMIT, fs.next())
        .await
        .unwrap()
        .unwrap()
    {
        out.push(f);
        assert!(out.len() < 100_000, "bounded");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cross_uni_and_bidi_streams_and_come_back_equal() {
    let p = pair(&LinkTuning::default());
    let (c, s) = p.connect().await;
    let sent = frames();

    // Server: echo a uni stream's frames on a uni stream of its own, and a
    // bidi stream's frames on its send half, re-encoding each one.
    let echo = tokio::spawn(async move {
        let uni = read_all(s.accept_uni().await.unwrap()).await;
        let mut back = s.open_uni().await.unwrap();
        for f in &uni {
            write_frame(&mut back, f).await.unwrap();
        }
        back.finish().unwrap();
        let (mut send, recv) = s.accept_bi().await.unwrap();
        let mut fs = FrameStream::new(recv);
        let mut n = 0;
        while let Some(f) = fs.next().await.unwrap() {
            write_frame(&mut send, &f).await.unwrap();
            n += 1;
        }
        send.finish().unwrap();
        // Keep the connection until the client has read everything.
        s.closed().await;
        (uni.len(), n)
    });

    // Uni: written frame by frame.
    let mut up = c.open_uni().await.unwrap();
    for f in &sent {
        write_frame(&mut up, f).await.unwrap();
    }
    up.finish().unwrap();
    let back = read_all(c.accept_uni().await.unwrap()).await;
    assert_eq!(back.len(), sent.len());
    assert!(back == sent, "uni echo differs");

    // Bidi: pre-encoded, as frames read back from the nvbuf are.
    let (mut send, recv) = c.open_bi().await.unwrap();
    let reader = tokio::spawn(read_all(recv));
    let mut encoded = Vec::new();
    for f in &sent {
        encoded.extend_from_slice(&f.to_bytes());
    }
    for part in encoded.chunks(300_000) {
        write_bytes(&mut send, part).await.unwrap();
    }
    send.finish().unwrap();
    let back = tokio::time::timeout(LIMIT, reader).await.unwrap().unwrap();
    assert!(back == sent, "bidi echo differs");

    c.close(0u32.into(), b"done");
    let (uni, bidi) = tokio::time::timeout(LIMIT, echo).await.unwrap().unwrap();
    assert_eq!((uni, bidi), (sent.len(), sent.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_congestion_controller_is_used_and_carries_data() {
    use dtu::transport::LineRate;
    use quinn::congestion::{Bbr, Cubic, NewReno};
    for cc in [
        Congestion::Rate,
        Congestion::Bbr,
        Congestion::Cubic,
        Congestion::NewReno,
    ] {
        let tuning = LinkTuning {
            congestion: cc,
            rtt: Duration::from_millis(5),
            ..LinkTuning::default()
        };
        let p = pair(&tuning);
        let (c, s) = p.connect().await;
        let state = c.congestion_state();
        if cc != Congestion::Rate {
            assert_eq!(state.initial_window(), tuning.initial_cwnd(), "{cc:?}");
        }
        let any = state.into_any();
        let right = match cc {
            Congestion::Rate => any.is::<LineRate>(),
            Congestion::Bbr => any.is::<Bbr>(),
            Congestion::Cubic => any.is::<Cubic>(),
            Congestion::NewReno => any.is::<NewReno>(),
        };
        assert!(right, "{cc:?} picked another controller");

        let sink = tokio::spawn(async move { read_all(s.accept_uni().await.unwrap()).await });
        let mut up = c.open_uni().await.unwrap();
        for seq in 1..=8 {
            write_frame(&mut up, &write_frame_of(seq, 256 << 10))
                .await
                .unwrap();
        }
        up.finish().unwrap();
        let got = tokio::time::timeout(LIMIT, sink).await.unwrap().unwrap();
        assert_eq!(got.len(), 8, "{cc:?}");
        assert!(got[7] == write_frame_of(8, 256 << 10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_malformed_streams_are_errors_not_clean_ends() {
    let p = pair(&LinkTuning::default());
    let (c, s) = p.connect().await;
    let whole = write_frame_of(1, 1000).to_bytes();

    // A stream cut in the middle of its second frame.
    let mut up = c.open_uni().await.unwrap();
    write_bytes(&mut up, &whole).await.unwrap();
    write_bytes(&mut up, &whole[..whole.len() / 2])
        .await
        .unwrap();
    up.finish().unwrap();
    let mut fs = FrameStream::new(s.accept_uni().await.unwrap());
    assert!(fs.next().await.unwrap().is_some());
    match fs.next().await {
        Err(TransportError::Truncated(n)) => assert_eq!(n, whole.len() / 2),
        other => panic!("expected a truncation error, got {other:?}"),
    }

    // Bytes that are not a frame.
    let mut up = c.open_uni().await.unwrap();
    write_bytes(&mut up, &[0xAB; 64]).await.unwrap();
    up.finish().unwrap();
    let mut fs = FrameStream::new(s.accept_uni().await.unwrap());
    let e = fs.next().await.unwrap_err();
    assert!(matches!(e, TransportError::Frame(_)), "{e}");
    assert!(e.to_string().contains("not a dtu frame"), "{e}");

    // An empty stream is a clean end.
    let mut up = c.open_uni().await.unwrap();
    up.write_all(&[]).await.unwrap();
    up.finish().unwrap();
    let mut fs = FrameStream::new(s.accept_uni().await.unwrap());
    assert!(fs.next().await.unwrap().is_none());
}

#[tokio::test]
async fn an_unanswering_peer_times_out_with_its_address() {
    let p = pair(&LinkTuning::default());
    // A socket that receives and never answers.
    let silent = std::net::UdpSocket::bind(LOCAL).unwrap();
    let addr = silent.local_addr().unwrap();
    let e = connect(&p.client, addr, "dtu-remote", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("timed out"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_busy_port_is_a_bind_error_naming_it() {
    let id = Identity::generate("dtu-remote").unwrap();
    let taken = std::net::UdpSocket::bind(LOCAL).unwrap();
    let addr = taken.local_addr().unwrap();
    let e = server_endpoint(addr, &id, &id.fingerprint(), &LinkTuning::default()).unwrap_err();
    assert!(matches!(e, TransportError::Bind { .. }));
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("cannot bind UDP socket {addr}:")),
        "{msg}"
    );
}
