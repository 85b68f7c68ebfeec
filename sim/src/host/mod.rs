//! The host workload model: the primary server the patent reasons about.
//! An application writes in bursts into a write cache of fixed capacity;
//! the cache drains into a mirror device (anything implementing
//! [`MirrorSink`]: the DTU's `Primary`, or [`RateSink`]) with a bounded
//! number of writes outstanding; the host reports its dirty % to the
//! device, and the run is recorded as a [`TimeSeries`] (dirty %,
//! throughput, acknowledgement latency) for CSV, JSON and `dtu-plot`.

mod data;
mod model;
mod series;
mod sinks;
mod workload;
mod zipf;

pub use data::{snap_ratio, DataGen};
pub use model::{run, HostConfig, HostError};
pub use series::{quantile, Sample, SeriesError, Summary, TimeSeries};
pub use sinks::RateSink;
pub use workload::{IdleGap, OffsetPattern, PlannedWrite, Workload, WorkloadConfig};
pub use zipf::Zipf;

/// The mirror device as the host sees it.
pub trait MirrorSink: Send + Sync {
    /// Starts a write; `done` is called (from any thread, possibly before
    /// this returns) when the mirror device acknowledges it.
    fn start_write(
        &self,
        offset: u64,
        data: Vec<u8>,
        done: Box<dyn FnOnce(Result<(), String>) + Send>,
    );

    /// The host's dirty cache share, 0–100, reported periodically.
    fn report_dirty(&self, _pct: f64) {}
}

#[cfg(test)]
mod tests;
