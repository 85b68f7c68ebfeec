//! The link model: one direction of an emulated link ([`Link`]) as a pure,
//! seeded state machine on an abstract clock, its parameters
//! ([`LinkConfig`]), its loss processes and outage schedule, and its
//! counters. Both the real-time relay (`linkemu`) and the deterministic
//! simulator drive it; neither the model nor its tests read a clock.
//!
//! Directions: "up" carries packets from the side that connects (the
//! relay's `--listen` side, normally the primary DTU) to the side it connects
//! to (`--forward`, the remote DTU); "down" carries the way back.

mod config;
mod loss;
mod model;
mod outage;
mod stats;

pub use config::{
    ConfigError, LinkConfig, LinkOverrides, LossModel, MAX_LINK_DELAY, MAX_OVERHEAD_BYTES,
    MAX_QUEUE_BYTES, MIN_DEFAULT_QUEUE_BYTES, MIN_DEFAULT_QUEUE_TIME,
};
pub use loss::GilbertElliott;
pub use model::{Delivery, Link, Verdict};
pub use outage::{Outage, MAX_SCHEDULE};
pub use stats::{DelayStats, DropCause, LinkStats};

use serde::{Deserialize, Serialize};

/// The configuration of both directions of a link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuplexConfig {
    /// From the connecting side (`--listen`) to the far side (`--forward`).
    pub up: LinkConfig,
    /// From the far side back to the connecting side.
    pub down: LinkConfig,
}

impl DuplexConfig {
    /// The same configuration in both directions.
    pub fn symmetric(cfg: LinkConfig) -> Self {
        Self {
            up: cfg.clone(),
            down: cfg,
        }
    }

    /// Round-trip propagation delay (no queueing, no serialization).
    pub fn rtt(&self) -> std::time::Duration {
        self.up.delay + self.down.delay
    }
}

/// The seeds of the two directions, derived from one user seed so that the
/// directions draw independent random streams.
pub fn direction_seeds(seed: u64) -> (u64, u64) {
    (
        seed,
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0xD1B5_4A32_D192_ED03),
    )
}

/// Both directions of a link.
pub struct Duplex<T = ()> {
    pub up: Link<T>,
    pub down: Link<T>,
}

impl<T: Clone> Duplex<T> {
    pub fn new(cfg: DuplexConfig, seed: u64) -> Result<Self, ConfigError> {
        let (su, sd) = direction_seeds(seed);
        Ok(Self {
            up: Link::new(cfg.up, su)?,
            down: Link::new(cfg.down, sd)?,
        })
    }

    /// The earlier of the two directions' next events.
    pub fn next_event(&self) -> Option<std::time::Duration> {
        match (self.up.next_event(), self.down.next_event()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests;
