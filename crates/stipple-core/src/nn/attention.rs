//! Multi-head attention as diffusers' `Attention` with `AttnProcessor2_0` computes it:
//! `to_out(softmax(q kᵀ / sqrt(head_dim)) v)` with `q = to_q(x)`, `k, v = to_k, to_v(context or x)`.
//!
//! All heads go through one batched matmul per product; the score matrix is built in slices of
//! query rows so its memory stays bounded at large resolutions (a 128² VAE latent has 16384
//! tokens: a full score matrix would be 1 GiB per image).

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};

use crate::{Error, Result};

/// Upper bound on the elements of one slice of the score matrix (16 MiB in f32).
const MAX_SCORE_ELEMENTS: usize = 1 << 22;

#[derive(Debug, Clone, Copy)]
pub struct AttentionConfig {
    /// Width of the queries' input (and of the output).
    pub query_dim: usize,
    /// Width of the cross-attention context; `None` for self-attention.
    pub context_dim: Option<usize>,
    pub heads: usize,
    pub head_dim: usize,
    /// Biases on `to_q`/`to_k`/`to_v` (false in transformer blocks, true in the VAE).
    pub qkv_bias: bool,
}

#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    /// Loads `to_q`, `to_k`, `to_v` and `to_out.0` under `vb`.
    pub fn new(vb: VarBuilder, cfg: AttentionConfig) -> Result<Self> {
        let inner = cfg.heads * cfg.head_dim;
        let context_dim = cfg.context_dim.unwrap_or(cfg.query_dim);
        let proj = |dim_in: usize, name: &str| -> Result<Linear> {
            Ok(candle_nn::linear_b(dim_in, inner, cfg.qkv_bias, vb.pp(name))?)
        };
        let to_q = proj(cfg.query_dim, "to_q")?;
        let to_k = proj(context_dim, "to_k")?;
        let to_v = proj(context_dim, "to_v")?;
        let to_out = candle_nn::linear(inner, cfg.query_dim, vb.pp("to_out.0"))?;
        Self::from_projections(to_q, to_k, to_v, to_out, cfg.heads)
    }

    /// Assemble from already loaded projections (for checkpoints with other key names).
    pub fn from_projections(to_q: Linear, to_k: Linear, to_v: Linear, to_out: Linear, heads: usize) -> Result<Self> {
        let inner = to_q.weight().dim(0)?;
        if heads == 0 || inner % heads != 0 {
            return Err(Error::Unsupported(format!(
                "attention with {inner} channels cannot be split into {heads} heads"
            )));
        }
        let head_dim = inner / heads;
        Ok(Self { to_q, to_k, to_v, to_out, heads, scale: 1.0 / (head_dim as f64).sqrt() })
    }

    /// `x` `[B, S, query_dim]`, `context` `[B, S_ctx, context_dim]` (self-attention when `None`).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let out = scaled_dot_product_attention(&q, &k, &v, self.scale)?;
        self.to_out.forward(&self.merge_heads(&out, x.dim(0)?)?)
            .map_err(Into::into)
    }

    /// `[B, S, H * Dh]` → `[B * H, S, Dh]`, contiguous.
    fn split_heads(&self, t: &Tensor) -> Result<Tensor> {
        let (b, s, inner) = t.dims3()?;
        let dh = inner / self.heads;
        if self.heads == 1 {
            return Ok(t.contiguous()?);
        }
        Ok(t.reshape((b, s, self.heads, dh))?.transpose(1, 2)?.contiguous()?.reshape((b * self.heads, s, dh))?)
    }

    /// `[B * H, S, Dh]` → `[B, S, H * Dh]`, contiguous.
    fn merge_heads(&self, t: &Tensor, batch: usize) -> Result<Tensor> {
        let (_, s, dh) = t.dims3()?;
        if self.heads == 1 {
            return Ok(t.clone());
        }
        Ok(t.reshape((batch, self.heads, s, dh))?.transpose(1, 2)?.contiguous()?.reshape((batch, s, self.heads * dh))?)
    }
}

/// `softmax(q kᵀ · scale) v` for `q` `[N, Sq, D]` and `k`, `v` `[N, Sk, D]` (N = batch × heads).
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    sliced_attention(q, k, v, scale, MAX_SCORE_ELEMENTS)
}

/// [`scaled_dot_product_attention`] with score slices of at most `max_scores` elements (at
/// least one query row each).
fn sliced_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, max_scores: usize) -> Result<Tensor> {
    let (n, sq, _) = q.dims3()?;
    let sk = k.dim(1)?;
    // Scaling the queries costs Sq·D multiplications instead of Sq·Sk on the scores.
    let q = (q * scale)?;
    let kt = k.t()?;
    let rows = (max_scores / (n * sk).max(1)).max(1);
    let attend = |q: &Tensor| -> Result<Tensor> {
        let probs = candle_nn::ops::softmax_last_dim(&q.matmul(&kt)?)?;
        Ok(probs.matmul(v)?)
    };
    if rows >= sq {
        return attend(&q);
    }
    let mut parts = Vec::with_capacity(sq.div_ceil(rows));
    let mut start = 0;
    while start < sq {
        let len = rows.min(sq - start);
        parts.push(attend(&q.narrow(1, start, len)?)?);
        start += len;
    }
    Ok(Tensor::cat(&parts, 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_support::{max_abs_diff, seeded};
    use candle_core::{DType, Device, D};

    /// Textbook attention with an explicit, unfused softmax.
    fn naive_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let max = scores.max_keepdim(D::Minus1).unwrap();
        let e = scores.broadcast_sub(&max).unwrap().exp().unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        p.matmul(v).unwrap()
    }

    #[test]
    fn sliced_equals_unsliced() {
        let dev = Device::Cpu;
        let (n, sq, sk, d) = (3, 7, 11, 4);
        let q = seeded(&[n, sq, d], 1, &dev);
        let k = (seeded(&[n, sk, d], 2, &dev) * 3.0).unwrap();
        let v = seeded(&[n, sk, d], 3, &dev);
        let want = naive_attention(&q, &k, &v, 0.5);
        // 2 rows per slice (7 rows → 4 slices, the last short), 1 row per slice, and one slice.
        for max_scores in [2 * n * sk + 5, 1, usize::MAX] {
            let got = sliced_attention(&q, &k, &v, 0.5, max_scores).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-5, "max_scores {max_scores}");
        }
    }

    #[test]
    fn multi_head_equals_per_head_loop() {
        let dev = Device::Cpu;
        let (dim, ctx_dim, heads) = (8, 6, 2);
        let vb = candle_nn::VarBuilder::from_tensors(
            [
                ("to_q.weight", seeded(&[dim, dim], 1, &dev)),
                ("to_k.weight", seeded(&[dim, ctx_dim], 2, &dev)),
                ("to_v.weight", seeded(&[dim, ctx_dim], 3, &dev)),
                ("to_out.0.weight", seeded(&[dim, dim], 4, &dev)),
                ("to_out.0.bias", seeded(&[dim], 5, &dev)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            DType::F32,
            &dev,
        );
        let cfg = AttentionConfig { query_dim: dim, context_dim: Some(ctx_dim), heads, head_dim: dim / heads, qkv_bias: false };
        let attn = Attention::new(vb, cfg).unwrap();
        let x = seeded(&[2, 5, dim], 6, &dev);
        let ctx = seeded(&[2, 7, ctx_dim], 7, &dev);
        let got = attn.forward(&x, Some(&ctx)).unwrap();

        // Reference: each head separately, concatenated, then to_out.
        let q = attn.to_q.forward(&x).unwrap();
        let k = attn.to_k.forward(&ctx).unwrap();
        let v = attn.to_v.forward(&ctx).unwrap();
        let dh = dim / heads;
        let per_head: Vec<Tensor> = (0..heads)
            .map(|h| {
                let s = |t: &Tensor| t.narrow(2, h * dh, dh).unwrap().contiguous().unwrap();
                naive_attention(&s(&q), &s(&k), &s(&v), 1.0 / (dh as f64).sqrt())
            })
            .collect();
        let want = attn.to_out.forward(&Tensor::cat(&per_head, 2).unwrap()).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5);
    }

    #[test]
    fn rejects_heads_not_dividing_width() {
        let dev = Device::Cpu;
        let lin = |o: usize, i: usize| Linear::new(Tensor::zeros((o, i), DType::F32, &dev).unwrap(), None);
        assert!(Attention::from_projections(lin(6, 6), lin(6, 6), lin(6, 6), lin(6, 6), 4).is_err());
    }
}
