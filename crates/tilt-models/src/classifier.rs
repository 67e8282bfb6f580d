//! A noise-aware classifier `p_t(c | x)`: the score network's trunk with a class head.

use crate::embedding::time_embedding;
use crate::score_net::Activation;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

/// A noise-aware classifier `p_t(c | x)`: an MLP on the noised input and the time.
#[derive(Config, Debug)]
pub struct NoisyClassifierConfig {
    /// Data dimension.
    pub dim: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Width of the hidden layers.
    #[config(default = 128)]
    pub hidden: usize,
    /// Number of hidden layers.
    #[config(default = 3)]
    pub layers: usize,
    /// Width of the time embedding.
    #[config(default = 32)]
    pub time_dim: usize,
    /// The activation between layers.
    #[config(default = "Activation::Silu")]
    pub activation: Activation,
}

/// The noise-aware classifier; `forward` gives the class logits.
#[derive(Module, Debug)]
pub struct NoisyClassifier {
    input: Linear,
    time_mlp: Linear,
    hidden: Vec<Linear>,
    head: Linear,
    time_dim: usize,
    #[module(skip)]
    activation: Activation,
}

impl NoisyClassifierConfig {
    /// The classifier, freshly initialised on `device`.
    pub fn init(&self, device: &Device) -> NoisyClassifier {
        let h = self.hidden;
        NoisyClassifier {
            input: LinearConfig::new(self.dim, h).init(device),
            time_mlp: LinearConfig::new(self.time_dim, h).init(device),
            hidden: (0..self.layers).map(|_| LinearConfig::new(h, h).init(device)).collect(),
            head: LinearConfig::new(h, self.num_classes).init(device),
            time_dim: self.time_dim,
            activation: self.activation,
        }
    }
}

impl NoisyClassifier {
    /// Logits `[n, C]` of `x_t: [n, d]` at times `t: [n]`.
    pub fn forward(&self, x: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        let act = self.activation;
        let mut h = self.input.forward(x) + self.time_mlp.forward(time_embedding(t, self.time_dim));
        for l in &self.hidden {
            h = l.forward(act.apply(h));
        }
        self.head.forward(act.apply(h))
    }
}
