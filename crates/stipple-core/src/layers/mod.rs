//! Building blocks shared by the transformer networks (T5, FLUX, SD3): normalisations,
//! multi-head attention and linear layers over stored or quantized weights, computed the way
//! PyTorch computes them.

pub mod attention;
pub mod linear;
pub mod norm;
pub mod weights;

pub use attention::{merge_heads, scaled_dot_product_attention, split_heads};
pub use linear::{Linear, LinearFormat, LinearWeight, DEQUANTIZE_FROM_ROWS};
pub use norm::{LayerNorm, RmsNorm};
pub use weights::{linear, linear_no_bias, LinearSource, ModelWeights};
