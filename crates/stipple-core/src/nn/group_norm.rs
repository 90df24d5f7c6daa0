//! `torch.nn.GroupNorm` (affine), optionally fused with the SiLU that follows it in every
//! ResNet block and output head.
//!
//! On the CPU in f32 a single kernel computes the statistics in f64 and writes
//! `(x - mean) * rstd * weight + bias` (and the SiLU) in one vectorised pass; other devices and
//! dtypes use the same arithmetic built from tensor operations.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::activation::Activation;
use super::fast_math::scale_shift;
use super::moments::mean_and_variance;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    num_groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias` of shape `[channels]`.
    pub fn new(vb: VarBuilder, num_groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if num_groups == 0 || !channels.is_multiple_of(num_groups) {
            return Err(Error::Unsupported(format!(
                "group norm at `{}`: {channels} channels cannot be split into {num_groups} groups \
                 (norm_num_groups must divide every block's channel count)",
                vb.prefix()
            )));
        }
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        Ok(Self { weight, bias, num_groups, eps })
    }

    /// Normalise `x` `[B, C, ...]` over each group of `C / num_groups` channels.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// `act(group_norm(x))`, in one pass for SiLU (the activation of every SD network).
    pub fn forward_activated(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match act {
            Activation::Silu => self.run(x, true),
            other => other.apply(&self.run(x, false)?),
        }
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let channels = self.weight.dim(0)?;
        if x.rank() < 3 || x.dim(1)? != channels {
            return Err(candle_core::Error::Msg(format!(
                "group norm over {channels} channels got an input of shape {:?}",
                x.dims()
            ))
            .into());
        }
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let op = GroupNormCpu { num_groups: self.num_groups, eps: self.eps, silu };
            return Ok(x.contiguous()?.apply_op3_no_bwd(&self.weight, &self.bias, &op)?);
        }
        let y = self.forward_generic(x)?;
        Ok(if silu { y.silu()? } else { y })
    }

    /// Tensor-op version for devices without the CPU kernel; statistics in f32 at least.
    fn forward_generic(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let dtype = x.dtype();
        let stat_dtype = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
        let grouped = x.to_dtype(stat_dtype)?.reshape((b, self.num_groups, ()))?;
        let mean = grouped.mean_keepdim(2)?;
        let centered = grouped.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(2)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?.reshape(dims.as_slice())?;
        let mut wshape = vec![1usize; dims.len()];
        wshape[1] = c;
        let w = self.weight.to_dtype(stat_dtype)?.reshape(wshape.as_slice())?;
        let bias = self.bias.to_dtype(stat_dtype)?.reshape(wshape.as_slice())?;
        Ok(normed.broadcast_mul(&w)?.broadcast_add(&bias)?.to_dtype(dtype)?)
    }
}

struct GroupNormCpu {
    num_groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for GroupNormCpu {
    fn name(&self) -> &'static str {
        "stipple-group-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "input")?;
        let weight = contiguous_f32(ws, wl, "weight")?;
        let bias = contiguous_f32(bs, bl, "bias")?;
        let dims = xl.shape().dims();
        let channels = dims[1];
        let spatial: usize = dims[2..].iter().product();
        let per_group = channels / self.num_groups;
        let group_len = per_group * spatial;
        let mut out = vec![0f32; x.len()];
        if group_len == 0 {
            return Ok((CpuStorage::F32(out), xl.shape().clone()));
        }
        out.par_chunks_mut(group_len).zip(x.par_chunks(group_len)).enumerate().for_each(|(i, (dst, src))| {
            let group = i % self.num_groups;
            let (mean, var) = mean_and_variance(src);
            let rstd = 1.0 / (var + self.eps).sqrt();
            for (j, (dst_c, src_c)) in dst.chunks_mut(spatial).zip(src.chunks(spatial)).enumerate() {
                let c = group * per_group + j;
                let scale = (rstd * weight[c] as f64) as f32;
                scale_shift(src_c, mean as f32, scale, bias[c], self.silu, dst_c);
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// The f32 values of a contiguous CPU tensor.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("normalisation kernel: {what} must be f32");
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("normalisation kernel: {what} must be contiguous"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_abs_diff, seeded};
    use candle_core::Device;

    fn norm(groups: usize, channels: usize) -> GroupNorm {
        let dev = Device::Cpu;
        GroupNorm {
            weight: seeded(&[channels], 1, &dev),
            bias: seeded(&[channels], 2, &dev),
            num_groups: groups,
            eps: 1e-5,
        }
    }

    /// Straightforward f64 reference of `torch.nn.functional.group_norm`.
    fn reference(gn: &GroupNorm, x: &Tensor) -> Vec<f64> {
        let dims = x.dims();
        let (b, c) = (dims[0], dims[1]);
        let s: usize = dims[2..].iter().product();
        let xv: Vec<f64> = x.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&v| v as f64).collect();
        let w = gn.weight.to_vec1::<f32>().unwrap();
        let bias = gn.bias.to_vec1::<f32>().unwrap();
        let per = c / gn.num_groups;
        let mut out = vec![0f64; xv.len()];
        for bi in 0..b {
            for g in 0..gn.num_groups {
                let start = (bi * c + g * per) * s;
                let vals = &xv[start..start + per * s];
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                let var = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64;
                for (k, v) in vals.iter().enumerate() {
                    let ch = g * per + k / s;
                    out[start + k] = (v - m) / (var + gn.eps).sqrt() * w[ch] as f64 + bias[ch] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn cpu_kernel_matches_reference_with_offset_input() {
        let gn = norm(4, 8);
        // An offset of 50 exercises the two-pass statistics.
        let x = (seeded(&[2, 8, 5, 3], 3, &Device::Cpu) + 50.0).unwrap();
        let got: Vec<f64> = gn
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let want = reference(&gn, &x);
        let err = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 2e-5, "max error {err}");
    }

    #[test]
    fn generic_path_and_silu_agree_with_kernel() {
        let gn = norm(2, 6);
        let x = seeded(&[1, 6, 4, 4], 4, &Device::Cpu);
        let kernel = gn.forward(&x).unwrap();
        let generic = gn.forward_generic(&x).unwrap();
        assert!(max_abs_diff(&kernel, &generic) < 1e-5);
        let fused = gn.forward_activated(&x, Activation::Silu).unwrap();
        assert!(max_abs_diff(&fused, &kernel.silu().unwrap()) < 1e-6);
        // Non-contiguous input goes through the same kernel after a copy.
        let xt = x.transpose(2, 3).unwrap();
        let a = gn.forward(&xt).unwrap();
        let b = gn.forward(&xt.contiguous().unwrap()).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0);
    }

    #[test]
    fn rejects_indivisible_groups_and_wrong_channels() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        assert!(GroupNorm::new(vb.clone(), 32, 48, 1e-5).is_err());
        let gn = GroupNorm::new(vb, 2, 4, 1e-5).unwrap();
        assert!(gn.forward(&Tensor::zeros((1, 6, 2, 2), DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}
