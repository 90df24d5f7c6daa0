//! Renaming tensors between two key layouts, both ways, from one table.
//!
//! A [`Rule`] pairs a name in the original (CompVis / Stability) layout with a name in the
//! diffusers / transformers layout. A rule side ending in `.` is a module prefix (the rest of
//! the key is kept); otherwise it names one tensor exactly. The longest matching rule wins, so
//! general prefixes can be refined by more specific ones (a resnet's `in_layers.0.` inside its
//! block). Reading a single file maps original keys to diffusers names; writing one maps back.

use super::store::Transform;

/// How the tensor behind a rule differs between the layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// Same elements, same shape.
    Same,
    /// `[o, i, 1, 1]` (or `[o, i, 1]`) convolution weight in the original, `[o, i]` linear in diffusers.
    Conv1x1AsLinear,
    /// Transposed 2-D matrix.
    Transposed,
    /// Part `index` of `parts` equal row blocks of one original tensor (fused q/k/v).
    FusedPart { index: usize, parts: usize },
}

impl TensorKind {
    /// The transform that reads the diffusers tensor from an original tensor of `stored` shape.
    pub fn transform(self, stored: &[usize]) -> std::result::Result<Transform, String> {
        match self {
            TensorKind::Same => Ok(Transform::Identity),
            TensorKind::Conv1x1AsLinear => match stored {
                [o, i, 1, 1] | [o, i, 1] => Ok(Transform::Reshape(vec![*o, *i])),
                _ => Ok(Transform::Identity),
            },
            TensorKind::Transposed => Ok(Transform::Transpose),
            TensorKind::FusedPart { index, parts } => match stored.first() {
                Some(rows) if rows % parts == 0 => {
                    let len = rows / parts;
                    Ok(Transform::Rows { start: index * len, len })
                }
                _ => Err(format!("shape {stored:?} does not split into {parts} equal row blocks")),
            },
        }
    }

    /// The original shape of one diffusers tensor of shape `model` (for a fused part: of that
    /// part alone; the original stacks the parts' rows).
    pub fn original_shape(self, model: &[usize]) -> Vec<usize> {
        match (self, model) {
            (TensorKind::Conv1x1AsLinear, [o, i]) => vec![*o, *i, 1, 1],
            (TensorKind::Transposed, [a, b]) => vec![*b, *a],
            _ => model.to_vec(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub original: String,
    pub diffusers: String,
    pub kind: TensorKind,
    /// Accepted when reading but never written (legacy spellings of the same tensors).
    pub read_only: bool,
}

/// A set of rules for one model.
#[derive(Debug, Clone, Default)]
pub struct RuleTable {
    rules: Vec<Rule>,
}

fn side_matches(side: &str, key: &str) -> bool {
    if side.ends_with('.') {
        key.starts_with(side)
    } else {
        key == side
    }
}

impl RuleTable {
    pub fn add(&mut self, original: impl Into<String>, diffusers: impl Into<String>) {
        self.add_kind(original, diffusers, TensorKind::Same);
    }

    pub fn add_kind(&mut self, original: impl Into<String>, diffusers: impl Into<String>, kind: TensorKind) {
        self.rules.push(Rule { original: original.into(), diffusers: diffusers.into(), kind, read_only: false });
    }

    /// A rule used only when reading.
    pub fn add_read_only(&mut self, original: impl Into<String>, diffusers: impl Into<String>) {
        self.rules.push(Rule { original: original.into(), diffusers: diffusers.into(), kind: TensorKind::Same, read_only: true });
    }

    /// The diffusers names an original key provides (several for a fused tensor; none for keys
    /// the model does not use, such as EMA copies or training-only buffers).
    pub fn to_diffusers(&self, original: &str) -> Vec<(String, TensorKind)> {
        let Some(best) = self.rules.iter().filter(|r| side_matches(&r.original, original)).map(|r| r.original.len()).max()
        else {
            return Vec::new();
        };
        self.rules
            .iter()
            .filter(|r| r.original.len() == best && side_matches(&r.original, original))
            .map(|r| (format!("{}{}", r.diffusers, &original[r.original.len()..]), r.kind))
            .collect()
    }

    /// The original key a diffusers name is written to, or `None` if the layout has no place for it.
    pub fn to_original(&self, diffusers: &str) -> Option<(String, TensorKind)> {
        self.rules
            .iter()
            .filter(|r| !r.read_only && side_matches(&r.diffusers, diffusers))
            .max_by_key(|r| r.diffusers.len())
            .map(|r| (format!("{}{}", r.original, &diffusers[r.diffusers.len()..]), r.kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_rule_wins_both_ways() {
        let mut t = RuleTable::default();
        t.add("m.input_blocks.1.0.", "down_blocks.0.resnets.0.");
        t.add("m.input_blocks.1.0.in_layers.0.", "down_blocks.0.resnets.0.norm1.");
        t.add_read_only("legacy.", "down_blocks.0.resnets.0.");
        assert_eq!(t.to_diffusers("m.input_blocks.1.0.in_layers.0.weight"), vec![("down_blocks.0.resnets.0.norm1.weight".to_string(), TensorKind::Same)]);
        assert_eq!(t.to_diffusers("m.input_blocks.1.0.skip.bias")[0].0, "down_blocks.0.resnets.0.skip.bias");
        assert_eq!(t.to_original("down_blocks.0.resnets.0.norm1.weight").unwrap().0, "m.input_blocks.1.0.in_layers.0.weight");
        assert_eq!(t.to_original("down_blocks.0.resnets.0.conv1.weight").unwrap().0, "m.input_blocks.1.0.conv1.weight");
        assert_eq!(t.to_diffusers("legacy.x")[0].0, "down_blocks.0.resnets.0.x");
        // Prefixes match whole segments only: `input_blocks.1.` must not catch `input_blocks.10.`.
        assert!(t.to_diffusers("m.input_blocks.10.0.x").is_empty());
        assert!(t.to_original("up_blocks.0.x").is_none());
    }

    #[test]
    fn exact_rules_and_fused_parts() {
        let mut t = RuleTable::default();
        for (i, p) in ["q", "k", "v"].iter().enumerate() {
            t.add_kind("attn.in_proj_weight", format!("{p}_proj.weight"), TensorKind::FusedPart { index: i, parts: 3 });
        }
        let names: Vec<String> = t.to_diffusers("attn.in_proj_weight").into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["q_proj.weight", "k_proj.weight", "v_proj.weight"]);
        assert!(t.to_diffusers("attn.in_proj_weight_extra").is_empty());
        assert_eq!(t.to_original("v_proj.weight").unwrap(), ("attn.in_proj_weight".into(), TensorKind::FusedPart { index: 2, parts: 3 }));
        assert_eq!(TensorKind::FusedPart { index: 1, parts: 3 }.transform(&[6, 2]).unwrap(), Transform::Rows { start: 2, len: 2 });
        assert!(TensorKind::FusedPart { index: 1, parts: 3 }.transform(&[7, 2]).is_err());
        assert_eq!(TensorKind::Conv1x1AsLinear.transform(&[4, 4, 1, 1]).unwrap(), Transform::Reshape(vec![4, 4]));
        assert_eq!(TensorKind::Conv1x1AsLinear.transform(&[4]).unwrap(), Transform::Identity);
        assert_eq!(TensorKind::Conv1x1AsLinear.original_shape(&[4, 3]), vec![4, 3, 1, 1]);
        assert_eq!(TensorKind::Transposed.original_shape(&[4, 3]), vec![3, 4]);
    }
}
