//! Absurd numbers given to the `dtu` binary are refused with a message that
//! names the flag or field, never accepted to poison a running DTU later:
//! `dtu primary --delay 1e19s`, `dtu policy set --delay 1e19s`, the same
//! delay sent straight to a running primary's control socket, and sizes
//! given to `dtu init`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dtu::control::{request, Request, Response};

fn dtu(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dtu"));
    c.args(args).env("DTU_LOG", "warn");
    c
}

/// Runs `dtu` to completion (bounded: a DTU that starts instead of
/// refusing would run forever).
fn run(args: &[&str]) -> Output {
    let mut child = dtu(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dtu {args:?} is still running after 30 s: it accepted what it should refuse");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn refused(args: &[&str], names: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dtu {args:?} succeeded");
    assert!(err.contains(names), "dtu {args:?}: {err}");
    assert!(!err.contains("panicked"), "dtu {args:?} panicked: {err}");
}

fn init(dir: &Path) -> PathBuf {
    let pair = dir.join("pair");
    let out = run(&[
        "init",
        "--dir",
        pair.to_str().unwrap(),
        "--volume-size",
        "16MiB",
        "--nvbuf-size",
        "8MiB",
        "--remote-listen",
        "127.0.0.1:9",
        "--nbd-tcp",
        "127.0.0.1:0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pair
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn init_refuses_absurd_sizes_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("p");
    let d = d.to_str().unwrap();
    refused(
        &["init", "--dir", d, "--volume-size", "1e30"],
        "--volume-size",
    );
    refused(
        &["init", "--dir", d, "--volume-size", "2000TiB"],
        "--volume-size",
    );
    refused(&["init", "--dir", d, "--nvbuf-size=-1"], "--nvbuf-size");
    refused(&["init", "--dir", d, "--link-rtt", "1e19s"], "--link-rtt");
    refused(&["init", "--dir", d, "--link-rate", "nan"], "--link-rate");
}

#[test]
fn an_absurd_delay_is_refused_by_flag_and_by_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let pair = init(dir.path());
    let primary_toml = pair.join("primary.toml");
    let config = primary_toml.to_str().unwrap();

    refused(
        &["primary", "--config", config, "--delay", "1e19s"],
        "--delay",
    );
    refused(&["primary", "--config", config, "--delay=-5ms"], "--delay");
    refused(
        &["primary", "--config", config, "--dirty-threshold", "NaN"],
        "--dirty-threshold",
    );
    // Refused before the control socket is even asked.
    let ctl = pair.join("primary.ctl");
    let ctl_s = ctl.to_str().unwrap();
    refused(
        &["policy", "set", "--control", ctl_s, "--delay", "1e19s"],
        "--delay",
    );
    refused(&["dirty", "--control", ctl_s, "--", "-3"], "dirty %");

    // A running primary (its remote never answers; it does not need one to
    // take requests) refuses the same delay sent straight to its socket,
    // and keeps working.
    let log = std::fs::File::create(dir.path().join("primary.log")).unwrap();
    let child = dtu(&["primary", "--config", config])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _child = Killed(child);
    let start = Instant::now();
    while !ctl.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no control socket: {}",
            std::fs::read_to_string(dir.path().join("primary.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ask = |req: &Request| loop {
        match request(&ctl, req) {
            Ok(r) => return r,
            // The socket file appears just before the server accepts.
            Err(_) if start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    };
    for delay in ["1e19s", "61s", "nan", "-1ms"] {
        let resp = ask(&Request::SetPolicy {
            trigger: None,
            delay: Some(delay.into()),
            spoofing: None,
            dirty_threshold: None,
        });
        let Response::Error { message } = resp else {
            panic!("delay {delay} accepted: {resp:?}");
        };
        assert!(message.starts_with("delay:"), "{message}");
    }
    let resp = ask(&Request::SetPolicy {
        trigger: Some("sent".into()),
        delay: Some("60s".into()),
        spoofing: None,
        dirty_threshold: None,
    });
    assert!(matches!(resp, Response::Ok { .. }), "{resp:?}");
    let Response::Status(s) = ask(&Request::Status) else {
        panic!("no status");
    };
    let dtu::status::Status::Primary(p) = *s else {
        panic!("not a primary's status");
    };
    assert_eq!(p.trigger, "sent");
    assert_eq!(p.delay_ms, 60_000.0);
}
