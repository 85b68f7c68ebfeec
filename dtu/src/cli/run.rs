//! `dtu primary` and `dtu remote`: the long-running DTU processes, with
//! their NBD front end or read-only export, control socket and metrics.
//! They stop cleanly on SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use super::admin::parse_on_off;
use crate::config::{NbdTlsConfig, PrimaryConfig, RemoteConfig};
use crate::control::{self, Controlled};
use crate::nbd::tls::{NbdTls, TlsMode};
use crate::nbd::{Export, FileExport, NbdServer};
use crate::primary::{Primary, PrimaryExport, PrimaryOptions};
use crate::remote::{Remote, RemoteError, RemoteOptions};

use super::role::{self, Next};

/// `dtu primary`.
#[derive(Debug, Clone, clap::Args)]
pub struct PrimaryArgs {
    /// The primary's config file (see `dtu init`).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Override policy.trigger: received | buffered | sent | remote-received | remote-stored.
    #[arg(long)]
    pub trigger: Option<String>,
    /// Override policy.delay, e.g. 5ms.
    #[arg(long)]
    pub delay: Option<String>,
    /// Override policy.spoofing: on or off.
    #[arg(long, value_parser = parse_on_off)]
    pub spoofing: Option<bool>,
    /// Override policy.dirty_threshold (0-100).
    #[arg(long)]
    pub dirty_threshold: Option<f64>,
    /// Keep a local copy of the volume in this file and serve reads from it.
    #[arg(long)]
    pub local: Option<PathBuf>,
    /// Serve NBD on this TCP address instead of the config's.
    #[arg(long)]
    pub nbd_tcp: Option<String>,
    /// Serve NBD on this unix socket instead of the config's.
    #[arg(long)]
    pub nbd_unix: Option<PathBuf>,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9101.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Start even though the nvbuf lost records that had been made durable
    /// (writes the host was told are safe): keep the intact prefix, and
    /// mark the replica as possibly lacking the lost writes. Without it,
    /// such an nvbuf refuses to start and says what it lost.
    #[arg(long)]
    pub accept_nvbuf_loss: bool,
    /// The local copy's disk was lost and this one is new (empty or
    /// missing): answer the host at once, reading what is not local yet
    /// from the remote, while a background rebuild copies the rest. Refused
    /// when the changed-block map marks data the remote lacks.
    #[arg(long)]
    pub restore_from_remote: bool,
}

/// `dtu remote`.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// The remote's config file (see `dtu init`).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Export the replica read-only over NBD on this TCP address.
    #[arg(long)]
    pub export_ro: Option<String>,
    /// Export the replica read-only over NBD on this unix socket.
    #[arg(long)]
    pub export_ro_unix: Option<PathBuf>,
    /// The read-only export shows the replica as it was at this checkpoint
    /// (its label), or at the nearest one at or before this time
    /// (`@UNIXSECS` or `YYYY-MM-DD HH:MM[:SS]` UTC), while replication
    /// goes on. Needs --export-ro or --export-ro-unix (or nbd.* in the config).
    #[arg(long, value_name = "TIME|LABEL")]
    pub export_as_of: Option<String>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Use the replica even though it is not the one its state file
    /// describes (another file, another size, or changed while the remote
    /// was stopped): it is marked inconsistent until a resync or verify
    /// proves it. Without it, such a replica refuses to start.
    #[arg(long)]
    pub adopt_replica: bool,
    /// This replica's own changes may be discarded: a split brain found at
    /// the next connect is resolved by resyncing the replica from the
    /// primary (what it loses is listed beside its state file).
    #[arg(long)]
    pub discard_my_data: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dtu-io")
        .enable_all()
        .build()?)
}

/// Waits for SIGINT or SIGTERM.
async fn until_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Removes a unix socket file left by an earlier run.
fn clear_socket(path: &Path) -> Result<()> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use by a running process", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    Ok(())
}

/// The TCP listener's TLS from the config, if any.
fn load_nbd_tls(cfg: &NbdTlsConfig) -> Result<Option<Arc<NbdTls>>> {
    let dir = match (cfg.mode, &cfg.dir) {
        (TlsMode::Off, _) => return Ok(None),
        (_, Some(dir)) => dir,
        (mode, None) => anyhow::bail!("nbd.tls = {mode} needs nbd.tls_dir"),
    };
    let tls = NbdTls::load(dir, cfg.mode == TlsMode::Require).context("nbd.tls")?;
    Ok(Some(Arc::new(tls)))
}

/// Starts the NBD listeners, the control socket and the metrics endpoint.
async fn serve_admin_and_nbd(
    target: Arc<dyn Controlled>,
    control_path: PathBuf,
    metrics: Option<String>,
    export: Option<(String, Arc<dyn Export>)>,
    tcp: Option<String>,
    unix: Option<PathBuf>,
    tls: &NbdTlsConfig,
) -> Result<(
    Vec<tokio::task::JoinHandle<()>>,
    tokio::sync::watch::Sender<bool>,
)> {
    let mut tasks = Vec::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let path = control_path.clone();
        let t = target.clone();
        // Bind first so a clash is reported at start, not later.
        clear_socket(&path)?;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = control::serve(path.clone(), t).await {
                tracing::error!("control socket {}: {e}", path.display());
            }
        }));
    }
    if let Some(addr) = metrics {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("metrics address {addr}"))?;
        eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
        let t = target.clone();
        tasks.push(tokio::spawn(async move {
            let _ = control::serve_metrics(listener, t).await;
        }));
    }
    if let Some((name, export)) = export {
        let mut server = NbdServer::new(&name, export);
        if tcp.is_some() {
            if let Some(t) = load_nbd_tls(tls)? {
                server = server.with_tls(t);
            }
        }
        let server = Arc::new(server);
        if let Some(addr) = tcp {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("NBD address {addr}"))?;
            let local = listener.local_addr()?;
            let scheme = if tls.mode == TlsMode::Require {
                "nbds"
            } else {
                "nbd"
            };
            eprintln!(
                "NBD export {name:?} on {scheme}://{local}/{name} (TLS {})",
                tls.mode
            );
            if crate::nbd::tls::exposed(&local) && tls.mode != TlsMode::Require {
                // The volume in plaintext, to anyone who can reach the port.
                tracing::warn!(
                    "NBD listener {local} is reachable beyond this machine and accepts \
                     plaintext clients (nbd.tls = {}): anyone who can connect can read and \
                     write the volume. Set nbd.tls = \"require\" or bind to 127.0.0.1.",
                    tls.mode
                );
            }
            let s = server.clone();
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = s.serve_tcp(listener, stop).await {
                    tracing::error!("NBD over TCP: {e}");
                }
            }));
        }
        if let Some(path) = unix {
            clear_socket(&path)?;
            let listener = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("NBD socket {}", path.display()))?;
            eprintln!(
                "NBD export {name:?} on nbd+unix:///{name}?socket={}",
                path.display()
            );
            let s = server.clone();
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = s.serve_unix(listener, stop).await {
                    tracing::error!("NBD over unix socket: {e}");
                }
            }));
        }
    }
    Ok((tasks, stop_tx))
}

pub fn primary(a: PrimaryArgs) -> Result<()> {
    let next = run_primary(&a.config, Some(&a))?;
    drive(next)
}

pub fn remote(a: RemoteArgs) -> Result<()> {
    let next = run_remote(&a.config, Some(&a))?;
    drive(next)
}

/// Runs this site's roles one after the other as `dtu promote` and `dtu
/// demote` change them, until a signal stops the process.
fn drive(mut next: Next) -> Result<()> {
    loop {
        next = match next {
            Next::Stop => return Ok(()),
            Next::Primary(config) => {
                eprintln!("this site now runs as a primary ({})", config.display());
                run_primary(&config, None)?
            }
            Next::Remote { config, demote } => {
                if let Some(discard) = demote {
                    let pcfg = RemoteConfig::load(&config)?
                        .roles
                        .other
                        .ok_or_else(|| anyhow!("{} sets no roles.primary", config.display()))?;
                    role::demote_files(&pcfg, &config, discard)?;
                }
                eprintln!("this site now runs as a remote ({})", config.display());
                run_remote(&config, None)?
            }
        };
    }
}

/// Waits for SIGINT or SIGTERM (then stops) or a role change.
async fn until_signal_or(next: &mut tokio::sync::mpsc::UnboundedReceiver<Next>) -> Next {
    tokio::select! {
        _ = until_signal() => Next::Stop,
        n = next.recv() => n.unwrap_or(Next::Stop),
    }
}

fn run_primary(path: &Path, a: Option<&PrimaryArgs>) -> Result<Next> {
    let mut cfg = PrimaryConfig::load(path)?;
    let mut metrics = cfg.metrics.map(|m| m.to_string());
    let mut accept_nvbuf_loss = false;
    let mut restore_from_remote = false;
    if let Some(a) = a {
        cfg.policy = control::changed_policy(
            cfg.policy,
            a.trigger.as_deref(),
            a.delay.as_deref(),
            a.spoofing,
            a.dirty_threshold,
        )
        .map_err(|e| anyhow::anyhow!("{}: {}", e.flag(), e.detail()))?;
        if let Some(l) = &a.local {
            cfg.local = Some(l.clone());
        }
        if let Some(t) = &a.nbd_tcp {
            cfg.nbd_tcp = Some(t.parse().with_context(|| format!("--nbd-tcp {t}"))?);
        }
        if let Some(u) = &a.nbd_unix {
            cfg.nbd_unix = Some(u.clone());
        }
        if a.metrics.is_some() {
            metrics = a.metrics.clone();
        }
        accept_nvbuf_loss = a.accept_nvbuf_loss;
        restore_from_remote = a.restore_from_remote;
    }
    let rt = runtime()?;
    let mut opts = PrimaryOptions::from_config(&cfg)?;
    opts.accept_nvbuf_loss = accept_nvbuf_loss;
    opts.restore_from_remote = restore_from_remote;
    // Started by a role change: a promotion, whose peer is the lost site.
    opts.peer_lost = a.is_none();
    let primary = Arc::new(Primary::start_on(opts, rt.handle().clone())?);
    let export: Arc<dyn Export> = Arc::new(PrimaryExport::new(primary.clone()));
    let (next_tx, mut next_rx) = tokio::sync::mpsc::unbounded_channel();
    let control = Arc::new(role::PrimaryControl {
        primary: primary.clone(),
        cfg: cfg.clone(),
        path: path.to_path_buf(),
        next: next_tx,
    });
    let asked = control.clone();
    let result = rt.block_on(async {
        // The remote's `dtu switchover` asks this primary to hand over.
        let handover = tokio::spawn(async move {
            asked.primary.handover_requested().await;
            let c = asked.clone();
            match tokio::task::spawn_blocking(move || c.hand_over_on_request()).await {
                Ok(Ok(line)) => tracing::warn!("switchover asked by the remote: {line}"),
                Ok(Err(e)) => tracing::error!(
                    "the remote asked for a switchover, refused: {e:#}; this site keeps its role"
                ),
                Err(e) => tracing::error!("the switchover task failed: {e}"),
            }
        });
        let (mut tasks, stop) = serve_admin_and_nbd(
            control,
            cfg.control.clone(),
            metrics,
            Some((cfg.export.clone(), export)),
            cfg.nbd_tcp.map(|a| a.to_string()),
            cfg.nbd_unix.clone(),
            &cfg.nbd_tls,
        )
        .await?;
        if let Some(every) = cfg.checkpoint_every {
            tasks.push(tokio::spawn(
                primary.clone().checkpoint_every(every, stop.subscribe()),
            ));
        }
        eprintln!("primary running; control socket {}", cfg.control.display());
        let next = until_signal_or(&mut next_rx).await;
        handover.abort();
        eprintln!("stopping the primary");
        let _ = stop.send(true);
        for t in &tasks {
            t.abort();
        }
        Ok::<_, anyhow::Error>(next)
    });
    let _ = std::fs::remove_file(&cfg.control);
    if let Some(u) = &cfg.nbd_unix {
        let _ = std::fs::remove_file(u);
    }
    // The NBD connections held references; give them a moment to drop.
    let primary = wait_unique(primary);
    if let Some(p) = primary {
        p.shutdown();
    } else if matches!(result, Ok(Next::Remote { .. })) {
        // Its files are about to become the remote's: a primary still
        // running could write them.
        bail!("the primary could not be stopped cleanly (connections still hold it); the demotion stops here: restart this site with `dtu demote`");
    }
    drop(rt);
    result
}

fn run_remote(path: &Path, a: Option<&RemoteArgs>) -> Result<Next> {
    let cfg = RemoteConfig::load(path)?;
    let rt = runtime()?;
    let mut opts = RemoteOptions::from_config(&cfg)?;
    opts.adopt_replica = a.is_some_and(|a| a.adopt_replica);
    opts.discard_my_data = a.is_some_and(|a| a.discard_my_data);
    let remote = match Remote::start_on(opts, rt.handle().clone()) {
        Ok(r) => Arc::new(r),
        Err(RemoteError::Promoted(gens)) if cfg.roles.other.is_some() => {
            // A promotion that stopped before the primary role started (or
            // a site restarted since): it goes on as the primary.
            let ppath = cfg.roles.other.clone().expect("checked");
            let pcfg = PrimaryConfig::load(&ppath)?;
            crate::primary::role::check_pair(&pcfg, &cfg)?;
            crate::primary::role::prepare_promoted(
                &PrimaryOptions::from_config(&pcfg)?,
                gens,
                gens.history[0],
            )?;
            tracing::warn!(
                "the replica was promoted (generation {gens}): this site runs its primary role"
            );
            return Ok(Next::Primary(ppath));
        }
        Err(e) => return Err(e.into()),
    };
    let metrics = a
        .and_then(|a| a.metrics.clone())
        .or(cfg.metrics.map(|m| m.to_string()));
    let tcp = a
        .and_then(|a| a.export_ro.clone())
        .or(cfg.nbd_tcp.map(|x| x.to_string()));
    let unix = a
        .and_then(|a| a.export_ro_unix.clone())
        .or(cfg.nbd_unix.clone());
    let as_of = a.and_then(|a| a.export_as_of.clone());
    if as_of.is_some() && tcp.is_none() && unix.is_none() {
        anyhow::bail!("--export-as-of needs --export-ro or --export-ro-unix (or nbd.tcp / nbd.unix in the config)");
    }
    let export: Option<(String, Arc<dyn Export>)> = if let Some(v) = &as_of {
        remote
            .checkpoints()
            .map_err(|e| anyhow!("--export-as-of: {e}"))?;
        let at = remote.parse_as_of(v);
        let ex = remote
            .as_of_export(&at)
            .map_err(|e| anyhow!("--export-as-of {v}: {e}"))?;
        eprintln!(
            "the read-only export shows the replica as of checkpoint {}",
            ex.checkpoint()
        );
        Some((cfg.export.clone(), Arc::new(ex)))
    } else if tcp.is_some() || unix.is_some() {
        let fe = FileExport::open(&cfg.replica, cfg.volume.size, true)
            .with_context(|| format!("read-only export of {}", cfg.replica.display()))?;
        Some((cfg.export.clone(), Arc::new(fe)))
    } else {
        None
    };
    let (next_tx, mut next_rx) = tokio::sync::mpsc::unbounded_channel();
    let control = Arc::new(role::RemoteControl {
        remote: remote.clone(),
        cfg: cfg.clone(),
        path: path.to_path_buf(),
        next: next_tx,
    });
    let handing = control.clone();
    let result = rt.block_on(async {
        // A primary's `dtu switchover` ends with its goodbye asking this
        // side to promote.
        let handover = tokio::spawn(async move {
            handing.remote.handover_requested().await;
            let c = handing.clone();
            match tokio::task::spawn_blocking(move || c.promote_on_handover()).await {
                Ok(Ok(line)) => tracing::warn!("planned switchover: {line}"),
                Ok(Err(e)) => tracing::error!(
                    "the primary handed its role over but the promotion failed: {e:#}. Both \
                     sites are remotes now and nothing is lost: fix the cause and run `dtu \
                     promote` here"
                ),
                Err(e) => tracing::error!("the promotion task failed: {e}"),
            }
        });
        let (tasks, stop) = serve_admin_and_nbd(
            control,
            cfg.control.clone(),
            metrics,
            export,
            tcp,
            unix.clone(),
            &cfg.nbd_tls,
        )
        .await?;
        eprintln!(
            "remote running on {}; control socket {}",
            remote.local_addr()?,
            cfg.control.display()
        );
        let next = until_signal_or(&mut next_rx).await;
        handover.abort();
        eprintln!("stopping the remote");
        let _ = stop.send(true);
        for t in &tasks {
            t.abort();
        }
        Ok::<_, anyhow::Error>(next)
    });
    let _ = std::fs::remove_file(&cfg.control);
    if let Some(u) = &unix {
        let _ = std::fs::remove_file(u);
    }
    if let Some(r) = wait_unique(remote) {
        r.shutdown();
    } else if matches!(result, Ok(Next::Primary(_))) {
        bail!("the remote could not be stopped cleanly (connections still hold it); restart this site with `dtu remote`: it goes on as the promoted primary");
    }
    drop(rt);
    result
}

/// Takes sole ownership once the serving tasks have dropped their clones.
fn wait_unique<T>(mut arc: Arc<T>) -> Option<T> {
    for _ in 0..50 {
        match Arc::try_unwrap(arc) {
            Ok(t) => return Some(t),
            Err(a) => {
                arc = a;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    tracing::warn!("shutting down with connections still open");
    None
}
