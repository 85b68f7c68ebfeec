//! The transport: QUIC (quinn) with mutual TLS (rustls) between exactly two
//! pinned certificates, tuned to the link the user describes, plus the
//! helpers that move dtu frames over QUIC streams and pace reconnects.
//!
//! The remote DTU runs the server endpoint, the primary the client. Each
//! side accepts exactly the peer certificate whose SHA-256 matches its
//! configured fingerprint (`pin`), and the errors say which side refused
//! which certificate, because a mismatched pair after `dtu init` on two
//! machines is the most likely first-run mistake. Flow-control windows and
//! the congestion controller come from the link's rate and RTT
//! (`tuning`), since quinn's defaults starve long fat links.

mod backoff;
mod frames;
mod line_rate;
mod pin;
mod tuning;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dtu_proto::frame::FrameError;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

pub use backoff::Backoff;
pub use frames::{write_bytes, write_frame, FrameStream};
pub use line_rate::{LineRate, LineRateConfig};
pub use tuning::{
    congestion_factory, transport_config, Congestion, LinkTuning, INFLIGHT_CAP, INFLIGHT_FLOOR,
    MAX_KEEP_ALIVE, MAX_RTT, RECEIVE_WINDOW_FLOOR, SEND_WINDOW_FLOOR, UNKNOWN_RATE_BPS, WINDOW_CAP,
    WINDOW_HEADROOM,
};

use crate::identity::{Fingerprint, Identity};
use pin::{parse_mismatch, Pinned};

/// ALPN protocol id of dtu's QUIC connections.
pub const ALPN: &[u8] = b"dtu/1";

/// Why the transport failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind UDP socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error(
        "connection to {addr} timed out after {after:?} (is the remote DTU running and reachable?)"
    )]
    Timeout { addr: SocketAddr, after: Duration },
    /// This side refused the peer's certificate.
    #[error("peer presented certificate {seen} but {pinned} is pinned")]
    PinMismatch {
        seen: Fingerprint,
        pinned: Fingerprint,
    },
    /// The peer refused this side's certificate.
    #[error("the peer refused this side's certificate: {detail}")]
    PeerRefused { detail: String },
    /// Another TLS failure (no common ALPN or cipher suite, bad signature).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("connection lost: {0}")]
    Connection(quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(quinn::ReadError),
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    #[error("stream ended in the middle of a frame ({0} bytes left over)")]
    Truncated(usize),
}

impl TransportError {
    /// Either side refused a certificate: retrying will not help until
    /// someone fixes a fingerprint or a certificate.
    pub fn is_certificate_refusal(&self) -> bool {
        matches!(
            self,
            TransportError::PinMismatch { .. } | TransportError::PeerRefused { .. }
        )
    }
}

/// TLS alerts a peer sends when it does not accept our certificate
/// (RFC 8446 §6.2): bad_certificate, unsupported_certificate,
/// certificate_revoked, certificate_expired, certificate_unknown,
/// unknown_ca, access_denied, decrypt_error (signature not made with the
/// certificate's key), certificate_required.
const CERTIFICATE_ALERTS: &[u8] = &[42, 43, 44, 45, 46, 48, 49, 51, 116];

fn tls_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..=0x1ff)
        .contains(&code)
        .then_some((code & 0xff) as u8)
}

impl From<quinn::ConnectionError> for TransportError {
    fn from(e: quinn::ConnectionError) -> Self {
        match &e {
            // This side's TLS stack gave up: our verifier's refusal, or
            // another local handshake failure.
            quinn::ConnectionError::TransportError(t) if tls_alert(t.code).is_some() => {
                match parse_mismatch(&t.reason) {
                    Some((seen, pinned)) => TransportError::PinMismatch { seen, pinned },
                    None => TransportError::Handshake(t.reason.clone()),
                }
            }
            // The peer's TLS stack sent an alert about our certificate. With
            // TLS 1.3 the client learns this after its own handshake is done.
            quinn::ConnectionError::ConnectionClosed(c) => match tls_alert(c.error_code) {
                Some(alert) if CERTIFICATE_ALERTS.contains(&alert) => {
                    let reason = String::from_utf8_lossy(&c.reason);
                    let detail = match parse_mismatch(&reason) {
                        Some((seen, pinned)) => format!(
                            "it was shown {seen} but pins {pinned}; give it this side's fingerprint \
                             (or this side the certificate it pins)"
                        ),
                        None if reason.is_empty() => format!("TLS alert {alert}; check the fingerprint it pins"),
                        None => format!("TLS alert {alert} ({reason}); check the fingerprint it pins"),
                    };
                    TransportError::PeerRefused { detail }
                }
                Some(_) => TransportError::Handshake(e.to_string()),
                None => TransportError::Connection(e),
            },
            _ => TransportError::Connection(e),
        }
    }
}

// A refusal can surface at the first stream operation rather than at
// `connect`; keep it recognisable there too.
impl From<quinn::WriteError> for TransportError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => c.into(),
            other => TransportError::Write(other),
        }
    }
}

impl From<quinn::ReadError> for TransportError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => c.into(),
            other => TransportError::Read(other),
        }
    }
}

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Largest UDP socket buffer requested; the kernel caps it further
/// (net.core.rmem_max / wmem_max).
const MAX_SOCKET_BUFFER: u64 = 16 << 20;

fn bind_socket(
    bind: SocketAddr,
    tuning: &LinkTuning,
) -> Result<std::net::UdpSocket, TransportError> {
    let sock = std::net::UdpSocket::bind(bind)
        .map_err(|source| TransportError::Bind { addr: bind, source })?;
    // The kernel's default UDP buffers (about 200 KiB) overflow while the
    // endpoint task is busy for a millisecond at gigabit rates; those drops
    // look like congestion to the controller. Best effort: the kernel caps
    // the request, and a small buffer is slow, not wrong.
    let want = tuning.bdp().clamp(1 << 20, MAX_SOCKET_BUFFER) as usize;
    use rustix::net::sockopt;
    let _ = sockopt::set_socket_recv_buffer_size(&sock, want);
    let _ = sockopt::set_socket_send_buffer_size(&sock, want);
    let reported = sockopt::socket_recv_buffer_size(&sock).unwrap_or(0);
    // Linux reports twice what it granted (the rest is its bookkeeping).
    let got = if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    };
    if got < want {
        tracing::info!(
            "UDP receive buffer of {} is {got} bytes ({want} requested for this link); \
             raising net.core.rmem_max avoids drops at high rates",
            sock.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
    }
    Ok(sock)
}

/// The remote's QUIC server configuration: presents `me`, requires a client
/// certificate and accepts only the one whose fingerprint is `peer`.
pub fn server_config(
    me: &Identity,
    peer: &Fingerprint,
    tuning: &LinkTuning,
) -> Result<quinn::ServerConfig, TransportError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(Arc::new(Pinned::new(*peer, "primary")))
        .with_single_cert(vec![me.cert_der().clone()], me.key_der())
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport_config(tuning)));
    Ok(server)
}

/// The primary's QUIC client configuration: presents `me` and accepts only
/// the server certificate whose fingerprint is `peer` (no CA; the server
/// name given to [`connect`] is only sent as SNI).
pub fn client_config(
    me: &Identity,
    peer: &Fingerprint,
    tuning: &LinkTuning,
) -> Result<quinn::ClientConfig, TransportError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned::new(*peer, "remote")))
        .with_client_auth_cert(vec![me.cert_der().clone()], me.key_der())
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport_config(tuning)));
    Ok(client)
}

/// The remote's endpoint, bound to `bind`, with [`server_config`].
pub fn server_endpoint(
    bind: SocketAddr,
    me: &Identity,
    peer: &Fingerprint,
    tuning: &LinkTuning,
) -> Result<quinn::Endpoint, TransportError> {
    let server = server_config(me, peer, tuning)?;
    let sock = bind_socket(bind, tuning)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        sock,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr: bind, source })
}

/// The primary's endpoint, bound to `bind`, with [`client_config`] as its
/// default.
pub fn client_endpoint(
    bind: SocketAddr,
    me: &Identity,
    peer: &Fingerprint,
    tuning: &LinkTuning,
) -> Result<quinn::Endpoint, TransportError> {
    let client = client_config(me, peer, tuning)?;
    let sock = bind_socket(bind, tuning)?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        sock,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr: bind, source })?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// How often [`connect`] looks for the server's confirmation.
const CONFIRM_POLL: Duration = Duration::from_millis(2);

/// Connects and waits until the server has confirmed the handshake, so that
/// a refusal of this side's certificate is reported here rather than at the
/// first stream operation.
///
/// With TLS 1.3 the client's handshake completes before the server has seen
/// the client certificate; the server's HANDSHAKE_DONE frame (one round
/// trip later) is what says it was accepted.
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<quinn::Connection, TransportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || TransportError::Timeout {
        addr,
        after: timeout,
    };
    let connecting = ep
        .connect(addr, server_name)
        .map_err(|e| TransportError::Connect {
            addr,
            message: e.to_string(),
        })?;
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(quinn::ConnectionError::TimedOut)) => return Err(timed_out()),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(c)) => c,
    };
    let confirmed = async {
        while conn.stats().frame_rx.handshake_done == 0 {
            tokio::time::sleep(CONFIRM_POLL).await;
        }
    };
    tokio::select! {
        _ = confirmed => Ok(conn),
        e = conn.closed() => Err(match e {
            quinn::ConnectionError::TimedOut => timed_out(),
            e => e.into(),
        }),
        _ = tokio::time::sleep_until(deadline) => {
            conn.close(0u32.into(), b"handshake not confirmed in time");
            Err(timed_out())
        }
    }
}

/// Completes an incoming connection's handshake on the server, with a
/// refused certificate reported as [`TransportError::PinMismatch`].
pub async fn accept_incoming(
    incoming: quinn::Incoming,
) -> Result<quinn::Connection, TransportError> {
    Ok(incoming.await?)
}
