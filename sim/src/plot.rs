//! Plots of host time series (PNG and SVG, with plotters): the dirty % of
//! the host's cache over time on top, throughput below (what the mirror
//! device acknowledged, solid; what the application wrote, dashed), one
//! colour per scenario so several runs overlay. Optional guides: the
//! spoofing threshold on the dirty % panel and the link rate on the
//! throughput panel. Text uses the bundled DejaVu Sans, so no system font
//! library is needed.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::series::DashedLineSeries;
use std::path::Path;
use std::sync::Once;

use crate::host::TimeSeries;

/// What to draw besides the series.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotOptions {
    pub title: String,
    pub width: u32,
    pub height: u32,
    /// Dirty % threshold line (the DTU's spoofing threshold), if any.
    pub threshold_pct: Option<f64>,
    /// Link rate line on the throughput panel, in Mbit/s, if any.
    pub link_mbps: Option<f64>,
    /// Throughputs are averaged over this trailing window (seconds), so that
    /// large writes over a slow link do not draw as a sawtooth.
    pub smooth_s: f64,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self {
            title: "host write cache over time".into(),
            width: 1200,
            height: 800,
            threshold_pct: Some(75.0),
            link_mbps: None,
            smooth_s: 1.0,
        }
    }
}

/// Drawing failed.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("nothing to plot: the time series have no samples")]
    Empty,
    #[error("drawing {path}: {msg}")]
    Draw { path: String, msg: String },
}

static FONT: Once = Once::new();

/// Registers the bundled DejaVu Sans as plotters' `sans-serif` (once per
/// process); other plotting code in the workspace calls it too.
pub fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The bundled font is known to parse; a failure would show as missing text.
            let _ = plotters::style::register_font("sans-serif", style, bytes);
        }
    });
}

/// Trailing moving average of `(t, v)` over `window` seconds, weighting
/// each sample by the time it covers.
pub fn smooth(points: &[(f64, f64)], window: f64) -> Vec<(f64, f64)> {
    if window <= 0.0 {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(points.len());
    let mut prev_t = 0.0;
    let spans: Vec<(f64, f64, f64)> = points
        .iter()
        .map(|&(t, v)| {
            let span = (t - prev_t).max(0.0);
            prev_t = t;
            (t, v, span)
        })
        .collect();
    let (mut lo, mut sum, mut w) = (0usize, 0.0, 0.0);
    for i in 0..spans.len() {
        let (t, v, span) = spans[i];
        sum += v * span;
        w += span;
        while lo < i && spans[lo].0 <= t - window {
            sum -= spans[lo].1 * spans[lo].2;
            w -= spans[lo].2;
            lo += 1;
        }
        out.push((t, if w > 0.0 { sum / w } else { v }));
    }
    out
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[TimeSeries],
    o: &PlotOptions,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(&o.title, ("sans-serif", 26)).map_err(e)?;
    let (top, bottom) = root.split_vertically(o.height.saturating_sub(40) / 2);

    let t_max = series
        .iter()
        .flat_map(|s| s.samples.iter().map(|x| x.t_s))
        .fold(0.0f64, f64::max)
        .max(0.1);
    let sink: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            smooth(
                &s.samples
                    .iter()
                    .map(|x| (x.t_s, x.sink_mbps))
                    .collect::<Vec<_>>(),
                o.smooth_s,
            )
        })
        .collect();
    let app: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            smooth(
                &s.samples
                    .iter()
                    .map(|x| (x.t_s, x.app_mbps))
                    .collect::<Vec<_>>(),
                o.smooth_s,
            )
        })
        .collect();
    // Scale to what the device and the link do; application bursts far
    // above that are clipped at the top rather than flattening everything.
    let scale = sink
        .iter()
        .flatten()
        .map(|p| p.1)
        .chain(o.link_mbps)
        .fold(0.0f64, f64::max);
    let app_max = app.iter().flatten().map(|p| p.1).fold(0.0f64, f64::max);
    let rate_max = if scale > 0.0 {
        app_max.min(scale * 2.0).max(scale) * 1.15
    } else {
        app_max.max(0.001) * 1.1
    };
    let clipped = app_max > rate_max;

    let colour = |i: usize| Palette99::pick(i).to_rgba();

    let mut c = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..t_max, 0.0..100.0)
        .map_err(e)?;
    c.configure_mesh()
        .x_desc("time (s)")
        .y_desc("dirty %")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(e)?;
    for (i, s) in series.iter().enumerate() {
        let col = colour(i);
        c.draw_series(LineSeries::new(
            s.samples.iter().map(|x| (x.t_s, x.dirty_pct)),
            col.stroke_width(2),
        ))
        .map_err(e)?
        .label(s.scenario.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    }
    if let Some(th) = o.threshold_pct {
        c.draw_series(DashedLineSeries::new(
            vec![(0.0, th), (t_max, th)],
            8,
            6,
            BLACK.mix(0.6).stroke_width(1),
        ))
        .map_err(e)?
        .label(format!("threshold {th}%"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;

    let mut c = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..t_max, 0.0..rate_max)
        .map_err(e)?;
    c.configure_mesh()
        .x_desc("time (s)")
        .y_desc("Mbit/s")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(e)?;
    let smooth_note = if o.smooth_s > 0.0 {
        format!(" ({} s avg)", o.smooth_s)
    } else {
        String::new()
    };
    for (i, s) in series.iter().enumerate() {
        let col = colour(i);
        c.draw_series(LineSeries::new(
            sink[i].iter().copied(),
            col.stroke_width(2),
        ))
        .map_err(e)?
        .label(format!("{} acknowledged{smooth_note}", s.scenario))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(DashedLineSeries::new(
            app[i]
                .iter()
                .map(|&(t, v)| (t, v.min(rate_max)))
                .collect::<Vec<_>>(),
            6,
            4,
            col.mix(0.8).stroke_width(2),
        ))
        .map_err(e)?
        .label(format!(
            "{} written{}",
            s.scenario,
            if clipped { " (clipped)" } else { "" }
        ))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.mix(0.8)));
    }
    if let Some(r) = o.link_mbps {
        c.draw_series(DashedLineSeries::new(
            vec![(0.0, r), (t_max, r)],
            10,
            4,
            RED.mix(0.8).stroke_width(2),
        ))
        .map_err(e)?
        .label(format!("link {r} Mbit/s"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.mix(0.8)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    Ok(())
}

/// Draws `series` into a PNG file.
pub fn write_png(series: &[TimeSeries], o: &PlotOptions, path: &Path) -> Result<(), PlotError> {
    check(series)?;
    register_font();
    let err = |msg: String| PlotError::Draw {
        path: path.display().to_string(),
        msg,
    };
    let root = BitMapBackend::new(path, (o.width, o.height)).into_drawing_area();
    draw(&root, series, o).map_err(err)?;
    root.present().map_err(|x| err(x.to_string()))
}

/// Draws `series` into an SVG file.
pub fn write_svg(series: &[TimeSeries], o: &PlotOptions, path: &Path) -> Result<(), PlotError> {
    check(series)?;
    register_font();
    let err = |msg: String| PlotError::Draw {
        path: path.display().to_string(),
        msg,
    };
    let root = SVGBackend::new(path, (o.width, o.height)).into_drawing_area();
    draw(&root, series, o).map_err(err)?;
    root.present().map_err(|x| err(x.to_string()))
}

fn check(series: &[TimeSeries]) -> Result<(), PlotError> {
    if series.iter().all(|s| s.samples.is_empty()) {
        Err(PlotError::Empty)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Sample, Summary};

    fn series(name: &str, k: f64) -> TimeSeries {
        TimeSeries {
            scenario: name.into(),
            config: serde_json::Value::Null,
            samples: (1..=50)
                .map(|i| {
                    let t = i as f64 * 0.1;
                    Sample {
                        t_s: t,
                        dirty_pct: (t * k * 20.0).min(100.0),
                        dirty_peak_pct: (t * k * 20.0).min(100.0),
                        app_mbps: 10.0,
                        sink_mbps: 1.5 * k,
                        ack_p50_ms: Some(5.0),
                        ack_p99_ms: Some(9.0),
                        outstanding: 3,
                        stall_pct: 0.0,
                    }
                })
                .collect(),
            summary: Summary::default(),
        }
    }

    #[test]
    fn writes_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let s = vec![series("t1", 1.0), series("e1", 1.3)];
        let o = PlotOptions {
            link_mbps: Some(1.544),
            ..PlotOptions::default()
        };
        let png = dir.path().join("p.png");
        let svg = dir.path().join("p.svg");
        write_png(&s, &o, &png).unwrap();
        write_svg(&s, &o, &svg).unwrap();
        let head = std::fs::read(&png).unwrap();
        assert_eq!(&head[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(svg.contains("<svg") && svg.contains("dirty %") && svg.contains("t1 acknowledged"));
        assert!(matches!(write_png(&[], &o, &png), Err(PlotError::Empty)));
    }

    #[test]
    fn smoothing_averages_over_the_window() {
        let pts: Vec<(f64, f64)> = (1..=10)
            .map(|i| (i as f64 * 0.1, if i % 2 == 0 { 2.0 } else { 0.0 }))
            .collect();
        let s = smooth(&pts, 0.35);
        assert_eq!(s.len(), 10);
        assert!((s[9].1 - 1.0).abs() < 1e-9, "{:?}", s[9]);
        assert_eq!(smooth(&pts, 0.0), pts);
    }
}
