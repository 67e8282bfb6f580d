//! `tilt train`: train a score network, a noise-aware classifier or a reward-weighted score, with a progress
//! bar, checkpoints, `loss.csv` and `loss.png` in the run directory.

use crate::plot::{self, Series};
use anyhow::{Context, Result};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use tilt_train::{TrainConfig, TrainOutcome};

pub fn run(config_path: &Path, out: &Path, resume: bool, device: &Device) -> Result<TrainOutcome> {
    let cfg = TrainConfig::load(config_path)?;
    let bar = ProgressBar::new(cfg.steps as u64).with_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} steps  {msg}  {elapsed_precise} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let outcome = tilt_train::train(&cfg, out, resume, device, &mut |p| {
        bar.set_position(p.step as u64);
        bar.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} steps/s", p.loss, p.lr, p.steps_per_sec));
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    std::fs::copy(config_path, out.join("config.toml"))
        .with_context(|| format!("cannot copy the config into {}", out.display()))?;
    loss_plot(&out.join("loss.png"), &outcome)?;
    Ok(outcome)
}

pub fn loss_plot(path: &Path, outcome: &TrainOutcome) -> Result<()> {
    let pts: Vec<(f64, f64)> = outcome.history.iter().map(|p| (p.step as f64, p.loss)).collect();
    let mut refs = Vec::new();
    if let Some(t) = outcome.test_loss {
        refs.push(("test loss (EMA model)".to_string(), t));
    }
    plot::curves(path, "Training loss", "step", "loss", &[Series { name: "train loss".into(), points: pts }], &refs)
}

/// `tilt export`: the EMA weights of a checkpoint as SafeTensors.
pub fn export(checkpoint: &Path, out: &Path, device: &Device) -> Result<()> {
    use burn::store::{ModuleSnapshot, SafetensorsStore};
    let dir = tilt_train::checkpoint::resolve(checkpoint)?;
    let manifest: tilt_train::checkpoint::Manifest = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json"))
            .with_context(|| format!("cannot read {}", dir.join("manifest.json").display()))?,
    )?;
    let mut store = SafetensorsStore::from_file(out)
        .overwrite(true)
        .metadata("tilt_model_kind", manifest.model_kind.clone())
        .metadata("step", manifest.step.to_string());
    let err = |e: burn::store::SafetensorsStoreError| anyhow::anyhow!("cannot write {}: {e}", out.display());
    match manifest.model_kind.as_str() {
        "classifier" => {
            tilt_train::load_classifier(checkpoint, device)?.classifier.net.save_into(&mut store).map_err(err)?
        }
        kind => tilt_train::load_score(checkpoint, kind, device)?.score.net.save_into(&mut store).map_err(err)?,
    }
    Ok(())
}
