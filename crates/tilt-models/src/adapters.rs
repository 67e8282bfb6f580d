//! Trained networks behind the sampler's interfaces.

use crate::classifier::NoisyClassifier;
use crate::noise_net::NoiseNet;
use crate::score_net::ScoreNet;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use tilt_core::score::param;
use tilt_core::{Classifier, Condition, Prediction, Schedule, ScoreModel, tensor_ext};

/// A trained network as a score model. The network declares what it predicts and the schedule it was trained on;
/// the score is read off its output by the exact affine map of [`Prediction`] (for epsilon, `s = -eps / sigma(t)`),
/// on the schedule's variance-preserving form ([`ScoreModel`]): the network is fed `x = c(t) y` and the score of `y`
/// is `c(t)` times that of `x`.
#[derive(Clone, Debug)]
pub struct NetScore<N: NoiseNet = ScoreNet> {
    /// The network.
    pub net: N,
    /// The schedule it was trained on.
    pub schedule: Schedule,
    /// What the network outputs.
    pub prediction: Prediction,
    /// A residual network outputs a difference of predictions (`delta` of reward-weighted training's residual
    /// form): its score is `delta / B(t)`, without the `A(t) x` part of a full prediction.
    pub residual: bool,
    /// The shape of one sample (the network sees it flattened).
    pub shape: Vec<usize>,
}

impl<N: NoiseNet> NetScore<N> {
    /// A noise-predicting network trained on `schedule`.
    pub fn new(net: N, schedule: Schedule, shape: Vec<usize>) -> Self {
        Self { net, schedule, prediction: Prediction::Epsilon, residual: false, shape }
    }

    /// The same network declaring that it outputs `prediction`.
    pub fn with_prediction(self, prediction: Prediction) -> Self {
        Self { prediction, ..self }
    }

    /// The same network read as a residual (a difference of predictions).
    pub fn as_residual(self) -> Self {
        Self { residual: true, ..self }
    }

    /// The score of `y` (VP form) from the network's output at `x = c y`.
    fn to_score(&self, x: Tensor<2>, out: Tensor<2>, t: f64, scale: f64) -> Tensor<2> {
        if self.prediction == Prediction::Epsilon && scale == 1.0 {
            // Bit for bit the conversion tilt has always used for noise-predicting networks on VP schedules.
            return param::score_from_noise(out, self.schedule.sigma(t));
        }
        let p = self.schedule.interpolant(t);
        let s = if self.residual {
            self.prediction.difference_to_score(out, p)
        } else {
            self.prediction.to_score(x, out, p)
        };
        if scale == 1.0 { s } else { s.mul_scalar(scale) }
    }

    /// The network's input at `t` for the VP-form state `y`, and the scale `c(t)`.
    fn input(&self, y: Tensor<2>, t: f64) -> (Tensor<2>, f64) {
        let c = self.schedule.scale(t);
        (if c == 1.0 { y } else { y.mul_scalar(c) }, c)
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
            (Condition::Embedding(_), _) => unreachable!("embeddings take their own path (NetScore::output)"),
        }
    }

    fn noise(&self, x: Tensor<2>, t: f64, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        self.net.predict_noise_at(x, t, labels)
    }

    /// The network's output under `condition`: labels, none, or a per-row embedding.
    ///
    /// Panics when an embedding reaches a network that takes none, or one of another width: callers check
    /// conditions against their networks first, as for labels.
    fn output(&self, x: Tensor<2>, t: f64, condition: &Condition) -> Tensor<2> {
        let Condition::Embedding(e) = condition else { return self.noise(x, t, self.labels_for(condition)) };
        match self.net.embedding_dim() {
            Some(width) if e.dims()[1] == width => {
                let n = x.dims()[0];
                self.net.predict_with_embedding(x, Tensor::<1>::full([n], t, &e.device()), e.clone())
            }
            Some(width) => panic!("an embedding of width {} given to a network that takes {width}", e.dims()[1]),
            None => panic!("an embedding given to a score network that takes none"),
        }
    }
}

impl<N: NoiseNet> ScoreModel for NetScore<N> {
    fn score(&self, x: Tensor<2>, t: f64, condition: &Condition) -> Tensor<2> {
        let (x, c) = self.input(x, t);
        let out = self.output(x.clone(), t, condition);
        self.to_score(x, out, t, c)
    }

    /// ONE forward pass over `[x; x]` with labels `[c; null]`.
    fn score_and_unconditional(&self, x: Tensor<2>, t: f64, condition: &Condition) -> (Tensor<2>, Tensor<2>) {
        let l = match condition {
            Condition::Labels(l) => l,
            Condition::Unconditional => {
                let s = self.score(x, t, condition);
                return (s.clone(), s);
            }
            // An embedding network's conditional and unconditional outputs are two calls.
            Condition::Embedding(_) => {
                return (self.score(x.clone(), t, condition), self.score(x, t, &Condition::Unconditional));
            }
        };
        let null = self.net.null_label().expect("class labels given to an unconditional score network");
        let n = x.dims()[0];
        let device = x.device();
        let labels = Tensor::cat(vec![l.clone(), tensor_ext::labels(&vec![null; n], &device)], 0);
        let (x, c) = self.input(x, t);
        let doubled = Tensor::cat(vec![x.clone(), x], 0);
        let both = self.noise(doubled.clone(), t, Some(labels));
        let s = self.to_score(doubled, both, t, c);
        (s.clone().narrow(0, 0, n), s.narrow(0, n, n))
    }

    fn schedule(&self) -> Schedule {
        self.schedule
    }

    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn attention_layers(&self) -> Vec<String> {
        self.net.attention_layers()
    }

    fn score_perturbed(
        &self,
        x: Tensor<2>,
        t: f64,
        condition: &Condition,
        perturbation: &tilt_core::PerturbedAttention,
    ) -> Option<Tensor<2>> {
        if matches!(condition, Condition::Embedding(_)) {
            return None;
        }
        let (x, c) = self.input(x, t);
        let n = x.dims()[0];
        let tt = Tensor::<1>::full([n], t, &x.device());
        let out = self.net.predict_noise_perturbed(x.clone(), tt, self.labels_for(condition), perturbation)?;
        Some(self.to_score(x, out, t, c))
    }
}

/// A trained noise-aware classifier behind [`Classifier`].
#[derive(Clone, Debug)]
pub struct NetClassifier {
    /// The classifier network.
    pub net: NoisyClassifier,
    /// The schedule its noised inputs were drawn from: it is fed the interpolant's `x = c(t) y`.
    pub schedule: Schedule,
}

impl Classifier for NetClassifier {
    fn log_prob(&self, x: Tensor<2>, t: f64, labels: &Tensor<1, Int>) -> Tensor<1> {
        let c = self.schedule.scale(t);
        let x = if c == 1.0 { x } else { x.mul_scalar(c) };
        let n = x.dims()[0];
        let tt = Tensor::<1>::full([n], t, &x.device());
        log_softmax(self.net.forward(x, tt), 1).gather(1, labels.clone().reshape([n, 1])).reshape([n])
    }
}
