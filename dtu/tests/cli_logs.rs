//! The `dtu` binary's logs, written to a file (as under journald or with
//! `2>log`), are plain text: no ANSI colour escapes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn dtu(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dtu"));
    c.args(args).env_remove("NO_COLOR").env("DTU_LOG", "info");
    c
}

/// Kills the child on every way out of the test.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn logs_to_a_file_carry_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let pair = dir.path().join("pair");
    let pair_s = pair.to_str().unwrap();
    let out = dtu(&[
        "init",
        "--dir",
        pair_s,
        "--volume-size",
        "16MiB",
        "--nvbuf-size",
        "8MiB",
        "--remote-listen",
        "127.0.0.1:0",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let log_path = dir.path().join("remote.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let remote_toml = pair.join("remote.toml");
    let child = dtu(&["remote", "--config", remote_toml.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _child = Killed(child);
    let text = wait_for(&log_path, "remote started", Duration::from_secs(30));
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "escape codes in a log file: {text:?}"
    );
}

fn wait_for(path: &Path, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "no {needle:?} in the log after {limit:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
