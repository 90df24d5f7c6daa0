//! Reconstruct generated images through a model folder's autoencoder and read them back with
//! the checker: how much of each attribute survives the round trip.
use candle_core::{DType, Device};
use stipple_core::image_io::RgbImage;
use stipple_core::model::Autoencoder;
use stipple_core::vae::stipple_vae::{StippleAutoencoder, StippleVaeConfig};
use stipple_train::caption::CaptionStyle;
use stipple_train::checker::{read, Attributes};
use stipple_train::dataset::batch;

fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or("models/stipple-default".into()));
    let n: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let weights = stipple_core::checkpoint::open_component(&dir.join("vae"))?;
    let config: StippleVaeConfig = serde_json::from_value(weights.config.clone())?;
    let vae = StippleAutoencoder::new(&config, weights.var_builder(DType::F32, &Device::Cpu))?;
    let (mut ok, mut asked, mut l1, mut count) = (0, 0, 0f64, 0);
    let mut per = [(0usize, 0usize); 5];
    let mut bad = 0;
    let mut start = 0u64;
    while (start as usize) < n {
        let (images, _) = batch(999, start, 16, CaptionStyle::FULL)?;
        let (mean, logvar) = vae.encode_moments(&images)?;
        if start == 0 {
            let std = (&logvar * 0.5)?.exp()?.mean_all()?.to_scalar::<f32>()?;
            let spread = mean.flatten_all()?.to_vec1::<f32>()?;
            let m = spread.iter().sum::<f32>() / spread.len() as f32;
            let sd = (spread.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / spread.len() as f32).sqrt();
            println!("posterior std {std:.4}, latent mean spread {sd:.4}");
        }
        let rec = vae.decode_raw(&mean)?;
        l1 += (&rec - &images)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
        count += 1;
        for i in 0..16 {
            let s = stipple_train::dataset::sample(999, start + i as u64, CaptionStyle::FULL);
            let img = RgbImage::from_decoded(&rec.get(i)?)?;
            let j = Attributes::from(&s.scene).judge(&read(&img));
            for (k, v) in j.iter().enumerate() {
                if let Some(v) = v { per[k].0 += *v as usize; per[k].1 += 1; ok += *v as usize; asked += 1; }
            }
            if j.iter().any(|v| *v == Some(false)) && bad < 6 {
                img.save_png(std::path::Path::new(&format!("/tmp/ae_bad_{bad}.png")), &[])?;
                println!("bad {bad}: {} -> {:?}", s.scene, read(&img));
                bad += 1;
            }
            if start == 0 && i < 4 {
                img.save_png(std::path::Path::new(&format!("/tmp/ae_rec_{i}.png")), &[])?;
                s.image.save_png(std::path::Path::new(&format!("/tmp/ae_src_{i}.png")), &[])?;
            }
        }
        start += 16;
    }
    println!("per attribute (bg, colour, shape, size, cell): {per:?}");
    println!("mean L1 {:.4}, checker on reconstructions {:.1}% ({ok}/{asked})", l1 / count as f64, 100.0 * ok as f64 / asked as f64);
    Ok(())
}
