//! Planted bugs: deliberate mistakes the deterministic simulator must catch,
//! so that a green simulator run means something. Each is a one-line
//! deviation at the place where the real code makes the decision, active
//! only when the `planted-bugs` feature is compiled in (only the
//! simulator's tests enable it, as a dev-dependency feature, so release
//! builds never contain it) and then only on a thread that planted it.

/// The bugs that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bug {
    /// The appender reports records as `buffered` before its sync returns.
    BufferedBeforeFlush,
    /// The receiver releases a complete seq although an earlier one is not.
    ReleaseOutOfOrder,
    /// The receiver takes a resent seq it already released as new, so the
    /// remote applies it a second time.
    ApplyTwice,
    /// Replaying the nvbuf into the primary's local copy after a restart
    /// skips trims.
    ForgetTrimOnReplay,
    /// The remote's undo journal saves nothing before a trim, so an as-of
    /// view shows zeros where the trimmed blocks held data.
    UndoSkipsTrim,
    /// A restore installs an extent it fetched although a host write
    /// reached that extent locally during the fetch.
    RestoreOverWrite,
    /// After a failover, the new primary's resync leaves out the ranges
    /// the old primary's replica lists as its own changes.
    FailbackForgetsExtents,
}

impl Bug {
    /// Every plantable bug.
    pub const ALL: [Bug; 7] = [
        Bug::BufferedBeforeFlush,
        Bug::ReleaseOutOfOrder,
        Bug::ApplyTwice,
        Bug::ForgetTrimOnReplay,
        Bug::UndoSkipsTrim,
        Bug::RestoreOverWrite,
        Bug::FailbackForgetsExtents,
    ];
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Whether `bug` is planted on this thread (always false without the
/// `planted-bugs` feature).
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.with(|p| p.get() == Some(bug))
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

/// Plants `bug` (or none) on this thread.
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}
