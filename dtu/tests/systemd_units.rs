//! The shipped systemd units (`dtu/systemd/`): `systemd-analyze verify`
//! accepts them (with `/usr/local/bin/dtu` pointed at the binary just
//! built), and the `dtu` command lines they run parse: each one, run
//! against a control socket that does not exist, fails only because the
//! DTU is not running.

use std::path::{Path, PathBuf};
use std::process::Command;

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

fn units() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(units_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "service"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        // .ci/run installs systemd; a developer machine without it skips.
        eprintln!("systemd-analyze is not installed: skipped (CI installs it)");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have systemd-analyze"
        );
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_dtu");
    let mut paths = Vec::new();
    for (name, text) in units() {
        let p = dir.path().join(&name);
        std::fs::write(&p, text.replace("/usr/local/bin/dtu", bin)).unwrap();
        paths.push(p);
    }
    assert!(paths.len() >= 4, "expected the four shipped units");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let says = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {says}");
    // Warnings (unknown keys, bad specifiers) are printed but do not fail it.
    for (name, _) in units() {
        assert!(
            !says.contains(&name),
            "systemd-analyze has something to say about {name}: {says}"
        );
    }
}

/// Every `dtu` command line in the units, as systemd would split it (the
/// boot unit's is inside `sh -c '…'`), with `%b` expanded.
fn dtu_command_lines() -> Vec<Vec<String>> {
    let mut lines = Vec::new();
    for (_, text) in units() {
        for l in text.lines() {
            let Some((key, value)) = l.split_once('=') else {
                continue;
            };
            if !matches!(key, "ExecStart" | "ExecStop") {
                continue;
            }
            let value = value.replace("%b", "0123456789abcdef");
            let Some(at) = value.find("/usr/local/bin/dtu ") else {
                continue;
            };
            let rest = &value[at + "/usr/local/bin/dtu ".len()..];
            let rest = rest.split(" &&").next().unwrap_or(rest);
            lines.push(split_words(rest));
        }
    }
    lines
}

fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[test]
fn the_units_command_lines_parse() {
    let lines = dtu_command_lines();
    let checkpoints: Vec<_> = lines.iter().filter(|l| l[0] == "checkpoint").collect();
    assert_eq!(checkpoints.len(), 2, "boot and shutdown: {lines:?}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.ctl");
    for l in checkpoints {
        // The config is /etc/dtu/primary.toml: point at a control socket
        // instead, which does not exist.
        let mut args: Vec<String> = Vec::new();
        let mut it = l.iter();
        while let Some(a) = it.next() {
            if a == "--config" {
                it.next();
                args.push("--control".into());
                args.push(missing.display().to_string());
            } else {
                args.push(a.clone());
            }
        }
        let out = Command::new(env!("CARGO_BIN_EXE_dtu"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("cannot reach the DTU's control socket"),
            "{args:?}: {err}"
        );
    }
    for l in lines.iter().filter(|l| l[0] != "checkpoint") {
        let out = Command::new(env!("CARGO_BIN_EXE_dtu"))
            .args(&l[..1])
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{l:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in l.iter().filter(|a| a.starts_with("--")) {
            assert!(help.contains(flag.as_str()), "{l:?}: no {flag} in its help");
        }
    }
}
