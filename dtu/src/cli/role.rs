//! `dtu promote` and `dtu demote`: a site changes role in the same process.
//!
//! Each site has a config per role (`[roles]` names the other one). A
//! running remote asked to promote checks that it may (no connected
//! primary, a consistent replica, unless `--force`), runs the fence hook,
//! records the promotion, prepares the primary role's nvbuf and then stops
//! its remote role and starts the primary one on the replica. A running
//! primary asked to demote runs the fence hook, stops taking writes, waits
//! until the remote has stored everything (unless `--force`), then stops
//! and starts its remote role on its local copy. A site whose process is
//! not running is changed on disk (the next `dtu remote` on a promoted
//! replica goes on as its primary).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::admin::control_path;
use super::Target;
use crate::config::{PrimaryConfig, RemoteConfig, Roles};
use crate::control::{self, Controlled, Request, Response};
use crate::primary::role::{self as prole, Demoted};
use crate::primary::{Primary, PrimaryOptions};
use crate::remote::Remote;
use crate::replica::{FileReplica, VolumeState};
use crate::status::Status;

/// `dtu promote`.
#[derive(Debug, Clone, clap::Args)]
pub struct PromoteArgs {
    /// The remote's config file (its `roles.primary` names the primary
    /// role this site takes).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Promote even though a primary is connected or the replica is
    /// inconsistent (the reasons are logged).
    #[arg(long)]
    pub force: bool,
}

/// `dtu demote`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoteArgs {
    /// The primary's config file (its `roles.remote` names the remote role
    /// this site takes).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Demote even though the remote has not stored everything: what it
    /// lacks becomes this side's divergence (listed beside the replica's
    /// state), which the next resync discards.
    #[arg(long)]
    pub force: bool,
    /// This side's own changes (its divergence) may be discarded at the
    /// next connect, resolving a split brain in the other side's favour.
    #[arg(long)]
    pub discard_my_data: bool,
    /// How long a running primary waits for the remote to store the last
    /// records, e.g. 60s.
    #[arg(long, default_value = "60s")]
    pub wait: String,
}

/// `dtu switchover`.
#[derive(Debug, Clone, clap::Args)]
pub struct SwitchoverArgs {
    /// This site's config: the running primary's (its `roles.remote` names
    /// the remote role this site takes) or the running remote's (its
    /// `roles.primary` names the role this site takes; the primary is asked
    /// to hand over and drains for up to 60 s).
    #[arg(long, short)]
    pub config: PathBuf,
    /// At the primary's site: how long it waits for the remote to store
    /// the last records before it gives up and keeps its role, e.g. 60s.
    #[arg(long, default_value = "60s")]
    pub wait: String,
    /// How long to wait for the other site's new primary to connect to
    /// this site's remote role, e.g. 120s.
    #[arg(long, default_value = "120s")]
    pub connect_wait: String,
}

/// What a role's run leaves the process to do.
#[derive(Debug, Clone)]
pub enum Next {
    Stop,
    /// Run the primary role from this config.
    Primary(PathBuf),
    /// Make this site's files a remote's (`demote`, with `discard`) and run
    /// the remote role from this config.
    Remote {
        config: PathBuf,
        demote: Option<bool>,
    },
}

fn other_role(roles: &Roles, config: &Path, field: &str) -> Result<PathBuf> {
    roles.other.clone().ok_or_else(|| {
        anyhow!(
            "{} sets no roles.{field}: this site has no other role to take. Name that role's \
             config there (dtu init writes promoted.toml and demoted.toml)",
            config.display()
        )
    })
}

fn fence(roles: &Roles, action: &'static str, volume: &[u8; 16], config: &Path) -> Result<()> {
    if let Some(cmd) = &roles.fence {
        let out = crate::fence::run(
            cmd,
            action,
            &hex::encode(volume),
            config,
            roles.fence_timeout,
        )?;
        tracing::info!("fence command for the {action} succeeded: {out}");
    }
    Ok(())
}

/// The primary config a remote becomes, checked against it.
fn promoted_config(cfg: &RemoteConfig, path: &Path) -> Result<(PathBuf, PrimaryConfig)> {
    let p = other_role(&cfg.roles, path, "primary")?;
    let pc = PrimaryConfig::load(&p)?;
    if pc.local.is_none() {
        bail!(
            "{}: nbd.local is not set; a promoted remote's volume is its replica ({})",
            p.display(),
            cfg.replica.display()
        );
    }
    prole::check_pair(&pc, cfg)?;
    Ok((p, pc))
}

/// A running remote's control socket, with `promote` handled here.
pub struct RemoteControl {
    pub remote: Arc<Remote>,
    pub cfg: RemoteConfig,
    pub path: PathBuf,
    pub next: tokio::sync::mpsc::UnboundedSender<Next>,
}

impl RemoteControl {
    /// The promotion a primary's handover asks for: never forced (its
    /// checks hold after a drained switchover), the fence hook runs.
    pub fn promote_on_handover(&self) -> Result<String> {
        self.promote(false)
    }

    fn promote(&self, force: bool) -> Result<String> {
        let (ppath, pcfg) = promoted_config(&self.cfg, &self.path)?;
        let started = Instant::now();
        let p = self.remote.promote(force, || {
            // `{:#}`: the hook's error with its causes, in one line.
            fence(&self.cfg.roles, "promote", &self.cfg.volume.id, &self.path)
                .map_err(|e| format!("{e:#}"))
        })?;
        let popts = PrimaryOptions::from_config(&pcfg)?;
        prole::prepare_promoted(&popts, p.gens, p.base).with_context(|| {
            format!(
                "the replica is promoted but its primary role cannot be prepared; restarting \
                 `dtu remote -c {}` retries",
                self.path.display()
            )
        })?;
        let _ = self.next.send(Next::Primary(ppath.clone()));
        Ok(format!(
            "promoted at seq {} in {} ms: generation {:016x} after {:016x}; the primary role \
             starts from {}{}",
            p.seq,
            started.elapsed().as_millis(),
            p.gens.current,
            p.base,
            ppath.display(),
            if p.overridden.is_empty() {
                String::new()
            } else {
                format!(" (forced although: {})", p.overridden.join("; "))
            }
        ))
    }
}

impl Controlled for RemoteControl {
    fn handle(&self, req: Request) -> Response {
        match req {
            Request::Promote { force } => match self.promote(force) {
                Ok(message) => Response::Ok { message },
                Err(e) => Response::Error {
                    message: format!("{e:#}"),
                },
            },
            other => self.remote.handle(other),
        }
    }
    fn status(&self) -> Status {
        self.remote.status()
    }
}

/// A running primary's control socket, with `demote` handled here.
pub struct PrimaryControl {
    pub primary: Arc<Primary>,
    pub cfg: PrimaryConfig,
    pub path: PathBuf,
    pub next: tokio::sync::mpsc::UnboundedSender<Next>,
}

/// How long a primary asked by its remote to hand over waits for the
/// remote to store the last records.
const ASKED_HANDOVER_WAIT: Duration = Duration::from_secs(60);

impl PrimaryControl {
    /// The switchover the remote asked for: as `dtu switchover` here.
    pub fn hand_over_on_request(&self) -> Result<String> {
        self.demote(false, false, ASKED_HANDOVER_WAIT, true)
    }

    fn demote(&self, force: bool, discard: bool, wait: Duration, handover: bool) -> Result<String> {
        if handover && (force || discard) {
            bail!("a switchover loses nothing: it is never forced and discards nothing");
        }
        if self.primary.restoring() {
            bail!(
                "the local copy is being restored from the remote and is not whole yet: demote \
                 once `dtu status` shows the restore complete"
            );
        }
        let rpath = other_role(&self.cfg.roles, &self.path, "remote")?;
        let rcfg = RemoteConfig::load(&rpath)?;
        prole::check_pair(&self.cfg, &rcfg)?;
        fence(&self.cfg.roles, "demote", &self.cfg.volume.id, &self.path)?;
        let left = match self.primary.drain(wait) {
            Ok(()) => String::from("the remote stored everything"),
            Err(u) if force => {
                tracing::warn!("demoting with --force although {u}");
                // Nothing more is taken while the role changes.
                self.primary.refuse_host_operations(true);
                format!(
                    "forced: {} operations not stored, {} bytes out of sync",
                    u.unstored, u.out_of_sync
                )
            }
            Err(u) => return Err(u.into()),
        };
        if handover {
            self.primary.hand_over_on_stop();
        }
        let _ = self.next.send(Next::Remote {
            config: rpath.clone(),
            demote: Some(discard),
        });
        Ok(format!(
            "demoting ({left}): the remote role starts from {}",
            rpath.display()
        ))
    }
}

impl Controlled for PrimaryControl {
    fn handle(&self, req: Request) -> Response {
        match req {
            Request::Demote {
                force,
                discard_my_data,
                wait_s,
                handover,
            } => {
                let wait = Duration::from_secs(wait_s.unwrap_or(60));
                match self.demote(force, discard_my_data, wait, handover) {
                    Ok(message) => Response::Ok { message },
                    Err(e) => Response::Error {
                        message: format!("{e:#}"),
                    },
                }
            }
            other => self.primary.handle(other),
        }
    }
    fn status(&self) -> Status {
        self.primary.status()
    }
}

/// Does the demotion's file work before the remote role starts.
pub fn demote_files(pcfg_path: &Path, rcfg_path: &Path, discard: bool) -> Result<Demoted> {
    let pcfg = PrimaryConfig::load(pcfg_path)?;
    let rcfg = RemoteConfig::load(rcfg_path)?;
    prole::check_pair(&pcfg, &rcfg)?;
    let d = prole::demote_files(&PrimaryOptions::from_config(&pcfg)?, &rcfg.state, discard)?;
    tracing::warn!("{}", describe(&d, discard));
    Ok(d)
}

/// What a demotion left, in one line.
fn describe(d: &Demoted, discard: bool) -> String {
    if d.already {
        return format!("already demoted: generation {}", d.gens);
    }
    if d.divergent.is_empty() {
        return format!(
            "demoted: the replica holds generation {}; nothing diverged",
            d.gens
        );
    }
    let listed = d
        .record
        .as_ref()
        .map_or(String::new(), |r| format!(" (listed in {})", r.display()));
    let mut line = format!(
        "demoted: {} in {} extents may be missing on the other side{listed}; the next connect \
         sends the list and they are resynced from the other side",
        crate::units::format_bytes(d.divergent_bytes()),
        d.divergent.len()
    );
    if d.cut_off_bytes > 0 {
        line.push_str(&format!(
            ". Of them, {} were written by the host while this primary was cut off from the \
             remote: if the remote was promoted meanwhile both sides wrote (a split brain), and \
             the replica takes generation {} so the next connect {}",
            crate::units::format_bytes(d.cut_off_bytes),
            d.gens,
            if discard {
                "discards them, as --discard-my-data says"
            } else {
                "refuses until the operator decides (--discard-my-data, or roles.split_brain on \
                 the remote)"
            }
        ));
    }
    line
}

/// Waits until the control socket at `ctl` answers as `role`.
fn wait_for_role(ctl: &Path, primary: bool, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok(Response::Status(s)) = control::request(ctl, &Request::Status) {
            if matches!(*s, Status::Primary(_)) == primary {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() > limit {
            bail!(
                "{} did not answer as a {} within {limit:?}; see its log",
                ctl.display(),
                if primary { "primary" } else { "remote" }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_running(ctl: &Path) -> bool {
    control::request(ctl, &Request::Status).is_ok()
}

/// `dtu promote`.
pub fn promote(a: PromoteArgs) -> Result<()> {
    let cfg = RemoteConfig::load(&a.config)?;
    let (ppath, pcfg) = promoted_config(&cfg, &a.config)?;
    let ctl = control_path(&Target {
        config: Some(a.config.clone()),
        control: None,
    })?;
    if is_running(&ctl) {
        let limit = cfg.roles.fence_timeout + Duration::from_secs(60);
        let resp = control::request_within(&ctl, &Request::Promote { force: a.force }, limit)?;
        let message = match resp {
            Response::Ok { message } => message,
            Response::Error { message } => bail!("{message}"),
            _ => bail!("unexpected answer to promote"),
        };
        println!("{message}");
        let took = wait_for_role(&pcfg.control, true, Duration::from_secs(60))?;
        println!(
            "the primary role is up ({} ms after the answer); its control socket is {}",
            took.as_millis(),
            pcfg.control.display()
        );
        return Ok(());
    }
    // Not running: the files change here; `dtu remote` (or `dtu primary`
    // with the promoted config) goes on from them.
    let replica = FileReplica::open(&cfg.replica, cfg.volume.size)?;
    let (mut vs, _) = VolumeState::open(&cfg.state, cfg.volume.id, &replica, false)?;
    if !vs.promoted() {
        let why: Vec<String> = vs.inconsistencies().iter().map(|i| i.to_string()).collect();
        if !why.is_empty() && !a.force {
            return Err(crate::remote::promote::PromoteError::Inconsistent(why).into());
        }
        fence(&cfg.roles, "promote", &cfg.volume.id, &a.config)?;
    }
    let (gens, base) = vs.promote(rand::random::<u64>() | 1)?;
    use crate::replica::Replica as _;
    replica.sync()?;
    vs.close_clean(&replica)?;
    drop(vs);
    prole::prepare_promoted(&PrimaryOptions::from_config(&pcfg)?, gens, base)?;
    println!(
        "promoted (the remote was not running): generation {:016x} after {base:016x}. Start \
         the primary role: dtu primary --config {}",
        gens.current,
        ppath.display()
    );
    Ok(())
}

/// `dtu demote`.
pub fn demote(a: DemoteArgs) -> Result<()> {
    let cfg = PrimaryConfig::load(&a.config)?;
    let rpath = other_role(&cfg.roles, &a.config, "remote")?;
    let rcfg = RemoteConfig::load(&rpath)?;
    let wait =
        crate::units::parse_duration_within(&a.wait, Duration::ZERO, control::MAX_DEMOTE_WAIT)
            .map_err(|e| anyhow!("--wait: {e}"))?;
    if is_running(&cfg.control) {
        let limit = cfg.roles.fence_timeout + wait + Duration::from_secs(60);
        let resp = control::request_within(
            &cfg.control,
            &Request::Demote {
                force: a.force,
                discard_my_data: a.discard_my_data,
                wait_s: Some(wait.as_secs()),
                handover: false,
            },
            limit,
        )?;
        let message = match resp {
            Response::Ok { message } => message,
            Response::Error { message } => bail!("{message}"),
            _ => bail!("unexpected answer to demote"),
        };
        println!("{message}");
        let took = wait_for_role(&rcfg.control, false, Duration::from_secs(120))?;
        println!(
            "the remote role is up ({} ms after the answer); its control socket is {}",
            took.as_millis(),
            rcfg.control.display()
        );
        return Ok(());
    }
    fence(&cfg.roles, "demote", &cfg.volume.id, &a.config)?;
    let d = demote_files(&a.config, &rpath, a.discard_my_data)?;
    println!("{}", describe(&d, a.discard_my_data));
    println!(
        "start the remote role: dtu remote --config {}",
        rpath.display()
    );
    Ok(())
}

/// `dtu switchover`: on the primary's site, drains, demotes this site and
/// asks the remote (in the session's goodbye) to promote; then waits until
/// the other site's new primary connects to this site's remote role.
pub fn switchover(a: SwitchoverArgs) -> Result<()> {
    let cfg = match PrimaryConfig::load(&a.config) {
        Ok(c) => c,
        Err(pe) => match RemoteConfig::load(&a.config) {
            Ok(rcfg) => return switchover_at_remote(&a, &rcfg),
            Err(_) => return Err(pe.into()),
        },
    };
    let rpath = other_role(&cfg.roles, &a.config, "remote")?;
    let rcfg = RemoteConfig::load(&rpath)?;
    let wait =
        crate::units::parse_duration_within(&a.wait, Duration::ZERO, control::MAX_DEMOTE_WAIT)
            .map_err(|e| anyhow!("--wait: {e}"))?;
    let connect_wait = crate::units::parse_duration_within(
        &a.connect_wait,
        Duration::from_secs(1),
        control::MAX_DEMOTE_WAIT,
    )
    .map_err(|e| anyhow!("--connect-wait: {e}"))?;
    if !is_running(&cfg.control) {
        bail!(
            "the primary is not running (no answer on {}): a switchover hands over a running \
             pair. For a stopped one: `dtu demote -c {}` here, then `dtu promote` on the remote",
            cfg.control.display(),
            a.config.display()
        );
    }
    let limit = cfg.roles.fence_timeout + wait + Duration::from_secs(60);
    let resp = control::request_within(
        &cfg.control,
        &Request::Demote {
            force: false,
            discard_my_data: false,
            wait_s: Some(wait.as_secs()),
            handover: true,
        },
        limit,
    )?;
    match resp {
        Response::Ok { message } => println!("{message}"),
        Response::Error { message } => bail!("switchover refused, nothing changed: {message}"),
        _ => bail!("unexpected answer to the switchover"),
    }
    let took = wait_for_role(&rcfg.control, false, Duration::from_secs(120))?;
    println!(
        "this site's remote role is up ({} ms after the answer); waiting for the other site's \
         new primary",
        took.as_millis()
    );
    let start = Instant::now();
    loop {
        if let Ok(Response::Status(s)) = control::request(&rcfg.control, &Request::Status) {
            if let Status::Remote(r) = *s {
                if r.connection == crate::status::ConnectionState::Connected {
                    println!(
                        "switchover complete in {} ms: the other site is the primary ({}); \
                         this site is its remote: {}",
                        start.elapsed().as_millis() + took.as_millis(),
                        r.peer.as_deref().unwrap_or("?"),
                        r.decision.as_deref().unwrap_or("no decision recorded")
                    );
                    return Ok(());
                }
            }
        }
        if start.elapsed() > connect_wait {
            bail!(
                "no new primary connected within {connect_wait:?}: this site is a remote and \
                 nothing is lost; see the other site's log (its promotion may have failed: then \
                 run `dtu promote` there)"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `dtu switchover` at the remote's site: asks the connected primary to
/// hand over, then waits until this site runs its primary role.
fn switchover_at_remote(a: &SwitchoverArgs, cfg: &RemoteConfig) -> Result<()> {
    let (ppath, pcfg) = promoted_config(cfg, &a.config)?;
    let wait =
        crate::units::parse_duration_within(&a.wait, Duration::ZERO, control::MAX_DEMOTE_WAIT)
            .map_err(|e| anyhow!("--wait: {e}"))?;
    if !is_running(&cfg.control) {
        bail!(
            "the remote is not running (no answer on {}): a switchover hands over a running pair",
            cfg.control.display()
        );
    }
    match control::request(&cfg.control, &Request::Switchover)? {
        Response::Ok { message } => println!("{message}"),
        Response::Error { message } => bail!("switchover refused, nothing changed: {message}"),
        _ => bail!("unexpected answer to the switchover"),
    }
    // The primary drains for up to a minute, then this site promotes.
    let limit = ASKED_HANDOVER_WAIT + wait + cfg.roles.fence_timeout + Duration::from_secs(30);
    let took = wait_for_role(&pcfg.control, true, limit).map_err(|e| {
        anyhow!(
            "{e:#}. If the primary could not drain it keeps its role (see its log); if it handed \
             over and this site's promotion failed, both sites are remotes and nothing is lost: \
             run `dtu promote -c {}`",
            a.config.display()
        )
    })?;
    println!(
        "switchover complete in {} ms: this site is the primary (from {}); its control socket \
         is {}",
        took.as_millis(),
        ppath.display(),
        pcfg.control.display()
    );
    Ok(())
}
