//! A linear layer whose weight is kept the way it was stored: in the compute dtype, in a narrower
//! float type widened for each product (bf16 / f16 checkpoints on a CPU without fast bf16
//! matmul), or block-quantized (GGUF q8_0 / q4_0) and multiplied without widening the whole matrix.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

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

/// The forms a linear weight can be kept in (for random-weight benchmarks and memory estimates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearFormat {
    F32,
    Bf16,
    F16,
    Q8_0,
    Q4_0,
}

impl LinearFormat {
    pub const ALL: [LinearFormat; 5] =
        [LinearFormat::F32, LinearFormat::Bf16, LinearFormat::F16, LinearFormat::Q8_0, LinearFormat::Q4_0];

    pub fn name(self) -> &'static str {
        match self {
            LinearFormat::F32 => "f32",
            LinearFormat::Bf16 => "bf16",
            LinearFormat::F16 => "f16",
            LinearFormat::Q8_0 => "q8_0",
            LinearFormat::Q4_0 => "q4_0",
        }
    }

    fn ggml(self) -> Option<GgmlDType> {
        match self {
            LinearFormat::Q8_0 => Some(GgmlDType::Q8_0),
            LinearFormat::Q4_0 => Some(GgmlDType::Q4_0),
            _ => None,
        }
    }

    /// Whether an `[out, in]` weight is kept in this form: block formats need rows of whole
    /// blocks (others stay f32, as `stipple quantize` leaves them).
    pub fn applies(self, in_dim: usize) -> bool {
        self.ggml().is_none_or(|q| in_dim % q.block_size() == 0)
    }

    /// Bytes of an `[out, in]` weight in this form.
    pub fn bytes(self, out_dim: usize, in_dim: usize) -> u64 {
        let n = (out_dim * in_dim) as u64;
        match (self, self.ggml()) {
            (_, Some(q)) if self.applies(in_dim) => n / q.block_size() as u64 * q.type_size() as u64,
            (LinearFormat::Bf16 | LinearFormat::F16, _) => 2 * n,
            _ => 4 * n,
        }
    }

    /// An f32 weight `[out, in]` converted to this form.
    pub fn convert(self, weight: &Tensor) -> candle_core::Result<LinearWeight> {
        let in_dim = weight.dim(1)?;
        Ok(match (self, self.ggml()) {
            (_, Some(q)) if self.applies(in_dim) => LinearWeight::Quantized(QMatMul::from_qtensor(QTensor::quantize(weight, q)?)?),
            (LinearFormat::Bf16, _) => LinearWeight::Stored(weight.to_dtype(DType::BF16)?),
            (LinearFormat::F16, _) => LinearWeight::Stored(weight.to_dtype(DType::F16)?),
            _ => LinearWeight::Dense(weight.clone()),
        })
    }
}

impl std::str::FromStr for LinearFormat {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<LinearFormat> {
        let lower = s.trim().to_ascii_lowercase();
        LinearFormat::ALL.into_iter().find(|f| f.name() == lower).ok_or_else(|| {
            let names: Vec<&str> = LinearFormat::ALL.iter().map(|f| f.name()).collect();
            crate::Error::param("dtype", format!("unknown weight format `{s}`; choose from {}", names.join(", ")))
        })
    }
}

/// From this many input rows on, block-quantized weights are widened to f32 for the product
/// instead of going through the quantized kernels (measured on AVX-512 with FLUX/SD3 widths: the
/// kernels win only for a handful of rows, as in the time/pooled embeddings).
pub const DEQUANTIZE_FROM_ROWS: usize = 16;

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
            LinearWeight::Quantized(q) => {
                let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1);
                match q {
                    // Many rows (image tokens): widening the blocks once and running the f32 GEMM
                    // is several times faster than candle's row-by-row quantized kernels, and the
                    // widened copy lives for this product only.
                    QMatMul::QTensor(t) if rows >= DEQUANTIZE_FROM_ROWS => {
                        let w = t.dequantize(x.device())?.to_dtype(x.dtype())?;
                        candle_nn::Linear::new(w, None).forward(x)?
                    }
                    // The quantized kernels take contiguous f32 rows.
                    _ => {
                        let dtype = x.dtype();
                        q.forward(&x.to_dtype(DType::F32)?.contiguous()?)?.to_dtype(dtype)?
                    }
                }
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
    use crate::test_support::max_diff;
    use candle_core::Device;


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

        // q8_0 with few rows: candle's kernels (8-bit weights and activations), close to dense.
        let qt = std::sync::Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let q = QMatMul::from_arc(qt.clone()).unwrap();
        let layer = Linear::new(LinearWeight::Quantized(q), Some(b.clone()));
        let quantized = layer.forward(&x).unwrap();
        assert_eq!(quantized.dims(), &[2, 3, 8]);
        let scale = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let err = max_diff(&quantized, &reference);
        assert!(err > 0.0 && err < 0.02 * scale, "q8_0 error {err} at scale {scale}");
        // Many rows: the widened blocks through the f32 product.
        let many = Tensor::randn(0f32, 1.0, (2, DEQUANTIZE_FROM_ROWS, 64), &dev).unwrap();
        let widened = candle_nn::Linear::new(qt.dequantize(&dev).unwrap(), Some(b)).forward(&many).unwrap();
        assert_eq!(max_diff(&layer.forward(&many).unwrap(), &widened), 0.0);
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn formats_convert_and_count_bytes_like_ggml() {
        let w = Tensor::ones((4, 64), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert_eq!(LinearFormat::Q8_0.bytes(4, 64), 4 * 2 * 34);
        assert_eq!(LinearFormat::Q4_0.bytes(4, 64), 4 * 2 * 18);
        assert_eq!(LinearFormat::Bf16.bytes(4, 64), 512);
        // Rows that are not whole blocks stay f32.
        assert_eq!(LinearFormat::Q4_0.bytes(4, 48), 4 * 48 * 4);
        assert!(matches!(LinearFormat::Q4_0.convert(&w).unwrap(), LinearWeight::Quantized(_)));
        assert!(matches!(LinearFormat::F16.convert(&w).unwrap(), LinearWeight::Stored(t) if t.dtype() == DType::F16));
        assert!(matches!(LinearFormat::Q8_0.convert(&w.narrow(1, 0, 48).unwrap()).unwrap(), LinearWeight::Dense(_)));
        assert_eq!("Q8_0".parse::<LinearFormat>().unwrap(), LinearFormat::Q8_0);
        assert!("q5_k".parse::<LinearFormat>().unwrap_err().to_string().contains("q4_0"));
    }
}
