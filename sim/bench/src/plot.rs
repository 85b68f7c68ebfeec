//! The benchmark plots, PNG and SVG with plotters: grouped bars (one group
//! per link or configuration, one colour per measured quantity, target
//! lines across) and stacked time-series panels sharing the time axis.
//! Logarithmic axes are drawn by plotting log10 of the values on a linear
//! axis labelled with the powers of ten, which keeps one code path for both.
//! Text uses the font `dtu_sim::plot` bundles, so no system fonts are needed.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::series::DashedLineSeries;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{BenchError, Result};

const WIDTH: u32 = 1000;

/// Grouped bars.
#[derive(Debug, Clone, Default)]
pub struct Bars {
    pub title: String,
    pub y_desc: String,
    pub categories: Vec<String>,
    /// One entry per colour: a name and a value per category.
    pub series: Vec<(String, Vec<Option<f64>>)>,
    /// Horizontal target lines.
    pub guides: Vec<(f64, String)>,
    pub log_y: bool,
    /// Decimals of the value printed above each bar; `None`: no values.
    pub digits: Option<usize>,
}

/// One panel of a time-series plot.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    pub y_desc: String,
    pub log_y: bool,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    pub guides: Vec<(f64, String)>,
    /// Fixed y range (linear values), else from the data.
    pub y_range: Option<(f64, f64)>,
}

/// Panels stacked over one time axis.
#[derive(Debug, Clone, Default)]
pub struct Lines {
    pub title: String,
    pub x_desc: String,
    pub panels: Vec<Panel>,
}

fn colour(i: usize) -> RGBAColor {
    // Palette99 starts with red, green, yellow; these read better together.
    const C: [(u8, u8, u8); 6] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b).to_rgba()
}

fn tf(v: f64, log: bool) -> f64 {
    if log {
        v.max(1e-9).log10()
    } else {
        v
    }
}

fn label(v: f64, log: bool) -> String {
    let x = if log { 10f64.powf(v) } else { v };
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 1.0 {
        format!("{:.2}", x)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .into()
    } else {
        format!("{x:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .into()
    }
}

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> BenchError + '_ {
    move |e| BenchError::Plot {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// Writes `prefix.png` and `prefix.svg`.
fn both(
    prefix: &Path,
    height: u32,
    draw_png: impl Fn(&DrawingArea<BitMapBackend<'_>, Shift>) -> std::result::Result<(), String>,
    draw_svg: impl Fn(&DrawingArea<SVGBackend<'_>, Shift>) -> std::result::Result<(), String>,
) -> Result<()> {
    dtu_sim::plot::register_font();
    let png = prefix.with_extension("png");
    let svg = prefix.with_extension("svg");
    {
        let root = BitMapBackend::new(&png, (WIDTH, height)).into_drawing_area();
        draw_png(&root).map_err(err(&png))?;
        root.present().map_err(err(&png))?;
    }
    {
        let root = SVGBackend::new(&svg, (WIDTH, height)).into_drawing_area();
        draw_svg(&root).map_err(err(&svg))?;
        root.present().map_err(err(&svg))?;
    }
    Ok(())
}

/// Draws grouped bars into `prefix.png` and `prefix.svg`.
pub fn bars(prefix: &Path, b: &Bars) -> Result<()> {
    both(prefix, 540, |r| draw_bars(r, b), |r| draw_bars(r, b))
}

/// Draws stacked time-series panels into `prefix.png` and `prefix.svg`.
pub fn lines(prefix: &Path, l: &Lines) -> Result<()> {
    let h = 120 + 300 * l.panels.len().max(1) as u32;
    both(prefix, h, |r| draw_lines(r, l), |r| draw_lines(r, l))
}

/// A white page with `title` on top; the area under the title.
fn canvas<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
) -> std::result::Result<DrawingArea<DB, Shift>, String>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    root.titled(title, ("sans-serif", 22)).map_err(e)
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    b: &Bars,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    let area = canvas(root, &b.title)?;
    let n = b.categories.len().max(1);
    let m = b.series.len().max(1);
    let values = b
        .series
        .iter()
        .flat_map(|s| s.1.iter().flatten().copied())
        .chain(b.guides.iter().map(|g| g.0));
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values {
        lo = lo.min(tf(v, b.log_y));
        hi = hi.max(tf(v, b.log_y));
    }
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    let (y0, y1) = if b.log_y {
        (lo.floor() - 0.01, hi.ceil().max(lo.floor() + 1.0) + 0.01)
    } else {
        (0.0, hi.max(1e-9) * 1.18)
    };
    let mut c = ChartBuilder::on(&area)
        .margin(12)
        .margin_bottom(8)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, y0..y1)
        .map_err(e)?;
    let log = b.log_y;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(b.y_desc.as_str())
        .y_label_formatter(&|v| label(*v, log))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(e)?;
    let width = 0.8 / m as f64;
    for (j, (name, vals)) in b.series.iter().enumerate() {
        let col = colour(j);
        let rects = vals.iter().enumerate().filter_map(|(i, v)| {
            v.map(|v| {
                let x = i as f64 + 0.1 + j as f64 * width;
                Rectangle::new([(x, y0), (x + width * 0.92, tf(v, log))], col.filled())
            })
        });
        c.draw_series(rects)
            .map_err(e)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], col.filled()));
        let Some(digits) = b.digits else {
            continue;
        };
        c.draw_series(vals.iter().enumerate().filter_map(|(i, v)| {
            v.map(|v| {
                let x = i as f64 + 0.1 + (j as f64 + 0.46) * width;
                Text::new(
                    format!("{v:.digits$}"),
                    (x, tf(v, log)),
                    ("sans-serif", 13)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            })
        }))
        .map_err(e)?;
    }
    for (k, (v, name)) in b.guides.iter().enumerate() {
        let y = tf(*v, log);
        let col = BLACK.mix(0.35 + 0.2 * (k % 3) as f64);
        c.draw_series(DashedLineSeries::new(
            vec![(0.0, y), (n as f64, y)],
            8,
            5,
            col.stroke_width(2),
        ))
        .map_err(e)?
        .label(name.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], col.stroke_width(2)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    // Category names under each group, in the backend's pixel coordinates.
    for (i, name) in b.categories.iter().enumerate() {
        let (px, py) = c.backend_coord(&(i as f64 + 0.5, y0));
        root.draw(&Text::new(
            name.clone(),
            (px, py + 8),
            ("sans-serif", 15)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(e)?;
    }
    Ok(())
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    l: &Lines,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    let area = canvas(root, &l.title)?;
    let panels = area.split_evenly((l.panels.len().max(1), 1));
    let t_max = l
        .panels
        .iter()
        .flat_map(|p| p.series.iter().flat_map(|s| s.1.iter().map(|x| x.0)))
        .fold(0.0f64, f64::max)
        .max(0.1);
    for (p, pa) in l.panels.iter().zip(panels.iter()) {
        let log = p.log_y;
        let (y0, y1) = match p.y_range {
            Some((a, b)) => (tf(a, log), tf(b, log)),
            None => {
                let (mut lo, mut hi) = (f64::MAX, f64::MIN);
                for v in p
                    .series
                    .iter()
                    .flat_map(|s| s.1.iter().map(|x| x.1))
                    .chain(p.guides.iter().map(|g| g.0))
                {
                    lo = lo.min(tf(v, log));
                    hi = hi.max(tf(v, log));
                }
                if lo > hi {
                    (lo, hi) = (0.0, 1.0);
                }
                if log {
                    (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
                } else {
                    (0.0f64.min(lo), hi.max(1e-9) * 1.1)
                }
            }
        };
        let mut c = ChartBuilder::on(pa)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, y0..y1)
            .map_err(e)?;
        c.configure_mesh()
            .x_desc(l.x_desc.as_str())
            .y_desc(p.y_desc.as_str())
            .y_label_formatter(&|v| label(*v, log))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(e)?;
        for (j, (name, pts)) in p.series.iter().enumerate() {
            let col = colour(j);
            c.draw_series(LineSeries::new(
                pts.iter().map(|&(t, v)| (t, tf(v, log).clamp(y0, y1))),
                col.stroke_width(2),
            ))
            .map_err(e)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        }
        for (v, name) in &p.guides {
            let y = tf(*v, log);
            c.draw_series(DashedLineSeries::new(
                vec![(0.0, y), (t_max, y)],
                8,
                5,
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(e)?
            .label(name.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6)));
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
    }
    Ok(())
}
