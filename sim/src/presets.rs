//! Named links: the ones the patent talks about (analog modem, ISDN, T1/E1,
//! T3/E3, bridged 10 Mbit/s, Ethernet 100 Mbit/s, gigabit) with their real
//! line rates, plus long-fat WAN profiles, and [`build`], which starts from
//! a preset and applies overrides for both directions and for each one.
//!
//! Direction: "up" is from the relay's `--listen` side (the side that
//! connects: the primary DTU, or the subscriber of a dial-up line) to its
//! `--forward` side; "down" is the way back. So `analog-56k` is a V.90 modem
//! seen from the subscriber: 33.6 kbit/s up, 56 kbit/s down.
//!
//! Delays are one-way. WAN preset names give the round trip
//! (`wan-100m-40ms` has 20 ms each way). Leased lines get 2 ms one-way (a
//! metro distance plus line equipment; 30 miles of fibre alone is 0.25 ms),
//! LAN presets a few tens of microseconds. Queues are the default of
//! [`LinkConfig::default_queue_bytes`] unless a preset says otherwise.

use std::time::Duration;

use crate::link::{ConfigError, DuplexConfig, LinkConfig, LinkOverrides};

/// A named link profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub up: LinkConfig,
    pub down: LinkConfig,
}

/// A preset name that does not exist, or overrides that make no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PresetError {
    #[error("unknown preset `{0}`; known presets: {known}", known = names().join(", "))]
    Unknown(String),
    #[error("{direction} direction: {source}")]
    Config {
        direction: &'static str,
        source: ConfigError,
    },
}

const K: u64 = 1_000;
const M: u64 = 1_000_000;

fn sym(rate: u64, delay: Duration) -> (LinkConfig, LinkConfig) {
    let c = LinkConfig::new(rate, delay);
    (c.clone(), c)
}

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn us(x: u64) -> Duration {
    Duration::from_micros(x)
}

/// Every preset, in the order they are listed to users.
pub fn all() -> Vec<Preset> {
    let p = |name, description, (up, down): (LinkConfig, LinkConfig)| Preset {
        name,
        description,
        up,
        down,
    };
    let lossy = {
        let mut c = LinkConfig::new(100 * M, ms(15));
        c.jitter = ms(1);
        c.loss = 0.01;
        c.loss_burst = Some(3.0);
        (c.clone(), c)
    };
    // Two bonded 50 Mbit/s lines: a tenth of the packets take the slower
    // member and arrive 4 ms behind the ones sent after them.
    let bonded = {
        let mut c = LinkConfig::new(100 * M, ms(10));
        c.reorder = 0.1;
        c.reorder_delay = ms(4);
        (c.clone(), c)
    };
    // A noisy copper or radio segment: 1 % of packets arrive with a bit
    // flipped (QUIC's AEAD drops them; TCP's checksum does too).
    let corrupt = {
        let mut c = LinkConfig::new(100 * M, ms(10));
        c.corrupt = 0.01;
        (c.clone(), c)
    };
    vec![
        p(
            "analog-56k",
            "V.90 modem: 33.6 kbit/s up, 56 kbit/s down, 50 ms one-way",
            (
                LinkConfig::new(33_600, ms(50)),
                LinkConfig::new(56 * K, ms(50)),
            ),
        ),
        p(
            "isdn-128k",
            "ISDN BRI, two bonded B channels: 128 kbit/s, 10 ms",
            sym(128 * K, ms(10)),
        ),
        p(
            "t1",
            "T1 leased line: 1.544 Mbit/s, 2 ms",
            sym(1_544 * K, ms(2)),
        ),
        p(
            "e1",
            "E1 leased line: 2.048 Mbit/s, 2 ms",
            sym(2_048 * K, ms(2)),
        ),
        p(
            "t3",
            "T3 (DS3): 44.736 Mbit/s, 2 ms",
            sym(44_736 * K, ms(2)),
        ),
        p("e3", "E3: 34.368 Mbit/s, 2 ms", sym(34_368 * K, ms(2))),
        p(
            "bridged-10m",
            "bridged 10 Mbit/s Ethernet between sites, 1 ms",
            sym(10 * M, ms(1)),
        ),
        p(
            "ethernet-100m",
            "Fast Ethernet: 100 Mbit/s, 50 us",
            sym(100 * M, us(50)),
        ),
        p(
            "gige",
            "Gigabit Ethernet: 1 Gbit/s, 20 us",
            sym(1_000 * M, us(20)),
        ),
        p(
            "wan-10m-100ms",
            "10 Mbit/s WAN, 100 ms RTT",
            sym(10 * M, ms(50)),
        ),
        p(
            "wan-100m-40ms",
            "100 Mbit/s WAN, 40 ms RTT",
            sym(100 * M, ms(20)),
        ),
        p(
            "wan-1g-10ms",
            "1 Gbit/s metro WAN, 10 ms RTT",
            sym(1_000 * M, ms(5)),
        ),
        p(
            "transatlantic",
            "1 Gbit/s transatlantic, 80 ms RTT",
            sym(1_000 * M, ms(40)),
        ),
        p(
            "lossy-wan",
            "100 Mbit/s WAN, 30 ms RTT, 1 ms jitter, 1% bursty loss (mean burst 3)",
            lossy,
        ),
        p(
            "bonded-reorder",
            "two bonded lines, 100 Mbit/s, 20 ms RTT: a tenth of the packets 4 ms late (reordered)",
            bonded,
        ),
        p(
            "corrupt-wan",
            "100 Mbit/s WAN, 20 ms RTT, 1% of packets corrupted (one bit flipped)",
            corrupt,
        ),
        p(
            "thin-return",
            "asymmetric: 20 Mbit/s out, 128 kbit/s back (an ISDN return path), 40 ms RTT",
            (
                LinkConfig::new(20 * M, ms(20)),
                LinkConfig::new(128 * K, ms(20)),
            ),
        ),
        p(
            "satellite",
            "geostationary satellite: 2 Mbit/s up, 10 Mbit/s down, 600 ms RTT",
            (
                LinkConfig::new(2 * M, ms(300)),
                LinkConfig::new(10 * M, ms(300)),
            ),
        ),
        p(
            "unlimited",
            "no rate limit, no delay: the relay alone",
            sym(0, Duration::ZERO),
        ),
    ]
}

/// The names of all presets.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|p| p.name).collect()
}

/// The preset called `name` (case-insensitive; `_` and `-` are the same).
pub fn get(name: &str) -> Result<Preset, PresetError> {
    let want = name.trim().to_ascii_lowercase().replace('_', "-");
    all()
        .into_iter()
        .find(|p| p.name == want)
        .ok_or_else(|| PresetError::Unknown(name.to_string()))
}

impl Preset {
    pub fn duplex(&self) -> DuplexConfig {
        DuplexConfig {
            up: self.up.clone(),
            down: self.down.clone(),
        }
    }
}

/// Builds a link from an optional preset (none: unlimited, no delay), then
/// `both` overrides, then per-direction ones; validates the result.
pub fn build(
    preset: Option<&str>,
    both: &LinkOverrides,
    up: &LinkOverrides,
    down: &LinkOverrides,
) -> Result<DuplexConfig, PresetError> {
    let mut d = match preset {
        Some(name) => get(name)?.duplex(),
        None => DuplexConfig::symmetric(LinkConfig::default()),
    };
    both.apply(&mut d.up);
    both.apply(&mut d.down);
    up.apply(&mut d.up);
    down.apply(&mut d.down);
    d.up.validate().map_err(|source| PresetError::Config {
        direction: "up",
        source,
    })?;
    d.down.validate().map_err(|source| PresetError::Config {
        direction: "down",
        source,
    })?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_real_line_rates() {
        let rate = |n: &str| (get(n).unwrap().up.rate_bps, get(n).unwrap().down.rate_bps);
        assert_eq!(rate("analog-56k"), (33_600, 56_000));
        assert_eq!(rate("isdn-128k"), (128_000, 128_000));
        assert_eq!(rate("t1"), (1_544_000, 1_544_000));
        assert_eq!(rate("e1"), (2_048_000, 2_048_000));
        assert_eq!(rate("t3"), (44_736_000, 44_736_000));
        assert_eq!(rate("e3"), (34_368_000, 34_368_000));
        assert_eq!(rate("bridged-10m").0, 10_000_000);
        assert_eq!(rate("ethernet-100m").0, 100_000_000);
        assert_eq!(rate("gige").0, 1_000_000_000);
        assert_eq!(get("transatlantic").unwrap().duplex().rtt(), ms(80));
        assert_eq!(get("wan-100m-40ms").unwrap().duplex().rtt(), ms(40));
        assert_eq!(get("wan-1g-10ms").unwrap().duplex().rtt(), ms(10));
        let lossy = get("lossy-wan").unwrap();
        assert!((lossy.up.mean_loss() - 0.01).abs() < 1e-12);
    }

    #[test]
    fn every_preset_is_valid_and_named_uniquely() {
        let mut names = names();
        for p in all() {
            p.up.validate().unwrap();
            p.down.validate().unwrap();
        }
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(get("T1").is_ok());
        assert!(get("wan_1g_10ms").is_ok());
        assert!(matches!(get("t2"), Err(PresetError::Unknown(_))));
    }

    #[test]
    fn overrides_apply_in_order() {
        let both = LinkOverrides::parse_list("loss=0.1%,delay=10ms").unwrap();
        let up = LinkOverrides::parse_list("rate=1M").unwrap();
        let d = build(Some("t1"), &both, &up, &LinkOverrides::default()).unwrap();
        assert_eq!(d.up.rate_bps, 1_000_000);
        assert_eq!(d.down.rate_bps, 1_544_000);
        assert_eq!(d.up.delay, ms(10));
        assert!((d.down.loss - 0.001).abs() < 1e-12);
        let bad = LinkOverrides::parse_list("loss-burst=0.5,loss=1%").unwrap();
        assert!(matches!(
            build(
                Some("t1"),
                &LinkOverrides::default(),
                &LinkOverrides::default(),
                &bad
            ),
            Err(PresetError::Config {
                direction: "down",
                ..
            })
        ));
        // Replacing the mean loss of a bursty preset keeps its burst length.
        let l = LinkOverrides::parse_list("loss=2%").unwrap();
        let d = build(
            Some("lossy-wan"),
            &l,
            &LinkOverrides::default(),
            &LinkOverrides::default(),
        )
        .unwrap();
        assert!((d.up.mean_loss() - 0.02).abs() < 1e-12);
        assert_eq!(d.up.loss_burst, Some(3.0));
    }
}
