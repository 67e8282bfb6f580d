//! Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
//! `g = s_good(x | c) - s_weak(x | c)`, with `s_weak` a separately trained, smaller or shorter-trained network of
//! the same task. Where the weak network's errors lie (away from the data) the difference points back into it.

use super::{BaseEval, GuidanceTerm};
use burn::prelude::*;
use tilt_core::ScoreModel;

/// Autoguidance (Karras et al. 2024): `g = s_good(x|c) - s_weak(x|c)` with a separately trained weaker network.
pub struct AutoGuidance<'a> {
    weak: &'a dyn ScoreModel,
}

impl<'a> AutoGuidance<'a> {
    /// `weak`: the guiding network, called with the same condition as the base.
    pub fn new(weak: &'a dyn ScoreModel) -> Self {
        Self { weak }
    }
}

impl GuidanceTerm for AutoGuidance<'_> {
    fn name(&self) -> &'static str {
        "autoguidance"
    }
    fn model_evaluations(&self) -> f64 {
        1.0
    }
    fn term(&mut self, x: &Tensor<2>, t: f64, base: &BaseEval) -> Tensor<2> {
        base.score.clone() - self.weak.score(x.clone(), t, base.condition)
    }
}
