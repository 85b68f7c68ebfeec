//! Identity files and fingerprints: save/load round trips, the 0600 key,
//! clear errors for bad files, and a loaded pair that really connects.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use dtu::identity::{fingerprint, Fingerprint, Identity, IdentityError};
use dtu::transport::{accept_incoming, client_endpoint, connect, server_endpoint, LinkTuning};

#[test]
fn save_and_load_keep_the_identity_and_protect_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::generate("dtu-primary").unwrap();
    let (cert, key) = (
        dir.path().join("primary.crt"),
        dir.path().join("primary.key"),
    );
    id.save(&cert, &key).unwrap();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .contains("PRIVATE KEY"));

    let back = Identity::load(&cert, &key).unwrap();
    assert_eq!(back.fingerprint(), id.fingerprint());
    assert_eq!(back.cert_der(), id.cert_der());
    assert_eq!(back.key_der().secret_der(), id.key_der().secret_der());

    // Saving over a world-readable file still leaves the key private.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    id.save(&cert, &key).unwrap();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn fingerprints_display_and_parse_in_every_form() {
    let id = Identity::generate("dtu-remote").unwrap();
    let f = id.fingerprint();
    assert_eq!(f, fingerprint(id.cert_der()));
    let s = f.to_string();
    assert!(s.starts_with("sha256:") && s.len() == 7 + 64, "{s}");
    assert!(
        s[7..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{s}"
    );
    assert_eq!(s.parse::<Fingerprint>().unwrap(), f);
    assert_eq!(s.to_uppercase().parse::<Fingerprint>().unwrap(), f);
    assert_eq!(s[7..].parse::<Fingerprint>().unwrap(), f);
    let colons =
        f.0.iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
    assert_eq!(colons.parse::<Fingerprint>().unwrap(), f);
    assert_eq!(
        format!("sha256 Fingerprint={colons}")
            .parse::<Fingerprint>()
            .unwrap(),
        f
    );
    assert_eq!(format!("  {s}\n").parse::<Fingerprint>().unwrap(), f);

    for bad in [
        "",
        "sha256:",
        "sha256:1234",
        &format!("{s}00"),
        "md5:00",
        &s.replace('a', "g"),
    ] {
        let e = bad.parse::<Fingerprint>().unwrap_err();
        assert!(matches!(e, IdentityError::Fingerprint { .. }));
        assert!(e.to_string().contains("64 hex digits"), "{e}");
    }
}

#[test]
fn bad_files_give_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::generate("dtu-primary").unwrap();
    let (cert, key) = (dir.path().join("ok.crt"), dir.path().join("ok.key"));
    id.save(&cert, &key).unwrap();

    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let e = Identity::load(&garbage, &key).unwrap_err().to_string();
    assert!(
        e.contains("garbage.crt") && e.contains("certificate") && e.contains("BEGIN CERTIFICATE"),
        "{e}"
    );

    // A certificate where the key should be.
    let e = Identity::load(&cert, &cert).unwrap_err().to_string();
    assert!(e.contains("ok.crt") && e.contains("private key"), "{e}");

    let missing = dir.path().join("missing.key");
    let e = Identity::load(&cert, &missing).unwrap_err().to_string();
    assert!(e.contains("missing.key"), "{e}");

    // A key from another `dtu init`.
    let other = Identity::generate("dtu-primary").unwrap();
    let (ocert, okey) = (dir.path().join("o.crt"), dir.path().join("o.key"));
    other.save(&ocert, &okey).unwrap();
    let e = Identity::load(&cert, &okey).unwrap_err();
    assert!(matches!(e, IdentityError::KeyMismatch { .. }), "{e}");
    let e = e.to_string();
    assert!(e.contains("o.key") && e.contains("ok.crt"), "{e}");

    // Truncated PEM body.
    let pem = std::fs::read_to_string(&cert).unwrap();
    let cut = dir.path().join("cut.crt");
    std::fs::write(&cut, &pem[..pem.len() / 2]).unwrap();
    let e = Identity::load(&cut, &key).unwrap_err().to_string();
    assert!(e.contains("cut.crt"), "{e}");

    let unwritable = dir.path().join("no-such-dir").join("x.key");
    let e = id.save(&cert, &unwritable).unwrap_err().to_string();
    assert!(e.contains("cannot write") && e.contains("x.key"), "{e}");
}

#[tokio::test]
async fn loaded_identities_connect() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    Identity::generate("dtu-primary")
        .unwrap()
        .save(&p("p.crt"), &p("p.key"))
        .unwrap();
    Identity::generate("dtu-remote")
        .unwrap()
        .save(&p("r.crt"), &p("r.key"))
        .unwrap();
    let prim = Identity::load(&p("p.crt"), &p("p.key")).unwrap();
    let rem = Identity::load(&p("r.crt"), &p("r.key")).unwrap();
    let local = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
    let t = LinkTuning::default();
    let server = server_endpoint(local, &rem, &prim.fingerprint(), &t).unwrap();
    let client = client_endpoint(local, &prim, &rem.fingerprint(), &t).unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move { accept_incoming(server.accept().await.unwrap()).await });
    let conn = connect(&client, addr, "dtu-remote", Duration::from_secs(20))
        .await
        .unwrap();
    let sconn = accept.await.unwrap().unwrap();
    assert_eq!(sconn.remote_address(), client.local_addr().unwrap());
    conn.close(0u32.into(), b"done");
}
