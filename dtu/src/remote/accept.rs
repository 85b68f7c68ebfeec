//! Accepting a primary: the checks, the decision and the records the remote
//! makes when a primary's Hello arrives, before a single write crosses.
//!
//! The receiver checks the peer (volume, size, key, epoch). The remote then
//! compares generations ([`dtu_proto::generation::decide`]) and decides what
//! the pair does: resume the stream, sync (from the primary's changed-block
//! map or every extent), adopt the primary's volume as it stands, or refuse
//! (a split brain, unrelated data, a remote that moved on) — a refusal is
//! never resolved silently. A sync or an adoption restarts the remote's
//! stream position at the primary's; a sync marks the replica inconsistent
//! until it completes. The state file records all of it durably (and the
//! new epoch, a loss the primary reports, the bound of a replay after a
//! machine crash) before the answer goes out. The real session and the
//! simulator call this same function.

use std::time::Instant;

use dtu_proto::frame::{hello_flags, DecisionCode, Hello};
use dtu_proto::generation::{decide, Decision, Gen, InitialSync, PrimaryView, Refusal, RemoteView};
use dtu_proto::handshake::HandshakeError;
use dtu_proto::{Receiver, Seq};

use crate::config::SplitBrainPolicy;
use crate::replica::VolumeState;

/// Why a primary is not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    #[error(transparent)]
    Refused(#[from] HandshakeError),
    /// The generations say the pair must not mirror: why, and the
    /// one-line decision with what the operator can do.
    #[error("{explained}")]
    Decision {
        refusal: dtu_proto::generation::Refusal,
        explained: String,
    },
    #[error("recording the primary in the replica's state file: {0}")]
    State(#[from] std::io::Error),
}

/// What the remote decided for this primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The answer to send.
    pub reply: Hello,
    pub decision: Decision,
    /// The decision and its reason, in one line (logged, and in the status).
    pub explained: String,
    /// The stream restarts after this seq (a sync or an adoption).
    pub rebase: Option<Seq>,
    /// Ranges this replica changed on its own (a demoted primary's
    /// divergence), sent after the answer for the primary's resync; `None`:
    /// nothing follows the answer.
    pub extents: Option<Vec<(u64, u64)>>,
}

/// Most ranges a divergence record may list to be sent as extents; with
/// more, every extent's digests are compared instead.
pub const MAX_DIVERGENT_RANGES: usize = 1 << 20;

/// What the primary's Hello says about its side of the decision.
pub fn primary_view(theirs: &Hello) -> PrimaryView {
    PrimaryView {
        gens: theirs.gens,
        map_base: theirs.map_base,
        has_local: theirs.flags & hello_flags::HAS_LOCAL != 0,
        initial: InitialSync::from_bits(
            (theirs.flags & hello_flags::INITIAL_MASK) >> hello_flags::INITIAL_SHIFT,
        )
        .unwrap_or(InitialSync::Full),
    }
}

/// The divergence record beside the state, if any, renamed as the record
/// of what a resync discards; a phrase for the decision line.
fn keep_divergence_record(state: &VolumeState) -> String {
    let record = crate::primary::role::divergence_record(state.path());
    if !record.exists() {
        return String::new();
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut to = state.path().as_os_str().to_owned();
    to.push(format!(".discarded-{secs}"));
    let to = std::path::PathBuf::from(to);
    match std::fs::rename(&record, &to) {
        Ok(()) => format!(" (the extents are listed in {})", to.display()),
        Err(e) => format!(" (its record {} could not be kept: {e})", record.display()),
    }
}

/// What each side of a split brain says of itself.
#[derive(Debug, Clone, Copy)]
struct Sides {
    /// Bytes each side changed on its own since the split (`None`: this
    /// replica's record of them cannot be read).
    primary_changed: u64,
    remote_changed: Option<u64>,
    /// When each side became primary (Unix seconds, 0: not known).
    primary_since: u64,
    remote_since: u64,
}

/// Who resolves a split brain in the primary's favour, if anyone: the
/// operator's word (`--discard-my-data`) or the remote's policy, given
/// what each side says of itself. `Err` says why the policy does not
/// resolve it.
fn split_brain_resolved_by(
    state: &VolumeState,
    policy: SplitBrainPolicy,
    s: &Sides,
) -> Result<String, String> {
    let swap = "to keep this remote's data instead, demote the primary's site with \
                --discard-my-data and promote this one: a resync flows from the primary";
    if state.discard_my_data() {
        return Ok("the operator (--discard-my-data)".into());
    }
    let primary_changed = s.primary_changed;
    let (ps, rs) = (s.primary_since, s.remote_since);
    let ages = format!(
        "the primary became primary at {ps}, this remote's old primary at {rs} (Unix seconds)"
    );
    match (policy, s.remote_changed) {
        (SplitBrainPolicy::Disconnect, _) => Err(String::new()),
        (SplitBrainPolicy::DiscardRemote, _) => Ok("roles.split_brain = discard-remote".into()),
        (SplitBrainPolicy::DiscardYoungerPrimary | SplitBrainPolicy::DiscardOlderPrimary, _)
            if ps == 0 || rs == 0 || ps == rs =>
        {
            Err(format!(
                "; {} needs to know which side became primary first, and {ages}",
                policy.name()
            ))
        }
        (SplitBrainPolicy::DiscardYoungerPrimary, _) if rs > ps => Ok(format!(
            "roles.split_brain = discard-younger-primary ({ages}: this remote's is younger)"
        )),
        (SplitBrainPolicy::DiscardYoungerPrimary, _) => Err(format!(
            "; discard-younger-primary keeps this remote: the primary is the younger ({ages}); \
             {swap}"
        )),
        (SplitBrainPolicy::DiscardOlderPrimary, _) if rs < ps => Ok(format!(
            "roles.split_brain = discard-older-primary ({ages}: this remote's is older)"
        )),
        (SplitBrainPolicy::DiscardOlderPrimary, _) => Err(format!(
            "; discard-older-primary keeps this remote: the primary is the older ({ages}); {swap}"
        )),
        (SplitBrainPolicy::DiscardLeastChanges, Some(r)) if r <= primary_changed => Ok(format!(
            "roles.split_brain = discard-least-changes (this remote changed {r} bytes, the \
             primary {primary_changed})"
        )),
        (SplitBrainPolicy::DiscardLeastChanges, Some(r)) => Err(format!(
            "; discard-least-changes keeps this remote: it changed more ({r} bytes) than the \
             primary ({primary_changed}); {swap}"
        )),
        (SplitBrainPolicy::DiscardZeroChanges, Some(0)) => {
            Ok("roles.split_brain = discard-zero-changes (this remote changed nothing)".into())
        }
        (SplitBrainPolicy::DiscardZeroChanges, Some(r)) if primary_changed == 0 => Err(format!(
            "; discard-zero-changes: the primary changed nothing and this remote {r} bytes; {swap}"
        )),
        (SplitBrainPolicy::DiscardZeroChanges, Some(r)) => Err(format!(
            "; discard-zero-changes: both sides changed data (primary {primary_changed} bytes, \
             this remote {r})"
        )),
        (_, None) => Err(format!(
            "; {} needs this replica's record of its own changes, which cannot be read",
            policy.name()
        )),
    }
}

/// What the divergence record beside the state says: the ranges, if it
/// can be read, holds at most [`MAX_DIVERGENT_RANGES`] and stays in the
/// volume, and when the demoted side became primary (0: not known).
fn divergent_ranges(state: &VolumeState, volume_size: u64) -> Option<(Vec<(u64, u64)>, u64)> {
    let record = crate::primary::role::divergence_record(state.path());
    let text = std::fs::read_to_string(record).ok()?;
    let since = text
        .lines()
        .find_map(|l| l.strip_prefix(crate::primary::role::PRIMARY_SINCE))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (o, l) = line.split_once(' ')?;
        let (o, l): (u64, u64) = (o.trim().parse().ok()?, l.trim().parse().ok()?);
        if l == 0 || o.checked_add(l)? > volume_size || out.len() >= MAX_DIVERGENT_RANGES {
            return None;
        }
        out.push((o, l));
    }
    Some((out, since))
}

/// Checks `theirs` against this remote's Hello template `ours`, decides,
/// records what must be recorded, and returns the answer to send. `fresh`
/// is a new random generation, used when the replica never had one;
/// `split_brain` is the remote's policy for a split brain.
pub fn accept_primary(
    receiver: &mut Receiver,
    state: &mut VolumeState,
    ours: &Hello,
    theirs: &Hello,
    fresh: Gen,
    split_brain: SplitBrainPolicy,
    now: Instant,
) -> Result<Accepted, AcceptError> {
    dtu_proto::handshake::check(ours, theirs)?;
    let pv = primary_view(theirs);
    let rv = RemoteView {
        gens: state.gens(),
        sync_target: state.sync_target(),
    };
    let mut decision = decide(&pv, &rv);
    let mut explained = decision.explain(&pv, &rv);
    let continuing = rv.syncing_to(pv.gens.current);
    let mut extents = None;
    let mut resolved = None;
    let record = divergent_ranges(state, ours.volume_size);
    let own_since = record.as_ref().map_or(0, |r| r.1);
    let own = record.map(|r| r.0);
    let own_bytes = own.as_ref().map(|r| r.iter().map(|x| x.1).sum::<u64>());
    if decision == Decision::Refuse(Refusal::SplitBrain) {
        let sides = Sides {
            primary_changed: theirs.changed_bytes,
            remote_changed: own_bytes,
            primary_since: theirs.primary_since,
            remote_since: own_since,
        };
        match split_brain_resolved_by(state, split_brain, &sides) {
            Ok(by) => resolved = Some(by),
            Err(why) => explained.push_str(&why),
        }
        if resolved.is_none() {
            explained.push_str(
                ". To keep the primary's data: demote the remote's site with \
                 --discard-my-data, or set roles.split_brain on the remote (discard-remote, \
                 discard-least-changes, discard-zero-changes)",
            );
        }
    }
    let in_flight = resolved.is_none()
        && state.diverged()
        && !continuing
        && matches!(
            decision,
            Decision::Resume | Decision::Resync { all: false, .. }
        );
    if resolved.is_some() || in_flight {
        // The replica holds changes the primary never had: they go back to
        // the primary's blocks. The primary's map, relative to a generation
        // the replica passed through, and the replica's own list cover
        // every difference; without both, every extent's digests are
        // compared.
        let map_covers =
            pv.map_base != 0 && (pv.map_base == rv.gens.current || rv.gens.passed(pv.map_base));
        let ranges = own.clone().filter(|_| map_covers);
        let kept = keep_divergence_record(state);
        let (what, how) = match ranges {
            Some(r) => {
                let bytes: u64 = r.iter().map(|x| x.1).sum();
                let how = format!(
                    "resync of the primary's changed-block map and the {} ranges ({} bytes) \
                     this replica changed",
                    r.len(),
                    bytes
                );
                extents = Some(r);
                (
                    Decision::Resync {
                        all: false,
                        checksum: false,
                    },
                    how,
                )
            }
            None => (
                Decision::Resync {
                    all: true,
                    checksum: true,
                },
                "checksum sync of every extent, sending only the blocks that differ".to_string(),
            ),
        };
        explained = match &resolved {
            Some(by) => format!(
                "split brain (primary {:016x}, remote {:016x} both changed since a generation \
                 they share) resolved by {by}: this remote's changes are discarded{kept}; {how}",
                pv.gens.current, rv.gens.current
            ),
            None => format!(
                "{explained}; the replica also holds writes of the old primary the new one may \
                 lack (in flight when its connection ended){kept}: {how}"
            ),
        };
        if resolved.is_some() {
            tracing::warn!("{explained}");
        }
        decision = what;
    }
    let rebase = match decision {
        Decision::Refuse(refusal) => return Err(AcceptError::Decision { refusal, explained }),
        Decision::Resume => None,
        Decision::Resync { .. } | Decision::Adopt => {
            // A replica of this primary's own history (it knows the
            // replica's generation, or a sync of its was under way) holds
            // the seqs it applied: its position never goes back, or markers
            // and writes replayed from the primary's nvbuf would be applied
            // over later ones. Another history's seqs mean nothing here.
            let from = theirs.resume_from.saturating_sub(1);
            let same_history = pv.gens.knows(rv.gens.current) || rv.syncing_to(pv.gens.current);
            Some(if same_history {
                from.max(receiver.released_upto())
            } else {
                from
            })
        }
    };
    let mut reply = receiver.on_hello(ours, theirs, rebase, now)?;
    state.set_epoch(theirs.epoch)?;
    state.set_replay_bound(theirs.highest_seq)?;
    match decision {
        Decision::Resync { .. } => {
            state.begin_sync(theirs.gens.current, fresh)?;
        }
        Decision::Adopt => {
            state.adopt(theirs.gens.current, pv.has_local)?;
            if pv.has_local {
                tracing::warn!(
                    "the replica is taken as equal to the primary's volume without a sync, as \
                     the operator chose (assume-in-sync); this is recorded in the replica's state"
                );
            }
        }
        _ => {}
    }
    if let Some(pos) = rebase {
        state.rebase(pos)?;
        reply.stored_seq = pos;
    }
    if theirs.flags & hello_flags::LOST_WRITES != 0 {
        tracing::error!(
            "the primary (epoch {}) lost answered writes after seq {}: the replica is \
             marked inconsistent until a resync or verify",
            theirs.epoch,
            theirs.stored_seq
        );
        state.set_lost_writes(theirs.epoch, theirs.stored_seq.saturating_add(1), None)?;
    }
    if !state.inconsistencies().is_empty() {
        reply.flags |= hello_flags::INCONSISTENT;
    }
    reply.gens = state.gens();
    // The remote's Hello carries its sync target (as it was when deciding)
    // where the primary's carries its map base.
    reply.map_base = rv.sync_target;
    reply.changed_bytes = own_bytes.unwrap_or(0);
    reply.decision = DecisionCode::encode(&decision);
    if extents.is_some() {
        reply.flags |= hello_flags::EXTENTS_FOLLOW;
    }
    Ok(Accepted {
        reply,
        decision,
        explained,
        rebase,
        extents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::FileReplica;

    #[test]
    fn each_split_brain_policy_resolves_or_refuses_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        let replica = FileReplica::open(&dir.path().join("r"), 1 << 20).unwrap();
        let (mut state, _) =
            VolumeState::open(&dir.path().join("r.state"), [1; 16], &replica, false).unwrap();
        use SplitBrainPolicy::*;
        let by = |s: &VolumeState, p, primary, remote| {
            let sides = Sides {
                primary_changed: primary,
                remote_changed: remote,
                primary_since: 0,
                remote_since: 0,
            };
            split_brain_resolved_by(s, p, &sides)
        };
        // Younger and older: the side that became primary later is the
        // younger (after a failover, the promoted one, now the primary).
        let aged = |s: &VolumeState, p, primary_since, remote_since| {
            let sides = Sides {
                primary_changed: 1,
                remote_changed: Some(1),
                primary_since,
                remote_since,
            };
            split_brain_resolved_by(s, p, &sides)
        };
        assert!(aged(&state, DiscardOlderPrimary, 2000, 1000).is_ok());
        let younger = aged(&state, DiscardYoungerPrimary, 2000, 1000).unwrap_err();
        assert!(
            younger.contains("the primary is the younger") && younger.contains("promote this one"),
            "{younger}"
        );
        assert!(aged(&state, DiscardYoungerPrimary, 1000, 2000).is_ok());
        assert!(aged(&state, DiscardOlderPrimary, 1000, 2000).is_err());
        let unknown = aged(&state, DiscardOlderPrimary, 2000, 0).unwrap_err();
        assert!(unknown.contains("needs to know"), "{unknown}");
        assert!(by(&state, Disconnect, 0, Some(0)).is_err());
        assert!(by(&state, DiscardRemote, 0, Some(9)).is_ok());
        // Least changes: the remote goes when it changed no more.
        assert!(by(&state, DiscardLeastChanges, 100, Some(100)).is_ok());
        let kept = by(&state, DiscardLeastChanges, 100, Some(101)).unwrap_err();
        assert!(
            kept.contains("changed more") && kept.contains("promote this one"),
            "{kept}"
        );
        // Zero changes: only a remote that changed nothing goes.
        assert!(by(&state, DiscardZeroChanges, 5, Some(0)).is_ok());
        let none = by(&state, DiscardZeroChanges, 0, Some(7)).unwrap_err();
        assert!(none.contains("the primary changed nothing"), "{none}");
        assert!(by(&state, DiscardZeroChanges, 5, Some(7)).is_err());
        // Without this replica's record, the counting policies refuse.
        assert!(by(&state, DiscardLeastChanges, 100, None).is_err());
        // The operator's word wins over any policy.
        state.set_discard_my_data().unwrap();
        assert!(by(&state, Disconnect, 0, None).is_ok());
    }
}
