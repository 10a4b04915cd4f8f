//! Loss-curve plots: turns a run's `metrics.jsonl` into a PNG.
//!
//! The metrics file holds one JSON object per line. Lines with an integer `step` contribute
//! their `loss` (training loss) and, when present, `val_loss` (validation loss); lines without
//! `step` (run headers, notes) are skipped. Anything that is not valid JSON is an error naming
//! the file and line.
//!
//! Text is rendered with plotters' `ab_glyph` backend, which needs a TrueType font registered at
//! run time; see [`plot_loss_curve`] for how one is found and what happens without one.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontDesc, FontFamily, FontStyle};
use serde_json::Value;

/// Width of the produced PNG in pixels.
const WIDTH: u32 = 1000;
/// Height of the produced PNG in pixels.
const HEIGHT: u32 = 600;

/// TrueType fonts tried, in order, for the `sans-serif` family (Debian/Ubuntu's
/// `fonts-dejavu-core` first, then Fedora/Arch locations and Liberation Sans).
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Colour of the training-loss curve.
const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
/// Colour of the validation-loss curve.
const VAL_COLOR: RGBColor = RGBColor(214, 39, 40);
/// Above this many training points the per-point markers are left out (they would only blur
/// the line).
const MAX_TRAIN_MARKERS: usize = 200;

/// Loss values read from a metrics file, as `(step, loss)` pairs sorted by step.
#[derive(Debug, Default, PartialEq)]
struct LossSeries {
    /// Training loss (`loss` key).
    train: Vec<(f64, f64)>,
    /// Validation loss (`val_loss` key).
    val: Vec<(f64, f64)>,
}

/// Draws training and validation loss against step from `metrics_jsonl` into a
/// `WIDTH`×`HEIGHT` (1000×600) PNG at `out_png`, with `title` as caption, axis labels and a
/// legend.
///
/// `out_png` must end in `.png` (the encoder picks the format from the extension) and its
/// directory must exist.
///
/// Fonts: the first readable font of a short list of system paths (Debian's
/// `/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf` first) is registered with plotters as
/// `sans-serif`. plotters keeps fonts as `&'static [u8]`, so the file's bytes are leaked,
/// once per process (about 750 KB). If no font can be found a warning is logged and the
/// curves are drawn without any text rather than failing.
///
/// # Errors
/// If the metrics file cannot be read, has a malformed line (the error names file and line),
/// holds no loss values at all, or the PNG cannot be drawn or written.
pub fn plot_loss_curve(metrics_jsonl: &Path, out_png: &Path, title: &str) -> Result<()> {
    let text = std::fs::read_to_string(metrics_jsonl)
        .with_context(|| format!("reading metrics file {}", metrics_jsonl.display()))?;
    let series = parse_loss_series(&text, metrics_jsonl)?;
    let with_text = ensure_font();
    if !with_text {
        log::warn!(
            "no TrueType font found (tried {}); drawing {} without text",
            FONT_CANDIDATES.join(", "),
            out_png.display()
        );
    }
    render(&series, out_png, title, with_text)
}

/// Parses the metrics JSONL `text`; `path` is used in error messages only.
fn parse_loss_series(text: &str, path: &Path) -> Result<LossSeries> {
    let mut series = LossSeries::default();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let where_ = || format!("{}:{line_no}", path.display());
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: malformed JSON line", where_()))?;
        let Some(object) = value.as_object() else {
            bail!("{}: expected a JSON object", where_());
        };
        let Some(step) = object.get("step") else {
            continue;
        };
        let step = step
            .as_u64()
            .with_context(|| format!("{}: \"step\" is not a non-negative integer", where_()))?;
        for (key, dest) in [("loss", &mut series.train), ("val_loss", &mut series.val)] {
            match object.get(key) {
                // serde_json writes a non-finite f64 as null: treat it as absent.
                None | Some(Value::Null) => {}
                Some(v) => {
                    let loss = v
                        .as_f64()
                        .with_context(|| format!("{}: \"{key}\" is not a number", where_()))?;
                    if loss.is_finite() {
                        dest.push((step as f64, loss));
                    }
                }
            }
        }
    }
    if series.train.is_empty() && series.val.is_empty() {
        bail!(
            "{}: no \"loss\" or \"val_loss\" values to plot",
            path.display()
        );
    }
    // Stable sort: a resumed run may repeat steps; keep their file order.
    series.train.sort_by(|a, b| a.0.total_cmp(&b.0));
    series.val.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(series)
}

/// Makes sure plotters has a `sans-serif` font; returns whether text can be drawn.
///
/// The answer is computed once per process (a function-local [`OnceLock`]), so a font file is
/// read and leaked at most once.
pub(crate) fn ensure_font() -> bool {
    static FONT_AVAILABLE: OnceLock<bool> = OnceLock::new();
    *FONT_AVAILABLE.get_or_init(register_system_font)
}

/// Registers the first usable font of [`FONT_CANDIDATES`] as `sans-serif`, unless one is
/// registered already (for example by the embedding program). Returns whether one is available.
fn register_system_font() -> bool {
    let probe = || {
        FontDesc::new(FontFamily::SansSerif, 12.0, FontStyle::Normal)
            .box_size("x")
            .is_ok()
    };
    if probe() {
        return true;
    }
    for path in FONT_CANDIDATES {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        // plotters stores fonts as `&'static [u8]`; leaking is bounded by the OnceLock above.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
            log::debug!("registered plot font {path}");
            return probe();
        }
        log::warn!("{path} is not a usable TrueType font; trying the next one");
    }
    false
}

/// Axis range `[min, max]` of `values`, padded by 5% (or by 1 when all values are equal).
fn padded_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 1.0 };
    (lo - pad)..(hi + pad)
}

/// Draws `series` into `out_png`; without `with_text` no text at all is drawn (no font needed).
fn render(series: &LossSeries, out_png: &Path, title: &str, with_text: bool) -> Result<()> {
    let ctx = || format!("drawing loss curve {}", out_png.display());
    let all = || series.train.iter().chain(series.val.iter());
    let x_range = padded_range(all().map(|p| p.0));
    let y_range = padded_range(all().map(|p| p.1));

    let root = BitMapBackend::new(out_png, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).with_context(ctx)?;

    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if with_text {
        builder
            .caption(title, ("sans-serif", 28))
            .x_label_area_size(50)
            .y_label_area_size(70);
    }
    let mut chart = builder
        .build_cartesian_2d(x_range, y_range)
        .with_context(ctx)?;

    let no_label = |_: &f64| String::new();
    let step_label = |x: &f64| format!("{x:.0}");
    let mut mesh = chart.configure_mesh();
    if with_text {
        mesh.x_desc("step")
            .y_desc("loss")
            .x_label_formatter(&step_label)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18));
    } else {
        mesh.x_label_formatter(&no_label)
            .y_label_formatter(&no_label);
    }
    mesh.draw().with_context(ctx)?;

    // (points, colour, legend name, marker radius, most points that still get markers)
    for (points, color, name, marker_size, max_markers) in [
        (
            &series.train,
            TRAIN_COLOR,
            "train loss",
            2,
            MAX_TRAIN_MARKERS,
        ),
        (&series.val, VAL_COLOR, "validation loss", 4, usize::MAX),
    ] {
        if points.is_empty() {
            continue;
        }
        let line_style = color.stroke_width(2);
        let anno = chart
            .draw_series(LineSeries::new(points.iter().copied(), line_style))
            .with_context(ctx)?;
        if with_text {
            anno.label(name).legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(-10, 0), (10, 0)], line_style)
                    + Circle::new((0, 0), marker_size, color.filled())
            });
        }
        if points.len() <= max_markers {
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&p| Circle::new(p, marker_size, color.filled())),
                )
                .with_context(ctx)?;
        }
    }

    if with_text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 18))
            .draw()
            .with_context(ctx)?;
    }
    root.present().with_context(ctx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh, empty directory under the system temp dir, unique to this process and test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferrotron-plot-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    /// A small metrics file: a header line without `step`, train losses and three validations.
    fn sample_metrics() -> String {
        let mut text = String::from("{\"run\":\"test\",\"ranks\":1}\n");
        for step in 0..=100u32 {
            let loss = 10.8 - 4.0 * (1.0 - (-(step as f64) / 30.0).exp());
            text.push_str(&format!(
                "{{\"step\":{step},\"loss\":{loss:.4},\"lr\":0.003}}\n"
            ));
            if step % 25 == 0 {
                text.push_str(&format!(
                    "{{\"step\":{step},\"loss\":{loss:.4},\"val_loss\":{:.4}}}\n",
                    loss + 0.1
                ));
            }
        }
        text
    }

    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

    #[test]
    fn plots_png_from_jsonl() {
        let dir = temp_dir("ok");
        let metrics = dir.join("metrics.jsonl");
        std::fs::write(&metrics, sample_metrics()).unwrap();
        let png = dir.join("loss.png");
        plot_loss_curve(&metrics, &png, "tiny: loss").unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(PNG_MAGIC), "not a PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plots_without_font() {
        let dir = temp_dir("nofont");
        let metrics = dir.join("metrics.jsonl");
        let series = parse_loss_series(&sample_metrics(), &metrics).unwrap();
        let png = dir.join("loss.png");
        render(&series, &png, "ignored", false).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(PNG_MAGIC));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parses_train_and_val_series() {
        let text = "{\"note\":1}\n\n{\"step\":2,\"loss\":3.5}\n{\"step\":1,\"loss\":4.0,\"val_loss\":4.5}\n{\"step\":3,\"loss\":null}\n";
        let series = parse_loss_series(text, Path::new("m.jsonl")).unwrap();
        assert_eq!(series.train, vec![(1.0, 4.0), (2.0, 3.5)]);
        assert_eq!(series.val, vec![(1.0, 4.5)]);
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let dir = temp_dir("bad");
        let metrics = dir.join("metrics.jsonl");
        std::fs::write(
            &metrics,
            "{\"step\":0,\"loss\":10.0}\n{\"step\":1,\"loss\":\n",
        )
        .unwrap();
        let err = plot_loss_curve(&metrics, &dir.join("loss.png"), "t").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("{}:2", metrics.display())),
            "unexpected error: {msg}"
        );
        assert!(!dir.join("loss.png").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = plot_loss_curve(
            Path::new("/nonexistent/metrics.jsonl"),
            Path::new("/nonexistent/loss.png"),
            "t",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/metrics.jsonl"));
    }

    #[test]
    fn no_loss_values_is_an_error() {
        let err = parse_loss_series("{\"step\":1}\n", Path::new("m.jsonl")).unwrap_err();
        assert!(err.to_string().contains("m.jsonl"));
    }
}
