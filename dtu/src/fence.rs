//! The fencing hook (`roles.fence`): a site's own command, run before a
//! promotion or a demotion takes effect, the way DRBD runs its
//! `fence-peer` handler. It can power off the other site (STONITH), revoke
//! its cloud volume, or take a lease in an external store; if it fails or
//! runs too long, the role change is aborted with what it printed.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Most bytes of the hook's output kept for the message.
const MAX_OUTPUT: usize = 4096;

/// Why the hook did not allow the role change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    #[error("the fence command {command:?} could not be started: {why}")]
    Spawn { command: String, why: String },
    #[error("the fence command {command:?} failed ({status}); the {action} is aborted: {output}")]
    Failed {
        command: String,
        action: &'static str,
        status: String,
        output: String,
    },
    #[error(
        "the fence command {command:?} ran longer than {timeout:?} and was killed; the {action} \
         is aborted: {output}"
    )]
    TimedOut {
        command: String,
        action: &'static str,
        timeout: Duration,
        output: String,
    },
}

/// Runs `command` with `sh -c` for `action` (`promote` or `demote`) of
/// the volume `volume` configured in `config`; `Ok` with its output when it
/// exits 0 within `timeout`.
pub fn run(
    command: &str,
    action: &'static str,
    volume: &str,
    config: &Path,
    timeout: Duration,
) -> Result<String, FenceError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("DTU_ACTION", action)
        .env("DTU_VOLUME", volume)
        .env("DTU_CONFIG", config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever it started.
        .process_group(0)
        .spawn()
        .map_err(|e| FenceError::Spawn {
            command: command.into(),
            why: e.to_string(),
        })?;
    // Drained on threads, so a chatty hook never blocks on a full pipe.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.by_ref().take(1 << 20).read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: kill(2) with a negative pid signals the process
                    // group the child leads; it touches no memory of ours.
                    unsafe {
                        libc::kill(-pid, libc::SIGKILL);
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return Err(FenceError::Spawn {
                    command: command.into(),
                    why: e.to_string(),
                })
            }
        }
    };
    let mut text = out.join().unwrap_or_default();
    text.extend(err.join().unwrap_or_default());
    let mut output = String::from_utf8_lossy(&text).trim().to_string();
    if output.len() > MAX_OUTPUT {
        let mut cut = MAX_OUTPUT;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
        output.push_str(" …");
    }
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => Err(FenceError::Failed {
            command: command.into(),
            action,
            status: s.to_string(),
            output,
        }),
        None => Err(FenceError::TimedOut {
            command: command.into(),
            action,
            timeout,
            output,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_sees_its_action_and_its_failure_aborts_with_its_words() {
        let cfg = Path::new("/etc/dtu/remote.toml");
        let ok = run(
            "echo \"$DTU_ACTION $DTU_VOLUME $DTU_CONFIG\"",
            "promote",
            "v1",
            cfg,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(ok, "promote v1 /etc/dtu/remote.toml");
        let e = run(
            "echo lease held by site-a >&2; exit 3",
            "promote",
            "v1",
            cfg,
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(
            matches!(&e, FenceError::Failed { output, .. } if output == "lease held by site-a"),
            "{e}"
        );
        assert!(e.to_string().contains("promote is aborted"), "{e}");
        let e = run("sleep 5", "demote", "v1", cfg, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, FenceError::TimedOut { .. }), "{e}");
    }
}
