//! Captions for the procedural scenes: varied phrasings, attributes sometimes left out (so the
//! model learns to fill them in), and sometimes no caption at all (the unconditional branch that
//! classifier-free guidance needs).

use crate::checker::Attributes;
use crate::rng::SplitMix64;
use crate::scene::{Cell, Colour, Scene, Shape, Size};

/// How captions vary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptionStyle {
    /// Probability that each of the five attributes is left out.
    pub drop_attribute: f64,
    /// Probability that the caption is empty.
    pub drop_caption: f64,
    /// Probability of a synonym ("big", "little", "middle") where one exists.
    pub synonym: f64,
}

impl Default for CaptionStyle {
    fn default() -> Self {
        Self { drop_attribute: 0.15, drop_caption: 0.1, synonym: 0.15 }
    }
}

impl CaptionStyle {
    /// Every attribute, canonical words, never empty.
    pub const FULL: CaptionStyle = CaptionStyle { drop_attribute: 0.0, drop_caption: 0.0, synonym: 0.0 };
}

/// Every word a caption can contain (the text encoder's vocabulary is built from this list).
pub const VOCABULARY: &[&str] = &[
    "a", "an", "the", "of", "on", "in", "at", "with", ",", "picture", "image", "shape", "object", "background", "small",
    "little", "large", "big", "red", "green", "blue", "yellow", "orange", "purple", "white", "black", "circle", "square",
    "triangle", "top", "bottom", "left", "right", "center", "middle",
];

/// The attributes a caption names, after dropping.
struct Named<'a> {
    size: Option<&'a str>,
    colour: Option<&'a str>,
    shape: Option<&'a str>,
    position: Option<String>,
    background: Option<&'a str>,
}

/// A caption for `scene`.
pub fn caption(scene: &Scene, style: CaptionStyle, rng: &mut SplitMix64) -> String {
    if rng.chance(style.drop_caption) {
        return String::new();
    }
    let mut keep = || !rng.chance(style.drop_attribute);
    let (k_size, k_colour, k_shape, k_position, k_background) = (keep(), keep(), keep(), keep(), keep());
    let size = match scene.size {
        Size::Large if rng.chance(style.synonym) => "big",
        Size::Small if rng.chance(style.synonym) => "little",
        s => s.name(),
    };
    let position = match scene.cell.phrase() {
        "in the center" if rng.chance(style.synonym) => "in the middle".to_string(),
        p => p.to_string(),
    };
    let named = Named {
        size: k_size.then_some(size),
        colour: k_colour.then_some(scene.object.name()),
        shape: k_shape.then_some(scene.shape.name()),
        position: k_position.then_some(position),
        background: k_background.then_some(scene.background.name()),
    };
    let template = if style == CaptionStyle::FULL { 0 } else { rng.below(5) };
    let pos = named.position.as_deref();
    let parts: Vec<String> = match (template, named.background) {
        (1, Some(bg)) => join([Some(noun_phrase(&named)), Some(format!("on {} background", with_article(bg))), pos.map(String::from)]),
        (2, Some(bg)) => join([Some(format!("{bg} background with")), Some(noun_phrase(&named)), pos.map(String::from)]),
        (3, Some(bg)) => join([Some(noun_phrase(&named)), pos.map(String::from), Some(format!(", {bg} background"))]),
        (4, bg) => join([
            Some("a picture of".to_string()),
            Some(noun_phrase(&named)),
            pos.map(String::from),
            bg.map(|b| format!("on {} background", with_article(b))),
        ]),
        (_, bg) => join([Some(noun_phrase(&named)), pos.map(String::from), bg.map(|b| format!("on {} background", with_article(b)))]),
    };
    parts.join(" ").replace(" ,", ",")
}

fn join<const N: usize>(parts: [Option<String>; N]) -> Vec<String> {
    parts.into_iter().flatten().collect()
}

/// "a large red circle", "an orange shape", "a square" ...
fn noun_phrase(named: &Named) -> String {
    let words: Vec<&str> =
        [named.size, named.colour, Some(named.shape.unwrap_or("shape"))].into_iter().flatten().collect();
    with_article(&words.join(" "))
}

/// `word` after "a" or "an", as English wants.
pub fn with_article(word: &str) -> String {
    let vowel = word.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {word}", if vowel { "an" } else { "a" })
}

/// The attributes a caption or prompt names (the inverse of [`caption`] for its phrasings): the
/// colour word right before "background" is the background's, any other the object's.
pub fn named_attributes(text: &str) -> Attributes {
    let lower = text.to_lowercase().replace(',', " ");
    let words: Vec<&str> = lower.split_whitespace().collect();
    let colour_of = |w: &str| Colour::ALL.into_iter().find(|c| c.name() == w);
    let mut named = Attributes::default();
    let (mut vertical, mut horizontal, mut centre) = (None, None, false);
    for (i, &w) in words.iter().enumerate() {
        if let Some(c) = colour_of(w) {
            if words.get(i + 1) == Some(&"background") {
                named.background = Some(c);
            } else {
                named.colour = Some(c);
            }
        }
        if let Some(shape) = Shape::ALL.into_iter().find(|s| s.name() == w) {
            named.shape = Some(shape);
        }
        match w {
            "small" | "little" => named.size = Some(Size::Small),
            "large" | "big" => named.size = Some(Size::Large),
            "top" => vertical = Some(0),
            "bottom" => vertical = Some(2),
            "left" => horizontal = Some(0),
            "right" => horizontal = Some(2),
            "center" | "centre" | "middle" => centre = true,
            _ => {}
        }
    }
    if vertical.is_some() || horizontal.is_some() || centre {
        named.cell = Some(Cell { row: vertical.unwrap_or(1), col: horizontal.unwrap_or(1) });
    }
    named
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::{Cell, Colour, Shape};

    fn scene() -> Scene {
        Scene {
            background: Colour::Blue,
            object: Colour::Orange,
            shape: Shape::Circle,
            size: Size::Large,
            cell: Cell { row: 0, col: 0 },
            jitter: (0.0, 0.0),
        }
    }

    #[test]
    fn full_style_is_the_canonical_caption() {
        let mut rng = SplitMix64::new(0);
        let c = caption(&scene(), CaptionStyle::FULL, &mut rng);
        assert_eq!(c, "a large orange circle in the top left on a blue background");
        assert_eq!(c, scene().to_string());
    }

    #[test]
    fn named_attributes_inverts_captions() {
        let mut rng = SplitMix64::new(9);
        for _ in 0..500 {
            let s = Scene::random(&mut rng);
            assert_eq!(named_attributes(&s.to_string()), Attributes::from(&s), "{s}");
        }
        let partial = named_attributes("a big shape at the bottom, black background");
        let want = Attributes {
            background: Some(Colour::Black),
            size: Some(Size::Large),
            cell: Some(Cell { row: 2, col: 1 }),
            ..Default::default()
        };
        assert_eq!(partial, want);
        assert_eq!(named_attributes(""), Attributes::default());
        assert_eq!(named_attributes("a red circle in the middle").cell, Some(Cell { row: 1, col: 1 }));
    }

    #[test]
    fn varied_captions_use_only_vocabulary_words_and_drop_things() {
        let mut rng = SplitMix64::new(5);
        let style = CaptionStyle::default();
        let (mut empty, mut without_size, mut with_an) = (0, 0, 0);
        for _ in 0..2000 {
            let mut s = Scene::random(&mut rng);
            if s.background != Colour::Orange {
                s.object = Colour::Orange;
            }
            let c = caption(&s, style, &mut rng);
            for word in c.replace(',', " , ").split_whitespace() {
                assert!(VOCABULARY.contains(&word), "`{word}` in `{c}` is not in the vocabulary");
            }
            empty += c.is_empty() as usize;
            without_size += (!c.is_empty() && !["small", "large", "big", "little"].iter().any(|w| c.contains(w))) as usize;
            with_an += c.contains("an orange") as usize;
            assert!(!c.contains("a orange") && !c.contains("a orange background") && !c.contains("  ") && !c.starts_with(' '), "{c}");
        }
        assert!((120..280).contains(&empty), "{empty}");
        assert!((150..400).contains(&without_size), "{without_size}");
        assert!(with_an > 50);
    }
}
