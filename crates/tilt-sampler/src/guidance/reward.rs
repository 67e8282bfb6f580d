//! Reward guidance, the papers' term: `g = grad log p_{r,t} - grad log p_t = grad log h_t`.

use super::{BaseEval, GuidanceTerm};
use burn::prelude::*;
use tilt_core::ScoreModel;

/// `g = s_r(x, t) - s_base(x, t)` from a reweighted score `s_r` (exact, or trained by reward-weighted score
/// matching), or `g = delta(x, t)` directly from a residual model.
pub struct RewardGuidance<'a> {
    source: Source<'a>,
}

enum Source<'a> {
    Reweighted(&'a dyn ScoreModel),
    Residual(&'a dyn ScoreModel),
}

impl<'a> RewardGuidance<'a> {
    /// From the score of the reweighted law `p_r ∝ r p`.
    pub fn reweighted(model: &'a dyn ScoreModel) -> Self {
        Self { source: Source::Reweighted(model) }
    }
    /// From a residual `delta` with `s_r = s_base + delta` (the residual form of docs/theory.md §4).
    pub fn residual(delta: &'a dyn ScoreModel) -> Self {
        Self { source: Source::Residual(delta) }
    }
}

impl GuidanceTerm for RewardGuidance<'_> {
    fn name(&self) -> &'static str {
        "reward"
    }
    fn model_evaluations(&self) -> f64 {
        1.0
    }
    fn term(&mut self, x: &Tensor<2>, t: f64, base: &BaseEval) -> Tensor<2> {
        match self.source {
            Source::Reweighted(m) => m.score(x.clone(), t, base.condition) - base.score.clone(),
            Source::Residual(m) => m.score(x.clone(), t, base.condition),
        }
    }
}
