//! The transmission phase of one connection: a reader that parses requests
//! and starts each as its own task, and a single writer that sends the
//! replies (simple, or structured chunks where negotiated), so one reply's
//! messages never interleave with another's while requests overlap.
//!
//! In flight per connection: at most `max_in_flight` requests and
//! `max_in_flight_bytes` of payload (write data read, read data not yet
//! sent); the reader stops reading from the socket when either is spent,
//! which is the backpressure. A refused write's payload is read and dropped
//! so the connection stays usable; a write above the 32 MiB maximum is
//! answered and the connection closed. On NBD_CMD_DISC, a bad request magic
//! or server shutdown the reader stops, in-flight requests finish and their
//! replies are sent, then the connection closes.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::server::{wait_for_shutdown, ConnectionEnd, Limits, NbdError};
use super::wire::*;
use super::{Export, IoFuture, Piece};

/// Replies above this go to the socket directly; smaller ones are batched.
const COALESCE: usize = 64 << 10;
/// How long a closing connection keeps reading (and dropping) the payload of
/// an oversized write, so the client reads its error reply before the close
/// (a close with unread input resets a TCP connection).
const LINGER: Duration = Duration::from_secs(1);

/// One message on the wire: a header (with any fixed payload fields) and
/// the bytes that follow it.
struct Msg {
    head: Vec<u8>,
    data: Option<Bytes>,
}

struct Reply {
    handle: u64,
    msgs: Vec<Msg>,
    /// Released once the reply is on its way, bounding what is in flight.
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

/// What a served request produced.
enum Outcome {
    /// Nothing to send but success.
    Done,
    /// A read's bytes, in one piece.
    Data { offset: u64, data: Bytes },
    /// A sparse read's pieces, in order.
    Pieces(Vec<Piece>),
    /// Block status descriptors (length, flags) for `base:allocation`.
    Extents(Vec<(u32, u32)>),
}

/// Why a request failed: the NBD error value and words for the user.
struct Failure {
    error: u32,
    message: String,
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure {
            error: error_value(&e),
            message: e.to_string(),
        }
    }
}

/// The messages answering one request: simple replies unless structured
/// replies were negotiated; then every payload and every error goes in
/// structured chunks (proto.md: MUST for reads and payloads, SHOULD for
/// errors) and a plain success stays a simple reply (allowed).
fn encode_reply(handle: u64, structured: bool, result: Result<Outcome, Failure>) -> Vec<Msg> {
    let simple = |error: u32, data: Option<Bytes>| Msg {
        head: encode_simple_reply(error, handle).to_vec(),
        data,
    };
    let chunk = |flags: u16, kind: u16, fixed: &[&[u8]], data: Option<Bytes>| {
        let len =
            fixed.iter().map(|f| f.len()).sum::<usize>() + data.as_ref().map_or(0, Bytes::len);
        let mut head = encode_structured_header(flags, kind, handle, len as u32).to_vec();
        for f in fixed {
            head.extend_from_slice(f);
        }
        Msg { head, data }
    };
    if !structured {
        return vec![match result {
            Ok(Outcome::Done) => simple(0, None),
            Ok(Outcome::Data { data, .. }) => simple(0, Some(data).filter(|d| !d.is_empty())),
            Ok(Outcome::Pieces(pieces)) => {
                // Not produced without structured replies; flattened for
                // completeness.
                let mut buf = Vec::new();
                for p in pieces {
                    match p {
                        Piece::Data { data, .. } => buf.extend_from_slice(&data),
                        Piece::Hole { len, .. } => buf.resize(buf.len() + len as usize, 0),
                    }
                }
                simple(0, Some(Bytes::from(buf)).filter(|d| !d.is_empty()))
            }
            Ok(Outcome::Extents(_)) => simple(EINVAL, None),
            Err(f) => simple(f.error, None),
        }];
    }
    let done = REPLY_FLAG_DONE;
    match result {
        Ok(Outcome::Done) => vec![simple(0, None)],
        Ok(Outcome::Data { offset, data }) if !data.is_empty() => {
            vec![chunk(
                done,
                REPLY_TYPE_OFFSET_DATA,
                &[&offset.to_be_bytes()],
                Some(data),
            )]
        }
        Ok(Outcome::Data { .. }) => vec![chunk(done, REPLY_TYPE_NONE, &[], None)],
        Ok(Outcome::Pieces(pieces)) => {
            let last = pieces.len().saturating_sub(1);
            let mut msgs: Vec<Msg> = pieces
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let flags = if i == last { done } else { 0 };
                    match p {
                        Piece::Data { offset, data } => chunk(
                            flags,
                            REPLY_TYPE_OFFSET_DATA,
                            &[&offset.to_be_bytes()],
                            Some(data),
                        ),
                        Piece::Hole { offset, len } => chunk(
                            flags,
                            REPLY_TYPE_OFFSET_HOLE,
                            &[&offset.to_be_bytes(), &len.to_be_bytes()],
                            None,
                        ),
                    }
                })
                .collect();
            if msgs.is_empty() {
                msgs.push(chunk(done, REPLY_TYPE_NONE, &[], None));
            }
            msgs
        }
        Ok(Outcome::Extents(extents)) => {
            let mut payload = Vec::with_capacity(4 + 8 * extents.len());
            payload.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
            for (len, flags) in extents {
                payload.extend_from_slice(&len.to_be_bytes());
                payload.extend_from_slice(&flags.to_be_bytes());
            }
            vec![chunk(done, REPLY_TYPE_BLOCK_STATUS, &[&payload], None)]
        }
        Err(f) => {
            let mut msg = f.message.into_bytes();
            msg.truncate(MAX_ERROR_MESSAGE);
            vec![chunk(
                done,
                REPLY_TYPE_ERROR,
                &[
                    &f.error.to_be_bytes(),
                    &(msg.len() as u16).to_be_bytes(),
                    &msg,
                ],
                None,
            )]
        }
    }
}

/// Words for a refused request, sent with structured errors.
fn refusal(h: &RequestHeader, error: u32) -> String {
    let why = match error {
        EPERM => "the export is read-only",
        ENOSPC => "the range runs past the end of the export",
        _ => "invalid command, flags, range or length",
    };
    format!(
        "request {} at {}+{} with flags {:#x} refused: {why}",
        h.command, h.offset, h.len, h.flags
    )
}

/// Serves requests until the client disconnects or the server shuts down.
pub(crate) async fn serve<R, W>(
    reader: &mut R,
    writer: W,
    export: Arc<dyn Export>,
    limits: &Limits,
    caps: Caps,
    shutdown: &watch::Receiver<bool>,
) -> Result<ConnectionEnd, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel(limits.max_in_flight);
    let requests = read_requests(reader, tx, export, limits, caps, shutdown);
    let (end, written) = tokio::join!(requests, write_replies(writer, rx));
    if let Err(e) = written {
        tracing::debug!("NBD reply stream ended: {e}");
    }
    let end = end?;
    if let ConnectionEnd::WriteTooLarge(len) = end {
        let _ = tokio::time::timeout(LINGER, discard(reader, len)).await;
    }
    Ok(end)
}

async fn read_requests<R: AsyncRead + Unpin>(
    reader: &mut R,
    tx: mpsc::Sender<Reply>,
    export: Arc<dyn Export>,
    limits: &Limits,
    caps: Caps,
    shutdown: &watch::Receiver<bool>,
) -> Result<ConnectionEnd, NbdError> {
    let count = Arc::new(Semaphore::new(limits.max_in_flight));
    let bytes = Arc::new(Semaphore::new(limits.max_in_flight_bytes as usize));
    let size = export.size();
    let read_only = export.read_only();
    let structured = caps.structured;
    let mut tasks = JoinSet::new();

    let end = loop {
        while tasks.try_join_next().is_some() {}
        let slot = tokio::select! {
            p = count.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = tx.closed() => break Ok(ConnectionEnd::ClientGone),
        };
        let mut hdr = [0u8; REQUEST_HEADER_LEN];
        let read = tokio::select! {
            biased;
            _ = tx.closed() => break Ok(ConnectionEnd::ClientGone),
            _ = wait_for_shutdown(shutdown) => break Ok(ConnectionEnd::ServerShutdown),
            r = reader.read_exact(&mut hdr) => r,
        };
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break Ok(ConnectionEnd::ClientGone)
            }
            Err(e) => break Err(e.into()),
        }
        let h = match parse_request_header(&hdr) {
            Ok(h) => h,
            Err(e) => break Err(e.into()),
        };
        let action = classify(&h, size, read_only, caps);
        tracing::trace!(
            handle = h.handle,
            command = h.command,
            flags = h.flags,
            offset = h.offset,
            len = h.len,
            ?action,
            "NBD request"
        );
        let job: IoFuture<Outcome> = match action {
            Action::Disconnect => break Ok(ConnectionEnd::Disconnected),
            Action::RejectAndClose { error } => {
                tracing::warn!(len = h.len, "NBD write above the 32 MiB maximum; closing");
                let failure = Failure {
                    error,
                    message: format!("a write of {} bytes is above the 32 MiB maximum", h.len),
                };
                let _ = tx
                    .send(immediate(h.handle, structured, failure, slot))
                    .await;
                break Ok(ConnectionEnd::WriteTooLarge(h.len));
            }
            Action::Reject { error, discard: n } => {
                tracing::debug!(
                    command = h.command,
                    flags = h.flags,
                    offset = h.offset,
                    len = h.len,
                    error,
                    "NBD request refused"
                );
                if n > 0 {
                    let dropped = tokio::select! {
                        r = discard(reader, n) => r,
                        _ = wait_for_shutdown(shutdown) => break Ok(ConnectionEnd::ServerShutdown),
                    };
                    if let Err(e) = dropped {
                        break eof_is_gone(e);
                    }
                }
                let failure = Failure {
                    error,
                    message: refusal(&h, error),
                };
                if tx
                    .send(immediate(h.handle, structured, failure, slot))
                    .await
                    .is_err()
                {
                    break Ok(ConnectionEnd::ClientGone);
                }
                continue;
            }
            Action::Cache { offset, len } => {
                let cache = export.cache(offset, len);
                Box::pin(async move { cache.await.map(|()| Outcome::Done) })
            }
            Action::BlockStatus { offset, len, one } => {
                let spans = export.spans(offset, u64::from(len));
                let max = if one { 1 } else { MAX_EXTENTS };
                Box::pin(async move {
                    let spans = spans.await?;
                    Ok(Outcome::Extents(extents(offset, len, &spans, max)))
                })
            }
            Action::Read { offset, len, df } => {
                let permit = bytes.clone().acquire_many_owned(len).await.expect("open");
                // Holes are worth skipping only where they can be said:
                // structured replies, and not a don't-fragment read.
                let job: IoFuture<Outcome> = if structured && !df {
                    let read = export.read_sparse(offset, len);
                    Box::pin(async move { checked_pieces(offset, len, read.await?) })
                } else {
                    let read = export.read(offset, len);
                    Box::pin(async move {
                        let data = read.await?;
                        if data.len() != len as usize {
                            return Err(std::io::Error::other(format!(
                                "export returned {} bytes for a {len}-byte read",
                                data.len()
                            )));
                        }
                        Ok(Outcome::Data { offset, data })
                    })
                };
                spawn(
                    &mut tasks,
                    &tx,
                    job,
                    h.handle,
                    structured,
                    (slot, Some(permit)),
                );
                continue;
            }
            Action::Write { offset, len, fua } => {
                let permit = bytes.clone().acquire_many_owned(len).await.expect("open");
                let data = tokio::select! {
                    r = read_payload(reader, len) => r,
                    _ = wait_for_shutdown(shutdown) => break Ok(ConnectionEnd::ServerShutdown),
                };
                let data = match data {
                    Ok(d) => d,
                    Err(e) => break eof_is_gone(e),
                };
                let write = export.write(offset, data, fua);
                spawn(
                    &mut tasks,
                    &tx,
                    Box::pin(async move { write.await.map(|()| Outcome::Done) }),
                    h.handle,
                    structured,
                    (slot, Some(permit)),
                );
                continue;
            }
            Action::WriteZeroes { offset, len, fua } => {
                // Exports only ever see maximum-sized pieces.
                let export = export.clone();
                Box::pin(async move {
                    let end = offset + u64::from(len);
                    let mut at = offset;
                    while at < end {
                        let n = (end - at).min(u64::from(MAX_REQUEST_LEN)) as u32;
                        export.write_zeroes(at, n, fua).await?;
                        at += u64::from(n);
                    }
                    Ok(Outcome::Done)
                })
            }
            Action::Trim { offset, len, fua } => {
                let trim = export.trim(offset, len);
                // FUA: the trimmed range must read back durably as trimmed.
                let flush = fua.then(|| export.flush());
                Box::pin(async move {
                    trim.await?;
                    if let Some(f) = flush {
                        f.await?;
                    }
                    Ok(Outcome::Done)
                })
            }
            Action::Flush => {
                let flush = export.flush();
                Box::pin(async move { flush.await.map(|()| Outcome::Done) })
            }
        };
        spawn(&mut tasks, &tx, job, h.handle, structured, (slot, None));
    };
    // Finish what is in flight; each task sends its own reply.
    while tasks.join_next().await.is_some() {}
    end
}

/// The pieces of a sparse read, checked to cover `offset..offset+len`
/// exactly and in order: the client must never get a short answer passed
/// off as complete.
fn checked_pieces(offset: u64, len: u32, pieces: Vec<Piece>) -> std::io::Result<Outcome> {
    let mut at = offset;
    for p in &pieces {
        let (o, n) = match p {
            Piece::Data { offset, data } => (*offset, data.len() as u64),
            Piece::Hole { offset, len } => (*offset, u64::from(*len)),
        };
        if o != at || n == 0 {
            break;
        }
        at += n;
    }
    if at != offset + u64::from(len) {
        return Err(std::io::Error::other(format!(
            "export's sparse read of {offset}+{len} does not cover the range"
        )));
    }
    Ok(Outcome::Pieces(pieces))
}

/// The reply to a request refused before it reached the export.
fn immediate(handle: u64, structured: bool, f: Failure, slot: OwnedSemaphorePermit) -> Reply {
    Reply {
        handle,
        msgs: encode_reply(handle, structured, Err(f)),
        _permits: (slot, None),
    }
}

/// Runs `job` as its own task and sends its reply.
fn spawn(
    tasks: &mut JoinSet<()>,
    tx: &mpsc::Sender<Reply>,
    job: IoFuture<Outcome>,
    handle: u64,
    structured: bool,
    permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
) {
    let tx = tx.clone();
    tasks.spawn(async move {
        let result = job.await.map_err(|e| {
            let f = Failure::from(e);
            tracing::warn!(handle, error = f.error, "NBD request failed: {}", f.message);
            f
        });
        let reply = Reply {
            handle,
            msgs: encode_reply(handle, structured, result),
            _permits: permits,
        };
        let _ = tx.send(reply).await;
    });
}

fn eof_is_gone(e: std::io::Error) -> Result<ConnectionEnd, NbdError> {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Ok(ConnectionEnd::ClientGone)
    } else {
        Err(e.into())
    }
}

/// Reads exactly `len` payload bytes without zero-filling the buffer first.
async fn read_payload<R: AsyncRead + Unpin>(reader: &mut R, len: u32) -> std::io::Result<Bytes> {
    let len = len as usize;
    let mut buf = BytesMut::with_capacity(len);
    let mut limited = reader.take(len as u64);
    while buf.len() < len {
        if limited.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.freeze())
}

async fn discard<R: AsyncRead + Unpin>(reader: &mut R, len: u32) -> std::io::Result<()> {
    let n = tokio::io::copy(&mut reader.take(u64::from(len)), &mut tokio::io::sink()).await?;
    if n < u64::from(len) {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The single writer: sends replies in completion order, batching small
/// ones into one write, and closes its half of the connection at the end.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Reply>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(COALESCE + 64);
    while let Some(mut reply) = rx.recv().await {
        loop {
            tracing::trace!(
                handle = reply.handle,
                chunks = reply.msgs.len(),
                "NBD reply"
            );
            for msg in std::mem::take(&mut reply.msgs) {
                buf.extend_from_slice(&msg.head);
                if let Some(data) = msg.data {
                    if buf.len() + data.len() <= COALESCE {
                        buf.extend_from_slice(&data);
                    } else {
                        w.write_all(&buf).await?;
                        buf.clear();
                        w.write_all(&data).await?;
                    }
                }
                if buf.len() >= COALESCE {
                    w.write_all(&buf).await?;
                    buf.clear();
                }
            }
            drop(reply);
            match rx.try_recv() {
                Ok(next) => reply = next,
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            w.write_all(&buf).await?;
            buf.clear();
        }
        w.flush().await?;
    }
    w.shutdown().await
}
