//! The administrative subcommands: they talk to a running DTU over its
//! control socket.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::Target;
use crate::control::{changed_policy, request, Request, Response};
use dtu_proto::AckPolicy;

/// `dtu status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (0.1 to 3600) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1",
          value_parser = parse_watch)]
    pub watch: Option<Duration>,
}

/// The shortest `--watch` period: faster only loads the DTU.
pub const WATCH_MIN: Duration = Duration::from_millis(100);
/// The longest `--watch` period.
pub const WATCH_MAX: Duration = Duration::from_secs(3600);

/// A `--watch` period in seconds, within [`WATCH_MIN`]..=[`WATCH_MAX`].
pub fn parse_watch(s: &str) -> Result<Duration, String> {
    let range = || {
        format!(
            "expected seconds between {} and {}",
            WATCH_MIN.as_secs_f64(),
            WATCH_MAX.as_secs_f64()
        )
    };
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds: {}", range()))?;
    if !(WATCH_MIN.as_secs_f64()..=WATCH_MAX.as_secs_f64()).contains(&secs) {
        return Err(format!("{s:?}: {}", range()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `dtu policy ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PolicyAction {
    /// Set one or more parts of the policy; the rest stays.
    Set(PolicySetArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct PolicySetArgs {
    #[command(flatten)]
    pub target: Target,
    /// received | buffered | sent | remote-received | remote-stored
    #[arg(long)]
    pub trigger: Option<String>,
    /// Wait this long after the trigger before answering, e.g. 5ms.
    #[arg(long)]
    pub delay: Option<String>,
    /// on: spoof acks allowed; off: every write waits for remote-stored.
    #[arg(long, value_parser = parse_on_off)]
    pub spoofing: Option<bool>,
    /// Spoof only while the host's dirty % is at or above this (0-100).
    #[arg(long)]
    pub dirty_threshold: Option<f64>,
}

/// `dtu dirty PCT`.
#[derive(Debug, Clone, clap::Args)]
pub struct DirtyArgs {
    #[command(flatten)]
    pub target: Target,
    /// The host's dirty cache share, 0-100.
    pub pct: f64,
}

/// `dtu checkpoint LABEL`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub target: Target,
    /// What the point marks: manual, timer, shutdown, boot, install or change.
    #[arg(long, value_parser = parse_kind)]
    pub kind: Option<String>,
    pub label: String,
}

fn parse_kind(s: &str) -> Result<String, String> {
    s.parse::<dtu_proto::frame::CheckpointKind>()?;
    Ok(s.to_string())
}

/// `dtu export --as-of TIME|LABEL (--tcp ADDR | --unix PATH)`, `dtu export --stop`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub target: Target,
    /// The checkpoint to show: its label, or a time (`@SECS` or
    /// `YYYY-MM-DD HH:MM[:SS]` UTC) for the nearest checkpoint at or before it.
    #[arg(long, value_name = "TIME|LABEL", required_unless_present = "stop")]
    pub as_of: Option<String>,
    /// Serve the view on this TCP address (port 0 picks one); the default is 127.0.0.1:0.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["unix", "stop"])]
    pub tcp: Option<String>,
    /// Serve the view on this unix socket.
    #[arg(long, value_name = "PATH", conflicts_with = "stop")]
    pub unix: Option<PathBuf>,
    /// Stop the view being served.
    #[arg(long, conflicts_with = "as_of")]
    pub stop: bool,
}

/// `dtu rollback --to TIME|LABEL --trial | --commit [--to ...] | --abandon`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("step").required(true).args(["trial", "commit", "abandon"])))]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: Target,
    /// The checkpoint: its label, or a time for the nearest at or before it.
    #[arg(long, value_name = "TIME|LABEL")]
    pub to: Option<String>,
    /// Pause applying and serve the checkpoint's view read-only for inspection.
    #[arg(long, requires = "to")]
    pub trial: bool,
    /// Rewrite the replica to the checkpoint (the trial's, or --to's) and
    /// start a new generation.
    #[arg(long)]
    pub commit: bool,
    /// End the trial; applying resumes.
    #[arg(long, conflicts_with = "to")]
    pub abandon: bool,
    /// The trial's view listens on this TCP address.
    #[arg(long, value_name = "ADDR", requires = "trial", conflicts_with = "unix")]
    pub tcp: Option<String>,
    /// The trial's view listens on this unix socket.
    #[arg(long, value_name = "PATH", requires = "trial")]
    pub unix: Option<PathBuf>,
}

/// `dtu checkpoints [--json]`: the checkpoints the remote holds.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckpointsArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dtu verify [--range START..END] [--repair] [--wait]`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub target: Target,
    /// Only this byte range of the volume, `START..END` in units
    /// (`0..1GiB`); the whole volume without it.
    #[arg(long, value_parser = parse_range)]
    pub range: Option<(u64, u64)>,
    /// Resync the extents found different.
    #[arg(long)]
    pub repair: bool,
    /// Follow the verify with a progress bar until it ends; exit 2 when it
    /// found differences (and did not repair them).
    #[arg(long)]
    pub wait: bool,
}

/// `START..END` in byte units.
pub fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?}: expected START..END, e.g. 0..1GiB"))?;
    let start = dtu_proto::units::parse_bytes(a.trim()).map_err(|e| format!("{a:?}: {e}"))?;
    let end = dtu_proto::units::parse_bytes(b.trim()).map_err(|e| format!("{b:?}: {e}"))?;
    if start >= end {
        return Err(format!(
            "{s:?}: the range is empty (start must be below end)"
        ));
    }
    Ok((start, end))
}

pub fn verify(a: VerifyArgs) -> Result<()> {
    let req = Request::Verify {
        start: a.range.map(|r| r.0),
        end: a.range.map(|r| r.1),
        repair: a.repair,
    };
    req.check()?;
    let asked_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    print_ok(ask(&a.target, req)?)?;
    if !a.wait {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "verify {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .expect("a valid template"),
    );
    // Until the primary's status shows the verify it just started (the
    // sync thread picks it up) and then ends, or shows one that ended
    // since it was asked for.
    let mut seen = false;
    loop {
        let status = ask_status(&a.target)?;
        let crate::status::Status::Primary(p) = *status else {
            bail!("a verify runs on the primary; this is a remote's control socket");
        };
        let s = &p.mirror.sync;
        if s.verify.active {
            seen = true;
            bar.set_length(s.verify.total_bytes);
            bar.set_position(s.verify.done_bytes);
            bar.set_message(format!("{} differing", s.mismatches.len()));
        } else if seen || s.last_verify_unix.is_some_and(|t| t >= asked_unix) {
            bar.finish_and_clear();
            let ranges = s.mismatches.len();
            println!(
                "verify done: {} in {ranges} ranges differ{}",
                crate::units::format_bytes(s.mismatched_bytes),
                if a.repair && ranges > 0 {
                    " (being resynced)"
                } else {
                    ""
                }
            );
            for (o, l) in s.mismatches.iter().take(20) {
                println!("  {o}..{} ({})", o + l, crate::units::format_bytes(*l));
            }
            if ranges > 20 {
                println!(
                    "  ... and {} more (dtu status --json lists them)",
                    ranges - 20
                );
            }
            if ranges > 0 && !a.repair {
                std::process::exit(2);
            }
            return Ok(());
        }
        if let Some(why) = &p.failed {
            bail!("the primary failed: {why}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `dtu progress`: bars for a sync and a verify of the running primary,
/// with rate and time left (and a restore from the remote), until none
/// runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ProgressArgs {
    #[command(flatten)]
    pub target: Target,
}

pub fn progress(a: ProgressArgs) -> Result<()> {
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:7} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
    )
    .expect("a valid template");
    let bars = indicatif::MultiProgress::new();
    let sync = bars.add(indicatif::ProgressBar::new(0).with_style(style.clone()));
    sync.set_prefix("sync");
    let verify = bars.add(indicatif::ProgressBar::new(0).with_style(style.clone()));
    verify.set_prefix("verify");
    let restore = bars.add(indicatif::ProgressBar::new(0).with_style(style));
    restore.set_prefix("restore");
    loop {
        let status = ask_status(&a.target)?;
        let crate::status::Status::Primary(p) = *status else {
            bail!("syncs and verifies run on the primary; this is a remote's control socket");
        };
        let m = &p.mirror;
        for (bar, prog, msg) in [
            (
                &sync,
                &m.sync.sync,
                format!(
                    "{} out of sync, mode {}",
                    crate::units::format_bytes(m.out_of_sync_bytes),
                    m.mode
                ),
            ),
            (
                &verify,
                &m.sync.verify,
                format!("{} ranges differ", m.sync.mismatches.len()),
            ),
            (
                &restore,
                &m.restore,
                format!(
                    "{} read from the remote on demand",
                    crate::units::format_bytes(m.restore_on_demand_bytes)
                ),
            ),
        ] {
            bar.set_length(prog.total_bytes);
            bar.set_position(prog.done_bytes);
            bar.set_message(msg);
        }
        if !m.sync.sync.active
            && !m.sync.verify.active
            && !m.restore.active
            && m.out_of_sync_bytes == 0
        {
            sync.finish_and_clear();
            verify.finish_and_clear();
            restore.finish_and_clear();
            println!(
                "nothing to sync, verify or restore: mode {}, generation {}{}",
                if m.mode.is_empty() {
                    "journal"
                } else {
                    &m.mode
                },
                m.generation,
                m.decision
                    .as_ref()
                    .map(|d| format!("; {d}"))
                    .unwrap_or_default()
            );
            return Ok(());
        }
        if let Some(why) = &p.failed {
            bail!("the primary failed: {why}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

/// The control socket a target names.
pub fn control_path(t: &Target) -> Result<PathBuf> {
    if let Some(c) = &t.control {
        return Ok(c.clone());
    }
    let Some(config) = &t.config else {
        bail!("say which DTU: --config FILE or --control SOCKET");
    };
    // Either role's file names its control socket in [admin].
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let value: toml::Value =
        toml::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    let control = value
        .get("admin")
        .and_then(|a| a.get("control"))
        .and_then(|c| c.as_str())
        .ok_or_else(|| anyhow!("{} has no admin.control", config.display()))?;
    let p = PathBuf::from(control);
    Ok(if p.is_absolute() {
        p
    } else {
        config.parent().map(|d| d.join(&p)).unwrap_or(p)
    })
}

fn ask(t: &Target, req: Request) -> Result<Response> {
    Ok(request(&control_path(t)?, &req)?)
}

/// The DTU's status, or why it could not be had.
fn ask_status(t: &Target) -> Result<Box<crate::status::Status>> {
    match ask(t, Request::Status)? {
        Response::Status(s) => Ok(s),
        Response::Error { message } => bail!("{message}"),
        Response::Ok { message } => bail!("unexpected answer: {message}"),
        Response::Checkpoints { .. } => bail!("unexpected checkpoints answer"),
    }
}

fn print_ok(resp: Response) -> Result<()> {
    match resp {
        Response::Ok { message } => {
            println!("{message}");
            Ok(())
        }
        Response::Error { message } => bail!("{message}"),
        Response::Status(_) => bail!("unexpected status answer"),
        Response::Checkpoints { .. } => bail!("unexpected checkpoints answer"),
    }
}

pub fn status(a: StatusArgs) -> Result<()> {
    loop {
        let status = ask_status(&a.target)?;
        if a.watch.is_some() && !a.json {
            // Clear the screen for a steady display.
            print!("\x1b[2J\x1b[H");
        }
        if a.json {
            println!("{}", serde_json::to_string(&status)?);
        } else {
            print!("{status}");
        }
        match a.watch {
            Some(period) => {
                // Whoever reads the pipe sees each refresh as it comes.
                std::io::stdout().flush()?;
                std::thread::sleep(period);
            }
            None => return Ok(()),
        }
    }
}

pub fn policy(action: PolicyAction) -> Result<()> {
    let PolicyAction::Set(a) = action;
    if a.trigger.is_none()
        && a.delay.is_none()
        && a.spoofing.is_none()
        && a.dirty_threshold.is_none()
    {
        bail!("nothing to set: give --trigger, --delay, --spoofing or --dirty-threshold");
    }
    // Checked here too, so the message names the flag the user typed; the
    // DTU checks again (other clients may speak to its socket).
    changed_policy(
        AckPolicy::default(),
        a.trigger.as_deref(),
        a.delay.as_deref(),
        a.spoofing,
        a.dirty_threshold,
    )
    .map_err(|e| anyhow!("{}: {}", e.flag(), e.detail()))?;
    print_ok(ask(
        &a.target,
        Request::SetPolicy {
            trigger: a.trigger,
            delay: a.delay,
            spoofing: a.spoofing,
            dirty_threshold: a.dirty_threshold,
        },
    )?)
}

pub fn dirty(a: DirtyArgs) -> Result<()> {
    let req = Request::Dirty { pct: a.pct };
    req.check()?;
    print_ok(ask(&a.target, req)?)
}

pub fn checkpoint(a: CheckpointArgs) -> Result<()> {
    let req = Request::Checkpoint {
        label: a.label,
        kind: a.kind,
    };
    req.check()?;
    print_ok(ask(&a.target, req)?)
}

pub fn export(a: ExportArgs) -> Result<()> {
    let req = match a.as_of {
        Some(as_of) if !a.stop => Request::Export {
            tcp: a.tcp.or(if a.unix.is_none() {
                Some("127.0.0.1:0".into())
            } else {
                None
            }),
            unix: a.unix,
            as_of,
        },
        _ => Request::Unexport,
    };
    print_ok(ask(&a.target, req)?)
}

pub fn rollback(a: RollbackArgs) -> Result<()> {
    use crate::control::RollbackAction;
    let action = if a.trial {
        RollbackAction::Trial
    } else if a.commit {
        RollbackAction::Commit
    } else {
        RollbackAction::Abandon
    };
    print_ok(ask(
        &a.target,
        Request::Rollback {
            action,
            to: a.to,
            tcp: a.tcp,
            unix: a.unix,
        },
    )?)
}

pub fn checkpoints(a: CheckpointsArgs) -> Result<()> {
    let list = match ask(&a.target, Request::Checkpoints)? {
        Response::Checkpoints { checkpoints } => checkpoints,
        Response::Error { message } => bail!("{message}"),
        Response::Ok { message } => bail!("unexpected answer: {message}"),
        Response::Status(_) => bail!("unexpected status answer"),
    };
    if a.json {
        println!("{}", serde_json::to_string(&list)?);
    } else {
        print!("{}", checkpoints_table(&list));
    }
    Ok(())
}

/// The table `dtu checkpoints` prints: time, kind, label, seq, undo bytes.
pub fn checkpoints_table(list: &[crate::remote::CheckpointInfo]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if list.is_empty() {
        out.push_str("no checkpoints held\n");
        return out;
    }
    let lw = list
        .iter()
        .map(|c| c.label.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    let _ = writeln!(
        out,
        "{:<30} {:<8} {:<lw$} {:>12} {:>12}",
        "time", "kind", "label", "seq", "undo bytes"
    );
    for c in list {
        let _ = writeln!(
            out,
            "{:<30} {:<8} {:<lw$} {:>12} {:>12}",
            crate::undo::fmt_time_us(c.time_us),
            c.kind,
            c.label,
            c.seq,
            dtu_proto::units::format_bytes(c.undo_bytes),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoints_table_has_a_row_per_checkpoint() {
        assert_eq!(checkpoints_table(&[]), "no checkpoints held\n");
        let row = |seq, label: &str| crate::remote::CheckpointInfo {
            seq,
            time_us: 1_796_215_584_000_001,
            kind: "boot".into(),
            label: label.into(),
            era: seq,
            undo_bytes: 3 << 20,
        };
        let t = checkpoints_table(&[row(7, "before-rm"), row(42, "a-much-longer-label")]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        for h in ["time", "kind", "label", "seq", "undo bytes"] {
            assert!(lines[0].contains(h), "{t}");
        }
        assert!(
            lines[1].starts_with("2026-12-02 12:46:24.000001 UTC"),
            "{t}"
        );
        assert!(
            lines[1].contains("boot") && lines[1].contains("before-rm"),
            "{t}"
        );
        assert!(
            lines[2].contains("a-much-longer-label") && lines[2].contains("42"),
            "{t}"
        );
        assert!(lines[1].contains("3"), "{t}");
        // Columns line up whatever the labels' lengths.
        assert_eq!(lines[1].find(" 7 "), lines[2].find("42 "));
    }

    #[test]
    fn watch_periods_are_bounded() {
        assert_eq!(parse_watch("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_watch("0.1"), Ok(WATCH_MIN));
        assert_eq!(parse_watch("3600"), Ok(WATCH_MAX));
        for bad in [
            "inf", "-inf", "NaN", "-1", "0", "0.05", "3600.5", "1e19", "", "soon",
        ] {
            let e = parse_watch(bad).unwrap_err();
            assert!(e.contains("between 0.1 and 3600"), "{bad}: {e}");
        }
    }
}
