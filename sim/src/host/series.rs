//! The host model's output: one [`Sample`] per interval (dirty %, the
//! application's and the sink's throughput, acknowledgement latency
//! percentiles, stall share) plus a run [`Summary`], written as CSV (one
//! row per sample) or JSON (everything), and read back from JSON by
//! `dtu-plot`.

use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::Path;

/// One interval of a run. Throughputs are in Mbit/s; percentiles are
/// `None` in an interval where no write was acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// End of the interval, seconds since the start of the run.
    pub t_s: f64,
    /// Dirty share of the cache at the end of the interval, 0–100.
    pub dirty_pct: f64,
    /// Highest dirty share seen during the interval.
    pub dirty_peak_pct: f64,
    /// What the application wrote into the cache.
    pub app_mbps: f64,
    /// What the mirror device acknowledged.
    pub sink_mbps: f64,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    /// Writes issued to the sink and not yet acknowledged, at the end.
    pub outstanding: u64,
    /// Share of the interval the application was blocked on a full cache, 0–100.
    pub stall_pct: f64,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub duration_s: f64,
    pub app_bytes: u64,
    pub acked_bytes: u64,
    pub writes: u64,
    pub failed_writes: u64,
    pub stall_s: f64,
    pub max_dirty_pct: f64,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    /// Measured snap ratio of the data written (sampled).
    pub compress_ratio: f64,
}

/// A whole run: what was asked, what happened over time, the totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeSeries {
    /// A name for the run, used as the legend in plots.
    pub scenario: String,
    /// The configuration, as JSON (free-form so any driver can record its own).
    pub config: serde_json::Value,
    pub samples: Vec<Sample>,
    pub summary: Summary,
}

/// Reading or writing a time series failed.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: not a dtu-sim time series: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_default()
}

impl TimeSeries {
    pub const CSV_HEADER: &'static str =
        "t_s,dirty_pct,dirty_peak_pct,app_mbps,sink_mbps,ack_p50_ms,ack_p99_ms,outstanding,stall_pct";

    /// The samples as CSV, with a header line.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(Self::CSV_HEADER);
        s.push('\n');
        for x in &self.samples {
            s.push_str(&format!(
                "{:.3},{:.3},{:.3},{:.4},{:.4},{},{},{},{:.1}\n",
                x.t_s,
                x.dirty_pct,
                x.dirty_peak_pct,
                x.app_mbps,
                x.sink_mbps,
                opt(x.ack_p50_ms),
                opt(x.ack_p99_ms),
                x.outstanding,
                x.stall_pct
            ));
        }
        s
    }

    pub fn write_csv(&self, path: &Path) -> Result<(), SeriesError> {
        write_file(path, self.to_csv().as_bytes())
    }

    pub fn write_json(&self, path: &Path) -> Result<(), SeriesError> {
        let body = serde_json::to_vec_pretty(self).map_err(|source| SeriesError::Json {
            path: path.display().to_string(),
            source,
        })?;
        write_file(path, &body)
    }

    pub fn read_json(path: &Path) -> Result<Self, SeriesError> {
        let body = std::fs::read(path).map_err(|source| SeriesError::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&body).map_err(|source| SeriesError::Json {
            path: path.display().to_string(),
            source,
        })
    }
}

fn write_file(path: &Path, body: &[u8]) -> Result<(), SeriesError> {
    let err = |source| SeriesError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(err)?;
    f.write_all(body).map_err(err)?;
    Ok(())
}

/// The `q`-quantile (0–1) of unsorted values, by nearest rank.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), Some(50.0));
        assert_eq!(quantile(&mut v, 0.99), Some(99.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn json_round_trip_and_csv() {
        let ts = TimeSeries {
            scenario: "t1".into(),
            config: serde_json::json!({"cache": 1}),
            samples: vec![Sample {
                t_s: 0.1,
                dirty_pct: 50.0,
                dirty_peak_pct: 60.0,
                app_mbps: 10.0,
                sink_mbps: 1.5,
                ack_p50_ms: Some(3.0),
                ack_p99_ms: None,
                outstanding: 4,
                stall_pct: 0.0,
            }],
            summary: Summary::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        ts.write_json(&p).unwrap();
        assert_eq!(TimeSeries::read_json(&p).unwrap(), ts);
        let csv = ts.to_csv();
        assert_eq!(csv.lines().count(), 2);
        assert!(csv.lines().nth(1).unwrap().contains(",3.000,,4,"));
    }
}
