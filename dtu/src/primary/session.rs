//! The primary's side of the link: connecting (and reconnecting with capped
//! exponential backoff), the handshake, the K lanes that carry records, the
//! control stream for acks and heartbeats, and reads forwarded to the
//! remote.
//!
//! A session lives as long as one QUIC connection. When it ends, whatever
//! was in flight goes back to the sender's queue and is resent on the next
//! connection from the remote's last stored seq; the host keeps writing into
//! the nvbuf meanwhile.

use super::error::{Halt, ReadUnavailable};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu_proto::frame::{Frame, GoodbyeReason, Hello, ReadRequest, ReadStatus};

use crate::transport::{self, Backoff, FrameStream};

use super::connect::{self, Offer, Refusal};
use super::core::{Core, LinkState};
use super::PrimaryError;

/// What a session needs to know about its peer.
#[derive(Clone)]
pub(crate) struct SessionParams {
    pub endpoint: quinn::Endpoint,
    pub remote: SocketAddr,
    pub server_name: String,
    pub hello: Hello,
    pub lanes: usize,
    pub connect_timeout: Duration,
    pub initial: dtu_proto::generation::InitialSync,
    pub sync_checksum: bool,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("{0}")]
    Transport(#[from] transport::TransportError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("remote refused this primary: {0}")]
    Refused(String),
    #[error("remote said goodbye: {0}")]
    Goodbye(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("shutting down")]
    Shutdown,
}

/// How long a session must last for the next reconnect to start again from
/// the shortest wait.
pub(crate) const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Keeps a session up until shutdown.
pub(crate) async fn run(core: Arc<Core>, params: SessionParams) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut attempts = 0u64;
    while !core.is_shutdown() {
        attempts += 1;
        let conn = tokio::select! {
            c = transport::connect(&params.endpoint, params.remote, &params.server_name, params.connect_timeout) => c,
            _ = wait_shutdown(&core) => break,
        };
        match conn {
            Ok(conn) => {
                let began = Instant::now();
                let end = session(&core, &params, conn.clone()).await;
                {
                    let mut st = core.lock();
                    st.conn = None;
                }
                core.event(|s, now| s.on_disconnected(now));
                core.conn_wake.notify_waiters();
                match &end {
                    SessionEnd::Shutdown => {
                        conn.close(0u32.into(), b"shutdown");
                        break;
                    }
                    SessionEnd::Refused(why) => {
                        tracing::error!("{end}");
                        core.lock().link = LinkState::Refused {
                            reason: why.clone(),
                        };
                    }
                    _ => {
                        tracing::warn!("link to {} down: {end}", params.remote);
                        core.lock().link = LinkState::Connecting {
                            attempts,
                            last_error: Some(end.to_string()),
                        };
                    }
                }
                conn.close(1u32.into(), b"session ended");
                // Only a session that stayed up a while proves the remote
                // is fine: one that accepts and then refuses at once (a key
                // or volume mismatch, a remote that cannot apply) must not
                // be hammered every 100 ms.
                if began.elapsed() >= HEALTHY_SESSION {
                    backoff.reset();
                }
            }
            Err(e) => {
                tracing::debug!("connect to {} failed: {e}", params.remote);
                let mut st = core.lock();
                if !matches!(st.link, LinkState::Refused { .. }) {
                    st.link = LinkState::Connecting {
                        attempts,
                        last_error: Some(e.to_string()),
                    };
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next()) => {}
            _ = wait_shutdown(&core) => break,
        }
    }
}

/// How long a handing-over primary waits for the remote to take its
/// goodbye before it closes the connection (within the 2 s a stopping
/// primary gives each task).
const HANDOVER_WAIT: Duration = Duration::from_millis(1500);

/// Ends a drained session with the goodbye that asks the remote to
/// promote, and waits until the remote has read it (it closes the
/// connection) so that closing does not discard it.
async fn hand_over(core: &Core, conn: &quinn::Connection, ctl_send: &mut quinn::SendStream) {
    let stored = core.lock().sender.progress().remote_stored;
    let g = dtu_proto::frame::Goodbye {
        reason: GoodbyeReason::Handover,
        message: format!("planned switchover: the remote stored through seq {stored}"),
    };
    if let Err(e) = transport::write_frame(ctl_send, &Frame::Goodbye(g)).await {
        tracing::error!("the switchover's goodbye could not be sent ({e}): promote the remote with `dtu promote`");
        return;
    }
    let _ = ctl_send.finish();
    if tokio::time::timeout(HANDOVER_WAIT, conn.closed())
        .await
        .is_err()
    {
        tracing::error!(
            "the remote did not take the switchover's goodbye within {HANDOVER_WAIT:?}: \
             promote it with `dtu promote`"
        );
    } else {
        tracing::info!("handed over at seq {stored}: the remote promotes itself");
    }
}

async fn wait_shutdown(core: &Core) {
    loop {
        let n = core.conn_wake.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if core.is_shutdown() {
            return;
        }
        n.await;
    }
}

async fn session(core: &Arc<Core>, p: &SessionParams, conn: quinn::Connection) -> SessionEnd {
    match session_inner(core, p, conn).await {
        Ok(()) => SessionEnd::Shutdown,
        Err(e) => e,
    }
}

async fn session_inner(
    core: &Arc<Core>,
    p: &SessionParams,
    conn: quinn::Connection,
) -> Result<(), SessionEnd> {
    let (mut ctl_send, ctl_recv) = conn.open_bi().await?;
    // Heartbeats (and so RTT samples) must not queue behind lane data.
    let _ = ctl_send.set_priority(1);
    let hello = {
        let st = core.lock();
        connect::offer(
            &p.hello,
            &Offer {
                highest: st.sender.highest_seq(),
                resume_from: st.sender.base(),
                meta: &st.meta,
                has_local: core.local.is_some(),
                initial: p.initial,
                changed_bytes: core.map.as_ref().map_or(0, |m| m.marked_bytes())
                    + st.sender.unstored_bytes(),
            },
        )
    };
    transport::write_frame(&mut ctl_send, &Frame::Hello(hello.clone())).await?;
    let mut frames = FrameStream::new(ctl_recv);
    let theirs = match frames.next().await? {
        Some(Frame::Hello(h)) => h,
        Some(Frame::Goodbye(g)) => {
            return Err(match g.reason {
                GoodbyeReason::Shutdown => SessionEnd::Goodbye(g.message),
                _ => SessionEnd::Refused(g.message),
            })
        }
        Some(other) => {
            return Err(SessionEnd::Protocol(format!(
                "expected Hello, got {}",
                other.kind_name()
            )))
        }
        None => {
            return Err(SessionEnd::Protocol(
                "remote closed the control stream during the handshake".into(),
            ))
        }
    };
    let accepted = match connect::check_reply(&hello, &theirs) {
        Ok(a) => a,
        Err(e) => {
            if let Refusal::Handshake(h) = &e {
                let _ = transport::write_frame(&mut ctl_send, &Frame::Goodbye(h.goodbye())).await;
            }
            return Err(SessionEnd::Refused(e.to_string()));
        }
    };
    let mut accepted = accepted;
    if accepted.extents_follow {
        // The replica's own changes, before anything else on the stream.
        loop {
            match frames.next().await? {
                Some(Frame::Extents(e)) => {
                    if accepted.extents.len() + e.ranges.len() > connect::MAX_EXTENTS {
                        return Err(SessionEnd::Protocol(format!(
                            "the remote listed more than {} ranges",
                            connect::MAX_EXTENTS
                        )));
                    }
                    accepted.extents.extend(e.ranges);
                    if e.last {
                        break;
                    }
                }
                Some(other) => {
                    return Err(SessionEnd::Protocol(format!(
                        "expected Extents, got {}",
                        other.kind_name()
                    )))
                }
                None => {
                    return Err(SessionEnd::Protocol(
                        "remote closed the control stream during the handshake".into(),
                    ))
                }
            }
        }
        tracing::info!(
            "the remote lists {} ranges it changed on its own; the resync sends them too",
            accepted.extents.len()
        );
    }
    accept_decision(core, p, &accepted)?;
    core.event(|s, now| s.on_connected(theirs.stored_seq, now))
        .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
    {
        let mut st = core.lock();
        st.conn = Some(conn.clone());
        core.quic.attach(&conn);
        st.link = LinkState::Connected {
            since: Instant::now(),
            peer: conn.remote_address().to_string(),
        };
    }
    core.conn_wake.notify_waiters();
    tracing::info!(
        "connected to remote {} (replica holds through seq {})",
        conn.remote_address(),
        theirs.stored_seq
    );

    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..p.lanes {
        let send = conn.open_uni().await?;
        lanes.spawn(lane(core.clone(), send));
    }
    // `biased`, the shutdown first: a stopping primary wakes its lanes too,
    // and a lane that saw the shutdown and ended first must not end the
    // session before the goodbye is written (a switchover's goodbye is what
    // makes the remote promote; without it both sites stay remotes).
    let result = tokio::select! {
        biased;
        _ = wait_shutdown(core) => {
            if core.handover.load(Ordering::SeqCst) {
                hand_over(core, &conn, &mut ctl_send).await;
            } else {
                let _ = transport::write_frame(&mut ctl_send, &Frame::Goodbye(dtu_proto::frame::Goodbye {
                    reason: GoodbyeReason::Shutdown,
                    message: "primary shutting down".into(),
                })).await;
            }
            Err(SessionEnd::Shutdown)
        }
        r = control_writer(core, &mut ctl_send) => r,
        r = control_reader(core, &mut frames) => r,
        Some(r) = lanes.join_next() => r.unwrap_or_else(|e| Err(SessionEnd::Protocol(format!("lane task failed: {e}")))),
        e = conn.closed() => Err(SessionEnd::Connection(e)),
    };
    lanes.abort_all();
    result
}

/// One lane: takes the next seq the sender names and copies its records
/// from the nvbuf onto this QUIC stream.
async fn lane(core: Arc<Core>, mut send: quinn::SendStream) -> Result<(), SessionEnd> {
    loop {
        let notified = core.lanes_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if core.is_shutdown() {
            return Err(SessionEnd::Shutdown);
        }
        // Choosing a seq answers nobody: no need for a full event.
        let next = core.lock().sender.poll_send(Instant::now());
        let Some(seq) = next else {
            notified.await;
            continue;
        };
        let records = match core.nvbuf.read_seq(seq) {
            Ok(r) => r,
            // Stored and released meanwhile: nothing left to send.
            Err(crate::nvbuf::NvbufError::NotFound { .. }) => continue,
            Err(e) => {
                return Err(SessionEnd::Protocol(format!(
                    "nvbuf read of seq {seq}: {e}"
                )))
            }
        };
        let mut bytes = 0u64;
        for (_, frame) in &records {
            transport::write_bytes(&mut send, frame).await?;
            bytes += frame.len() as u64;
        }
        core.counters
            .wire_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        core.event(|s, now| s.on_sent(seq, now));
    }
}

async fn control_writer(core: &Core, send: &mut quinn::SendStream) -> Result<(), SessionEnd> {
    loop {
        let notified = core.control_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let frames: Vec<Frame> = {
            let mut st = core.lock();
            std::iter::from_fn(|| st.sender.poll_transmit()).collect()
        };
        if frames.is_empty() {
            notified.await;
            continue;
        }
        for f in &frames {
            transport::write_frame(send, f).await?;
        }
    }
}

async fn control_reader(core: &Core, frames: &mut FrameStream) -> Result<(), SessionEnd> {
    loop {
        match frames.next().await? {
            Some(Frame::Goodbye(g)) => return Err(SessionEnd::Goodbye(g.message)),
            Some(Frame::DigestResponse(r)) => core.on_digests(r.seq, &r.digests),
            Some(Frame::HandoverRequest) => {
                tracing::warn!(
                    "the remote asks this primary to hand its role over (dtu switchover)"
                );
                core.handover_asked.notify_one();
            }
            Some(f) => core
                .event(|s, now| s.on_frame(&f, now))
                .map_err(|e| SessionEnd::Protocol(e.to_string()))?,
            None => {
                return Err(SessionEnd::Protocol(
                    "remote closed the control stream".into(),
                ))
            }
        }
    }
}

/// Drives the sender's timers (answer delays, heartbeats) whether or not a
/// connection is up.
pub(crate) async fn timers(core: Arc<Core>) {
    let mut next_sample = Instant::now();
    while !core.is_shutdown() {
        let now = Instant::now();
        if now >= next_sample {
            core.sample_rates(now);
            next_sample = now + Duration::from_secs(1);
            let c = core.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = c.persist_progress() {
                    tracing::warn!("nvbuf superblock: {e}");
                }
            });
        }
        let wake = core.timer_wake.notified();
        let deadline = core.arm_timer().map_or(next_sample, |t| t.min(next_sample));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = wake => {}
        }
        core.event(|s, now| {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        });
    }
}

/// Largest piece of a forwarded read.
const READ_PIECE: u32 = 1 << 20;

/// Reads from the remote's replica once it has applied every write up to
/// `after_seq`; waits for a connection up to `timeout`. A `background`
/// read (a restore's rebuild) yields the link to the host's reads.
pub(crate) async fn read_remote(
    core: Arc<Core>,
    offset: u64,
    len: u32,
    after_seq: u64,
    timeout: Duration,
    background: bool,
) -> Result<Bytes, PrimaryError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = bytes::BytesMut::with_capacity(len as usize);
    let mut at = 0u32;
    while at < len {
        let piece = (len - at).min(READ_PIECE);
        let conn = loop {
            let n = core.conn_wake.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if let Some(c) = core.lock().conn.clone() {
                break c;
            }
            if core.is_shutdown() {
                return Err(PrimaryError::ShuttingDown);
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                return Err(PrimaryError::ReadUnavailable(ReadUnavailable::LinkDown));
            }
        };
        let req = ReadRequest {
            id: offset + at as u64,
            offset: offset + at as u64,
            length: piece,
            after_seq,
            background,
        };
        let data = tokio::time::timeout_at(deadline, read_once(&conn, req))
            .await
            .map_err(|_| PrimaryError::ReadUnavailable(ReadUnavailable::TimedOut))??;
        out.extend_from_slice(&data);
        at += piece;
    }
    Ok(out.freeze())
}

async fn read_once(conn: &quinn::Connection, req: ReadRequest) -> Result<Bytes, PrimaryError> {
    fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> PrimaryError {
        PrimaryError::ReadUnavailable(ReadUnavailable::Stream(std::sync::Arc::new(e)))
    }
    let (mut send, recv) = conn.open_bi().await.map_err(unavailable)?;
    transport::write_frame(&mut send, &Frame::ReadRequest(req))
        .await
        .map_err(unavailable)?;
    let _ = send.finish();
    let mut frames = FrameStream::new(recv);
    match frames.next().await.map_err(unavailable)? {
        Some(Frame::ReadResponse(r))
            if r.status == ReadStatus::Ok && r.data.len() == req.length as usize =>
        {
            Ok(r.data)
        }
        Some(Frame::ReadResponse(r)) => {
            Err(PrimaryError::ReadUnavailable(ReadUnavailable::Refused {
                offset: req.offset,
                length: req.length,
                status: r.status,
            }))
        }
        _ => Err(PrimaryError::ReadUnavailable(ReadUnavailable::Closed)),
    }
}

/// Carries out what the remote decided at connect (see
/// [`connect::on_accepted`]) and records it.
fn accept_decision(
    core: &Core,
    p: &SessionParams,
    accepted: &connect::Accepted,
) -> Result<(), SessionEnd> {
    let leaving_ahead = matches!(core.lock().mode, super::Mode::Ahead { .. })
        && !matches!(
            accepted.decision,
            dtu_proto::generation::Decision::Refuse(_)
        );
    // Writing ahead stops: host writes go back to the journal, so none may
    // be half way through the ahead path.
    let _gate = leaving_ahead.then(|| core.gate.write().unwrap_or_else(|e| e.into_inner()));
    let mut restore_failed = None;
    let (meta, changed, line) = {
        let mut st = core.lock();
        let st = &mut *st;
        let mut changed = false;
        if st.meta.unreported_loss.is_some() && accepted.inconsistent {
            // The remote has durably recorded that its replica may lack the
            // lost writes: no need to tell it again.
            st.meta.unreported_loss = None;
            changed = true;
            tracing::warn!(
                "the remote recorded that its replica may lack the writes the nvbuf lost"
            );
        }
        let pv = dtu_proto::generation::PrimaryView {
            gens: st.meta.gens,
            map_base: st.meta.map_base,
            has_local: core.local.is_some(),
            initial: p.initial,
        };
        let rv = dtu_proto::generation::RemoteView {
            gens: accepted.remote_gens,
            sync_target: accepted.remote_sync_target,
        };
        let line = accepted.decision.explain(&pv, &rv);
        st.sync.on_reconnect();
        let markers_pending = st
            .sender
            .holds_after(dtu_proto::sender::OpKind::Marker, accepted.remote_stored);
        changed |= connect::on_accepted(
            accepted,
            markers_pending,
            &mut st.meta,
            core.map.as_deref(),
            core.local.as_deref(),
            &mut st.sync,
            &mut st.mode,
            p.sync_checksum,
            Instant::now(),
        )
        .map_err(|e| SessionEnd::Protocol(format!("changed-block map: {e}")))?;

        st.decision = Some(line.clone());
        if let Some(r) = &core.restore {
            let marked = core.map.as_ref().map_or(0, |m| m.marked_bytes());
            let ok = super::restore::source_holds_volume(&accepted.decision, marked);
            r.set_source(ok);
            if !ok && !r.done() {
                let why = Halt::RestoreWithoutSource {
                    decision: line.clone(),
                };
                tracing::error!("{why}");
                restore_failed = Some(why);
            }
        }
        (st.meta, changed, line)
    };
    if let Some(why) = restore_failed {
        core.fail(why.clone());
        return Err(SessionEnd::Refused(why.to_string()));
    }
    if changed {
        core.nvbuf
            .set_meta(&meta.encode())
            .map_err(|e| SessionEnd::Protocol(format!("nvbuf metadata: {e}")))?;
    }
    tracing::info!("remote decided: {line}");
    core.wake_sync();
    Ok(())
}
