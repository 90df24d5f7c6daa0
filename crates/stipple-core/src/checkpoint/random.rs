//! Random weights of any shape a model asks for: benchmarks run real-size networks without
//! downloading checkpoints (a forward pass costs the same whatever the weight values).

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// A weight source that answers every request with small normal noise (std 0.02; norms' scales
/// around 1 so activations stay finite through deep networks).
pub struct RandomWeights;

impl RandomWeights {
    pub fn var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone())
    }
}

impl SimpleBackend for RandomWeights {
    fn get(&self, shape: Shape, name: &str, _hint: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let is_scale = shape.rank() == 1 && (name.ends_with("weight") || name.ends_with("scale"));
        let t = if is_scale {
            (Tensor::randn(0f32, 0.02, shape, dev)? + 1.0)?
        } else {
            Tensor::randn(0f32, 0.02, shape, dev)?
        };
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need the shape of `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}
