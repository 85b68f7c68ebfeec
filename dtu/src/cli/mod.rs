//! The `dtu` command line: `init`, `primary`, `remote`, `status`, `policy`,
//! `dirty`, `checkpoint` and `demo`. Each subcommand's flags are documented
//! in `dtu <subcommand> --help`; config-file options can be overridden on
//! the command line.

pub mod admin;
#[cfg(feature = "demo")]
pub mod demo;
pub mod init;
pub mod role;
pub mod run;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// dtu: synchronous remote mirroring over slow, lossy, long links.
#[derive(Debug, Parser)]
#[command(name = "dtu", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info`, `dtu=debug`.
    #[arg(long, global = true, env = "DTU_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create keys, certificates and the two config files for a new pair.
    Init(init::InitArgs),
    /// Run the primary DTU: NBD front end, nvbuf, link to the remote.
    Primary(run::PrimaryArgs),
    /// Run the remote DTU: receives writes and applies them to the replica.
    Remote(run::RemoteArgs),
    /// Show a running DTU's status.
    Status(admin::StatusArgs),
    /// Change the running primary's acknowledgement policy.
    Policy {
        #[command(subcommand)]
        action: admin::PolicyAction,
    },
    /// Report the host's dirty cache share (0-100) to the running primary.
    Dirty(admin::DirtyArgs),
    /// Mark a named checkpoint in the write stream.
    Checkpoint(admin::CheckpointArgs),
    /// List the checkpoints the remote holds (time, kind, label, seq, undo bytes).
    Checkpoints(admin::CheckpointsArgs),
    /// Serve the replica as of a checkpoint, read-only over NBD, while
    /// replication goes on (on the remote); --stop ends it.
    Export(admin::ExportArgs),
    /// Roll the replica back to a checkpoint: --trial (pause applying,
    /// serve its view), then --commit or --abandon (on the remote).
    Rollback(admin::RollbackArgs),
    /// Compare the local copy and the replica by block digests while the
    /// host keeps writing; report (and with --repair resync) what differs.
    Verify(admin::VerifyArgs),
    /// Promote this remote: its replica becomes a writable volume served by
    /// this site's primary role (roles.primary), which mirrors back to the
    /// old primary once it returns as a remote. Refused while a primary is
    /// connected or the replica is inconsistent, unless --force.
    Promote(role::PromoteArgs),
    /// Demote this primary: once the remote has stored everything, this
    /// site's local copy becomes the replica of its remote role
    /// (roles.remote). Also run on a stopped primary after a failover.
    Demote(role::DemoteArgs),
    /// A planned switchover, run on either site: once the remote has stored
    /// everything the primary's site becomes its remote and the other site
    /// promotes itself (no resync, nothing lost).
    Switchover(role::SwitchoverArgs),
    /// Follow a running sync, verify and restore with progress bars (rate,
    /// time left) until none runs.
    Progress(admin::ProgressArgs),
    /// Run a primary and a remote over an emulated link with a bursty host
    /// workload, show live status, and verify the replica.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
}

/// Where to find a running DTU's control socket.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The DTU's config file (its control socket is named there).
    #[arg(long, short, conflicts_with = "control")]
    pub config: Option<PathBuf>,
    /// The control socket itself.
    #[arg(long)]
    pub control: Option<PathBuf>,
}

/// Logs go to stderr, in colour only on a terminal and only without
/// `NO_COLOR` (<https://no-color.org>): journald and log files get plain
/// text, not escape codes.
pub fn init_tracing(filter: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = log_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .try_init();
}

/// Whether logs are coloured: on a terminal, unless `NO_COLOR` is set to
/// anything but the empty string.
fn log_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Entry point of the `dtu` binary.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init(a) => {
            let pair = init::run(&a)?;
            println!(
                "wrote {} and {} (and each site's other role: {} and {})",
                pair.primary.display(),
                pair.remote.display(),
                pair.promoted.display(),
                pair.demoted.display()
            );
            println!(
                "start the remote:  dtu remote --config {}",
                pair.remote.display()
            );
            println!(
                "start the primary: dtu primary --config {}",
                pair.primary.display()
            );
            Ok(())
        }
        Command::Primary(a) => {
            init_tracing(&cli.log);
            run::primary(a)
        }
        Command::Remote(a) => {
            init_tracing(&cli.log);
            run::remote(a)
        }
        Command::Status(a) => admin::status(a),
        Command::Policy { action } => admin::policy(action),
        Command::Dirty(a) => admin::dirty(a),
        Command::Checkpoint(a) => admin::checkpoint(a),
        Command::Checkpoints(a) => admin::checkpoints(a),
        Command::Export(a) => admin::export(a),
        Command::Rollback(a) => admin::rollback(a),
        Command::Verify(a) => admin::verify(a),
        Command::Progress(a) => admin::progress(a),
        Command::Promote(a) => {
            init_tracing(&cli.log);
            role::promote(a)
        }
        Command::Demote(a) => {
            init_tracing(&cli.log);
            role::demote(a)
        }
        Command::Switchover(a) => {
            init_tracing(&cli.log);
            role::switchover(a)
        }
        #[cfg(feature = "demo")]
        Command::Demo(a) => {
            init_tracing(if cli.log == "info" { "warn" } else { &cli.log });
            demo::run(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(log_colour(true, None));
        assert!(log_colour(true, Some(OsStr::new(""))));
        assert!(!log_colour(true, Some(OsStr::new("1"))));
        assert!(!log_colour(false, None));
        assert!(!log_colour(false, Some(OsStr::new(""))));
    }
}
