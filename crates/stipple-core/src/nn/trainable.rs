//! Layers of the networks Stipple trains itself (the default model).
//!
//! Built only from operations that have backward passes on the CPU (candle's matmul, conv2d,
//! elementwise ops and reshapes, and the kernels of [`super::fused`]; candle's own fused layer
//! norm and softmax have none), so the same forward code trains and generates. Weights are requested with
//! initialisation hints, which a `VarMap`-backed VarBuilder uses to create them for training
//! and a file-backed one ignores.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

pub use super::fused::{scale_shift, silu, softmax_last_dim};

/// A linear layer `x Wᵀ + b` over the last dimension of any input.
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let (in_dim, out_dim) = (self.weight.dim(1)?, self.weight.dim(0)?);
        let rows = x.elem_count() / in_dim.max(1);
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let y = scale_shift(&y.reshape((1, rows, out_dim))?, None, Some(&self.bias.reshape((1, 1, out_dim))?))?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = out_dim;
        }
        Ok(y.reshape(out_dims)?)
    }
}

/// A 2-D convolution with a bias, `padding = k / 2`.
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
}

impl Conv {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.weight.dim(2)?;
        let y = super::fused::conv2d(x, &self.weight, self.stride, k / 2)?;
        let (b, c, h, w) = y.dims4()?;
        let y = scale_shift(&y.reshape((b, c, h * w))?, None, Some(&self.bias.reshape((1, c, 1))?))?;
        Ok(y.reshape((b, c, h, w))?)
    }
}

use crate::{Error, Result};

/// A linear layer with Xavier-uniform weights and zero bias (the transformer default).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Dense> {
    let bound = (6.0 / (in_dim + out_dim) as f64).sqrt();
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", Init::Uniform { lo: -bound, up: bound })?;
    let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Dense::new(weight, bias))
}

/// A linear layer that starts at zero (adaLN-Zero modulation, output projections), so a new
/// residual block starts as the identity.
pub fn zero_linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Dense> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", Init::Const(0.0))?;
    let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Dense::new(weight, bias))
}

/// A `k`x`k` convolution (PyTorch's default initialisation scale, zero bias).
pub fn conv2d(in_ch: usize, out_ch: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Conv> {
    let bound = 1.0 / ((in_ch * k * k) as f64).sqrt();
    let weight = vb.get_with_hints((out_ch, in_ch, k, k), "weight", Init::Uniform { lo: -bound, up: bound })?;
    let bias = vb.get_with_hints(out_ch, "bias", Init::Const(0.0))?;
    Ok(Conv { weight, bias, stride })
}

/// A `k`x`k` convolution that starts at zero (the last layer of a residual branch, so a new
/// block starts as the identity).
pub fn zero_conv2d(in_ch: usize, out_ch: usize, k: usize, vb: VarBuilder) -> Result<Conv> {
    let weight = vb.get_with_hints((out_ch, in_ch, k, k), "weight", Init::Const(0.0))?;
    let bias = vb.get_with_hints(out_ch, "bias", Init::Const(0.0))?;
    Ok(Conv { weight, bias, stride: 1 })
}

/// Normalise over the last dimension (no learned scale or shift).
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(super::fused::normalize_last_dim(x, eps)?)
}

/// LayerNorm over the last dimension with learned scale and shift.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    const EPS: f64 = 1e-6;

    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?, bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.weight.dim(0)?;
        let rows = x.elem_count() / d.max(1);
        let normed = layer_norm(x, Self::EPS)?.reshape((1, rows, d))?;
        let param = |t: &Tensor| t.reshape((1, 1, d));
        Ok(scale_shift(&normed, Some(&param(&self.weight)?), Some(&param(&self.bias)?))?.reshape(x.shape())?)
    }
}

/// GroupNorm over `[B, C, H, W]` with learned per-channel scale and shift.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
}

impl GroupNorm {
    const EPS: f64 = 1e-6;

    pub fn new(groups: usize, channels: usize, vb: VarBuilder) -> Result<Self> {
        if groups == 0 || channels % groups != 0 {
            return Err(Error::Unsupported(format!("{channels} channels cannot be split into {groups} norm groups")));
        }
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
            groups,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let grouped = x.reshape((b, self.groups, (c / self.groups) * h * w))?;
        let normed = layer_norm(&grouped, Self::EPS)?.reshape((b, c, h * w))?;
        let per_channel = |t: &Tensor| t.reshape((1, c, 1));
        let y = scale_shift(&normed, Some(&per_channel(&self.weight)?), Some(&per_channel(&self.bias)?))?;
        Ok(y.reshape((b, c, h, w))?)
    }
}

/// Multi-head attention: `to_out(softmax(q kᵀ / sqrt(d)) v)`, self-attention or attention to a
/// context of another width.
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Dense,
    to_k: Dense,
    to_v: Dense,
    to_out: Dense,
    heads: usize,
}

impl Attention {
    /// `zero_out` starts the output projection at zero (a residual branch that starts silent).
    pub fn new(dim: usize, context_dim: usize, heads: usize, zero_out: bool, vb: VarBuilder) -> Result<Self> {
        if heads == 0 || dim % heads != 0 {
            return Err(Error::Unsupported(format!("attention width {dim} cannot be split into {heads} heads")));
        }
        Ok(Self {
            to_q: linear(dim, dim, vb.pp("to_q"))?,
            to_k: linear(context_dim, dim, vb.pp("to_k"))?,
            to_v: linear(context_dim, dim, vb.pp("to_v"))?,
            to_out: if zero_out { zero_linear(dim, dim, vb.pp("to_out"))? } else { linear(dim, dim, vb.pp("to_out"))? },
            heads,
        })
    }

    /// `x` `[B, S, dim]` attends to `context` `[B, L, context_dim]` (to itself when `None`).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let (b, s, dim) = x.dims3()?;
        let dh = dim / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            let l = t.dim(1)?;
            Ok(t.reshape((b, l, self.heads, dh))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split((self.to_q.forward(x)? * (1.0 / (dh as f64).sqrt()))?)?;
        let k = split(self.to_k.forward(context)?)?;
        let v = split(self.to_v.forward(context)?)?;
        let probs = softmax_last_dim(&q.matmul(&k.transpose(2, 3)?.contiguous()?)?)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, dim))?;
        Ok(self.to_out.forward(&out)?)
    }
}

/// Two linear layers with a SiLU between them, or (gated) SwiGLU: `fc2(silu(a) · b)` where
/// `fc1` gives `[a, b]` (Shazeer 2020).
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Dense,
    fc2: Dense,
    gated: bool,
}

impl Mlp {
    pub fn new(dim: usize, hidden: usize, zero_out: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(dim, hidden, vb.pp("fc1"))?,
            fc2: if zero_out { zero_linear(hidden, dim, vb.pp("fc2"))? } else { linear(hidden, dim, vb.pp("fc2"))? },
            gated: false,
        })
    }

    /// SwiGLU with `hidden` gated units (`fc1` is `[2·hidden, dim]`).
    pub fn gated(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { fc1: linear(dim, 2 * hidden, vb.pp("fc1"))?, fc2: linear(hidden, dim, vb.pp("fc2"))?, gated: true })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let h = if self.gated {
            let half = h.dim(candle_core::D::Minus1)? / 2;
            (silu(&h.narrow(candle_core::D::Minus1, 0, half)?)? * h.narrow(candle_core::D::Minus1, half, half)?)?
        } else {
            silu(&h)?
        };
        Ok(self.fc2.forward(&h)?)
    }
}

/// `[B, C, H, W]` → `[B, C·r·r, H/r, W/r]`: each `r`x`r` block of pixels becomes channels.
pub fn pixel_unshuffle(x: &Tensor, r: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if r == 0 || h % r != 0 || w % r != 0 {
        return Err(Error::param("size", format!("{h}x{w} is not a whole number of {r}x{r} blocks")));
    }
    Ok(x.reshape((b, c, h / r, r, w / r, r))?.permute((0, 1, 3, 5, 2, 4))?.reshape((b, c * r * r, h / r, w / r))?)
}

/// The inverse of [`pixel_unshuffle`].
pub fn pixel_shuffle(x: &Tensor, r: usize) -> Result<Tensor> {
    let (b, crr, h, w) = x.dims4()?;
    if r == 0 || crr % (r * r) != 0 {
        return Err(Error::Unsupported(format!("{crr} channels do not hold whole {r}x{r} blocks")));
    }
    let c = crr / (r * r);
    Ok(x.reshape((b, c, r, r, h, w))?.permute((0, 1, 4, 2, 5, 3))?.reshape((b, c, h * r, w * r))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_diff;
    use candle_core::{DType, Device, Module, Var};
    use candle_nn::VarMap;


    #[test]
    fn norms_match_candle_kernels() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 1.0, (2, 5, 16), &dev).unwrap() + 3.0).unwrap();
        let ones = Tensor::ones(16, DType::F32, &dev).unwrap();
        let zeros = Tensor::zeros(16, DType::F32, &dev).unwrap();
        let want = candle_nn::ops::layer_norm(&x, &ones, &zeros, 1e-6).unwrap();
        assert!(max_diff(&layer_norm(&x, 1e-6).unwrap(), &want) < 1e-4);

        let varmap = VarMap::new();
        let gn = GroupNorm::new(4, 8, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let img = Tensor::randn(0f32, 2.0, (2, 8, 3, 3), &dev).unwrap();
        let got = gn.forward(&img).unwrap();
        let reference = candle_nn::GroupNorm::new(
            Tensor::ones(8, DType::F32, &dev).unwrap(),
            Tensor::zeros(8, DType::F32, &dev).unwrap(),
            8,
            4,
            1e-6,
        )
        .unwrap();
        assert!(max_diff(&got, &reference.forward(&img).unwrap()) < 1e-4);
        assert!(GroupNorm::new(3, 8, VarBuilder::from_varmap(&varmap, DType::F32, &dev).pp("x")).is_err());
    }

    #[test]
    fn softmax_matches_fused_kernel_and_has_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, (3, 7), &dev).unwrap()).unwrap();
        let y = softmax_last_dim(&x).unwrap();
        assert!(max_diff(&y, &candle_nn::ops::softmax_last_dim(&x).unwrap()) < 1e-6);
        let w = Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap();
        let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(&x).expect("softmax passes gradients");
        // d/dx of sum(w * softmax(x)) = s * (w - sum(s * w)).
        let s = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let want = (&s * w.broadcast_sub(&(&s * &w).unwrap().sum_keepdim(1).unwrap()).unwrap()).unwrap();
        assert!(max_diff(g, &want) < 1e-5);
    }

    #[test]
    fn shuffles_are_inverse_and_keep_blocks_together() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 8.0 * 8.0, &dev).unwrap().reshape((2, 3, 8, 8)).unwrap();
        let u = pixel_unshuffle(&x, 4).unwrap();
        assert_eq!(u.dims(), &[2, 48, 2, 2]);
        // Channel (c=0, dy=1, dx=2) of block (0, 1) is pixel (y=1, x=4+2) of channel 0.
        let v: f32 = u.get(0).unwrap().get(6).unwrap().get(0).unwrap().get(1).unwrap().to_scalar().unwrap();
        assert_eq!(v, (8 + 6) as f32);
        assert_eq!(max_diff(&pixel_shuffle(&u, 4).unwrap(), &x), 0.0);
        assert!(pixel_unshuffle(&x, 3).is_err());
    }

    #[test]
    fn attention_heads_are_independent() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let attn = Attention::new(8, 6, 2, false, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 5, 8), &dev).unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (2, 3, 6), &dev).unwrap();
        let got = attn.forward(&x, Some(&ctx)).unwrap();
        let q = attn.to_q.forward(&x).unwrap();
        let k = attn.to_k.forward(&ctx).unwrap();
        let v = attn.to_v.forward(&ctx).unwrap();
        let heads: Vec<Tensor> = (0..2)
            .map(|h| {
                let s = |t: &Tensor| t.narrow(2, h * 4, 4).unwrap().contiguous().unwrap();
                let scores = (s(&q).matmul(&s(&k).t().unwrap()).unwrap() * 0.5).unwrap();
                candle_nn::ops::softmax_last_dim(&scores).unwrap().matmul(&s(&v)).unwrap()
            })
            .collect();
        let want = attn.to_out.forward(&Tensor::cat(&heads, 2).unwrap()).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
    }
}
