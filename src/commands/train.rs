//! `tilt train`: train a score network, a noise-aware classifier or a reward-weighted score, with a progress
//! bar, checkpoints, `loss.csv` and `loss.png` in the run directory.

use crate::plot::{self, Series};
use anyhow::Result;
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use tilt_train::{Start, TrainConfig, TrainOutcome};

pub fn run(config_path: &Path, out: &Path, start: Start, device: &Device) -> Result<TrainOutcome> {
    let (cfg, text) = TrainConfig::load(config_path)?;
    let bar = ProgressBar::new(cfg.steps as u64).with_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} steps  {msg}  {elapsed_precise} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let outcome = tilt_train::train(&cfg, out, start, device, &mut |p| {
        bar.set_position(p.step as u64);
        bar.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} steps/s", p.loss, p.lr, p.steps_per_sec));
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    // The text read before training, written atomically: safe when --config is the run's own config.toml.
    tilt_train::write_atomic(&out.join("config.toml"), text.as_bytes())?;
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
