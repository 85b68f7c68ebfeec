//! Bursty loss: the Gilbert–Elliott two-state Markov model. In the good
//! state a packet is lost with probability `loss_good`, in the bad state with
//! `loss_bad`; after each packet the state flips good→bad with probability
//! `p` and bad→good with probability `r`. With `loss_bad = 1` and
//! `loss_good = 0` (the simple Gilbert model) the mean loss is `p / (p + r)`
//! and the mean burst of consecutive losses is `1 / r` packets, which is how
//! `--loss L --loss-burst B` is turned into parameters.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use super::config::ConfigError;
use dtu_proto::units;

/// Parameters of the Gilbert–Elliott model (all probabilities in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state after a packet.
    pub p: f64,
    /// Probability of moving from the bad to the good state after a packet.
    pub r: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
}

impl GilbertElliott {
    /// The simple Gilbert model with mean loss `loss` and mean burst length
    /// `burst` packets (`burst` ≥ 1, `loss` < 1).
    pub fn from_mean(loss: f64, burst: f64) -> Self {
        let r = (1.0 / burst.max(1.0)).min(1.0);
        let p = if loss >= 1.0 {
            1.0
        } else {
            (loss * r / (1.0 - loss)).min(1.0)
        };
        Self {
            p,
            r,
            loss_bad: 1.0,
            loss_good: 0.0,
        }
    }

    /// Long-run share of packets in the bad state.
    pub fn bad_share(&self) -> f64 {
        if self.p + self.r == 0.0 {
            0.0
        } else {
            self.p / (self.p + self.r)
        }
    }

    /// Long-run loss probability.
    pub fn mean_loss(&self) -> f64 {
        let b = self.bad_share();
        b * self.loss_bad + (1.0 - b) * self.loss_good
    }

    /// Mean number of packets spent in the bad state per visit.
    pub fn mean_burst(&self) -> f64 {
        if self.r == 0.0 {
            f64::INFINITY
        } else {
            1.0 / self.r
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("p", self.p),
            ("r", self.r),
            ("loss in bad state", self.loss_bad),
            ("loss in good state", self.loss_good),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(ConfigError::Invalid {
                    field: "gilbert-elliott",
                    msg: format!("{name} = {v} is not a probability between 0 and 1"),
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for GilbertElliott {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            units::format_probability(self.p),
            units::format_probability(self.r),
            units::format_probability(self.loss_bad),
            units::format_probability(self.loss_good)
        )
    }
}

/// `p,r[,loss_bad[,loss_good]]`, each a probability (`1%` or `0.01`);
/// `loss_bad` defaults to 100 %, `loss_good` to 0 %.
impl FromStr for GilbertElliott {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if !(2..=4).contains(&parts.len()) {
            return Err(ConfigError::Invalid {
                field: "gilbert-elliott",
                msg: format!("`{s}`: expected p,r[,loss_bad[,loss_good]], e.g. 1%,25%,100%,0%"),
            });
        }
        let ge = Self {
            p: units::parse_probability(parts[0])?,
            r: units::parse_probability(parts[1])?,
            loss_bad: parts
                .get(2)
                .map(|v| units::parse_probability(v))
                .transpose()?
                .unwrap_or(1.0),
            loss_good: parts
                .get(3)
                .map(|v| units::parse_probability(v))
                .transpose()?
                .unwrap_or(0.0),
        };
        ge.validate()?;
        Ok(ge)
    }
}

/// The running state of a Gilbert–Elliott process.
#[derive(Debug, Clone)]
pub(crate) struct GeState {
    params: GilbertElliott,
    bad: bool,
}

impl GeState {
    pub(crate) fn new(params: GilbertElliott) -> Self {
        Self { params, bad: false }
    }

    /// Decides the fate of one packet, then steps the chain.
    pub(crate) fn lose<R: Rng>(&mut self, rng: &mut R) -> bool {
        let pl = if self.bad {
            self.params.loss_bad
        } else {
            self.params.loss_good
        };
        let lost = pl > 0.0 && rng.gen::<f64>() < pl;
        let flip = if self.bad {
            self.params.r
        } else {
            self.params.p
        };
        if flip > 0.0 && rng.gen::<f64>() < flip {
            self.bad = !self.bad;
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn from_mean_gives_mean_and_burst() {
        let ge = GilbertElliott::from_mean(0.01, 4.0);
        assert!((ge.mean_loss() - 0.01).abs() < 1e-12);
        assert!((ge.mean_burst() - 4.0).abs() < 1e-12);
    }

    #[test]
    fn simulated_loss_and_burst_match_parameters() {
        let ge = GilbertElliott::from_mean(0.05, 5.0);
        let mut st = GeState::new(ge);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 400_000;
        let (mut lost, mut bursts, mut prev) = (0u64, 0u64, false);
        for _ in 0..n {
            let l = st.lose(&mut rng);
            if l {
                lost += 1;
                if !prev {
                    bursts += 1;
                }
            }
            prev = l;
        }
        let rate = lost as f64 / n as f64;
        let burst = lost as f64 / bursts as f64;
        assert!((rate - 0.05).abs() < 0.005, "loss {rate}");
        assert!((burst - 5.0).abs() < 0.5, "burst {burst}");
    }

    #[test]
    fn parse() {
        let ge: GilbertElliott = "1%,25%".parse().unwrap();
        assert_eq!(ge.loss_bad, 1.0);
        assert_eq!(ge.loss_good, 0.0);
        let ge: GilbertElliott = "0.01,0.2,0.8,0.001".parse().unwrap();
        assert_eq!(ge.loss_bad, 0.8);
        assert!("1%".parse::<GilbertElliott>().is_err());
        assert!("1%,200%".parse::<GilbertElliott>().is_err());
    }
}
