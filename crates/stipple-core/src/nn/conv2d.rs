//! 2-D convolution with bias (`torch.nn.Conv2d`, square kernel, no dilation or groups), the bulk
//! of the UNet's and VAE's work.
//!
//! On the CPU in f32 it is an im2col over tiles of output rows followed by one GEMM per tile that
//! writes straight into the output (bias pre-filled), with the weight used in place as the
//! `[out, in·k·k]` matrix. candle's own CPU convolution repacks the weight and transposes the
//! input single-threaded on every call, which dominated the UNet's run time. Other devices and
//! dtypes use candle's convolution.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::group_norm::contiguous_f32;
use crate::Result;

/// Upper bound on the elements of one im2col tile (32 MiB in f32); tiles hold whole output rows.
const MAX_TILE_ELEMENTS: usize = 1 << 23;

#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    /// Zero padding on the top and left.
    pad_before: usize,
    /// Zero padding on the bottom and right.
    pad_after: usize,
}

impl Conv2d {
    /// Loads `weight` `[out, in, k, k]` and `bias` `[out]`; symmetric `padding`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Self::with_padding(vb, in_channels, out_channels, kernel, stride, padding, padding)
    }

    /// Like [`Self::new`] with separate top/left and bottom/right padding.
    pub fn with_padding(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        pad_before: usize,
        pad_after: usize,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        Ok(Self { weight, bias, stride: stride.max(1), pad_before, pad_after })
    }

    /// `x` `[B, in, H, W]` → `[B, out, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c_in, h, w) = x.dims4()?;
        let (_, w_in, k, _) = self.weight.dims4()?;
        if c_in != w_in {
            return Err(candle_core::Error::Msg(format!(
                "convolution over {w_in} channels got an input of shape {:?}",
                x.dims()
            ))
            .into());
        }
        if h + self.pad_before + self.pad_after < k || w + self.pad_before + self.pad_after < k {
            return Err(candle_core::Error::Msg(format!("input {h}x{w} is smaller than the {k}x{k} kernel")).into());
        }
        if x.device().is_cpu() && x.dtype() == DType::F32 && self.weight.dtype() == DType::F32 {
            return self.forward_cpu(x, MAX_TILE_ELEMENTS);
        }
        self.forward_generic(x)
    }

    fn forward_cpu(&self, x: &Tensor, max_tile_elements: usize) -> Result<Tensor> {
        let op =
            ConvCpu { stride: self.stride, pad_before: self.pad_before, pad_after: self.pad_after, max_tile_elements };
        Ok(x.contiguous()?.apply_op3_no_bwd(&self.weight.contiguous()?, &self.bias, &op)?)
    }

    fn forward_generic(&self, x: &Tensor) -> Result<Tensor> {
        let (x, padding) = if self.pad_before == self.pad_after {
            (x.clone(), self.pad_before)
        } else {
            let grow = |t: &Tensor, dim: D| t.pad_with_zeros(dim, self.pad_before, self.pad_after);
            (grow(&grow(x, D::Minus1)?, D::Minus2)?, 0)
        };
        let y = x.conv2d(&self.weight, padding, self.stride, 1, 1)?;
        let c = self.bias.dim(0)?;
        Ok(y.broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?)
    }
}

struct ConvCpu {
    stride: usize,
    pad_before: usize,
    pad_after: usize,
    max_tile_elements: usize,
}

/// Geometry of one convolution call.
struct Geometry {
    h: usize,
    w: usize,
    k: usize,
    out_h: usize,
    out_w: usize,
}

impl CustomOp3 for ConvCpu {
    fn name(&self) -> &'static str {
        "stipple-conv2d"
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
        let (batch, c_in, h, w) = xl.shape().dims4()?;
        let (c_out, _, k, _) = wl.shape().dims4()?;
        let span = |n: usize| (n + self.pad_before + self.pad_after - k) / self.stride + 1;
        let g = Geometry { h, w, k, out_h: span(h), out_w: span(w) };
        let plane_out = g.out_h * g.out_w;
        let kk = c_in * k * k;
        let pointwise = k == 1 && self.stride == 1 && self.pad_before == 0 && self.pad_after == 0;
        let rows_per_tile =
            if pointwise { g.out_h } else { (self.max_tile_elements / (kk * g.out_w)).clamp(1, g.out_h) };
        let mut cols = if pointwise { Vec::new() } else { vec![0f32; kk * rows_per_tile * g.out_w] };
        let mut out = vec![0f32; batch * c_out * plane_out];
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };

        for b in 0..batch {
            let image = &x[b * c_in * h * w..(b + 1) * c_in * h * w];
            let out_image = &mut out[b * c_out * plane_out..(b + 1) * c_out * plane_out];
            let mut row0 = 0;
            while row0 < g.out_h {
                let rows = rows_per_tile.min(g.out_h - row0);
                let n = rows * g.out_w;
                let (rhs, rhs_rs): (&[f32], usize) = if pointwise {
                    (image, h * w)
                } else {
                    self.im2col(image, &g, row0, rows, &mut cols[..kk * n]);
                    (&cols[..kk * n], n)
                };
                let dst_offset = row0 * g.out_w;
                for (co, plane) in out_image.chunks_mut(plane_out).enumerate() {
                    plane[dst_offset..dst_offset + n].fill(bias[co]);
                }
                // SAFETY: dst covers `c_out` rows of `n` columns at stride `plane_out` inside
                // `out_image`; lhs is the contiguous `[c_out, kk]` weight; rhs holds `kk` rows of
                // `n` columns at stride `rhs_rs` (for the pointwise case `n == rhs_rs == h * w`).
                unsafe {
                    gemm::gemm(
                        c_out,
                        n,
                        kk,
                        out_image.as_mut_ptr().add(dst_offset),
                        1,
                        plane_out as isize,
                        true,
                        weight.as_ptr(),
                        1,
                        kk as isize,
                        rhs.as_ptr(),
                        1,
                        rhs_rs as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    );
                }
                row0 += rows;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[batch, c_out, g.out_h, g.out_w])))
    }
}

impl ConvCpu {
    /// Fill `cols` (`[c_in·k·k, rows·out_w]`) with the input patches of output rows
    /// `row0..row0 + rows` of one image `[c_in, h, w]`.
    fn im2col(&self, image: &[f32], g: &Geometry, row0: usize, rows: usize, cols: &mut [f32]) {
        let n = rows * g.out_w;
        let (s, pad) = (self.stride, self.pad_before as isize);
        cols.par_chunks_mut(n).enumerate().for_each(|(r, dst)| {
            let (c, i, j) = (r / (g.k * g.k), (r / g.k) % g.k, r % g.k);
            let plane = &image[c * g.h * g.w..(c + 1) * g.h * g.w];
            // Output columns whose input column ox·s + j - pad lies inside the image.
            let first = ((pad - j as isize).max(0) as usize).div_ceil(s);
            let end = (((g.w as isize + pad - j as isize).max(0) as usize).div_ceil(s)).min(g.out_w).max(first);
            for (t, dst_row) in dst.chunks_mut(g.out_w).enumerate() {
                let iy = ((row0 + t) * s + i) as isize - pad;
                if iy < 0 || iy >= g.h as isize {
                    dst_row.fill(0.0);
                    continue;
                }
                let src_row = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                dst_row[..first].fill(0.0);
                dst_row[end..].fill(0.0);
                let ix0 = (first * s + j) as isize - pad;
                if s == 1 {
                    let start = ix0 as usize;
                    dst_row[first..end].copy_from_slice(&src_row[start..start + (end - first)]);
                } else {
                    for (d, ox) in dst_row[first..end].iter_mut().zip(0..) {
                        *d = src_row[ix0 as usize + ox * s];
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_abs_diff, seeded};
    use candle_core::Device;

    fn conv(c_in: usize, c_out: usize, k: usize, stride: usize, before: usize, after: usize) -> Conv2d {
        let dev = Device::Cpu;
        Conv2d {
            weight: seeded(&[c_out, c_in, k, k], 1, &dev),
            bias: seeded(&[c_out], 2, &dev),
            stride,
            pad_before: before,
            pad_after: after,
        }
    }

    #[test]
    fn cpu_kernel_matches_candle_convolution() {
        let x = seeded(&[2, 3, 9, 7], 3, &Device::Cpu);
        for (k, stride, before, after) in
            [(3, 1, 1, 1), (3, 2, 1, 1), (3, 2, 0, 1), (1, 1, 0, 0), (3, 1, 0, 0), (5, 2, 2, 2)]
        {
            let c = conv(3, 4, k, stride, before, after);
            let got = c.forward(&x).unwrap();
            let want = c.forward_generic(&x).unwrap();
            assert_eq!(got.dims(), want.dims(), "k{k} s{stride} p{before}/{after}");
            assert!(max_abs_diff(&got, &want) < 1e-5, "k{k} s{stride} p{before}/{after}");
        }
    }

    #[test]
    fn tiled_rows_match_single_tile() {
        let x = seeded(&[2, 3, 7, 5], 4, &Device::Cpu);
        for (stride, before, after) in [(1, 1, 1), (2, 0, 1)] {
            let c = conv(3, 2, 3, stride, before, after);
            let want = c.forward_generic(&x).unwrap();
            // Budgets of 1 row, 2 rows (last tile short) and everything at once.
            for budget in [1, 2 * 27 * 5, usize::MAX] {
                let got = c.forward_cpu(&x, budget).unwrap();
                assert!(max_abs_diff(&got, &want) < 1e-5, "stride {stride} budget {budget}");
            }
        }
    }

    #[test]
    fn rejects_mismatched_channels() {
        let c = conv(3, 4, 3, 1, 1, 1);
        assert!(c.forward(&seeded(&[1, 5, 4, 4], 1, &Device::Cpu)).is_err());
    }
}
