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
