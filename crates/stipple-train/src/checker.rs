//! Reads a scene back from an image: segments by palette colour, then measures the object.
//! Used to check the generator's captions against its pixels and to score generated images
//! (`stipple eval`).
//!
//! * background: the palette colour most pixels are nearest to;
//! * object colour: the most common other palette colour among pixels close to the palette;
//! * object mask: pixels nearer the object colour than the background along the line between
//!   the two measured colours; the largest connected region of it is the object;
//! * shape: how the object fills its bounding box (circle π/4, square 1, triangle 1/2, with the
//!   box's aspect): each shape is placed in the bounding box (reconstructed from the uncut sides
//!   where the image border cuts the object off) and the one whose pixels overlap the object's
//!   best (intersection over union) wins;
//! * size: the bounding box's width, split halfway between small and large;
//! * position: the 3x3 cell holding the centre of the (reconstructed) bounding box.

use std::collections::BTreeMap;

use stipple_core::image_io::RgbImage;

use crate::scene::{Cell, Colour, Placement, Scene, Shape, Size, IMAGE_SIZE};

/// Pixels within this distance of a palette colour count as that colour when voting for the
/// object's colour (anti-aliased edges blend two colours and may land near a third).
const CONFIDENT_DISTANCE: f64 = 60.0;
/// Fewer object pixels than this means there is no object.
const MIN_OBJECT_PIXELS: usize = 60;

/// What the checker sees in an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub background: Colour,
    pub object: Option<ObjectReading>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectReading {
    pub colour: Colour,
    pub shape: Shape,
    pub size: Size,
    pub cell: Cell,
}

/// The attributes a prompt asks for; `None` where it leaves one out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Attributes {
    pub background: Option<Colour>,
    pub colour: Option<Colour>,
    pub shape: Option<Shape>,
    pub size: Option<Size>,
    pub cell: Option<Cell>,
}

impl From<&Scene> for Attributes {
    fn from(s: &Scene) -> Self {
        Attributes {
            background: Some(s.background),
            colour: Some(s.object),
            shape: Some(s.shape),
            size: Some(s.size),
            cell: Some(s.cell),
        }
    }
}

impl Attributes {
    /// Per attribute (background, colour, shape, size, position): whether the reading shows
    /// it, `None` where it is not asked for.
    pub fn judge(&self, reading: &Reading) -> [Option<bool>; 5] {
        let o = reading.object;
        [
            self.background.map(|b| b == reading.background),
            self.colour.map(|c| o.is_some_and(|o| o.colour == c)),
            self.shape.map(|s| o.is_some_and(|o| o.shape == s)),
            self.size.map(|s| o.is_some_and(|o| o.size == s)),
            self.cell.map(|c| o.is_some_and(|o| o.cell == c)),
        ]
    }

    /// (attributes asked for that the reading shows, attributes asked for).
    pub fn score(&self, reading: &Reading) -> (usize, usize) {
        let asked: Vec<bool> = self.judge(reading).into_iter().flatten().collect();
        (asked.iter().filter(|&&ok| ok).count(), asked.len())
    }
}

/// Read the scene in a 128x128 RGB image.
pub fn read(image: &RgbImage) -> Reading {
    let pixels: Vec<[u8; 3]> = image.pixels.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
    let nearest: Vec<(Colour, f64)> = pixels.iter().map(|&p| Colour::nearest(p)).collect();
    let background = mode(nearest.iter().map(|&(c, _)| c)).unwrap_or(Colour::Black);
    let object_colour =
        mode(nearest.iter().filter(|&&(c, d)| c != background && d < CONFIDENT_DISTANCE).map(|&(c, _)| c));
    let Some(colour) = object_colour else {
        return Reading { background, object: None };
    };
    // The measured colours (generated images drift from the palette), then each pixel's position
    // on the line between them.
    let mean_of = |want: Colour| mean_colour(pixels.iter().zip(&nearest).filter(|(_, &(c, _))| c == want).map(|(p, _)| *p));
    let (bg_rgb, fg_rgb) = (mean_of(background), mean_of(colour));
    let axis: [f64; 3] = std::array::from_fn(|i| fg_rgb[i] - bg_rgb[i]);
    let axis_len2: f64 = axis.iter().map(|a| a * a).sum();
    let mask: Vec<bool> = pixels
        .iter()
        .map(|p| {
            let t: f64 = (0..3).map(|i| (p[i] as f64 - bg_rgb[i]) * axis[i]).sum::<f64>() / axis_len2.max(1.0);
            t > 0.5
        })
        .collect();
    let (w, h) = (image.width, image.height);
    let Some(region) = largest_region(&mask, w, h) else {
        return Reading { background, object: None };
    };
    if region.pixels < MIN_OBJECT_PIXELS || (w, h) != (IMAGE_SIZE, IMAGE_SIZE) {
        return Reading { background, object: None };
    }
    let (placement, _) = Shape::ALL
        .into_iter()
        .map(|shape| {
            let p = hypothesis(shape, &region);
            (p, overlap(&p, &region.mask, region.pixels))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("three hypotheses");
    let object = ObjectReading {
        colour,
        shape: placement.shape,
        size: Size::of_width(placement.width),
        cell: Cell::containing(placement.cx, placement.cy),
    };
    Reading { background, object: Some(object) }
}

fn mode(items: impl Iterator<Item = Colour>) -> Option<Colour> {
    let mut counts: BTreeMap<Colour, usize> = BTreeMap::new();
    for c in items {
        *counts.entry(c).or_default() += 1;
    }
    counts.into_iter().max_by_key(|&(_, n)| n).map(|(c, _)| c)
}

fn mean_colour(items: impl Iterator<Item = [u8; 3]>) -> [f64; 3] {
    let (mut sum, mut n) = ([0f64; 3], 0usize);
    for p in items {
        for i in 0..3 {
            sum[i] += p[i] as f64;
        }
        n += 1;
    }
    sum.map(|s| s / n.max(1) as f64)
}

/// A connected region of the mask: its pixels, their count and bounding box (ends exclusive).
#[derive(Debug, Clone)]
struct Region {
    mask: Vec<bool>,
    pixels: usize,
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
}

/// The largest 4-connected region of `mask`.
fn largest_region(mask: &[bool], w: usize, h: usize) -> Option<Region> {
    let mut seen = vec![false; mask.len()];
    let mut best: Option<Region> = None;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut r = Region { mask: Vec::new(), pixels: 0, x0: usize::MAX, y0: usize::MAX, x1: 0, y1: 0 };
        let mut members = Vec::new();
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            members.push(i);
            r.pixels += 1;
            r.x0 = r.x0.min(x);
            r.y0 = r.y0.min(y);
            r.x1 = r.x1.max(x + 1);
            r.y1 = r.y1.max(y + 1);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ];
            for j in neighbours.into_iter().flatten() {
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        if best.as_ref().is_none_or(|b| r.pixels > b.pixels) {
            r.mask = vec![false; mask.len()];
            members.iter().for_each(|&i| r.mask[i] = true);
            best = Some(r);
        }
    }
    best
}

/// Where a `shape` would have to be to show the region's bounding box: its width from a side
/// the border does not cut (or from the nominal size when both axes are cut), its centre
/// measured from the uncut edges.
fn hypothesis(shape: Shape, r: &Region) -> Placement {
    let n = IMAGE_SIZE;
    let (cut_left, cut_right, cut_top, cut_bottom) = (r.x0 == 0, r.x1 == n, r.y0 == 0, r.y1 == n);
    let (bw, bh) = ((r.x1 - r.x0) as f64, (r.y1 - r.y0) as f64);
    let aspect = shape.aspect();
    let width = match (cut_left || cut_right, cut_top || cut_bottom) {
        (false, _) => bw,
        (true, false) => bh / aspect,
        (true, true) => Size::of_width(bw.max(bh / aspect)).width(),
    };
    let height = width * aspect;
    let centre = |lo: usize, hi: usize, cut_lo: bool, cut_hi: bool, extent: f64| match (cut_lo, cut_hi) {
        (true, false) => hi as f64 - extent / 2.0,
        (false, true) => lo as f64 + extent / 2.0,
        _ => (lo + hi) as f64 / 2.0,
    };
    Placement {
        shape,
        cx: centre(r.x0, r.x1, cut_left, cut_right, width),
        cy: centre(r.y0, r.y1, cut_top, cut_bottom, height),
        width,
    }
}

/// Intersection over union of the pixels at least half covered by `p` and the object's pixels.
fn overlap(p: &Placement, object: &[bool], object_pixels: usize) -> f64 {
    let (x0, y0, x1, y1) = p.pixel_bounds();
    let (mut shape_pixels, mut both) = (0usize, 0usize);
    for y in y0..y1 {
        for x in x0..x1 {
            if p.coverage(x, y) > 0.5 {
                shape_pixels += 1;
                both += object[y * IMAGE_SIZE + x] as usize;
            }
        }
    }
    both as f64 / (shape_pixels + object_pixels - both).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn expected(scene: &Scene) -> Reading {
        Reading {
            background: scene.background,
            object: Some(ObjectReading { colour: scene.object, shape: scene.shape, size: scene.size, cell: scene.cell }),
        }
    }

    #[test]
    fn reads_every_attribute_of_rendered_scenes() {
        let mut rng = SplitMix64::new(11);
        for _ in 0..400 {
            let scene = Scene::random(&mut rng);
            assert_eq!(read(&scene.render()), expected(&scene), "{scene}");
        }
    }

    #[test]
    fn tolerates_noise_and_colour_drift() {
        let mut rng = SplitMix64::new(12);
        let mut wrong = 0;
        for _ in 0..200 {
            let scene = Scene::random(&mut rng);
            let mut img = scene.render();
            let drift: [f64; 3] = std::array::from_fn(|_| rng.uniform(-15.0, 15.0));
            for (i, p) in img.pixels.iter_mut().enumerate() {
                *p = (*p as f64 + drift[i % 3] + 10.0 * rng.normal()).round().clamp(0.0, 255.0) as u8;
            }
            let (ok, total) = Attributes::from(&scene).score(&read(&img));
            wrong += total - ok;
        }
        assert!(wrong <= 4, "{wrong} attributes misread out of 1000");
    }

    #[test]
    fn flat_image_has_no_object_and_scores_zero() {
        let img = RgbImage { width: 128, height: 128, pixels: Colour::Green.rgb().repeat(128 * 128) };
        let r = read(&img);
        assert_eq!(r, Reading { background: Colour::Green, object: None });
        let asked = Attributes { background: Some(Colour::Green), shape: Some(Shape::Circle), ..Default::default() };
        assert_eq!(asked.score(&r), (1, 2));
    }

    #[test]
    fn score_counts_only_named_attributes() {
        let mut rng = SplitMix64::new(1);
        let scene = Scene::random(&mut rng);
        let reading = expected(&scene);
        assert_eq!(Attributes::from(&scene).score(&reading), (5, 5));
        let mut wrong_shape = Attributes::from(&scene);
        wrong_shape.shape = Some(Shape::ALL.into_iter().find(|&s| s != scene.shape).unwrap());
        wrong_shape.cell = None;
        assert_eq!(wrong_shape.score(&reading), (3, 4));
    }
}
