//! Multi-head attention over all heads at once: one batched matmul for the scores and one for
//! the weighted values, whatever the number of heads.

use candle_core::Tensor;

/// `[B, S, H·D]` → `[B, H, S, D]`, contiguous (the layout the batched matmul needs).
pub fn split_heads(x: &Tensor, num_heads: usize) -> candle_core::Result<Tensor> {
    let (b, s, width) = x.dims3()?;
    if num_heads == 0 || width % num_heads != 0 {
        candle_core::bail!("attention width {width} is not a multiple of {num_heads} heads");
    }
    x.reshape((b, s, num_heads, width / num_heads))?.transpose(1, 2)?.contiguous()
}

/// `[B, H, S, D]` → `[B, S, H·D]`.
pub fn merge_heads(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, s, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, s, h * d))
}

/// `softmax(q·kᵀ·scale + bias)·v` for `q` `[B, H, Sq, D]`, `k`, `v` `[B, H, Sk, D]` and an
/// optional additive `bias` broadcastable to `[B, H, Sq, Sk]`. Returns `[B, H, Sq, D]`.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let mut scores = q.matmul(&k.t()?)?;
    if scale != 1.0 {
        scores = (scores * scale)?;
    }
    if let Some(bias) = bias {
        scores = scores.broadcast_add(bias)?;
    }
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn heads_round_trip_and_match_per_head_attention() {
        let dev = Device::Cpu;
        let (b, s, h, d) = (2, 5, 3, 4);
        let x = Tensor::randn(0f32, 1.0, (b, s, h * d), &dev).unwrap();
        let heads = split_heads(&x, h).unwrap();
        assert_eq!(heads.dims(), &[b, h, s, d]);
        let back = merge_heads(&heads).unwrap();
        assert_eq!(back.to_vec3::<f32>().unwrap(), x.to_vec3::<f32>().unwrap());

        // Head 1 of the batched result equals attention computed on head 1 alone.
        let k = split_heads(&Tensor::randn(0f32, 1.0, (b, 7, h * d), &dev).unwrap(), h).unwrap();
        let v = split_heads(&Tensor::randn(0f32, 1.0, (b, 7, h * d), &dev).unwrap(), h).unwrap();
        let all = scaled_dot_product_attention(&heads, &k, &v, 0.5, None).unwrap();
        let (q1, k1, v1) = (heads.i((.., 1)).unwrap(), k.i((.., 1)).unwrap(), v.i((.., 1)).unwrap());
        let w = candle_nn::ops::softmax_last_dim(&(q1.matmul(&k1.t().unwrap()).unwrap() * 0.5).unwrap()).unwrap();
        let one = w.matmul(&v1).unwrap();
        let diff = (all.i((.., 1)).unwrap() - one).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn bias_of_minus_infinity_hides_a_key() {
        let dev = Device::Cpu;
        let q = Tensor::ones((1, 1, 1, 2), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::new(&[[[[1f32, 0.0], [0.0, 1.0]]]], &dev).unwrap();
        let v = Tensor::new(&[[[[10f32, 0.0], [0.0, 10.0]]]], &dev).unwrap();
        let bias = Tensor::new(&[0f32, f32::NEG_INFINITY], &dev).unwrap();
        let out = scaled_dot_product_attention(&q, &k, &v, 1.0, Some(&bias)).unwrap();
        assert_eq!(out.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![10.0, 0.0]);
    }

    #[test]
    fn uneven_head_split_is_an_error() {
        let x = Tensor::zeros((1, 2, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(split_heads(&x, 3).is_err());
    }
}
