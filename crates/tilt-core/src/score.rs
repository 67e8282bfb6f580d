//! The score-model abstraction every sampler and guidance term calls.
//!
//! Data are rows of a `[batch, dim]` tensor (images are flattened by the model that needs them). Time is one
//! `t` per call: the samplers move the whole batch on one grid. Conditioning is a per-row class label or none.

use crate::schedule::Schedule;
use crate::tensor_ext;
use burn::prelude::*;

/// What a score is conditioned on.
#[derive(Clone, Debug)]
// Conditions are passed by reference and live for one sampler run; boxing the labels would buy nothing.
/// What a score is conditioned on.
#[allow(clippy::large_enum_variant)]
pub enum Condition {
    /// The unconditional score `grad log p_t(x)`.
    Unconditional,
    /// A class label per row: `grad log p_t(x | c_i)`.
    Labels(Tensor<1, Int>),
    /// A per-row embedding `[n, e]` (a text or image embedding): `grad log p_t(x | e_i)`, for networks that take
    /// one ([`ScoreModel::score`] of such a network; the exact mixture oracle takes class labels only).
    Embedding(Tensor<2>),
}

impl Condition {
    /// The same class for every one of `n` rows.
    pub fn class(class: usize, n: usize, device: &Device) -> Self {
        Condition::Labels(tensor_ext::labels(&vec![class; n], device))
    }

    /// Whether there is anything to condition on.
    pub fn is_conditional(&self) -> bool {
        !matches!(self, Condition::Unconditional)
    }

    /// The same condition for a batch stacked twice, `[x; x]` (used to batch two evaluations).
    pub fn doubled(&self) -> Self {
        match self {
            Condition::Unconditional => Condition::Unconditional,
            Condition::Labels(l) => Condition::Labels(Tensor::cat(vec![l.clone(), l.clone()], 0)),
            Condition::Embedding(e) => Condition::Embedding(Tensor::cat(vec![e.clone(), e.clone()], 0)),
        }
    }
}

/// A (possibly learned) score `s_t(x) = grad_x log p_t(x | condition)`.
///
/// `x` and the score are those of the schedule's **variance-preserving form** `Y_t = X_t / c(t)` (see
/// [`crate::schedule`]): on a VP schedule that is `X_t` itself; a network trained on another interpolant (rectified
/// flow) is fed `c(t) y` and its score multiplied by `c(t)`. Samplers, grids and guidance terms then work on every
/// schedule unchanged.
///
/// Implementations must be written with tensor ops only, so that a caller can put `x` on an autodiff
/// device and differentiate through the score (reward-gradient guidance does that).
pub trait ScoreModel {
    /// `grad_x log p_t(x | condition)` for a batch `x: [n, d]`.
    fn score(&self, x: Tensor<2>, t: f64, condition: &Condition) -> Tensor<2>;

    /// The conditional and the unconditional score of the same batch.
    ///
    /// The default makes two calls; a network overrides it with ONE forward pass over `[x; x]` with
    /// labels `[c; null]`, which is what makes classifier-free guidance cost one call per step.
    fn score_and_unconditional(&self, x: Tensor<2>, t: f64, condition: &Condition) -> (Tensor<2>, Tensor<2>) {
        let cond = self.score(x.clone(), t, condition);
        let uncond = self.score(x, t, &Condition::Unconditional);
        (cond, uncond)
    }

    /// The schedule the score was defined (or trained) under.
    fn schedule(&self) -> Schedule;

    /// The shape of one sample: `[d]` for points, `[channels, height, width]` for images. The sampler works on
    /// rows of `shape.iter().product()` values; a caller reshapes them back into samples.
    fn shape(&self) -> Vec<usize>;

    /// Data dimension `d`: the number of values of one sample.
    fn dim(&self) -> usize {
        self.shape().iter().product()
    }

    /// The names of the self-attention layers in forward order (diffusers' `down.block_0.attentions_1`, `mid`,
    /// `up.block_2.attentions_0`); empty for a model without attention.
    fn attention_layers(&self) -> Vec<String> {
        Vec::new()
    }

    /// The score with `perturbation` applied to its attention layers; `None` for a model without attention.
    fn score_perturbed(
        &self,
        x: Tensor<2>,
        t: f64,
        condition: &Condition,
        perturbation: &crate::PerturbedAttention,
    ) -> Option<Tensor<2>> {
        let _ = (x, t, condition, perturbation);
        None
    }
}

/// A noise-aware classifier `p_t(c | x)` (for classifier guidance and metrics).
pub trait Classifier {
    /// `log p_t(c_i | x_i)` for each row; differentiable in `x`.
    fn log_prob(&self, x: Tensor<2>, t: f64, labels: &Tensor<1, Int>) -> Tensor<1>;
}

/// Conversions between the three parametrisations of one network output (Tweedie).
pub mod param {
    use super::*;

    /// `eps = -sigma s`.
    pub fn noise_from_score(score: Tensor<2>, sigma: f64) -> Tensor<2> {
        score.mul_scalar(-sigma)
    }
    /// `s = -eps / sigma`.
    pub fn score_from_noise(eps: Tensor<2>, sigma: f64) -> Tensor<2> {
        eps.mul_scalar(-1.0 / sigma)
    }
    /// Tweedie: `x0_hat = (x + sigma^2 s) / alpha = E[X_0 | X_t = x]`.
    pub fn clean_from_score(x: Tensor<2>, score: Tensor<2>, alpha: f64, sigma: f64) -> Tensor<2> {
        (x + score.mul_scalar(sigma * sigma)).div_scalar(alpha)
    }
    /// Inverse of [`clean_from_score`]: `s = (alpha x0 - x) / sigma^2`.
    pub fn score_from_clean(x: Tensor<2>, x0: Tensor<2>, alpha: f64, sigma: f64) -> Tensor<2> {
        (x0.mul_scalar(alpha) - x).div_scalar(sigma * sigma)
    }
}

/// A score model read on another schedule: `Y_t` depends on a schedule only through its log-SNR at `t`
/// (crate::schedule's module docs), so a network trained on schedule `B` answers at time `t` of schedule `A` when
/// asked at the `t'` of `B` with the same log-SNR. This lets networks trained on different schedules (a linear base
/// and a rectified-flow reweighted network, say) be combined in one sampler.
pub struct Retimed {
    /// The score, defined on its own schedule.
    pub score: Box<dyn ScoreModel>,
    /// The schedule the sampler runs on.
    pub on: Schedule,
}

impl Retimed {
    fn own_time(&self, t: f64) -> f64 {
        self.score.schedule().t_from_ou(self.on.ou_time(t))
    }
}

impl ScoreModel for Retimed {
    fn score(&self, x: Tensor<2>, t: f64, condition: &Condition) -> Tensor<2> {
        self.score.score(x, self.own_time(t), condition)
    }
    fn score_and_unconditional(&self, x: Tensor<2>, t: f64, condition: &Condition) -> (Tensor<2>, Tensor<2>) {
        self.score.score_and_unconditional(x, self.own_time(t), condition)
    }
    fn schedule(&self) -> Schedule {
        self.on
    }
    fn shape(&self) -> Vec<usize> {
        self.score.shape()
    }
    fn attention_layers(&self) -> Vec<String> {
        self.score.attention_layers()
    }
    fn score_perturbed(
        &self,
        x: Tensor<2>,
        t: f64,
        condition: &Condition,
        perturbation: &crate::PerturbedAttention,
    ) -> Option<Tensor<2>> {
        self.score.score_perturbed(x, self.own_time(t), condition, perturbation)
    }
}

/// `a + k b` for two score models on the same data: `sum` puts a residual model on its base (`s_base + delta`),
/// `difference` turns two scores into a guidance term (`s_r - s`).
pub struct ScoreCombination<'a> {
    a: &'a dyn ScoreModel,
    b: &'a dyn ScoreModel,
    k: f64,
}

impl<'a> ScoreCombination<'a> {
    /// `a + b` (a residual on its base).
    pub fn sum(a: &'a dyn ScoreModel, b: &'a dyn ScoreModel) -> Self {
        Self { a, b, k: 1.0 }
    }
    /// `a - b` (a guidance term from two scores).
    pub fn difference(a: &'a dyn ScoreModel, b: &'a dyn ScoreModel) -> Self {
        Self { a, b, k: -1.0 }
    }
}

impl ScoreModel for ScoreCombination<'_> {
    fn score(&self, x: Tensor<2>, t: f64, condition: &Condition) -> Tensor<2> {
        self.a.score(x.clone(), t, condition) + self.b.score(x, t, condition).mul_scalar(self.k)
    }
    fn schedule(&self) -> Schedule {
        self.a.schedule()
    }
    fn shape(&self) -> Vec<usize> {
        self.a.shape()
    }
}

/// A 2-D score with a smooth error: the noise prediction is perturbed by `eps * (sin 2 x_2, cos 2 x_1)`, i.e.
/// `s - eps phi(x) / sigma(t)`. The error is of the same relative size at every noise level, like a trained
/// network's (docs/theory.md §7, claim 7: the reward gain should degrade smoothly with it).
pub struct SmoothlyPerturbed<'a> {
    /// The exact (or any) score to perturb.
    pub score: &'a dyn ScoreModel,
    /// The size of the perturbation, relative to the noise prediction.
    pub eps: f64,
}

impl ScoreModel for SmoothlyPerturbed<'_> {
    fn score(&self, x: Tensor<2>, t: f64, c: &Condition) -> Tensor<2> {
        let [n, d] = x.dims();
        assert_eq!(d, 2, "SmoothlyPerturbed is defined for 2-D data");
        let phi = Tensor::cat(
            vec![x.clone().narrow(1, 1, 1).mul_scalar(2.0).sin(), x.clone().narrow(1, 0, 1).mul_scalar(2.0).cos()],
            1,
        )
        .reshape([n, 2]);
        self.score.score(x, t, c) - phi.mul_scalar(self.eps / self.score.schedule().sigma(t))
    }
    fn schedule(&self) -> Schedule {
        self.score.schedule()
    }
    fn shape(&self) -> Vec<usize> {
        self.score.shape()
    }
}
