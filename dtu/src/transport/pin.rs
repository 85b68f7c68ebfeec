//! Certificate pinning for both TLS roles: a rustls verifier that accepts
//! exactly one certificate, named by its SHA-256 fingerprint.
//!
//! There is no CA, no validity period and no name check (both certificates
//! are self-signed and the pin says everything about who the peer is); but
//! the handshake signatures are still verified with the ring provider's
//! algorithms, so a peer that merely replays the pinned certificate without
//! its private key fails the handshake.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::identity::{fingerprint, Fingerprint};

/// Marks the refusal text so that [`super::TransportError`] can tell a pin
/// mismatch from other TLS failures, on the side that refused and (through
/// the close reason) on the side that was refused.
pub(crate) const MISMATCH_MARK: &str = "peer presented certificate";

/// The refusal carried inside the rustls error.
#[derive(thiserror::Error)]
#[error("{MISMATCH_MARK} {seen} but {pinned} is pinned")]
pub(crate) struct PinMismatch {
    pub seen: Fingerprint,
    pub pinned: Fingerprint,
}

// rustls formats `CertificateError::Other` with `Debug`; keep that readable
// too, since it is the text quinn logs and sends in the close reason.
impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Accepts exactly one certificate, by fingerprint.
#[derive(Debug)]
pub(crate) struct Pinned {
    pin: Fingerprint,
    algs: WebPkiSupportedAlgorithms,
    /// Who the peer is, for the log line: "primary" or "remote".
    peer_role: &'static str,
}

impl Pinned {
    pub fn new(pin: Fingerprint, peer_role: &'static str) -> Self {
        Pinned {
            pin,
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            peer_role,
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let seen = fingerprint(cert);
        if seen == self.pin {
            tracing::debug!("{} presented the pinned certificate {seen}", self.peer_role);
            return Ok(());
        }
        tracing::warn!(
            seen = %seen,
            pinned = %self.pin,
            "refusing the {}: it presented certificate {seen} but {} is pinned",
            self.peer_role,
            self.pin
        );
        // `Other` becomes a certificate_unknown alert and keeps the text,
        // which quinn puts in the connection-close reason.
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(PinMismatch {
                seen,
                pinned: self.pin,
            })),
        )))
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The two fingerprints of a refusal text made by [`PinMismatch`], in
/// order (seen, pinned), wherever that text ended up.
pub(crate) fn parse_mismatch(text: &str) -> Option<(Fingerprint, Fingerprint)> {
    let start = text.find(MISMATCH_MARK)?;
    let mut fps = text[start..].split_whitespace().filter_map(|w| {
        let w = w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != ':');
        w.starts_with("sha256:")
            .then(|| w.parse::<Fingerprint>().ok())
            .flatten()
    });
    Some((fps.next()?, fps.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_text_round_trips_its_fingerprints() {
        let (seen, pinned) = (fingerprint(b"a"), fingerprint(b"b"));
        let text = format!(
            "invalid peer certificate: other error: {}",
            PinMismatch { seen, pinned }
        );
        assert_eq!(parse_mismatch(&text), Some((seen, pinned)));
        assert_eq!(parse_mismatch("handshake failure"), None);
    }

    #[test]
    fn accepts_only_the_pinned_certificate() {
        let pin = fingerprint(b"good");
        let v = Pinned::new(pin, "remote");
        assert!(v.check(&CertificateDer::from(b"good".to_vec())).is_ok());
        let e = v
            .check(&CertificateDer::from(b"evil".to_vec()))
            .unwrap_err();
        assert!(matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::Other(_))
        ));
        assert_eq!(
            parse_mismatch(&e.to_string()),
            Some((fingerprint(b"evil"), pin))
        );
    }
}
