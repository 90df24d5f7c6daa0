//! `torch.nn.LayerNorm` over the last dimension (affine).
//!
//! candle's fused layer norm uses one-pass f32 statistics, which lose digits on the offset
//! residual streams of the transformer blocks; this kernel uses the two-pass f64 statistics of
//! [`super::moments`] and centres each value in f64 before scaling.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::group_norm::contiguous_f32;
use super::moments::mean_and_variance;
use crate::Result;

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let op = LayerNormCpu { eps: self.eps };
            return Ok(x.contiguous()?.apply_op3_no_bwd(&self.weight, &self.bias, &op)?);
        }
        self.forward_generic(x)
    }

    fn forward_generic(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let stat_dtype = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
        let xs = x.to_dtype(stat_dtype)?;
        let centered = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let y = normed
            .broadcast_mul(&self.weight.to_dtype(stat_dtype)?)?
            .broadcast_add(&self.bias.to_dtype(stat_dtype)?)?;
        Ok(y.to_dtype(dtype)?)
    }
}

struct LayerNormCpu {
    eps: f64,
}

impl CustomOp3 for LayerNormCpu {
    fn name(&self) -> &'static str {
        "stipple-layer-norm"
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
        let dim = *xl.shape().dims().last().unwrap_or(&0);
        if dim != weight.len() || dim != bias.len() {
            candle_core::bail!("layer norm over {} features got rows of {dim}", weight.len());
        }
        let mut out = vec![0f32; x.len()];
        if dim == 0 {
            return Ok((CpuStorage::F32(out), xl.shape().clone()));
        }
        // Rows are short (hundreds of features): hand rayon batches of rows.
        let rows_per_task = (16_384 / dim).max(1);
        out.par_chunks_mut(dim * rows_per_task).zip(x.par_chunks(dim * rows_per_task)).for_each(|(dst, src)| {
            for (d_row, s_row) in dst.chunks_mut(dim).zip(src.chunks(dim)) {
                let (mean, var) = mean_and_variance(s_row);
                let rstd = 1.0 / (var + self.eps).sqrt();
                for (((d, &s), &w), &b) in d_row.iter_mut().zip(s_row).zip(weight).zip(bias) {
                    *d = ((s as f64 - mean) * rstd) as f32 * w + b;
                }
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_abs_diff, seeded};
    use candle_core::Device;

    #[test]
    fn kernel_matches_f64_reference_on_offset_rows() {
        let dev = Device::Cpu;
        let ln = LayerNorm { weight: seeded(&[24], 1, &dev), bias: seeded(&[24], 2, &dev), eps: 1e-5 };
        let x =
            (seeded(&[3, 5, 24], 3, &dev) * 0.01).unwrap().broadcast_add(&Tensor::new(300f32, &dev).unwrap()).unwrap();
        let got = ln.forward(&x).unwrap();
        let want = LayerNorm {
            weight: ln.weight.to_dtype(DType::F64).unwrap(),
            bias: ln.bias.to_dtype(DType::F64).unwrap(),
            eps: 1e-5,
        }
        .forward_generic(&x.to_dtype(DType::F64).unwrap())
        .unwrap();
        // With a 300 offset and spread 0.01, f32 one-pass statistics would be off by orders of magnitude.
        assert!(max_abs_diff(&got, &want) < 1e-5, "{}", max_abs_diff(&got, &want));
    }

    #[test]
    fn non_contiguous_input() {
        let dev = Device::Cpu;
        let ln = LayerNorm { weight: seeded(&[8], 1, &dev), bias: seeded(&[8], 2, &dev), eps: 1e-6 };
        let x = seeded(&[8, 4], 5, &dev).t().unwrap();
        let a = ln.forward(&x).unwrap();
        let b = ln.forward_generic(&x.contiguous().unwrap()).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5);
    }
}
