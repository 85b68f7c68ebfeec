//! The `config_control` fuzz target's checks: what a user or a script can
//! hand a DTU as text, parsed the way the DTU parses it. Config files
//! (primary and remote TOML, arbitrary or a valid file with fields
//! replaced or removed) go through [`PrimaryConfig::from_file`] and
//! [`RemoteConfig::from_file`]; control-socket lines (arbitrary, or valid
//! requests with a field replaced) go through [`Request::parse`] and, for
//! policy changes, [`changed_policy`] and a live [`Sender`]. Each must end
//! in an error or a value within the bounds, never a panic.

use std::path::Path;
use std::time::{Duration, Instant};

use dtu_proto::policy::MAX_DELAY;
use dtu_proto::sender::{OpKind, Sender, SenderConfig};
use dtu_proto::{AckPolicy, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};

use crate::config::{
    PrimaryConfig, PrimaryFile, RemoteConfig, RemoteFile, Volume, MAX_LANES, MAX_NVBUF_SIZE,
    MAX_VOLUME_SIZE,
};
use crate::control::{changed_policy, Request};
use crate::transport::MAX_RTT;

/// What one input did, so that a corpus replay can tell whether its seeds
/// still reach both the accepting and the refusing paths.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConfigControlRun {
    /// Config files accepted / refused (by TOML or by validation).
    pub configs_ok: usize,
    pub configs_refused: usize,
    /// Control lines accepted / refused.
    pub requests_ok: usize,
    pub requests_refused: usize,
}

/// Mode (first input byte, modulo 6) of [`config_control`].
pub mod mode {
    /// The rest is a primary config file.
    pub const PRIMARY_TEXT: u8 = 0;
    /// The rest is a remote config file.
    pub const REMOTE_TEXT: u8 = 1;
    /// The rest edits [`super::PRIMARY_TEMPLATE`], see [`super::mutate`].
    pub const PRIMARY_EDITS: u8 = 2;
    /// The rest edits [`super::REMOTE_TEMPLATE`].
    pub const REMOTE_EDITS: u8 = 3;
    /// The rest is control-socket lines.
    pub const CONTROL_LINES: u8 = 4;
    /// The rest edits [`super::CONTROL_TEMPLATE`].
    pub const CONTROL_EDITS: u8 = 5;
}

/// A valid primary config, as `dtu init` writes one (without the key file,
/// whose path a fuzzed file must not get to choose).
pub const PRIMARY_TEMPLATE: &str = r#"[volume]
id = "00112233445566778899aabbccddeeff"
size = "64MiB"
block_size = 4096

[identity]
cert = "primary.crt"
key = "primary.key"
peer_fingerprint = "sha256:00"

[link]
remote = "127.0.0.1:7000"
server_name = "dtu-remote"
rate = "1.544Mbit"
rtt = "20ms"
congestion = "cubic"
lanes = 4

[nvbuf]
path = "primary.nvbuf"
size = "64MiB"

[pipeline]
workers = 2
chunk_size = "64KiB"
compress = true

[policy]
trigger = "buffered"
delay = "5ms"
spoofing = true
dirty_threshold = 75.0

[nbd]
tcp = "127.0.0.1:10809"
unix = "primary.nbd.sock"
export = "dtu"
local = "local.img"

[admin]
control = "primary.ctl"
metrics = "127.0.0.1:9101"
"#;

/// A valid remote config.
pub const REMOTE_TEMPLATE: &str = r#"[volume]
id = "00112233445566778899aabbccddeeff"
size = "64MiB"
block_size = 4096

[identity]
cert = "remote.crt"
key = "remote.key"
peer_fingerprint = "sha256:00"

[link]
listen = "127.0.0.1:7001"
rate = "1Gbit"
rtt = "40ms"
congestion = "bbr"
lanes = 4

[replica]
path = "replica.img"
state = "replica.img.state"

[pipeline]
workers = 0
chunk_size = "64KiB"

[nbd]
unix = "replica.sock"

[admin]
control = "remote.ctl"
"#;

/// Valid control requests, one per line.
pub const CONTROL_TEMPLATE: &str = r#"{"op":"status"}
{"op":"set-policy","trigger":"sent","delay":"5ms","spoofing":true,"dirty_threshold":50.0}
{"op":"set-policy","delay":"250us"}
{"op":"dirty","pct":90.0}
{"op":"checkpoint","label":"before upgrade"}
"#;

/// Parses fuzzed config files or control lines; see [`mode`] for the
/// layout. Panics if anything panics, or if a value is accepted outside
/// its bounds.
pub fn config_control(data: &[u8]) -> ConfigControlRun {
    let mut run = ConfigControlRun::default();
    let Some((&m, rest)) = data.split_first() else {
        return run;
    };
    match m % 6 {
        mode::PRIMARY_TEXT => check_primary(&String::from_utf8_lossy(rest), &mut run),
        mode::REMOTE_TEXT => check_remote(&String::from_utf8_lossy(rest), &mut run),
        mode::PRIMARY_EDITS => check_primary(&mutate(PRIMARY_TEMPLATE, rest), &mut run),
        mode::REMOTE_EDITS => check_remote(&mutate(REMOTE_TEMPLATE, rest), &mut run),
        mode::CONTROL_LINES => check_control(&String::from_utf8_lossy(rest), &mut run),
        _ => check_control(&mutate_json(rest), &mut run),
    }
    run
}

/// Applies edits to the `key = value` lines of a template. The input is a
/// list of edits separated by `\n`: the first byte of each picks a line
/// (modulo their number), the rest replaces its value as raw TOML (so it
/// may be a string, a number, `nan`, or not TOML at all); an edit with
/// nothing after the selector removes the line.
pub fn mutate(template: &str, edits: &[u8]) -> String {
    let mut lines: Vec<Option<String>> = template.lines().map(|l| Some(l.to_string())).collect();
    let editable: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.as_deref().is_some_and(|l| l.contains(" = ")))
        .map(|(i, _)| i)
        .collect();
    for edit in edits.split(|&b| b == b'\n') {
        let Some((&pick, value)) = edit.split_first() else {
            continue;
        };
        let at = editable[pick as usize % editable.len()];
        let Some(line) = &lines[at] else {
            continue;
        };
        let key = line.split(" = ").next().unwrap_or_default().to_string();
        lines[at] = if value.is_empty() {
            None
        } else {
            Some(format!("{key} = {}", String::from_utf8_lossy(value)))
        };
    }
    let mut out = lines.into_iter().flatten().collect::<Vec<_>>().join("\n");
    out.push('\n');
    out
}

/// Replaces values in the control template: each edit (separated by
/// `\n`) picks a request (first byte) and a field of it (second byte) and
/// puts the rest in as a raw JSON value.
fn mutate_json(edits: &[u8]) -> String {
    let mut requests: Vec<serde_json::Map<String, serde_json::Value>> = CONTROL_TEMPLATE
        .lines()
        .map(|l| serde_json::from_str(l).expect("the template is JSON"))
        .collect();
    let mut out = String::new();
    for edit in edits.split(|&b| b == b'\n') {
        let [pick, field, value @ ..] = edit else {
            continue;
        };
        let req = &mut requests[*pick as usize % CONTROL_TEMPLATE.lines().count()];
        let keys: Vec<String> = req.keys().cloned().collect();
        let key = &keys[*field as usize % keys.len()];
        let raw = String::from_utf8_lossy(value);
        match serde_json::from_str::<serde_json::Value>(&raw) {
            Ok(v) => {
                req.insert(key.clone(), v);
            }
            // Not JSON: send the line with the raw text spliced in, as a
            // careless script would.
            Err(_) => out.push_str(&format!("{{\"op\":{raw}}}\n")),
        }
    }
    for r in &requests {
        out.push_str(&serde_json::Value::Object(r.clone()).to_string());
        out.push('\n');
    }
    out
}

fn check_primary(text: &str, run: &mut ConfigControlRun) {
    let Ok(mut file) = toml::from_str::<PrimaryFile>(text) else {
        run.configs_refused += 1;
        return;
    };
    file.volume.key = None;
    match PrimaryConfig::from_file(Path::new("/fuzz/primary.toml"), &file) {
        Ok(c) => {
            run.configs_ok += 1;
            check_volume(&c.volume);
            assert!((crate::nvbuf::format::MIN_SIZE..=MAX_NVBUF_SIZE).contains(&c.nvbuf_size));
            assert!(c.link.rtt <= MAX_RTT, "{:?}", c.link.rtt);
            assert!((1..=MAX_LANES).contains(&c.link.lanes));
            assert!((MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&c.pipeline.chunk_size));
            assert_eq!(c.policy.validate(), Ok(()));
            check_sender(c.policy);
        }
        Err(e) => {
            run.configs_refused += 1;
            assert!(!e.to_string().is_empty());
        }
    }
}

fn check_remote(text: &str, run: &mut ConfigControlRun) {
    let Ok(mut file) = toml::from_str::<RemoteFile>(text) else {
        run.configs_refused += 1;
        return;
    };
    file.volume.key = None;
    match RemoteConfig::from_file(Path::new("/fuzz/remote.toml"), &file) {
        Ok(c) => {
            run.configs_ok += 1;
            check_volume(&c.volume);
            assert!(c.link.rtt <= MAX_RTT, "{:?}", c.link.rtt);
            assert!((MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&c.pipeline.chunk_size));
        }
        Err(e) => {
            run.configs_refused += 1;
            assert!(!e.to_string().is_empty());
        }
    }
}

fn check_volume(v: &Volume) {
    assert!(v.block_size.is_power_of_two());
    assert!(v.size > 0 && v.size <= MAX_VOLUME_SIZE, "{}", v.size);
    assert_eq!(v.size % u64::from(v.block_size), 0);
}

/// Every line as the control socket reads it; accepted policy changes are
/// applied in turn, as a running primary would, and each new policy is
/// put to work in a sender.
fn check_control(text: &str, run: &mut ConfigControlRun) {
    let mut policy = AckPolicy::default();
    for line in text.lines() {
        let req = match Request::parse(line) {
            Ok(r) => r,
            Err(e) => {
                run.requests_refused += 1;
                assert!(!e.to_string().is_empty());
                continue;
            }
        };
        run.requests_ok += 1;
        if let Request::SetPolicy {
            trigger,
            delay,
            spoofing,
            dirty_threshold,
        } = req
        {
            // `parse` checked the fields against the default policy; the
            // change must apply to any policy in force just as well.
            let p = changed_policy(
                policy,
                trigger.as_deref(),
                delay.as_deref(),
                spoofing,
                dirty_threshold,
            )
            .expect("a request that parsed applies");
            assert_eq!(p.validate(), Ok(()));
            policy = p;
            check_sender(policy);
        }
    }
}

/// A sender under `policy` answers a buffered write no later than the
/// longest delay after it, when the host is dirty enough to spoof.
fn check_sender(policy: AckPolicy) {
    let t0 = Instant::now();
    let mut s = Sender::new(
        SenderConfig {
            policy,
            ..SenderConfig::default()
        },
        1,
        1,
        t0,
    );
    s.report_dirty(100.0, t0);
    let seq = s.submit(OpKind::Write, 4096, t0);
    s.on_buffered(seq, t0);
    s.handle_timeout(t0 + MAX_DELAY + Duration::from_millis(1));
    let answered = s.poll_answer().is_some();
    let spoofs = policy.spoofing && policy.trigger <= dtu_proto::Trigger::Buffered;
    assert!(
        answered || !spoofs,
        "{policy:?}: a buffered write was not answered after {MAX_DELAY:?}"
    );
}
