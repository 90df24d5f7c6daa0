//! The procedural scenes of the default model's training data: one flat background colour and
//! one anti-aliased object (shape, size, colour, position on a 3x3 grid), rendered at 128x128.

use std::fmt;

use stipple_core::image_io::RgbImage;

use crate::rng::SplitMix64;

/// Side of every image, in pixels.
pub const IMAGE_SIZE: usize = 128;
/// Object centres along each axis, one per grid cell, in pixels.
pub const CELL_CENTRES: [f64; 3] = [22.0, 64.0, 106.0];
/// Largest offset of an object's centre from its cell centre, per axis, in pixels.
pub const MAX_JITTER: f64 = 4.0;
/// Sub-pixel samples per axis used for anti-aliasing (coverage in steps of 1/16).
const SUPERSAMPLE: usize = 4;

/// The palette: every colour in the data, exact sRGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Orange,
    Purple,
    White,
    Black,
}

impl Colour {
    pub const ALL: [Colour; 8] =
        [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Orange, Colour::Purple, Colour::White, Colour::Black];

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 170, 60],
            Colour::Blue => [40, 80, 220],
            Colour::Yellow => [240, 210, 40],
            Colour::Orange => [240, 140, 30],
            Colour::Purple => [140, 60, 190],
            Colour::White => [245, 245, 245],
            Colour::Black => [20, 20, 20],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Orange => "orange",
            Colour::Purple => "purple",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    /// The palette colour nearest to `rgb` and the (Euclidean) distance to it.
    pub fn nearest(rgb: [u8; 3]) -> (Colour, f64) {
        let mut best = (Colour::Red, f64::INFINITY);
        for c in Colour::ALL {
            let d = distance(rgb, c.rgb());
            if d < best.1 {
                best = (c, d);
            }
        }
        best
    }
}

/// Euclidean distance between two sRGB triples.
pub fn distance(a: [u8; 3], b: [u8; 3]) -> f64 {
    a.iter().zip(&b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>().sqrt()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Circle,
    /// Axis-aligned.
    Square,
    /// Equilateral, pointing up.
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// Bounding-box height over width.
    pub fn aspect(self) -> f64 {
        match self {
            Shape::Triangle => 3f64.sqrt() / 2.0,
            Shape::Circle | Shape::Square => 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    /// Bounding-box width in pixels.
    pub fn width(self) -> f64 {
        match self {
            Size::Small => 28.0,
            Size::Large => 56.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// The size class of a bounding box `width` pixels wide (split halfway between the two).
    pub fn of_width(width: f64) -> Size {
        if width < (Size::Small.width() + Size::Large.width()) / 2.0 {
            Size::Small
        } else {
            Size::Large
        }
    }
}

/// A cell of the 3x3 grid, row 0 at the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell {
    pub row: usize,
    pub col: usize,
}

impl Cell {
    pub fn all() -> impl Iterator<Item = Cell> {
        (0..3).flat_map(|row| (0..3).map(move |col| Cell { row, col }))
    }

    /// How captions name the cell.
    pub fn phrase(self) -> &'static str {
        const PHRASES: [[&str; 3]; 3] = [
            ["in the top left", "at the top", "in the top right"],
            ["on the left", "in the center", "on the right"],
            ["in the bottom left", "at the bottom", "in the bottom right"],
        ];
        PHRASES[self.row.min(2)][self.col.min(2)]
    }

    /// The cell a point (in pixels) falls in: the image split in three equal bands per axis.
    pub fn containing(x: f64, y: f64) -> Cell {
        let band = |v: f64| ((v / (IMAGE_SIZE as f64 / 3.0)).floor().max(0.0) as usize).min(2);
        Cell { row: band(y), col: band(x) }
    }

    pub fn centre(self) -> (f64, f64) {
        (CELL_CENTRES[self.col], CELL_CENTRES[self.row])
    }
}

/// A shape at a place: its bounding box is `width` x `width * aspect` centred on (`cx`, `cy`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub shape: Shape,
    pub cx: f64,
    pub cy: f64,
    pub width: f64,
}

impl Placement {
    pub fn height(&self) -> f64 {
        self.width * self.shape.aspect()
    }

    /// Whether the point (`x`, `y`) (pixel units, pixel `i` spans `[i, i+1)`) is inside.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        let (half_w, half_h) = (self.width / 2.0, self.height() / 2.0);
        let (dx, dy) = (x - self.cx, y - self.cy);
        match self.shape {
            Shape::Square => dx.abs() <= half_w && dy.abs() <= half_h,
            Shape::Circle => dx * dx + dy * dy <= half_w * half_w,
            Shape::Triangle => {
                // Apex at the top; the half-width grows linearly to the base.
                let down = dy + half_h;
                (0.0..=2.0 * half_h).contains(&down) && dx.abs() <= half_w * down / (2.0 * half_h)
            }
        }
    }

    /// Fraction of pixel (`px`, `py`) covered, from a grid of sub-pixel samples.
    pub fn coverage(&self, px: usize, py: usize) -> f64 {
        let step = 1.0 / SUPERSAMPLE as f64;
        let mut inside = 0;
        for sy in 0..SUPERSAMPLE {
            for sx in 0..SUPERSAMPLE {
                let x = px as f64 + (sx as f64 + 0.5) * step;
                let y = py as f64 + (sy as f64 + 0.5) * step;
                inside += self.contains(x, y) as usize;
            }
        }
        inside as f64 / (SUPERSAMPLE * SUPERSAMPLE) as f64
    }

    /// The pixels the shape may touch, clipped to the image: `(x0, y0, x1, y1)`, ends exclusive.
    pub fn pixel_bounds(&self) -> (usize, usize, usize, usize) {
        let clip = |v: f64| v.clamp(0.0, IMAGE_SIZE as f64) as usize;
        let (hw, hh) = (self.width / 2.0, self.height() / 2.0);
        (
            clip((self.cx - hw).floor()),
            clip((self.cy - hh).floor()),
            clip((self.cx + hw).ceil() + 1.0),
            clip((self.cy + hh).ceil() + 1.0),
        )
    }

    /// Covered area inside the image, in pixels.
    pub fn visible_area(&self) -> f64 {
        let (x0, y0, x1, y1) = self.pixel_bounds();
        (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).map(|(x, y)| self.coverage(x, y)).sum()
    }
}

/// One training image's content.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scene {
    pub background: Colour,
    pub object: Colour,
    pub shape: Shape,
    pub size: Size,
    pub cell: Cell,
    /// Offset of the object's centre from its cell centre, pixels, each within ±[`MAX_JITTER`].
    pub jitter: (f64, f64),
}

impl Scene {
    /// Every attribute uniform; the object's colour differs from the background's.
    pub fn random(rng: &mut SplitMix64) -> Scene {
        let background = Colour::ALL[rng.below(Colour::ALL.len())];
        let others: Vec<Colour> = Colour::ALL.into_iter().filter(|&c| c != background).collect();
        let object = others[rng.below(others.len())];
        let shape = Shape::ALL[rng.below(Shape::ALL.len())];
        let size = Size::ALL[rng.below(Size::ALL.len())];
        let cell = Cell { row: rng.below(3), col: rng.below(3) };
        let jitter = (rng.uniform(-MAX_JITTER, MAX_JITTER), rng.uniform(-MAX_JITTER, MAX_JITTER));
        Scene { background, object, shape, size, cell, jitter }
    }

    pub fn placement(&self) -> Placement {
        let (cx, cy) = self.cell.centre();
        Placement { shape: self.shape, cx: cx + self.jitter.0, cy: cy + self.jitter.1, width: self.size.width() }
    }

    /// The image: the background, with the object blended in by its coverage of each pixel.
    pub fn render(&self) -> RgbImage {
        let bg = self.background.rgb();
        let fg = self.object.rgb();
        let mut pixels: Vec<u8> = bg.iter().copied().cycle().take(IMAGE_SIZE * IMAGE_SIZE * 3).collect();
        let placement = self.placement();
        let (x0, y0, x1, y1) = placement.pixel_bounds();
        for y in y0..y1 {
            for x in x0..x1 {
                let a = placement.coverage(x, y);
                if a > 0.0 {
                    let i = (y * IMAGE_SIZE + x) * 3;
                    for c in 0..3 {
                        pixels[i + c] = (bg[c] as f64 * (1.0 - a) + fg[c] as f64 * a).round() as u8;
                    }
                }
            }
        }
        RgbImage { width: IMAGE_SIZE, height: IMAGE_SIZE, pixels }
    }
}

impl Scene {
    /// How much of each `block`x`block` pixel block (one latent pixel for `block` = the
    /// autoencoder's downsampling) the object covers, in [0, 1], row-major.
    pub fn coverage_map(&self, block: usize) -> Vec<f32> {
        let side = IMAGE_SIZE / block;
        let placement = self.placement();
        let (x0, y0, x1, y1) = placement.pixel_bounds();
        let mut map = vec![0f64; side * side];
        for y in y0..y1 {
            for x in x0..x1 {
                map[(y / block) * side + x / block] += placement.coverage(x, y);
            }
        }
        map.into_iter().map(|c| (c / (block * block) as f64) as f32).collect()
    }

    /// The mean sRGB colour of each pixel block whose [`Scene::coverage_map`] is `coverage`,
    /// channel-major (`[3][side][side]`): rendering blends object and background linearly by
    /// coverage, so a block's mean is the same blend by the block's coverage (up to rounding).
    pub fn colour_map(&self, coverage: &[f32]) -> Vec<f32> {
        let (bg, fg) = (self.background.rgb(), self.object.rgb());
        (0..3)
            .flat_map(|c| coverage.iter().map(move |&a| bg[c] as f32 * (1.0 - a) + fg[c] as f32 * a))
            .collect()
    }
}

impl fmt::Display for Scene {
    /// The canonical caption, every attribute named.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} {} {} {} on {} background",
            self.size.name(),
            self.object.name(),
            self.shape.name(),
            self.cell.phrase(),
            crate::caption::with_article(self.background.name())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_match_geometry() {
        let at_centre = |shape, width| Placement { shape, cx: 64.0, cy: 64.0, width };
        let circle = at_centre(Shape::Circle, 56.0).visible_area();
        assert!((circle / (std::f64::consts::PI * 28.0 * 28.0) - 1.0).abs() < 0.01, "{circle}");
        let square = at_centre(Shape::Square, 28.0).visible_area();
        assert!((square / 784.0 - 1.0).abs() < 0.01, "{square}");
        let triangle = at_centre(Shape::Triangle, 56.0).visible_area();
        let want = 56.0 * 56.0 * 3f64.sqrt() / 4.0;
        assert!((triangle / want - 1.0).abs() < 0.01, "{triangle} vs {want}");
    }

    #[test]
    fn objects_are_clipped_at_the_border() {
        let corner = Placement { shape: Shape::Square, cx: 18.0, cy: 18.0, width: 56.0 };
        assert_eq!(corner.pixel_bounds().0, 0);
        assert!((corner.visible_area() - 46.0 * 46.0).abs() < 1.0);
    }

    #[test]
    fn render_blends_edges_and_keeps_flat_regions_exact() {
        let scene = Scene {
            background: Colour::Blue,
            object: Colour::Red,
            shape: Shape::Circle,
            size: Size::Large,
            cell: Cell { row: 1, col: 1 },
            jitter: (0.3, -0.7),
        };
        let img = scene.render();
        let px = |x: usize, y: usize| -> [u8; 3] { img.pixels[(y * 128 + x) * 3..][..3].try_into().unwrap() };
        assert_eq!(px(64, 63), Colour::Red.rgb());
        assert_eq!(px(2, 2), Colour::Blue.rgb());
        let blended = (0..128).map(|x| px(x, 63)).filter(|&p| p != Colour::Red.rgb() && p != Colour::Blue.rgb()).count();
        assert!(blended >= 2, "anti-aliased edge pixels on the row through the centre: {blended}");
    }

    #[test]
    fn colour_map_is_the_rendered_block_mean() {
        let mut rng = SplitMix64::new(5);
        for _ in 0..20 {
            let scene = Scene::random(&mut rng);
            let (image, block, side) = (scene.render(), 8, IMAGE_SIZE / 8);
            let map = scene.colour_map(&scene.coverage_map(block));
            assert_eq!(map.len(), 3 * side * side);
            for (by, bx, c) in (0..side).flat_map(|y| (0..side).flat_map(move |x| (0..3).map(move |c| (y, x, c)))) {
                let sum: f64 = (0..block * block)
                    .map(|i| image.pixels[((by * block + i / block) * IMAGE_SIZE + bx * block + i % block) * 3 + c] as f64)
                    .sum();
                let mean = sum / (block * block) as f64;
                let got = map[(c * side + by) * side + bx] as f64;
                assert!((got - mean).abs() <= 0.5, "{scene}: block ({bx},{by}) channel {c}: {got} vs rendered {mean}");
            }
        }
    }

    #[test]
    fn coverage_map_holds_the_object_where_it_is() {
        let scene = Scene {
            background: Colour::Blue,
            object: Colour::Red,
            shape: Shape::Square,
            size: Size::Small,
            cell: Cell { row: 0, col: 0 },
            jitter: (-2.0, -2.0),
        };
        // A 28 px square centred at (20, 20): pixels 6..34, i.e. blocks 0..=4 of 8 px.
        let map = scene.coverage_map(8);
        assert_eq!(map.len(), 256);
        let total: f32 = map.iter().sum();
        assert!((total * 64.0 - 784.0).abs() < 1.0, "{total}");
        assert_eq!(map[16 + 1], 1.0);
        assert_eq!(map[5], 0.0);
        // The corner block holds 2x2 of its 64 pixels.
        assert!((map[0] - 4.0 / 64.0).abs() < 1e-6, "{}", map[0]);
        assert!(map.iter().skip(5 * 16).all(|&c| c == 0.0));
    }

    #[test]
    fn cells_and_phrases() {
        assert_eq!(Cell::containing(22.0, 106.0), Cell { row: 2, col: 0 });
        assert_eq!(Cell::containing(-3.0, 200.0), Cell { row: 2, col: 0 });
        assert_eq!(Cell { row: 0, col: 1 }.phrase(), "at the top");
        assert_eq!(Cell::all().count(), 9);
    }

    #[test]
    fn random_scenes_use_two_colours() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..500 {
            let s = Scene::random(&mut rng);
            assert_ne!(s.background, s.object);
            assert!(s.jitter.0.abs() <= MAX_JITTER && s.jitter.1.abs() <= MAX_JITTER);
        }
    }
}
