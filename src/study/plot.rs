//! The report's plots: `throughput.png`, `efficiency.png` and `breakdown.png` (1000×600 each).
//!
//! Node counts are placed on a log₂ axis (x = log₂ N, ticks at the requested counts), so
//! doubling steps are evenly spaced. Throughput is drawn on a log₁₀ axis (y = log₁₀ tokens/s,
//! ticks at 1, 2, 5 × 10ᵏ), so ideal linear scaling is a straight line of slope 1 decade per
//! decade of nodes. Only runs with status `ok` are drawn; the others are named in a note at the
//! bottom of each plot. Text uses the font [`crate::plot`] registers; without one the plots are
//! drawn without any text.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::read::Study;
use super::{RunRow, Status};

/// Width of each PNG in pixels.
const WIDTH: u32 = 1000;
/// Height of each PNG in pixels.
const HEIGHT: u32 = 600;
/// Width of the legend column right of the breakdown chart.
const LEGEND_WIDTH: u32 = 190;
/// Colour of measured values.
const MEASURED: RGBColor = RGBColor(31, 119, 180);
/// Colour of the ideal (linear-scaling) reference.
const IDEAL: RGBColor = RGBColor(120, 120, 120);
/// The planner's prediction.
const PREDICTED: RGBColor = RGBColor(255, 127, 14);
/// Colour of the note naming runs left out.
const NOTE: RGBColor = RGBColor(200, 30, 30);
/// Stacked-bar segments of the breakdown, bottom to top.
const SEGMENTS: [(&str, RGBColor); 7] = [
    ("compute", RGBColor(31, 119, 180)),
    ("comm tp", RGBColor(255, 127, 14)),
    ("comm dp", RGBColor(44, 160, 44)),
    ("comm pp", RGBColor(214, 39, 40)),
    ("comm emb+world", RGBColor(148, 103, 189)),
    ("pipeline bubble", RGBColor(140, 86, 75)),
    ("other", RGBColor(188, 189, 34)),
];

/// A chart on a drawing area borrowed for `'a` of a PNG backend living for `'b`.
type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<Ticked, Ticked>>;

/// A linear `f64` axis with ticks and grid lines exactly at `ticks`. (plotters'
/// `with_key_points` drops the label-formatting support of `f64` axes, hence this type.)
struct Ticked {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }

    /// Linear: `start ↦ limit.0`, `end ↦ limit.1`.
    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.range.clone()).map(value, limit)
    }

    /// The ticks as bold points; no light grid lines.
    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }
}

/// One axis: its range, tick positions, tick labels and description.
struct Axis {
    range: Range<f64>,
    ticks: Vec<f64>,
    label: Box<dyn Fn(&f64) -> String>,
    desc: &'static str,
}

/// Draws the three plots into `dir`; returns their paths.
pub(crate) fn write_plots(dir: &Path, study: &Study, rows: &[RunRow]) -> Result<Vec<PathBuf>> {
    let text = crate::plot::ensure_font();
    if !text {
        log::warn!("no TrueType font found; drawing the study plots without text");
    }
    let title = format!("{} ({} scaling)", study.name, study.mode);
    let paths = ["throughput.png", "efficiency.png", "breakdown.png"].map(|f| dir.join(f));
    let ctx = |p: &PathBuf| format!("drawing {}", p.display());
    throughput(&paths[0], &title, rows, text).with_context(|| ctx(&paths[0]))?;
    efficiency(&paths[1], &title, rows, text).with_context(|| ctx(&paths[1]))?;
    breakdown(&paths[2], &title, rows, text).with_context(|| ctx(&paths[2]))?;
    Ok(paths.to_vec())
}

/// Rows drawn: status `ok` and with a value `f`, as `(row, value)`.
fn plotted<'r>(
    rows: &'r [RunRow],
    f: impl Fn(&RunRow) -> Option<f64> + 'r,
) -> impl Iterator<Item = (&'r RunRow, f64)> + 'r {
    rows.iter()
        .filter(|r| r.status == Status::Ok)
        .filter_map(move |r| Some((r, f(r)?)))
}

/// "not plotted: n4 (missing), n8 (failed)" for the rows that are not `ok`, if any.
fn skipped_note(rows: &[RunRow]) -> Option<String> {
    let skipped: Vec<String> = rows
        .iter()
        .filter(|r| r.status != Status::Ok)
        .map(|r| format!("n{} ({})", r.nodes, r.status.as_str()))
        .collect();
    (!skipped.is_empty()).then(|| format!("not plotted: {}", skipped.join(", ")))
}

/// The log₂ node axis over every requested node count (padded by ⅓ of a doubling each side).
fn node_axis(rows: &[RunRow]) -> Axis {
    let ticks: Vec<f64> = rows
        .iter()
        .map(|r| (r.nodes.max(1) as f64).log2())
        .collect();
    let (lo, hi) = bounds(ticks.iter().copied()).unwrap_or((0.0, 1.0));
    Axis {
        range: (lo - 0.33)..(hi + 0.33),
        ticks,
        label: Box::new(|x| format!("{}", x.exp2().round())),
        desc: "nodes",
    }
}

/// `(min, max)` of `values`, `None` when empty.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Ticks at multiples of a round step (1, 2 or 5 × 10ᵏ) giving about `target` ticks in `range`.
fn linear_ticks(range: &Range<f64>, target: usize) -> Vec<f64> {
    let raw = (range.end - range.start) / target as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .map(|m| m * magnitude)
        .into_iter()
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (range.start / step).ceil() as i64;
    let last = (range.end / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Ticks of a log₁₀ axis: log₁₀ of 1, 2, 5 × 10ᵏ inside `range` (powers of ten alone when the
/// range spans more than three decades).
fn log_ticks(range: &Range<f64>) -> Vec<f64> {
    let mantissas: &[f64] = if range.end - range.start > 3.0 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    let decades = range.start.floor() as i32..=range.end.ceil() as i32;
    decades
        .flat_map(|k| mantissas.iter().map(move |m| k as f64 + m.log10()))
        .filter(|y| range.contains(y))
        .collect()
}

/// `v` with a k/M suffix and at most two decimals: 1500 → "1.5k", 2000000 → "2M".
fn si(v: f64) -> String {
    let (div, suffix) = match v.abs() {
        a if a >= 1e6 => (1e6, "M"),
        a if a >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    let digits = format!("{:.2}", v / div);
    let digits = digits.trim_end_matches('0').trim_end_matches('.');
    format!("{digits}{suffix}")
}

/// A chart on `area` with caption, axis descriptions and tick labels (all left out without
/// `text`), and a light grid at the ticks.
fn chart<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    title: &str,
    x: Axis,
    y: Axis,
    text: bool,
) -> Result<Chart<'a, 'b>> {
    let mut builder = ChartBuilder::on(area);
    builder.margin(20);
    if text {
        builder
            .caption(title, ("sans-serif", 26))
            .x_label_area_size(55)
            .y_label_area_size(75);
    }
    let mut chart = builder.build_cartesian_2d(
        Ticked {
            range: x.range,
            ticks: x.ticks,
        },
        Ticked {
            range: y.range,
            ticks: y.ticks,
        },
    )?;
    let no_label = |_: &f64| String::new();
    let mut mesh = chart.configure_mesh();
    mesh.bold_line_style(BLACK.mix(0.12));
    if text {
        mesh.x_desc(x.desc)
            .y_desc(y.desc)
            .x_label_formatter(&*x.label)
            .y_label_formatter(&*y.label)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18));
    } else {
        mesh.x_label_formatter(&no_label)
            .y_label_formatter(&no_label);
    }
    mesh.draw()?;
    Ok(chart)
}

/// Writes `note` in red at the bottom left of `root` (below the x axis description).
fn draw_note(root: &DrawingArea<BitMapBackend<'_>, Shift>, note: &str, text: bool) -> Result<()> {
    if text {
        let style = ("sans-serif", 15).into_font().color(&NOTE);
        root.draw(&Text::new(
            note.to_string(),
            (12, HEIGHT as i32 - 20),
            style,
        ))?;
    }
    Ok(())
}

/// Draws the legend of `chart`'s labelled series at `position` (no-op without `text`).
fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    position: SeriesLabelPosition,
    text: bool,
) -> Result<()> {
    if text {
        chart
            .configure_series_labels()
            .position(position)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
    }
    Ok(())
}

/// Measured tokens/s (points joined by a line) and the ideal `tps(n0) · N / n0` (dashed), on
/// log₂ nodes × log₁₀ tokens/s.
fn throughput(path: &Path, title: &str, rows: &[RunRow], text: bool) -> Result<()> {
    let pos = |r: &RunRow, v: f64| ((r.nodes.max(1) as f64).log2(), v.max(1e-9).log10());
    let measured: Vec<(f64, f64)> = plotted(rows, |r| r.tokens_per_s)
        .map(|(r, v)| pos(r, v))
        .collect();
    let ideal: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some(pos(r, r.ideal_tokens_per_s?)))
        .collect();
    let predicted: Vec<(f64, f64)> = plotted(rows, |r| r.predicted_tokens_per_s)
        .map(|(r, v)| pos(r, v))
        .collect();
    let (lo, hi) =
        bounds(measured.iter().chain(&ideal).chain(&predicted).map(|p| p.1)).unwrap_or((0.0, 1.0));
    let pad = ((hi - lo) * 0.08).max(0.15);
    let range = (lo - pad)..(hi + pad);
    let y = Axis {
        ticks: log_ticks(&range),
        range,
        label: Box::new(|y| si(10f64.powf(*y))),
        desc: "tokens / s",
    };
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = chart(
        &root,
        &format!("{title}: throughput"),
        node_axis(rows),
        y,
        text,
    )?;
    let dashed = IDEAL.stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(ideal.iter().copied(), 10, 6, dashed))?
        .label("ideal (linear from smallest run)")
        .legend(move |(x, y)| PathElement::new(vec![(x - 10, y), (x + 10, y)], dashed));
    if !predicted.is_empty() {
        let dotted = PREDICTED.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                predicted.iter().copied(),
                3,
                5,
                dotted,
            ))?
            .label("predicted (ferrotron plan --machine)")
            .legend(move |(x, y)| PathElement::new(vec![(x - 10, y), (x + 10, y)], dotted));
    }
    let solid = MEASURED.stroke_width(2);
    chart
        .draw_series(LineSeries::new(measured.iter().copied(), solid))?
        .label("measured (median step time)")
        .legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(-10, 0), (10, 0)], solid)
                + Circle::new((0, 0), 4, MEASURED.filled())
        });
    chart.draw_series(
        measured
            .iter()
            .map(|&p| Circle::new(p, 5, MEASURED.filled())),
    )?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft, text)?;
    if let Some(note) = skipped_note(rows) {
        draw_note(&root, &note, text)?;
    }
    root.present()?;
    Ok(())
}

/// Parallel efficiency `(tps(N) / tps(n0)) / (N / n0)` per node count, y from 0 to 1.1 (higher
/// if a run scaled superlinearly), with a dashed line at 1 (ideal) and each point's value
/// written below it.
fn efficiency(path: &Path, title: &str, rows: &[RunRow], text: bool) -> Result<()> {
    let points: Vec<(f64, f64)> = plotted(rows, |r| r.efficiency)
        .map(|(r, e)| ((r.nodes.max(1) as f64).log2(), e))
        .collect();
    let top = points.iter().map(|p| p.1 + 0.1).fold(1.1, f64::max);
    let y = Axis {
        range: 0.0..top,
        ticks: (0..=(top / 0.2) as usize).map(|i| i as f64 * 0.2).collect(),
        label: Box::new(|y| format!("{y:.1}")),
        desc: "parallel efficiency",
    };
    let x = node_axis(rows);
    let (x0, x1) = (x.range.start, x.range.end);
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = chart(&root, &format!("{title}: parallel efficiency"), x, y, text)?;
    let dashed = IDEAL.stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new([(x0, 1.0), (x1, 1.0)], 10, 6, dashed))?
        .label("ideal (1.0)")
        .legend(move |(x, y)| PathElement::new(vec![(x - 10, y), (x + 10, y)], dashed));
    let solid = MEASURED.stroke_width(2);
    chart
        .draw_series(LineSeries::new(points.iter().copied(), solid))?
        .label("measured")
        .legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(-10, 0), (10, 0)], solid)
                + Circle::new((0, 0), 4, MEASURED.filled())
        });
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, MEASURED.filled())))?;
    if text {
        let font = ("sans-serif", 15).into_font();
        chart.draw_series(points.iter().map(|&(x, e)| {
            EmptyElement::at((x, e)) + Text::new(format!("{e:.2}"), (-14, 12), font.clone())
        }))?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerLeft, text)?;
    if let Some(note) = skipped_note(rows) {
        draw_note(&root, &note, text)?;
    }
    root.present()?;
    Ok(())
}

/// The [`SEGMENTS`] values of a row, in ms per step: compute, comm tp, dp, pp, emb + world,
/// bubble, other. They add up to the mean step time (or to the counted time when that exceeds it).
fn segments(row: &RunRow) -> Option<[f64; 7]> {
    let m = row.measured.as_ref()?;
    let c = m.comm_ms;
    Some([
        m.compute_ms,
        c[0],
        c[1],
        c[2],
        c[3] + c[4],
        m.bubble_ms,
        m.other_ms,
    ])
}

/// One stacked bar per `ok` node count (ms per step by [`SEGMENTS`]), its total above it, and a
/// legend in a column right of the chart.
fn breakdown(path: &Path, title: &str, rows: &[RunRow], text: bool) -> Result<()> {
    let bars: Vec<(u64, [f64; 7])> = rows
        .iter()
        .filter(|r| r.status == Status::Ok)
        .filter_map(|r| Some((r.nodes, segments(r)?)))
        .collect();
    let top = bars
        .iter()
        .map(|(_, s)| s.iter().sum::<f64>())
        .fold(0.0, f64::max);
    let y_range = 0.0..if top > 0.0 { top * 1.12 } else { 1.0 };
    let nodes: Vec<u64> = bars.iter().map(|b| b.0).collect();
    let x = Axis {
        range: -0.6..(bars.len().max(1) as f64 - 0.4),
        ticks: (0..bars.len()).map(|i| i as f64).collect(),
        label: Box::new(move |x| {
            nodes
                .get(x.round() as usize)
                .map_or(String::new(), u64::to_string)
        }),
        desc: "nodes",
    };
    let y = Axis {
        ticks: linear_ticks(&y_range, 6),
        range: y_range,
        label: Box::new(|y| format!("{y}")),
        desc: "ms per step (mean)",
    };
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut chart = chart(&left, &format!("{title}: step time breakdown"), x, y, text)?;
    for (i, (_, values)) in bars.iter().enumerate() {
        let (x0, x1) = (i as f64 - 0.3, i as f64 + 0.3);
        let mut base = 0.0;
        for (&v, (_, color)) in values.iter().zip(SEGMENTS) {
            chart.draw_series([Rectangle::new([(x0, base), (x1, base + v)], color.filled())])?;
            base += v;
        }
        if text {
            let label = Text::new(
                format!("{base:.1} ms"),
                (-24, -20),
                ("sans-serif", 15).into_font(),
            );
            chart.draw_series([EmptyElement::at((i as f64, base)) + label])?;
        }
    }
    if text {
        draw_segment_legend(&right)?;
    }
    if let Some(note) = skipped_note(rows) {
        draw_note(&root, &note, text)?;
    }
    root.present()?;
    Ok(())
}

/// The breakdown's legend: a colour swatch and name per segment, top to bottom in the order the
/// segments are stacked from the top (so it reads like the bars).
fn draw_segment_legend(area: &DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()> {
    let font = ("sans-serif", 16).into_font();
    for (row, (name, color)) in SEGMENTS.iter().rev().enumerate() {
        let y = 90 + 30 * row as i32;
        area.draw(&Rectangle::new([(8, y), (26, y + 18)], color.filled()))?;
        area.draw(&Text::new(name.to_string(), (34, y + 1), font.clone()))?;
    }
    Ok(())
}
