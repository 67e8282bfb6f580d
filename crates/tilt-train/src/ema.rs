//! Exponential moving average of the weights (Burn has none built in; docs/theory.md §8), with warm-up.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use std::collections::HashMap;

struct Collect(HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val().inner();
        let n = t.shape().num_elements();
        self.0.insert(param.id, t.reshape([n]));
    }
}

struct Blend {
    online: HashMap<ParamId, Tensor<1>>,
    decay: f64,
    matched: usize,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(online) = self.online.remove(&param.id) else { return param };
        self.matched += 1;
        let decay = self.decay;
        param.map(|ema| {
            let online: Tensor<D> = online.reshape(ema.shape());
            ema.mul_scalar(decay) + online.mul_scalar(1.0 - decay)
        })
    }
}

/// `ema <- d ema + (1 - d) online` after every optimizer step, with the warm-up
/// `d = min(decay, (1 + step) / (10 + step))` so early averages are not dominated by the random init.
pub struct Ema<M: Module> {
    /// The averaged weights.
    pub model: M,
    /// The decay per step after warm-up.
    pub decay: f64,
}

impl<M: Module> Ema<M> {
    /// Start from a copy of `model` on the plain (non-autodiff) device.
    pub fn new(model: &M, decay: f64) -> Self {
        Self { model: model.valid(), decay }
    }

    /// The decay used at optimizer step `step` (0-based).
    pub fn decay_at(&self, step: usize) -> f64 {
        self.decay.min((1.0 + step as f64) / (10.0 + step as f64))
    }

    /// Blend `online` in; returns the number of parameter tensors matched by id (all of them, or a bug).
    pub fn update(&mut self, online: &M, step: usize) -> usize {
        let mut c = Collect(HashMap::new());
        online.visit(&mut c);
        let expected = c.0.len();
        let mut blend = Blend { online: c.0, decay: self.decay_at(step), matched: 0 };
        self.model = self.model.clone().map(&mut blend);
        assert_eq!(blend.matched, expected, "EMA matched {} of {expected} parameters by id", blend.matched);
        blend.matched
    }
}
