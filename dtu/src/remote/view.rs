//! The as-of view a running remote serves on request (`dtu export --as-of`,
//! `dtu rollback --trial`): one read-only NBD export of the replica as it
//! was at a checkpoint, on a TCP address or a unix socket, started and
//! stopped over the control socket while replication goes on.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::nbd::{Export, NbdServer};
use crate::undo::Entry;

/// Where a view listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `HOST:PORT` (port 0 picks a free one).
    Tcp(String),
    /// A unix socket path (a stale socket file is replaced).
    Unix(PathBuf),
}

impl Listen {
    /// The address of a control request's `tcp` / `unix` fields (TCP first;
    /// the request's check refuses both at once); `None` when neither.
    pub fn from_request(tcp: Option<String>, unix: Option<PathBuf>) -> Option<Listen> {
        match (tcp, unix) {
            (Some(t), _) => Some(Listen::Tcp(t)),
            (None, Some(u)) => Some(Listen::Unix(u)),
            (None, None) => None,
        }
    }
}

/// The NBD export name a view answers to (the default, empty, name too).
pub const VIEW_EXPORT: &str = "asof";

struct Served {
    entry: Entry,
    url: String,
    socket: Option<PathBuf>,
    stop: watch::Sender<bool>,
}

/// The view being served, if any.
#[derive(Default)]
pub struct Views {
    current: Mutex<Option<Served>>,
}

/// Why a view cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("an as-of view of checkpoint {0} is served already at {1}; stop it first (`dtu export --stop`)")]
    Busy(String, String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
}

impl Views {
    /// Serves `export` (a view of `entry`) at `listen` on `handle`'s
    /// runtime; answers its NBD URL.
    pub fn serve(
        &self,
        handle: &tokio::runtime::Handle,
        export: Arc<dyn Export>,
        entry: Entry,
        listen: &Listen,
    ) -> Result<String, ViewError> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cur.as_ref() {
            return Err(ViewError::Busy(s.entry.to_string(), s.url.clone()));
        }
        let server = Arc::new(
            NbdServer::new(VIEW_EXPORT, export)
                .with_description(&format!("dtu replica as of checkpoint {entry}")),
        );
        let (stop, stop_rx) = watch::channel(false);
        let _g = handle.enter();
        let (url, socket) = match listen {
            Listen::Tcp(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|e| ViewError::Listen(addr.clone(), e))?;
                let local = l
                    .local_addr()
                    .map_err(|e| ViewError::Listen(addr.clone(), e))?;
                if crate::nbd::tls::exposed(&local) {
                    tracing::warn!(
                        "the as-of view listens on {local}, reachable beyond this machine, \
                         without TLS: anyone who can connect can read the volume"
                    );
                }
                handle.spawn(async move {
                    if let Err(e) = server.serve_tcp(l, stop_rx).await {
                        tracing::error!("as-of view on {local}: {e}");
                    }
                });
                (format!("nbd://{local}/{VIEW_EXPORT}"), None)
            }
            Listen::Unix(path) => {
                let shown = path.display().to_string();
                if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
                    let _ = std::fs::remove_file(path);
                }
                let l = std::os::unix::net::UnixListener::bind(path)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(tokio::net::UnixListener::from_std)
                    .map_err(|e| ViewError::Listen(shown.clone(), e))?;
                handle.spawn(async move {
                    if let Err(e) = server.serve_unix(l, stop_rx).await {
                        tracing::error!("as-of view on {shown}: {e}");
                    }
                });
                (
                    format!("nbd+unix:///{VIEW_EXPORT}?socket={}", path.display()),
                    Some(path.clone()),
                )
            }
        };
        tracing::info!("serving the replica as of checkpoint {entry} at {url}");
        *cur = Some(Served {
            entry,
            url: url.clone(),
            socket,
            stop,
        });
        Ok(url)
    }

    /// Stops the view; answers which checkpoint it showed and where.
    pub fn stop(&self) -> Option<(Entry, String)> {
        let s = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let _ = s.stop.send(true);
        if let Some(p) = &s.socket {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!(
            "the as-of view of checkpoint {} at {} stopped",
            s.entry,
            s.url
        );
        Some((s.entry, s.url))
    }

    /// The checkpoint shown and the URL, if a view is served.
    pub fn current(&self) -> Option<(Entry, String)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| (s.entry.clone(), s.url.clone()))
    }
}
