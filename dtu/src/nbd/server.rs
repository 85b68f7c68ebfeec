//! [`NbdServer`]: accepts connections on a TCP or unix listener and runs,
//! for each, the handshake then the transmission phase against one export.
//!
//! Connections are bounded ([`Limits::max_connections`]: above it the server
//! stops accepting until one ends) and each connection bounds what it keeps
//! in flight, so memory stays bounded under any client. When the shutdown
//! signal turns true the listener is closed at once, connections stop
//! reading requests, finish those in flight and close; `serve_*` returns
//! when the last one has. TLS ([`NbdServer::with_tls`]) applies to TCP
//! connections (and [`NbdServer::serve_connection`]); the unix socket is
//! guarded by its file permissions and stays plaintext.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::handshake::{greet, negotiate, ExportInfo, Negotiated, TlsState};
use super::tls::NbdTls;
use super::wire::{self, Caps, WireError};
use super::{transmission, Export};

/// Resource bounds of a server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests in flight per connection (read, being served or replied).
    pub max_in_flight: usize,
    /// Payload bytes in flight per connection; at least 32 MiB, the
    /// largest request.
    pub max_in_flight_bytes: u32,
    /// Connections served at once; further clients wait in the backlog.
    pub max_connections: usize,
    /// Options a client may send before it must pick the export.
    pub max_options: u32,
    /// Time a client has to finish the handshake.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 64,
            max_in_flight_bytes: 64 << 20,
            max_connections: 32,
            max_options: 1024,
            handshake_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The client aborted the handshake (or the server shut down during it).
    Aborted,
    /// The client sent NBD_CMD_DISC.
    Disconnected,
    /// The client closed the connection or stopped reading replies.
    ClientGone,
    /// The server is shutting down.
    ServerShutdown,
    /// The client sent a write of this many bytes, above the maximum.
    WriteTooLarge(u32),
}

/// Why a connection was dropped.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("NBD connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("NBD client broke the protocol: {0}")]
    Wire(#[from] WireError),
    #[error("NBD client sent unknown handshake flags {0:#x}")]
    ClientFlags(u32),
    #[error("NBD client sent an option of {0} bytes, far above the limit")]
    OptionTooLarge(u32),
    #[error("NBD client asked for export {0:?}, which does not exist")]
    UnknownExport(String),
    #[error("NBD client did not agree to fixed newstyle but sent option {0}")]
    NotFixedNewstyle(u32),
    #[error("NBD client sent too many options without choosing an export")]
    TooManyOptions,
    #[error("NBD client did not finish the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("NBD client chose the export without TLS, which this listener requires (nbd.tls = \"require\")")]
    TlsRequired,
    #[error("NBD client sent data before the TLS handshake")]
    DataBeforeTls,
    #[error("NBD TLS handshake failed: {0}")]
    TlsHandshake(std::io::Error),
}

/// An NBD server for one named export.
pub struct NbdServer {
    name: String,
    description: Option<String>,
    export: Arc<dyn Export>,
    limits: Limits,
    tls: Option<Arc<NbdTls>>,
}

impl NbdServer {
    pub fn new(name: &str, export: Arc<dyn Export>) -> Self {
        NbdServer {
            name: name.to_string(),
            description: None,
            export,
            limits: Limits::default(),
            tls: None,
        }
    }

    /// Offers (or requires) TLS by NBD_OPT_STARTTLS on TCP connections.
    pub fn with_tls(mut self, tls: Arc<NbdTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A human-readable description, shown by `nbdinfo` and NBD_OPT_LIST.
    pub fn with_description(mut self, description: &str) -> Self {
        self.description = Some(description.to_string());
        self
    }

    pub fn with_limits(mut self, mut limits: Limits) -> Self {
        limits.max_in_flight = limits.max_in_flight.max(1);
        limits.max_in_flight_bytes = limits.max_in_flight_bytes.max(wire::MAX_REQUEST_LEN);
        limits.max_connections = limits.max_connections.max(1);
        self.limits = limits;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Serves clients from `listener` until `shutdown` turns true, then
    /// lets open connections finish what is in flight.
    pub async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        tracing::info!(addr = ?listener.local_addr().ok(), export = %self.name, "NBD server listening on TCP");
        self.serve(Listener::Tcp(listener), shutdown).await
    }

    /// As [`NbdServer::serve_tcp`], on a unix socket.
    pub async fn serve_unix(
        self: Arc<Self>,
        listener: UnixListener,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        tracing::info!(addr = ?listener.local_addr().ok(), export = %self.name, "NBD server listening on a unix socket");
        self.serve(Listener::Unix(listener), shutdown).await
    }

    async fn serve(
        self: Arc<Self>,
        listener: Listener,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        let mut conns = JoinSet::new();
        loop {
            let slot = tokio::select! {
                biased;
                _ = wait_for_shutdown(&shutdown) => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                s = slots.clone().acquire_owned() => s.expect("semaphore never closed"),
            };
            let accepted = tokio::select! {
                biased;
                _ = wait_for_shutdown(&shutdown) => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like pass; do not spin.
                    tracing::warn!("NBD accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let server = self.clone();
            let shutdown = shutdown.clone();
            let span = tracing::info_span!("nbd", peer = %peer);
            conns.spawn(
                async move {
                    let _slot = slot;
                    tracing::info!("NBD client connected");
                    let result = match stream {
                        Stream::Tcp(s) => {
                            // proto.md: both ends SHOULD disable Nagle.
                            let _ = s.set_nodelay(true);
                            let tls = server.tls.clone();
                            server.serve_stream(s, tls.as_deref(), shutdown).await
                        }
                        Stream::Unix(s) => server.serve_stream(s, None, shutdown).await,
                    };
                    match result {
                        Ok(end) => tracing::info!(?end, "NBD connection closed"),
                        Err(e) => tracing::warn!("NBD connection dropped: {e}"),
                    }
                }
                .instrument(span),
            );
        }
        // Closing the listener now refuses new clients while the open
        // connections drain.
        drop(listener);
        tracing::info!(
            connections = conns.len(),
            "NBD server stopped accepting; finishing open connections"
        );
        while conns.join_next().await.is_some() {}
        Ok(())
    }

    /// Runs one connection (handshake, then requests) over any byte stream,
    /// e.g. an in-memory pipe, with the server's TLS if it has one.
    /// Returns how it ended.
    pub async fn serve_connection<S>(
        &self,
        stream: S,
        shutdown: watch::Receiver<bool>,
    ) -> Result<ConnectionEnd, NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.serve_stream(stream, self.tls.as_deref(), shutdown)
            .await
    }

    async fn serve_stream<S>(
        &self,
        stream: S,
        tls: Option<&NbdTls>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<ConnectionEnd, NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let timeout = self.limits.handshake_timeout;
        let deadline = Instant::now() + timeout;
        let mut s = BufReader::with_capacity(64 << 10, stream);
        let info = ExportInfo {
            name: &self.name,
            description: self.description.as_deref(),
            size: self.export.size(),
            read_only: self.export.read_only(),
            block_sizes: wire::block_size_constraints(self.export.block_size()),
        };
        let mut options_left = self.limits.max_options;
        let state = match tls {
            None => TlsState::Unavailable,
            Some(t) if t.required() => TlsState::Required,
            Some(_) => TlsState::Offered,
        };
        let client = in_time(
            tokio::time::timeout_at(deadline, greet(&mut s)).await,
            timeout,
        )??;
        let negotiated = tokio::time::timeout_at(
            deadline,
            negotiate(&mut s, &info, client, state, &mut options_left, &shutdown),
        )
        .await;
        match in_time(negotiated, timeout)?? {
            Negotiated::Closed => Ok(ConnectionEnd::Aborted),
            Negotiated::Transmission(caps) => self.transmit(s, caps, shutdown).await,
            Negotiated::StartTls => {
                let tls = tls.ok_or(NbdError::DataBeforeTls)?;
                // The client waits for the ACK before its ClientHello, so
                // anything buffered was sent out of turn and would be lost.
                if !s.buffer().is_empty() {
                    return Err(NbdError::DataBeforeTls);
                }
                let accepted =
                    tokio::time::timeout_at(deadline, tls.acceptor().accept(s.into_inner())).await;
                let stream = in_time(accepted, timeout)?.map_err(NbdError::TlsHandshake)?;
                tracing::info!("NBD TLS established");
                let mut s = BufReader::with_capacity(64 << 10, stream);
                let negotiated = tokio::time::timeout_at(
                    deadline,
                    negotiate(
                        &mut s,
                        &info,
                        client,
                        TlsState::Active,
                        &mut options_left,
                        &shutdown,
                    ),
                )
                .await;
                match in_time(negotiated, timeout)?? {
                    Negotiated::Transmission(caps) => self.transmit(s, caps, shutdown).await,
                    // STARTTLS is never acknowledged twice.
                    Negotiated::Closed | Negotiated::StartTls => Ok(ConnectionEnd::Aborted),
                }
            }
        }
    }

    async fn transmit<S>(
        &self,
        s: BufReader<S>,
        caps: Caps,
        shutdown: watch::Receiver<bool>,
    ) -> Result<ConnectionEnd, NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        tracing::info!(
            export = %self.name,
            size = self.export.size(),
            structured = caps.structured,
            block_status = caps.base_allocation,
            "NBD transmission phase"
        );
        // Buffered requests the client pipelined stay in the reader half.
        let (mut r, w) = tokio::io::split(s);
        transmission::serve(
            &mut r,
            w,
            self.export.clone(),
            &self.limits,
            caps,
            &shutdown,
        )
        .await
    }
}

/// A handshake step's result, or the timeout's error.
fn in_time<T>(r: Result<T, tokio::time::error::Elapsed>, limit: Duration) -> Result<T, NbdError> {
    r.map_err(|_| NbdError::HandshakeTimeout(limit))
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), "unix".to_string()))
            }
        }
    }
}

/// Resolves once `shutdown` is true; never if its sender is gone without
/// having said so.
pub(crate) async fn wait_for_shutdown(shutdown: &watch::Receiver<bool>) {
    let mut rx = shutdown.clone();
    if rx.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
