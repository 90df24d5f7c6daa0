//! Timestep embeddings: diffusers' sinusoidal `get_timestep_embedding` (the `Timesteps` module)
//! and the `TimestepEmbedding` MLP that follows it.

use candle_core::{DType, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::activation::Activation;
use crate::Result;

const MAX_PERIOD: f64 = 10_000.0;

/// Sinusoidal embedding `[N, dim]` (f32) of `timesteps` `[N]`, computed in f32 step by step as
/// diffusers does (`exp(-ln(10000) * i / (half - freq_shift))`, then `t * freq`), so the
/// frequencies and arguments are the same floats as the reference's.
///
/// Output halves are `[sin | cos]`, or `[cos | sin]` with `flip_sin_to_cos`; an odd `dim` gets a
/// zero last column.
pub fn sinusoidal_embedding(timesteps: &Tensor, dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> Result<Tensor> {
    let t = timesteps.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let half = dim / 2;
    // Python computes -ln(10000) in f64; torch rounds it to f32 when multiplying the f32 arange.
    let neg_log_period = (-MAX_PERIOD.ln()) as f32;
    let denominator = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((neg_log_period * i as f32) / denominator).exp()).collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &ti in &t {
        let args = freqs.iter().map(|&f| ti * f);
        let sin = args.clone().map(f32::sin);
        let cos = args.map(f32::cos);
        if flip_sin_to_cos {
            out.extend(cos);
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Ok(Tensor::from_vec(out, (t.len(), dim), timesteps.device())?)
}

/// diffusers `TimestepEmbedding`: `linear_2(act(linear_1(x)))`, then an optional post activation.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    act: Activation,
    linear_2: Linear,
    post_act: Option<Activation>,
}

impl TimestepEmbedding {
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        act: Activation,
        post_act: Option<Activation>,
    ) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(in_dim, out_dim, vb.pp("linear_1"))?,
            act,
            linear_2: candle_nn::linear(out_dim, out_dim, vb.pp("linear_2"))?,
            post_act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.act.apply(&self.linear_1.forward(x)?)?;
        let h = self.linear_2.forward(&h)?;
        match self.post_act {
            Some(a) => a.apply(&h),
            None => Ok(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_formula_and_layout() {
        let t = Tensor::new(&[0f32, 501.0], &Device::Cpu).unwrap();
        let e = sinusoidal_embedding(&t, 8, false, 1.0).unwrap().to_vec2::<f32>().unwrap();
        // freq_shift 1: exponents i / (half - 1) over [0, 1], so the last frequency is 1e-4.
        for (i, want_freq) in [1.0f64, 10_000f64.powf(-1.0 / 3.0), 10_000f64.powf(-2.0 / 3.0), 1e-4].iter().enumerate()
        {
            assert!((e[1][i] as f64 - (501.0 * want_freq).sin()).abs() < 1e-4);
            assert!((e[1][4 + i] as f64 - (501.0 * want_freq).cos()).abs() < 1e-4);
            assert_eq!(e[0][i], 0.0);
            assert_eq!(e[0][4 + i], 1.0);
        }
        let flipped = sinusoidal_embedding(&t, 8, true, 1.0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(flipped[1][..4], e[1][4..]);
        assert_eq!(flipped[1][4..], e[1][..4]);
    }

    #[test]
    fn odd_dim_is_zero_padded_and_freq_shift_zero() {
        let t = Tensor::new(&[3f32], &Device::Cpu).unwrap();
        let e = sinusoidal_embedding(&t, 7, true, 0.0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(e[0].len(), 7);
        assert_eq!(e[0][6], 0.0);
        // freq_shift 0: exponents i / half, so the last of 3 frequencies is 10000^(-2/3).
        let f = 10_000f64.powf(-2.0 / 3.0);
        assert!((e[0][2] as f64 - (3.0 * f).cos()).abs() < 1e-6);
    }
}
