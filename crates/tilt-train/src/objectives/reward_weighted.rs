//! The papers' trajectory-free reward-guided trainer (docs/theory.md §4): reward-weighted denoising score matching on
//! clean samples, in three forms, for every prediction and schedule.

use super::batches::{
    RewardScale, log_rewards, noised, seeded_init, uniform_indices, weighted_mse, weights_relative_to,
};
use super::{Sets, TrainObjective};
use crate::checkpoint::{Checkpoint, FileKind, ModelKind};
use crate::config::ModelSpec;
use crate::data::Dataset;
use crate::load::load_score;
use crate::run::{RunContext, TrainOutcome};
use crate::trainer::Progress;
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tilt_core::RewardSpec;
use tilt_models::{ScoreNet, ScoreNetConfig};

/// The three forms of reward-weighted score matching (docs/theory.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardForm {
    /// A new score network for `p_r`, per-sample weights `r(x0) / mean(r)`, the mean taken over the whole
    /// training set once (a per-batch mean fits a different law, biased by O(1/B): docs/theory.md §4).
    Full,
    /// Frozen base + small `delta_theta`; the guidance term is `delta` itself.
    Residual,
    /// Resample `x0 ∝ r(x0)` and run plain DSM (the same objective as `full` in expectation).
    Resample,
}

/// The papers' trajectory-free reward-guided trainer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardWeighted {
    /// Which form.
    pub form: RewardForm,
    /// The reward `r`.
    pub reward: RewardSpec,
    /// A trained unconditional score checkpoint: required by `residual` (the frozen base), optional
    /// initialisation for `full` and `resample`.
    pub base: Option<PathBuf>,
    /// Size of `delta_theta` (residual form).
    #[serde(default = "d_residual_model")]
    pub residual_model: ModelSpec,
}

fn d_residual_model() -> ModelSpec {
    ModelSpec::mlp(64, 2)
}

impl TrainObjective for RewardWeighted {
    fn train(&self, run: &mut RunContext, sets: &Sets, progress: &mut dyn FnMut(&Progress)) -> Result<TrainOutcome> {
        let RewardWeighted { form, reward, base, residual_model } = self;
        let resume = run.resume;
        let noising = sets.noising;
        let (cfg, b, device) = (run.cfg, run.cfg.batch_size, run.device);
        let ad = device.clone().autodiff();
        let (train_set, test_set) = (sets.train, sets.test);
        let spec = reward;
        reward.validate(sets.dim).map_err(|e| anyhow!("objective.reward.{e}"))?;
        let reward = reward.build();
        let base = match base {
            Some(p) => {
                let loaded = load_score(p, ModelKind::ScoreNet, device)
                    .with_context(|| format!("objective.base = {}", p.display()))?;
                if loaded.state.dim != sets.dim {
                    bail!(
                        "objective.base: {} was trained on {}-dimensional data, these data are {}-dimensional",
                        p.display(),
                        loaded.state.dim,
                        sets.dim
                    );
                }
                // The trainer reweights the base's own law: a base of another law would be tilted toward
                // something else entirely. Generated data are the same law when their specs agree (the draws
                // differ with data_size and seed, so their hashes are not compared); files are the user's call.
                let generated = |d: &crate::DataSpec| {
                    use crate::DataSpec::{Csv, Idx, ImageFolder, Latent};
                    !matches!(d, Csv { .. } | Idx { .. } | ImageFolder { .. } | Latent { .. })
                };
                let theirs = &loaded.state.config.data;
                if generated(theirs) && generated(&cfg.data) && *theirs != cfg.data {
                    bail!(
                        "objective.base: {} was trained on other data ({}), not this config's [data] ({}); train \
                         the reward-weighted score on the law of its base",
                        p.display(),
                        serde_json::to_string(theirs)?,
                        serde_json::to_string(&cfg.data)?
                    );
                }
                let base_cfg = &loaded.state.config;
                if base_cfg.schedule != cfg.schedule {
                    bail!(
                        "objective.base: {} was trained on schedule {} ({:?}), this run on {} ({:?}); the \
                         reweighted network starts from or adds to the base's output, so both need one schedule",
                        p.display(),
                        base_cfg.schedule.name(),
                        base_cfg.schedule,
                        cfg.schedule.name(),
                        cfg.schedule
                    );
                }
                if base_cfg.prediction() != cfg.prediction() {
                    bail!(
                        "model.prediction: objective.base {} outputs \"{}\", this run \"{}\"; give model.prediction = \
                         \"{}\" (the reweighted network starts from or adds to the base's output)",
                        p.display(),
                        base_cfg.prediction().name(),
                        cfg.prediction().name(),
                        base_cfg.prediction().name()
                    );
                }
                run.base_sha256 = loaded.ema_sha256.clone();
                if loaded.standardizer != run.standardizer {
                    bail!(
                        "objective.base: {} was trained on differently standardised data (data or `standardize` differ)",
                        p.display()
                    );
                }
                Some(loaded)
            }
            None => None,
        };
        let scale = RewardScale {
            train: RewardScale::of(train_set, reward.as_ref(), &run.standardizer, device),
            test: RewardScale::of(test_set, reward.as_ref(), &run.standardizer, device),
        };
        // A reward that overflows f32 on the data would surface as "training diverged" a step later.
        if !scale.train.is_finite() || (!test_set.is_empty() && !scale.test.is_finite()) {
            let field = match spec {
                tilt_core::RewardSpec::ExpLinear { .. } => "objective.reward.a",
                tilt_core::RewardSpec::Bump { .. } => "objective.reward.height",
            };
            bail!(
                "{field}: log E[r] over the training data is {}: the reward overflows f32 on these data; scale it down",
                scale.train
            );
        }
        let weights_of = |x0: &[f32], set: &Dataset, dev: &Device| {
            weights_relative_to(
                &log_rewards(reward.as_ref(), x0, sets.dim, &run.standardizer, dev),
                scale.for_set(set, train_set),
            )
        };
        match form {
            RewardForm::Full | RewardForm::Resample => {
                // With a base, start from its weights and architecture (a class-conditional base is then
                // trained and used under its null label, i.e. unconditionally).
                let (net_cfg, model) = match &base {
                    Some(base) => {
                        let net_cfg: ScoreNetConfig = serde_json::from_value(base.state.net.clone())?;
                        let init = seeded_init(&ad, cfg.seed, || net_cfg.init(&ad));
                        let model = if resume {
                            init
                        } else {
                            Checkpoint::open(&base.path, ModelKind::ScoreNet)?.load_model(FileKind::EmaModel, init)?
                        };
                        (net_cfg, model)
                    }
                    None => {
                        let net_cfg = cfg.mlp().score_net(sets.dim, 0);
                        let model = seeded_init(&ad, cfg.seed, || net_cfg.init(&ad));
                        (net_cfg, model)
                    }
                };
                if *form == RewardForm::Full {
                    let loss = |m: &ScoreNet, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
                        let idx = uniform_indices(data.len(), b, rng);
                        let batch = noised(data, &idx, noising, rng, dev)?;
                        let w = weights_of(&batch.x0, data, dev);
                        Ok(weighted_mse(m.forward(batch.x_t, batch.t, None), batch.target, Some(&w)))
                    };
                    run.run(model, &net_cfg, train_set, test_set, loss, progress)
                } else {
                    // Categorical over the training rows with probabilities ∝ r(x0), drawn by inverse CDF.
                    let cdf = |data: &Dataset| {
                        let log_r = log_rewards(reward.as_ref(), &data.x, sets.dim, &run.standardizer, device);
                        let w = weights_relative_to(&log_r, scale.for_set(data, train_set));
                        let mut acc = 0.0f64;
                        w.iter()
                            .map(|v| {
                                acc += *v as f64;
                                acc
                            })
                            .collect::<Vec<f64>>()
                    };
                    let (train_cdf, test_cdf) = (cdf(train_set), cdf(test_set));
                    let loss = |m: &ScoreNet, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
                        let c = if std::ptr::eq(data, train_set) { &train_cdf } else { &test_cdf };
                        let total = *c.last().expect("non-empty data");
                        let idx: Vec<usize> = (0..b)
                            .map(|_| {
                                let u = rng.random::<f64>() * total;
                                c.partition_point(|&v| v < u).min(c.len() - 1)
                            })
                            .collect();
                        let batch = noised(data, &idx, noising, rng, dev)?;
                        Ok(weighted_mse(m.forward(batch.x_t, batch.t, None), batch.target, None))
                    };
                    run.run(model, &net_cfg, train_set, test_set, loss, progress)
                }
            }
            RewardForm::Residual => {
                let base = base.expect("validated: residual needs a base");
                let base_net = base.score.net.clone();
                let ModelSpec::Mlp(residual_model) = residual_model else {
                    bail!("objective.residual_model.kind: the residual delta_theta is an MLP (kind = \"mlp\")")
                };
                let net_cfg = residual_model.score_net(sets.dim, 0).with_zero_init_output(true);
                let loss = |m: &ScoreNet, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
                    let idx = uniform_indices(data.len(), b, rng);
                    let batch = noised(data, &idx, noising, rng, dev)?;
                    let w = weights_of(&batch.x0, data, dev);
                    // The frozen base runs on the plain device: a constant for autodiff. Its output and the
                    // residual's are both the run's prediction, so they add.
                    let base_out = base_net.forward(batch.x_t.clone().inner(), batch.t.clone().inner(), None);
                    let out = m.forward(batch.x_t, batch.t, None) + base_out;
                    Ok(weighted_mse(out, batch.target, Some(&w)))
                };
                run.run(seeded_init(&ad, cfg.seed, || net_cfg.init(&ad)), &net_cfg, train_set, test_set, loss, progress)
            }
        }
    }
}
