//! A linear layer whose weight is kept the way it was stored: in the compute dtype, in a narrower
//! float type widened for each product (bf16 / f16 checkpoints on a CPU without fast bf16
//! matmul), or block-quantized (GGUF q8_0 / q4_0) and multiplied without widening the whole matrix.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

/// How a linear layer holds its `[out, in]` weight.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// In the dtype activations have.
    Dense(Tensor),
    /// In a narrower float dtype (bf16 / f16), widened to the activations' dtype per product: the
    /// memory of the stored dtype, the arithmetic of the compute dtype.
    Stored(Tensor),
    /// ggml blocks (q8_0, q4_0 ...), multiplied by candle's quantized kernels.
    Quantized(QMatMul),
}

/// `y = x @ wᵀ + b` over the last axis of `x`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: LinearWeight, bias: Option<Tensor>) -> Linear {
        Linear { weight, bias }
    }

    pub fn weight(&self) -> &LinearWeight {
        &self.weight
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(w) => candle_nn::Linear::new(w.clone(), None).forward(x)?,
            LinearWeight::Stored(w) => candle_nn::Linear::new(w.to_dtype(x.dtype())?, None).forward(x)?,
            // The quantized kernels take contiguous f32 rows.
            LinearWeight::Quantized(q) => {
                let dtype = x.dtype();
                q.forward(&x.to_dtype(candle_core::DType::F32)?.contiguous()?)?.to_dtype(dtype)?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{DType, Device};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn every_weight_form_computes_the_same_product() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 64), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 8, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64), &dev).unwrap();
        let dense = Linear::new(LinearWeight::Dense(w.clone()), Some(b.clone())).forward(&x).unwrap();
        let reference = candle_nn::Linear::new(w.clone(), Some(b.clone())).forward(&x).unwrap();
        assert_eq!(max_diff(&dense, &reference), 0.0);

        // bf16 storage: the product of the rounded weight, computed in f32.
        let w16 = w.to_dtype(DType::BF16).unwrap();
        let stored = Linear::new(LinearWeight::Stored(w16.clone()), Some(b.clone())).forward(&x).unwrap();
        assert_eq!(stored.dtype(), DType::F32);
        let rounded = candle_nn::Linear::new(w16.to_dtype(DType::F32).unwrap(), Some(b.clone())).forward(&x).unwrap();
        assert_eq!(max_diff(&stored, &rounded), 0.0);

        // q8_0: close to the dense product (8-bit weights and activations).
        let q = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        let quantized = Linear::new(LinearWeight::Quantized(q), Some(b)).forward(&x).unwrap();
        assert_eq!(quantized.dims(), &[2, 3, 8]);
        let scale = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let err = max_diff(&quantized, &reference);
        assert!(err > 0.0 && err < 0.02 * scale, "q8_0 error {err} at scale {scale}");
    }
}
