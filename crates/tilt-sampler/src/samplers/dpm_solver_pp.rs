//! DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
//! Models"): multistep solvers in the data prediction `x0_hat`, the samplers diffusers recommends for guided
//! sampling. Written on the half log-SNR `lambda = ln(alpha/sigma)`, with `h = lambda' - lambda > 0`:
//! - 2M (probability-flow ODE): `x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) D`;
//! - 2M SDE (the reverse SDE, integrated exactly with `D` frozen):
//!   `x' = (sigma'/sigma) e^{-h} x + alpha' (1 - e^{-2h}) D + sigma' sqrt(1 - e^{-2h}) xi`;
//!
//! where `D = x0_k + (x0_k - x0_{k-1}) / (2 r)`, `r = h_{k-1} / h_k`, is the second-order (midpoint) estimate of the
//! denoise over the step from the previous one; the first step, and the last one on grids of fewer than 15 steps
//! (diffusers' `lower_order_final`, which keeps few-step runs stable), use `D = x0_k`.

use super::single_step::noise_like;
use super::{ScoreFn, Solver, StepPoint};
use crate::noise::NoiseSource;
use burn::prelude::*;
use tilt_core::score::param;

/// Below this many steps the final step is first order (diffusers' `lower_order_final` with
/// `final_sigmas_type = "sigma_min"`; k-diffusion keeps it second order). On the exact mixture this is the more
/// accurate choice at 10 steps.
const LOWER_ORDER_FINAL_BELOW: usize = 15;

/// DPM-Solver++ 2M, deterministic or SDE. Holds the previous step's denoise: one value per run.
pub(super) struct DpmSolverPp2M {
    stochastic: bool,
    steps: usize,
    /// `(x0_{k-1}, h_{k-1})` of the previous step.
    previous: Option<(Tensor<2>, f64)>,
}

impl DpmSolverPp2M {
    pub(super) fn new(stochastic: bool, steps: usize) -> Self {
        Self { stochastic, steps, previous: None }
    }
}

impl Solver for DpmSolverPp2M {
    fn step(&mut self, p: &StepPoint, score: &mut ScoreFn, x: Tensor<2>, noise: &mut NoiseSource) -> Tensor<2> {
        let x0 = param::clean_from_score(x.clone(), score(x.clone(), p.t, p.k), p.alpha, p.sigma);
        let h = p.lambda_next - p.lambda;
        let last = p.k + 1 == self.steps;
        let d = match self.previous.take() {
            Some((x0_prev, h_prev)) if !(last && self.steps < LOWER_ORDER_FINAL_BELOW) => {
                let half_over_r = 0.5 * h / h_prev;
                x0.clone().mul_scalar(1.0 + half_over_r) - x0_prev.mul_scalar(half_over_r)
            }
            _ => x0.clone(),
        };
        self.previous = Some((x0, h));
        if self.stochastic {
            let e = (-h).exp();
            let one_minus_e2 = -(-2.0 * h).exp_m1();
            x.clone().mul_scalar(p.sigma_next / p.sigma * e)
                + d.mul_scalar(p.alpha_next * one_minus_e2)
                + noise_like(&x, noise).mul_scalar(p.sigma_next * one_minus_e2.sqrt())
        } else {
            x.mul_scalar(p.sigma_next / p.sigma) + d.mul_scalar(-p.alpha_next * (-h).exp_m1())
        }
    }
}
