//! diffusers' `Attention` as FLUX's and SD3's processors use it: self-attention over one stream,
//! or joint attention over the image and text streams concatenated (each with its own q/k/v
//! projections and optional RMS query/key norms, one softmax over both).

use candle_core::{Module, Tensor};
use crate::layers::{linear, Linear, ModelWeights};

use super::rope::RotaryEmbedding;
use crate::layers::{merge_heads, scaled_dot_product_attention, split_heads, RmsNorm};

/// The epsilon of the query/key RMS norms.
const QK_NORM_EPS: f64 = 1e-6;

/// Which parts an attention layer has.
#[derive(Debug, Clone, Copy)]
pub struct AttentionParts {
    /// `norm_q`/`norm_k` (and `norm_added_q`/`norm_added_k`): RMS norms over each head.
    pub qk_norm: bool,
    /// `add_q_proj`/`add_k_proj`/`add_v_proj`: a second (text) stream joins the attention.
    pub context: bool,
    /// `to_add_out`: the text stream's output projection (absent in SD3's last block).
    pub context_out: bool,
    /// `to_out.0`: the image stream's output projection (absent in FLUX's single blocks).
    pub out: bool,
}

/// Where the text tokens go in the joint sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JointOrder {
    /// FLUX: `[text, image]` (its rotary ids are ordered this way).
    TextFirst,
    /// SD3: `[image, text]`.
    ImageFirst,
}

/// One stream's projections into queries, keys and values.
#[derive(Debug, Clone)]
struct QkvProjection {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
}

impl QkvProjection {
    fn load(
        dim: usize,
        inner: usize,
        head_dim: usize,
        qk_norm: bool,
        names: [&str; 5],
        vb: &ModelWeights,
    ) -> candle_core::Result<QkvProjection> {
        let norm = |name: &str| -> candle_core::Result<Option<RmsNorm>> {
            if qk_norm {
                Ok(Some(RmsNorm::load(head_dim, QK_NORM_EPS, vb.pp(name).vb().clone())?))
            } else {
                Ok(None)
            }
        };
        Ok(QkvProjection {
            q: linear(dim, inner, vb.pp(names[0]))?,
            k: linear(dim, inner, vb.pp(names[1]))?,
            v: linear(dim, inner, vb.pp(names[2]))?,
            norm_q: norm(names[3])?,
            norm_k: norm(names[4])?,
        })
    }

    /// `(q, k, v)`, each `[B, H, S, head_dim]`, queries and keys normalised.
    fn forward(&self, x: &Tensor, heads: usize) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let norm = |t: Tensor, n: &Option<RmsNorm>| match n {
            Some(n) => n.forward(&t),
            None => Ok(t),
        };
        let q = norm(split_heads(&self.q.forward(x)?, heads)?, &self.norm_q)?;
        let k = norm(split_heads(&self.k.forward(x)?, heads)?, &self.norm_k)?;
        let v = split_heads(&self.v.forward(x)?, heads)?;
        Ok((q, k, v))
    }
}

/// An attention layer of a diffusion transformer.
#[derive(Debug, Clone)]
pub struct Attention {
    image: QkvProjection,
    context: Option<QkvProjection>,
    to_out: Option<Linear>,
    to_add_out: Option<Linear>,
    heads: usize,
    scale: f64,
}

impl Attention {
    pub fn load(
        dim: usize,
        heads: usize,
        head_dim: usize,
        parts: AttentionParts,
        vb: ModelWeights,
    ) -> candle_core::Result<Attention> {
        let inner = heads * head_dim;
        let image = QkvProjection::load(
            dim,
            inner,
            head_dim,
            parts.qk_norm,
            ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
            &vb,
        )?;
        let context = if parts.context {
            let names = ["add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k"];
            Some(QkvProjection::load(dim, inner, head_dim, parts.qk_norm, names, &vb)?)
        } else {
            None
        };
        let to_out = if parts.out { Some(linear(inner, dim, vb.pp("to_out.0"))?) } else { None };
        let to_add_out = if parts.context && parts.context_out {
            Some(linear(inner, dim, vb.pp("to_add_out"))?)
        } else {
            None
        };
        Ok(Attention { image, context, to_out, to_add_out, heads, scale: 1.0 / (head_dim as f64).sqrt() })
    }

    /// Self-attention over `x` `[B, S, dim]`, rotary embedding applied to queries and keys when
    /// given, then `to_out` if the layer has one.
    pub fn forward(&self, x: &Tensor, rope: Option<&RotaryEmbedding>) -> candle_core::Result<Tensor> {
        let (q, k, v) = self.image.forward(x, self.heads)?;
        let out = self.attend(q, k, v, rope)?;
        match &self.to_out {
            Some(proj) => proj.forward(&out),
            None => Ok(out),
        }
    }

    /// Joint attention of image tokens `x` `[B, N, dim]` and text tokens `context` `[B, T, dim]`.
    /// Returns the image stream's and, when the layer has `to_add_out`, the text stream's output.
    pub fn forward_joint(
        &self,
        x: &Tensor,
        context: &Tensor,
        order: JointOrder,
        rope: Option<&RotaryEmbedding>,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let Some(context_proj) = &self.context else {
            candle_core::bail!("joint attention on a layer without text projections");
        };
        let (q_img, k_img, v_img) = self.image.forward(x, self.heads)?;
        let (q_txt, k_txt, v_txt) = context_proj.forward(context, self.heads)?;
        let cat = |img: Tensor, txt: Tensor| match order {
            JointOrder::TextFirst => Tensor::cat(&[txt, img], 2),
            JointOrder::ImageFirst => Tensor::cat(&[img, txt], 2),
        };
        let out = self.attend(cat(q_img, q_txt)?, cat(k_img, k_txt)?, cat(v_img, v_txt)?, rope)?;

        let (n_img, n_txt) = (x.dim(1)?, context.dim(1)?);
        let (img_out, txt_out) = match order {
            JointOrder::TextFirst => (out.narrow(1, n_txt, n_img)?, out.narrow(1, 0, n_txt)?),
            JointOrder::ImageFirst => (out.narrow(1, 0, n_img)?, out.narrow(1, n_img, n_txt)?),
        };
        let img_out = match &self.to_out {
            Some(proj) => proj.forward(&img_out)?,
            None => img_out,
        };
        let txt_out = match &self.to_add_out {
            Some(proj) => Some(proj.forward(&txt_out)?),
            None => None,
        };
        Ok((img_out, txt_out))
    }

    /// All heads at once; returns `[B, S, H·head_dim]`.
    fn attend(&self, q: Tensor, k: Tensor, v: Tensor, rope: Option<&RotaryEmbedding>) -> candle_core::Result<Tensor> {
        let (q, k) = match rope {
            Some(rope) => (rope.apply(&q)?, rope.apply(&k)?),
            None => (q, k),
        };
        merge_heads(&scaled_dot_product_attention(&q, &k, &v, self.scale, None)?)
    }
}
