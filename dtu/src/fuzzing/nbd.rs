//! The `nbd_requests` fuzz target's checks: the pure parsers of
//! [`crate::nbd::wire`] wherever the input holds a header, and the whole
//! input as a client's byte stream into two live connections, one to a
//! plaintext server and one to a server that requires TLS (so the
//! refusals around NBD_OPT_STARTTLS are fuzzed too; the fuzzer's bytes
//! after a STARTTLS always arrive before the server's ACK, which drops the
//! connection before any TLS parsing), whose export checks the server keeps
//! to the [`Export`] contract.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::panics_so_far;
use crate::nbd::tls::NbdTls;
use crate::nbd::wire::{self, Action, Caps};
use crate::nbd::{ConnectionEnd, Export, IoFuture, Limits, NbdServer};

/// Size of the export the fuzzed client talks to: small, so that a stream of
/// maximal in-range reads stays cheap, and any length the server accepts
/// above it is a bug the export's contract check sees.
pub const NBD_EXPORT_SIZE: u64 = 64 << 10;
/// How long a session may last after the client's stream has ended.
const NBD_SESSION_LIMIT: Duration = Duration::from_secs(10);

/// What one fuzzed NBD session did.
#[derive(Debug)]
pub struct NbdSession {
    /// How the connection ended (`Err`: the server dropped it, with why).
    pub end: Result<ConnectionEnd, String>,
    /// Export calls the server made (reads, writes, flushes, trims).
    pub export_calls: u64,
    /// Bytes the server sent.
    pub sent: usize,
    /// How the same stream ended against a server that requires TLS.
    pub tls_end: Result<ConnectionEnd, String>,
}

/// An in-memory export that checks the [`Export`] contract on every call:
/// the server must only pass in-range requests of at most the maximum length.
struct ContractExport {
    bytes: Mutex<Vec<u8>>,
    calls: AtomicU64,
}

impl ContractExport {
    fn check(&self, what: &str, offset: u64, len: u64, max: u64) -> std::ops::Range<usize> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let end = offset.checked_add(len);
        assert!(
            len <= max && end.is_some_and(|e| e <= NBD_EXPORT_SIZE),
            "server called export {what} at {offset} for {len} bytes on a {NBD_EXPORT_SIZE}-byte export"
        );
        offset as usize..(offset + len) as usize
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Export for ContractExport {
    fn size(&self) -> u64 {
        NBD_EXPORT_SIZE
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, len: u32) -> IoFuture<Bytes> {
        let range = self.check("read", offset, len.into(), wire::MAX_REQUEST_LEN.into());
        let data = Bytes::copy_from_slice(&self.bytes()[range]);
        Box::pin(async move {
            // Let other requests run first, so replies complete out of order.
            tokio::task::yield_now().await;
            Ok(data)
        })
    }
    fn write(&self, offset: u64, data: Bytes, _fua: bool) -> IoFuture<()> {
        let range = self.check(
            "write",
            offset,
            data.len() as u64,
            wire::MAX_REQUEST_LEN.into(),
        );
        self.bytes()[range].copy_from_slice(&data);
        Box::pin(async { Ok(()) })
    }
    fn flush(&self) -> IoFuture<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {
            tokio::task::yield_now().await;
            Ok(())
        })
    }
    fn trim(&self, offset: u64, len: u32) -> IoFuture<()> {
        self.check("trim", offset, len.into(), u32::MAX.into());
        Box::pin(async { Ok(()) })
    }
    fn spans(&self, offset: u64, len: u64) -> IoFuture<Vec<crate::replica::Span>> {
        let range = self.check("spans", offset, len, u32::MAX.into());
        // Blocks of zeros are holes, so block status answers vary with
        // what the session wrote.
        let bytes = self.bytes();
        let spans = range
            .clone()
            .step_by(4096)
            .map(|at| {
                let end = (at - at % 4096 + 4096).min(range.end);
                crate::replica::Span {
                    offset: at as u64,
                    len: (end - at) as u64,
                    hole: bytes[at..end].iter().all(|&b| b == 0),
                }
            })
            .collect();
        Box::pin(async move { Ok(spans) })
    }
    fn cache(&self, offset: u64, len: u32) -> IoFuture<()> {
        self.check("cache", offset, len.into(), wire::MAX_REQUEST_LEN.into());
        Box::pin(async { Ok(()) })
    }
}

/// Runs `data` through the pure parsers of [`crate::nbd::wire`] at every
/// position where it holds a request or option header, then feeds the whole
/// of it, as a client's byte stream, to a live connection
/// ([`NbdServer::serve_connection`] over an in-memory pipe, an in-memory
/// export behind it). The session must end once the stream has, without a
/// panic in any task, with the export only ever called within its contract
/// and the greeting sent first. Panics on any violation.
pub fn nbd_requests(data: &[u8]) -> NbdSession {
    check_wire_parsers(data);

    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
    }
    let export = Arc::new(ContractExport {
        bytes: Mutex::new(vec![0; NBD_EXPORT_SIZE as usize]),
        calls: AtomicU64::new(0),
    });
    let limits = Limits {
        // Few requests in flight, so the reader waits for replies too.
        max_in_flight: 4,
        max_options: 64,
        ..Limits::default()
    };
    let server =
        NbdServer::new("vol", export.clone() as Arc<dyn Export>).with_limits(limits.clone());
    let tls_server = NbdServer::new("vol", export.clone() as Arc<dyn Export>)
        .with_limits(limits)
        .with_tls(fuzz_tls());
    let panics = panics_so_far();
    let (end, sent) = RT.with(|rt| rt.block_on(run_nbd_session(&server, data)));
    let export_calls = export.calls.load(Ordering::Relaxed);
    let (tls_end, _) = RT.with(|rt| rt.block_on(run_nbd_session(&tls_server, data)));
    assert_eq!(
        panics_so_far(),
        panics,
        "a task panicked while serving the session (see stderr)"
    );
    // Without a TLS handshake (which the fuzzer cannot complete) a server
    // requiring TLS must never get as far as the export.
    assert_eq!(
        export.calls.load(Ordering::Relaxed),
        export_calls,
        "a server requiring TLS served requests in plaintext"
    );
    assert!(
        !matches!(tls_end, Ok(ConnectionEnd::Disconnected)),
        "a server requiring TLS reached the transmission phase in plaintext"
    );
    NbdSession {
        end,
        export_calls,
        sent,
        tls_end,
    }
}

/// TLS settings made once per process: certificate generation costs far
/// more than a session.
fn fuzz_tls() -> Arc<NbdTls> {
    static TLS: OnceLock<Arc<NbdTls>> = OnceLock::new();
    TLS.get_or_init(|| {
        let g = crate::nbd::tls::generate(&["localhost".into()]).expect("generate certificates");
        let tls = NbdTls::from_pem(
            std::path::Path::new("(fuzz)"),
            g.ca_cert.as_bytes(),
            g.server_cert.as_bytes(),
            g.server_key.as_bytes(),
            true,
        )
        .expect("load generated certificates");
        Arc::new(tls)
    })
    .clone()
}

async fn run_nbd_session(
    server: &NbdServer,
    input: &[u8],
) -> (Result<ConnectionEnd, String>, usize) {
    // A small pipe, so that both directions fill up and wait.
    let (client, server_side) = tokio::io::duplex(4096);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (mut cr, mut cw) = tokio::io::split(client);
    let feed = async move {
        // The server may hang up before reading everything: allowed.
        let _ = cw.write_all(input).await;
        let _ = cw.shutdown().await;
    };
    let drain = async move {
        // Only the greeting is checked: keep the first bytes and count.
        let (mut head, mut total) = (Vec::new(), 0);
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return (head, total),
                Ok(n) => {
                    if head.len() < 64 {
                        head.extend_from_slice(&buf[..n.min(64)]);
                    }
                    total += n;
                }
            }
        }
    };
    let session =
        async { tokio::join!(server.serve_connection(server_side, stop_rx), feed, drain) };
    let Ok((end, (), (head, sent))) = tokio::time::timeout(NBD_SESSION_LIMIT, session).await else {
        panic!("the NBD session did not end within {NBD_SESSION_LIMIT:?} of the client's stream ending");
    };
    let mut greeting = Vec::new();
    greeting.extend_from_slice(&wire::NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_be_bytes());
    assert!(
        head.starts_with(&greeting),
        "the server did not start with the greeting"
    );
    (end.map_err(|e| e.to_string()), sent)
}

/// The pure parsers, wherever `data` holds something for them.
fn check_wire_parsers(data: &[u8]) {
    for i in 0..data.len() {
        let rest = &data[i..];
        if let Some(b) = rest.first_chunk::<{ wire::REQUEST_HEADER_LEN }>() {
            check_request_header(b);
        }
        if let Some(b) = rest.first_chunk::<{ wire::OPTION_HEADER_LEN }>() {
            let Ok(h) = wire::parse_option_header(b) else {
                assert_ne!(b[0..8], wire::IHAVEOPT.to_be_bytes(), "IHAVEOPT refused");
                continue;
            };
            assert_eq!(b[0..8], wire::IHAVEOPT.to_be_bytes(), "bad magic accepted");
            assert_eq!(h.option.to_be_bytes(), b[8..12]);
            assert_eq!(h.len.to_be_bytes(), b[12..16]);
            let payload = &rest[wire::OPTION_HEADER_LEN..];
            let payload = &payload[..payload.len().min(h.len as usize)];
            if let Some(r) = wire::parse_meta_request(payload) {
                let used = 8 + r.name.len() + r.queries.iter().map(|q| 4 + q.len()).sum::<usize>();
                assert_eq!(
                    used,
                    payload.len(),
                    "meta context request bytes unaccounted"
                );
            }
            if let Some(r) = wire::parse_info_request(payload) {
                let requests = r.requests().count();
                assert_eq!(4 + r.name.len() + 2 + 2 * requests, payload.len());
                assert_eq!(&payload[4..4 + r.name.len()], r.name);
                assert_eq!(
                    usize::from(u16::from_be_bytes([
                        payload[4 + r.name.len()],
                        payload[5 + r.name.len()]
                    ])),
                    requests
                );
            }
        }
    }
}

fn check_request_header(b: &[u8; wire::REQUEST_HEADER_LEN]) {
    let Ok(h) = wire::parse_request_header(b) else {
        assert_ne!(b[0..4], wire::REQUEST_MAGIC.to_be_bytes(), "magic refused");
        return;
    };
    assert_eq!(&wire::encode_request_header(&h), b, "re-encoding differs");
    let caps = [(false, false), (true, false), (true, true)].map(|(s, m)| Caps {
        structured: s,
        base_allocation: m,
    });
    for (size, read_only, caps) in [0, NBD_EXPORT_SIZE, u64::MAX]
        .into_iter()
        .flat_map(|size| [false, true].map(|ro| (size, ro)))
        .flat_map(|(size, ro)| caps.map(|c| (size, ro, c)))
    {
        {
            let in_range = |offset: u64, len: u32| {
                offset
                    .checked_add(len.into())
                    .is_some_and(|end| end <= size)
            };
            match wire::classify(&h, size, read_only, caps) {
                Action::Read { offset, len, df } => {
                    assert!(len <= wire::MAX_REQUEST_LEN && in_range(offset, len));
                    assert!(!df || caps.structured, "DF without structured replies");
                }
                Action::Write { offset, len, .. } => {
                    assert!(len <= wire::MAX_REQUEST_LEN && in_range(offset, len));
                    assert!(!read_only);
                }
                Action::Cache { offset, len } => {
                    assert!(len <= wire::MAX_REQUEST_LEN && in_range(offset, len));
                }
                Action::BlockStatus { offset, len, .. } => {
                    assert!(caps.base_allocation && len > 0 && in_range(offset, len));
                }
                Action::Trim { offset, len, .. } | Action::WriteZeroes { offset, len, .. } => {
                    assert!(!read_only && in_range(offset, len));
                }
                Action::Reject { discard, .. } => {
                    assert!(discard <= wire::MAX_REQUEST_LEN);
                    assert!(discard == 0 || (h.command == wire::CMD_WRITE && discard == h.len));
                }
                Action::RejectAndClose { .. } => {
                    assert!(h.command == wire::CMD_WRITE && h.len > wire::MAX_REQUEST_LEN);
                }
                Action::Flush | Action::Disconnect => {}
            }
        }
    }
}
