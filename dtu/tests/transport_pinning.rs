//! Certificate pinning on both sides: a wrong server certificate, a wrong
//! client certificate, and a client that shows the pinned certificate
//! without holding its key. Each refusal must be a distinct, readable error
//! on both sides, with a log line naming the fingerprints, and the server
//! application must never get a connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dtu::identity::{Fingerprint, Identity};
use dtu::transport::{
    accept_incoming, client_endpoint, connect, server_endpoint, write_bytes, FrameStream,
    LinkTuning, TransportError, ALPN,
};

const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const LIMIT: Duration = Duration::from_secs(20);

/// Collects log output so a test can look for the refusal line.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    /// The log of this test binary: one global subscriber, because
    /// per-thread ones race with tracing's callsite cache when tests run in
    /// parallel. Tests tell their lines apart by their fresh fingerprints.
    fn global() -> &'static Log {
        static LOG: OnceLock<Log> = OnceLock::new();
        LOG.get_or_init(|| {
            let log = Log::default();
            let me = log.clone();
            let sub = tracing_subscriber::fmt()
                .with_writer(move || me.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::WARN)
                .finish();
            tracing::subscriber::set_global_default(sub).expect("no other subscriber");
            log
        })
    }
    /// Some line holds every one of `parts`.
    fn has_line(&self, parts: &[&str]) -> bool {
        self.text()
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// What the server application saw: the first incoming connection's
/// handshake outcome, or nothing at all within the limit.
async fn server_outcome(
    server: quinn::Endpoint,
) -> Option<Result<quinn::Connection, TransportError>> {
    let incoming = tokio::time::timeout(LIMIT, server.accept()).await.ok()??;
    Some(accept_incoming(incoming).await)
}

fn other_fingerprint() -> Fingerprint {
    Identity::generate("someone-else").unwrap().fingerprint()
}

#[tokio::test]
async fn a_wrong_server_certificate_is_refused_by_the_client() {
    let log = Log::global();
    let (s, c) = (
        Identity::generate("dtu-remote").unwrap(),
        Identity::generate("dtu-primary").unwrap(),
    );
    let pinned = other_fingerprint();
    let tuning = LinkTuning::default();
    let server = server_endpoint(LOCAL, &s, &c.fingerprint(), &tuning).unwrap();
    let client = client_endpoint(LOCAL, &c, &pinned, &tuning).unwrap();
    let addr = server.local_addr().unwrap();
    let accepted = tokio::spawn(server_outcome(server.clone()));

    let e = connect(&client, addr, "dtu-remote", LIMIT)
        .await
        .unwrap_err();
    eprintln!("client: {e}");
    match &e {
        TransportError::PinMismatch { seen, pinned: p } => {
            assert_eq!(*seen, s.fingerprint());
            assert_eq!(*p, pinned);
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    assert!(e.is_certificate_refusal());
    assert_eq!(
        e.to_string(),
        format!(
            "peer presented certificate {} but {pinned} is pinned",
            s.fingerprint()
        )
    );

    // The server got an attempt, and no connection out of it.
    let outcome = accepted.await.unwrap().expect("the server saw the attempt");
    let se = outcome.expect_err("the server accepted nothing");
    eprintln!("server: {se}");
    assert!(
        matches!(se, TransportError::PeerRefused { .. }),
        "server side: {se}"
    );

    assert!(
        log.has_line(&[
            "WARN",
            "refusing the remote",
            &s.fingerprint().to_string(),
            &pinned.to_string()
        ]),
        "{}",
        log.text()
    );
}

#[tokio::test]
async fn a_wrong_client_certificate_is_refused_by_the_server() {
    let log = Log::global();
    let (s, c) = (
        Identity::generate("dtu-remote").unwrap(),
        Identity::generate("dtu-primary").unwrap(),
    );
    let pinned = other_fingerprint();
    let tuning = LinkTuning::default();
    let server = server_endpoint(LOCAL, &s, &pinned, &tuning).unwrap();
    let client = client_endpoint(LOCAL, &c, &s.fingerprint(), &tuning).unwrap();
    let addr = server.local_addr().unwrap();
    let accepted = tokio::spawn(server_outcome(server.clone()));

    // The client's own handshake succeeds (it likes the server); connect
    // still fails because it waits for the server's verdict.
    let e = connect(&client, addr, "dtu-remote", LIMIT)
        .await
        .unwrap_err();
    eprintln!("client: {e}");
    assert!(
        matches!(e, TransportError::PeerRefused { .. }),
        "client side: {e:?}"
    );
    assert!(e.is_certificate_refusal());
    let msg = e.to_string();
    assert!(msg.contains("refused this side's certificate"), "{msg}");
    assert!(
        msg.contains(&c.fingerprint().to_string()),
        "the client learns what the server saw: {msg}"
    );

    let outcome = accepted.await.unwrap().expect("the server saw the attempt");
    if let Err(e) = &outcome {
        eprintln!("server: {e}");
    }
    match outcome {
        Err(TransportError::PinMismatch { seen, pinned: p }) => {
            assert_eq!(seen, c.fingerprint());
            assert_eq!(p, pinned);
        }
        Err(other) => panic!("expected a pin mismatch on the server, got {other:?}"),
        Ok(_) => panic!("the server application got a connection"),
    }
    assert!(
        log.has_line(&[
            "WARN",
            "refusing the primary",
            &c.fingerprint().to_string(),
            &pinned.to_string()
        ]),
        "{}",
        log.text()
    );

    // Nothing else arrives: once the refused attempt has drained, the
    // endpoint holds no connection and gets no further attempt.
    tokio::time::timeout(LIMIT, server.wait_idle())
        .await
        .unwrap();
    assert_eq!(server.open_connections(), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), server.accept())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_wrong_client_certificate_also_fails_the_first_stream_operation() {
    // Callers that skip `connect`'s confirmation (a raw quinn connect) must
    // still get the refusal, as an error of the first stream operation.
    let (s, c) = (
        Identity::generate("dtu-remote").unwrap(),
        Identity::generate("dtu-primary").unwrap(),
    );
    let tuning = LinkTuning::default();
    let server = server_endpoint(LOCAL, &s, &other_fingerprint(), &tuning).unwrap();
    let client = client_endpoint(LOCAL, &c, &s.fingerprint(), &tuning).unwrap();
    let accepted = tokio::spawn(server_outcome(server.clone()));
    let conn = client
        .connect(server.local_addr().unwrap(), "dtu-remote")
        .unwrap()
        .await
        .expect("the client's side of the handshake completes");
    let op = async {
        let (mut send, recv) = conn.open_bi().await?;
        write_bytes(&mut send, b"hello").await?;
        FrameStream::new(recv).next().await.map(|_| ())
    };
    let e = tokio::time::timeout(LIMIT, op).await.unwrap().unwrap_err();
    assert!(matches!(e, TransportError::PeerRefused { .. }), "{e:?}");
    assert!(accepted.await.unwrap().unwrap().is_err());
}

/// Accepts any server certificate: the attacker below does not care.
#[derive(Debug)]
struct AnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Presents a fixed certificate with a key that does not belong to it.
#[derive(Debug)]
struct StolenCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for StolenCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn the_pinned_certificate_without_its_key_is_refused() {
    let (s, c, thief) = (
        Identity::generate("dtu-remote").unwrap(),
        Identity::generate("dtu-primary").unwrap(),
        Identity::generate("thief").unwrap(),
    );
    let tuning = LinkTuning::default();
    let server = server_endpoint(LOCAL, &s, &c.fingerprint(), &tuning).unwrap();
    let accepted = tokio::spawn(server_outcome(server.clone()));

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = provider
        .key_provider
        .load_private_key(thief.key_der())
        .unwrap();
    let stolen = rustls::sign::CertifiedKey::new(vec![c.cert_der().clone()], key);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(
            provider.signature_verification_algorithms,
        )))
        .with_client_cert_resolver(Arc::new(StolenCert(Arc::new(stolen))));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut attacker = quinn::Endpoint::client(LOCAL).unwrap();
    attacker.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));

    let e = connect(&attacker, server.local_addr().unwrap(), "dtu-remote", LIMIT)
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::PeerRefused { .. }), "{e:?}");
    match accepted.await.unwrap().expect("the server saw the attempt") {
        // The fingerprint matched; the signature did not.
        Err(TransportError::Handshake(why)) => {
            assert!(why.to_lowercase().contains("signature"), "{why}")
        }
        Err(other) => panic!("expected a signature failure, got {other:?}"),
        Ok(_) => panic!("a client without the pinned key got in"),
    }
}
