//! The control socket: how `dtu status`, `dtu policy set` and `dtu dirty`
//! talk to a running DTU, and the Prometheus endpoint beside it (hyper's
//! HTTP/1.1 server on the DTU's runtime, the exposition from [`crate::status`]).
//!
//! The control socket is a unix socket carrying one JSON request per line
//! and one JSON response per line, so it can also be driven with `socat`.
//! Only the DTU's owner can reach it (the socket is created mode 0600).
//! Requests are parsed and checked here ([`Request::parse`],
//! [`changed_policy`]) before a DTU acts on them: a malformed line or an
//! out-of-bounds value gets an error answer naming the field, never a
//! panic.

use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};

use dtu_proto::frame::MAX_LABEL;
use dtu_proto::AckPolicy;

use crate::config::{policy_delay, PolicyError};
use crate::status::Status;

/// Most bytes read from one control connection; a request is a short JSON
/// line, so a client sending more is cut off rather than buffered.
pub const MAX_CONNECTION_BYTES: u64 = 64 << 10;

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Changes the acknowledgement policy; absent fields stay as they are.
    SetPolicy {
        trigger: Option<String>,
        delay: Option<String>,
        spoofing: Option<bool>,
        dirty_threshold: Option<f64>,
    },
    /// The host's dirty cache share, 0..=100.
    Dirty {
        pct: f64,
    },
    Checkpoint {
        label: String,
        /// `manual` (absent), `timer`, `shutdown`, `boot`, `install`, `change`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
    },
    /// The checkpoints the remote holds (its catalog), oldest first.
    Checkpoints,
    /// Serves the replica as of a checkpoint (a label, or a time: the
    /// nearest checkpoint at or before it) as a read-only NBD export on a
    /// TCP address or a unix socket, while replication goes on.
    Export {
        as_of: String,
        #[serde(default)]
        tcp: Option<String>,
        #[serde(default)]
        unix: Option<PathBuf>,
    },
    /// Stops the as-of view.
    Unexport,
    /// Rolls the replica back to a checkpoint: a trial first (applying
    /// pauses, the view is served), then commit or abandon.
    Rollback {
        action: RollbackAction,
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        tcp: Option<String>,
        #[serde(default)]
        unix: Option<PathBuf>,
    },
    /// Compares the local copy and the replica by block digests over
    /// `start..end` (the whole volume without them) while the host keeps
    /// writing; with `repair`, differing extents are resynced.
    Verify {
        #[serde(default)]
        start: Option<u64>,
        #[serde(default)]
        end: Option<u64>,
        #[serde(default)]
        repair: bool,
    },
    /// At a running remote: asks its connected primary to hand its role
    /// over (`dtu switchover` at the remote's site).
    Switchover,
    /// Promotes a running remote: its replica becomes this site's
    /// primary volume (`dtu promote`).
    Promote {
        #[serde(default)]
        force: bool,
    },
    /// Demotes a running primary: its local copy becomes this site's
    /// replica once the remote has stored everything (`dtu demote`).
    Demote {
        #[serde(default)]
        force: bool,
        #[serde(default)]
        discard_my_data: bool,
        /// How long to wait for the remote to store the last records.
        #[serde(default)]
        wait_s: Option<u64>,
        /// A planned switchover (`dtu switchover`): once drained, the
        /// primary's goodbye asks the remote to promote. Never forced.
        #[serde(default)]
        handover: bool,
    },
}

/// Longest a demotion waits for the remote to store the last records.
pub const MAX_DEMOTE_WAIT: Duration = Duration::from_secs(3600);

/// The step of a rollback a [`Request::Rollback`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackAction {
    Trial,
    Commit,
    Abandon,
}

/// Why a control request is refused before it reaches the DTU.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("not a request: {0}")]
    Malformed(String),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("dirty % must be between 0 and 100, not {0}")]
    Dirty(f64),
    #[error("a demotion waits at most 3600 s for the remote, not {0}")]
    DemoteWait(u64),
    #[error("checkpoint label is {0} bytes long; at most {MAX_LABEL} are kept")]
    LabelTooLong(usize),
    #[error("checkpoint kind {0}")]
    Kind(String),
    #[error("range {0}..{1} is empty")]
    Range(u64, u64),
    #[error("{0}")]
    Rollback(&'static str),
    #[error("checkpoint name or time of {0} bytes is too long")]
    AsOfTooLong(usize),
}

impl Request {
    /// Parses one request line and checks what can be checked without the
    /// DTU: field types, bounds of numbers, lengths of text.
    pub fn parse(line: &str) -> Result<Request, RequestError> {
        let req: Request =
            serde_json::from_str(line).map_err(|e| RequestError::Malformed(e.to_string()))?;
        req.check()?;
        Ok(req)
    }

    /// The checks of [`Request::parse`] on a request built in code.
    pub fn check(&self) -> Result<(), RequestError> {
        match self {
            Request::Status | Request::Checkpoints | Request::Unexport | Request::Switchover => {
                Ok(())
            }
            Request::Export { as_of, tcp, unix } => {
                if as_of.len() > MAX_LABEL + 64 {
                    return Err(RequestError::AsOfTooLong(as_of.len()));
                }
                match (tcp, unix) {
                    (Some(_), None) | (None, Some(_)) => Ok(()),
                    _ => Err(RequestError::Rollback(
                        "an as-of view needs exactly one of a TCP address and a unix socket",
                    )),
                }
            }
            Request::Rollback {
                action,
                to,
                tcp,
                unix,
            } => {
                if to.as_ref().is_some_and(|t| t.len() > MAX_LABEL + 64) {
                    return Err(RequestError::AsOfTooLong(
                        to.as_ref().map_or(0, |t| t.len()),
                    ));
                }
                match action {
                    RollbackAction::Trial if to.is_none() => Err(RequestError::Rollback(
                        "a rollback trial needs the checkpoint to try (--to)",
                    )),
                    RollbackAction::Trial if tcp.is_some() && unix.is_some() => {
                        Err(RequestError::Rollback(
                            "the trial's view listens on a TCP address or a unix socket, not both",
                        ))
                    }
                    RollbackAction::Commit | RollbackAction::Abandon
                        if tcp.is_some() || unix.is_some() =>
                    {
                        Err(RequestError::Rollback(
                            "only a rollback trial serves a view (--tcp, --unix)",
                        ))
                    }
                    RollbackAction::Abandon if to.is_some() => Err(RequestError::Rollback(
                        "abandon ends the trial under way; it takes no checkpoint",
                    )),
                    _ => Ok(()),
                }
            }
            Request::SetPolicy {
                trigger,
                delay,
                spoofing,
                dirty_threshold,
            } => {
                changed_policy(
                    AckPolicy::default(),
                    trigger.as_deref(),
                    delay.as_deref(),
                    *spoofing,
                    *dirty_threshold,
                )?;
                Ok(())
            }
            Request::Dirty { pct } => {
                if (0.0..=100.0).contains(pct) {
                    Ok(())
                } else {
                    Err(RequestError::Dirty(*pct))
                }
            }
            Request::Checkpoint { label, kind } => {
                if let Some(k) = kind {
                    k.parse::<dtu_proto::frame::CheckpointKind>()
                        .map_err(RequestError::Kind)?;
                }
                if label.len() > MAX_LABEL {
                    Err(RequestError::LabelTooLong(label.len()))
                } else {
                    Ok(())
                }
            }
            Request::Verify { start, end, .. } => match (start, end) {
                (Some(s), Some(e)) if s >= e => Err(RequestError::Range(*s, *e)),
                _ => Ok(()),
            },
            Request::Promote { .. } => Ok(()),
            Request::Demote { wait_s, .. } => match wait_s {
                Some(w) if *w > MAX_DEMOTE_WAIT.as_secs() => Err(RequestError::DemoteWait(*w)),
                _ => Ok(()),
            },
        }
    }
}

/// `current` with the fields of a [`Request::SetPolicy`] applied; absent
/// fields stay as they are. The result is bounded like a config file's
/// policy (delay at most [`dtu_proto::policy::MAX_DELAY`], threshold a
/// percentage).
pub fn changed_policy(
    current: AckPolicy,
    trigger: Option<&str>,
    delay: Option<&str>,
    spoofing: Option<bool>,
    dirty_threshold: Option<f64>,
) -> Result<AckPolicy, PolicyError> {
    let mut p = current;
    if let Some(t) = trigger {
        p.trigger = t.parse()?;
    }
    if let Some(d) = delay {
        p.delay = policy_delay(d).map_err(PolicyError::Delay)?;
    }
    if let Some(s) = spoofing {
        p.spoofing = s;
    }
    if let Some(t) = dirty_threshold {
        p.dirty_threshold = t;
    }
    p.validate()?;
    Ok(p)
}

/// What the DTU answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status(Box<Status>),
    Checkpoints {
        checkpoints: Vec<crate::remote::CheckpointInfo>,
    },
    Ok {
        message: String,
    },
    Error {
        message: String,
    },
}

/// A DTU that can be controlled.
pub trait Controlled: Send + Sync + 'static {
    fn handle(&self, req: Request) -> Response;
    fn status(&self) -> Status;
}

/// Why a control request failed on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the DTU's control socket {path}: {source} (is the DTU running?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path} sent an answer this build does not understand: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// Sends one request and waits for the answer.
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    request_within(path, req, Duration::from_secs(10))
}

/// [`request`], waiting up to `limit` for the answer (a role change runs
/// the fence hook and waits for the remote).
pub fn request_within(
    path: &Path,
    req: &Request,
    limit: Duration,
) -> Result<Response, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(limit)).map_err(io)?;
    let mut line = serde_json::to_string(req).expect("requests serialize");
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Serves the control socket at `path` until the task is dropped. A stale
/// socket file from an earlier run is replaced; a live one is refused.
pub async fn serve(path: PathBuf, target: Arc<dyn Controlled>) -> std::io::Result<()> {
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "control socket {} is in use by a running DTU",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let target = target.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = TokioBufReader::new(r.take(MAX_CONNECTION_BYTES)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match Request::parse(&line) {
                    Ok(req) => {
                        let t = target.clone();
                        tokio::task::spawn_blocking(move || t.handle(req))
                            .await
                            .unwrap_or_else(|e| Response::Error {
                                message: format!("request failed: {e}"),
                            })
                    }
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                };
                let mut out = serde_json::to_string(&resp).expect("responses serialize");
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// How long a scraper may take to send its request head.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one metrics connection may stay open (keep-alive included).
const METRICS_CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// Serves `GET /metrics` (and `/`) in the OpenMetrics text format that
/// Prometheus scrapes, over HTTP/1.1 with hyper on the DTU's runtime.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    target: Arc<dyn Controlled>,
) -> std::io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: keep serving.
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let target = target.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| metrics_answer(target.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A connection past its time limit is simply dropped.
            if let Ok(Err(e)) = tokio::time::timeout(METRICS_CONNECTION_LIMIT, conn).await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

type MetricsBody = http_body_util::Full<bytes::Bytes>;

async fn metrics_answer(
    target: Arc<dyn Controlled>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<MetricsBody>, std::convert::Infallible> {
    use hyper::{header, Method, StatusCode};
    let plain = |code: StatusCode, text: &str| {
        let mut r = hyper::Response::new(MetricsBody::from(text.to_string()));
        *r.status_mut() = code;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    let path = req.uri().path();
    if path != "/metrics" && path != "/" {
        return Ok(plain(StatusCode::NOT_FOUND, "try /metrics\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    // Building the status takes locks the pipeline holds: not on the runtime.
    let body = match tokio::task::spawn_blocking(move || {
        crate::status::encode_openmetrics(&target.status())
    })
    .await
    {
        Ok(body) => body,
        Err(e) => {
            return Ok(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("status failed: {e}\n"),
            ))
        }
    };
    let mut r = hyper::Response::new(MetricsBody::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(crate::status::OPENMETRICS_CONTENT_TYPE),
    );
    Ok(r)
}
