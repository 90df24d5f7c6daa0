//! Multi-head attention as diffusers' `Attention` with `AttnProcessor2_0` computes it:
//! `to_out(softmax(q kᵀ / sqrt(head_dim)) v)` with `q = to_q(x)`, `k, v = to_k, to_v(context or x)`.
//!
//! The score matrix is never materialised whole (a 128² VAE latent has 16384 tokens: a full
//! score matrix would be 1 GiB per image). On the CPU in f32 a fused kernel runs blocks of query
//! rows of every head in parallel: one GEMM for the block's scores into a small scratch buffer,
//! softmax in place, one GEMM from there straight into the output. Other devices use batched
//! matmuls over all heads on slices of query rows.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use rayon::prelude::*;

use super::fast_math::{exp_shifted_sum, max_value};
use super::group_norm::contiguous_f32;
use crate::{Error, Result};

/// Query rows per task of the CPU kernel (their scores stay in the core's cache).
const CPU_BLOCK_ROWS: usize = 64;

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
        if heads == 0 || !inner.is_multiple_of(heads) {
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
        Ok(self.to_out.forward(&self.merge_heads(&out, x.dim(0)?)?)?)
    }

    /// `[B, S, H * Dh]` → `[B * H, S, Dh]`, contiguous.
    fn split_heads(&self, t: &Tensor) -> Result<Tensor> {
        let (b, s, inner) = t.dims3()?;
        let dh = inner / self.heads;
        if self.heads == 1 {
            return Ok(t.contiguous()?);
        }
        let per_head = t.reshape((b, s, self.heads, dh))?.transpose(1, 2)?.contiguous()?;
        Ok(per_head.reshape((b * self.heads, s, dh))?)
    }

    /// `[B * H, S, Dh]` → `[B, S, H * Dh]`, contiguous.
    fn merge_heads(&self, t: &Tensor, batch: usize) -> Result<Tensor> {
        let (_, s, dh) = t.dims3()?;
        if self.heads == 1 {
            return Ok(t.clone());
        }
        let per_token = t.reshape((batch, self.heads, s, dh))?.transpose(1, 2)?.contiguous()?;
        Ok(per_token.reshape((batch, s, self.heads * dh))?)
    }
}

/// `softmax(q kᵀ · scale) v` for `q` `[N, Sq, D]` and `k`, `v` `[N, Sk, D]` (N = batch × heads).
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (n, _, d) = q.dims3()?;
    let (nk, sk, dk) = k.dims3()?;
    let (nv, sv, _) = v.dims3()?;
    if nk != n || nv != n || dk != d || sv != sk {
        return Err(candle_core::Error::Msg(format!(
            "attention shapes q {:?}, k {:?}, v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        ))
        .into());
    }
    let on_cpu_f32 = [q, k, v].iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if on_cpu_f32 && sk > 0 {
        let op = AttentionCpu { scale: scale as f32, block_rows: CPU_BLOCK_ROWS };
        return Ok(q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?);
    }
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

struct AttentionCpu {
    scale: f32,
    block_rows: usize,
}

impl CustomOp3 for AttentionCpu {
    fn name(&self) -> &'static str {
        "stipple-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = contiguous_f32(qs, ql, "queries")?;
        let k = contiguous_f32(ks, kl, "keys")?;
        let v = contiguous_f32(vs, vl, "values")?;
        let (n, sq, d) = ql.shape().dims3()?;
        let (_, sk, _) = kl.shape().dims3()?;
        let (_, _, dv) = vl.shape().dims3()?;
        let mut out = vec![0f32; n * sq * dv];
        if sq == 0 || dv == 0 {
            return Ok((CpuStorage::F32(out), Shape::from_dims(&[n, sq, dv])));
        }
        let rows = self.block_rows.max(1);
        out.par_chunks_mut(sq * dv).enumerate().for_each(|(head, out_head)| {
            let q_head = &q[head * sq * d..(head + 1) * sq * d];
            let k_head = &k[head * sk * d..(head + 1) * sk * d];
            let v_head = &v[head * sk * dv..(head + 1) * sk * dv];
            out_head.par_chunks_mut(rows * dv).enumerate().for_each_init(
                || vec![0f32; rows * sk],
                |scores, (block, out_block)| {
                    let m = out_block.len() / dv;
                    let q_block = &q_head[block * rows * d..];
                    self.attend_block(q_block, k_head, v_head, m, sk, d, dv, &mut scores[..m * sk], out_block);
                },
            );
        });
        Ok((CpuStorage::F32(out), Shape::from_dims(&[n, sq, dv])))
    }
}

impl AttentionCpu {
    /// `out = softmax(scale · q kᵀ) v` for `m` query rows of one head.
    #[allow(clippy::too_many_arguments)]
    fn attend_block(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        m: usize,
        sk: usize,
        d: usize,
        dv: usize,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        // SAFETY (both calls): every pointer/stride pair addresses only elements inside its
        // slice: q is `m × d` row-major, k `sk × d` read as its transpose, scores `m × sk`,
        // v `sk × dv`, out `m × dv`.
        unsafe {
            gemm::gemm(
                m,
                sk,
                d,
                scores.as_mut_ptr(),
                1,
                sk as isize,
                false,
                q.as_ptr(),
                1,
                d as isize,
                k.as_ptr(),
                d as isize,
                1,
                0.0,
                self.scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let mut inv_sums = Vec::with_capacity(m);
        for row in scores.chunks_mut(sk) {
            let max = max_value(row);
            inv_sums.push(1.0 / exp_shifted_sum(row, max));
        }
        unsafe {
            gemm::gemm(
                m,
                dv,
                sk,
                out.as_mut_ptr(),
                1,
                dv as isize,
                false,
                scores.as_ptr(),
                1,
                sk as isize,
                v.as_ptr(),
                1,
                dv as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (row, inv) in out.chunks_mut(dv).zip(inv_sums) {
            for o in row {
                *o *= inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_abs_diff, seeded};
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
    fn cpu_kernel_blocks_equal_naive() {
        let dev = Device::Cpu;
        let (n, sq, sk, d, dv) = (3, 7, 11, 4, 5);
        let q = seeded(&[n, sq, d], 1, &dev);
        let k = (seeded(&[n, sk, d], 2, &dev) * 3.0).unwrap();
        let v = seeded(&[n, sk, dv], 3, &dev);
        let want = naive_attention(&q, &k, &v, 0.5);
        for block_rows in [1, 3, 64] {
            let op = AttentionCpu { scale: 0.5, block_rows };
            let got = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-5, "block_rows {block_rows}");
        }
        let dispatched = scaled_dot_product_attention(&q, &k, &v, 0.5).unwrap();
        assert!(max_abs_diff(&dispatched, &want) < 1e-5);
        assert!(scaled_dot_product_attention(&q, &k.narrow(2, 0, 3).unwrap(), &v, 0.5).is_err());
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
        let cfg = AttentionConfig {
            query_dim: dim,
            context_dim: Some(ctx_dim),
            heads,
            head_dim: dim / heads,
            qkv_bias: false,
        };
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
