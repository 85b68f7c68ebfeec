//! Pushes N MiB of dtu Write frames over K QUIC uni streams between two
//! local pinned endpoints and prints the goodput, optionally through an
//! in-process UDP relay that adds a one-way delay (a long fat link without
//! root or `tc`), and optionally with quinn's default transport config for
//! comparison with the link-tuned one.
//!
//! ```text
//! cargo run --release -p dtu --example quic_throughput -- --mib 256 --streams 4
//! cargo run --release -p dtu --example quic_throughput -- --delay-ms 40 --streams 1
//! cargo run --release -p dtu --example quic_throughput -- --delay-ms 40 --streams 1 --quinn-defaults
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use dtu::identity::Identity;
use dtu::transport::{
    accept_incoming, client_config, client_endpoint, connect, server_config, server_endpoint,
    write_frame, Congestion, FrameStream, LinkTuning,
};
use dtu_proto::codec::{ChunkFlags, ChunkId, EncodedChunk};
use dtu_proto::frame::{Frame, Write};

#[derive(Parser, Debug)]
struct Args {
    /// MiB of payload to send in total.
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Uni streams (lanes) sharing the payload.
    #[arg(long, default_value_t = 4)]
    streams: u64,
    /// One-way delay added by the relay (0: no relay, direct loopback).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Link rate the tuning assumes, Mbit/s.
    #[arg(long, default_value_t = 1000)]
    rate_mbit: u64,
    /// Congestion controller: cubic, bbr or newreno.
    #[arg(long, default_value = "cubic")]
    cc: String,
    /// Use quinn's default TransportConfig instead of the link-tuned one.
    #[arg(long)]
    quinn_defaults: bool,
}

/// Payload bytes per Write frame.
const FRAME_PAYLOAD: usize = 1 << 20;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.streams > 0 && args.mib > 0,
        "--streams and --mib must be positive"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let congestion = match args.cc.as_str() {
        "cubic" => Congestion::Cubic,
        "bbr" => Congestion::Bbr,
        "newreno" => Congestion::NewReno,
        other => anyhow::bail!("unknown congestion controller {other:?}"),
    };
    let tuning = LinkTuning {
        rate_bps: args.rate_mbit * 1_000_000,
        rtt: Duration::from_millis((2 * args.delay_ms).max(1)),
        congestion,
        ..LinkTuning::default()
    };
    let local = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
    let (s_id, c_id) = (
        Identity::generate("dtu-remote")?,
        Identity::generate("dtu-primary")?,
    );
    let server = server_endpoint(local, &s_id, &c_id.fingerprint(), &tuning)?;
    let mut client = client_endpoint(local, &c_id, &s_id.fingerprint(), &tuning)?;
    if args.quinn_defaults {
        let mut sc = server_config(&s_id, &c_id.fingerprint(), &tuning)?;
        sc.transport_config(Arc::new(quinn::TransportConfig::default()));
        server.set_server_config(Some(sc));
        let mut cc = client_config(&c_id, &s_id.fingerprint(), &tuning)?;
        cc.transport_config(Arc::new(quinn::TransportConfig::default()));
        client.set_default_client_config(cc);
    }
    let server_addr = server.local_addr()?;
    let target = if args.delay_ms > 0 {
        relay(server_addr, Duration::from_millis(args.delay_ms)).await?
    } else {
        server_addr
    };

    let total = args.mib << 20;
    let per_stream = total / args.streams;
    let streams = args.streams;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<(u64, Instant)>();
    let sink = tokio::spawn(async move {
        let conn = accept_incoming(server.accept().await.context("no connection")?).await?;
        let mut readers = Vec::new();
        for _ in 0..streams {
            let recv = conn.accept_uni().await?;
            readers.push(tokio::spawn(async move {
                let mut fs = FrameStream::new(recv);
                let mut bytes = 0u64;
                while let Some(f) = fs.next().await? {
                    if let Frame::Write(w) = f {
                        bytes += w.chunk.payload.len() as u64;
                    }
                }
                anyhow::Ok(bytes)
            }));
        }
        let mut bytes = 0;
        for r in readers {
            bytes += r.await??;
        }
        let _ = done_tx.send((bytes, Instant::now()));
        conn.closed().await;
        anyhow::Ok(())
    });

    let conn = connect(&client, target, "dtu-remote", Duration::from_secs(10)).await?;
    let payload = Bytes::from(vec![0x5a; FRAME_PAYLOAD]);
    let start = Instant::now();
    let mut writers = Vec::new();
    for lane in 0..streams {
        let conn = conn.clone();
        let payload = payload.clone();
        writers.push(tokio::spawn(async move {
            let mut send = conn.open_uni().await?;
            let mut sent = 0u64;
            let mut seq = lane + 1;
            while sent < per_stream {
                let len = (per_stream - sent).min(FRAME_PAYLOAD as u64) as usize;
                let f = Frame::Write(Write {
                    id: ChunkId {
                        epoch: 1,
                        seq,
                        index: 0,
                    },
                    count: 1,
                    offset: seq * FRAME_PAYLOAD as u64,
                    chunk: EncodedChunk {
                        flags: ChunkFlags::empty(),
                        plain_len: len as u32,
                        crc: 0,
                        key_id: 0,
                        payload: payload.slice(..len),
                    },
                });
                write_frame(&mut send, &f).await?;
                sent += len as u64;
                seq += streams;
            }
            send.finish()?;
            anyhow::Ok(())
        }));
    }
    for w in writers {
        if let Err(e) = w.await? {
            if sink.is_finished() {
                sink.await??;
            }
            return Err(e.context("sending"));
        }
    }
    let (bytes, done) = tokio::time::timeout(Duration::from_secs(600), done_rx)
        .await
        .context("no result within 10 minutes")?
        .context("the receiving side failed")?;
    conn.close(0u32.into(), b"done");
    sink.await??;
    anyhow::ensure!(
        bytes == per_stream * streams,
        "received {bytes} of {} bytes",
        per_stream * streams
    );
    let secs = (done - start).as_secs_f64();
    let rwnd = if args.quinn_defaults {
        1_250_000
    } else {
        tuning.receive_window()
    };
    println!(
        "{} MiB over {} stream(s), one-way delay {} ms, {:?}, {}: {:.1} MB/s ({:.0} Mbit/s) in {:.2} s; \
         stream window {} B, path MTU {}, lost packets {}",
        bytes >> 20,
        streams,
        args.delay_ms,
        congestion,
        if args.quinn_defaults { "quinn default TransportConfig" } else { "link-tuned TransportConfig" },
        bytes as f64 / secs / 1e6,
        bytes as f64 * 8.0 / secs / 1e6,
        secs,
        rwnd,
        conn.stats().path.current_mtu,
        conn.stats().path.lost_packets,
    );
    Ok(())
}

/// A UDP relay on 127.0.0.1 that delays every datagram by `one_way` in each
/// direction and otherwise forwards them untouched (no rate limit, no loss).
/// Returns the address the client should use.
async fn relay(server: SocketAddr, one_way: Duration) -> anyhow::Result<SocketAddr> {
    let bind = |_| -> anyhow::Result<Arc<tokio::net::UdpSocket>> {
        let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&s, 16 << 20);
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&s, 16 << 20);
        s.set_nonblocking(true)?;
        Ok(Arc::new(tokio::net::UdpSocket::from_std(s)?))
    };
    let (front, back) = (bind(0)?, bind(1)?);
    let front_addr = front.local_addr()?;
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();

    // client -> server
    let (up_tx, mut up_rx) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    {
        let (front, client) = (front.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                let _ = up_tx.send((tokio::time::Instant::now() + one_way, buf[..n].to_vec()));
            }
        });
    }
    {
        let back = back.clone();
        tokio::spawn(async move {
            while let Some((due, d)) = up_rx.recv().await {
                tokio::time::sleep_until(due).await;
                let _ = back.send_to(&d, server).await;
            }
        });
    }
    // server -> client
    let (down_tx, mut down_rx) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    {
        let back = back.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                let _ = down_tx.send((tokio::time::Instant::now() + one_way, buf[..n].to_vec()));
            }
        });
    }
    tokio::spawn(async move {
        while let Some((due, d)) = down_rx.recv().await {
            tokio::time::sleep_until(due).await;
            let to = *client.lock().unwrap();
            if let Some(to) = to {
                let _ = front.send_to(&d, to).await;
            }
        }
    });
    Ok(front_addr)
}
