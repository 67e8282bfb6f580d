//! Classifier guidance: `g = grad_x log p_t(c | x)`, by autodiff on the input only.

use super::{BaseEval, GuidanceTerm, input_gradient};
use burn::prelude::*;
use tilt_core::{Classifier, tensor_ext};

/// Classifier guidance: `g = grad_x log p_t(c | x)` of a noise-aware classifier.
pub struct ClassifierGuidance<'a> {
    classifier: &'a dyn Classifier,
    class: usize,
}

impl<'a> ClassifierGuidance<'a> {
    /// Guidance toward `class` by `classifier`.
    pub fn new(classifier: &'a dyn Classifier, class: usize) -> Self {
        Self { classifier, class }
    }
}

impl GuidanceTerm for ClassifierGuidance<'_> {
    fn name(&self) -> &'static str {
        "classifier"
    }
    fn term(&mut self, x: &Tensor<2>, t: f64, _base: &BaseEval) -> Tensor<2> {
        let labels = tensor_ext::labels(&vec![self.class; x.dims()[0]], &x.device());
        input_gradient(x, |xa| self.classifier.log_prob(xa, t, &labels))
    }
}
