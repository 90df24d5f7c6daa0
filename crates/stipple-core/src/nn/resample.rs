//! diffusers `Downsample2D` / `Upsample2D` with `use_conv=True`: a stride-2 3x3 convolution, and
//! nearest-neighbour 2x upsampling followed by a 3x3 convolution.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::conv2d::Conv2d;

use crate::Result;

#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    /// Loads `conv` under `vb` (diffusers' `downsamplers.0`).
    /// `padding == 0` (the VAE encoder) pads only the bottom and right by one, as diffusers does.
    pub fn new(vb: VarBuilder, channels: usize, out_channels: usize, padding: usize) -> Result<Self> {
        let (before, after) = if padding == 0 { (0, 1) } else { (padding, padding) };
        Ok(Self { conv: Conv2d::with_padding(vb.pp("conv"), channels, out_channels, 3, 2, before, after)? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}

#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// Loads `conv` under `vb` (diffusers' `upsamplers.0`).
    pub fn new(vb: VarBuilder, channels: usize, out_channels: usize) -> Result<Self> {
        Ok(Self { conv: Conv2d::new(vb.pp("conv"), channels, out_channels, 3, 1, 1)? })
    }

    /// Nearest upsampling to `size` (`(H, W)`, the matching skip connection's size in the UNet),
    /// or to twice the input size; then the convolution.
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&x.upsample_nearest2d(th, tw)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{max_abs_diff, seeded};
    use candle_core::{DType, Device};

    fn vb_with(w: &Tensor, b: &Tensor) -> VarBuilder<'static> {
        VarBuilder::from_tensors(
            [("conv.weight".to_string(), w.clone()), ("conv.bias".to_string(), b.clone())].into_iter().collect(),
            DType::F32,
            &Device::Cpu,
        )
    }

    #[test]
    fn asymmetric_padding_for_padding_zero() {
        let dev = Device::Cpu;
        let w = seeded(&[2, 2, 3, 3], 1, &dev);
        let b = seeded(&[2], 2, &dev);
        let x = seeded(&[1, 2, 6, 6], 3, &dev);
        let down = Downsample2D::new(vb_with(&w, &b), 2, 2, 0).unwrap();
        let y = down.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 2, 3, 3]);
        // Output (0, 0) sees input rows/cols 0..3 only; the last output sees the zero pad.
        let manual = x.pad_with_zeros(3, 0, 1).unwrap().pad_with_zeros(2, 0, 1).unwrap();
        let want = manual.conv2d(&w, 0, 2, 1, 1).unwrap().broadcast_add(&b.reshape((1, 2, 1, 1)).unwrap()).unwrap();
        assert!(max_abs_diff(&y, &want) < 1e-5);
        let symmetric = Downsample2D::new(vb_with(&w, &b), 2, 2, 1).unwrap().forward(&x).unwrap();
        assert_eq!(symmetric.dims(), &[1, 2, 3, 3]);
        assert!(max_abs_diff(&y, &symmetric) > 1e-3);
    }

    #[test]
    fn nearest_upsampling_repeats_pixels() {
        let dev = Device::Cpu;
        // Identity 3x3 kernel: the output is the upsampled input.
        let mut k = vec![0f32; 9];
        k[4] = 1.0;
        let w = Tensor::from_vec(k, (1, 1, 3, 3), &dev).unwrap();
        let b = Tensor::zeros(1, DType::F32, &dev).unwrap();
        let up = Upsample2D::new(vb_with(&w, &b), 1, 1).unwrap();
        let x = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &dev).unwrap();
        let y = up.forward(&x, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&y[..8], &[1., 1., 2., 2., 1., 1., 2., 2.]);
        assert_eq!(up.forward(&x, Some((3, 5))).unwrap().dims(), &[1, 1, 3, 5]);
    }
}
