//! The primary's side of a role change: the files a promoted remote starts
//! its primary role from, and the files a demoted primary leaves for its
//! remote role.
//!
//! Promotion ([`prepare_promoted`]): the replica's volume becomes this
//! primary's local copy; the nvbuf and the changed-block map start afresh,
//! with the generations the promotion recorded and the map relative to the
//! generation it left, so the old primary, once a remote of that
//! generation, is resynced from the map and the journal alone. Demotion
//! ([`demote_files`], over any storage [`divergence`] and
//! [`record_demotion`], which the simulator runs): the primary's local
//! copy becomes a remote's replica
//! with the primary's generations. Whatever the old remote may lack (the
//! nvbuf's records after the last seq known stored there, the extents
//! marked in the map) is the
//! replica's divergence, listed in a record beside its state file; the
//! next connect sends the list to the new primary, which resyncs those
//! ranges with its own changed-block map (a full digest comparison only
//! when the list cannot be read or the map does not reach back). Writes
//! the host made while this primary was cut off from the remote (recorded
//! from the first one, `cut_off_since`) are more than in-flight records:
//! the replica then takes a generation of its own, so the next connect
//! sees both sides changed since the one they share and applies the
//! split-brain policy rather than silently dropping them. The nvbuf is
//! marked demoted so a primary does not start on it by mistake.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dtu_proto::codec::Key;
use dtu_proto::generation::{Gen, Generations};

use crate::changemap::{ChangeMap, MapStore, SparseFile};
use crate::config::{PrimaryConfig, RemoteConfig};
use crate::nvbuf::{NvStore, Nvbuf, NvbufConfig, NvbufError, OnLoss, Recovery};
use crate::replica::{FileReplica, Replica, ReplicaError, StateError, VolumeState};

use super::local::LocalCopy;
use super::meta::{MetaVersion, PrimaryMeta};
use super::PrimaryOptions;

/// What a demotion that could not wait found left on the primary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the remote has not stored everything yet: {unstored} operations not stored, {out_of_sync} \
     bytes marked in the changed-block map{} (link: {connection}); demoting now would leave them \
     on this side only. Wait for the link, or demote with --force (they become this side's \
     divergence, discarded by the next resync)",
    if *.resync_pending { ", and the remote has not yet taken this side's generation" } else { "" }
)]
pub struct Undrained {
    pub unstored: u64,
    pub out_of_sync: u64,
    /// The remote has not yet been resynced to this primary's generation
    /// (a sync that finds nothing to copy still has to end): a promotion
    /// of it now would start from the generation before and meet this
    /// side as a split brain.
    pub resync_pending: bool,
    pub connection: String,
}

/// Why a role change's files cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoleError {
    #[error(
        "the local copy is being restored from the remote (see {0}) and is not whole: start the \
         primary and demote once the restore is complete"
    )]
    Restoring(PathBuf),
    #[error("the nvbuf {path}: {source}")]
    Nvbuf {
        path: PathBuf,
        #[source]
        source: NvbufError,
    },
    #[error("the nvbuf {path}: {source}")]
    Meta {
        path: PathBuf,
        #[source]
        source: MetaVersion,
    },
    #[error("the changed-block map {path}: {source}")]
    Map {
        path: PathBuf,
        #[source]
        source: crate::changemap::ChangeMapError,
    },
    #[error("the volume {path}: {source}")]
    Volume {
        path: PathBuf,
        #[source]
        source: ReplicaError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replaying the nvbuf into the local copy: {0}")]
    Replay(String),
    #[error("{0}")]
    Mismatch(String),
}

/// The changed-block map's path for a primary config.
pub fn map_path(nvbuf: &Path, configured: Option<&Path>) -> PathBuf {
    configured.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut p = nvbuf.as_os_str().to_owned();
        p.push(".map");
        PathBuf::from(p)
    })
}

/// Checks that a site's two configs describe the same volume on the same
/// disk: the primary's local copy is the remote's replica.
pub fn check_pair(p: &PrimaryConfig, r: &RemoteConfig) -> Result<(), RoleError> {
    if p.volume.id != r.volume.id || p.volume.size != r.volume.size {
        return Err(RoleError::Mismatch(
            "the primary and remote configs of this site describe different volumes (volume.id \
             or volume.size differ)"
                .into(),
        ));
    }
    let Some(local) = &p.local else {
        return Ok(());
    };
    let same = match (local.canonicalize(), r.replica.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => local == &r.replica,
    };
    if !same {
        return Err(RoleError::Mismatch(format!(
            "the primary config's nbd.local ({}) is not the remote config's replica.path ({}): \
             a role change must keep the same disk",
            local.display(),
            r.replica.display()
        )));
    }
    Ok(())
}

/// Prepares a promoted remote's primary role: a fresh nvbuf whose metadata
/// holds `gens` with the map relative to `base` (the generation the
/// promotion left), and no map yet (the primary creates an empty one
/// relative to `base`). Idempotent: an nvbuf already at `gens` is kept, so
/// a promotion redone after a crash keeps what the new primary journaled.
pub fn prepare_promoted(
    cfg: &PrimaryOptions,
    gens: Generations,
    base: Gen,
) -> Result<(), RoleError> {
    let path = &cfg.nvbuf_path;
    let nv_err = |source| RoleError::Nvbuf {
        path: path.clone(),
        source,
    };
    let map = map_path(path, cfg.mirror.map_path.as_deref());
    let exists = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
    if exists {
        let mut nc = NvbufConfig::new(cfg.volume.id).with_size(cfg.nvbuf_size);
        nc.on_loss = OnLoss::Salvage;
        match Nvbuf::open_or_create(path, &nc) {
            Ok((nv, rec)) => {
                let meta = PrimaryMeta::decode(&nv.meta()).unwrap_or_default();
                if meta.gens.current == gens.current && !meta.demoted {
                    return Ok(());
                }
                if !rec.records.is_empty() {
                    tracing::warn!(
                        "{} held {} records of this site's earlier time as a primary; the \
                         replica has moved on since, so they are discarded",
                        path.display(),
                        rec.records.len()
                    );
                }
            }
            Err(e) => tracing::warn!(
                "{} cannot be opened ({e}); a new one replaces it",
                path.display()
            ),
        }
    }
    for p in [path, &map] {
        remove_if_present(p)?;
    }
    let nc = NvbufConfig::new(cfg.volume.id).with_size(cfg.nvbuf_size);
    let (nv, _) = Nvbuf::open_or_create(path, &nc).map_err(nv_err)?;
    nv.set_meta(&promoted_meta(gens, base, unix_now()).encode())
        .map_err(nv_err)?;
    Ok(())
}

/// A promoted side's first primary metadata: the promotion's generations,
/// the map relative to the generation it left.
/// `since` is the promotion's moment (Unix seconds).
pub fn promoted_meta(gens: Generations, base: Gen, since: u64) -> PrimaryMeta {
    PrimaryMeta {
        gens,
        map_base: base,
        primary_since: since,
        ..PrimaryMeta::default()
    }
}

/// Now, in Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a demotion left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demoted {
    /// The replica's generations.
    pub gens: Generations,
    /// Bytes the host wrote while this primary was cut off from the remote
    /// (a split brain if the remote was promoted meanwhile).
    pub cut_off_bytes: u64,
    /// Extents the old remote may lack (offset, length), merged.
    pub divergent: Vec<(u64, u64)>,
    /// Where they are listed, when there are any.
    pub record: Option<PathBuf>,
    /// The nvbuf was already demoted: nothing was changed.
    pub already: bool,
}

impl Demoted {
    pub fn divergent_bytes(&self) -> u64 {
        self.divergent.iter().map(|r| r.1).sum()
    }
}

/// The divergence record's path beside a replica's state file.
pub fn divergence_record(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".divergent");
    PathBuf::from(p)
}

/// Turns a stopped primary's files into its remote role's, the replica's
/// state at `state`: see the module header. `discard` records that the
/// operator lets this side's own changes go at the next connect
/// (`--discard-my-data`). The caller checks that the remote role's replica
/// is this primary's local copy ([`check_pair`]).
pub fn demote_files(p: &PrimaryOptions, state: &Path, discard: bool) -> Result<Demoted, RoleError> {
    if let Some(local) = &p.local {
        let restoring = super::restore::map_path(local);
        if restoring.exists() {
            return Err(RoleError::Restoring(restoring));
        }
    }
    let path = &p.nvbuf_path;
    let nv_err = |source| RoleError::Nvbuf {
        path: path.clone(),
        source,
    };
    let mut nc = NvbufConfig::new(p.volume.id).with_size(p.nvbuf_size);
    // Whatever survives is listed; a damaged tail is divergence anyway.
    nc.on_loss = OnLoss::Salvage;
    let (nv, recovery) = Nvbuf::open_or_create(path, &nc).map_err(nv_err)?;
    let meta = PrimaryMeta::decode(&nv.meta()).map_err(|source| RoleError::Meta {
        path: path.clone(),
        source,
    })?;
    if meta.demoted {
        return Ok(Demoted {
            gens: meta.gens,
            cut_off_bytes: 0,
            divergent: Vec::new(),
            record: None,
            already: true,
        });
    }
    let Some(local_path) = &p.local else {
        // No local copy: nothing of the volume is kept here. The remote
        // role starts from an empty replica that a full sync fills.
        for f in [state.to_path_buf(), divergence_record(state)] {
            let _ = std::fs::remove_file(f);
        }
        mark_demoted(&nv, meta).map_err(nv_err)?;
        return Ok(Demoted {
            gens: Generations::default(),
            cut_off_bytes: 0,
            divergent: Vec::new(),
            record: None,
            already: false,
        });
    };
    let disk: Arc<dyn Replica> = Arc::new(FileReplica::open(local_path, p.volume.size).map_err(
        |source| RoleError::Volume {
            path: local_path.clone(),
            source,
        },
    )?);
    let map_file = map_path(path, p.mirror.map_path.as_deref());
    let map = if meta.map_base != 0 && std::fs::metadata(&map_file).is_ok_and(|m| m.len() > 0) {
        let map_err = |source| RoleError::Map {
            path: map_file.clone(),
            source,
        };
        let store = SparseFile::open(&map_file).map_err(map_err)?;
        Some(
            ChangeMap::open(store, p.volume.id, p.volume.size)
                .map_err(map_err)?
                .0,
        )
    } else {
        None
    };
    let key = p.volume.key.as_ref().map(Key::from_bytes);
    let d = divergence(
        &nv,
        &recovery,
        &meta,
        disk.clone(),
        map.as_ref(),
        key.as_ref(),
        rand::random(),
    )
    .map_err(|e| e.at(local_path))?;
    remove_if_present(state)?;
    let (mut vs, _) = VolumeState::open(state, p.volume.id, disk.as_ref(), false)?;
    let record = record_demotion(&mut vs, disk.as_ref(), &d, discard)?;
    mark_demoted(&nv, meta).map_err(nv_err)?;
    Ok(Demoted {
        gens: d.gens,
        cut_off_bytes: d.cut_off_bytes,
        divergent: d.divergent,
        record,
        already: false,
    })
}

/// What a demoted primary's volume holds that its peer may lack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// The replica's generations (a new one of its own if the host wrote
    /// while cut off and no map already gave it one).
    pub gens: Generations,
    /// Bytes the host wrote while this primary was cut off.
    pub cut_off_bytes: u64,
    /// Extents (offset, length), sorted and merged.
    pub divergent: Vec<(u64, u64)>,
    /// When this side became primary (Unix seconds, 0: not known).
    pub primary_since: u64,
}

/// Why [`divergence`] failed (the caller names its files).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DivergenceError {
    #[error("replaying the nvbuf into the local copy: {0}")]
    Replay(String),
    #[error("syncing the local copy: {0}")]
    Sync(#[source] std::io::Error),
}

impl DivergenceError {
    fn at(self, local: &Path) -> RoleError {
        match self {
            DivergenceError::Replay(e) => RoleError::Replay(e),
            DivergenceError::Sync(source) => RoleError::Io {
                what: "syncing",
                path: local.to_path_buf(),
                source,
            },
        }
    }
}

/// The core of a demotion, over any nvbuf store, volume and map (the
/// files of [`demote_files`], the simulator's memory): the local copy
/// `disk` gets what the nvbuf holds, as a primary's start would give it,
/// and is synced; then what the peer may lack is listed. Records before
/// the first one taken while cut off were in flight when the connection
/// ended (like DRBD's activity log after a crash): the peer may lack them,
/// and they are resynced from it. Records from it on, and a map of writes
/// made ahead, are changes the host made while cut off: if the peer was
/// promoted meanwhile, both sides wrote, and the replica takes the
/// generation `fresh`.
pub fn divergence<S: NvStore, M: MapStore>(
    nv: &Nvbuf<S>,
    recovery: &Recovery,
    meta: &PrimaryMeta,
    disk: Arc<dyn Replica>,
    map: Option<&ChangeMap<M>>,
    key: Option<&Key>,
    fresh: Gen,
) -> Result<Divergence, DivergenceError> {
    let carried = nv.next_seq().saturating_sub(1);
    let local = LocalCopy::new(disk.clone(), carried);
    super::replay::into_local(recovery, &local, key)
        .map_err(|e| DivergenceError::Replay(e.to_string()))?;
    disk.sync().map_err(DivergenceError::Sync)?;
    let cut_off = meta.cut_off_since;
    let mut in_flight = Vec::new();
    let mut while_cut_off = Vec::new();
    for (h, _) in recovery
        .records
        .iter()
        .filter(|(h, _)| h.seq > meta.stored_seq)
    {
        if let Some(r) = super::mode::range(h).filter(|r| r.1 > 0) {
            if cut_off != 0 && h.seq >= cut_off {
                while_cut_off.push(r);
            } else {
                in_flight.push(r);
            }
        }
    }
    if let Some(map) = map.filter(|_| meta.map_base != 0) {
        let mut at = 0;
        while let Some((off, len)) = map.next_marked(at) {
            while_cut_off.push((off, len));
            at = off + len;
        }
    }
    let cut_off_bytes: u64 = while_cut_off.iter().map(|r| r.1).sum();
    let mut divergent = in_flight;
    divergent.extend(while_cut_off);
    divergent.sort_unstable();
    let divergent = merge(divergent);
    let mut gens = meta.gens;
    if cut_off_bytes > 0 && meta.map_base == 0 {
        // A generation of its own (a primary that went ahead has one
        // already): the next connect sees that both sides changed since
        // the one they share.
        gens.advance(fresh | 1);
    }
    Ok(Divergence {
        gens,
        cut_off_bytes,
        divergent,
        primary_since: meta.primary_since,
    })
}

/// Records a demotion in the replica's new state `vs` (opened empty for
/// `disk`): the divergence record beside it when there is anything to
/// list, then the demoted generations, durably. Returns the record's path.
pub fn record_demotion(
    vs: &mut VolumeState,
    disk: &dyn Replica,
    d: &Divergence,
    discard: bool,
) -> Result<Option<PathBuf>, RoleError> {
    let state = vs.path().to_path_buf();
    let record = divergence_record(&state);
    let record = if d.divergent.is_empty() {
        let _ = std::fs::remove_file(&record);
        None
    } else {
        write_record(&record, d)?;
        Some(record)
    };
    let io = |source| RoleError::Io {
        what: "writing the replica state",
        path: state.clone(),
        source,
    };
    vs.demoted(d.gens, record.is_some(), discard).map_err(io)?;
    vs.close_clean(disk).map_err(io)?;
    Ok(record)
}

/// Marks the nvbuf demoted, last: a crash before leaves a primary's nvbuf
/// and the demotion is done again.
pub fn mark_demoted<S: NvStore>(nv: &Nvbuf<S>, mut meta: PrimaryMeta) -> Result<(), NvbufError> {
    meta.demoted = true;
    nv.set_meta(&meta.encode())
}

/// Removes `path`; a file already gone is fine.
fn remove_if_present(path: &Path) -> Result<(), RoleError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RoleError::Io {
            what: "removing",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Joins touching and overlapping ranges of a sorted list.
fn merge(sorted: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (off, len) in sorted {
        match out.last_mut() {
            Some(last) if off <= last.0 + last.1 => {
                last.1 = last.1.max(off + len - last.0);
            }
            _ => out.push((off, len)),
        }
    }
    out
}

/// Writes the divergence record: which extents this side changed that its
/// peer may lack, so an operator can see what a resync discards.
fn write_record(path: &Path, d: &Divergence) -> Result<(), RoleError> {
    let io = |source| RoleError::Io {
        what: "writing the divergence record",
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("divergent.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    let mut text = format!(
        "# dtu divergence record: extents this side changed that its peer may lack.\n\
         # Written when this primary was demoted, at {} (Unix seconds); generation {}.\n\
         # Of them, {} bytes were written while it was cut off from the remote.\n\
         {PRIMARY_SINCE}{}\n\
         # A resync that discards this side's changes overwrites them. offset length (bytes)\n",
        unix_now(),
        d.gens,
        d.cut_off_bytes,
        d.primary_since,
    );
    for (o, l) in &d.divergent {
        text.push_str(&format!("{o} {l}\n"));
    }
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// The divergence record's line that says when the demoted side became
/// primary (Unix seconds; a comment to anything that reads only ranges).
pub const PRIMARY_SINCE: &str = "# primary since (Unix seconds): ";

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn merge_joins_touching_and_overlapping_ranges() {
        assert_eq!(
            merge(vec![
                (0, 4096),
                (4096, 4096),
                (10000, 10),
                (10005, 100),
                (20000, 1)
            ]),
            vec![(0, 8192), (10000, 105), (20000, 1)]
        );
        assert_eq!(merge(vec![(0, 100), (10, 20)]), vec![(0, 100)]);
    }
}
