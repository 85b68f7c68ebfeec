//! Generations: the identity of one unbroken history of the volume, and the
//! decision the pair takes at connect from both sides' generations.
//!
//! Each side keeps its current generation and the last few it moved on from
//! (after DRBD's generation identifiers). The primary starts a new one when
//! it stops journaling (overflow to the changed-block map, writing while cut
//! off for longer than the nvbuf holds, a loss it accepted), on promotion and
//! on rollback; its changed-block map remembers which remote generation it is
//! relative to (`map_base`). The remote adopts the primary's generation when
//! a sync completes. At connect the remote compares them with [`decide`] and
//! tells the primary: go on with the stream, resync from the map, sync
//! everything, adopt the primary's volume as it stands, or refuse (a split
//! brain, unrelated data, a remote that moved on) — never silently.

use std::fmt;

/// A generation identifier; 0 means "none".
pub type Gen = u64;

/// How many earlier generations each side remembers.
pub const HISTORY: usize = 4;

/// A side's current generation and the ones it moved on from, newest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generations {
    pub current: Gen,
    pub history: [Gen; HISTORY],
}

impl Generations {
    /// A history that starts with `current`.
    pub fn new(current: Gen) -> Self {
        Generations {
            current,
            history: [0; HISTORY],
        }
    }

    /// Moves on to `next`, remembering the current one.
    pub fn advance(&mut self, next: Gen) {
        if self.current != 0 {
            self.history.rotate_right(1);
            self.history[0] = self.current;
        }
        self.current = next;
    }

    /// Whether `g` is an earlier generation of this side.
    pub fn passed(&self, g: Gen) -> bool {
        g != 0 && self.history.contains(&g)
    }

    /// Whether `g` is this side's current or an earlier generation.
    pub fn knows(&self, g: Gen) -> bool {
        g != 0 && (self.current == g || self.passed(g))
    }
}

impl fmt::Display for Generations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.current)?;
        let past: Vec<String> = self
            .history
            .iter()
            .filter(|&&g| g != 0)
            .map(|g| format!("{g:016x}"))
            .collect();
        if !past.is_empty() {
            write!(f, " (after {})", past.join(", "))?;
        }
        Ok(())
    }
}

/// What the operator chose for a remote that has never been synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InitialSync {
    /// Copy every extent (holes and zeros cost nothing on the wire).
    Full,
    /// Compare block digests and send only what differs (a replica seeded
    /// by truck, a rebuilt site, a previous pair).
    Checksum,
    /// Take the replica as equal to the primary's volume without looking.
    /// Only the operator can know that; it is recorded.
    AssumeInSync,
}

impl InitialSync {
    pub const ALL: [InitialSync; 3] = [
        InitialSync::Full,
        InitialSync::Checksum,
        InitialSync::AssumeInSync,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InitialSync::Full => "full",
            InitialSync::Checksum => "checksum",
            InitialSync::AssumeInSync => "assume-in-sync",
        }
    }

    /// The two Hello flag bits that carry it.
    pub fn bits(self) -> u32 {
        match self {
            InitialSync::Full => 0,
            InitialSync::Checksum => 1,
            InitialSync::AssumeInSync => 2,
        }
    }

    pub fn from_bits(b: u32) -> Option<Self> {
        match b {
            0 => Some(InitialSync::Full),
            1 => Some(InitialSync::Checksum),
            2 => Some(InitialSync::AssumeInSync),
            _ => None,
        }
    }
}

impl std::str::FromStr for InitialSync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InitialSync::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| format!("{s:?}: expected full, checksum or assume-in-sync"))
    }
}

impl fmt::Display for InitialSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The primary's side of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryView {
    pub gens: Generations,
    /// The remote generation its changed-block map is relative to (0: none).
    pub map_base: Gen,
    /// It has a local copy to sync from.
    pub has_local: bool,
    pub initial: InitialSync,
}

/// The remote's side of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteView {
    pub gens: Generations,
    /// The generation a sync under way on the replica is bringing it to
    /// (0: none); the replica is inconsistent until that sync ends.
    pub sync_target: Gen,
}

impl RemoteView {
    /// Whether the replica is mid-way through a sync towards `gen`.
    pub fn syncing_to(&self, gen: Gen) -> bool {
        self.sync_target != 0 && self.sync_target == gen
    }
}

/// Why the pair will not mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The remote moved on from the primary's generation (it was promoted or
    /// rolled back): the primary must not overwrite it.
    RemoteAhead,
    /// Both sides wrote since a generation they share.
    SplitBrain,
    /// The two histories have nothing in common.
    Unrelated,
    /// The primary moved on from the replica's generation, has no map, and
    /// no local copy to sync from.
    NoSource,
}

/// What the pair does at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Same history: the stream goes on from the remote's stored seq.
    Resume,
    /// Bring the replica to the primary's volume from the changed-block map
    /// (`all`: every extent), comparing digests first with `checksum`. The
    /// replica is inconsistent until the sync completes.
    Resync {
        all: bool,
        checksum: bool,
    },
    /// Take the replica as the primary's volume as it stands (no local copy
    /// to sync from, or the operator chose `assume-in-sync`).
    Adopt,
    Refuse(Refusal),
}

impl Decision {
    /// The decision and its reason, in one line.
    pub fn explain(&self, p: &PrimaryView, r: &RemoteView) -> String {
        let pg = format!("{:016x}", p.gens.current);
        let rg = format!("{:016x}", r.gens.current);
        match self {
            Decision::Resume => {
                format!("in sync: both sides at generation {pg}; the stream resumes")
            }
            Decision::Resync { all: false, .. } if r.syncing_to(p.gens.current) => format!(
                "resync continues: the replica was part way through a sync to generation {pg}; \
                 the changed-block map holds what is left"
            ),
            Decision::Resync {
                all: false,
                checksum,
            } => {
                format!(
                "resync from the changed-block map: the primary moved on from generation {rg}, \
                 which the replica holds, to {pg}{}",
                if *checksum { ", sending only blocks whose digests differ" } else { "" }
            )
            }
            Decision::Resync {
                all: true,
                checksum,
            } => {
                // Only two cases sync everything: a replica that was never
                // synced (whose generation, once the remote has decided, is
                // one the primary never had) and a primary that passed the
                // replica's generation without a map.
                let why = if r.gens.current == 0 || !p.gens.knows(r.gens.current) {
                    format!("the replica was never synced (initial sync: {})", p.initial)
                } else {
                    format!(
                        "the primary moved on from generation {rg} without a map of its changes"
                    )
                };
                format!(
                    "{} sync of every extent: {why}",
                    if *checksum { "checksum" } else { "full" }
                )
            }
            Decision::Adopt => {
                if p.has_local {
                    format!(
                        "the replica is taken as equal to the primary's volume without a sync \
                         (initial sync: assume-in-sync, as the operator chose); generation {pg}"
                    )
                } else {
                    format!(
                        "the primary has no local copy: its volume is the replica as it stands; generation {pg}"
                    )
                }
            }
            Decision::Refuse(Refusal::RemoteAhead) => format!(
                "refused: the remote moved on from generation {pg} to {rg} (promoted or rolled \
                 back); this primary must not overwrite it"
            ),
            Decision::Refuse(Refusal::SplitBrain) => format!(
                "refused, split brain: both sides changed since a generation they share \
                 (primary {pg}, remote {rg}); nothing is overwritten until the operator decides"
            ),
            Decision::Refuse(Refusal::Unrelated) => {
                format!("refused, unrelated data: primary {pg} and remote {rg} share no generation")
            }
            Decision::Refuse(Refusal::NoSource) => format!(
                "refused: the primary moved on from generation {rg} and has no local copy to \
                 bring the replica up to {pg}"
            ),
        }
    }
}

/// The remote's decision at connect.
pub fn decide(p: &PrimaryView, r: &RemoteView) -> Decision {
    if r.gens.current == 0 {
        if !p.has_local {
            return Decision::Adopt;
        }
        return match p.initial {
            InitialSync::Full => Decision::Resync {
                all: true,
                checksum: false,
            },
            InitialSync::Checksum => Decision::Resync {
                all: true,
                checksum: true,
            },
            InitialSync::AssumeInSync => Decision::Adopt,
        };
    }
    // A sync towards the primary's generation was under way: it goes on
    // from the map, whatever the replica's generation says (an earlier
    // sync's end may have reached it after this one began).
    if r.syncing_to(p.gens.current) {
        return Decision::Resync {
            all: false,
            checksum: false,
        };
    }
    // A map relative to the replica's generation comes first: a repair
    // (same generation on both sides) and a resync interrupted by the link
    // both continue from it.
    if p.map_base != 0 && p.map_base == r.gens.current {
        return Decision::Resync {
            all: false,
            checksum: false,
        };
    }
    if r.gens.current == p.gens.current {
        return Decision::Resume;
    }
    if p.gens.passed(r.gens.current) {
        return if p.has_local {
            Decision::Resync {
                all: true,
                checksum: true,
            }
        } else {
            Decision::Refuse(Refusal::NoSource)
        };
    }
    if r.gens.passed(p.gens.current) {
        return Decision::Refuse(Refusal::RemoteAhead);
    }
    let shared = p.gens.history.iter().any(|&g| r.gens.knows(g))
        || r.gens.history.iter().any(|&g| p.gens.knows(g));
    if shared {
        Decision::Refuse(Refusal::SplitBrain)
    } else {
        Decision::Refuse(Refusal::Unrelated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(current: Gen, history: &[Gen], map_base: Gen) -> PrimaryView {
        let mut gens = Generations::new(0);
        for &g in history.iter().rev() {
            gens.advance(g);
        }
        gens.advance(current);
        PrimaryView {
            gens,
            map_base,
            has_local: true,
            initial: InitialSync::Full,
        }
    }

    fn r(current: Gen, history: &[Gen]) -> RemoteView {
        let mut gens = Generations::new(0);
        for &g in history.iter().rev() {
            gens.advance(g);
        }
        gens.advance(current);
        RemoteView {
            gens,
            sync_target: 0,
        }
    }

    #[test]
    fn the_table() {
        use Decision::*;
        let full = Resync {
            all: true,
            checksum: false,
        };
        assert_eq!(decide(&p(1, &[], 0), &r(0, &[])), full);
        assert_eq!(decide(&p(1, &[], 0), &r(1, &[])), Resume);
        // A repair: same generation, a map relative to it.
        assert_eq!(
            decide(&p(1, &[], 1), &r(1, &[])),
            Resync {
                all: false,
                checksum: false
            }
        );
        // A stale map base (the replica took the new generation): resume.
        assert_eq!(decide(&p(2, &[1], 1), &r(2, &[1])), Resume);
        assert_eq!(
            decide(&p(2, &[1], 1), &r(1, &[])),
            Resync {
                all: false,
                checksum: false
            }
        );
        assert_eq!(
            decide(&p(3, &[2, 1], 0), &r(1, &[])),
            Resync {
                all: true,
                checksum: true
            }
        );
        assert_eq!(
            decide(&p(1, &[], 0), &r(5, &[1])),
            Refuse(Refusal::RemoteAhead)
        );
        assert_eq!(
            decide(&p(2, &[1], 0), &r(5, &[1])),
            Refuse(Refusal::SplitBrain)
        );
        assert_eq!(
            decide(&p(2, &[], 0), &r(5, &[])),
            Refuse(Refusal::Unrelated)
        );
        let mut no_local = p(3, &[1], 0);
        no_local.has_local = false;
        assert_eq!(decide(&no_local, &r(1, &[])), Refuse(Refusal::NoSource));
        assert_eq!(decide(&no_local, &r(0, &[])), Adopt);
        let mut assume = p(1, &[], 0);
        assume.initial = InitialSync::AssumeInSync;
        assert_eq!(decide(&assume, &r(0, &[])), Adopt);
    }

    #[test]
    fn history_keeps_the_newest_and_every_decision_explains_itself() {
        let mut g = Generations::new(1);
        for n in 2..=7 {
            g.advance(n);
        }
        assert_eq!(g.current, 7);
        assert_eq!(g.history, [6, 5, 4, 3]);
        assert!(g.passed(3) && !g.passed(2) && !g.passed(7) && g.knows(7));
        let (pv, rv) = (p(2, &[1], 1), r(1, &[]));
        for d in [
            Decision::Resume,
            Decision::Resync {
                all: false,
                checksum: true,
            },
            Decision::Resync {
                all: true,
                checksum: false,
            },
            Decision::Adopt,
            Decision::Refuse(Refusal::SplitBrain),
            Decision::Refuse(Refusal::RemoteAhead),
            Decision::Refuse(Refusal::Unrelated),
            Decision::Refuse(Refusal::NoSource),
        ] {
            let line = d.explain(&pv, &rv);
            assert!(!line.contains('\n') && line.len() > 20, "{line}");
        }
    }
}
