//! Fused CPU kernels, with backward passes, for the elementwise work of training: SiLU,
//! normalisation and softmax over the last dimension, scale-and-shift by broadcast parameters
//! (biases, norm affines, adaLN modulation), and the im2col / col2im pair that turns
//! convolutions into matmuls in both directions.
//!
//! Composed from candle's primitive ops these allocate and sweep a full tensor per step (a tanh
//! GELU's backward alone is a dozen passes with `powf`), and the backward of a broadcast sums
//! over non-last dimensions, which candle does ~40x slower than a matmul; on a 2-core CPU that
//! was most of a training step. Each kernel here is one pass forward and one backward. Other
//! dtypes and devices fall back to the composed form, which computes the same function.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// Elements per parallel task of the elementwise kernels: below this a tensor is swept by one
/// thread (waking a second costs more than it saves on the small tensors of inference).
const CHUNK: usize = 1 << 16;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: f32 input expected");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: contiguous input expected"),
    }
}

fn fused_ok(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `x · sigmoid(x)`.
pub fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    if !fused_ok(x) {
        return x.silu();
    }
    x.contiguous()?.apply_op1(Silu)
}

struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "stipple-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = v * sigmoid(v);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &SiluGrad)?))
    }
}

/// `grad · d/dx silu(x) = grad · s · (1 + x · (1 - s))`.
struct SiluGrad;

impl CustomOp2 for SiluGrad {
    fn name(&self) -> &'static str {
        "stipple-silu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK))).for_each(|(o, (x, g))| {
            for ((o, &v), &gv) in o.iter_mut().zip(x).zip(g) {
                let s = sigmoid(v);
                *o = gv * s * (1.0 + v * (1.0 - s));
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `(x - mean) / sqrt(var + eps)` over the last dimension (LayerNorm without scale and shift).
pub fn normalize_last_dim(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if !fused_ok(x) {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        return centred.broadcast_div(&(var + eps)?.sqrt()?);
    }
    x.contiguous()?.apply_op1(Normalize { eps: eps as f32 })
}

struct Normalize {
    eps: f32,
}

/// Rows of `dim` values per parallel task: about [`CHUNK`] elements.
fn rows_per_task(dim: usize) -> usize {
    (CHUNK / dim.max(1)).max(1)
}

/// Mean and `1 / sqrt(var + eps)` of a row (two passes, accumulated in f64: rows of a group
/// norm hold tens of thousands of values).
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "stipple-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let dim = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        let task = dim * rows_per_task(dim);
        out.par_chunks_mut(task).zip(x.par_chunks(task)).for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(dim).zip(x.chunks(dim)) {
                let (mean, rstd) = row_stats(x, self.eps);
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = (v - mean) * rstd;
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &NormalizeGrad { eps: self.eps })?))
    }
}

/// `dx = rstd · (g - mean(g) - y · mean(g · y))` with `y` the normalised row.
struct NormalizeGrad {
    eps: f32,
}

impl CustomOp2 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "stipple-normalize-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let dim = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        let task = dim * rows_per_task(dim);
        out.par_chunks_mut(task).zip(x.par_chunks(task).zip(g.par_chunks(task))).for_each(|(o, (x, g))| {
            for ((o, x), g) in o.chunks_mut(dim).zip(x.chunks(dim)).zip(g.chunks(dim)) {
                let (mean, rstd) = row_stats(x, self.eps);
                let n = dim as f64;
                let (mut g_sum, mut gy_sum) = (0f64, 0f64);
                for (&v, &gv) in x.iter().zip(g) {
                    g_sum += gv as f64;
                    gy_sum += (gv * (v - mean) * rstd) as f64;
                }
                let (g_mean, gy_mean) = ((g_sum / n) as f32, (gy_sum / n) as f32);
                for ((o, &v), &gv) in o.iter_mut().zip(x).zip(g) {
                    *o = rstd * (gv - g_mean - (v - mean) * rstd * gy_mean);
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if !fused_ok(x) {
        let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
        return e.broadcast_div(&e.sum_keepdim(D::Minus1)?);
    }
    x.contiguous()?.apply_op1(Softmax)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "stipple-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let dim = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        let task = dim * rows_per_task(dim);
        out.par_chunks_mut(task).zip(x.par_chunks(task)).for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(dim).zip(x.chunks(dim)) {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = (v - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

/// `dx = y · (g - sum(g · y))`.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "stipple-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let dim = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        let task = dim * rows_per_task(dim);
        out.par_chunks_mut(task).zip(y.par_chunks(task).zip(g.par_chunks(task))).for_each(|(o, (y, g))| {
            for ((o, y), g) in o.chunks_mut(dim).zip(y.chunks(dim)).zip(g.chunks(dim)) {
                let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                for ((o, &yv), &gv) in o.iter_mut().zip(y).zip(g) {
                    *o = yv * (gv - dot);
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x · scale + shift` where `x` is `[P, Q, R]` and `scale` and `shift` are `[P or 1, Q or 1,
/// R or 1]` (a bias `[1, 1, D]`, a per-sample modulation `[B, 1, D]`, a per-channel affine
/// `[1, C, 1]`...). `None` stands for 1 and 0.
pub fn scale_shift(x: &Tensor, scale: Option<&Tensor>, shift: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (p, q, r) = x.dims3()?;
    for t in [scale, shift].into_iter().flatten() {
        let (a, b, c) = t.dims3()?;
        if !((a == p || a == 1) && (b == q || b == 1) && (c == r || c == 1)) {
            candle_core::bail!("scale_shift: {:?} does not broadcast to {:?}", t.dims(), x.dims());
        }
    }
    if !fused_ok(x) || [scale, shift].into_iter().flatten().any(|t| !fused_ok(t)) {
        let y = match scale {
            Some(s) => x.broadcast_mul(s)?,
            None => x.clone(),
        };
        return match shift {
            Some(t) => y.broadcast_add(t),
            None => Ok(y),
        };
    }
    let one = |v: f32| Tensor::full(v, (1, 1, 1), x.device());
    let scale = match scale {
        Some(s) => s.contiguous()?,
        None => one(1.0)?,
    };
    let shift = match shift {
        Some(t) => t.contiguous()?,
        None => one(0.0)?,
    };
    x.contiguous()?.apply_op3(&scale, &shift, ScaleShift)
}

/// Strides to index a `[P|1, Q|1, R|1]` parameter by `(p, q, r)`.
#[derive(Clone, Copy)]
struct Broadcast {
    sp: usize,
    sq: usize,
    sr: usize,
}

impl Broadcast {
    fn of(l: &Layout) -> Broadcast {
        let d = l.shape().dims();
        let (a, b, c) = (d[0], d[1], d[2]);
        Broadcast { sp: if a == 1 { 0 } else { b * c }, sq: if b == 1 { 0 } else { c }, sr: if c == 1 { 0 } else { 1 } }
    }

    fn at(&self, p: usize, q: usize) -> usize {
        p * self.sp + q * self.sq
    }

    /// The parameter values along row `(p, q)` of length `r`.
    fn row<'a>(&self, data: &'a [f32], p: usize, q: usize, r: usize) -> Row<'a> {
        let start = self.at(p, q);
        if self.sr == 1 {
            Row::Full(&data[start..start + r])
        } else {
            Row::Same(data[start])
        }
    }
}

/// A parameter along one row: a value per element, or one value for the whole row.
enum Row<'a> {
    Full(&'a [f32]),
    Same(f32),
}

struct ScaleShift;

impl candle_core::CustomOp3 for ScaleShift {
    fn name(&self) -> &'static str {
        "stipple-scale-shift"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let (s, t) = (f32_slice(ss, sl, self.name())?, f32_slice(ts, tl, self.name())?);
        let (bs, bt) = (Broadcast::of(sl), Broadcast::of(tl));
        let d = xl.shape().dims();
        let (q, r) = (d[1], d[2]);
        let mut out = vec![0f32; x.len()];
        let rows = rows_per_task(r);
        out.par_chunks_mut(r * rows).zip(x.par_chunks(r * rows)).enumerate().for_each(|(task, (o, x))| {
            for (i, (o, x)) in o.chunks_mut(r).zip(x.chunks(r)).enumerate() {
                let row = task * rows + i;
                let (pi, qi) = (row / q, row % q);
                let (s_row, t_row) = (bs.row(s, pi, qi, r), bt.row(t, pi, qi, r));
                match (s_row, t_row) {
                    (Row::Full(s), Row::Full(t)) => {
                        for (((o, &v), &a), &b) in o.iter_mut().zip(x).zip(s).zip(t) {
                            *o = v * a + b;
                        }
                    }
                    (Row::Full(s), Row::Same(b)) => {
                        for ((o, &v), &a) in o.iter_mut().zip(x).zip(s) {
                            *o = v * a + b;
                        }
                    }
                    (Row::Same(a), Row::Full(t)) => {
                        for ((o, &v), &b) in o.iter_mut().zip(x).zip(t) {
                            *o = v * a + b;
                        }
                    }
                    (Row::Same(a), Row::Same(b)) => {
                        for (o, &v) in o.iter_mut().zip(x) {
                            *o = v * a + b;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(scale, &ScaleOnly)?;
        // One pass for both parameter gradients: rows of [Σ g·x | Σ g] per scale position.
        let sums = x.apply_op3_no_bwd(&grad, scale, &ParamGrads { shift_shape: shift.dims().to_vec() })?;
        let ns = scale.elem_count();
        let ds = sums.narrow(0, 0, ns)?.reshape(scale.shape())?;
        let dt = sums.narrow(0, ns, shift.elem_count())?.reshape(shift.shape())?;
        Ok((Some(dx), Some(ds), Some(dt)))
    }
}

/// `g · scale` (the input gradient of [`ScaleShift`]).
struct ScaleOnly;

impl CustomOp2 for ScaleOnly {
    fn name(&self) -> &'static str {
        "stipple-scale"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ss: &CpuStorage, sl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_slice(gs, gl, self.name())?;
        let s = f32_slice(ss, sl, self.name())?;
        let bs = Broadcast::of(sl);
        let d = gl.shape().dims();
        let (q, r) = (d[1], d[2]);
        let mut out = vec![0f32; g.len()];
        let rows = rows_per_task(r);
        out.par_chunks_mut(r * rows).zip(g.par_chunks(r * rows)).enumerate().for_each(|(task, (o, g))| {
            for (i, (o, g)) in o.chunks_mut(r).zip(g.chunks(r)).enumerate() {
                let row = task * rows + i;
                match bs.row(s, row / q, row % q, r) {
                    Row::Full(s) => o.iter_mut().zip(g).zip(s).for_each(|((o, &v), &a)| *o = v * a),
                    Row::Same(a) => o.iter_mut().zip(g).for_each(|(o, &v)| *o = v * a),
                }
            }
        });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// `Σ g·x` reduced to the scale's shape, then `Σ g` reduced to the shift's shape, as one flat
/// tensor.
struct ParamGrads {
    shift_shape: Vec<usize>,
}

impl candle_core::CustomOp3 for ParamGrads {
    fn name(&self) -> &'static str {
        "stipple-scale-shift-grads"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        _ss: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let g = f32_slice(gs, gl, self.name())?;
        let shift_layout = Layout::contiguous(self.shift_shape.as_slice());
        let (bs, bt) = (Broadcast::of(sl), Broadcast::of(&shift_layout));
        let (ns, nt) = (sl.shape().elem_count(), shift_layout.shape().elem_count());
        let d = xl.shape().dims();
        let (q, r) = (d[1], d[2]);
        let rows = rows_per_task(r);
        // Per-task partial sums, added in task order: the result does not depend on which
        // thread ran what, so training is reproducible.
        let partials: Vec<Vec<f32>> = x
            .par_chunks(r * rows)
            .zip(g.par_chunks(r * rows))
            .enumerate()
            .map(|(task, (x, g))| {
                let mut acc = vec![0f32; ns + nt];
                for (i, (x, g)) in x.chunks(r).zip(g.chunks(r)).enumerate() {
                    let row = task * rows + i;
                    let (pi, qi) = (row / q, row % q);
                    let (s0, t0) = (bs.at(pi, qi), ns + bt.at(pi, qi));
                    if bs.sr == 1 {
                        acc[s0..s0 + r].iter_mut().zip(x).zip(g).for_each(|((a, &xv), &gv)| *a += gv * xv);
                    } else {
                        acc[s0] += x.iter().zip(g).map(|(&xv, &gv)| gv * xv).sum::<f32>();
                    }
                    if bt.sr == 1 {
                        acc[t0..t0 + r].iter_mut().zip(g).for_each(|(a, &gv)| *a += gv);
                    } else {
                        acc[t0] += g.iter().sum::<f32>();
                    }
                }
                acc
            })
            .collect();
        let mut sums = vec![0f32; ns + nt];
        for partial in &partials {
            sums.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
        }
        Ok((CpuStorage::F32(sums), Shape::from(ns + nt)))
    }
}

/// Geometry of a square-kernel convolution.
#[derive(Debug, Clone, Copy)]
struct ConvGeometry {
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl ConvGeometry {
    fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// The input pixel `(y, x)` that kernel tap `(ky, kx)` of output `(oy, ox)` reads, if inside.
    fn source(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let y = (oy * self.stride + ky).checked_sub(self.pad)?;
        let x = (ox * self.stride + kx).checked_sub(self.pad)?;
        (y < self.h && x < self.w).then_some((y, x))
    }
}

/// `[B, C, H, W]` → `[C·k·k, B·Ho·Wo]`: row `(c, ky, kx)` holds what that kernel tap sees at
/// every output position of every image, so a convolution is `W[Cout, C·k·k] · cols`.
pub fn im2col(x: &Tensor, k: usize, stride: usize, pad: usize) -> candle_core::Result<Tensor> {
    let (batch, channels, h, w) = x.dims4()?;
    if k == 0 || stride == 0 || h + 2 * pad < k || w + 2 * pad < k {
        candle_core::bail!("im2col: a {k}x{k} kernel (stride {stride}, padding {pad}) does not fit a {h}x{w} image");
    }
    let g = ConvGeometry { batch, channels, h, w, k, stride, pad };
    x.contiguous()?.apply_op1(Im2Col(g))
}

struct Im2Col(ConvGeometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "stipple-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = f32_slice(s, l, self.name())?;
        let (oh, ow) = (g.out_h(), g.out_w());
        let cols = g.batch * oh * ow;
        let mut out = vec![0f32; g.channels * g.k * g.k * cols];
        out.par_chunks_mut(cols).enumerate().for_each(|(row, dst)| {
            let (c, ky, kx) = (row / (g.k * g.k), (row / g.k) % g.k, row % g.k);
            for b in 0..g.batch {
                let plane = &x[(b * g.channels + c) * g.h * g.w..][..g.h * g.w];
                for oy in 0..oh {
                    let line = &mut dst[(b * oh + oy) * ow..][..ow];
                    for (ox, v) in line.iter_mut().enumerate() {
                        if let Some((y, xx)) = g.source(oy, ox, ky, kx) {
                            *v = plane[y * g.w + xx];
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.channels * g.k * g.k, cols))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

/// The adjoint of [`Im2Col`]: every column entry added back onto the pixel it was read from.
struct Col2Im(ConvGeometry);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "stipple-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let cols = f32_slice(s, l, self.name())?;
        let (oh, ow) = (g.out_h(), g.out_w());
        let n_cols = g.batch * oh * ow;
        let mut out = vec![0f32; g.batch * g.channels * g.h * g.w];
        // One task per (image, channel) plane: planes are written by nobody else.
        out.par_chunks_mut(g.h * g.w).enumerate().for_each(|(plane_index, plane)| {
            let (b, c) = (plane_index / g.channels, plane_index % g.channels);
            for ky in 0..g.k {
                for kx in 0..g.k {
                    let row = &cols[((c * g.k + ky) * g.k + kx) * n_cols..][..n_cols];
                    for oy in 0..oh {
                        let line = &row[(b * oh + oy) * ow..][..ow];
                        for (ox, &v) in line.iter().enumerate() {
                            if let Some((y, x)) = g.source(oy, ox, ky, kx) {
                                plane[y * g.w + x] += v;
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.batch, g.channels, g.h, g.w))))
    }
}

/// A convolution of `x` `[B, C, H, W]` with `weight` `[Cout, C, k, k]` through [`im2col`] and one
/// matmul (backward: two matmuls and a col2im), `[B, Cout, Ho, Wo]`.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, pad: usize) -> candle_core::Result<Tensor> {
    let (cout, cin, k, k2) = weight.dims4()?;
    let (b, c, h, w) = x.dims4()?;
    if c != cin || k != k2 {
        candle_core::bail!("conv2d: weight {:?} does not fit input {:?}", weight.dims(), x.dims());
    }
    if !fused_ok(x) || !fused_ok(weight) {
        return x.conv2d(weight, pad, stride, 1, 1);
    }
    let cols = im2col(x, k, stride, pad)?;
    let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
    let y = weight.reshape((cout, cin * k * k))?.matmul(&cols)?;
    y.reshape((cout, b, oh * ow))?.transpose(0, 1)?.contiguous()?.reshape((b, cout, oh, ow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_diff;
    use candle_core::{DType, Device, Var};


    /// Value and gradient of `sum(w · f(x))` through the fused op and through the f64 composed form.
    fn check(f: impl Fn(&Tensor) -> candle_core::Result<Tensor>, shape: (usize, usize, usize), scale: f64) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&((Tensor::randn(0f32, 1.0, shape, &dev).unwrap() * scale).unwrap() + 0.3).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let y = f(&x).unwrap();
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let grad = g.get(&x).unwrap();

        let x64 = Var::from_tensor(&x.to_dtype(DType::F64).unwrap()).unwrap();
        let y64 = f(&x64).unwrap();
        let g64 = (&y64 * w.to_dtype(DType::F64).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let grad64 = g64.get(&x64).unwrap().to_dtype(DType::F32).unwrap();
        assert!(max_diff(&y, &y64.to_dtype(DType::F32).unwrap()) < 1e-5);
        assert!(max_diff(grad, &grad64) < 1e-4, "{}", max_diff(grad, &grad64));
    }

    #[test]
    fn silu_value_and_gradient() {
        check(silu, (3, 40_000, 1), 4.0);
    }

    #[test]
    fn normalize_value_and_gradient() {
        check(|x| normalize_last_dim(x, 1e-6), (3, 5, 24), 2.0);
        check(|x| normalize_last_dim(x, 1e-6), (2, 3, 20_000), 1.0);
    }

    #[test]
    fn softmax_value_and_gradient() {
        check(softmax_last_dim, (4, 7, 33), 3.0);
    }

    #[test]
    fn scale_shift_values_and_gradients_for_every_broadcast() {
        let dev = Device::Cpu;
        let (p, q, r) = (3, 5, 70);
        for (sshape, tshape) in [((1, 1, r), (1, 1, r)), ((p, 1, r), (p, 1, r)), ((1, q, 1), (1, q, 1)), ((p, q, r), (1, 1, 1))] {
            let var = |shape: (usize, usize, usize)| Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev).unwrap()).unwrap();
            let (x, s, t) = (var((p, q, r)), var(sshape), var(tshape));
            let w = Tensor::randn(0f32, 1.0, (p, q, r), &dev).unwrap();
            let grads_of = |y: Tensor| (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let fused = scale_shift(&x, Some(&s), Some(&t)).unwrap();
            let composed = x.broadcast_mul(&s).unwrap().broadcast_add(&t).unwrap();
            assert!(max_diff(&fused, &composed) < 1e-5);
            let (gf, gc) = (grads_of(fused), grads_of(composed));
            for v in [&x, &s, &t] {
                let d = max_diff(gf.get(v).unwrap(), gc.get(v).unwrap());
                assert!(d < 1e-3, "{sshape:?} {tshape:?}: {d}");
            }
        }
        // Missing scale or shift.
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4), &dev).unwrap();
        let t = Tensor::randn(0f32, 1.0, (1, 1, 4), &dev).unwrap();
        assert!(max_diff(&scale_shift(&x, None, Some(&t)).unwrap(), &x.broadcast_add(&t).unwrap()) < 1e-6);
        assert!(max_diff(&scale_shift(&x, Some(&t), None).unwrap(), &x.broadcast_mul(&t).unwrap()) < 1e-6);
        assert!(scale_shift(&x, Some(&Tensor::ones((1, 2, 4), DType::F32, &dev).unwrap()), None).is_err());
    }

    #[test]
    fn conv_matches_candle_with_gradients() {
        let dev = Device::Cpu;
        for (c, cout, h, w, k, stride) in [(3usize, 5usize, 8usize, 6usize, 3usize, 1usize), (4, 2, 8, 8, 3, 2), (2, 3, 5, 5, 1, 1), (2, 2, 7, 7, 3, 2)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c, h, w), &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1.0, (cout, c, k, k), &dev).unwrap()).unwrap();
            let ours = conv2d(&x, &wt, stride, k / 2).unwrap();
            let theirs = x.conv2d(&wt, k / 2, stride, 1, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_diff(&ours, &theirs) < 1e-4);
            let probe = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g1 = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &wt] {
                let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(d < 1e-3, "c{c} k{k} s{stride}: {d}");
            }
        }
    }

    #[test]
    fn non_contiguous_inputs() {
        let x = Tensor::randn(0f32, 1.0, (6, 5), &Device::Cpu).unwrap().t().unwrap();
        let want = normalize_last_dim(&x.to_dtype(DType::F64).unwrap(), 1e-6).unwrap().to_dtype(DType::F32).unwrap();
        assert!(max_diff(&normalize_last_dim(&x, 1e-6).unwrap(), &want) < 1e-5);
    }
}
