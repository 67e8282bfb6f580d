//! Denoising score matching: the network regresses its prediction (the noise by default) of noised clean samples;
//! with labels, class-conditional with label dropout to the null label (classifier-free guidance's unconditional
//! score).

use super::batches::{Noising, noised, seeded_init, uniform_indices, weighted_mse};
use super::{Sets, TrainObjective};
use crate::config::ModelSpec;
use crate::data::Dataset;
use crate::run::{RunContext, TrainOutcome};
use crate::trainer::Progress;
use anyhow::{Result, anyhow, bail};
use burn::prelude::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tilt_core::tensor_ext;
use tilt_models::{NoiseNet, ScoreNet, UNet};

/// Denoising score matching. With labelled data and `conditional = true` the network is class-conditional and
/// learns the unconditional score under the null label with probability `p_uncond`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dsm {
    /// Train a class-conditional network when the data are labelled.
    #[serde(default = "d_true")]
    pub conditional: bool,
    /// Probability of dropping a label to the null label.
    #[serde(default = "d_p_uncond")]
    pub p_uncond: f64,
}

pub(crate) fn d_true() -> bool {
    true
}
pub(crate) fn d_p_uncond() -> f64 {
    0.1
}

impl TrainObjective for Dsm {
    fn train(&self, run: &mut RunContext, sets: &Sets, progress: &mut dyn FnMut(&Progress)) -> Result<TrainOutcome> {
        train_noise_net(run, sets, sets.noising, self.conditional, self.p_uncond, progress)
    }
}

/// The fixed parameters of the loss.
#[derive(Clone, Copy)]
struct Settings {
    batch: usize,
    noising: Noising,
    classes: usize,
    p_uncond: f64,
}

/// One loss for every network and prediction: noised batches, label dropout to the null label with probability
/// `p_uncond`, the mean squared error of the prediction (shared with flow matching).
pub(crate) fn train_noise_net(
    run: &mut RunContext,
    sets: &Sets,
    noising: Noising,
    conditional: bool,
    p_uncond: f64,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainOutcome> {
    let (cfg, b, device) = (run.cfg, run.cfg.batch_size, run.device);
    let ad = device.clone().autodiff();
    let (train_set, test_set) = (sets.train, sets.test);
    let classes = if conditional && train_set.labels.is_some() { train_set.num_classes } else { 0 };
    // One loss for every noise network: label dropout to the null label with probability `p_uncond`.
    fn loss<N: NoiseNet>(m: &N, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device, s: Settings) -> Result<Tensor<1>> {
        let idx = uniform_indices(data.len(), s.batch, rng);
        let batch = noised(data, &idx, s.noising, rng, dev)?;
        let labels = (s.classes > 0).then(|| {
            let l: Vec<usize> = batch
                .labels
                .as_ref()
                .expect("labelled")
                .iter()
                .map(|&c| if rng.random::<f64>() < s.p_uncond { s.classes } else { c })
                .collect();
            tensor_ext::labels(&l, dev)
        });
        Ok(weighted_mse(m.predict_noise(batch.x_t, batch.t, labels), batch.target, None))
    }
    let s = Settings { batch: b, noising, classes, p_uncond };
    match &cfg.model {
        ModelSpec::Mlp(spec) => {
            let net_cfg = spec.score_net(sets.dim, classes);
            let init = seeded_init(&ad, cfg.seed, || net_cfg.init(&ad));
            run.run(init, &net_cfg, train_set, test_set, |m: &ScoreNet, d, r, v| loss(m, d, r, v, s), progress)
        }
        ModelSpec::Unet(spec) => {
            let image = sets.image.ok_or_else(|| anyhow!("model.kind: the U-Net needs image data"))?;
            let net_cfg = spec
                .config(image, classes)
                .with_timesteps(tilt_models::diffusers::TimestepMap::for_schedule(cfg.schedule));
            net_cfg.check().map_err(|e| anyhow!("model.{e}"))?;
            let init = seeded_init(&ad, cfg.seed, || net_cfg.init(&ad));
            run.run(init, &net_cfg, train_set, test_set, |m: &UNet, d, r, v| loss(m, d, r, v, s), progress)
        }
        ModelSpec::Cnn(_) => bail!("model.kind: the CNN is the evaluator's; a score network is an MLP or a U-Net"),
    }
}
