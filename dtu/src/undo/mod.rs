//! Point in time on the remote: the [`Catalog`] of checkpoints and the
//! undo [`Journal`] that keeps, per era between checkpoints, the old
//! contents of every block before its first overwrite or trim, so that the
//! replica can be read as it was at any checkpoint held ([`Journal::read_as_of`])
//! and rolled back to it ([`Journal::rollback_plan`]). [`reconcile`] makes
//! the two agree after a crash. A library: the remote's applier calls it.
//!
//! # How the remote's applier calls it
//!
//! ```text
//! open:        let cat = Catalog::open(dir/"catalog")?;
//!              let (j, report) = Journal::open(dir/"undo", block_size, volume_size)?;  // log report.torn
//!              reconcile(&mut cat, &mut j)?;                                       // log what went
//! per batch:   for each write w:  j.save_before_write(w.seq, w.off, w.len, &replica)?
//!              for each trim t:   j.save_before_trim(t.seq, t.off, t.len, &replica)?
//!              j.sync()?;                       // the saves are durable first,
//!              replica writes, replica.sync()   // then the writes they protect
//! checkpoint:  let era = j.begin_era(c.seq, c.time_us)?;       // a replayed one answers its era again
//!              if cat.newest().map(|n| n.seq) != Some(c.seq) {
//!                  cat.append(Entry { seq: c.seq, time_us: c.time_us, kind: c.kind, label: c.label, era })?;
//!              }
//!              for d in j.retain(now_us)? { cat.drop_era(d.era)?; }
//! as-of:       let e = cat.at_or_before(t)?  (or cat.by_label(l)?);  j.read_as_of(e.era, off, buf, &replica)?
//! rollback:    for step in j.rollback_plan(e.era)? { write or zero }; replica.sync()?;
//!              j.drop_eras_after(e.era)?;  cat.drop_after(e.seq)?;
//! ```
//!
//! Writes replayed after a crash with a seq at or before the newest
//! checkpoint save nothing (their eras' saves were made durable when the
//! next era began); the applier calls the same code for them.
//!
//! # Cost
//!
//! On disk, per era: a 64-byte header, then per saved run a 40-byte record
//! header plus the old bytes (nothing for blocks that read as zeros). In
//! RAM, per saved extent at most [`INDEX_BYTES_PER_EXTENT`] bytes; runs of
//! tombstones merge. Nothing in RAM or on disk follows the volume's size:
//! only what was overwritten since the oldest checkpoint held.

pub mod catalog;
mod error;
mod index;
pub mod journal;
mod segment;
mod time;

use std::path::Path;

pub use catalog::{Catalog, Entry, MAX_CHECKPOINTS, MAX_LABEL};
pub use error::{CatalogError, UndoError};
pub use index::INDEX_BYTES_PER_EXTENT;
pub use journal::{
    DroppedEra, EraId, EraStats, Journal, Limits, OpenReport, RollbackStep, Stats, TornTail,
};
pub use segment::MAX_RECORD_DATA;
pub use time::fmt_time_us;

/// Makes a rename or removal in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Makes a rename of `path` durable (syncs the directory holding it).
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// What [`reconcile`] changed, each with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub dropped_checkpoints: Vec<(Entry, String)>,
    pub dropped_eras: Vec<(DroppedEra, String)>,
    /// Eras without a checkpoint kept because older checkpoints' views need
    /// their copies; retention drops them once they are the oldest.
    pub kept_eras: Vec<(EraId, String)>,
}

impl ReconcileReport {
    pub fn is_empty(&self) -> bool {
        self.dropped_checkpoints.is_empty()
            && self.dropped_eras.is_empty()
            && self.kept_eras.is_empty()
    }
}

/// Makes the catalog and the journal agree after a crash (between
/// `begin_era` and `Catalog::append`, between a retention or rollback drop
/// in one and in the other), and answers what it changed:
///
/// - a checkpoint whose era is missing (or begins at another seq) is
///   dropped; if a later era is held, the views of every older checkpoint
///   lacked that era's copies, so they and their eras go too;
/// - an era without a checkpoint is dropped when it holds nothing or is the
///   oldest; otherwise (older checkpoints' views need its copies) it is kept
///   and reported.
pub fn reconcile(
    catalog: &mut Catalog,
    journal: &mut Journal,
) -> Result<ReconcileReport, UndoError> {
    let mut report = ReconcileReport::default();
    let eras = journal.eras();
    let held = |era: EraId, seq| eras.iter().any(|&(id, s, _)| id == era && s == seq);
    let newest_era = eras.last().map_or(0, |e| e.0);
    // The newest missing era with a held era after it: everything up to it goes.
    let cut = catalog
        .list()
        .iter()
        .filter(|c| !held(c.era, c.seq) && c.era < newest_era)
        .map(|c| c.era)
        .max();
    let gone =
        catalog.drop_where(|c| !held(c.era, c.seq) || cut.is_some_and(|cut| c.era <= cut))?;
    for c in gone {
        let why = if !held(c.era, c.seq) {
            format!("its undo era {} is missing", c.era)
        } else {
            format!(
                "undo era {} is missing, and the view at this older checkpoint needs it",
                cut.unwrap_or_default()
            )
        };
        report.dropped_checkpoints.push((c, why));
    }
    if let Some(cut) = cut {
        for &(id, _, _) in eras.iter().filter(|e| e.0 < cut) {
            let d = journal.drop_era(id)?;
            report.dropped_eras.push((
                d,
                format!("undo era {cut} is missing, which its view needs"),
            ));
        }
    }
    // Eras without a checkpoint.
    for (id, seq, _) in journal.eras() {
        if catalog.by_era(id).is_some_and(|c| c.seq == seq) {
            continue;
        }
        let oldest = journal.eras().first().map(|e| e.0) == Some(id);
        let empty = journal.is_era_empty(id).unwrap_or(true);
        if empty || oldest {
            let d = journal.drop_era(id)?;
            let why = if empty {
                "no checkpoint begins it and it holds nothing"
            } else {
                "no checkpoint begins it and no older checkpoint needs it"
            };
            report.dropped_eras.push((d, why.to_string()));
        } else {
            report.kept_eras.push((
                id,
                "no checkpoint begins it, but older checkpoints' views need its copies".into(),
            ));
        }
    }
    Ok(report)
}
