//! diffusers `ResnetBlock2D`: `norm1 → act → conv1 (+ time embedding) → norm2 → act → conv2`,
//! added to the (1x1-projected, when the width changes) input, divided by `output_scale_factor`.

use candle_core::{Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use serde::Deserialize;

use super::activation::Activation;
use super::conv2d::Conv2d;
use super::group_norm::GroupNorm;
use crate::Result;

/// How the time embedding enters the block (`resnet_time_scale_shift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeEmbeddingNorm {
    /// Added to the features before `norm2`.
    #[default]
    Default,
    /// Projected to `2 * out` channels: `norm2(h) * (1 + scale) + shift`.
    ScaleShift,
}

#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding; `None` for blocks without one (the VAE).
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub act: Activation,
    pub output_scale_factor: f64,
    pub time_embedding_norm: TimeEmbeddingNorm,
}

#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    cfg: ResnetConfig,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, cfg: ResnetConfig) -> Result<Self> {
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => {
                let width = match cfg.time_embedding_norm {
                    TimeEmbeddingNorm::Default => cout,
                    TimeEmbeddingNorm::ScaleShift => 2 * cout,
                };
                Some(candle_nn::linear(t, width, vb.pp("time_emb_proj"))?)
            }
            None => None,
        };
        let conv_shortcut =
            if cin != cout { Some(Conv2d::new(vb.pp("conv_shortcut"), cin, cout, 1, 1, 0)?) } else { None };
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), cfg.groups, cin, cfg.eps)?,
            conv1: Conv2d::new(vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj,
            norm2: GroupNorm::new(vb.pp("norm2"), cfg.groups, cout, cfg.eps)?,
            conv2: Conv2d::new(vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            conv_shortcut,
            cfg,
        })
    }

    /// `x` `[B, in, H, W]`; `temb` `[B, temb_channels]` (ignored by blocks built without one).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_activated(x, self.cfg.act)?)?;
        let temb = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(t)) => {
                let t = proj.forward(&self.cfg.act.apply(t)?)?;
                Some(t.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1)?)
            }
            _ => None,
        };
        let h = match (temb, self.cfg.time_embedding_norm) {
            (Some(t), TimeEmbeddingNorm::Default) => {
                self.norm2.forward_activated(&h.broadcast_add(&t)?, self.cfg.act)?
            }
            (Some(t), TimeEmbeddingNorm::ScaleShift) => {
                let c = self.cfg.out_channels;
                let (scale, shift) = (t.narrow(1, 0, c)?, t.narrow(1, c, c)?);
                let h = self.norm2.forward(&h)?.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?;
                self.cfg.act.apply(&h)?
            }
            (None, _) => self.norm2.forward_activated(&h, self.cfg.act)?,
        };
        let h = self.conv2.forward(&h)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let out = (shortcut + h)?;
        Ok(if self.cfg.output_scale_factor == 1.0 { out } else { (out / self.cfg.output_scale_factor)? })
    }
}
