//! Peer identity: each DTU's key pair and self-signed certificate, their PEM
//! files, and the SHA-256 fingerprint by which the other side pins it.
//!
//! There is no certificate authority: `dtu init` generates both identities
//! and writes each side's config with the other's fingerprint, so a peer is
//! accepted exactly when it presents that certificate (and proves in the TLS
//! handshake that it holds the key). The fingerprint is over the whole DER
//! certificate, the same value `openssl x509 -fingerprint -sha256` prints.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Why an identity cannot be made, read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key pair or the self-signed certificate could not be generated.
    #[error("cannot generate a key pair and certificate for {name:?}: {message}")]
    Generate {
        /// The name the certificate was to carry.
        name: String,
        /// What the generator reported.
        message: String,
    },
    /// A certificate or key file cannot be created or written, or the key
    /// file's mode cannot be set to 0600.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate or key file cannot be read, holds no PEM section of
    /// the expected kind, or holds a key rustls cannot sign with.
    #[error("cannot read {what} from {path}: {message}")]
    Read {
        /// What the file should hold, e.g. "a PEM certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O, PEM or key error.
        message: String,
    },
    /// The private key does not belong to the certificate, e.g. the two
    /// files come from different `dtu init` runs.
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A fingerprint (such as `identity.peer_fingerprint`) is not
    /// `sha256:` followed by 64 hex digits.
    #[error(
        "{input:?} is not a certificate fingerprint: {why}; expected sha256: followed by \
         64 hex digits (colon-separated pairs are accepted too)"
    )]
    Fingerprint {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// A DTU's certificate and private key (both DER), with their PEM text.
pub struct Identity {
    cert_der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert_der: self.cert_der.clone(),
            key_der: self.key_der.clone_key(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

// Never print the key, not even in a debug log.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.fingerprint())
    }
}

impl Identity {
    /// A new ECDSA P-256 key pair and a self-signed certificate whose
    /// subject alternative name and common name are `name`.
    pub fn generate(name: &str) -> Result<Identity, IdentityError> {
        let fail = |e: rcgen::Error| IdentityError::Generate {
            name: name.to_string(),
            message: e.to_string(),
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(fail)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).map_err(fail)?;
        Ok(Identity {
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The private key, DER (PKCS#8 for generated keys; loaded keys keep
    /// their format).
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        self.key_der.clone_key()
    }

    /// The certificate as PEM text.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The fingerprint the peer pins.
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.cert_der)
    }

    /// Writes the certificate and the key as PEM; the key file gets mode
    /// 0600 (set when the file is created, so it is never readable by
    /// others, and reset if the file already existed).
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), IdentityError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Write { path, source }
        };
        std::fs::write(cert_path, &self.cert_pem).map_err(write_err(cert_path))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(key_path)
            .map_err(write_err(key_path))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write_err(key_path))?;
        f.write_all(self.key_pem.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(write_err(key_path))
    }

    /// Reads a certificate and private key (PKCS#8, SEC1 or PKCS#1) from PEM
    /// files, and checks that the key belongs to the certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, IdentityError> {
        let read_err = |what: &'static str, path: &Path, message: String| IdentityError::Read {
            what,
            path: path.to_path_buf(),
            message,
        };
        let cert_pem = std::fs::read_to_string(cert_path)
            .map_err(|e| read_err("a PEM certificate", cert_path, e.to_string()))?;
        let key_pem = std::fs::read_to_string(key_path)
            .map_err(|e| read_err("a PEM private key", key_path, e.to_string()))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            read_err(
                "a PEM certificate",
                cert_path,
                pem_message(e, "CERTIFICATE"),
            )
        })?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| read_err("a PEM private key", key_path, pem_message(e, "PRIVATE KEY")))?;
        check_key_matches(&cert_der, &key_der).map_err(|e| match e {
            KeyCheck::Unusable(message) => read_err("a usable private key", key_path, message),
            KeyCheck::Mismatch => IdentityError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            },
        })?;
        Ok(Identity {
            cert_der,
            key_der,
            cert_pem,
            key_pem,
        })
    }
}

fn pem_message(e: rustls::pki_types::pem::Error, label: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("no \"-----BEGIN {label}-----\" section found")
        }
        other => other.to_string(),
    }
}

enum KeyCheck {
    Unusable(String),
    Mismatch,
}

/// A key from one `dtu init` and a certificate from another would only fail
/// later, at the peer, as a bad handshake signature; say so at load time.
fn check_key_matches(
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
) -> Result<(), KeyCheck> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| KeyCheck::Unusable(e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::new(vec![cert.clone()], signing);
    match certified.keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(KeyCheck::Mismatch)
        }
        // The public key could not be derived for comparison: the handshake
        // will still prove possession, so do not refuse here.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(e) => Err(KeyCheck::Unusable(e.to_string())),
    }
}

/// SHA-256 of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

/// The fingerprint of a DER certificate.
pub fn fingerprint(cert_der: &[u8]) -> Fingerprint {
    Fingerprint(Sha256::digest(cert_der).into())
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = IdentityError;

    /// Accepts `sha256:<64 hex digits>` (any case), the bare 64 hex digits,
    /// and the colon-separated pairs (`AB:CD:...`) that
    /// `openssl x509 -fingerprint -sha256` prints, with or without its
    /// `sha256 Fingerprint=` prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| IdentityError::Fingerprint {
            input: s.to_string(),
            why,
        };
        let mut body = s.trim();
        for prefix in ["sha256 fingerprint=", "sha256:"] {
            if body.len() >= prefix.len() && body[..prefix.len()].eq_ignore_ascii_case(prefix) {
                body = &body[prefix.len()..];
                break;
            }
        }
        let hexdigits: String = if body.contains(':') {
            let pairs: Vec<&str> = body.split(':').collect();
            if pairs.iter().any(|p| p.len() != 2) {
                return Err(bad("colon-separated hex must come in pairs"));
            }
            pairs.concat()
        } else {
            body.to_string()
        };
        if let Some(c) = hexdigits.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(if c.is_whitespace() {
                bad("it contains whitespace")
            } else {
                bad("it contains a character that is not a hex digit")
            });
        }
        if hexdigits.len() != 64 {
            return Err(bad("a SHA-256 fingerprint has exactly 64 hex digits"));
        }
        let bytes = hex::decode(&hexdigits).map_err(|_| bad("it is not valid hex"))?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes);
        Ok(Fingerprint(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identities_differ_and_fingerprint_their_cert() {
        let a = Identity::generate("dtu-primary").unwrap();
        let b = Identity::generate("dtu-primary").unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), fingerprint(a.cert_der()));
        assert!(a.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let dbg = format!("{a:?}");
        assert!(dbg.contains("sha256:") && !dbg.contains("PRIVATE"), "{dbg}");
    }

    #[test]
    fn rejects_malformed_fingerprints_with_the_reason() {
        let e = "sha256:12 34"
            .parse::<Fingerprint>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("whitespace"), "{e}");
        let e = "AB:C:DE".parse::<Fingerprint>().unwrap_err().to_string();
        assert!(e.contains("pairs"), "{e}");
        let e = "sha256:zz".parse::<Fingerprint>().unwrap_err().to_string();
        assert!(e.contains("not a hex digit"), "{e}");
    }
}
