//! TLS on the NBD TCP listener (NBD_OPT_STARTTLS), driven by real clients
//! with the certificates `dtu::nbd::tls::generate` (and so `dtu init`)
//! makes: libnbd's `nbds://` URIs and qemu's `tls-creds-x509`. A listener
//! that requires TLS refuses plaintext clients with NBD_REP_ERR_TLS_REQD,
//! and client certificates from another CA are refused. The last test runs
//! the `dtu` binaries themselves: `dtu init`, a remote and a primary whose
//! listener requires TLS.

mod nbd_harness;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtu::nbd::tls::{self, NbdTls};
use nbd_harness::*;

const LIMIT: Duration = Duration::from_secs(120);

/// Certificates for 127.0.0.1 in `dir`.
fn certs(dir: &Path) {
    tls::generate(&tls::listener_names(None))
        .unwrap()
        .write_to(dir)
        .unwrap();
}

fn served(dir: &Path, required: bool) -> Served {
    Served::start(ServeOpts {
        tls: Some(Arc::new(NbdTls::load(dir, required).unwrap())),
        ..ServeOpts::default()
    })
}

fn nbds_uri(s: &Served, certs: &Path) -> String {
    format!(
        "nbds://127.0.0.1:{}/{}?tls-certificates={}",
        s.tcp.port(),
        s.name,
        certs.display()
    )
}

fn qemu_io_tls(port: u16, export: &str, certs: &Path, cmds: &[&str]) -> Run {
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        certs.display()
    );
    let image = format!("driver=nbd,host=127.0.0.1,port={port},export={export},tls-creds=tls0");
    let mut args = vec!["--object", &object, "--image-opts", &image];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    run_tool("qemu-io", &args, LIMIT)
}

#[test]
fn nbdinfo_and_qemu_io_work_over_tls_with_the_generated_certificates() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path());
    let s = served(d.path(), true);
    let r = run_tool("nbdinfo", &["--json", &nbds_uri(&s, d.path())], LIMIT);
    r.assert_ok("nbdinfo over TLS");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["TLS"], true, "{v}");
    assert_eq!(v["exports"][0]["export-size"], s.size, "{v}");

    let r = qemu_io_tls(
        s.tcp.port(),
        "vol",
        d.path(),
        &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"],
    );
    r.assert_ok("qemu-io over TLS");
    assert!(
        !r.output().contains("Pattern verification failed"),
        "{}",
        r.output()
    );
    assert!(
        s.image_bytes()[..64 << 10].iter().all(|&b| b == 0x5a),
        "the write over TLS did not reach the file"
    );
    // Block status and structured reads work over TLS too.
    let r = run_tool("nbdinfo", &["--map", &nbds_uri(&s, d.path())], LIMIT);
    r.assert_ok("nbdinfo --map over TLS");
    assert!(
        r.stdout.contains("data") && r.stdout.contains("hole"),
        "{}",
        r.stdout
    );
}

#[test]
fn plaintext_clients_are_refused_where_tls_is_required() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path());
    let s = served(d.path(), true);
    // Byte level: every option but STARTTLS gets NBD_REP_ERR_TLS_REQD...
    let (mut c, _) = RawClient::connect_tcp(s.tcp);
    c.put(&3u32.to_be_bytes());
    for (opt, payload) in [
        (OPT_GO, RawClient::info_payload(b"vol", &[])),
        (OPT_INFO, RawClient::info_payload(b"vol", &[])),
        (OPT_LIST, vec![]),
        (OPT_STRUCTURED_REPLY, vec![]),
    ] {
        c.option(opt, &payload);
        let r = c.option_replies();
        assert_eq!(
            (r.len(), r[0].0, r[0].1),
            (1, opt, REP_ERR_TLS_REQD),
            "{r:?}"
        );
    }
    // ...and choosing the export in plaintext ends the session.
    c.option(OPT_EXPORT_NAME, b"vol");
    assert!(
        c.closed_by_server(),
        "EXPORT_NAME without TLS was not refused"
    );
    // A real client without TLS gets nowhere (libnbd 1.14 reports the
    // refusal of its NBD_OPT_GO as "Operation not supported").
    let r = run_tool(
        "nbdinfo",
        &[&format!("nbd://127.0.0.1:{}/vol", s.tcp.port())],
        LIMIT,
    );
    assert!(!r.ok(), "plaintext nbdinfo got through:\n{}", r.output());
    // The unix socket is not TCP: its file permissions guard it, in plaintext.
    run_tool("nbdinfo", &[&s.unix_uri()], LIMIT).assert_ok("nbdinfo on the unix socket");
    // STARTTLS twice or with data is invalid; with TLS off it is unsupported.
    let (mut c, _) = RawClient::connect_tcp(s.tcp);
    c.put(&3u32.to_be_bytes());
    c.option(OPT_STARTTLS, b"x");
    assert_eq!(c.option_replies()[0].1, REP_ERR_INVALID);
    let plain = Served::start(ServeOpts::default());
    let (mut c, _) = RawClient::connect_tcp(plain.tcp);
    c.put(&3u32.to_be_bytes());
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.option_replies()[0].1, REP_ERR_UNSUP);
}

#[test]
fn tls_on_lets_the_client_choose() {
    let d = tempfile::tempdir().unwrap();
    certs(d.path());
    let s = served(d.path(), false);
    let r = run_tool("nbdinfo", &["--json", &nbds_uri(&s, d.path())], LIMIT);
    r.assert_ok("nbdinfo over TLS");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["TLS"], true, "{v}");
    let r = run_tool("nbdinfo", &["--json", &s.tcp_uri()], LIMIT);
    r.assert_ok("plaintext nbdinfo");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["TLS"], false, "{v}");
}

#[test]
fn client_certificates_from_another_ca_or_none_are_refused() {
    let ours = tempfile::tempdir().unwrap();
    certs(ours.path());
    let s = served(ours.path(), true);
    // The client trusts our CA (so the server passes its check) but holds
    // a certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    certs(other.path());
    let mixed = tempfile::tempdir().unwrap();
    std::fs::copy(
        ours.path().join(tls::CA_CERT),
        mixed.path().join(tls::CA_CERT),
    )
    .unwrap();
    for f in [tls::CLIENT_CERT, tls::CLIENT_KEY] {
        std::fs::copy(other.path().join(f), mixed.path().join(f)).unwrap();
    }
    let r = run_tool("nbdinfo", &[&nbds_uri(&s, mixed.path())], LIMIT);
    assert!(
        !r.ok(),
        "a foreign client certificate was accepted:\n{}",
        r.output()
    );
    let r = qemu_io_tls(s.tcp.port(), "vol", mixed.path(), &["read 0 4k"]);
    assert!(
        !r.ok(),
        "qemu-io with a foreign certificate got through:\n{}",
        r.output()
    );
    // No client certificate at all.
    let bare = tempfile::tempdir().unwrap();
    std::fs::copy(
        ours.path().join(tls::CA_CERT),
        bare.path().join(tls::CA_CERT),
    )
    .unwrap();
    let r = run_tool("nbdinfo", &[&nbds_uri(&s, bare.path())], LIMIT);
    assert!(
        !r.ok(),
        "a client without a certificate was accepted:\n{}",
        r.output()
    );
    // And the right one still works after the refusals.
    run_tool("nbdinfo", &[&nbds_uri(&s, ours.path())], LIMIT).assert_ok("our own client");
}

// ------------------------------------------------- the dtu binaries

/// A `dtu` process, stopped with SIGTERM (then killed) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dtu(args: &[&str], log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    Proc(
        Command::new("timeout")
            .args(["--kill-after=5", "300", env!("CARGO_BIN_EXE_dtu")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dtu"),
    )
}

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

#[test]
fn a_running_primary_from_dtu_init_serves_tls_and_refuses_plaintext() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("pair");
    let (udp, tcp) = (free_port(true), free_port(false));
    let out = Command::new(env!("CARGO_BIN_EXE_dtu"))
        .args([
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--volume-size",
            "64MiB",
            "--nvbuf-size",
            "64MiB",
            "--remote-listen",
            &format!("127.0.0.1:{udp}"),
            "--nbd-tcp",
            &format!("127.0.0.1:{tcp}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dtu init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = dir.join("nbd-tls");
    use std::os::unix::fs::PermissionsExt;
    for key in [tls::CA_KEY, tls::SERVER_KEY, tls::CLIENT_KEY] {
        let mode = std::fs::metadata(certs.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // init offers TLS; this host requires it.
    let primary_toml = dir.join("primary.toml");
    let text = std::fs::read_to_string(&primary_toml).unwrap();
    assert!(
        text.contains("tls = \"on\"") && text.contains("tls_dir = \"nbd-tls\""),
        "{text}"
    );
    std::fs::write(
        &primary_toml,
        text.replace("tls = \"on\"", "tls = \"require\""),
    )
    .unwrap();

    let _remote = dtu(
        &["remote", "-c", dir.join("remote.toml").to_str().unwrap()],
        &d.path().join("remote.log"),
    );
    let _primary = dtu(
        &["primary", "-c", primary_toml.to_str().unwrap()],
        &d.path().join("primary.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", tcp)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the primary never listened; its log:\n{}",
            std::fs::read_to_string(d.path().join("primary.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let uri = format!(
        "nbds://127.0.0.1:{tcp}/dtu?tls-certificates={}",
        certs.display()
    );
    run_tool("nbdinfo", &[&uri], LIMIT).assert_ok("nbdinfo nbds:// against dtu primary");
    let r = qemu_io_tls(
        tcp,
        "dtu",
        &certs,
        &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"],
    );
    r.assert_ok("qemu-io over TLS against dtu primary");
    assert!(
        !r.output().contains("Pattern verification failed"),
        "{}",
        r.output()
    );
    let r = run_tool("nbdinfo", &[&format!("nbd://127.0.0.1:{tcp}/dtu")], LIMIT);
    assert!(!r.ok(), "plaintext client got through:\n{}", r.output());
    let log = std::fs::read_to_string(d.path().join("primary.log")).unwrap_or_default();
    assert!(log.contains("TLS require"), "{log}");
}
