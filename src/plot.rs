//! SVG plots of the experiments' results, drawn with plotters: plain data in, an SVG document
//! out (800 px wide, text at 14 px or more so it stays readable at that width).
//!
//! Accuracies are fractions in [0, 1] (as the examples' JSON stores them) and are drawn as
//! percentages; sizes are bytes.
//!
//! ```
//! use pare::plot::{TrainingRun, training_curves};
//! let run = TrainingRun {
//!     label: "small CNN".into(),
//!     loss: vec![0.30, 0.10, 0.07],
//!     accuracy: vec![0.91, 0.97, 0.98],
//! };
//! let svg = training_curves(&[run])?;
//! assert!(svg.starts_with("<svg") && svg.contains("small CNN"));
//! # Ok::<(), pare::plot::PlotError>(())
//! ```

use plotters::chart::MeshStyle;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width of every plot, in pixels.
pub const WIDTH: u32 = 800;

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// A plot was given no data points.
    #[error("{plot}: no data to plot")]
    Empty {
        /// The plot's name.
        plot: &'static str,
    },
    /// A value that is NaN or infinite, or outside its range (an accuracy outside [0, 1], a
    /// size of zero bytes on a log axis).
    #[error("{plot}: {what} {value} is not a finite value in range")]
    BadValue {
        /// The plot's name.
        plot: &'static str,
        /// Which value.
        what: String,
        /// The value.
        value: f64,
    },
    /// Two lists that must have the same length do not.
    #[error("{plot}: {what}: expected {expected} values, got {found}")]
    LengthMismatch {
        /// The plot's name.
        plot: &'static str,
        /// Which list.
        what: String,
        /// Length expected.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// plotters failed to draw.
    #[error("{plot}: drawing failed: {message}")]
    Draw {
        /// The plot's name.
        plot: &'static str,
        /// plotters' message.
        message: String,
    },
}

/// `Result` with [`PlotError`].
pub type Result<T, E = PlotError> = std::result::Result<T, E>;

/// Okabe and Ito's colour-blind-safe palette (black last).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

const FONT: &str = "sans-serif";

/// The font at `size` pixels: plotters' SVG backend writes sizes divided by 1.24.
fn font(size: f64) -> FontDesc<'static> {
    (FONT, size * 1.24).into_font()
}

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn draw_err<E: std::fmt::Display>(plot: &'static str) -> impl Fn(E) -> PlotError {
    move |e| PlotError::Draw {
        plot,
        message: e.to_string(),
    }
}

fn check(
    plot: &'static str,
    what: impl Fn() -> String,
    value: f64,
    lo: f64,
    hi: f64,
) -> Result<()> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(PlotError::BadValue {
            plot,
            what: what(),
            value,
        })
    }
}

fn check_accuracy(plot: &'static str, label: &str, values: &[f64]) -> Result<()> {
    for (i, &a) in values.iter().enumerate() {
        check(plot, || format!("{label} accuracy [{i}]"), a, 0.0, 1.0)?;
    }
    Ok(())
}

/// `[lo, hi]` widened by 5 % of the span each side (or ±`pad` when flat), for an axis range.
fn padded(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    let span = hi - lo;
    if span <= f64::EPSILON {
        (lo - pad, hi + pad)
    } else {
        (lo - 0.05 * span, hi + 0.05 * span)
    }
}

/// The axes' look shared by every chart: 14 px labels, 15 px axis titles, one faint line
/// between the labelled ones.
trait HouseStyle {
    fn house_style(&mut self) -> &mut Self;
}

impl<X: Ranged, Y: Ranged, DB: DrawingBackend> HouseStyle for MeshStyle<'_, '_, X, Y, DB> {
    fn house_style(&mut self) -> &mut Self {
        self.label_style(font(14.0))
            .axis_desc_style(font(15.0))
            .max_light_lines(1)
            .light_line_style(RGBColor(242, 242, 242))
    }
}

/// Draws the series' legend in `corner`, on a translucent white box.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    corner: SeriesLabelPosition,
    plot: &'static str,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(corner)
        .label_font(font(14.0))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(draw_err(plot))
}

/// Renders `draw` on an SVG canvas of [`WIDTH`] × `height` and returns the document.
fn render(
    plot: &'static str,
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err(plot))?;
        draw(&root)?;
        root.present().map_err(draw_err(plot))?;
    }
    Ok(svg)
}

/// One training run's per-epoch figures for [`training_curves`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRun {
    /// Legend text, e.g. `small CNN, Adam 1e-3`.
    pub label: String,
    /// Training loss after each epoch.
    pub loss: Vec<f64>,
    /// Accuracy after each epoch, in [0, 1] (training or test: say which in the label).
    pub accuracy: Vec<f64>,
}

/// Loss (left) and accuracy (right, %) against epoch, one colour per run.
///
/// # Errors
/// [`PlotError::Empty`] without runs or epochs, [`PlotError::LengthMismatch`] if a run's loss
/// and accuracy differ in length, [`PlotError::BadValue`] for a non-finite or negative loss or
/// an accuracy outside [0, 1].
pub fn training_curves(runs: &[TrainingRun]) -> Result<String> {
    const PLOT: &str = "training curves";
    if runs.is_empty() || runs.iter().all(|r| r.loss.is_empty()) {
        return Err(PlotError::Empty { plot: PLOT });
    }
    for r in runs {
        if r.loss.len() != r.accuracy.len() {
            return Err(PlotError::LengthMismatch {
                plot: PLOT,
                what: format!("{} accuracy (one per epoch of loss)", r.label),
                expected: r.loss.len(),
                found: r.accuracy.len(),
            });
        }
        for (i, &l) in r.loss.iter().enumerate() {
            check(PLOT, || format!("{} loss [{i}]", r.label), l, 0.0, f64::MAX)?;
        }
        check_accuracy(PLOT, &r.label, &r.accuracy)?;
    }
    let epochs = runs.iter().map(|r| r.loss.len()).max().unwrap_or(1);
    let x_hi = (epochs as f64).max(2.0) + 0.1;
    render(PLOT, 420, |root| {
        let (left, right) = root.split_horizontally(WIDTH / 2);
        let panels: [(&DrawingArea<_, _>, &str, f64); 2] = [
            (&left, "training loss", 1.0),
            (&right, "accuracy (%)", 100.0),
        ];
        for (k, (area, desc, scale)) in panels.into_iter().enumerate() {
            let values = |r: &TrainingRun| -> Vec<f64> {
                let v = if k == 0 { &r.loss } else { &r.accuracy };
                v.iter().map(|x| x * scale).collect()
            };
            let (y_lo, y_hi) = padded(runs.iter().flat_map(values), 0.05 * scale);
            let y_lo = y_lo.max(0.0);
            let mut chart = ChartBuilder::on(area)
                .caption(
                    if k == 0 {
                        "Loss per epoch"
                    } else {
                        "Accuracy per epoch"
                    },
                    font(20.0),
                )
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(60)
                .build_cartesian_2d(0.9..x_hi, y_lo..y_hi)
                .map_err(draw_err(PLOT))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(desc)
                .x_labels(epochs.min(10) + 1)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .house_style()
                .draw()
                .map_err(draw_err(PLOT))?;
            for (i, r) in runs.iter().enumerate() {
                let c = colour(i);
                let pts: Vec<(f64, f64)> = values(r)
                    .into_iter()
                    .enumerate()
                    .map(|(e, v)| ((e + 1) as f64, v))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(draw_err(PLOT))?
                    .label(r.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                    .map_err(draw_err(PLOT))?;
            }
            let corner = if k == 0 {
                SeriesLabelPosition::UpperRight
            } else {
                SeriesLabelPosition::LowerRight
            };
            legend(&mut chart, corner, PLOT)?;
        }
        Ok(())
    })
}

/// One point of an accuracy-against-size plot.
#[derive(Debug, Clone, PartialEq)]
pub struct SizePoint {
    /// Written beside the point (e.g. `80 %`), or the reference's name (`TFLite`); may be empty.
    pub label: String,
    /// Compressed model size in bytes.
    pub bytes: f64,
    /// Test accuracy in [0, 1].
    pub accuracy: f64,
}

/// A line of [`SizePoint`]s, e.g. a sparsity sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeSeries {
    /// Legend text.
    pub label: String,
    /// The points, joined in the order given.
    pub points: Vec<SizePoint>,
}

/// Accuracy (%) against compressed size (bytes, log axis): each series a line with its points
/// labelled, each reference a black diamond with its name beside it.
///
/// # Errors
/// [`PlotError::Empty`] with no point at all, [`PlotError::BadValue`] for a size that is not a
/// positive finite number or an accuracy outside [0, 1].
pub fn accuracy_vs_size(series: &[SizeSeries], references: &[SizePoint]) -> Result<String> {
    const PLOT: &str = "accuracy against size";
    let all: Vec<&SizePoint> = series
        .iter()
        .flat_map(|s| &s.points)
        .chain(references)
        .collect();
    if all.is_empty() {
        return Err(PlotError::Empty { plot: PLOT });
    }
    for p in &all {
        check(
            PLOT,
            || format!("{} bytes", p.label),
            p.bytes,
            1.0,
            f64::MAX,
        )?;
        check(
            PLOT,
            || format!("{} accuracy", p.label),
            p.accuracy,
            0.0,
            1.0,
        )?;
    }
    let (b_lo, b_hi) = all.iter().fold((f64::INFINITY, 0f64), |(l, h), p| {
        (l.min(p.bytes), h.max(p.bytes))
    });
    let (x_lo, x_hi) = (b_lo / 1.6, b_hi * 1.6);
    let (y_lo, y_hi) = padded(all.iter().map(|p| p.accuracy * 100.0), 1.0);
    render(PLOT, 500, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Accuracy against compressed size", font(22.0))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (x_lo..x_hi).log_scale(),
                y_lo..(y_hi + 0.04 * (y_hi - y_lo)),
            )
            .map_err(draw_err(PLOT))?;
        chart
            .configure_mesh()
            .x_desc("model file size, bytes (log scale)")
            .y_desc("test accuracy (%)")
            .disable_x_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .house_style()
            .draw()
            .map_err(draw_err(PLOT))?;
        // plotters' log axis puts its ticks at unround sizes: draw 1, 2, 5 × 10^k instead.
        let y_bottom = chart.y_range().start;
        let y_top = chart.y_range().end;
        for v in log_ticks(x_lo, x_hi) {
            chart
                .draw_series([PathElement::new(
                    [(v, y_bottom), (v, y_top)],
                    RGBColor(225, 225, 225),
                )])
                .map_err(draw_err(PLOT))?;
            let (px, py) = chart.backend_coord(&(v, y_bottom));
            root.draw(&PathElement::new([(px, py), (px, py + 5)], BLACK))
                .map_err(draw_err(PLOT))?;
            root.draw(&Text::new(
                group_thousands(v.round() as u64),
                (px, py + 16),
                font(14.0)
                    .into_text_style(root)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            ))
            .map_err(draw_err(PLOT))?;
        }
        for (i, s) in series.iter().enumerate() {
            let c = colour(i);
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|p| (p.bytes, p.accuracy * 100.0))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(draw_err(PLOT))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(draw_err(PLOT))?;
            chart
                .draw_series(s.points.iter().map(|p| {
                    EmptyElement::at((p.bytes, p.accuracy * 100.0))
                        + Text::new(p.label.clone(), (7, 6), font(14.0).color(&c))
                }))
                .map_err(draw_err(PLOT))?;
        }
        if !references.is_empty() {
            let black = RGBColor(0, 0, 0);
            chart
                .draw_series(references.iter().enumerate().map(|(i, p)| {
                    // Names stack below their points, one line per reference, so close points
                    // stay legible; in the right third they go to the left, to stay inside.
                    let right = (p.bytes / x_lo).ln() > 0.66 * (x_hi / x_lo).ln();
                    let (dx, h) = if right {
                        (-8, HPos::Right)
                    } else {
                        (8, HPos::Left)
                    };
                    let dy = 18 + 18 * i as i32;
                    EmptyElement::at((p.bytes, p.accuracy * 100.0))
                        + Polygon::new(vec![(0, -7), (7, 0), (0, 7), (-7, 0)], black.filled())
                        + Text::new(
                            p.label.clone(),
                            (dx, dy),
                            font(15.0)
                                .into_text_style(root)
                                .pos(Pos::new(h, VPos::Center)),
                        )
                }))
                .map_err(draw_err(PLOT))?
                .label("reference")
                .legend(move |(x, y)| {
                    Polygon::new(
                        vec![(x + 10, y - 6), (x + 16, y), (x + 10, y + 6), (x + 4, y)],
                        black.filled(),
                    )
                });
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight, PLOT)
    })
}

/// The sizes 1, 2 and 5 × 10^k in `[lo, hi]`: round tick positions for a log axis.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powi(lo.max(1.0).log10().floor() as i32);
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = m * decade;
            if (lo..=hi).contains(&v) {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// `n` with its thousands separated by commas, as the tables and axes print sizes.
///
/// ```
/// assert_eq!(pare::plot::group_thousands(84_848), "84,848");
/// ```
pub fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Counts of `values` in `bins` equal bins over `[lo, hi]` (the last bin closed).
fn histogram(values: impl Iterator<Item = f64>, lo: f64, hi: f64, bins: usize) -> Vec<usize> {
    let mut counts = vec![0; bins];
    let width = (hi - lo) / bins as f64;
    for v in values {
        let b = (((v - lo) / width).floor() as isize).clamp(0, bins as isize - 1);
        counts[b as usize] += 1;
    }
    counts
}

/// A layer's float weights (left, 60 bins over their range) beside its int8 codes (right, one
/// bar per code in use), with counts on the vertical axes.
///
/// # Errors
/// [`PlotError::Empty`] if either list is empty, [`PlotError::LengthMismatch`] if they differ
/// in length (they are the same tensor), [`PlotError::BadValue`] for a non-finite weight.
pub fn weight_histograms(layer: &str, float: &[f32], int8: &[i8]) -> Result<String> {
    const PLOT: &str = "weight histograms";
    if float.is_empty() || int8.is_empty() {
        return Err(PlotError::Empty { plot: PLOT });
    }
    if float.len() != int8.len() {
        return Err(PlotError::LengthMismatch {
            plot: PLOT,
            what: format!("{layer} int8 codes (one per float weight)"),
            expected: float.len(),
            found: int8.len(),
        });
    }
    for (i, &w) in float.iter().enumerate() {
        check(
            PLOT,
            || format!("{layer} weight [{i}]"),
            w.into(),
            f64::MIN,
            f64::MAX,
        )?;
    }
    let (f_lo, f_hi) = padded(float.iter().map(|&w| f64::from(w)), 0.01);
    let bins = 60;
    let f_counts = histogram(float.iter().map(|&w| f64::from(w)), f_lo, f_hi, bins);
    let (q_lo, q_hi) = int8.iter().fold((i32::MAX, i32::MIN), |(l, h), &q| {
        (l.min(q.into()), h.max(q.into()))
    });
    let q_counts = histogram(
        int8.iter().map(|&q| f64::from(q)),
        f64::from(q_lo),
        f64::from(q_hi) + 1.0,
        (q_hi - q_lo + 1) as usize,
    );
    let title = format!("{layer}: {} weights", group_thousands(float.len() as u64));
    render(PLOT, 420, |root| {
        let root = root.titled(&title, font(20.0)).map_err(draw_err(PLOT))?;
        let (left, right) = root.split_horizontally(WIDTH / 2);
        let f_width = (f_hi - f_lo) / bins as f64;
        let f_bars: Vec<(f64, f64, usize)> = f_counts
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                (
                    f_lo + i as f64 * f_width,
                    f_lo + (i + 1) as f64 * f_width,
                    n,
                )
            })
            .collect();
        let q_bars: Vec<(f64, f64, usize)> = q_counts
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let x = f64::from(q_lo) + i as f64;
                (x - 0.4, x + 0.4, n)
            })
            .collect();
        let panels = [
            (
                &left,
                "float32",
                "weight value",
                (f_lo, f_hi),
                f_bars,
                colour(0),
            ),
            (
                &right,
                "int8",
                "int8 code (weight / its channel's scale)",
                (f64::from(q_lo) - 1.0, f64::from(q_hi) + 1.0),
                q_bars,
                colour(1),
            ),
        ];
        for (area, caption, desc, (x_lo, x_hi), bars, c) in panels {
            let top = bars.iter().map(|b| b.2).max().unwrap_or(1).max(1) as f64 * 1.08;
            let mut chart = ChartBuilder::on(area)
                .caption(caption, font(18.0))
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(60)
                .build_cartesian_2d(x_lo..x_hi, 0.0..top)
                .map_err(draw_err(PLOT))?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc(desc)
                .y_desc("weights (count)")
                .x_labels(6)
                .y_label_formatter(&|y| format!("{y:.0}"))
                .x_label_formatter(&|x| {
                    if caption == "int8" {
                        format!("{x:.0}")
                    } else {
                        format!("{x:.2}")
                    }
                })
                .house_style()
                .draw()
                .map_err(draw_err(PLOT))?;
            chart
                .draw_series(
                    bars.into_iter()
                        .filter(|b| b.2 > 0)
                        .map(|(a, b, n)| Rectangle::new([(a, 0.0), (b, n as f64)], c.filled())),
                )
                .map_err(draw_err(PLOT))?;
        }
        Ok(())
    })
}

/// One seed's per-epoch test accuracy for [`distilled_vs_scratch`].
#[derive(Debug, Clone, PartialEq)]
pub struct SeedRun {
    /// The seed, written in the legend.
    pub seed: u64,
    /// Test accuracy after each epoch, in [0, 1].
    pub accuracy: Vec<f64>,
}

/// The student's test accuracy (%) per epoch, distilled and trained from scratch: a thin line
/// per seed and a thick one for the mean over seeds, one colour per kind.
///
/// # Errors
/// [`PlotError::Empty`] if both lists are empty or a run has no epoch,
/// [`PlotError::BadValue`] for an accuracy outside [0, 1].
pub fn distilled_vs_scratch(distilled: &[SeedRun], scratch: &[SeedRun]) -> Result<String> {
    const PLOT: &str = "distilled against scratch";
    let runs = distilled.iter().chain(scratch);
    if distilled.is_empty() && scratch.is_empty() {
        return Err(PlotError::Empty { plot: PLOT });
    }
    for r in runs.clone() {
        if r.accuracy.is_empty() {
            return Err(PlotError::Empty { plot: PLOT });
        }
        check_accuracy(PLOT, &format!("seed {}", r.seed), &r.accuracy)?;
    }
    let epochs = runs.clone().map(|r| r.accuracy.len()).max().unwrap_or(1);
    let (y_lo, y_hi) = padded(runs.flat_map(|r| r.accuracy.iter().map(|a| a * 100.0)), 0.5);
    render(PLOT, 480, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Student accuracy per epoch: distilled and from scratch",
                font(20.0),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0.9..(epochs as f64).max(2.0) + 0.1, y_lo..y_hi)
            .map_err(draw_err(PLOT))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("test accuracy (%)")
            .x_labels(epochs.min(10) + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .house_style()
            .draw()
            .map_err(draw_err(PLOT))?;
        for (k, (name, group)) in [("distilled", distilled), ("from scratch", scratch)]
            .into_iter()
            .enumerate()
        {
            if group.is_empty() {
                continue;
            }
            let c = colour(k);
            for r in group {
                chart
                    .draw_series(LineSeries::new(
                        r.accuracy
                            .iter()
                            .enumerate()
                            .map(|(e, a)| ((e + 1) as f64, a * 100.0)),
                        c.mix(0.45).stroke_width(1),
                    ))
                    .map_err(draw_err(PLOT))?;
            }
            let mean: Vec<(f64, f64)> = (0..epochs)
                .filter_map(|e| {
                    let v: Vec<f64> = group
                        .iter()
                        .filter_map(|r| r.accuracy.get(e))
                        .copied()
                        .collect();
                    (!v.is_empty()).then(|| {
                        (
                            (e + 1) as f64,
                            100.0 * v.iter().sum::<f64>() / v.len() as f64,
                        )
                    })
                })
                .collect();
            let seeds: Vec<String> = group.iter().map(|r| r.seed.to_string()).collect();
            chart
                .draw_series(LineSeries::new(mean.clone(), c.stroke_width(3)))
                .map_err(draw_err(PLOT))?
                .label(format!(
                    "{name}: mean of seeds {} (thin: each seed)",
                    seeds.join(", ")
                ))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
            chart
                .draw_series(mean.into_iter().map(|p| Circle::new(p, 4, c.filled())))
                .map_err(draw_err(PLOT))?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight, PLOT)
    })
}

/// Viridis at `t` in [0, 1], interpolated between eight of its stops.
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 8] = [
        (68, 1, 84),
        (70, 50, 127),
        (54, 92, 141),
        (39, 127, 142),
        (31, 161, 135),
        (74, 194, 109),
        (159, 218, 58),
        (253, 231, 37),
    ];
    let x = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (f64::from(a) + f * (f64::from(b) - f64::from(a))).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// A heat map of `values[row][col]` over the temperature `temperatures[col]` (columns) and the
/// hard-label weight `alphas[row]` (rows), each cell coloured on a viridis scale and labelled
/// with its value (`{:.2}`), with a colour legend in `unit` on the right. `title` goes on top.
///
/// # Errors
/// [`PlotError::Empty`] without rows or columns, [`PlotError::LengthMismatch`] if `values` is
/// not `alphas.len()` rows of `temperatures.len()`, [`PlotError::BadValue`] for a non-finite
/// value.
pub fn temperature_alpha_heat_map(
    title: &str,
    unit: &str,
    temperatures: &[f64],
    alphas: &[f64],
    values: &[Vec<f64>],
) -> Result<String> {
    const PLOT: &str = "heat map";
    if temperatures.is_empty() || alphas.is_empty() {
        return Err(PlotError::Empty { plot: PLOT });
    }
    if values.len() != alphas.len() {
        return Err(PlotError::LengthMismatch {
            plot: PLOT,
            what: "rows (one per alpha)".into(),
            expected: alphas.len(),
            found: values.len(),
        });
    }
    for (r, row) in values.iter().enumerate() {
        if row.len() != temperatures.len() {
            return Err(PlotError::LengthMismatch {
                plot: PLOT,
                what: format!("row {r} (one value per temperature)"),
                expected: temperatures.len(),
                found: row.len(),
            });
        }
        for (c, &v) in row.iter().enumerate() {
            check(PLOT, || format!("value [{r}][{c}]"), v, f64::MIN, f64::MAX)?;
        }
    }
    let (lo, hi) = values
        .iter()
        .flatten()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let (rows, cols) = (alphas.len() as i32, temperatures.len() as i32);
    // Layout in pixels: axis titles and labels left and below, the legend on the right.
    let (left, top, right_w, bottom) = (110, 60, 150, 80);
    let height = (top + bottom + rows * 70).clamp(300, 700);
    let grid_w = WIDTH as i32 - left - right_w;
    let grid_h = height - top - bottom;
    let (cw, ch) = (grid_w / cols, grid_h / rows);
    render(PLOT, height as u32, |root| {
        let e = draw_err(PLOT);
        let text = |size: f64| TextStyle::from(font(size));
        let centred = |s: f64| text(s).pos(Pos::new(HPos::Center, VPos::Center));
        root.draw(&Text::new(
            title.to_owned(),
            (WIDTH as i32 / 2, 24),
            centred(20.0),
        ))
        .map_err(&e)?;
        for (r, row) in values.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let (x0, y0) = (left + c as i32 * cw, top + r as i32 * ch);
                let t = (v - lo) / span;
                let fill = viridis(t);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cw, y0 + ch)],
                    fill.filled(),
                ))
                .map_err(&e)?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cw, y0 + ch)],
                    WHITE.stroke_width(1),
                ))
                .map_err(&e)?;
                // Dark text on the light end of the scale, white on the dark end.
                let ink = if t > 0.6 { BLACK } else { WHITE };
                root.draw(&Text::new(
                    format!("{v:.2}"),
                    (x0 + cw / 2, y0 + ch / 2),
                    centred(16.0).color(&ink),
                ))
                .map_err(&e)?;
            }
        }
        for (c, t) in temperatures.iter().enumerate() {
            root.draw(&Text::new(
                format!("{t}"),
                (left + c as i32 * cw + cw / 2, top + grid_h + 16),
                centred(15.0),
            ))
            .map_err(&e)?;
        }
        root.draw(&Text::new(
            "temperature T".to_owned(),
            (left + grid_w / 2, top + grid_h + 46),
            centred(16.0),
        ))
        .map_err(&e)?;
        for (r, a) in alphas.iter().enumerate() {
            root.draw(&Text::new(
                format!("{a}"),
                (left - 24, top + r as i32 * ch + ch / 2),
                centred(15.0),
            ))
            .map_err(&e)?;
        }
        root.draw(&Text::new(
            "α (hard-label weight)".to_owned(),
            (30, top + grid_h / 2),
            centred(16.0).transform(FontTransform::Rotate270),
        ))
        .map_err(&e)?;
        // Colour legend: a vertical bar from lo (bottom) to hi (top) with five ticks.
        let (bx, bw) = (left + grid_w + 30, 22);
        let steps = 100;
        for s in 0..steps {
            let y1 = top + grid_h - (s * grid_h) / steps;
            let y0 = top + grid_h - ((s + 1) * grid_h) / steps;
            root.draw(&Rectangle::new(
                [(bx, y0), (bx + bw, y1)],
                viridis(f64::from(s) / f64::from(steps - 1)).filled(),
            ))
            .map_err(&e)?;
        }
        root.draw(&Rectangle::new(
            [(bx, top), (bx + bw, top + grid_h)],
            BLACK.stroke_width(1),
        ))
        .map_err(&e)?;
        for k in 0..5 {
            let f = f64::from(k) / 4.0;
            let y = top + grid_h - (f * f64::from(grid_h)).round() as i32;
            root.draw(&PathElement::new([(bx + bw, y), (bx + bw + 5, y)], BLACK))
                .map_err(&e)?;
            root.draw(&Text::new(
                format!("{:.2}", lo + f * (hi - lo)),
                (bx + bw + 8, y - 7),
                text(14.0),
            ))
            .map_err(&e)?;
        }
        root.draw(&Text::new(
            unit.to_owned(),
            (bx + bw / 2, top - 14),
            centred(14.0),
        ))
        .map_err(&e)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    /// Writes the plot to `$PARE_PLOT_DIR/<name>.svg` when that is set, to look at it.
    fn keep(name: &str, svg: &str) {
        if let Some(dir) = std::env::var_os("PARE_PLOT_DIR") {
            std::fs::write(std::path::Path::new(&dir).join(format!("{name}.svg")), svg).unwrap();
        }
    }

    #[test]
    fn training_curves_draw_every_run_and_label_axes() {
        let runs = [
            TrainingRun {
                label: "small CNN".into(),
                loss: vec![0.4, 0.12, 0.08, 0.06, 0.05],
                accuracy: vec![0.90, 0.96, 0.975, 0.98, 0.982],
            },
            TrainingRun {
                label: "teacher".into(),
                loss: vec![0.2, 0.05],
                accuracy: vec![0.97, 0.985],
            },
        ];
        let svg = training_curves(&runs).unwrap();
        keep("training_curves", &svg);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("width=\"800\""));
        for s in [
            "small CNN",
            "teacher",
            "epoch",
            "training loss",
            "accuracy (%)",
        ] {
            assert!(svg.contains(s), "{s}");
        }
        // 7 points per panel, two panels, drawn as circles.
        assert_eq!(count(&svg, "<circle"), 14);

        let mut bad = runs[0].clone();
        bad.accuracy.pop();
        assert!(matches!(
            training_curves(&[bad]),
            Err(PlotError::LengthMismatch {
                expected: 5,
                found: 4,
                ..
            })
        ));
        let mut bad = runs[0].clone();
        bad.accuracy[2] = 97.5; // a percentage where a fraction is expected
        assert!(matches!(
            training_curves(&[bad]),
            Err(PlotError::BadValue { .. })
        ));
        assert!(matches!(training_curves(&[]), Err(PlotError::Empty { .. })));
    }

    #[test]
    fn accuracy_vs_size_marks_and_names_references() {
        let sweep = SizeSeries {
            label: "every kernel pruned, int8".into(),
            points: [
                (0.5, 10_809.0, 0.9827),
                (0.8, 4_229.0, 0.9754),
                (0.95, 1_225.0, 0.7634),
            ]
            .iter()
            .map(|&(s, b, a)| SizePoint {
                label: format!("{:.0} %", s * 100.0),
                bytes: b,
                accuracy: a,
            })
            .collect(),
        };
        let refs = [
            SizePoint {
                label: "TFLite".into(),
                bytes: 8_120.0,
                accuracy: 0.9716,
            },
            SizePoint {
                label: "Deep Compression".into(),
                bytes: 20_000.0,
                accuracy: 0.98,
            },
        ];
        let svg = accuracy_vs_size(std::slice::from_ref(&sweep), &refs).unwrap();
        keep("accuracy_vs_size", &svg);
        for s in [
            "TFLite",
            "Deep Compression",
            "80 %",
            "every kernel pruned, int8",
            "bytes (log scale)",
            "test accuracy (%)",
            "reference",
        ] {
            assert!(svg.contains(s), "{s}");
        }
        assert_eq!(count(&svg, "<circle"), 3);
        // Two reference diamonds and the legend's.
        assert_eq!(count(&svg, "<polygon"), 3);

        let mut zero = sweep;
        zero.points[0].bytes = 0.0;
        assert!(matches!(
            accuracy_vs_size(&[zero], &[]),
            Err(PlotError::BadValue { .. })
        ));
        assert!(matches!(
            accuracy_vs_size(&[], &[]),
            Err(PlotError::Empty { .. })
        ));
    }

    #[test]
    fn histogram_counts_every_value_once() {
        let v = [0.0, 0.1, 0.49, 0.5, 0.99, 1.0];
        assert_eq!(histogram(v.iter().copied(), 0.0, 1.0, 2), vec![3, 3]);
        let codes: Vec<f64> = (-3..=3).map(f64::from).collect();
        // One bin per code: [-3, 4) in 7 bins.
        assert_eq!(histogram(codes.into_iter(), -3.0, 4.0, 7), vec![1; 7]);
    }

    #[test]
    fn weight_histograms_draw_both_panels() {
        let float: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin() * 0.3).collect();
        let scale = 0.3 / 127.0;
        let int8: Vec<i8> = float.iter().map(|w| (w / scale).round() as i8).collect();
        let svg = weight_histograms("dense.kernel", &float, &int8).unwrap();
        keep("weight_histograms", &svg);
        for s in [
            "dense.kernel: 1,000 weights",
            "float32",
            "int8",
            "weight value",
            "weights (count)",
        ] {
            assert!(svg.contains(s), "{s}");
        }
        assert!(count(&svg, "<rect") > 60);
        assert!(matches!(
            weight_histograms("x", &float, &int8[..10]),
            Err(PlotError::LengthMismatch { .. })
        ));
        assert!(matches!(
            weight_histograms("x", &[f32::NAN], &[0]),
            Err(PlotError::BadValue { .. })
        ));
    }

    #[test]
    fn distilled_vs_scratch_draws_seeds_and_means() {
        let d: Vec<SeedRun> = (0..3)
            .map(|s| SeedRun {
                seed: s,
                accuracy: vec![0.975 + 0.001 * s as f64, 0.981, 0.983],
            })
            .collect();
        let sc: Vec<SeedRun> = (0..3)
            .map(|s| SeedRun {
                seed: s,
                accuracy: vec![0.965, 0.974 - 0.002 * s as f64, 0.978],
            })
            .collect();
        let svg = distilled_vs_scratch(&d, &sc).unwrap();
        keep("distilled_vs_scratch", &svg);
        assert!(svg.contains("distilled: mean of seeds 0, 1, 2"));
        assert!(svg.contains("from scratch: mean of seeds 0, 1, 2"));
        // Markers only on the two mean lines, three epochs each.
        assert_eq!(count(&svg, "<circle"), 6);
        // Per colour: three thin seed lines, then the mean line and its legend sample.
        for c in ["#0072B2", "#D55E00"] {
            assert_eq!(
                count(&svg, &format!("opacity=\"0.45\" stroke=\"{c}\"")),
                3,
                "{c}"
            );
            assert_eq!(
                count(&svg, &format!("opacity=\"1\" stroke=\"{c}\"")),
                2,
                "{c}"
            );
        }
        assert!(distilled_vs_scratch(&d, &[]).is_ok());
        assert!(matches!(
            distilled_vs_scratch(&[], &[]),
            Err(PlotError::Empty { .. })
        ));
    }

    #[test]
    fn heat_map_writes_every_value_and_a_legend() {
        let ts = [1.0, 4.0, 10.0];
        let alphas = [0.1, 0.5];
        let values = vec![vec![97.91, 98.15, 98.32], vec![97.90, 98.14, 98.30]];
        let svg =
            temperature_alpha_heat_map("Distilled accuracy", "%", &ts, &alphas, &values).unwrap();
        keep("heat_map", &svg);
        let cell = |v: &str| svg.contains(&format!(">\n{v}\n</text>"));
        for v in ["97.91", "98.15", "98.32", "97.90", "98.14", "98.30"] {
            assert!(cell(v), "{v}");
        }
        for s in [
            "temperature T",
            "α (hard-label weight)",
            "Distilled accuracy",
        ] {
            assert!(svg.contains(s), "{s}");
        }
        assert!(cell("10") && cell("0.5"), "axis labels");
        // Legend ticks from the minimum to the maximum: the extremes also label their cells.
        let n = |v: &str| svg.matches(&format!(">\n{v}\n</text>")).count();
        assert_eq!((n("97.90"), n("98.11"), n("98.32")), (2, 1, 2));
        assert!(matches!(
            temperature_alpha_heat_map("t", "%", &ts, &alphas, &values[..1]),
            Err(PlotError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn viridis_endpoints_are_the_published_colours() {
        // matplotlib's viridis: #440154 at 0, #fde725 at 1.
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(-1.0), viridis(0.0));
    }

    #[test]
    fn log_ticks_are_one_two_five_in_range() {
        assert_eq!(log_ticks(766.0, 32_000.0), [1e3, 2e3, 5e3, 1e4, 2e4]);
        assert_eq!(log_ticks(1_091.0, 18_000.0), [2e3, 5e3, 1e4]);
        assert_eq!(log_ticks(0.5, 3.0), [1.0, 2.0]);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(8_120), "8,120");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
    }
}
