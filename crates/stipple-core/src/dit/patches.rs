//! Latent images ↔ token sequences. FLUX packs 2x2 patches (`FluxPipeline._pack_latents`), SD3
//! cuts `p`x`p` patches before its patch projection; both flatten a patch channel-major, but they
//! unflatten their outputs differently (FLUX channel-major, SD3 channel-minor).

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// How the channels of one output token are laid out over its patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLayout {
    /// `(channel, row-in-patch, col-in-patch)`: FLUX's `_unpack_latents`.
    ChannelMajor,
    /// `(row-in-patch, col-in-patch, channel)`: SD3's unpatchify.
    ChannelMinor,
}

/// `[B, C, H, W]` → `[B, (H/p)·(W/p), C·p·p]`, tokens row-major over the patch grid, each token
/// channel-major.
pub fn patchify(x: &Tensor, patch: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if patch == 0 || h % patch != 0 || w % patch != 0 {
        return Err(Error::param(
            "size",
            format!("the latent image is {h}x{w}, which is not a whole number of {patch}x{patch} patches"),
        ));
    }
    let (rows, cols) = (h / patch, w / patch);
    Ok(x.reshape((b, c, rows, patch, cols, patch))?.permute((0, 2, 4, 1, 3, 5))?.reshape((
        b,
        rows * cols,
        c * patch * patch,
    ))?)
}

/// The inverse of [`patchify`] for tokens `[B, rows·cols, C·p·p]` in `layout`: `[B, C, rows·p, cols·p]`.
pub fn unpatchify(tokens: &Tensor, rows: usize, cols: usize, patch: usize, layout: TokenLayout) -> Result<Tensor> {
    let (b, n, width) = tokens.dims3()?;
    if n != rows * cols || patch == 0 || width % (patch * patch) != 0 {
        return Err(Error::Unsupported(format!(
            "cannot unpatchify {n} tokens of width {width} onto a {rows}x{cols} grid of {patch}x{patch} patches"
        )));
    }
    let c = width / (patch * patch);
    let image = match layout {
        TokenLayout::ChannelMajor => tokens.reshape((b, rows, cols, c, patch, patch))?.permute((0, 3, 1, 4, 2, 5))?,
        TokenLayout::ChannelMinor => tokens.reshape((b, rows, cols, patch, patch, c))?.permute((0, 5, 1, 3, 2, 4))?,
    };
    Ok(image.reshape((b, c, rows * patch, cols * patch))?)
}

/// FLUX's image-token ids `[rows·cols, 3]` f32: `(0, row, col)` row-major
/// (`FluxPipeline._prepare_latent_image_ids`).
pub fn image_ids(rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
    let ids: Vec<f32> = (0..rows).flat_map(|r| (0..cols).flat_map(move |c| [0.0, r as f32, c as f32])).collect();
    Ok(Tensor::from_vec(ids, (rows * cols, 3), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: (usize, usize, usize, usize)) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap().reshape(shape).unwrap()
    }

    #[test]
    fn patchify_orders_tokens_row_major_and_channels_first() {
        // [1, 2, 4, 4]: channel 0 holds 0..16, channel 1 holds 16..32.
        let tokens = patchify(&ramp((1, 2, 4, 4)), 2).unwrap();
        assert_eq!(tokens.dims(), &[1, 4, 8]);
        let t = tokens.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        // Token 1 is the top-right patch: rows 0-1, columns 2-3 of channel 0, then of channel 1.
        assert_eq!(t[1], vec![2.0, 3.0, 6.0, 7.0, 18.0, 19.0, 22.0, 23.0]);
        assert_eq!(t[2][..4], [8.0, 9.0, 12.0, 13.0]);
    }

    #[test]
    fn channel_major_unpatchify_inverts_patchify() {
        let x = ramp((2, 3, 6, 4));
        let back = unpatchify(&patchify(&x, 2).unwrap(), 3, 2, 2, TokenLayout::ChannelMajor).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn channel_minor_unpatchify_reads_channels_last() {
        // One token of a 2x2 patch with 2 channels laid out (p, q, c).
        let token = Tensor::new(&[[[0f32, 10.0, 1.0, 11.0, 2.0, 12.0, 3.0, 13.0]]], &Device::Cpu).unwrap();
        let img = unpatchify(&token, 1, 1, 2, TokenLayout::ChannelMinor).unwrap();
        let v = img.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, vec![0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]);
    }

    #[test]
    fn odd_sizes_and_bad_grids_are_refused() {
        let err = patchify(&ramp((1, 1, 5, 4)), 2).unwrap_err();
        assert!(err.to_string().contains("5x4"), "{err}");
        assert!(unpatchify(
            &Tensor::zeros((1, 5, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
            2,
            2,
            2,
            TokenLayout::ChannelMajor
        )
        .is_err());
    }

    #[test]
    fn image_ids_are_zero_row_col() {
        let ids = image_ids(2, 3, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(ids.len(), 6);
        assert_eq!(ids[0], vec![0.0, 0.0, 0.0]);
        assert_eq!(ids[4], vec![0.0, 1.0, 1.0]);
        assert_eq!(ids[5], vec![0.0, 1.0, 2.0]);
    }
}
