//! Classifier-free guidance (Ho & Salimans 2022): run the denoiser on `[uncond, cond]` in one
//! batch and extrapolate from the unconditional prediction towards the conditional one.

use crate::{Error, Result};

/// How a prediction is steered towards the prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    /// `u + scale * (c - u)` above 1; at 1 and below, the conditional prediction alone (no
    /// unconditional pass), as every diffusers pipeline does (`do_classifier_free_guidance` is
    /// `guidance_scale > 1`).
    pub scale: f32,
}

impl Guidance {
    pub fn new(scale: f32) -> Result<Self> {
        if !scale.is_finite() || scale < 0.0 {
            return Err(Error::param("cfg-scale", format!("must be a finite number >= 0, got {scale}")));
        }
        Ok(Guidance { scale })
    }

    /// Whether the denoiser needs the unconditional half of the batch: only above scale 1, as
    /// in diffusers (scale 1 is the conditional prediction anyway; below 1 diffusers turns
    /// guidance off rather than blending towards the unconditional prediction, and so do we).
    pub fn needs_unconditional(&self) -> bool {
        self.scale > 1.0
    }

    /// Number of rows per image in the denoiser batch.
    pub fn batch_factor(&self) -> usize {
        if self.needs_unconditional() {
            2
        } else {
            1
        }
    }

    /// Combine the unconditional and conditional predictions, in float32 in diffusers' order.
    pub fn combine(&self, uncond: &[f32], cond: &[f32]) -> Vec<f32> {
        let g = self.scale;
        uncond.iter().zip(cond).map(|(&u, &c)| u + g * (c - u)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_extrapolates_from_uncond() {
        let g = Guidance::new(7.0).unwrap();
        assert_eq!(g.combine(&[1.0, 0.0], &[2.0, -1.0]), vec![8.0, -7.0]);
        assert!(g.needs_unconditional());
        assert_eq!(g.batch_factor(), 2);
    }

    #[test]
    fn scales_at_or_below_one_turn_guidance_off_as_diffusers_does() {
        for scale in [0.0, 0.5, 1.0] {
            let g = Guidance::new(scale).unwrap();
            assert!(!g.needs_unconditional(), "{scale}");
            assert_eq!(g.batch_factor(), 1);
        }
        assert!(Guidance::new(1.01).unwrap().needs_unconditional());
    }

    #[test]
    fn scale_one_skips_the_unconditional_pass() {
        let g = Guidance::new(1.0).unwrap();
        assert!(!g.needs_unconditional());
        assert_eq!(g.combine(&[5.0], &[3.0]), vec![3.0]);
    }

    #[test]
    fn non_finite_or_negative_scales_are_rejected_naming_the_flag() {
        for s in [f32::NAN, f32::INFINITY, -1.0] {
            let e = Guidance::new(s).unwrap_err().to_string();
            assert!(e.contains("cfg-scale"), "{e}");
        }
    }
}
