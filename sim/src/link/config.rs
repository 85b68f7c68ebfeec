//! The parameters of one direction of an emulated link ([`LinkConfig`]),
//! their defaults, validation, and the flag-by-flag overrides
//! ([`LinkOverrides`]) that the CLI and the presets apply on top of them.
//! Values are plain numbers here (bit/s, seconds as `Duration`, fractions);
//! [`dtu_proto::units`] turns human text into them.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::loss::GilbertElliott;
use super::outage::Outage;
use dtu_proto::units::{self, UnitError};

/// A configuration that makes no sense; the message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {msg}")]
    Invalid { field: &'static str, msg: String },
    #[error("{0}")]
    Unit(#[from] UnitError),
    #[error("unknown link parameter `{0}` (known: {known})", known = LinkOverrides::KEYS.join(", "))]
    UnknownKey(String),
    #[error("`{0}` should be KEY=VALUE")]
    NotKeyValue(String),
}

/// Longest one-way delay, jitter and reorder delay. A geostationary
/// satellite hop is 270 ms one way; beyond some seconds a link is down,
/// which outages model. The relay holds every packet in flight that long,
/// so this also bounds its memory.
pub const MAX_LINK_DELAY: Duration = Duration::from_secs(30);
/// Largest queue limit a user can set (the relay keeps queued packets in
/// memory); models built in code may use more to mean "no drops".
pub const MAX_QUEUE_BYTES: u64 = 1 << 30;
/// Largest per-packet overhead: more header bytes than a whole Ethernet
/// frame's payload is a typo.
pub const MAX_OVERHEAD_BYTES: u64 = 1500;

/// Smallest default queue: eight full-size (1500-byte) packets, so that even
/// a slow link absorbs a small burst.
pub const MIN_DEFAULT_QUEUE_BYTES: u64 = 8 * 1500;
/// The default queue holds at least this long at line rate (about what a
/// router or a Linux interface queue of 1000 packets holds at 100 Mbit/s).
pub const MIN_DEFAULT_QUEUE_TIME: Duration = Duration::from_millis(100);

/// One direction of a link. Probabilities are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// Line rate in bit/s; 0 means unlimited (no serialization delay, no queue).
    pub rate_bps: u64,
    /// Per-packet bytes counted on the wire besides the payload (headers,
    /// framing). The model default is 0; the relay adds IP/UDP/TCP headers.
    pub overhead_bytes: u32,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Delay variation: each packet gets `delay + U(-jitter, +jitter)`;
    /// packets still leave in order unless `reorder` is set.
    pub jitter: Duration,
    /// Drop-tail queue limit in bytes (wire bytes: payload + overhead).
    /// `None` picks [`LinkConfig::default_queue_bytes`].
    pub queue_bytes: Option<u64>,
    /// Independent random loss, or the mean loss of the bursty model when
    /// `loss_burst` is set.
    pub loss: f64,
    /// Mean length (in packets) of a loss burst: turns `loss` into a
    /// Gilbert model with that mean loss and mean burst length.
    pub loss_burst: Option<f64>,
    /// Explicit Gilbert–Elliott parameters; take precedence over `loss`.
    pub gilbert_elliott: Option<GilbertElliott>,
    /// Probability that a delivered packet is delivered twice.
    pub duplicate: f64,
    /// Probability that a packet is held back by `reorder_delay` and so
    /// overtaken by the packets behind it.
    pub reorder: f64,
    /// Extra delay of a reordered packet.
    pub reorder_delay: Duration,
    /// Probability that a delivered packet has one bit flipped.
    pub corrupt: f64,
    /// Times when the link is down.
    pub outages: Vec<Outage>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            rate_bps: 0,
            overhead_bytes: 0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            queue_bytes: None,
            loss: 0.0,
            loss_burst: None,
            gilbert_elliott: None,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            corrupt: 0.0,
            outages: Vec::new(),
        }
    }
}

/// How packets are lost, resolved from `loss`, `loss_burst`, `gilbert_elliott`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossModel {
    None,
    Random(f64),
    Bursty(GilbertElliott),
}

impl LinkConfig {
    /// A link of the given rate and one-way delay, nothing else.
    pub fn new(rate_bps: u64, delay: Duration) -> Self {
        Self {
            rate_bps,
            delay,
            ..Self::default()
        }
    }

    /// The queue used when none is configured: the bytes the link carries in
    /// one round trip (2 × delay) or in 100 ms, whichever is more, and at
    /// least eight 1500-byte packets. Unlimited links (rate 0) never queue.
    pub fn default_queue_bytes(&self) -> u64 {
        if self.rate_bps == 0 {
            return u64::MAX;
        }
        let span = self.delay.saturating_mul(2).max(MIN_DEFAULT_QUEUE_TIME);
        let bdp = (self.rate_bps as u128).saturating_mul(span.as_nanos()) / 8 / 1_000_000_000;
        u64::try_from(bdp)
            .unwrap_or(u64::MAX)
            .max(MIN_DEFAULT_QUEUE_BYTES)
    }

    /// The queue limit in force.
    pub fn queue_limit(&self) -> u64 {
        self.queue_bytes
            .unwrap_or_else(|| self.default_queue_bytes())
    }

    /// The loss process in force.
    pub fn loss_model(&self) -> LossModel {
        if let Some(ge) = self.gilbert_elliott {
            return LossModel::Bursty(ge);
        }
        if self.loss <= 0.0 {
            return LossModel::None;
        }
        match self.loss_burst {
            Some(b) => LossModel::Bursty(GilbertElliott::from_mean(self.loss, b)),
            None => LossModel::Random(self.loss),
        }
    }

    /// Mean fraction of packets the loss process drops.
    pub fn mean_loss(&self) -> f64 {
        match self.loss_model() {
            LossModel::None => 0.0,
            LossModel::Random(p) => p,
            LossModel::Bursty(ge) => ge.mean_loss(),
        }
    }

    /// Checks ranges; the model assumes a validated config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let prob = |field: &'static str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    field,
                    msg: format!("{v} is not a probability between 0 and 1"),
                })
            }
        };
        let delay = |field: &'static str, d: Duration| {
            if d <= MAX_LINK_DELAY {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    field,
                    msg: format!(
                        "{} is longer than the maximum of {}",
                        units::format_duration(d),
                        units::format_duration(MAX_LINK_DELAY)
                    ),
                })
            }
        };
        delay("delay", self.delay)?;
        delay("jitter", self.jitter)?;
        delay("reorder-delay", self.reorder_delay)?;
        if self.rate_bps > units::MAX_RATE_BPS {
            return Err(ConfigError::Invalid {
                field: "rate",
                msg: format!(
                    "{} is faster than the maximum of {}",
                    units::format_rate(self.rate_bps),
                    units::format_rate(units::MAX_RATE_BPS)
                ),
            });
        }
        if u64::from(self.overhead_bytes) > MAX_OVERHEAD_BYTES {
            return Err(ConfigError::Invalid {
                field: "overhead",
                msg: format!(
                    "{} bytes is more than {MAX_OVERHEAD_BYTES}",
                    self.overhead_bytes
                ),
            });
        }
        prob("loss", self.loss)?;
        prob("duplicate", self.duplicate)?;
        prob("reorder", self.reorder)?;
        prob("corrupt", self.corrupt)?;
        if let Some(b) = self.loss_burst {
            if !(b >= 1.0 && b.is_finite()) {
                return Err(ConfigError::Invalid {
                    field: "loss-burst",
                    msg: format!("{b} is not a mean burst length of at least 1 packet"),
                });
            }
            if self.loss >= 1.0 {
                return Err(ConfigError::Invalid {
                    field: "loss-burst",
                    msg: "a bursty loss needs a mean loss below 100%".into(),
                });
            }
        }
        if let Some(ge) = &self.gilbert_elliott {
            ge.validate()?;
        }
        if self.queue_bytes == Some(0) {
            return Err(ConfigError::Invalid {
                field: "queue",
                msg: "a queue of 0 bytes drops everything; give at least one packet's size".into(),
            });
        }
        for o in &self.outages {
            o.validate()?;
        }
        Ok(())
    }

    /// One line describing the configuration, e.g. for the relay's banner.
    pub fn describe(&self) -> String {
        let mut parts = vec![
            format!("rate {}", units::format_rate(self.rate_bps)),
            format!("delay {}", units::format_duration(self.delay)),
        ];
        if !self.jitter.is_zero() {
            parts.push(format!("jitter {}", units::format_duration(self.jitter)));
        }
        if self.rate_bps != 0 {
            parts.push(format!("queue {}", units::format_bytes(self.queue_limit())));
        }
        match self.loss_model() {
            LossModel::None => {}
            LossModel::Random(p) => parts.push(format!("loss {}", units::format_probability(p))),
            LossModel::Bursty(ge) => parts.push(format!(
                "bursty loss {} (mean burst {:.1} pkts; p={:.4} r={:.4} bad={} good={})",
                units::format_probability(ge.mean_loss()),
                ge.mean_burst(),
                ge.p,
                ge.r,
                units::format_probability(ge.loss_bad),
                units::format_probability(ge.loss_good)
            )),
        }
        if self.duplicate > 0.0 {
            parts.push(format!("dup {}", units::format_probability(self.duplicate)));
        }
        if self.reorder > 0.0 {
            parts.push(format!(
                "reorder {} (+{})",
                units::format_probability(self.reorder),
                units::format_duration(self.reorder_delay)
            ));
        }
        if self.corrupt > 0.0 {
            parts.push(format!(
                "corrupt {}",
                units::format_probability(self.corrupt)
            ));
        }
        if self.overhead_bytes > 0 {
            parts.push(format!("overhead {}B/pkt", self.overhead_bytes));
        }
        for o in &self.outages {
            parts.push(format!("outage {o}"));
        }
        parts.join(", ")
    }
}

/// Field-by-field overrides of a [`LinkConfig`]; `None` keeps the base value.
/// Outages given here are appended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkOverrides {
    pub rate_bps: Option<u64>,
    pub overhead_bytes: Option<u32>,
    pub delay: Option<Duration>,
    pub jitter: Option<Duration>,
    pub queue_bytes: Option<u64>,
    pub loss: Option<f64>,
    pub loss_burst: Option<f64>,
    pub gilbert_elliott: Option<GilbertElliott>,
    pub duplicate: Option<f64>,
    pub reorder: Option<f64>,
    pub reorder_delay: Option<Duration>,
    pub corrupt: Option<f64>,
    pub outages: Vec<Outage>,
}

impl LinkOverrides {
    /// Keys accepted by [`LinkOverrides::set`] (and the relay's `--up`/`--down`).
    pub const KEYS: &'static [&'static str] = &[
        "rate",
        "overhead",
        "delay",
        "jitter",
        "queue",
        "loss",
        "loss-burst",
        "ge",
        "duplicate",
        "reorder",
        "reorder-delay",
        "corrupt",
        "outage",
    ];

    /// Sets one field from its textual form, e.g. `("rate", "1.544M")`.
    /// Every error names the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let field = match Self::KEYS.iter().copied().find(|k| *k == key) {
            Some(k) => k,
            None => match key {
                "burst" => "loss-burst",
                "gilbert-elliott" => "ge",
                "dup" => "duplicate",
                _ => return Err(ConfigError::UnknownKey(key.to_string())),
            },
        };
        let named = |e: UnitError| ConfigError::Invalid {
            field,
            msg: e.to_string(),
        };
        let delay = |v: &str| units::parse_duration_within(v, Duration::ZERO, MAX_LINK_DELAY);
        match field {
            "rate" => self.rate_bps = Some(units::parse_rate(value).map_err(named)?),
            "overhead" => {
                let b = units::parse_bytes_within(value, 0, MAX_OVERHEAD_BYTES).map_err(named)?;
                self.overhead_bytes = Some(b as u32);
            }
            "delay" => self.delay = Some(delay(value).map_err(named)?),
            "jitter" => self.jitter = Some(delay(value).map_err(named)?),
            "queue" => {
                self.queue_bytes =
                    Some(units::parse_bytes_within(value, 1, MAX_QUEUE_BYTES).map_err(named)?)
            }
            "loss" => self.loss = Some(units::parse_probability(value).map_err(named)?),
            "loss-burst" => {
                self.loss_burst = Some(value.trim().parse().map_err(|_| ConfigError::Invalid {
                    field: "loss-burst",
                    msg: format!("`{value}` is not a number of packets"),
                })?)
            }
            "ge" => self.gilbert_elliott = Some(value.parse()?),
            "duplicate" => self.duplicate = Some(units::parse_probability(value).map_err(named)?),
            "reorder" => self.reorder = Some(units::parse_probability(value).map_err(named)?),
            "reorder-delay" => self.reorder_delay = Some(delay(value).map_err(named)?),
            "corrupt" => self.corrupt = Some(units::parse_probability(value).map_err(named)?),
            "outage" => self.outages.push(value.parse()?),
            other => return Err(ConfigError::UnknownKey(other.to_string())),
        }
        Ok(())
    }

    /// Parses `key=value,key=value` (outages may repeat), e.g.
    /// `rate=33.6k,delay=60ms,loss=1%`.
    pub fn parse_list(spec: &str) -> Result<Self, ConfigError> {
        let mut o = Self::default();
        o.merge_list(spec)?;
        Ok(o)
    }

    /// Adds the settings of a `key=value,...` list to these overrides.
    pub fn merge_list(&mut self, spec: &str) -> Result<(), ConfigError> {
        // Gilbert–Elliott values contain commas themselves; they use ':' in lists.
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| ConfigError::NotKeyValue(item.to_string()))?;
            let v = if matches!(k.trim(), "ge" | "gilbert-elliott") {
                v.replace(':', ",")
            } else {
                v.to_string()
            };
            self.set(k.trim(), &v)?;
        }
        Ok(())
    }

    /// Applies these overrides on top of `base`.
    pub fn apply(&self, base: &mut LinkConfig) {
        if let Some(v) = self.rate_bps {
            base.rate_bps = v;
        }
        if let Some(v) = self.overhead_bytes {
            base.overhead_bytes = v;
        }
        if let Some(v) = self.delay {
            base.delay = v;
        }
        if let Some(v) = self.jitter {
            base.jitter = v;
        }
        if let Some(v) = self.queue_bytes {
            base.queue_bytes = Some(v);
        }
        if let Some(v) = self.loss {
            base.loss = v;
            // A new mean loss replaces an explicit Gilbert–Elliott of the preset.
            if self.gilbert_elliott.is_none() {
                base.gilbert_elliott = None;
            }
        }
        if let Some(v) = self.loss_burst {
            base.loss_burst = Some(v);
            if self.gilbert_elliott.is_none() {
                base.gilbert_elliott = None;
            }
        }
        if let Some(v) = self.gilbert_elliott {
            base.gilbert_elliott = Some(v);
        }
        if let Some(v) = self.duplicate {
            base.duplicate = v;
        }
        if let Some(v) = self.reorder {
            base.reorder = v;
        }
        if let Some(v) = self.reorder_delay {
            base.reorder_delay = v;
        }
        if let Some(v) = self.corrupt {
            base.corrupt = v;
        }
        base.outages.extend(self.outages.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_queue_is_bdp_based() {
        // 1.544 Mbit/s × 100 ms.
        let t1 = LinkConfig::new(1_544_000, Duration::from_millis(5));
        assert_eq!(t1.default_queue_bytes(), 19_300);
        let modem = LinkConfig::new(33_600, Duration::from_millis(50));
        assert_eq!(modem.default_queue_bytes(), MIN_DEFAULT_QUEUE_BYTES);
        // 1 Gbit/s × 200 ms RTT = 25 MB.
        let geo = LinkConfig::new(1_000_000_000, Duration::from_millis(100));
        assert_eq!(geo.default_queue_bytes(), 25_000_000);
        let lan = LinkConfig::new(1_000_000_000, Duration::ZERO);
        assert_eq!(lan.default_queue_bytes(), 12_500_000);
    }

    #[test]
    fn overrides_from_list() {
        let o = LinkOverrides::parse_list(
            "rate=33.6k, delay=60ms,loss=1%,loss-burst=3,outage=10s..12s",
        )
        .unwrap();
        let mut c = LinkConfig::default();
        o.apply(&mut c);
        assert_eq!(c.rate_bps, 33_600);
        assert_eq!(c.delay, Duration::from_millis(60));
        assert!((c.mean_loss() - 0.01).abs() < 1e-9);
        assert!(matches!(c.loss_model(), LossModel::Bursty(_)));
        assert_eq!(c.outages.len(), 1);
        assert!(LinkOverrides::parse_list("speed=1M").is_err());
        assert!(LinkOverrides::parse_list("rate").is_err());
        let ge = LinkOverrides::parse_list("ge=1%:20%").unwrap();
        assert!(ge.gilbert_elliott.is_some());
    }

    #[test]
    fn validation() {
        let mut c = LinkConfig {
            loss: 1.5,
            ..LinkConfig::default()
        };
        assert!(c.validate().is_err());
        c.loss = 0.01;
        c.loss_burst = Some(0.5);
        assert!(c.validate().is_err());
        c.loss_burst = Some(4.0);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn absurd_values_are_errors_that_name_the_key() {
        for (key, value) in [
            ("delay", "1e19s"),
            ("delay", "31s"),
            ("jitter", "-1ms"),
            ("reorder-delay", "nan"),
            ("rate", "1e30"),
            ("rate", "10Tbit"),
            ("queue", "0"),
            ("queue", "2GiB"),
            ("overhead", "1e12"),
        ] {
            let e = LinkOverrides::default()
                .set(key, value)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{key}={value}: {e}");
        }
        let c = LinkConfig {
            delay: Duration::MAX,
            ..LinkConfig::default()
        };
        assert!(c.validate().is_err());
        let c = LinkConfig {
            rate_bps: u64::MAX,
            delay: Duration::MAX,
            ..LinkConfig::default()
        };
        assert_eq!(c.default_queue_bytes(), u64::MAX);
    }
}
