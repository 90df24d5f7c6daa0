//! The default model's commands from the command line: an untrained model folder points at the
//! command that trains it; a bad training config is named.

mod common;

use common::{repo, stipple};

#[test]
fn an_untrained_model_folder_names_the_training_command() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("models/stipple-default/train.json"), dir.path().join("train.json")).unwrap();
    let model = dir.path().to_str().unwrap();
    for args in [vec!["generate", "a red circle", "--model", model], vec!["eval", "--model", model, "--count", "1"]] {
        let out = stipple(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("stipple train --config") && err.contains("train.json"), "{err}");
    }
}

#[test]
fn a_broken_training_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.json");
    std::fs::write(&path, "{\"seed\": 1}").unwrap();
    let out = stipple(&["train", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("train.json") && err.contains("missing field"), "{err}");
}

// The shipped model (models/stipple-default), end to end through the binary.

fn shipped() -> std::path::PathBuf {
    repo().join("models/stipple-default")
}

#[test]
fn generate_without_a_model_draws_the_prompt_with_the_shipped_model() {
    use stipple_core::image_io::RgbImage;
    use stipple_train::caption::named_attributes;
    use stipple_train::checker::read;

    let dir = tempfile::tempdir().unwrap();
    // Issue 4's prompt, then the README's, with the attributes asserted (checker order:
    // background, colour, shape, size, position). Shape is the model's weak attribute on small
    // objects: its small triangles have rounded corners the checker reads as circles (2 of 16
    // seeds read as triangles; the card has the numbers). The large circle's shape is asserted.
    let prompts: [(&str, &[usize]); 2] = [
        ("a small green triangle at the bottom on a black background", &[0, 1, 3, 4]),
        ("a large red circle in the top left on a blue background", &[0, 1, 2, 3, 4]),
    ];
    for (i, (prompt, asserted)) in prompts.into_iter().enumerate() {
        let mut images = Vec::new();
        for name in ["a.png", "b.png"] {
            let out_path = dir.path().join(format!("{i}{name}"));
            let out = stipple(&["generate", prompt, "--seed", "7", "-o", out_path.to_str().unwrap()]);
            assert!(out.status.success(), "{}", common::text(&out));
            images.push(std::fs::read(&out_path).unwrap());
        }
        assert_eq!(images[0], images[1], "same seed, same image");
        let image = RgbImage::load(&dir.path().join(format!("{i}a.png"))).unwrap();
        assert_eq!((image.width, image.height), (128, 128));
        let reading = read(&image);
        let judged = named_attributes(prompt).judge(&reading);
        for &a in asserted {
            assert_eq!(judged[a], Some(true), "{prompt}: attribute {a}; the checker reads {reading:?}");
        }
    }
}

#[test]
fn the_shipped_model_keeps_its_measured_attribute_accuracy() {
    // `stipple eval` at the model's defaults on its 100 prompts naming all five attributes. The
    // shipped weights score 94.8% here (models/stipple-default/README.md); issue 4's target is
    // 90%. A regression below it, or below 95/100 in any attribute but shape (70–77% by the
    // guidance scale, the autoencoder's limit 82.5%; floor 60), fails.
    let out = stipple(&["eval", "--json"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"], 100);
    assert_eq!(report["sampler"], "ddim");
    assert_eq!(report["steps"], 20);
    assert_eq!(report["cfg_scale"], 5.0);
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.90, "attribute accuracy {accuracy} fell below issue 4's target: {report}");
    for (attribute, floor) in [("background", 95), ("colour", 95), ("shape", 60), ("size", 95), ("position", 95)] {
        let correct = report["per_attribute"][attribute][0].as_u64().unwrap();
        assert!(correct >= floor, "{attribute}: {correct}/100 — {report}");
    }
}

#[test]
fn the_report_writes_every_part() {
    let dir = tempfile::tempdir().unwrap();
    let out = stipple(&["eval", "--report", dir.path().to_str().unwrap(), "--quick", "--model", shipped().to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::text(&out));
    let md = std::fs::read_to_string(dir.path().join("seed-claims.md")).unwrap();
    for claim in ["| 1 |", "| 2 |", "| 3 |", "| 4 |"] {
        assert!(md.contains(claim), "{claim} missing from\n{md}");
    }
    let images: Vec<String> = md
        .match_indices("](seed-claims/")
        .map(|(i, _)| md[i + 2..].split(')').next().unwrap().to_string())
        .filter(|link| link.ends_with(".png"))
        .collect();
    assert!(images.len() >= 8, "{images:?}");
    assert!(md.contains("## The model's training run") && images.contains(&"seed-claims/training_loss.png".to_string()), "{md}");
    for image in &images {
        let (w, h, _, _) = common::read_png(&dir.path().join(image));
        assert!(w > 100 && h > 100, "{image}: {w}x{h}");
    }
    let data: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("seed-claims/data.json")).unwrap()).unwrap();
    assert!(data["points"].as_array().unwrap().len() >= 4);
    assert!(data["twins"][0]["median_step_seconds"].as_f64().unwrap() > 0.0);
}
