//! Building blocks shared by the transformer networks (T5, FLUX, SD3): normalisations and
//! multi-head attention, computed the way PyTorch computes them.

pub mod attention;
pub mod norm;

pub use attention::{merge_heads, scaled_dot_product_attention, split_heads};
pub use norm::{LayerNorm, RmsNorm};
