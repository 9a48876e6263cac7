//! The run's plots, each written as SVG and as PNG from one drawing:
//!
//! - `price_volume`: clearing price and traded volume per interval over the
//!   run (two panels sharing the time axis);
//! - `finality`: the distribution of time to finality after gate closure;
//! - `savings`: each household's saving against its grid-only bill, sorted.
//!
//! A chart is drawn once onto a [`Canvas`]; [`Svg`] turns the drawing into an
//! SVG document and [`Raster`] into pixels (with an 8×8 bitmap font)
//! that the `png` crate encodes. No system fonts, no downloads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::sim::Outcome;

/// Width and height of every plot, in pixels.
const WIDTH: u32 = 960;
const HEIGHT: u32 = 540;
/// Space around a panel's plotting area for its title, ticks and labels.
const MARGIN_LEFT: f64 = 90.0;
const MARGIN_RIGHT: f64 = 30.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;
/// Distance between raster glyphs: the 8×8 font's pixels are drawn
/// 1.25 px wide, 1.5 px tall (about a 13 px font, like the SVG's).
const GLYPH_ADVANCE_PX: f64 = 9.6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

const INK: Rgb = Rgb(40, 40, 40);
const GRID: Rgb = Rgb(220, 220, 220);
const BLUE: Rgb = Rgb(31, 119, 180);
const ORANGE: Rgb = Rgb(255, 127, 14);
const GREEN: Rgb = Rgb(44, 160, 44);
const RED: Rgb = Rgb(214, 39, 40);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

/// What a chart is drawn on.
pub trait Canvas {
    fn line(&mut self, from: (f64, f64), to: (f64, f64), color: Rgb);
    fn rect(&mut self, corner: (f64, f64), size: (f64, f64), color: Rgb);
    /// Text with its baseline's `anchor` point at `at`.
    fn text(&mut self, at: (f64, f64), text: &str, anchor: Anchor, color: Rgb);
}

/// An SVG document being written.
#[derive(Debug)]
pub struct Svg {
    body: String,
}

impl Svg {
    pub fn new() -> Svg {
        Svg {
            body: format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
                 viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"13\">\n\
                 <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
            ),
        }
    }

    pub fn finish(mut self) -> String {
        self.body.push_str("</svg>\n");
        self.body
    }
}

impl Default for Svg {
    fn default() -> Self {
        Svg::new()
    }
}

fn hex(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Canvas for Svg {
    fn line(&mut self, from: (f64, f64), to: (f64, f64), color: Rgb) {
        let _ = writeln!(
            self.body,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"1.5\"/>",
            from.0,
            from.1,
            to.0,
            to.1,
            hex(color)
        );
    }

    fn rect(&mut self, corner: (f64, f64), size: (f64, f64), color: Rgb) {
        let _ = writeln!(
            self.body,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
            corner.0,
            corner.1,
            size.0.max(0.0),
            size.1.max(0.0),
            hex(color)
        );
    }

    fn text(&mut self, at: (f64, f64), text: &str, anchor: Anchor, color: Rgb) {
        let anchor = match anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        let _ = writeln!(
            self.body,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"{}\">{}</text>",
            at.0,
            at.1,
            hex(color),
            escape(text)
        );
    }
}

/// An RGB image being drawn.
#[derive(Debug)]
pub struct Raster {
    pixels: Vec<u8>,
}

impl Raster {
    pub fn new() -> Raster {
        Raster {
            pixels: vec![255; (WIDTH * HEIGHT * 3) as usize],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if (0..i64::from(WIDTH)).contains(&x) && (0..i64::from(HEIGHT)).contains(&y) {
            let at = ((y as u32 * WIDTH + x as u32) * 3) as usize;
            self.pixels[at..at + 3].copy_from_slice(&[c.0, c.1, c.2]);
        }
    }

    /// The image as PNG bytes.
    pub fn png(&self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().context("png header")?;
        writer
            .write_image_data(&self.pixels)
            .context("png image data")?;
        writer.finish().context("png end")?;
        Ok(out)
    }
}

impl Default for Raster {
    fn default() -> Self {
        Raster::new()
    }
}

impl Canvas for Raster {
    fn line(&mut self, from: (f64, f64), to: (f64, f64), color: Rgb) {
        // Sample along the longer axis: one pixel per step, thickened by one.
        let steps = (to.0 - from.0)
            .abs()
            .max((to.1 - from.1).abs())
            .ceil()
            .max(1.0);
        for s in 0..=steps as i64 {
            let t = s as f64 / steps;
            let x = (from.0 + (to.0 - from.0) * t).round() as i64;
            let y = (from.1 + (to.1 - from.1) * t).round() as i64;
            self.set(x, y, color);
            self.set(x, y + 1, color);
        }
    }

    fn rect(&mut self, corner: (f64, f64), size: (f64, f64), color: Rgb) {
        let (x0, y0) = (corner.0.round() as i64, corner.1.round() as i64);
        let (x1, y1) = (
            (corner.0 + size.0.max(1.0)).round() as i64,
            (corner.1 + size.1).round() as i64,
        );
        for y in y0..y1.max(y0 + 1) {
            for x in x0..x1.max(x0 + 1) {
                self.set(x, y, color);
            }
        }
    }

    fn text(&mut self, at: (f64, f64), text: &str, anchor: Anchor, color: Rgb) {
        let glyph_w = GLYPH_ADVANCE_PX;
        let width = text.chars().count() as f64 * glyph_w;
        let x0 = match anchor {
            Anchor::Start => at.0,
            Anchor::Middle => at.0 - width / 2.0,
            Anchor::End => at.0 - width,
        };
        let top = at.1 - 11.0;
        for (n, ch) in text.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY
                .get(ch as usize)
                .copied()
                .unwrap_or([0; 8]);
            let left = x0 + n as f64 * glyph_w;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0u8..8 {
                    if bits & (1 << col) != 0 {
                        // Each font pixel becomes 1.25 × 1.5 screen pixels.
                        let x = left + f64::from(col) * 1.25;
                        let y = top + row as f64 * 1.5;
                        self.rect((x, y), (1.25, 1.5), color);
                    }
                }
            }
        }
    }
}

/// A value axis: its range and about five round ticks.
#[derive(Clone, Copy, Debug)]
struct Axis {
    min: f64,
    max: f64,
}

impl Axis {
    fn of(values: impl Iterator<Item = f64>, include_zero: bool) -> Axis {
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite()) {
            min = min.min(v);
            max = max.max(v);
        }
        if !min.is_finite() {
            (min, max) = (0.0, 1.0);
        }
        if include_zero {
            min = min.min(0.0);
            max = max.max(0.0);
        }
        if max - min < 1e-9 {
            max = min + 1.0;
        }
        Axis { min, max }
    }

    /// Multiples of a round step (1, 2 or 5 × 10^n, the one nearest a fifth
    /// of the range) within the range.
    fn ticks(&self) -> Vec<f64> {
        let raw = (self.max - self.min) / 5.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * magnitude)
            .min_by(|a, b| (a - raw).abs().total_cmp(&(b - raw).abs()))
            .unwrap_or(magnitude);
        let first = (self.min / step).ceil() as i64;
        let last = (self.max / step + 1e-9).floor() as i64;
        // `+ 0.0` turns -0 into 0.
        (first..=last).map(|n| n as f64 * step + 0.0).collect()
    }
}

fn label(value: f64) -> String {
    if value.abs() >= 100.0 || value.fract().abs() < 1e-9 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// How a panel's series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Line,
    Bars,
}

/// One panel: a plotting area at `top`..`top + height` with one series.
struct Panel<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    points: &'a [(f64, f64)],
    style: Style,
    color: Rgb,
    /// Colour of bars below zero (savings that are losses).
    negative: Rgb,
    top: f64,
    height: f64,
}

impl Panel<'_> {
    fn draw(&self, canvas: &mut dyn Canvas) {
        let left = MARGIN_LEFT;
        let right = f64::from(WIDTH) - MARGIN_RIGHT;
        let top = self.top + MARGIN_TOP;
        let bottom = self.top + self.height - MARGIN_BOTTOM;
        let x_axis = Axis::of(self.points.iter().map(|p| p.0), false);
        let y_axis = Axis::of(self.points.iter().map(|p| p.1), true);
        // Bars need half a slot of room at either end.
        let slot = if self.style == Style::Bars && self.points.len() > 1 {
            (x_axis.max - x_axis.min) / (self.points.len() - 1) as f64
        } else {
            0.0
        };
        let (x_min, x_max) = (x_axis.min - slot / 2.0, x_axis.max + slot / 2.0);
        let x_span = if x_max > x_min { x_max - x_min } else { 1.0 };
        let sx = |x: f64| left + (x - x_min) / x_span * (right - left);
        let sy = |y: f64| bottom - (y - y_axis.min) / (y_axis.max - y_axis.min) * (bottom - top);

        canvas.text(
            ((left + right) / 2.0, self.top + 24.0),
            self.title,
            Anchor::Middle,
            INK,
        );
        for tick in y_axis.ticks() {
            canvas.line((left, sy(tick)), (right, sy(tick)), GRID);
            canvas.text((left - 8.0, sy(tick) + 5.0), &label(tick), Anchor::End, INK);
        }
        for tick in x_axis.ticks() {
            canvas.line((sx(tick), bottom), (sx(tick), bottom + 5.0), INK);
            canvas.text((sx(tick), bottom + 22.0), &label(tick), Anchor::Middle, INK);
        }
        canvas.text(
            ((left + right) / 2.0, bottom + 42.0),
            self.x_label,
            Anchor::Middle,
            INK,
        );
        canvas.text((10.0, top - 10.0), self.y_label, Anchor::Start, INK);
        match self.style {
            Style::Line => {
                for w in self.points.windows(2) {
                    if w[0].1.is_finite() && w[1].1.is_finite() {
                        canvas.line(
                            (sx(w[0].0), sy(w[0].1)),
                            (sx(w[1].0), sy(w[1].1)),
                            self.color,
                        );
                    }
                }
            }
            Style::Bars => {
                let width = (slot / x_span * (right - left) * 0.8).max(1.0);
                for &(x, y) in self.points {
                    let (y0, y1) = (sy(y.max(0.0)), sy(y.min(0.0)));
                    let color = if y < 0.0 { self.negative } else { self.color };
                    canvas.rect((sx(x) - width / 2.0, y0), (width, y1 - y0), color);
                }
            }
        }
        canvas.line((left, bottom), (right, bottom), INK);
        canvas.line((left, top), (left, bottom), INK);
    }
}

/// Draws one chart's panels on an SVG and a raster and writes `NAME.svg`
/// and `NAME.png` in `dir`.
fn write_chart(dir: &Path, name: &str, panels: &[Panel<'_>]) -> anyhow::Result<()> {
    let mut svg = Svg::new();
    let mut raster = Raster::new();
    for panel in panels {
        panel.draw(&mut svg);
        panel.draw(&mut raster);
    }
    let svg_path = dir.join(format!("{name}.svg"));
    std::fs::write(&svg_path, svg.finish())
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    let png_path = dir.join(format!("{name}.png"));
    std::fs::write(&png_path, raster.png()?)
        .with_context(|| format!("cannot write {}", png_path.display()))?;
    Ok(())
}

/// Writes the three plots of `outcome` into `dir`.
pub fn write(dir: &Path, outcome: &Outcome) -> anyhow::Result<()> {
    let first_start = outcome.intervals.first().map_or(0, |i| i.start_s);
    let hours = |start_s: u64| (start_s - first_start) as f64 / 3600.0;
    // Per interval start, over the markets: energy traded, and the clearing
    // prices weighted by it (one market: its price and volume).
    let mut per_start: BTreeMap<u64, (u128, u64, Option<u64>)> = BTreeMap::new();
    for i in &outcome.intervals {
        let entry = per_start.entry(i.start_s).or_default();
        if let Some(r) = &i.result {
            entry.1 += r.volume_wh;
            if let Some(p) = r.clearing_price_micro_per_kwh {
                entry.0 += u128::from(p) * u128::from(r.volume_wh);
                entry.2 = Some(entry.2.map_or(p, |q| q.max(p)));
            }
        }
    }
    let price: Vec<(f64, f64)> = per_start
        .iter()
        .map(|(&start, &(weighted, volume, any))| {
            let p = match (volume, any) {
                (0, Some(p)) => p as f64,
                (0, None) => f64::NAN,
                (v, _) => weighted as f64 / v as f64,
            };
            (hours(start), p / 10_000.0)
        })
        .collect();
    let volume: Vec<(f64, f64)> = per_start
        .iter()
        .map(|(&start, &(_, wh, _))| (hours(start), wh as f64 / 1_000.0))
        .collect();
    let half = f64::from(HEIGHT) / 2.0;
    write_chart(
        dir,
        "price_volume",
        &[
            Panel {
                title: "Clearing price per interval",
                x_label: "hours from the first interval",
                y_label: "ct/kWh",
                points: &price,
                style: Style::Line,
                color: BLUE,
                negative: BLUE,
                top: 0.0,
                height: half,
            },
            Panel {
                title: "Energy traded per interval",
                x_label: "hours from the first interval",
                y_label: "kWh",
                points: &volume,
                style: Style::Bars,
                color: ORANGE,
                negative: ORANGE,
                top: half,
                height: half,
            },
        ],
    )?;

    // Finality: a histogram in 100 ms bins from the smallest to the largest.
    let finality: Vec<u64> = outcome
        .intervals
        .iter()
        .flat_map(|i| i.finality_ms.iter().copied())
        .collect();
    let bins: Vec<(f64, f64)> = match (finality.iter().min(), finality.iter().max()) {
        (Some(&lo), Some(&hi)) => {
            let (lo, hi) = (lo / 100, hi / 100);
            let mut counts = vec![0u64; (hi - lo + 1) as usize];
            for f in &finality {
                counts[(f / 100 - lo) as usize] += 1;
            }
            counts
                .iter()
                .enumerate()
                .map(|(n, c)| ((lo + n as u64) as f64 / 10.0 + 0.05, *c as f64))
                .collect()
        }
        _ => Vec::new(),
    };
    write_chart(
        dir,
        "finality",
        &[Panel {
            title: "Time to finality after gate closure (honest nodes, all intervals)",
            x_label: "seconds after gate closure (100 ms bins)",
            y_label: "node-intervals",
            points: &bins,
            style: Style::Bars,
            color: GREEN,
            negative: GREEN,
            top: 0.0,
            height: f64::from(HEIGHT),
        }],
    )?;

    // Savings per household, sorted, in EUR over the run.
    let mut savings: Vec<f64> = outcome
        .per_household
        .iter()
        .map(|h| (h.grid_only_bill_micro - h.bill_micro) as f64 / 1_000_000.0)
        .collect();
    savings.sort_by(f64::total_cmp);
    let points: Vec<(f64, f64)> = savings
        .iter()
        .enumerate()
        .map(|(n, s)| (n as f64, *s))
        .collect();
    write_chart(
        dir,
        "savings",
        &[Panel {
            title: "Saving against the grid-only bill, per household (sorted)",
            x_label: "households, from least to most saving",
            y_label: "EUR",
            points: &points,
            style: Style::Bars,
            color: BLUE,
            negative: RED,
            top: 0.0,
            height: f64::from(HEIGHT),
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let axis = Axis {
            min: 0.0,
            max: 23.0,
        };
        assert_eq!(axis.ticks(), vec![0.0, 5.0, 10.0, 15.0, 20.0]);
        let axis = Axis {
            min: -3.2,
            max: 7.9,
        };
        assert_eq!(axis.ticks(), vec![-2.0, 0.0, 2.0, 4.0, 6.0]);
    }

    #[test]
    fn a_png_decodes_to_what_was_drawn() {
        let mut raster = Raster::new();
        raster.rect((10.0, 20.0), (5.0, 5.0), RED);
        let bytes = raster.png().expect("encodes");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("decodes");
        let mut pixels = vec![0; reader.output_buffer_size().expect("sized")];
        let info = reader.next_frame(&mut pixels).expect("one frame");
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        let at = |x: u32, y: u32| {
            let i = ((y * WIDTH + x) * 3) as usize;
            Rgb(pixels[i], pixels[i + 1], pixels[i + 2])
        };
        assert_eq!(at(12, 22), RED);
        assert_eq!(at(30, 40), Rgb(255, 255, 255));
    }

    #[test]
    fn svg_text_is_escaped() {
        let mut svg = Svg::new();
        svg.text((0.0, 0.0), "a < b & c", Anchor::Start, INK);
        let doc = svg.finish();
        assert!(doc.contains("a &lt; b &amp; c"));
        assert!(doc.ends_with("</svg>\n"));
    }
}
