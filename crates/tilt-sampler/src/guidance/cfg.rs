//! Classifier-free guidance: `g = s(x | c) - s(x)`, so `s_base + w g` is `s(x|c) + w (s(x|c) - s(x))`.
//!
//! In the unified view this is reward guidance with the cost `r = 1/p(c|x)` at strength `-w`. Optional
//! adaptive projected guidance (APG, Sadat et al. 2024) reshapes the difference in the clean-sample space.

use super::{BaseEval, GuidanceTerm};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Adaptive projected guidance options. The difference `D = x0(x|c) - x0(x)` of the Tweedie denoises is
/// (1) accumulated with momentum `D <- D + momentum * D_prev`, (2) clipped to norm `norm_threshold` per row,
/// (3) split into the part parallel to `x0(x|c)` and the orthogonal rest, keeping `eta` of the parallel part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apg {
    #[serde(default)]
    pub eta: f64,
    #[serde(default)]
    pub norm_threshold: f64,
    #[serde(default)]
    pub momentum: f64,
}

#[derive(Default)]
pub struct CfgGuidance {
    apg: Option<Apg>,
    running: Option<Tensor<2>>,
}

impl CfgGuidance {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_apg(apg: Apg) -> Self {
        Self { apg: Some(apg), running: None }
    }
}

impl GuidanceTerm for CfgGuidance {
    fn name(&self) -> &'static str {
        "cfg"
    }
    fn needs_unconditional(&self) -> bool {
        true
    }
    fn term(&mut self, x: &Tensor<2>, t: f64, base: &BaseEval) -> Tensor<2> {
        let uncond = base.unconditional.clone().expect("GuidedScore computes the unconditional score for CFG");
        let diff = base.score.clone() - uncond;
        let Some(apg) = &self.apg else { return diff };
        // Work in clean-sample space: x0 = (x + sigma^2 s) / alpha, so D0 = (sigma^2 / alpha) diff.
        let sched = base.model.schedule();
        let (alpha, sigma2) = (sched.alpha(t), 1.0 - sched.alpha_sq(t));
        let to_x0 = sigma2 / alpha;
        let mut d0 = diff.mul_scalar(to_x0);
        if apg.momentum != 0.0 {
            if let Some(prev) = self.running.take() {
                d0 = d0 + prev.mul_scalar(apg.momentum);
            }
            self.running = Some(d0.clone());
        }
        if apg.norm_threshold > 0.0 {
            let norm = d0.clone().square().sum_dim(1).sqrt();
            d0 = d0 * norm.recip().mul_scalar(apg.norm_threshold).clamp_max(1.0);
        }
        let x0_cond = (x.clone() + base.score.clone().mul_scalar(sigma2)).div_scalar(alpha);
        let unit = x0_cond.clone() / x0_cond.square().sum_dim(1).sqrt().clamp_min(1e-12);
        let parallel = unit.clone() * (d0.clone() * unit).sum_dim(1);
        let orthogonal = d0 - parallel.clone();
        (orthogonal + parallel.mul_scalar(apg.eta)).div_scalar(to_x0)
    }
}
