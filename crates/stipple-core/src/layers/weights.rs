//! [`ModelWeights`]: a `VarBuilder` for every tensor of a network in its compute dtype, plus an
//! optional [`LinearSource`] that hands the (large) linear-layer weights over in the form they are
//! stored — bf16 / f16 or block-quantized — so a 12B-parameter transformer is not widened to f32
//! in memory.

use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

use super::linear::{Linear, LinearWeight};
use crate::Result;

/// Where linear-layer weights come from when they are kept in their stored form.
pub trait LinearSource: Send + Sync {
    /// The weight `[out_dim, in_dim]` of the linear layer at `path` (a tensor name without
    /// `.weight`), for activations of dtype `compute` on `device`. `None`: the source does not hold
    /// it in a special form; it is read through the `VarBuilder` in the compute dtype.
    fn linear_weight(
        &self,
        path: &str,
        out_dim: usize,
        in_dim: usize,
        compute: DType,
        device: &Device,
    ) -> Result<Option<LinearWeight>>;
}

/// The weights of one network, by the names the network uses.
#[derive(Clone)]
pub struct ModelWeights {
    vb: VarBuilder<'static>,
    linears: Option<Arc<dyn LinearSource>>,
}

impl From<VarBuilder<'static>> for ModelWeights {
    /// Every tensor through the VarBuilder, in its dtype.
    fn from(vb: VarBuilder<'static>) -> ModelWeights {
        ModelWeights { vb, linears: None }
    }
}

impl ModelWeights {
    /// `vb` for every tensor; `linears` for the linear layers' weights it holds.
    pub fn new(vb: VarBuilder<'static>, linears: Arc<dyn LinearSource>) -> ModelWeights {
        ModelWeights { vb, linears: Some(linears) }
    }

    pub fn pp(&self, s: impl ToString) -> ModelWeights {
        ModelWeights { vb: self.vb.pp(s), linears: self.linears.clone() }
    }

    /// The VarBuilder at this prefix (for layers that take one).
    pub fn vb(&self) -> &VarBuilder<'static> {
        &self.vb
    }

    pub fn get<S: Into<Shape>>(&self, shape: S, name: &str) -> candle_core::Result<Tensor> {
        self.vb.get(shape, name)
    }

    pub fn contains_tensor(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    pub fn dtype(&self) -> DType {
        self.vb.dtype()
    }

    /// The linear layer at this prefix: `weight` `[out_dim, in_dim]` and `bias` `[out_dim]`.
    pub fn linear(&self, in_dim: usize, out_dim: usize) -> candle_core::Result<Linear> {
        Ok(Linear::new(self.linear_weight(in_dim, out_dim)?, Some(self.vb.get(out_dim, "bias")?)))
    }

    /// The linear layer at this prefix without a bias.
    pub fn linear_no_bias(&self, in_dim: usize, out_dim: usize) -> candle_core::Result<Linear> {
        Ok(Linear::new(self.linear_weight(in_dim, out_dim)?, None))
    }

    fn linear_weight(&self, in_dim: usize, out_dim: usize) -> candle_core::Result<LinearWeight> {
        if let Some(source) = &self.linears {
            let path = self.vb.prefix();
            let held = source
                .linear_weight(&path, out_dim, in_dim, self.vb.dtype(), self.vb.device())
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            if let Some(weight) = held {
                return Ok(weight);
            }
        }
        Ok(LinearWeight::Dense(self.vb.get((out_dim, in_dim), "weight")?))
    }
}

/// `ModelWeights::linear` as a function, in the shape of `candle_nn::linear`.
pub fn linear(in_dim: usize, out_dim: usize, weights: ModelWeights) -> candle_core::Result<Linear> {
    weights.linear(in_dim, out_dim)
}

/// `ModelWeights::linear_no_bias` as a function, in the shape of `candle_nn::linear_no_bias`.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, weights: ModelWeights) -> candle_core::Result<Linear> {
    weights.linear_no_bias(in_dim, out_dim)
}
