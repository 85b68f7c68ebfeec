//! What the primary does with a host write: journal it (the normal case),
//! or, when the journal cannot take it, write it ahead to the local copy and
//! the changed-block map (VVR's data change map, DRBD's pull-ahead), and
//! afterwards resync the marked extents.
//!
//! `journal`: every write goes through the nvbuf and the stream (a sync may
//! run beside it: the status then says `resync`). `ahead`: the nvbuf was full
//! for longer than `nvbuf.overflow_after` (a slow or dead link) and
//! `nvbuf.overflow = bitmap`: the primary [`fold`]s everything not yet
//! stored on the replica into the map and answers writes once they are in
//! the local copy with their extent marked durably first, so the host never
//! waits on the link. A new generation starts, relative to the replica's
//! (the map's base). When the link is back, the remote decides a resync
//! from the map; host writes are journaled again while the sync copies the
//! marked extents, and once the map is empty the replica adopts the new
//! generation and the primary is back to plain journaling. A primary that
//! stops while ahead starts again ahead.

use std::time::Instant;

use dtu_proto::generation::Gen;
use dtu_proto::sender::Sender;
use dtu_proto::Seq;

use crate::changemap::{ChangeMap, ChangeMapError, MapStore};
use crate::nvbuf::{NvStore, Nvbuf, NvbufError, RecordHeader};

use super::appender::Appender;
use super::ingest::{kind_from_flags, Record};
use super::local::LocalCopy;
use super::meta::PrimaryMeta;

/// What the primary does when the nvbuf stays full (`nvbuf.overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Writers wait for space, however long (the host stalls with the link).
    Stall,
    /// Go ahead: write to the local copy and mark the map; resync later.
    Bitmap,
    /// Answer new writes with an I/O error instead of stalling.
    Fail,
}

impl Overflow {
    /// The policy's name in config files and the status.
    pub fn name(self) -> &'static str {
        match self {
            Overflow::Stall => "stall",
            Overflow::Bitmap => "bitmap",
            Overflow::Fail => "fail",
        }
    }
}

impl std::str::FromStr for Overflow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stall" => Ok(Overflow::Stall),
            "bitmap" => Ok(Overflow::Bitmap),
            "fail" => Ok(Overflow::Fail),
            other => Err(format!("{other:?}: expected stall, bitmap or fail")),
        }
    }
}

/// The primary's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every write is journaled (a sync may run beside: see the status).
    Journal,
    /// Writes go to the local copy and the map, not the journal.
    Ahead { since: Instant },
    /// The nvbuf stayed full and `nvbuf.overflow = fail`: new writes are
    /// refused until space is free again.
    Failing { since: Instant },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Journal => "journal",
            Mode::Ahead { .. } => "ahead",
            Mode::Failing { .. } => "full-failing",
        }
    }
}

/// Why a fold failed: the primary cannot keep its promises any more.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FoldError {
    #[error("the changed-block map: {0}")]
    Map(#[from] ChangeMapError),
    #[error(transparent)]
    Nvbuf(#[from] NvbufError),
    #[error("applying seq {seq} to the local copy: {source}")]
    Local {
        seq: Seq,
        #[source]
        source: std::io::Error,
    },
}

/// The volume range a record changes, if it changes one.
pub(crate) fn range(h: &RecordHeader) -> Option<(u64, u64)> {
    match kind_from_flags(h.flags)? {
        dtu_proto::sender::OpKind::Write | dtu_proto::sender::OpKind::Trim => {
            Some((h.offset, u64::from(h.length)))
        }
        _ => None,
    }
}

/// Leaves the journal: everything not yet stored on the replica goes into
/// the map instead. In order, so that a crash at any point loses nothing:
/// the metadata first (ahead, a new generation, the map's base), then every
/// extent of the unstored records marked durably, then the records that
/// were not yet durable applied to the local copy, then the nvbuf emptied,
/// then every operation answered. `pending` are the appender's records (all
/// chunks of every seq up to the sender's highest); `fresh` the new
/// generation.
#[allow(clippy::too_many_arguments)]
pub fn fold<S: NvStore, M: MapStore>(
    nvbuf: &Nvbuf<S>,
    map: &ChangeMap<M>,
    local: &LocalCopy,
    appender: &mut Appender,
    sender: &mut Sender,
    meta: &mut PrimaryMeta,
    fresh: Gen,
    now: Instant,
) -> Result<(), FoldError> {
    let highest = sender.highest_seq();
    if !meta.ahead {
        meta.ahead = true;
        if meta.map_base == 0 {
            meta.map_base = meta.gens.current;
            map.set_base(meta.map_base)?;
        }
        meta.gens.advance(fresh);
        nvbuf.set_meta(&meta.encode())?;
    }
    let pending = appender.drain(highest + 1);
    for h in nvbuf
        .unreleased_headers()
        .iter()
        .chain(pending.iter().map(|r| &r.hdr))
    {
        if let Some((o, l)) = range(h) {
            map.mark(o, l)?;
        }
    }
    map.persist()?;
    for rec in &pending {
        let last = rec.hdr.chunk_index + 1 == rec.hdr.chunk_count;
        local
            .apply(rec.hdr.seq, &rec.local, last)
            .map_err(|source| FoldError::Local {
                seq: rec.hdr.seq,
                source,
            })?;
    }
    // The operations are answered as durable and the nvbuf forgets them:
    // the local copy must hold them on disk first.
    local.disk().sync().map_err(|source| FoldError::Local {
        seq: highest,
        source,
    })?;
    local.set_applied(highest);
    nvbuf.skip_to(highest + 1)?;
    sender.fold(now);
    Ok(())
}

/// At start, after a stop while ahead: the map gets whatever the nvbuf
/// still holds and the sender forgets it (see [`fold_recovered`]).
pub fn resume_ahead<S: NvStore, M: MapStore>(
    nvbuf: &Nvbuf<S>,
    map: &ChangeMap<M>,
    sender: &mut Sender,
    now: Instant,
) -> Result<(), FoldError> {
    fold_recovered(nvbuf, map)?;
    sender.fold(now);
    Ok(())
}

/// A journaled host write or trim, at a seq just given, wholly rewrites
/// `offset..+len`: the map's extents it covers reach the replica with it,
/// so no sync needs to copy them. Call it after the seq is given, never
/// before: a sync's end reserved in between would count on the write.
pub fn overwritten<M: MapStore>(
    map: &ChangeMap<M>,
    offset: u64,
    len: u64,
) -> Result<u64, ChangeMapError> {
    if len == 0 || map.marked_bytes() == 0 {
        return Ok(0);
    }
    map.clear(offset, len)
}

/// At start in the journal: extents wholly rewritten by records still in
/// the nvbuf reach the replica with the replay, in order after whatever it
/// holds, so no sync needs to copy them again (a primary killed mid-sync
/// re-copies only what it had not yet queued). Returns the bytes cleared.
pub fn clear_replayed<S: NvStore, M: MapStore>(
    nvbuf: &Nvbuf<S>,
    map: &ChangeMap<M>,
) -> Result<u64, ChangeMapError> {
    let before = map.marked_bytes();
    if before == 0 {
        return Ok(0);
    }
    for h in nvbuf.unreleased_headers() {
        if let Some((o, l)) = range(&h) {
            if l > 0 {
                map.clear(o, l)?;
            }
        }
    }
    map.persist()?;
    Ok(before.saturating_sub(map.marked_bytes()))
}

/// At start: the map must agree with the metadata. Marks with no
/// generation to be relative to (a fold that crashed before its metadata
/// was written) are covered by the journal and cleared; the base follows
/// the metadata. Returns the bytes cleared.
pub fn reconcile_map<M: MapStore>(
    map: &ChangeMap<M>,
    meta: &PrimaryMeta,
) -> Result<u64, ChangeMapError> {
    let mut cleared = 0;
    if meta.map_base == 0 && map.marked_bytes() > 0 {
        cleared = map.marked_bytes();
        map.clear_all()?;
        map.persist()?;
    }
    if map.base() != meta.map_base {
        map.set_base(meta.map_base)?;
        map.persist()?;
    }
    Ok(cleared)
}

/// After a restart while ahead: whatever the nvbuf still holds (a crash in
/// the middle of a fold) is marked in the map, then the nvbuf is emptied;
/// the replay has already applied it to the local copy.
pub fn fold_recovered<S: NvStore, M: MapStore>(
    nvbuf: &Nvbuf<S>,
    map: &ChangeMap<M>,
) -> Result<(), FoldError> {
    for h in nvbuf.unreleased_headers() {
        if let Some((o, l)) = range(&h) {
            map.mark(o, l)?;
        }
    }
    map.persist()?;
    let next = nvbuf.next_seq();
    nvbuf.skip_to(next)?;
    Ok(())
}

/// A host write while ahead: its extents are marked durably before the
/// data can reach the local copy's disk.
pub fn write_ahead<M: MapStore>(
    map: &ChangeMap<M>,
    local: &LocalCopy,
    offset: u64,
    data: &[u8],
) -> Result<(), FoldError> {
    map.mark_durable(offset, data.len() as u64)?;
    local
        .disk()
        .write_at(offset, data)
        .map_err(|source| FoldError::Local { seq: 0, source })
}

/// A host trim while ahead.
pub fn trim_ahead<M: MapStore>(
    map: &ChangeMap<M>,
    local: &LocalCopy,
    offset: u64,
    len: u64,
) -> Result<(), FoldError> {
    map.mark_durable(offset, len)?;
    local
        .disk()
        .trim(offset, len)
        .map_err(|source| FoldError::Local { seq: 0, source })
}

/// A host flush while ahead: the local copy and the map are durable.
pub fn flush_ahead<M: MapStore>(map: &ChangeMap<M>, local: &LocalCopy) -> Result<(), FoldError> {
    map.persist()?;
    local
        .disk()
        .sync()
        .map_err(|source| FoldError::Local { seq: 0, source })
}

/// Everything the records of `pending` reach, for a caller that wants the
/// map marked without folding (tests).
pub fn ranges_of(pending: &[Record]) -> Vec<(u64, u64)> {
    pending.iter().filter_map(|r| range(&r.hdr)).collect()
}
