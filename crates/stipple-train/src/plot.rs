//! Line charts as PNG files for the seed-claims report (plotters, bitmap backend, with a bundled
//! font so the charts need no installed fonts and look the same everywhere).

use std::path::Path;
use std::sync::Once;

use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use stipple_core::image_io::RgbImage;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Axis scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    Linear,
    /// Base-10 logarithmic; every value must be positive.
    Log,
}

/// A chart of one or more lines sharing both axes.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    /// Fixed y range (in data units); `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    pub series: Vec<Series>,
}

const FONT: &str = "sans-serif";
static FONT_ONCE: Once = Once::new();

fn register_bundled_font() {
    FONT_ONCE.call_once(|| {
        // The bundled file is a valid TrueType font; a failure here would be a packaging bug.
        register_font(FONT, FontStyle::Normal, include_bytes!("../assets/DejaVuSans.ttf"))
            .unwrap_or_else(|_| panic!("the bundled chart font does not parse"));
    });
}

/// `1000`, `25`, `0.35`, `0.004`: short tick labels for both scales.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{:.2}", v).trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

const WIDTH: usize = 720;
const HEIGHT: usize = 440;

/// Draw `chart` to a PNG at `path` (720x440). Drawn into memory and written with the engine's
/// PNG writer (no second image crate, and no half-written file on failure).
pub fn draw(chart: &Chart, path: &Path) -> Result<(), String> {
    let mut pixels = vec![255u8; WIDTH * HEIGHT * 3];
    render(chart, &mut pixels).map_err(|e| format!("drawing {}: {e}", path.display()))?;
    RgbImage { width: WIDTH, height: HEIGHT, pixels }.save_png(path, &[("title", &chart.title)]).map_err(|e| e.to_string())
}

fn render(chart: &Chart, buffer: &mut [u8]) -> Result<(), String> {
    register_bundled_font();
    let points = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        return Err(format!("chart `{}` has no points", chart.title));
    }
    let (x0, x1) = pad(chart.x_scale, x0, x1, 0.04);
    let (y0, y1) = match chart.y_range {
        Some(range) => range,
        None => pad(chart.y_scale, y0, y1, 0.08),
    };
    let root = BitMapBackend::with_buffer(buffer, (WIDTH as u32, HEIGHT as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    // plotters' log axes place ticks at 1-2-5 values; the four combinations are four types.
    match (chart.x_scale, chart.y_scale) {
        (Scale::Linear, Scale::Linear) => plot_on(&root, chart, x0..x1, y0..y1),
        (Scale::Log, Scale::Linear) => plot_on(&root, chart, (x0..x1).log_scale(), y0..y1),
        (Scale::Linear, Scale::Log) => plot_on(&root, chart, x0..x1, (y0..y1).log_scale()),
        (Scale::Log, Scale::Log) => plot_on(&root, chart, (x0..x1).log_scale(), (y0..y1).log_scale()),
    }?;
    root.present().map_err(|e| e.to_string())
}

/// Widen `[lo, hi]` by `fraction` of its span (of its log span on a log axis).
fn pad(scale: Scale, lo: f64, hi: f64, fraction: f64) -> (f64, f64) {
    match scale {
        Scale::Linear => {
            let p = ((hi - lo) * fraction).max(1e-3);
            (lo - p, hi + p)
        }
        Scale::Log => {
            let (l, h) = (lo.max(1e-12).ln(), hi.max(1e-12).ln());
            let p = ((h - l) * fraction).max(0.05);
            ((l - p).exp(), (h + p).exp())
        }
    }
}

fn plot_on<X, Y>(root: &DrawingArea<BitMapBackend, plotters::coord::Shift>, chart: &Chart, x: X, y: Y) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut c = ChartBuilder::on(root)
        .caption(&chart.title, (FONT, 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(|e| err(&e))?;
    let fmt = |v: &f64| tick(*v);
    c.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in chart.series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(2)));
        c.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(|e| err(&e))?;
    }
    c.configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_lines_in_the_series_colours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let chart = Chart {
            title: "accuracy vs steps".into(),
            x_label: "steps".into(),
            y_label: "accuracy".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Linear,
            y_range: Some((0.0, 1.0)),
            series: vec![
                Series { label: "ddim".into(), points: vec![(5.0, 0.2), (50.0, 0.9), (1000.0, 0.95)] },
                Series { label: "ddpm".into(), points: vec![(10.0, 0.1), (1000.0, 0.9)] },
            ],
        };
        draw(&chart, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let img = RgbImage::load(&path).unwrap();
        assert_eq!((img.width, img.height), (720, 440));
        // Both series' colours are on the canvas.
        for i in 0..2 {
            let c = Palette99::pick(i).to_rgba();
            let want = [c.0, c.1, c.2];
            assert!(img.pixels.chunks_exact(3).any(|p| p == want), "series {i} colour {want:?} missing");
        }
        assert!(draw(&Chart { series: vec![], ..chart }, &path).is_err());
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(1000.0), "1000");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.35), "0.35");
        assert_eq!(tick(1.0), "1");
    }
}
