//! A per-row embedding condition (a text or image embedding) reaches a network that takes one, through NetScore and
//! classifier-free guidance.

mod common;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use common::device;
use tilt_core::{Condition, Schedule, ScoreModel, tensor_ext};
use tilt_models::{NetScore, NoiseNet};
use tilt_sampler::guidance::CfgGuidance;
use tilt_sampler::{GuidedScore, WeightSchedule};

/// Predicts `x W + e` under an embedding `e` and `x W` unconditionally: the embedding's effect is known exactly.
#[derive(Module, Debug)]
struct EmbeddingNet {
    lin: Linear,
}

impl NoiseNet for EmbeddingNet {
    fn predict_noise(&self, x: Tensor<2>, _t: Tensor<1>, _labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        self.lin.forward(x)
    }
    fn null_label(&self) -> Option<usize> {
        None
    }
    fn embedding_dim(&self) -> Option<usize> {
        Some(2)
    }
    fn predict_with_embedding(&self, x: Tensor<2>, _t: Tensor<1>, embedding: Tensor<2>) -> Tensor<2> {
        self.lin.forward(x) + embedding
    }
}

fn values(t: Tensor<2>) -> Vec<f32> {
    tensor_ext::to_vec(t)
}

#[test]
fn an_embedding_condition_reaches_the_network_and_cfg_reads_it() {
    let dev = device();
    let net = NetScore::new(EmbeddingNet { lin: LinearConfig::new(2, 2).init(&dev) }, Schedule::Linear, vec![2]);
    let x = tensor_ext::matrix(&[0.3, -0.2, 1.0, 0.5, -0.7, 0.1], 3, 2, &dev);
    let e = tensor_ext::matrix(&[1.0, 2.0, -1.0, 0.0, 0.5, 0.5], 3, 2, &dev);
    let t = 0.36;
    let sigma = Schedule::Linear.sigma(t);
    let cond = net.score(x.clone(), t, &Condition::Embedding(e.clone()));
    let uncond = net.score(x.clone(), t, &Condition::Unconditional);
    // Epsilon prediction: s = -eps/sigma, so s(x|e) - s(x) = -e/sigma exactly.
    let diff = values(cond.clone() - uncond.clone());
    for (d, v) in diff.iter().zip(values(e.clone())) {
        assert!((d + v / sigma as f32).abs() < 1e-5, "{d} vs {}", -v / sigma as f32);
    }
    // The pair CFG asks for is the same two scores.
    let (c2, u2) = net.score_and_unconditional(x.clone(), t, &Condition::Embedding(e.clone()));
    assert_eq!(values(c2), values(cond.clone()));
    assert_eq!(values(u2), values(uncond.clone()));
    // CFG at w: s(x|e) + w (s(x|e) - s(x)).
    let w = 1.5;
    let mut g =
        GuidedScore::new(&net, Condition::Embedding(e.clone())).with(CfgGuidance::new(), WeightSchedule::Constant(w));
    let guided = values(g.score(x, t, 0));
    let want = values(cond.clone() + (cond - uncond).mul_scalar(w));
    for (a, b) in guided.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    assert!(Condition::Embedding(e).is_conditional());
}
