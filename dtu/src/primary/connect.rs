//! Connecting to the remote, without the network: the Hello this primary
//! offers at each connect and the checks on the remote's answer. The QUIC
//! session and the simulator use these same functions, so what the pair
//! agrees at connect is simulated exactly as it ships.

use dtu_proto::codec::Key;
use dtu_proto::frame::{features, hello_flags, DecisionCode, Hello, Role};
use dtu_proto::generation::{Decision, Gen, Generations, InitialSync};
use dtu_proto::handshake::{self, HandshakeError};
use dtu_proto::{Epoch, Seq};

use std::time::Instant;

use crate::changemap::{ChangeMap, MapStore};
use crate::config::Volume;

use super::local::LocalCopy;
use super::mode::{FoldError, Mode};
use super::sync::SyncEngine;

use super::meta::PrimaryMeta;

/// Why the remote's answer ends the attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("the peer is not a remote DTU")]
    NotARemote,
    #[error("the remote's answer carries no decision (an older dtu?)")]
    NoDecision,
}

/// What the remote's accepted answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Every seq up to this is stored on the replica.
    pub remote_stored: Seq,
    /// The remote has recorded (durably) that its replica is inconsistent,
    /// so a loss this primary reported need not be reported again.
    pub inconsistent: bool,
    /// What the remote decided.
    pub decision: Decision,
    /// The remote's generations after its decision.
    pub remote_gens: Generations,
    /// The generation a sync under way on the replica was bringing it to
    /// when the remote decided (0: none).
    pub remote_sync_target: Gen,
    /// [`hello_flags::EXTENTS_FOLLOW`]: the remote sends the ranges its
    /// replica changed on its own before anything else.
    pub extents_follow: bool,
    /// Those ranges, once read: the resync sends them too.
    pub extents: Vec<(u64, u64)>,
}

/// Most ranges a remote may send after its Hello (16 bytes each).
pub const MAX_EXTENTS: usize = 1 << 22;

/// The Hello of a primary of `volume` at `epoch`, whose stream carried over
/// from earlier epochs ends at `carried_over`.
pub fn hello(volume: &Volume, epoch: Epoch, carried_over: Seq, compress: bool) -> Hello {
    let mut feats = features::READS;
    if volume.key.is_some() {
        feats |= features::SEALING;
    }
    if compress {
        feats |= features::COMPRESSION;
    }
    Hello {
        version: dtu_proto::PROTOCOL_VERSION,
        role: Role::Primary,
        volume_id: volume.id,
        volume_size: volume.size,
        block_size: volume.block_size,
        features: feats,
        epoch,
        stored_seq: carried_over,
        highest_seq: 0,
        key_fingerprint: volume
            .key
            .as_ref()
            .map_or(0, |k| Key::from_bytes(k).fingerprint()),
        flags: 0,
        gens: Default::default(),
        map_base: 0,
        resume_from: 0,
        decision: 0,
        changed_bytes: 0,
        primary_since: 0,
    }
}

/// What the primary says about itself at one connect.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    /// The highest seq assigned so far.
    pub highest: Seq,
    /// The lowest seq it can still send.
    pub resume_from: Seq,
    pub meta: &'a PrimaryMeta,
    pub has_local: bool,
    pub initial: InitialSync,
    /// Bytes this primary holds that the remote may lack: what the
    /// changed-block map marks and the payload of the operations the
    /// remote has not stored.
    pub changed_bytes: u64,
}

/// The Hello offered at one connect: how far the stream reaches, the
/// generations and the map's base for the remote's decision, and a loss
/// the remote has not yet recorded.
pub fn offer(template: &Hello, o: &Offer<'_>) -> Hello {
    let mut h = template.clone();
    h.highest_seq = o.highest;
    h.resume_from = o.resume_from;
    h.gens = o.meta.gens;
    h.map_base = o.meta.map_base;
    h.changed_bytes = o.changed_bytes;
    h.primary_since = o.meta.primary_since;
    if o.meta.unreported_loss.is_some() {
        h.flags |= hello_flags::LOST_WRITES;
    }
    if o.has_local {
        h.flags |= hello_flags::HAS_LOCAL;
    }
    h.flags |= o.initial.bits() << hello_flags::INITIAL_SHIFT;
    h
}

/// Checks the remote's answer to `sent`.
pub fn check_reply(sent: &Hello, theirs: &Hello) -> Result<Accepted, Refusal> {
    handshake::check(sent, theirs)?;
    if theirs.role != Role::Remote {
        return Err(Refusal::NotARemote);
    }
    let decision = DecisionCode::decode(theirs.decision).ok_or(Refusal::NoDecision)?;
    Ok(Accepted {
        remote_stored: theirs.stored_seq,
        inconsistent: theirs.flags & hello_flags::INCONSISTENT != 0,
        decision,
        remote_gens: theirs.gens,
        remote_sync_target: theirs.map_base,
        extents_follow: theirs.flags & hello_flags::EXTENTS_FOLLOW != 0,
        extents: Vec::new(),
    })
}

/// Carries out the remote's decision on the primary's side: a resync
/// (marking every extent when it must sync all) starts the sync engine and
/// ends writing ahead; `resume` after a sync means the remote already took
/// the primary's generation, so the map's work is done; an adoption empties
/// the map. Returns whether the metadata changed (the caller writes it).
/// The caller holds out host writes while the mode changes.
/// `markers_pending` says the stream still to be sent holds sync markers
/// (see [`Sender::holds_after`](dtu_proto::sender::Sender::holds_after)):
/// a start among them will mark the replica mid-sync again, so a run must
/// follow with its own end even when nothing is left to copy.
#[allow(clippy::too_many_arguments)]
pub fn on_accepted<M: MapStore>(
    a: &Accepted,
    markers_pending: bool,
    meta: &mut PrimaryMeta,
    map: Option<&ChangeMap<M>>,
    local: Option<&LocalCopy>,
    sync: &mut SyncEngine,
    mode: &mut Mode,
    checksum_always: bool,
    now: Instant,
) -> Result<bool, FoldError> {
    let mut changed = false;
    if matches!(mode, Mode::Ahead { .. }) && !matches!(a.decision, Decision::Refuse(_)) {
        // Back to the journal: what the host wrote ahead without a flush
        // must be on disk before a sync reads it and the replica holds it.
        if let (Some(map), Some(local)) = (map, local) {
            super::mode::flush_ahead(map, local)?;
        }
    }
    match a.decision {
        Decision::Resume | Decision::Adopt => {
            if meta.map_base != 0 || sync.running() || markers_pending {
                // The replica holds this generation (a sync completed while
                // its last answer was on the way, or it was adopted).
                sync.abort();
                if let Some(map) = map {
                    map.reset(false, 0)?;
                    if markers_pending {
                        sync.start(meta.gens.current, false, map, now);
                    }
                }
                meta.map_base = 0;
                changed = true;
            }
            if matches!(mode, Mode::Ahead { .. }) {
                *mode = Mode::Journal;
                meta.ahead = false;
                changed = true;
            }
        }
        Decision::Resync { all, checksum } => {
            let Some(map) = map else {
                // The remote never asks a primary without a local copy to
                // sync; refuse rather than pretend.
                return Ok(changed);
            };
            if matches!(mode, Mode::Ahead { .. }) {
                *mode = Mode::Journal;
                meta.ahead = false;
                changed = true;
            }
            // A sync that was under way towards this generation keeps its
            // map: it holds what is left (relative to the run's base).
            let continuing = a.remote_sync_target != 0 && a.remote_sync_target == meta.gens.current;
            // With the replica's own changes listed, the map (relative to
            // a generation both share) and those ranges cover every
            // difference: nothing is reset.
            let covered = a.extents_follow && meta.map_base != 0;
            if all || (!continuing && !covered && meta.map_base != a.remote_gens.current) {
                map.reset(true, a.remote_gens.current)?;
                meta.map_base = a.remote_gens.current;
                changed = true;
            }
            let forget =
                dtu_proto::planted::active(dtu_proto::planted::Bug::FailbackForgetsExtents);
            if !all && !forget {
                let size = map.volume_size();
                for &(off, len) in &a.extents {
                    let end = off.saturating_add(len).min(size);
                    if off < end {
                        map.mark_durable(off, end - off)?;
                    }
                }
            }
            sync.start(meta.gens.current, checksum || checksum_always, map, now);
        }
        Decision::Refuse(_) => {}
    }
    Ok(changed)
}
