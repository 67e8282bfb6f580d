//! Trained networks behind the sampler's interfaces.

use crate::classifier::NoisyClassifier;
use crate::noise_net::NoiseNet;
use crate::score_net::ScoreNet;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use tilt_core::score::param;
use tilt_core::{Classifier, Condition, Schedule, ScoreModel, tensor_ext};

/// A noise-prediction network as a score model: `s = -eps / sigma(t)`.
#[derive(Clone, Debug)]
pub struct NetScore<N: NoiseNet = ScoreNet> {
    pub net: N,
    pub schedule: Schedule,
    /// The shape of one sample (the network sees it flattened).
    pub shape: Vec<usize>,
}

impl<N: NoiseNet> NetScore<N> {
    pub fn new(net: N, schedule: Schedule, shape: Vec<usize>) -> Self {
        Self { net, schedule, shape }
    }

    /// `None` (unconditional: a conditional network uses its null label) or the labels of a conditional network.
    ///
    /// Panics when labels reach an unconditional network: its answer would not depend on them, and CFG would be
    /// silently zero. `tilt sample` refuses such configs first, naming `models.base`.
    fn labels_for(&self, condition: &Condition) -> Option<Tensor<1, Int>> {
        match (condition, self.net.null_label()) {
            (Condition::Labels(l), Some(_)) => Some(l.clone()),
            (Condition::Labels(_), None) => panic!("class labels given to an unconditional score network"),
            (Condition::Unconditional, _) => None,
        }
    }

    fn noise(&self, x: Tensor<2>, t: f64, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        self.net.predict_noise_at(x, t, labels)
    }
}

impl<N: NoiseNet> ScoreModel for NetScore<N> {
    fn score(&self, x: Tensor<2>, t: f64, condition: &Condition) -> Tensor<2> {
        let labels = self.labels_for(condition);
        param::score_from_noise(self.noise(x, t, labels), self.schedule.sigma(t))
    }

    /// ONE forward pass over `[x; x]` with labels `[c; null]`.
    fn score_and_unconditional(&self, x: Tensor<2>, t: f64, condition: &Condition) -> (Tensor<2>, Tensor<2>) {
        let Condition::Labels(l) = condition else {
            let s = self.score(x, t, condition);
            return (s.clone(), s);
        };
        let null = self.net.null_label().expect("class labels given to an unconditional score network");
        let n = x.dims()[0];
        let device = x.device();
        let labels = Tensor::cat(vec![l.clone(), tensor_ext::labels(&vec![null; n], &device)], 0);
        let both = self.noise(Tensor::cat(vec![x.clone(), x], 0), t, Some(labels));
        let s = param::score_from_noise(both, self.schedule.sigma(t));
        (s.clone().narrow(0, 0, n), s.narrow(0, n, n))
    }

    fn schedule(&self) -> Schedule {
        self.schedule
    }

    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }
}

/// A trained noise-aware classifier behind [`Classifier`].
#[derive(Clone, Debug)]
pub struct NetClassifier {
    pub net: NoisyClassifier,
}

impl Classifier for NetClassifier {
    fn log_prob(&self, x: Tensor<2>, t: f64, labels: &Tensor<1, Int>) -> Tensor<1> {
        let n = x.dims()[0];
        let tt = Tensor::<1>::full([n], t, &x.device());
        log_softmax(self.net.forward(x, tt), 1).gather(1, labels.clone().reshape([n, 1])).reshape([n])
    }
}
