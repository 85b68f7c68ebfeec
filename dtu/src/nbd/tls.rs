//! TLS for the NBD TCP listener (NBD_OPT_STARTTLS), with rustls on the ring
//! provider: the server's certificate and key and the CA that client
//! certificates must chain to, read from a directory laid out the way qemu's
//! `tls-creds-x509` and libnbd's `tls-certificates` expect (`ca-cert.pem`,
//! `server-cert.pem`, `server-key.pem`; clients use `client-cert.pem` and
//! `client-key.pem` from the same layout). Client certificates are
//! mandatory: TLS here is how a host proves it may use the volume.
//!
//! [`TlsMode`] is the `nbd.tls` setting; [`generate`] makes a fresh CA, a
//! server certificate for the listener's names and a client certificate,
//! which `dtu init` writes with [`GeneratedTls::write_to`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "server-cert.pem";
pub const SERVER_KEY: &str = "server-key.pem";
pub const CLIENT_CERT: &str = "client-cert.pem";
pub const CLIENT_KEY: &str = "client-key.pem";
/// Certificates `dtu init` makes are valid this many years.
const VALID_YEARS: i32 = 10;

/// `nbd.tls`: whether the TCP listener speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plaintext only; STARTTLS is refused (`NBD_REP_ERR_UNSUP`).
    #[default]
    Off,
    /// Clients may start TLS or stay in plaintext.
    On,
    /// Clients must start TLS before anything else.
    Require,
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(TlsMode::Off),
            "on" => Ok(TlsMode::On),
            "require" => Ok(TlsMode::Require),
            other => Err(format!("{other:?}: expected off, on or require")),
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Off => "off",
            TlsMode::On => "on",
            TlsMode::Require => "require",
        })
    }
}

/// Why the NBD TLS files cannot be used or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("NBD TLS files in {dir}: {message}")]
    Config { dir: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the NBD TLS certificates: {0}")]
    Generate(String),
}

/// The TLS side of an NBD listener.
pub struct NbdTls {
    acceptor: TlsAcceptor,
    required: bool,
}

impl fmt::Debug for NbdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdTls")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl NbdTls {
    /// Reads `ca-cert.pem`, `server-cert.pem` and `server-key.pem` from `dir`.
    pub fn load(dir: &Path, required: bool) -> Result<NbdTls, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
        };
        let (ca, cert, key) = (read(CA_CERT)?, read(SERVER_CERT)?, read(SERVER_KEY)?);
        Self::from_pem(dir, &ca, &cert, &key, required)
    }

    /// As [`NbdTls::load`], from the files' contents; `dir` names them in errors.
    pub fn from_pem(
        dir: &Path,
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
        required: bool,
    ) -> Result<NbdTls, TlsError> {
        let pem_err = |name: &str, what| TlsError::Pem {
            path: dir.join(name),
            what,
        };
        let config_err = |message: String| TlsError::Config {
            dir: dir.to_path_buf(),
            message,
        };
        let certs = |pem: &[u8], name: &str| {
            let v: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|_| pem_err(name, "certificate"))?;
            if v.is_empty() {
                return Err(pem_err(name, "certificate"));
            }
            Ok(v)
        };
        let ca = certs(ca_pem, CA_CERT)?;
        let chain = certs(cert_pem, SERVER_CERT)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| pem_err(SERVER_KEY, "private key"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in ca {
            roots
                .add(c)
                .map_err(|e| config_err(format!("{CA_CERT}: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| config_err(format!("client certificate verifier: {e}")))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| config_err(format!("{SERVER_CERT} and {SERVER_KEY}: {e}")))?;
        Ok(NbdTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            required,
        })
    }

    /// Whether plaintext clients are refused.
    pub fn required(&self) -> bool {
        self.required
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

/// A CA, a server certificate signed by it and a client certificate signed
/// by it, as PEM.
pub struct GeneratedTls {
    pub ca_cert: String,
    pub ca_key: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl fmt::Debug for GeneratedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedTls").finish_non_exhaustive()
    }
}

/// Makes a new CA, a server certificate for `names` (DNS names or IP
/// addresses, as clients will connect) and a client certificate.
pub fn generate(names: &[String]) -> Result<GeneratedTls, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let fail = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let year = 1970 + (unix_now_secs() / 31_556_952) as i32;
    let params = |names: Vec<String>, cn: &str| -> Result<CertificateParams, TlsError> {
        let mut p = CertificateParams::new(names).map_err(fail)?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        p.not_after = rcgen::date_time_ymd(year + VALID_YEARS, 1, 1);
        Ok(p)
    };
    let ca_key = KeyPair::generate().map_err(fail)?;
    let mut ca = params(Vec::new(), "dtu NBD CA")?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;
    // qemu checks leaf certificates for both usages when the extension is
    // critical, as rcgen writes it.
    let leaf = |names: Vec<String>, cn: &str, purpose| -> Result<(String, String), TlsError> {
        let key = KeyPair::generate().map_err(fail)?;
        let mut p = params(names, cn)?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![purpose];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(fail)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        names.to_vec(),
        "dtu NBD server",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        vec!["dtu-nbd-client".into()],
        "dtu NBD client",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(GeneratedTls {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    })
}

fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl GeneratedTls {
    /// Writes the six files into `dir` (created if missing), private keys
    /// with mode 0600.
    pub fn write_to(&self, dir: &Path) -> Result<(), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        for (name, text, private) in [
            (CA_CERT, &self.ca_cert, false),
            (CA_KEY, &self.ca_key, true),
            (SERVER_CERT, &self.server_cert, false),
            (SERVER_KEY, &self.server_key, true),
            (CLIENT_CERT, &self.client_cert, false),
            (CLIENT_KEY, &self.client_key, true),
        ] {
            let path = dir.join(name);
            let mode = if private { 0o600 } else { 0o644 };
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .open(&path)?;
                // An existing file keeps its mode on open: set it.
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
                f.write_all(text.as_bytes())
            };
            write().map_err(|source| TlsError::Write {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// The names a server certificate for a listener on `addr` should carry:
/// `localhost`, the loopback addresses, the listener's own address when it
/// is a specific one, and the machine's host name.
pub fn listener_names(addr: Option<SocketAddr>) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(ip) = addr.map(|a| a.ip()) {
        if !ip.is_loopback() && !ip.is_unspecified() {
            names.push(ip.to_string());
        }
    }
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host.parse::<IpAddr>().is_err() && host != "localhost" {
            names.push(host.to_string());
        }
    }
    names
}

/// Whether a plaintext listener on `addr` can be reached from other
/// machines.
pub fn exposed(addr: &SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in [TlsMode::Off, TlsMode::On, TlsMode::Require] {
            assert_eq!(m.to_string().parse::<TlsMode>(), Ok(m));
        }
        assert!("yes"
            .parse::<TlsMode>()
            .unwrap_err()
            .contains("off, on or require"));
        assert_eq!(TlsMode::default(), TlsMode::Off);
    }

    #[test]
    fn generated_files_load_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(&listener_names(Some("10.1.2.3:10809".parse().unwrap()))).unwrap();
        g.write_to(dir.path()).unwrap();
        let tls = NbdTls::load(dir.path(), true).unwrap();
        assert!(tls.required());
        use std::os::unix::fs::PermissionsExt;
        for (name, mode) in [
            (CA_KEY, 0o600),
            (SERVER_KEY, 0o600),
            (CLIENT_KEY, 0o600),
            (CA_CERT, 0o644),
        ] {
            let m = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, mode, "{name}");
        }
        // A missing or garbled file names itself.
        std::fs::write(dir.path().join(SERVER_KEY), "not a key").unwrap();
        let e = NbdTls::load(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains(SERVER_KEY), "{e}");
        std::fs::remove_file(dir.path().join(CA_CERT)).unwrap();
        let e = NbdTls::load(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains(CA_CERT), "{e}");
    }

    #[test]
    fn names_cover_loopback_and_a_specific_address() {
        let n = listener_names(Some("192.0.2.7:10809".parse().unwrap()));
        for want in ["localhost", "127.0.0.1", "::1", "192.0.2.7"] {
            assert!(n.iter().any(|x| x == want), "{want} missing from {n:?}");
        }
        let n = listener_names(Some("0.0.0.0:10809".parse().unwrap()));
        assert!(!n.iter().any(|x| x == "0.0.0.0"));
        assert!(exposed(&"0.0.0.0:1".parse().unwrap()));
        assert!(!exposed(&"127.0.0.1:1".parse().unwrap()));
        assert!(!exposed(&"[::1]:1".parse().unwrap()));
    }
}
