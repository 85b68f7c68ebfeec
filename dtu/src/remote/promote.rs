//! Promotion, the remote's half: the checks that keep a promotion from
//! making a second writer or serving a volume the host never had, then the
//! records that make the replica a primary's volume.
//!
//! A promotion is refused while a primary is connected (it is healthy, and
//! two primaries would write the same volume) and while the replica is
//! inconsistent (mid-sync, mid-replay, lost writes): `force` overrides both
//! and the reasons are logged. Then applying stops for good (anything
//! queued followed the old primary), the replica is synced, the primary's
//! session ends, and the state file records, durably, a new generation and
//! that the replica is promoted; from then on every primary is refused.
//! The caller starts the primary role on the replica from those
//! generations ([`crate::primary::role::prepare_promoted`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use dtu_proto::generation::{Gen, Generations};
use dtu_proto::Seq;

use super::rollback::Hold;
use super::Remote;
use crate::replica::Inconsistency;

/// A connected primary heard from within this is healthy: it sends a
/// heartbeat every second.
pub const SILENT: Duration = Duration::from_secs(3);

/// Why the remote will not be promoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PromoteError {
    #[error(
        "the primary at {peer} is connected and mirroring (heard from within the last 3 s): \
         promoting now would make two writers of one volume. Demote it (a planned switchover), \
         stop or fence it first, or promote with --force"
    )]
    PrimaryConnected { peer: String },
    #[error(
        "the replica is not a state the host's volume passed through ({}): promoting it \
         would serve damaged data. Let the sync or replay finish, roll back to a checkpoint \
         taken while it was consistent (dtu rollback), or promote with --force",
        .0.join("; ")
    )]
    Inconsistent(Vec<String>),
    #[error("a rollback trial is under way: commit or abandon it first")]
    TrialUnderWay,
    #[error("the remote stopped applying and cannot be promoted: {0}")]
    Stopped(String),
    #[error("recording the promotion in the replica's state file: {0}")]
    State(String),
    #[error("{0}")]
    Fenced(String),
    #[error(
        "no primary is connected: a switchover hands over a running pair. With the primary \
         stopped, demote it on its site and run `dtu promote` here"
    )]
    NoPrimary,
}

/// What a promotion recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The replica's generations, the new one current.
    pub gens: Generations,
    /// The generation it left: the new primary's map is relative to it.
    pub base: Gen,
    /// The last seq of the old primary the replica holds.
    pub seq: Seq,
    /// What `force` overrode, in words (empty without).
    pub overridden: Vec<String>,
}

impl Remote {
    /// Promotes the replica (see the module header). `fence` runs once
    /// the checks pass and before anything changes (the site's fencing
    /// hook); its error aborts the promotion. Idempotent: a replica
    /// already promoted answers its promotion again.
    pub fn promote<E: std::fmt::Display>(
        &self,
        force: bool,
        fence: impl FnOnce() -> Result<(), E>,
    ) -> Result<Promotion, PromoteError> {
        if let Some(done) = self.already_promoted() {
            return Ok(done);
        }
        self.promotion_checks(&self.core.lock(), force)?;
        fence().map_err(|e| PromoteError::Fenced(e.to_string()))?;
        let overridden = {
            let mut st = self.core.lock();
            // Checked again: a primary may have connected while the hook ran.
            let overridden = self.promotion_checks(&st, force)?;
            st.hold = Hold::Promoted;
            // The primary's session ends: nothing it sends is applied again.
            st.session += 1;
            st.peer = None;
            st.lanes = 0;
            overridden
        };
        self.core.control_wake.notify_waiters();
        let mut applier = self.core.applier.lock().unwrap_or_else(|p| p.into_inner());
        let fail = |e: String| {
            tracing::error!("{e}");
            self.core.lock().failed = Some(e.clone());
            PromoteError::State(e)
        };
        applier
            .sync()
            .map_err(|e| fail(format!("syncing the replica before promotion: {e}")))?;
        self.views.stop();
        let (gens, base, seq) = {
            let mut vs = self
                .core
                .volume_state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let (gens, base) = vs
                .promote(rand::random::<u64>() | 1)
                .map_err(|e| fail(e.to_string()))?;
            (gens, base, vs.synced())
        };
        drop(applier);
        for o in &overridden {
            tracing::warn!("promoted with --force although {o}");
        }
        tracing::warn!(
            "the replica is promoted at seq {seq}: generation {:016x} after {base:016x}; \
             every primary is refused from now on",
            gens.current
        );
        self.core.lock().decision = Some(format!(
            "promoted: generation {:016x} after {base:016x}",
            gens.current
        ));
        Ok(Promotion {
            gens,
            base,
            seq,
            overridden,
        })
    }

    fn already_promoted(&self) -> Option<Promotion> {
        if !matches!(self.core.lock().hold, Hold::Promoted) {
            return None;
        }
        let vs = self
            .core
            .volume_state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let gens = vs.gens();
        Some(Promotion {
            gens,
            base: gens.history[0],
            seq: vs.synced(),
            overridden: Vec::new(),
        })
    }

    /// The checks before a promotion; what `force` overrode, in words.
    fn promotion_checks(
        &self,
        st: &super::RState,
        force: bool,
    ) -> Result<Vec<String>, PromoteError> {
        match &st.hold {
            Hold::Trial(_) => return Err(PromoteError::TrialUnderWay),
            Hold::Promoted | Hold::Applying | Hold::RolledBack(_) => {}
        }
        if let Some(why) = &st.failed {
            return Err(PromoteError::Stopped(why.clone()));
        }
        let peer = st.peer.as_ref().map(|peer| {
            let silent = st
                .receiver
                .peer_silent_for(std::time::Instant::now())
                .unwrap_or(Duration::ZERO);
            (peer.as_str(), silent)
        });
        let inconsistencies = self
            .core
            .volume_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .inconsistencies();
        promotion_refused(peer, &inconsistencies, force)
    }

    /// Completes when a primary hands its role over (`dtu switchover` on
    /// its site): it stopped once this replica stored everything, and its
    /// session has ended. The caller promotes.
    pub async fn handover_requested(&self) {
        self.core.handover.notified().await;
    }

    /// Asks the connected primary to hand its role over (`dtu switchover`
    /// at this site): it drains, demotes itself and its goodbye makes this
    /// remote promote. Refused without a connected primary.
    pub fn request_handover(&self) -> Result<String, PromoteError> {
        let peer = self.core.lock().peer.clone();
        let Some(peer) = peer else {
            return Err(PromoteError::NoPrimary);
        };
        self.core.ask_handover.store(true, Ordering::SeqCst);
        self.core.control_wake.notify_waiters();
        Ok(format!(
            "asked the primary at {peer} to hand its role over: it drains, then this site \
             promotes itself"
        ))
    }

    /// Whether the replica was promoted.
    pub fn promoted(&self) -> bool {
        matches!(self.core.lock().hold, Hold::Promoted)
    }
}

/// The checks every promotion makes, the remote's and the simulator's:
/// `peer` is the connected primary and how long it has been silent,
/// `inconsistencies` what the replica's state says of it. Returns what
/// `force` overrode, in words.
pub fn promotion_refused(
    peer: Option<(&str, Duration)>,
    inconsistencies: &[Inconsistency],
    force: bool,
) -> Result<Vec<String>, PromoteError> {
    let mut overridden = Vec::new();
    if let Some((peer, silent)) = peer {
        if silent >= SILENT {
            // Its connection has not timed out yet, but it stopped
            // talking: the site is gone, as far as this side can tell.
            tracing::warn!(
                "the primary at {peer} has been silent for {:.1} s: taken as lost",
                silent.as_secs_f64()
            );
        } else if !force {
            return Err(PromoteError::PrimaryConnected {
                peer: peer.to_string(),
            });
        } else {
            overridden.push(format!("the primary at {peer} was connected"));
        }
    }
    let why: Vec<String> = inconsistencies
        .iter()
        .map(Inconsistency::to_string)
        .collect();
    if !why.is_empty() {
        if !force {
            return Err(PromoteError::Inconsistent(why));
        }
        overridden.extend(why);
    }
    Ok(overridden)
}
