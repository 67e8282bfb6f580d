//! PNG figures with plotters: samples over filled density contours, and curves against the strength `w`.
//!
//! Text uses the DejaVu Sans font shipped in `assets/fonts` (plotters' `ab_glyph` backend), so plotting needs
//! no system font libraries.

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn ensure_font() {
    REGISTER.call_once(|| {
        // The font is compiled in, so failure here is a build defect, not a user error.
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| ())
            .expect("embedded font parses");
    });
}

fn err<E: std::fmt::Debug>(path: &Path) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e:?}", path.display())
}

/// Encode an RGB buffer as PNG and write it atomically: a full disk or a kill leaves the previous figure, never
/// half of one (plotters' own file backend writes in place).
fn write_png(path: &Path, rgb: Vec<u8>, (w, h): (u32, u32)) -> Result<()> {
    let img =
        image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| anyhow!("cannot draw {}: buffer size", path.display()))?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| anyhow!("cannot encode {}: {e}", path.display()))?;
    crate::output::write_atomic(path, &bytes)
}

/// The filled-contour levels, as fractions of the density maximum, and their colours (light to dark).
const LEVELS: [f64; 6] = [0.01, 0.05, 0.15, 0.3, 0.5, 0.75];
const LEVEL_COLORS: [RGBColor; 6] = [
    RGBColor(235, 241, 250),
    RGBColor(211, 225, 243),
    RGBColor(176, 203, 233),
    RGBColor(137, 178, 221),
    RGBColor(98, 151, 206),
    RGBColor(63, 122, 188),
];

/// A rectangle of the plane, `(x_min, x_max, y_min, y_max)`.
pub type Bounds = (f64, f64, f64, f64);

/// Scatter `points` (the first two coordinates of `[n, d]` rows) over filled contours of `log_density`.
pub fn scatter_over_density(
    path: &Path,
    title: &str,
    points: &[f32],
    d: usize,
    bounds: Bounds,
    log_density: &dyn Fn(f64, f64) -> f64,
) -> Result<()> {
    ensure_font();
    let (x0, x1, y0, y1) = bounds;
    if ![x0, x1, y0, y1].iter().all(|v| v.is_finite()) || x0 >= x1 || y0 >= y1 {
        eprintln!("warning: {} not drawn: the plotting window {bounds:?} is not a finite rectangle", path.display());
        return Ok(());
    }
    let size = (640u32, 560u32);
    let mut buf = vec![0u8; 640 * 560 * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("x1")
            .y_desc("x2")
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .draw()
            .map_err(err(path))?;

        let (nx, ny) = (160usize, 140usize);
        let (dx, dy) = ((x1 - x0) / nx as f64, (y1 - y0) / ny as f64);
        let grid: Vec<f64> = (0..nx * ny)
            .map(|i| log_density(x0 + (i % nx) as f64 * dx + dx / 2.0, y0 + (i / nx) as f64 * dy + dy / 2.0))
            .collect();
        let max = grid.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let cells = grid.iter().enumerate().filter_map(|(i, &l)| {
            let rel = (l - max).exp();
            let level = LEVELS.iter().rposition(|&v| rel >= v)?;
            let (x, y) = (x0 + (i % nx) as f64 * dx, y0 + (i / nx) as f64 * dy);
            Some(Rectangle::new([(x, y), (x + dx, y + dy)], LEVEL_COLORS[level].filled()))
        });
        chart.draw_series(cells).map_err(err(path))?;
        let pts = points
            .chunks_exact(d)
            .map(|r| (r[0] as f64, if d > 1 { r[1] as f64 } else { 0.0 }))
            .filter(|(x, y)| (x0..=x1).contains(x) && (y0..=y1).contains(y))
            .map(|p| Circle::new(p, 2, RGBAColor(214, 69, 20, 0.45).filled()));
        chart.draw_series(pts).map_err(err(path))?;
        root.present().map_err(err(path))?;
    }
    write_png(path, buf, size)
}

/// One named curve of `(x, y)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Curves against a common x axis, with optional horizontal reference lines (exact values).
pub fn curves(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    references: &[(String, f64)],
) -> Result<()> {
    curves_scaled(path, title, x_label, y_label, series, references, false)
}

/// As [`curves`], with a logarithmic x axis when `log_x` (points with x <= 0 are left out). The y axis is
/// logarithmic whenever the values (and references) are all positive and span more than two decades, so that one large
/// value does not flatten every other curve onto the axis.
pub fn curves_scaled(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    references: &[(String, f64)],
    log_x: bool,
) -> Result<()> {
    let log_y = spans_decades(series, references);
    let axis = |v: f64, log: bool| if log { v.log10() } else { v };
    let keep = |v: f64, log: bool| !log || v > 0.0;
    let scaled: Vec<Series> = series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            points: s
                .points
                .iter()
                .filter(|p| keep(p.0, log_x) && keep(p.1, log_y))
                .map(|p| (axis(p.0, log_x), axis(p.1, log_y)))
                .collect(),
        })
        .collect();
    let refs: Vec<(String, f64)> =
        references.iter().filter(|r| keep(r.1, log_y)).map(|r| (r.0.clone(), axis(r.1, log_y))).collect();
    draw_curves(path, title, (x_label, y_label), &scaled, &refs, (log_x, log_y))
}

/// `labels` and `log` are `(x, y)`: the axis descriptions and whether each axis holds log10 values.
fn draw_curves(
    path: &Path,
    title: &str,
    labels: (&str, &str),
    series: &[Series],
    references: &[(String, f64)],
    log: (bool, bool),
) -> Result<()> {
    let ((x_label, y_label), (log_x, log_y)) = (labels, log);
    ensure_font();
    // Non-finite values (an overflowed reward, say) are left out rather than drawn at the frame's edge.
    let finite: Vec<Series> = series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            points: s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect(),
        })
        .collect();
    let series = &finite[..];
    let references: Vec<(String, f64)> = references.iter().filter(|r| r.1.is_finite()).cloned().collect();
    let all_x = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let all_y = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain(references.iter().map(|r| r.1));
    let (xmin, xmax) = min_max(all_x);
    let (ymin, ymax) = min_max(all_y);
    let ((x0, x1), (y0, y1)) = (padded(xmin, xmax), padded(ymin, ymax));
    // plotters' axis-label search never returns on a non-finite or empty range: skip the figure instead.
    if ![x0, x1, y0, y1].iter().all(|v| v.is_finite()) || x0 >= x1 || y0 >= y1 {
        eprintln!("warning: {} not drawn: {title} has no finite values to plot", path.display());
        return Ok(());
    }
    let size = (720u32, 480u32);
    let mut buf = vec![0u8; 720 * 480 * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(38)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err(path))?;
        let log_fmt = |v: &f64| {
            let x = 10f64.powf(*v);
            if !(1e-2..1e5).contains(&x) {
                format!("{x:.0e}")
            } else if x >= 1.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            }
        };
        let lin_fmt = |v: &f64| tick(*v);
        let x_fmt: &dyn Fn(&f64) -> String = if log_x { &log_fmt } else { &lin_fmt };
        let y_fmt: &dyn Fn(&f64) -> String = if log_y { &log_fmt } else { &lin_fmt };
        let y_desc = if log_y { format!("{y_label} (log scale)") } else { y_label.to_string() };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_desc)
            .x_label_formatter(x_fmt)
            .y_label_formatter(y_fmt)
            .draw()
            .map_err(err(path))?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
                .map_err(err(path))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err(path))?;
        }
        const REF_COLORS: [RGBColor; 3] = [RGBColor(40, 40, 40), RGBColor(30, 120, 60), RGBColor(120, 60, 160)];
        for (i, (name, y)) in references.iter().enumerate() {
            let color = REF_COLORS[i % REF_COLORS.len()];
            chart
                .draw_series(DashedLineSeries::new(vec![(x0, *y), (x1, *y)], 6, 4, color.stroke_width(2)))
                .map_err(err(path))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err(path))?;
        root.present().map_err(err(path))?;
    }
    write_png(path, buf, size)
}

/// A tick label: six significant digits at most, trailing zeros dropped (the tick positions plotters computes carry
/// binary rounding: 0.30000000000000004, 1.2999999999999998).
fn tick(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
    };
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-4..6).contains(&magnitude) {
        let sci = format!("{v:.5e}");
        let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
        return format!("{}e{exponent}", trim(mantissa.to_string()));
    }
    let decimals = (5 - magnitude).max(0) as usize;
    trim(format!("{v:.decimals$}"))
}

/// Whether every finite value (and reference) is positive and the largest is more than 100 times the smallest.
fn spans_decades(series: &[Series], references: &[(String, f64)]) -> bool {
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain(references.iter().map(|r| r.1));
    let (lo, hi) = min_max(ys);
    lo > 0.0 && hi / lo > 100.0
}

/// `[lo, hi]` widened by 6 % of its span, and by at least a relative 1e-6 so that a single value (of any size)
/// still gives a range that floating point can split into ticks.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let p = ((hi - lo) * 0.06).max(1e-6 * lo.abs().max(hi.abs()).max(1.0));
    (lo - p, hi + p)
}

fn min_max(it: impl Iterator<Item = f64>) -> (f64, f64) {
    it.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
}

/// The first `max` images of `x` (rows of `[channels, height, width]` values in [-1, 1]) as a grid of `columns`
/// columns with a 2-pixel white gap, grey or RGB.
pub fn image_grid(path: &Path, x: &[f32], image: [usize; 3], columns: usize, max: usize) -> Result<()> {
    let [c, h, w] = image;
    let n = (x.len() / (c * h * w)).min(max);
    let (cols, gap) = (columns.min(n).max(1), 2);
    let rows = n.div_ceil(cols).max(1);
    let (width, height) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut img = image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([255, 255, 255]));
    let byte = |v: f32| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
    for (i, pixels) in x.chunks_exact(c * h * w).take(n).enumerate() {
        let (x0, y0) = (gap + (i % cols) * (w + gap), gap + (i / cols) * (h + gap));
        for p in 0..h * w {
            let rgb = if c >= 3 {
                [byte(pixels[p]), byte(pixels[h * w + p]), byte(pixels[2 * h * w + p])]
            } else {
                [byte(pixels[p]); 3]
            };
            img.put_pixel((x0 + p % w) as u32, (y0 + p / w) as u32, image::Rgb(rgb));
        }
    }
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    tilt_train::write_atomic(path, &bytes)
}

/// A labelled sweep: one column per strength (headed by its label), one row per sample index (the same noise in
/// every column, so a row shows one chain under growing guidance), under a title. Small images are enlarged by an
/// integer factor (nearest neighbour) so that the labels fit.
pub fn sweep_grid(
    path: &Path,
    title: &str,
    columns: &[(String, Vec<f32>)],
    row_labels: &[String],
    image: [usize; 3],
) -> Result<()> {
    ensure_font();
    let [c, h, w] = image;
    let rows = row_labels.len();
    let zoom = (64usize.div_ceil(h.max(w))).clamp(1, 8);
    let (cell_w, cell_h, gap) = (w * zoom, h * zoom, 4usize);
    let (left, top) = (80usize, 56usize);
    // Wide enough for the title (about 9 pixels a character at this size).
    let width = (left + columns.len() * (cell_w + gap) + gap).max(9 * title.chars().count() + 16);
    let height = top + rows * (cell_h + gap) + gap;
    let mut buf = vec![255u8; width * height * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width as u32, height as u32)).into_drawing_area();
        let font = ("sans-serif", 15).into_font().color(&BLACK);
        root.draw(&Text::new(title.to_string(), (8, 6), ("sans-serif", 17).into_font().color(&BLACK)))
            .map_err(err(path))?;
        for (j, (label, _)) in columns.iter().enumerate() {
            let x = (left + gap + j * (cell_w + gap)) as i32;
            root.draw(&Text::new(label.clone(), (x, (top - 22) as i32), font.clone())).map_err(err(path))?;
        }
        for (i, label) in row_labels.iter().enumerate() {
            let y = (top + gap + i * (cell_h + gap) + cell_h / 2 - 8) as i32;
            root.draw(&Text::new(label.clone(), (8, y), font.clone())).map_err(err(path))?;
        }
        root.present().map_err(err(path))?;
    }
    let byte = |v: f32| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
    for (j, (_, x)) in columns.iter().enumerate() {
        for (i, pixels) in x.chunks_exact(c * h * w).take(rows).enumerate() {
            let (x0, y0) = (left + gap + j * (cell_w + gap), top + gap + i * (cell_h + gap));
            for py in 0..cell_h {
                for px in 0..cell_w {
                    let p = (py / zoom) * w + px / zoom;
                    let rgb = if c >= 3 {
                        [byte(pixels[p]), byte(pixels[h * w + p]), byte(pixels[2 * h * w + p])]
                    } else {
                        [byte(pixels[p]); 3]
                    };
                    let at = ((y0 + py) * width + x0 + px) * 3;
                    buf[at..at + 3].copy_from_slice(&rgb);
                }
            }
        }
    }
    write_png(path, buf, (width as u32, height as u32))
}

/// One image (`[channels, height, width]` values in [-1, 1], pixel for pixel) as a grey (1 channel) or RGB PNG.
pub fn image_png(path: &Path, pixels: &[f32], image: [usize; 3]) -> Result<()> {
    let [c, h, w] = image;
    let byte = |v: f32| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
    let mut bytes = Vec::new();
    let mut cursor = std::io::Cursor::new(&mut bytes);
    let encoded = if c >= 3 {
        let rgb: Vec<u8> = (0..h * w).flat_map(|p| [0, 1, 2].map(|k| byte(pixels[k * h * w + p]))).collect();
        image::RgbImage::from_raw(w as u32, h as u32, rgb).map(|i| i.write_to(&mut cursor, image::ImageFormat::Png))
    } else {
        let grey: Vec<u8> = pixels[..h * w].iter().map(|v| byte(*v)).collect();
        image::GrayImage::from_raw(w as u32, h as u32, grey).map(|i| i.write_to(&mut cursor, image::ImageFormat::Png))
    };
    encoded
        .ok_or_else(|| anyhow!("{}: {c} x {h} x {w} does not match {} values", path.display(), pixels.len()))?
        .with_context(|| format!("cannot encode {}", path.display()))?;
    tilt_train::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each of these once sent plotters' tick search into an endless loop; now the figure is skipped or drawn.
    #[test]
    fn degenerate_curves_return_at_once() {
        let dir = tempfile::tempdir().unwrap();
        type Case = (&'static str, Vec<(f64, f64)>, Vec<(String, f64)>);
        let cases: [Case; 4] = [
            ("all_nan", vec![(0.0, f64::NAN), (1.0, f64::NAN)], vec![]),
            ("all_inf", vec![(0.0, f64::INFINITY), (1.0, f64::INFINITY)], vec![("ref".into(), f64::INFINITY)]),
            ("one_huge_value", vec![(0.0, 1e12), (1.0, 1e12)], vec![]),
            ("huge_span", vec![(0.0, -1e307), (1.0, 1e307)], vec![]),
        ];
        for (name, points, refs) in cases {
            let path = dir.path().join(format!("{name}.png"));
            let series = [Series { name: "s".into(), points }];
            curves(&path, name, "w", "y", &series, &refs).unwrap();
        }
        assert!(!dir.path().join("all_nan.png").exists());
        assert!(dir.path().join("one_huge_value.png").exists());
    }

    #[test]
    fn values_spanning_decades_get_a_log_axis() {
        let s = |points: Vec<(f64, f64)>| [Series { name: "s".into(), points }];
        // image_cfg's E[1/p_eval(c|Y)]: 111,244 beside values near 1 (the flattened CFG curve).
        assert!(spans_decades(&s(vec![(0.0, 111_244.0), (1.0, 1.3), (2.0, 1.05)]), &[("real".into(), 1.2)]));
        assert!(!spans_decades(&s(vec![(0.0, 3.3), (1.0, 1.1)]), &[]));
        // A zero or negative value keeps the linear axis (a log axis cannot show it).
        assert!(!spans_decades(&s(vec![(0.0, 1000.0), (1.0, 0.0)]), &[]));
        assert!(!spans_decades(&s(vec![(0.0, 1000.0), (1.0, 1.0)]), &[("ref".into(), -1.0)]));
        // A span of decades with a reference far below still counts the reference.
        assert!(spans_decades(&s(vec![(0.0, 2.0), (1.0, 3.0)]), &[("floor".into(), 1e-3)]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.png");
        curves(&path, "log", "w", "y", &s(vec![(0.0, 111_244.0), (1.0, 1.3), (2.0, 1.05)]), &[]).unwrap();
        assert!(path.exists());
    }

    #[test]
    fn tick_labels_drop_binary_rounding() {
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(1.2999999999999998), "1.3");
        assert_eq!(tick(3.5999999999999996), "3.6");
        assert_eq!(tick(-0.5), "-0.5");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(250.0), "250");
        assert_eq!(tick(111_244.0), "111244");
        assert_eq!(tick(1.5e6), "1.5e6");
        assert_eq!(tick(2.5e-7), "2.5e-7");
        assert_eq!(tick(0.0012345678), "0.00123457");
    }
}
