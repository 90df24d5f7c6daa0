//! Random weights of any shape a model asks for: benchmarks run real-size networks without
//! downloading checkpoints (a forward pass costs the same whatever the weight values), and
//! parameter counts of a model from its config without allocating it.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::layers::{LinearFormat, LinearSource, LinearWeight, ModelWeights};
use crate::Result;

/// A weight source that answers every request with small normal noise (std 0.02; norms' scales
/// around 1 so activations stay finite through deep networks).
pub struct RandomWeights;

impl RandomWeights {
    pub fn var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone())
    }

    /// Random weights for compute in f32, linear weights kept in `format` (bf16, q4_0 ...).
    pub fn model_weights(format: LinearFormat, device: &Device) -> ModelWeights {
        ModelWeights::new(Self::var_builder(DType::F32, device), Arc::new(RandomLinears(format)))
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

/// Random linear weights in a given form.
struct RandomLinears(LinearFormat);

impl LinearSource for RandomLinears {
    fn linear_weight(&self, _: &str, out_dim: usize, in_dim: usize, _: DType, device: &Device) -> Result<Option<LinearWeight>> {
        let weight = Tensor::randn(0f32, 0.02, (out_dim, in_dim), device)?;
        Ok(Some(self.0.convert(&weight)?))
    }
}

/// The parameters of a model: every linear weight's `[out, in]` and the element count of all
/// other tensors (biases, norms, embeddings, convolutions), which stay f32.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParameterCount {
    pub linear: Vec<(usize, usize)>,
    pub other: usize,
}

impl ParameterCount {
    /// Count the parameters `build` asks for, handing it weights that allocate nothing (every
    /// tensor is one broadcast zero), so a 12B-parameter model is counted in milliseconds.
    pub fn of<T>(build: impl FnOnce(ModelWeights) -> Result<T>) -> Result<ParameterCount> {
        let count = Arc::new(Mutex::new(ParameterCount::default()));
        let vb = VarBuilder::from_backend(Box::new(Census(count.clone())), DType::F32, Device::Cpu);
        build(ModelWeights::new(vb, Arc::new(Census(count.clone()))))?;
        let count = count.lock().map(|c| c.clone()).unwrap_or_default();
        Ok(count)
    }

    pub fn total(&self) -> usize {
        self.other + self.linear.iter().map(|(o, i)| o * i).sum::<usize>()
    }

    /// Bytes of the weights with linear weights in `format` and everything else in f32.
    pub fn bytes(&self, format: LinearFormat) -> u64 {
        4 * self.other as u64 + self.linear.iter().map(|&(o, i)| format.bytes(o, i)).sum::<u64>()
    }
}

/// Records shapes and answers with stride-0 zeros.
struct Census(Arc<Mutex<ParameterCount>>);

fn zeros(shape: impl Into<Shape>, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
}

impl SimpleBackend for Census {
    fn get(&self, shape: Shape, _: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Ok(mut c) = self.0.lock() {
            c.other += shape.elem_count();
        }
        zeros(shape, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("counting parameters needs the shape of `{name}`")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

impl LinearSource for Census {
    fn linear_weight(&self, _: &str, out_dim: usize, in_dim: usize, dtype: DType, device: &Device) -> Result<Option<LinearWeight>> {
        if let Ok(mut c) = self.0.lock() {
            c.linear.push((out_dim, in_dim));
        }
        Ok(Some(LinearWeight::Dense(zeros((out_dim, in_dim), dtype, device)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dit::{FluxConfig, FluxTransformer, Sd3Config, Sd3Transformer, FLUX_SCHNELL_CONFIG, SD3_MEDIUM_CONFIG};
    use std::path::Path;

    #[test]
    fn published_transformers_count_their_published_parameters() {
        let p = Path::new("config.json");
        let flux = ParameterCount::of(|w| FluxTransformer::new(FluxConfig::from_json(FLUX_SCHNELL_CONFIG, p)?, w)).unwrap();
        // FLUX.1-dev's 11,901,408,320 less its guidance embedder (256·3072 + 3072 + 3072² + 3072).
        assert_eq!(flux.total(), 11_901_408_320 - 10_229_760);
        let sd3 = ParameterCount::of(|w| Sd3Transformer::new(Sd3Config::from_json(SD3_MEDIUM_CONFIG, p)?, w)).unwrap();
        // SD3-medium's 2,028,328,000 parameters plus its stored 192² × 1536 position table.
        assert_eq!(sd3.total(), 2_028_328_000 + 192 * 192 * 1536);
        assert!(flux.bytes(LinearFormat::Q4_0) < flux.bytes(LinearFormat::Q8_0));
        assert!(flux.bytes(LinearFormat::Bf16) * 2 - flux.bytes(LinearFormat::F32) < 4 * flux.other as u64 + 1);
    }
}
