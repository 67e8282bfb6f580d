//! The independent image evaluator: a small CNN classifier trained on clean images only, never used for guidance.
//! It plays the role Inception-v3 plays in the papers' ImageNet experiment: `p_eval(c | y)` of generated images,
//! their accuracy, and penultimate features for a Fréchet distance.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d, activation::SiLU};
use burn::prelude::*;

/// The evaluator CNN of clean images.
#[derive(Config, Debug)]
pub struct EvaluatorConfig {
    /// Channels, height and width of one image.
    pub image: [usize; 3],
    /// Number of classes.
    pub num_classes: usize,
    /// Channels of the first convolution; the two stride-2 stages double them.
    #[config(default = 16)]
    pub channels: usize,
}

/// A small CNN classifier of clean images, the independent judge of generated ones.
#[derive(Module, Debug)]
pub struct Evaluator {
    convs: Vec<Conv2d>,
    norms: Vec<GroupNorm>,
    head: Linear,
    act: SiLU,
    image: [usize; 3],
}

impl EvaluatorConfig {
    /// The evaluator, freshly initialised on `device`.
    pub fn init(&self, device: &Device) -> Evaluator {
        let c = self.channels;
        let widths = [(self.image[0], c, 1), (c, 2 * c, 2), (2 * c, 4 * c, 2)];
        let convs = widths
            .iter()
            .map(|&(i, o, s)| {
                Conv2dConfig::new([i, o], [3, 3])
                    .with_stride([s, s])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device)
            })
            .collect();
        let norms = widths.iter().map(|&(_, o, _)| GroupNormConfig::new(4.min(o), o).init(device)).collect();
        Evaluator {
            convs,
            norms,
            head: LinearConfig::new(4 * c, self.num_classes).init(device),
            act: SiLU::new(),
            image: self.image,
        }
    }
}

impl Evaluator {
    /// Penultimate features `[n, 4 * channels]` (global average of the last convolution) of flattened images.
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        let n = x.dims()[0];
        let [c, h, w] = self.image;
        let mut x = x.reshape([n, c, h, w]);
        for (conv, norm) in self.convs.iter().zip(&self.norms) {
            x = self.act.forward(norm.forward(conv.forward(x)));
        }
        let [_, f, hh, ww] = x.dims();
        x.reshape([n, f, hh * ww]).mean_dim(2).reshape([n, f])
    }

    /// Class logits `[n, num_classes]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.head.forward(self.features(x))
    }
}
