//! An autoencoder to a low-dimensional code, trained by reconstruction error on clean rows (latent diffusion).

use super::batches::{clean_batch, seeded_init, uniform_indices};
use super::{Sets, TrainObjective};
use crate::data::Dataset;
use crate::run::{RunContext, TrainOutcome};
use crate::trainer::Progress;
use anyhow::Result;
use burn::prelude::*;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tilt_models::AutoencoderConfig;

/// An autoencoder to a `latent`-dimensional code (`model.hidden` wide); the test loss is the held-out mean squared
/// error per value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoencoder {
    /// Width of the code.
    #[serde(default = "d_latent")]
    pub latent: usize,
}

fn d_latent() -> usize {
    16
}

impl TrainObjective for Autoencoder {
    fn train(&self, run: &mut RunContext, sets: &Sets, progress: &mut dyn FnMut(&Progress)) -> Result<TrainOutcome> {
        let latent = &self.latent;
        let (cfg, b, device) = (run.cfg, run.cfg.batch_size, run.device);
        let ad = device.clone().autodiff();
        let (train_set, test_set) = (sets.train, sets.test);
        let net_cfg = AutoencoderConfig::new(sets.dim).with_latent(*latent).with_hidden(cfg.mlp().hidden);
        let loss = move |m: &tilt_models::Autoencoder, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
            let idx = uniform_indices(data.len(), b, rng);
            let (x, _) = clean_batch(data, &idx, rng, dev)?;
            Ok((m.forward(x.clone()) - x).square().mean())
        };
        run.run(seeded_init(&ad, cfg.seed, || net_cfg.init(&ad)), &net_cfg, train_set, test_set, loss, progress)
    }
}
