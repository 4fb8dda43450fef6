//! `--plot FILE.svg`: the latency distribution and the throughput over time of a run.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Latencies;

/// Percentiles drawn on the latency curve.
const PERCENTILES: [f64; 14] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// Writes an SVG with two panels: latency (µs, log scale) by percentile, and messages
/// per second over the run.
pub fn write_svg(path: &Path, title: &str, latencies: &Latencies, timeline: &[(f64, u64)]) -> anyhow::Result<()> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        anyhow::bail!("--plot writes SVG: give a file name ending in .svg");
    }
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(600);

    let points: Vec<(f64, u64)> = PERCENTILES.iter().map(|p| (*p, latencies.at_percentile(*p))).collect();
    let max = points.iter().map(|p| p.1).max().unwrap_or(1).max(2);
    let mut chart = ChartBuilder::on(&left)
        .caption("latency by percentile", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0usize..PERCENTILES.len() - 1, (1u64..max * 2).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(PERCENTILES.len())
        .x_label_formatter(&|i| format!("p{}", PERCENTILES.get(*i).copied().unwrap_or(100.0)))
        .y_desc("µs")
        .draw()?;
    chart.draw_series(LineSeries::new(
        points.iter().enumerate().map(|(i, p)| (i, p.1.max(1))),
        &BLUE,
    ))?;

    let t_max = timeline.iter().map(|t| t.0).fold(1.0, f64::max);
    let r_max = timeline.iter().map(|t| t.1).max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&right)
        .caption("throughput", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0u64..r_max + r_max / 10)?;
    chart.configure_mesh().x_desc("seconds").y_desc("msgs/s").draw()?;
    chart.draw_series(LineSeries::new(timeline.iter().copied(), &RED))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A plot is a well-formed SVG with both panels; other extensions are refused.
    #[test]
    fn writes_svg() {
        let mut l = Latencies::new();
        for us in 1..1000 {
            l.record(Duration::from_micros(us));
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.svg");
        write_svg(&file, "pubsub", &l, &[(0.25, 1000), (0.5, 4000)]).unwrap();
        let svg = std::fs::read_to_string(&file).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("latency by percentile") && svg.contains("throughput"));
        assert!(write_svg(&dir.path().join("run.png"), "x", &l, &[]).is_err());
    }
}
