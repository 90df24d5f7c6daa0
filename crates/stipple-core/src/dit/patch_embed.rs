//! SD3's patch embedding (diffusers `PatchEmbed` with `pos_embed_max_size`): a `p`x`p`, stride-`p`
//! convolution (a matmul on patchified input) plus a fixed 2-D sin-cos position table covering a
//! `max`x`max` patch grid, centre-cropped to the image's grid.

use candle_core::{Module, Tensor};
use crate::layers::{Linear, LinearWeight, ModelWeights};

use super::patches::patchify;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct PatchEmbed {
    proj: Linear,
    /// `[max·max, dim]`.
    pos_embed: Tensor,
    max_grid: usize,
    patch: usize,
}

impl PatchEmbed {
    /// `vb` is `pos_embed`: `proj.weight` `[dim, C, p, p]`, `proj.bias`, and the table
    /// `pos_embed` `[1, max², dim]` (computed when the file lacks it). `base_size` is
    /// `sample_size / patch_size`, the grid the table's coordinates are scaled to.
    pub fn load(
        in_channels: usize,
        dim: usize,
        patch: usize,
        max_grid: usize,
        base_size: usize,
        vb: ModelWeights,
    ) -> Result<PatchEmbed> {
        let weight = vb.get((dim, in_channels, patch, patch), "proj.weight")?;
        // The convolution's kernel as a matrix over channel-major patches (a view, not a copy).
        let proj = Linear::new(
            LinearWeight::Dense(weight.reshape((dim, in_channels * patch * patch))?),
            Some(vb.get(dim, "proj.bias")?),
        );
        let pos_embed = if vb.contains_tensor("pos_embed") {
            vb.get((1, max_grid * max_grid, dim), "pos_embed")?.reshape((max_grid * max_grid, dim))?
        } else {
            let table = sincos_2d_table(dim, max_grid, base_size)?;
            Tensor::from_vec(table, (max_grid * max_grid, dim), vb.device())?.to_dtype(vb.dtype())?
        };
        Ok(PatchEmbed { proj, pos_embed, max_grid, patch })
    }

    /// `[B, C, H, W]` → `[B, (H/p)·(W/p), dim]`, position table added.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, height, width) = x.dims4()?;
        let tokens = self.proj.forward(&patchify(x, self.patch)?)?;
        let pos = self.cropped_table(height / self.patch, width / self.patch)?;
        Ok(tokens.broadcast_add(&pos.to_dtype(tokens.dtype())?)?)
    }

    /// The centre `rows`x`cols` of the table: top = `(max - rows) / 2`, left = `(max - cols) / 2`.
    fn cropped_table(&self, rows: usize, cols: usize) -> Result<Tensor> {
        let max = self.max_grid;
        if rows > max || cols > max {
            return Err(Error::param(
                "size",
                format!(
                    "the image is {rows}x{cols} patches, but this model's position table covers at most {max}x{max} \
                     ({} latent pixels a side)",
                    max * self.patch
                ),
            ));
        }
        let dim = self.pos_embed.dim(1)?;
        let grid = self.pos_embed.reshape((max, max, dim))?;
        Ok(grid.narrow(0, (max - rows) / 2, rows)?.narrow(1, (max - cols) / 2, cols)?.reshape((rows * cols, dim))?)
    }
}

/// diffusers' `get_2d_sincos_pos_embed(dim, grid, base_size)`: `[grid², dim]` row-major over the
/// grid; the first half of each row encodes the column coordinate, the second half the row
/// coordinate, each as `[sin(c·ω_k)…, cos(c·ω_k)…]` with `ω_k = 10000^(-k/(dim/4))`. Coordinates
/// are `i / (grid / base_size)` in f32; the trigonometry is f64, rounded once.
pub fn sincos_2d_table(dim: usize, grid: usize, base_size: usize) -> Result<Vec<f32>> {
    if dim % 4 != 0 || base_size == 0 {
        return Err(Error::Unsupported(format!(
            "a 2-D sin-cos position table needs a width divisible by 4 (got {dim}) and a positive base size"
        )));
    }
    let quarter = dim / 4;
    let stretch = (grid as f64 / base_size as f64) as f32;
    let coords: Vec<f64> = (0..grid).map(|i| f64::from(i as f32 / stretch)).collect();
    let omegas: Vec<f64> = (0..quarter).map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64)).collect();
    let encode = |out: &mut Vec<f32>, position: f64| {
        out.extend(omegas.iter().map(|w| (position * w).sin() as f32));
        out.extend(omegas.iter().map(|w| (position * w).cos() as f32));
    };
    let mut table = Vec::with_capacity(grid * grid * dim);
    for row in 0..grid {
        for col in 0..grid {
            encode(&mut table, coords[col]);
            encode(&mut table, coords[row]);
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::path::Path;

    fn sd3_tiny_weights() -> std::collections::HashMap<String, Tensor> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/vectors/models/sd3_tiny/diffusion_pytorch_model.safetensors");
        candle_core::safetensors::load(path, &Device::Cpu).unwrap()
    }

    #[test]
    fn computed_table_matches_the_one_diffusers_saved() {
        // sd3_tiny: dim 32, pos_embed_max_size 96, sample_size 32 / patch 2 = base 16.
        let saved = sd3_tiny_weights()["pos_embed.pos_embed"].squeeze(0).unwrap();
        let computed = Tensor::from_vec(sincos_2d_table(32, 96, 16).unwrap(), (96 * 96, 32), &Device::Cpu).unwrap();
        let diff = (saved - computed).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-6, "{diff}");
    }

    #[test]
    fn crop_is_centred_and_oversize_images_are_refused() {
        let mut w = sd3_tiny_weights();
        w.retain(|k, _| k.starts_with("pos_embed."));
        let w: std::collections::HashMap<String, Tensor> =
            w.into_iter().map(|(k, v)| (k.trim_start_matches("pos_embed.").to_string(), v)).collect();
        let embed = PatchEmbed::load(4, 32, 2, 96, 16, candle_nn::VarBuilder::from_tensors(w, DType::F32, &Device::Cpu).into()).unwrap();
        // A 2x4 grid: rows 47..49, columns 46..50 of the 96x96 table.
        let crop = embed.cropped_table(2, 4).unwrap().to_vec2::<f32>().unwrap();
        let table = embed.pos_embed.to_vec2::<f32>().unwrap();
        assert_eq!(crop[0], table[47 * 96 + 46]);
        assert_eq!(crop[7], table[48 * 96 + 49]);
        let err = embed.cropped_table(97, 2).unwrap_err();
        assert!(err.to_string().contains("96x96"), "{err}");
    }
}
