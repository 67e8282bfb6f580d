//! Global-norm gradient clipping (PyTorch's `clip_grad_norm_`). Burn's `GradientClippingConfig::Norm` clips
//! each parameter tensor separately (docs/theory.md §8), which is not the same thing.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

struct SumSquares<'a> {
    grads: &'a GradientsParams,
    acc: Option<Tensor<1>>,
}

impl ModuleVisitor for SumSquares<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.acc = Some(match self.acc.take() {
                Some(a) => a + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: Tensor<1>,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let f: Tensor<D> = self.factor.clone().reshape([1; D]);
            self.grads.register::<D>(param.id, g * f);
        }
    }
}

/// The global gradient norm, and the gradients scaled so that norm is at most `max_norm` (if given).
pub fn clip_grad_norm<M: Module>(
    model: &M,
    mut grads: GradientsParams,
    max_norm: Option<f64>,
) -> (GradientsParams, Option<Tensor<1>>) {
    let mut ss = SumSquares { grads: &grads, acc: None };
    model.visit(&mut ss);
    let Some(total) = ss.acc.map(|a| a.sqrt()) else { return (grads, None) };
    if let Some(max_norm) = max_norm {
        let factor = total.clone().add_scalar(1e-6).recip().mul_scalar(max_norm).clamp_max(1.0);
        model.visit(&mut Scale { grads: &mut grads, factor });
    }
    (grads, Some(total))
}
