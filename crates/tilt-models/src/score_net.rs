//! The score network for low-dimensional data: a residual MLP conditioned on time (and optionally class),
//! predicting the noise `eps` (the sampler gets `s = -eps / sigma`).

use crate::embedding::time_embedding;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation;
use serde::{Deserialize, Serialize};

/// The activation of the MLPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// SiLU (swish), the usual diffusion choice.
    #[default]
    Silu,
    /// ReLU: no `exp`, so a little cheaper than SiLU on the CPU (docs/theory.md §8).
    Relu,
}

impl Activation {
    /// The activation applied elementwise.
    pub fn apply<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Silu => activation::silu(x),
            Activation::Relu => activation::relu(x),
        }
    }
}

/// The residual MLP score network for flat rows.
#[derive(Config, Debug)]
pub struct ScoreNetConfig {
    /// Data dimension.
    pub dim: usize,
    /// Width of the hidden layers.
    #[config(default = 128)]
    pub hidden: usize,
    /// Residual blocks (each two linear layers).
    #[config(default = 3)]
    pub blocks: usize,
    /// Width of the time embedding.
    #[config(default = 32)]
    pub time_dim: usize,
    /// Number of classes; 0 makes an unconditional network. A conditional network also learns the
    /// unconditional score under the extra null label `num_classes` (label dropout).
    #[config(default = 0)]
    pub num_classes: usize,
    /// The activation between layers.
    #[config(default = "Activation::Silu")]
    pub activation: Activation,
    /// Start with a zero output (the residual term `delta_theta` then starts as "no guidance").
    #[config(default = false)]
    pub zero_init_output: bool,
}

/// Two linear layers with a time (and class) conditioning, added to their input.
#[derive(Module, Debug)]
pub struct ResBlock {
    lin1: Linear,
    lin2: Linear,
    cond: Linear,
}

/// The residual MLP; its output is the declared prediction (the noise by default).
#[derive(Module, Debug)]
pub struct ScoreNet {
    input: Linear,
    time_mlp: Linear,
    class_emb: Option<Embedding>,
    blocks: Vec<ResBlock>,
    output: Linear,
    time_dim: usize,
    num_classes: usize,
    #[module(skip)]
    activation: Activation,
}

impl ScoreNetConfig {
    /// The network, freshly initialised on `device`.
    pub fn init(&self, device: &Device) -> ScoreNet {
        let h = self.hidden;
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        let mut output = LinearConfig::new(h, self.dim);
        if self.zero_init_output {
            output = output.with_initializer(Initializer::Zeros);
        }
        ScoreNet {
            input: lin(self.dim, h),
            time_mlp: lin(self.time_dim, h),
            class_emb: (self.num_classes > 0).then(|| EmbeddingConfig::new(self.num_classes + 1, h).init(device)),
            blocks: (0..self.blocks).map(|_| ResBlock { lin1: lin(h, h), lin2: lin(h, h), cond: lin(h, h) }).collect(),
            output: output.init(device),
            time_dim: self.time_dim,
            num_classes: self.num_classes,
            activation: self.activation,
        }
    }
}

impl ScoreNet {
    /// Predicted noise for `x: [n, d]` at times `t: [n]`; `labels: [n]` in `0..=num_classes`
    /// (`num_classes` is the null label). `None` means unconditional: the null label for a conditional
    /// network, nothing for an unconditional one.
    pub fn forward(&self, x: Tensor<2>, t: Tensor<1>, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        let time = self.time_mlp.forward(time_embedding(t, self.time_dim));
        self.forward_embedded(x, time, labels)
    }

    /// [`ScoreNet::forward`] with every row at time `t`: the time embedding and its layer run on one row and
    /// broadcast (for an unconditional network, the conditioning layers too).
    pub fn forward_at(&self, x: Tensor<2>, t: f64, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        let time = self.time_mlp.forward(time_embedding(Tensor::<1>::full([1], t, &x.device()), self.time_dim));
        self.forward_embedded(x, time, labels)
    }

    /// The network after the time layer: `time` is `[n, hidden]` or `[1, hidden]` (broadcast over the rows).
    fn forward_embedded(&self, x: Tensor<2>, time: Tensor<2>, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        let act = self.activation;
        let n = x.dims()[0];
        let conditioning: Vec<Tensor<2>> = match &self.class_emb {
            None => {
                let emb = act.apply(time);
                self.blocks.iter().map(|b| b.cond.forward(emb.clone())).collect()
            }
            Some(e) => {
                let labels =
                    labels.unwrap_or_else(|| Tensor::<1, Int>::full([n], self.num_classes as i64, &x.device()));
                if time.dims()[0] == 1 {
                    // Every row at one time: the conditioning depends on the label alone, so the embedding, its
                    // activation and each block's conditioning layer run once per label (a `[classes + 1, hidden]`
                    // table) and the rows gather theirs. This saves a `[n, hidden] x [hidden, hidden]` product
                    // per block and step when sampling.
                    let table = act.apply(time + e.weight.val());
                    self.blocks.iter().map(|b| b.cond.forward(table.clone()).select(0, labels.clone())).collect()
                } else {
                    let h = time.dims()[1];
                    let emb = act.apply(time + e.forward(labels.unsqueeze_dim::<2>(1)).reshape([n, h]));
                    self.blocks.iter().map(|b| b.cond.forward(emb.clone())).collect()
                }
            }
        };
        let mut h = self.input.forward(x);
        for (b, cond) in self.blocks.iter().zip(conditioning) {
            let inner = b.lin1.forward(act.apply(h.clone())) + cond;
            h = h + b.lin2.forward(act.apply(inner));
        }
        self.output.forward(act.apply(h))
    }

    /// The label that means "no class" (classifier-free guidance).
    pub fn null_label(&self) -> Option<usize> {
        (self.num_classes > 0).then_some(self.num_classes)
    }

    /// Number of classes (0: unconditional; label `num_classes` is the null label).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
}

impl crate::noise_net::NoiseNet for ScoreNet {
    fn predict_noise(&self, x: Tensor<2>, t: Tensor<1>, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        self.forward(x, t, labels)
    }

    fn predict_noise_at(&self, x: Tensor<2>, t: f64, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        self.forward_at(x, t, labels)
    }

    fn null_label(&self) -> Option<usize> {
        ScoreNet::null_label(self)
    }
}
