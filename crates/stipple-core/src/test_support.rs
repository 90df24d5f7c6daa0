//! Helpers shared by the engine's unit tests: seeded tensors, differences, the repository's
//! test data, and weight sources for building full-size networks without checkpoints.

use candle_core::{DType, Device, Tensor};

/// Deterministic pseudo-random values in about [-1, 1] (a small LCG; no RNG dependency).
pub(crate) fn seeded(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, dev).unwrap()
}

/// Largest absolute elementwise difference, in f32 (shapes must broadcast-match exactly).
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// A path under the repository's `testdata/`.
pub(crate) fn testdata(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(rel)
}

/// Every tensor of a safetensors file.
pub(crate) fn load_tensors(path: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Token ids `[rows, len]` from equal-length rows.
pub(crate) fn token_ids(rows: &[&[u32]]) -> Tensor {
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

/// Largest absolute elementwise difference, in f64 (shapes must match).
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// A weight source that hands out zero-stride dummy tensors of whatever shape is asked for and
/// counts them: builds full-size models without memory, to check architectures against the
/// parameter counts of published checkpoints.
#[derive(Clone, Default)]
pub(crate) struct ShapeOnlyBackend {
    total: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    names: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl ShapeOnlyBackend {
    pub(crate) fn var_builder() -> (candle_nn::VarBuilder<'static>, ShapeOnlyBackend) {
        let backend = ShapeOnlyBackend::default();
        let boxed: Box<dyn candle_nn::var_builder::SimpleBackend> = Box::new(backend.clone());
        (candle_nn::VarBuilder::from_backend(boxed, DType::F32, Device::Cpu), backend)
    }

    pub(crate) fn total_elements(&self) -> usize {
        self.total.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl candle_nn::var_builder::SimpleBackend for ShapeOnlyBackend {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if !self.names.lock().unwrap().insert(name.to_string()) {
            candle_core::bail!("tensor {name} requested twice");
        }
        self.total.fetch_add(s.elem_count(), std::sync::atomic::Ordering::SeqCst);
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("shape-only backend cannot provide {name} without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// Random weights scaled like PyTorch's default init (std `1/sqrt(fan_in)`; norm weights 1,
/// biases 0), for timing full-size models without checkpoints.
#[derive(Clone, Copy, Default)]
pub(crate) struct RandomBackend;

impl RandomBackend {
    pub(crate) fn var_builder() -> candle_nn::VarBuilder<'static> {
        let boxed: Box<dyn candle_nn::var_builder::SimpleBackend> = Box::new(RandomBackend);
        candle_nn::VarBuilder::from_backend(boxed, DType::F32, Device::Cpu)
    }
}

impl candle_nn::var_builder::SimpleBackend for RandomBackend {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if s.rank() == 1 {
            let fill = if name.ends_with("weight") { 1.0 } else { 0.0 };
            return Tensor::full(fill, s, dev)?.to_dtype(dtype);
        }
        let fan_in: usize = s.dims()[1..].iter().product();
        Tensor::randn(0f32, 1.0 / (fan_in as f32).sqrt(), s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random backend cannot provide {name} without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}
