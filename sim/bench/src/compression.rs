//! compression: the link-efficiency transfer with data snap compresses 2:1
//! and 4:1 (`dtu_sim::host::DataGen`, calibrated against snap itself), and
//! 1:1 for reference, in the same run. The figure is the effective
//! throughput (plaintext bytes the replica stored per second) over the
//! line rate; with compression it can exceed 1.

use serde_json::json;

use super::inproc::{InprocPair, PairConfig};
use super::link_efficiency::transfer;
use super::plot::{bars, Bars};
use super::report::{f, mbit};
use super::{Opts, Report, Result, Table, Target};

const MIB: u64 = 1 << 20;

pub fn run(o: &Opts) -> Result<Report> {
    let mut r = Report::new("compression", o.quick);
    // Bytes of incompressible payload per case; a ratio of k sends k times
    // as much plaintext so that every run keeps the link busy as long.
    let cases: Vec<(&str, u64)> = if o.quick {
        vec![("bridged-10m", 4 * MIB)]
    } else {
        vec![
            ("t1", 2 * MIB),
            ("bridged-10m", 16 * MIB),
            ("wan-100m-40ms", 128 * MIB),
        ]
    };
    let ratios = [1.0, 2.0, 4.0];
    let mut t = Table::new(
        "effective throughput (plaintext stored per second) over the line rate",
        &[
            "link",
            "data",
            "plaintext",
            "measured compression",
            "effective Mbit/s",
            "effective / line",
            "link busy",
            "CPU s/GB",
        ],
    );
    let mut rows = Vec::new();
    let cases: Vec<(&str, u64)> = cases.into_iter().filter(|c| o.wants(c.0)).collect();
    for (preset, base) in &cases {
        for &ratio in &ratios {
            let bytes = (*base as f64 * ratio) as u64;
            eprintln!("compression: {preset} {ratio}:1 ({} MiB)", bytes >> 20);
            let pair = InprocPair::start(PairConfig {
                preset: Some(preset.to_string()),
                seed: o.seed,
                volume_size: bytes.clamp(64 * MIB, 1024 * MIB),
                nvbuf_size: (bytes + 16 * MIB).min(256 * MIB),
                ..PairConfig::default()
            })?;
            let x = transfer(&pair, bytes, ratio, o.seed)?;
            pair.shutdown()?;
            t.row(vec![
                preset.to_string(),
                format!("{ratio}:1"),
                format!("{} MiB", bytes >> 20),
                f(x.compression, 2),
                mbit(x.goodput_bps),
                f(x.ratio, 2),
                f(x.link_busy, 3),
                f(x.cpu_s_per_gb, 1),
            ]);
            if ratio == 2.0 {
                r.target(Target::new(
                    format!("{preset}: effective throughput / line rate at 2:1"),
                    "≥ 1.8",
                    f(x.ratio, 2),
                    x.ratio >= 1.8,
                ));
            }
            eprintln!(
                "  {:.2} of the line, compression {:.2}",
                x.ratio, x.compression
            );
            rows.push(json!({ "ratio_asked": ratio, "transfer": x }));
        }
    }
    r.tables.push(t);
    r.note(
        "measured compression = plaintext bytes / bytes after snap and sealing (the 16-byte \
         AEAD tag and the frame header per 64 KiB chunk are included).",
    );
    let cats: Vec<String> = cases.iter().map(|c| c.0.to_string()).collect();
    let series = ratios
        .iter()
        .map(|&k| {
            let vals = cases
                .iter()
                .map(|(p, _)| {
                    rows.iter()
                        .find(|v| {
                            v["ratio_asked"].as_f64() == Some(k) && v["transfer"]["preset"] == *p
                        })
                        .and_then(|v| v["transfer"]["ratio"].as_f64())
                })
                .collect();
            (format!("{k}:1 data"), vals)
        })
        .collect();
    bars(
        &o.out.join("compression"),
        &Bars {
            title: "compression: effective throughput / line rate".into(),
            y_desc: "plaintext stored / line rate".into(),
            categories: cats,
            series,
            guides: vec![(1.8, "target at 2:1: 1.8".into())],
            log_y: false,
            digits: Some(2),
        },
    )?;
    r.data = json!({ "runs": rows });
    Ok(r)
}
