//! The sweep's picture: task metric against group gap, one point per run (grey), the per-λ
//! means (blue, labelled), the Pareto front (red line and points) and the suggested λ (ringed).
//! PNG and SVG through plotters, text in the embedded DejaVu Sans.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{LambdaSummary, Point};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are the file above; a failure would be a broken build, not user input.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// What the plot shows.
pub struct ParetoPlot<'a> {
    pub summaries: &'a [LambdaSummary],
    pub points: &'a [Point],
    pub metric: &'a str,
    /// What the gap is of: the x axis's label.
    pub gap: &'a str,
    pub suggested: Option<f64>,
    pub title: &'a str,
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    plot: &ParetoPlot,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let gaps = plot.points.iter().map(|p| p.gap);
    let metrics = plot.points.iter().map(|p| p.metric);
    let max_gap = gaps.fold(0.0f64, f64::max).max(1e-3) * 1.1;
    let (lo, hi) = metrics.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), m| {
        (lo.min(m), hi.max(m))
    });
    let pad = ((hi - lo) * 0.15).max(0.02);
    let mut chart = ChartBuilder::on(&root)
        .caption(plot.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..max_gap, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc(format!("{}  ← fairer", plot.gap))
        .y_desc(format!("{}  ↑ better", plot.metric))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    chart.draw_series(
        plot.points
            .iter()
            .map(|p| Circle::new((p.gap, p.metric), 3, RGBColor(170, 170, 170).filled())),
    )?;
    let mut front: Vec<&LambdaSummary> = plot.summaries.iter().filter(|s| s.pareto).collect();
    front.sort_by(|a, b| a.gap.total_cmp(&b.gap));
    chart
        .draw_series(LineSeries::new(
            front.iter().map(|s| (s.gap, s.metric)),
            RED.stroke_width(2),
        ))?
        .label("Pareto front")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
    for s in plot.summaries {
        let color = if s.pareto { RED } else { BLUE };
        chart.draw_series(std::iter::once(Circle::new(
            (s.gap, s.metric),
            6,
            color.filled(),
        )))?;
        // The label sits up and to the right of its dot, clear of the ring.
        chart.draw_series(std::iter::once(
            EmptyElement::at((s.gap, s.metric))
                + Text::new(
                    format!("λ={}", s.lambda),
                    (12, -22),
                    ("sans-serif", 14).into_font().color(&BLACK),
                ),
        ))?;
        if plot.suggested == Some(s.lambda) {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (s.gap, s.metric),
                    11,
                    GREEN.stroke_width(3),
                )))?
                .label(format!("suggested λ = {}", s.lambda))
                .legend(|(x, y)| Circle::new((x + 9, y), 5, GREEN.stroke_width(3)));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()
}

/// Write the plot as `png` and `svg` (each written beside and renamed into place).
pub fn pareto(plot: &ParetoPlot, png: &Path, svg: &Path) -> Result<()> {
    register_font();
    let fail = |what: &Path, e: &dyn std::fmt::Display| {
        Error::runtime(format!("{}: cannot draw the plot: {e}", what.display()))
    };
    // The bitmap encoder picks the format by extension, so the temporary name ends in .png.
    let png_tmp = png.with_extension("tmp.png");
    draw(
        BitMapBackend::new(&png_tmp, (900, 640)).into_drawing_area(),
        plot,
    )
    .map_err(|e| fail(png, &e))?;
    std::fs::rename(&png_tmp, png).map_err(|e| fail(png, &e))?;
    let mut text = String::new();
    draw(
        SVGBackend::with_string(&mut text, (900, 640)).into_drawing_area(),
        plot,
    )
    .map_err(|e| fail(svg, &e))?;
    write_atomic(svg, text.as_bytes())
}
