//! The independent evaluator of generated images: a CNN classifier trained by cross-entropy on clean images only.
//! Never used for guidance.

use super::batches::{clean_batch, seeded_init, uniform_indices};
use super::{Sets, TrainObjective};
use crate::data::Dataset;
use crate::run::{RunContext, TrainOutcome};
use crate::trainer::Progress;
use anyhow::{Result, anyhow, bail};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tilt_core::tensor_ext;
use tilt_models::EvaluatorConfig;

/// The evaluator (`[model] kind = "cnn"`, `channels` sets its width).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluator {}

impl TrainObjective for Evaluator {
    fn train(&self, run: &mut RunContext, sets: &Sets, progress: &mut dyn FnMut(&Progress)) -> Result<TrainOutcome> {
        let (cfg, b, device) = (run.cfg, run.cfg.batch_size, run.device);
        let ad = device.clone().autodiff();
        let (train_set, test_set) = (sets.train, sets.test);
        let image = sets.image.ok_or_else(|| anyhow!("objective.kind: the evaluator needs image data"))?;
        if train_set.num_classes < 2 {
            bail!("data: the evaluator needs labelled images with at least 2 classes");
        }
        let net_cfg = EvaluatorConfig::new(image, train_set.num_classes).with_channels(cfg.cnn().channels);
        let loss = move |m: &tilt_models::Evaluator, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
            let idx = uniform_indices(data.len(), b, rng);
            let (x, labels) = clean_batch(data, &idx, rng, dev)?;
            let labels = tensor_ext::labels(&labels.expect("labelled"), dev);
            Ok(log_softmax(m.forward(x), 1).gather(1, labels.reshape([b, 1])).mean().neg())
        };
        run.run(seeded_init(&ad, cfg.seed, || net_cfg.init(&ad)), &net_cfg, train_set, test_set, loss, progress)
    }
}
