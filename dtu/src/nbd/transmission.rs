//! The transmission phase of one connection: a reader that parses requests
//! and starts each as its own task, and a single writer that sends the
//! simple replies, so replies never interleave while requests overlap.
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
use super::{Export, IoFuture};

/// Replies above this go to the socket directly; smaller ones are batched.
const COALESCE: usize = 64 << 10;
/// How long a closing connection keeps reading (and dropping) the payload of
/// an oversized write, so the client reads its error reply before the close
/// (a close with unread input resets a TCP connection).
const LINGER: Duration = Duration::from_secs(1);

struct Reply {
    handle: u64,
    error: u32,
    data: Option<Bytes>,
    /// Released once the reply is on its way, bounding what is in flight.
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

/// Serves requests until the client disconnects or the server shuts down.
pub(crate) async fn serve<R, W>(
    reader: &mut R,
    writer: W,
    export: Arc<dyn Export>,
    limits: &Limits,
    shutdown: &watch::Receiver<bool>,
) -> Result<ConnectionEnd, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel(limits.max_in_flight);
    let requests = read_requests(reader, tx, export, limits, shutdown);
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
    shutdown: &watch::Receiver<bool>,
) -> Result<ConnectionEnd, NbdError> {
    let count = Arc::new(Semaphore::new(limits.max_in_flight));
    let bytes = Arc::new(Semaphore::new(limits.max_in_flight_bytes as usize));
    let size = export.size();
    let read_only = export.read_only();
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
        let action = classify(&h, size, read_only);
        tracing::trace!(
            handle = h.handle,
            command = h.command,
            flags = h.flags,
            offset = h.offset,
            len = h.len,
            ?action,
            "NBD request"
        );
        let reply = |error, data, bytes| Reply {
            handle: h.handle,
            error,
            data,
            _permits: (slot, bytes),
        };
        let job: IoFuture<Option<Bytes>> = match action {
            Action::Disconnect => break Ok(ConnectionEnd::Disconnected),
            Action::RejectAndClose { error } => {
                tracing::warn!(len = h.len, "NBD write above the 32 MiB maximum; closing");
                let _ = tx.send(reply(error, None, None)).await;
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
                if tx.send(reply(error, None, None)).await.is_err() {
                    break Ok(ConnectionEnd::ClientGone);
                }
                continue;
            }
            Action::Cache => {
                if tx.send(reply(0, None, None)).await.is_err() {
                    break Ok(ConnectionEnd::ClientGone);
                }
                continue;
            }
            Action::Read { offset, len } => {
                let permit = bytes.clone().acquire_many_owned(len).await.expect("open");
                let read = export.read(offset, len);
                let job: IoFuture<Option<Bytes>> = Box::pin(async move {
                    let data = read.await?;
                    if data.len() != len as usize {
                        return Err(std::io::Error::other(format!(
                            "export returned {} bytes for a {len}-byte read",
                            data.len()
                        )));
                    }
                    Ok(Some(data))
                });
                spawn(&mut tasks, &tx, job, reply(0, None, Some(permit)));
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
                    Box::pin(async move { write.await.map(|()| None) }),
                    reply(0, None, Some(permit)),
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
                    Ok(None)
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
                    Ok(None)
                })
            }
            Action::Flush => {
                let flush = export.flush();
                Box::pin(async move { flush.await.map(|()| None) })
            }
        };
        spawn(&mut tasks, &tx, job, reply(0, None, None));
    };
    // Finish what is in flight; each task sends its own reply.
    while tasks.join_next().await.is_some() {}
    end
}

/// Runs `job` as its own task and sends `reply`, completed with the job's
/// data or error.
fn spawn(
    tasks: &mut JoinSet<()>,
    tx: &mpsc::Sender<Reply>,
    job: IoFuture<Option<Bytes>>,
    mut reply: Reply,
) {
    let tx = tx.clone();
    tasks.spawn(async move {
        match job.await {
            Ok(data) => reply.data = data.filter(|d| !d.is_empty()),
            Err(e) => {
                reply.error = error_value(&e);
                tracing::warn!(
                    handle = reply.handle,
                    error = reply.error,
                    "NBD request failed: {e}"
                );
            }
        }
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
    let mut buf = Vec::with_capacity(COALESCE + SIMPLE_REPLY_HEADER_LEN);
    while let Some(mut reply) = rx.recv().await {
        loop {
            buf.extend_from_slice(&encode_simple_reply(reply.error, reply.handle));
            if let Some(data) = reply.data.take() {
                if buf.len() + data.len() <= COALESCE {
                    buf.extend_from_slice(&data);
                } else {
                    w.write_all(&buf).await?;
                    buf.clear();
                    w.write_all(&data).await?;
                }
            }
            drop(reply);
            if buf.len() >= COALESCE {
                w.write_all(&buf).await?;
                buf.clear();
            }
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
