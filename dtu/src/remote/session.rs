//! The remote's side of the link: accepting the primary, the handshake, the
//! lanes that bring records in, the control stream that takes acks out, and
//! the read streams the primary opens when it has no local image.
//!
//! One primary session is active at a time; a new connection that passes
//! the handshake replaces the old one (the primary reconnected). A primary
//! that fails the handshake gets a Goodbye saying why, and nothing it sends
//! reaches the replica.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu_proto::frame::{Frame, Goodbye, GoodbyeReason, ReadRequest, ReadResponse, ReadStatus};
use dtu_proto::receiver::Inbound;
use dtu_proto::Seq;

use crate::transport::{self, FrameStream};
use crate::workers::WorkerPool;

use super::accept::{accept_primary, AcceptError};
use super::rollback::Hold;
use super::RCore;

type DecodePool = Arc<WorkerPool<dtu_proto::frame::Write>>;

/// Accepts connections until shutdown.
pub(super) async fn accept_loop(core: Arc<RCore>, endpoint: quinn::Endpoint, decode: DecodePool) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = core.shutdown_signal() => return,
        };
        let Some(incoming) = incoming else { return };
        let core = core.clone();
        let decode = decode.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            match transport::accept_incoming(incoming).await {
                Ok(conn) => {
                    let end = session(&core, conn.clone(), decode).await;
                    tracing::info!("session with {addr} ended: {end}");
                    conn.close(0u32.into(), end.as_bytes());
                }
                // A refused certificate lands here; the verifier has logged
                // which fingerprint it saw.
                Err(e) => {
                    tracing::warn!("connection attempt from {addr} failed: {e}");
                    let mut st = core.lock();
                    st.refused += 1;
                    st.last_refusal = Some(format!("{addr}: {e}"));
                }
            }
        });
    }
}

async fn session(core: &Arc<RCore>, conn: quinn::Connection, decode: DecodePool) -> String {
    match session_inner(core, conn, decode).await {
        Ok(()) => "closed".into(),
        Err(e) => e,
    }
}

async fn session_inner(
    core: &Arc<RCore>,
    conn: quinn::Connection,
    decode: DecodePool,
) -> Result<(), String> {
    let (mut send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    // Acks and heartbeats must not queue behind bulk data.
    let _ = send.set_priority(1);
    let mut frames = FrameStream::new(recv);
    let theirs = match frames.next().await.map_err(|e| e.to_string())? {
        Some(Frame::Hello(h)) => h,
        other => {
            return Err(format!(
                "expected Hello, got {:?}",
                other.map(|f| f.kind_name())
            ))
        }
    };
    let failed = core.lock().failed.clone();
    if let Some(why) = failed {
        let g = Goodbye {
            reason: GoodbyeReason::ProtocolError,
            message: format!("remote cannot accept writes: {why}"),
        };
        let _ = transport::write_frame(&mut send, &Frame::Goodbye(g)).await;
        return Err(why);
    }
    if matches!(core.lock().hold, Hold::Promoted) {
        let why = "this remote was promoted: its replica is a primary's volume now; demote this \
                   primary (dtu demote) to make it that primary's remote"
            .to_string();
        let g = Goodbye {
            reason: GoodbyeReason::Refused,
            message: why.clone(),
        };
        let _ = transport::write_frame(&mut send, &Frame::Goodbye(g)).await;
        let _ = send.finish();
        tokio::time::sleep(Duration::from_millis(100)).await;
        return Err(why);
    }
    let trial = match &core.lock().hold {
        Hold::Trial(e) => Some(e.to_string()),
        _ => None,
    };
    if let Some(e) = trial {
        // The replica must stay still: the writes wait in the primary's nvbuf.
        let why = format!(
            "a rollback trial to checkpoint {e} is under way on the remote; applying resumes \
             when it is committed or abandoned"
        );
        // Not a refusal: the primary keeps its writes and tries again.
        let g = Goodbye {
            reason: GoodbyeReason::Shutdown,
            message: why.clone(),
        };
        let _ = transport::write_frame(&mut send, &Frame::Goodbye(g)).await;
        let _ = send.finish();
        tokio::time::sleep(Duration::from_millis(100)).await;
        return Err(why);
    }
    let accepted = {
        let mut applier = core.applier.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = core.lock();
        let mut vs = core.volume_state.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(st.hold, Hold::RolledBack(_)) {
            // Whatever the old session left queued followed the history the
            // replica left: the receiver starts afresh at the replica's seq.
            let epoch = st.receiver.epoch_seen();
            st.receiver = dtu_proto::Receiver::new(
                vs.synced(),
                epoch,
                Duration::from_secs(1),
                Instant::now(),
            );
        }
        match accept_primary(
            &mut st.receiver,
            &mut vs,
            &core.hello,
            &theirs,
            rand::random(),
            core.split_brain,
            Instant::now(),
        ) {
            Ok(a) => {
                if let Some(pos) = a.rebase {
                    applier.rebase(pos);
                    core.applied.send_replace(pos);
                }
                st.session += 1;
                st.hold = Hold::Applying;
                st.peer = Some(conn.remote_address().to_string());
                st.decision = Some(a.explained.clone());
                core.quic.attach(&conn);
                Ok((a, st.session))
            }
            Err(e) => {
                st.refused += 1;
                st.last_refusal = Some(e.to_string());
                if let AcceptError::Decision { explained, .. } = &e {
                    st.decision = Some(explained.clone());
                }
                Err(e)
            }
        }
    };
    let (accepted, my_session) = match accepted {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("refusing primary {}: {e}", conn.remote_address());
            let goodbye = match &e {
                AcceptError::Refused(h) => Some(h.goodbye()),
                AcceptError::Decision { explained, .. } => Some(Goodbye {
                    reason: GoodbyeReason::Refused,
                    message: explained.clone(),
                }),
                _ => None,
            };
            if let Some(g) = goodbye {
                let _ = transport::write_frame(&mut send, &Frame::Goodbye(g)).await;
                let _ = send.finish();
                // Give the goodbye a moment to leave before the close.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return Err(e.to_string());
        }
    };
    tracing::info!("primary {}: {}", conn.remote_address(), accepted.explained);
    let reply = accepted.reply;
    transport::write_frame(&mut send, &Frame::Hello(reply.clone()))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(extents) = &accepted.extents {
        let n = extents.len();
        let per = dtu_proto::frame::MAX_EXTENTS_PER_FRAME;
        // At least one frame, so that an empty list still ends.
        let frames = n.div_ceil(per).max(1);
        for i in 0..frames {
            let f = Frame::Extents(dtu_proto::frame::Extents {
                ranges: extents[(i * per).min(n)..((i + 1) * per).min(n)].to_vec(),
                last: i + 1 == frames,
            });
            transport::write_frame(&mut send, &f)
                .await
                .map_err(|e| e.to_string())?;
        }
        tracing::info!("sent the {n} ranges this replica changed on its own");
    }
    tracing::info!(
        "primary {} connected (epoch {}), replica holds through seq {}",
        conn.remote_address(),
        theirs.epoch,
        reply.stored_seq
    );

    let result = tokio::select! {
        r = control_writer(core, &mut send, my_session) => r,
        r = control_reader(core, &mut frames) => r,
        r = accept_lanes(core, &conn, decode) => r,
        r = accept_reads(core, &conn) => r,
        e = conn.closed() => Err(e.to_string()),
        _ = core.shutdown_signal() => {
            let _ = transport::write_frame(&mut send, &Frame::Goodbye(Goodbye {
                reason: GoodbyeReason::Shutdown,
                message: "remote shutting down".into(),
            })).await;
            Ok(())
        }
    };
    let mut st = core.lock();
    if st.session == my_session {
        st.peer = None;
        st.lanes = 0;
        st.receiver.on_disconnected();
    }
    drop(st);
    if core.handover_pending.swap(false, Ordering::SeqCst) {
        core.handover.notify_one();
    }
    result
}

async fn control_writer(
    core: &RCore,
    send: &mut quinn::SendStream,
    my_session: u64,
) -> Result<(), String> {
    loop {
        let notified = core.control_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (frames, current, failed) = {
            let mut st = core.lock();
            let frames: Vec<Frame> = std::iter::from_fn(|| st.receiver.poll_transmit()).collect();
            (frames, st.session, st.failed.clone())
        };
        if current != my_session {
            return Err("replaced by a newer session".into());
        }
        for f in &frames {
            transport::write_frame(send, f)
                .await
                .map_err(|e| e.to_string())?;
        }
        if core.ask_handover.swap(false, Ordering::SeqCst) {
            transport::write_frame(send, &Frame::HandoverRequest)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!("asked the primary to hand its role over (dtu switchover)");
        }
        if let Some(why) = failed {
            let g = Goodbye {
                reason: GoodbyeReason::ProtocolError,
                message: format!("remote cannot apply writes: {why}"),
            };
            let _ = transport::write_frame(send, &Frame::Goodbye(g)).await;
            return Err(why);
        }
        if frames.is_empty() {
            notified.await;
        }
    }
}

async fn control_reader(core: &RCore, frames: &mut FrameStream) -> Result<(), String> {
    loop {
        match frames.next().await.map_err(|e| e.to_string())? {
            Some(f) => match core.event(|r| r.on_frame(f, Instant::now())) {
                Inbound::Closed(g) if g.reason == GoodbyeReason::Handover => {
                    // Told once the session is over (below): a connected
                    // primary would make the promotion refuse.
                    core.handover_pending.store(true, Ordering::SeqCst);
                    return Err(format!("the primary hands its role over ({})", g.message));
                }
                Inbound::Closed(g) => return Err(format!("primary said goodbye: {}", g.message)),
                Inbound::Unexpected(kind) => {
                    return Err(format!("unexpected {kind} frame on the control stream"))
                }
                _ => {}
            },
            None => return Err("primary closed the control stream".into()),
        }
    }
}

async fn accept_lanes(
    core: &Arc<RCore>,
    conn: &quinn::Connection,
    decode: DecodePool,
) -> Result<(), String> {
    let mut lanes = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            s = conn.accept_uni() => {
                let recv = s.map_err(|e| e.to_string())?;
                core.lock().lanes += 1;
                lanes.spawn(lane(core.clone(), recv, decode.clone()));
            }
            Some(r) = lanes.join_next() => {
                r.map_err(|e| format!("lane task failed: {e}"))??;
            }
        }
    }
}

/// One lane: frames in, chunks to the decode workers.
async fn lane(core: Arc<RCore>, recv: quinn::RecvStream, decode: DecodePool) -> Result<(), String> {
    let mut frames = FrameStream::new(recv);
    while let Some(f) = frames.next().await.map_err(|e| e.to_string())? {
        match core.event(|r| r.on_frame(f, Instant::now())) {
            Inbound::Decode(w) => {
                // The queue bound is the remote's backpressure: when full,
                // stop reading this lane (QUIC flow control then slows the
                // primary) without blocking the other tasks.
                if let Err(e) = decode.try_submit(w) {
                    let w = e.into_inner();
                    let pool = decode.clone();
                    tokio::task::spawn_blocking(move || pool.submit(w))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|_| "decode workers stopped".to_string())?;
                }
            }
            Inbound::Unexpected(kind) => return Err(format!("unexpected {kind} frame on a lane")),
            Inbound::Overloaded { held, limit } => {
                return Err(format!(
                    "the primary sent more than the remote holds for later seqs ({held} of {limit} bytes); closing the session"
                ))
            }
            Inbound::Closed(g) => return Err(format!("primary said goodbye: {}", g.message)),
            Inbound::Duplicate | Inbound::Handled | Inbound::Read(_) => {}
        }
    }
    Ok(())
}

async fn accept_reads(core: &Arc<RCore>, conn: &quinn::Connection) -> Result<(), String> {
    loop {
        let (send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let core = core.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_read(core, send, recv).await {
                tracing::debug!("read stream: {e}");
            }
        });
    }
}

/// How long a read may wait for the writes before it to be applied.
const READ_WAIT: Duration = Duration::from_secs(60);

async fn serve_read(
    core: Arc<RCore>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), String> {
    let mut frames = FrameStream::new(recv);
    let Some(Frame::ReadRequest(req)) = frames.next().await.map_err(|e| e.to_string())? else {
        return Err("expected a ReadRequest".into());
    };
    if req.background {
        // A restore's rebuild: the host's reads and the acks go first.
        let _ = send.set_priority(-1);
    }
    let status_data = read_after(&core, req).await;
    let (status, data) = match status_data {
        Ok(d) => (ReadStatus::Ok, d),
        Err(s) => (s, Bytes::new()),
    };
    transport::write_frame(
        &mut send,
        &Frame::ReadResponse(ReadResponse {
            id: req.id,
            status,
            data,
        }),
    )
    .await
    .map_err(|e| e.to_string())?;
    let _ = send.finish();
    Ok(())
}

async fn read_after(core: &RCore, req: ReadRequest) -> Result<Bytes, ReadStatus> {
    let size = core.replica.size();
    if req
        .offset
        .checked_add(req.length as u64)
        .is_none_or(|end| end > size)
        || req.length > (4 << 20)
    {
        return Err(ReadStatus::OutOfRange);
    }
    let mut applied = core.applied.subscribe();
    let wait = applied.wait_for(|&a: &Seq| a >= req.after_seq);
    match tokio::time::timeout(READ_WAIT, wait).await {
        Ok(Ok(_)) => {}
        _ => return Err(ReadStatus::IoError),
    }
    let replica = core.replica.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; req.length as usize];
        replica
            .read_at(req.offset, &mut buf)
            .map(|_| Bytes::from(buf))
    })
    .await
    .map_err(|_| ReadStatus::IoError)?
    .map_err(|_| ReadStatus::IoError)
}

/// Heartbeats and the apply-rate sample.
pub(super) async fn timers(core: Arc<RCore>) {
    while !core.is_shutdown() {
        let next = core.lock().receiver.poll_timeout();
        let sleep = next
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = core.shutdown_signal() => return,
        }
        let now = Instant::now();
        core.apply_rate_sample(now);
        core.event(|r| {
            let now = Instant::now();
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
        });
    }
}
