//! The activation functions a diffusers config can name (`act_fn`, `time_embedding_act_fn`, ...),
//! as diffusers' `get_activation` maps them.

use candle_core::Tensor;
use serde::Deserialize;

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `x * sigmoid(x)`; diffusers accepts both names.
    #[serde(alias = "swish")]
    Silu,
    /// Exact (erf) GELU, PyTorch's default.
    Gelu,
    /// `x * tanh(softplus(x))`.
    Mish,
    Relu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Silu => x.silu()?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::Mish => {
                // softplus(x) = max(x, 0) + log1p(exp(-|x|)), stable for large |x|.
                let softplus = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
                (x * softplus.tanh()?)?
            }
            Activation::Relu => x.relu()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn eval(act: Activation, v: f32) -> f32 {
        let x = Tensor::new(&[v], &Device::Cpu).unwrap();
        act.apply(&x).unwrap().to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn parses_diffusers_names() {
        let a: Activation = serde_json::from_str("\"swish\"").unwrap();
        assert_eq!(a, Activation::Silu);
        let a: Activation = serde_json::from_str("\"silu\"").unwrap();
        assert_eq!(a, Activation::Silu);
        assert!(serde_json::from_str::<Activation>("\"tanh_shrink\"").is_err());
    }

    #[test]
    fn values_match_definitions() {
        let x = 0.7f32;
        assert!((eval(Activation::Silu, x) - x / (1.0 + (-x).exp())).abs() < 1e-7);
        // erf-GELU at 1.0 is 0.841344746...; the tanh approximation gives 0.841192.
        assert!((eval(Activation::Gelu, 1.0) - 0.841_344_8).abs() < 1e-6);
        let mish = |x: f32| x * ((1.0 + x.exp()).ln()).tanh();
        assert!((eval(Activation::Mish, x) - mish(x)).abs() < 1e-6);
        assert!((eval(Activation::Mish, -50.0) - mish(-50.0)).abs() < 1e-6);
        assert!(eval(Activation::Mish, 100.0).is_finite());
        assert_eq!(eval(Activation::Relu, -2.0), 0.0);
    }
}
