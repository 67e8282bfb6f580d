//! A noise-aware classifier `p_t(c | x)` trained by cross-entropy on noised inputs (classifier guidance).

use super::batches::{Noising, noised, seeded_init, uniform_indices};
use super::{Sets, TrainObjective};
use crate::data::Dataset;
use crate::run::{RunContext, TrainOutcome};
use crate::trainer::Progress;
use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tilt_core::tensor_ext;
use tilt_models::{NoisyClassifier, NoisyClassifierConfig};

/// A noise-aware classifier; its inputs are noised as the run's score networks' are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classifier {}

impl TrainObjective for Classifier {
    fn train(&self, run: &mut RunContext, sets: &Sets, progress: &mut dyn FnMut(&Progress)) -> Result<TrainOutcome> {
        let (cfg, b, device) = (run.cfg, run.cfg.batch_size, run.device);
        let ad = device.clone().autodiff();
        let (train_set, test_set) = (sets.train, sets.test);
        // What the classifier outputs is a class, not a prediction.
        let classifier_noising = Noising { prediction: tilt_core::Prediction::Epsilon, ..sets.noising };
        if train_set.labels.is_none() || train_set.num_classes < 2 {
            bail!("data: the classifier objective needs labelled data with at least 2 classes");
        }
        let m = cfg.mlp();
        let net_cfg = NoisyClassifierConfig::new(sets.dim, train_set.num_classes)
            .with_hidden(m.hidden)
            .with_layers(m.blocks)
            .with_time_dim(m.time_dim)
            .with_activation(m.activation);
        let loss = move |m: &NoisyClassifier, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
            let idx = uniform_indices(data.len(), b, rng);
            let batch = noised(data, &idx, classifier_noising, rng, dev)?;
            let labels = tensor_ext::labels(batch.labels.as_ref().expect("labelled"), dev);
            Ok(log_softmax(m.forward(batch.x_t, batch.t), 1).gather(1, labels.reshape([b, 1])).mean().neg())
        };
        run.run(seeded_init(&ad, cfg.seed, || net_cfg.init(&ad)), &net_cfg, train_set, test_set, loss, progress)
    }
}
