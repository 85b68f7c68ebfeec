//! `dtu-plot`: draws one or more host time series (JSON written by the host
//! model) into PREFIX.png and PREFIX.svg: dirty % and throughput over time,
//! one colour per series, overlaid.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;

use dtu_proto::units;
use dtu_sim::host::TimeSeries;
use dtu_sim::plot::{write_png, write_svg, PlotOptions};

#[derive(Parser, Debug)]
#[command(
    name = "dtu-plot",
    version,
    about = "Plot host time series (dirty % and throughput) as PNG and SVG"
)]
struct Cli {
    /// Time series JSON files (one per scenario; overlaid).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output path without extension; PREFIX.png and PREFIX.svg are written.
    /// Default: the first input without its extension.
    #[arg(long, short)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "host write cache over time")]
    title: String,
    /// Dirty % threshold line ("none" for no line).
    #[arg(long, default_value = "75")]
    threshold: String,
    /// Draw the link rate on the throughput panel (e.g. 1.544M).
    #[arg(long)]
    link_rate: Option<String>,
    /// Average throughputs over this trailing window (0: raw samples).
    #[arg(long, default_value = "1s")]
    smooth: String,
    #[arg(long, default_value_t = 1200)]
    width: u32,
    #[arg(long, default_value_t = 800)]
    height: u32,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let series = cli
        .inputs
        .iter()
        .map(|p| TimeSeries::read_json(p))
        .collect::<Result<Vec<_>, _>>()?;
    let threshold_pct = match cli.threshold.trim() {
        "none" | "off" => None,
        t => Some(
            t.trim_end_matches('%')
                .parse::<f64>()
                .with_context(|| format!("--threshold {t}: expected a percentage or none"))?,
        ),
    };
    let link_mbps = cli
        .link_rate
        .as_deref()
        .map(units::parse_rate)
        .transpose()?
        .map(|bps| bps as f64 / 1e6);
    let o = PlotOptions {
        title: cli.title,
        width: cli.width,
        height: cli.height,
        threshold_pct,
        link_mbps,
        smooth_s: units::parse_duration(&cli.smooth)?.as_secs_f64(),
    };
    let prefix = cli.out.unwrap_or_else(|| cli.inputs[0].with_extension(""));
    let png = prefix.with_extension("png");
    let svg = prefix.with_extension("svg");
    write_png(&series, &o, &png)?;
    write_svg(&series, &o, &svg)?;
    println!("{}", png.display());
    println!("{}", svg.display());
    Ok(())
}
