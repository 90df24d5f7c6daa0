//! The autoencoder's `UNetMidBlock2D`: ResNet, single-head self-attention over all pixels
//! (diffusers' converted `AttentionBlock`: GroupNorm, q/k/v with biases, residual), ResNet.

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};

use crate::nn::activation::Activation;
use crate::nn::attention::Attention;
use crate::nn::group_norm::GroupNorm;
use crate::nn::resnet::{ResnetBlock2D, ResnetConfig, TimeEmbeddingNorm};
use crate::Result;

/// diffusers hard-codes the VAE's norm eps.
pub(crate) const VAE_NORM_EPS: f64 = 1e-6;

/// The VAE's ResNet settings (no time embedding).
pub(crate) fn vae_resnet(in_channels: usize, out_channels: usize, groups: usize, act: Activation) -> ResnetConfig {
    ResnetConfig {
        in_channels,
        out_channels,
        temb_channels: None,
        groups,
        eps: VAE_NORM_EPS,
        act,
        output_scale_factor: 1.0,
        time_embedding_norm: TimeEmbeddingNorm::Default,
    }
}

#[derive(Debug, Clone)]
struct PixelSelfAttention {
    group_norm: GroupNorm,
    attention: Attention,
}

impl PixelSelfAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        // Checkpoints saved before diffusers 0.14 name the projections query/key/value/proj_attn.
        let legacy = !vb.contains_tensor("to_q.weight") && vb.contains_tensor("query.weight");
        let names = if legacy { ["query", "key", "value", "proj_attn"] } else { ["to_q", "to_k", "to_v", "to_out.0"] };
        let proj = |name: &str| -> Result<Linear> { Ok(candle_nn::linear(channels, channels, vb.pp(name))?) };
        let attention =
            Attention::from_projections(proj(names[0])?, proj(names[1])?, proj(names[2])?, proj(names[3])?, 1)?;
        Ok(Self { group_norm: GroupNorm::new(vb.pp("group_norm"), groups, channels, VAE_NORM_EPS)?, attention })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self.group_norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let attended = self.attention.forward(&tokens, None)?;
        let spatial = attended.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))?;
        Ok((spatial + x)?)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct VaeMidBlock {
    first: ResnetBlock2D,
    attention: Option<PixelSelfAttention>,
    second: ResnetBlock2D,
}

impl VaeMidBlock {
    pub(crate) fn new(
        vb: VarBuilder,
        channels: usize,
        groups: usize,
        act: Activation,
        add_attention: bool,
    ) -> Result<Self> {
        let cfg = vae_resnet(channels, channels, groups, act);
        let attention =
            if add_attention { Some(PixelSelfAttention::new(vb.pp("attentions.0"), channels, groups)?) } else { None };
        Ok(Self {
            first: ResnetBlock2D::new(vb.pp("resnets.0"), cfg)?,
            attention,
            second: ResnetBlock2D::new(vb.pp("resnets.1"), cfg)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(x, None)?;
        if let Some(attn) = &self.attention {
            h = attn.forward(&h)?;
        }
        self.second.forward(&h, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_abs_diff, seeded};
    use candle_core::{DType, Device};

    #[test]
    fn legacy_projection_names_load_the_same_weights() {
        let dev = Device::Cpu;
        let c = 4;
        let mut current = std::collections::HashMap::new();
        let mut legacy = std::collections::HashMap::new();
        for (i, (new, old)) in
            [("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")].iter().enumerate()
        {
            let w = seeded(&[c, c], i as u64, &dev);
            let b = seeded(&[c], 10 + i as u64, &dev);
            current.insert(format!("{new}.weight"), w.clone());
            current.insert(format!("{new}.bias"), b.clone());
            legacy.insert(format!("{old}.weight"), w);
            legacy.insert(format!("{old}.bias"), b);
        }
        for map in [&mut current, &mut legacy] {
            map.insert("group_norm.weight".into(), seeded(&[c], 20, &dev));
            map.insert("group_norm.bias".into(), seeded(&[c], 21, &dev));
        }
        let a = PixelSelfAttention::new(VarBuilder::from_tensors(current, DType::F32, &dev), c, 2).unwrap();
        let b = PixelSelfAttention::new(VarBuilder::from_tensors(legacy, DType::F32, &dev), c, 2).unwrap();
        let x = seeded(&[1, c, 3, 3], 30, &dev);
        let (ya, yb) = (a.forward(&x).unwrap(), b.forward(&x).unwrap());
        assert_eq!(max_abs_diff(&ya, &yb), 0.0);
        assert!(max_abs_diff(&ya, &x) > 1e-3);
    }
}
