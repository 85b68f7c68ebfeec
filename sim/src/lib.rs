//! dtu-sim: the link emulation rig of dtu. [`link`] is a seeded link model
//! on an abstract clock (rate, delay, jitter, queue, loss, duplication,
//! reordering, corruption, outages); [`presets`] names the links of the
//! patent and long-fat WAN profiles; [`relay`] runs the model in real time
//! between UDP and TCP sockets (the `linkemu` binary); [`host`] models the
//! primary server's write cache draining into a mirror device; [`plot`]
//! draws its time series (the `dtu-plot` binary).

pub mod host;
pub mod link;
#[cfg(feature = "plot")]
pub mod plot;
pub mod presets;
pub mod relay;
