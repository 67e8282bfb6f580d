//! Negative-class guidance: steer away from class `c-`, `g = s_base(x, t) - s(x, t | c-)`.
//!
//! With an unconditional base this is CFG toward "not c-"; with a conditional base it is the negative-prompt
//! form `s(x|c) + w (s(x|c) - s(x|c-))`.

use super::{BaseEval, GuidanceTerm};
use burn::prelude::*;
use tilt_core::Condition;

/// Negative-class guidance: `g = s(x) - s(x|c-)`, away from class `c-`.
pub struct NegativeClassGuidance {
    class: usize,
}

impl NegativeClassGuidance {
    /// Guidance away from `class`.
    pub fn new(class: usize) -> Self {
        Self { class }
    }
}

impl GuidanceTerm for NegativeClassGuidance {
    fn name(&self) -> &'static str {
        "negative-class"
    }
    fn term(&mut self, x: &Tensor<2>, t: f64, base: &BaseEval) -> Tensor<2> {
        let neg = Condition::class(self.class, x.dims()[0], &x.device());
        base.score.clone() - base.model.score(x.clone(), t, &neg)
    }
}
