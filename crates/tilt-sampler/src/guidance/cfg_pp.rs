//! CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models").
//!
//! CFG++ takes the sampler's step with the guided denoise `x0_l = x0(x) + l (x0(x|c) - x0(x))`, `l` in `[0, 1]`
//! typically, but re-noises with the unconditional noise prediction: the DDIM step becomes
//! `x' = alpha' x0_l + sigma' eps(x)` instead of `alpha' x0_w + sigma' eps_w`. Since `x = alpha x0 + sigma eps` for
//! the conditional and the unconditional prediction alike, that step is exactly the DDIM step of CFG with the
//! step-dependent scale `omega = l kappa`, `kappa = alpha' sigma / (alpha' sigma - alpha sigma')` (>= 1; 1 at the
//! final denoise, where `alpha' = 1`, `sigma' = 0`). So CFG++ is a guidance term that reads where the step goes
//! ([`super::BaseEval::t_next`]) and adds `(l kappa - 1) (s(x|c) - s(x))` to the conditional score: one place for
//! every sampler whose step is DDIM's to first order — DDIM, flow matching's Euler on rectified flow (the same step),
//! k-diffusion's Euler (DDIM in sigma), and DPM-Solver++ 2M, whose first-order part is DDIM (its second-order
//! correction then acts on the effective denoises; ComfyUI's `dpmpp_2m_cfg_pp` corrects with the unconditional
//! one instead). At `l` = 1 and a step to `t = 0` it is the conditional denoise; as the step shrinks `kappa` grows
//! like `1 / h`, which is why CFG++ uses `l` below 1 where CFG uses scales of 5 to 12.
//!
//! The weight of this term is `l` and is not a plain factor ([`GuidanceTerm::weighted`]); like every term, weight 0
//! switches it off (the conditional model), whereas `l -> 0+` tends to the unconditional one.

use super::{BaseEval, GuidanceTerm};
use burn::prelude::*;

/// CFG++ with the guided denoise's scale as its weight (`l`).
#[derive(Clone, Debug, Default)]
pub struct CfgPlusPlus;

impl CfgPlusPlus {
    /// The term; add it to a [`crate::GuidedScore`] that knows the sampler's grid ([`crate::GuidedScore::with_grid`]).
    pub fn new() -> Self {
        Self
    }

    /// `kappa = alpha' sigma / (alpha' sigma - alpha sigma')` of the step from `t` to `t_next` on `schedule`.
    pub fn kappa(schedule: &tilt_core::Schedule, t: f64, t_next: f64) -> f64 {
        let (alpha, sigma) = (schedule.alpha(t), schedule.sigma(t));
        let (alpha_next, sigma_next) = (schedule.alpha(t_next), schedule.sigma(t_next));
        alpha_next * sigma / (alpha_next * sigma - alpha * sigma_next)
    }
}

impl GuidanceTerm for CfgPlusPlus {
    fn name(&self) -> &'static str {
        "cfg++"
    }

    fn needs_unconditional(&self) -> bool {
        true
    }

    /// `kappa (s(x|c) - s(x))`: the part proportional to `l`.
    fn term(&mut self, x: &Tensor<2>, t: f64, base: &BaseEval) -> Tensor<2> {
        self.weighted(x, t, base, 1.0) + difference(base)
    }

    fn weighted(&mut self, _x: &Tensor<2>, t: f64, base: &BaseEval, weight: f64) -> Tensor<2> {
        let t_next = base.t_next.expect("CFG++ reads the sampler's step: build the GuidedScore with_grid");
        difference(base).mul_scalar(weight * Self::kappa(&base.model.schedule(), t, t_next) - 1.0)
    }
}

/// `s(x|c) - s(x)`.
fn difference(base: &BaseEval) -> Tensor<2> {
    base.score.clone() - base.unconditional.clone().expect("requested: needs_unconditional")
}
