//! diffusers' `FeedForward(activation_fn="gelu-approximate")`: `net.2(gelu_tanh(net.0.proj(x)))`
//! with a 4x wider hidden layer, the MLP of every FLUX double-stream and SD3 joint block.

use candle_core::{Module, Tensor};
use crate::layers::{linear, Linear, ModelWeights};

#[derive(Debug, Clone)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    pub fn load(dim: usize, vb: ModelWeights) -> candle_core::Result<FeedForward> {
        let hidden = 4 * dim;
        Ok(FeedForward {
            proj_in: linear(dim, hidden, vb.pp("net.0.proj"))?,
            proj_out: linear(hidden, dim, vb.pp("net.2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.proj_out.forward(&self.proj_in.forward(x)?.gelu()?)
    }
}
