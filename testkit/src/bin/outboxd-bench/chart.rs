//! The latency chart: commit→acknowledgement p50 / p99 / p99.9 against the load actually
//! written (SVG). Steps the writers could not offer in full are drawn at the rate they did
//! write, so the x axis never claims a load that did not happen.

use std::path::Path;

use plotters::prelude::*;

use crate::sustained::Sustained;

/// Draws the chart; nothing when there are no points.
pub fn latency_svg(points: &[&Sustained], path: &Path) -> anyhow::Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_rate = points.iter().map(|p| p.achieved).fold(1.0, f64::max) * 1.1;
    let max_ms = points
        .iter()
        .map(|p| p.p999_ms)
        .fold(1.0, f64::max)
        .max(120.0)
        * 1.3;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "outboxd: commit → broker acknowledgement latency vs load",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..max_rate, (0.5f64..max_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("load written, events/s")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .y_label_formatter(&|y| format!("{y}"))
        .y_desc("latency, ms (log)")
        .draw()?;
    type Series = (&'static str, RGBColor, fn(&Sustained) -> f64);
    let series: [Series; 3] = [
        ("p50", BLUE, |s| s.p50_ms),
        ("p99", RED, |s| s.p99_ms),
        ("p99.9", MAGENTA, |s| s.p999_ms),
    ];
    for (name, color, get) in series {
        let data: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.achieved, get(p).max(0.5)))
            .collect();
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            data.iter()
                .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
        )?;
    }
    // The p99 targets of the performance issue, each up to the rate it applies to.
    for (rate, limit, label) in [
        (1_000.0, 25.0, "p99 target up to 1k/s: 25 ms"),
        (10_000.0, 50.0, "up to 10k/s: 50 ms"),
        (20_000.0, 100.0, "up to 20k/s: 100 ms"),
    ] {
        chart.draw_series(LineSeries::new(
            vec![(0.0, limit), (rate, limit)],
            BLACK.mix(0.5).stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            label,
            (rate + max_rate * 0.01, limit * 0.97),
            ("sans-serif", 13).into_font().color(&BLACK.mix(0.6)),
        )))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
