//! Mean and variance of a run of f32 values for the normalisation kernels.
//!
//! Two passes with f64 accumulators: a one-pass `E[x²] - E[x]²` in f32 (candle's fused layer
//! norm) loses most digits when the mean is large against the spread, which transformer
//! residual streams do have. Several independent accumulators let the compiler vectorise.

const LANES: usize = 8;

/// `(mean, biased variance)` of `values`; `(0, 0)` for an empty slice.
pub(crate) fn mean_and_variance(values: &[f32]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = lanes_sum(values, |v| v as f64) / n;
    let var = lanes_sum(values, |v| {
        let d = v as f64 - mean;
        d * d
    }) / n;
    (mean, var)
}

fn lanes_sum(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    let mut total: f64 = acc.iter().sum();
    for &v in tail {
        total += f(v);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_on_offset_data() {
        // A large common offset is where one-pass f32 formulas break down.
        let values: Vec<f32> = (0..1001).map(|i| 10_000.0 + (i % 7) as f32 * 0.25).collect();
        let (mean, var) = mean_and_variance(&values);
        let m: f64 = values.iter().map(|&v| v as f64).sum::<f64>() / 1001.0;
        let v: f64 = values.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / 1001.0;
        assert!((mean - m).abs() < 1e-9);
        assert!((var - v).abs() < 1e-9 * v.max(1.0));
        assert!(var > 0.2);
    }

    #[test]
    fn short_and_empty_slices() {
        assert_eq!(mean_and_variance(&[]), (0.0, 0.0));
        assert_eq!(mean_and_variance(&[3.0]), (3.0, 0.0));
        let (m, v) = mean_and_variance(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (v - 2.0 / 3.0).abs() < 1e-12);
    }
}
