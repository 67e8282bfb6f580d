//! The one-step samplers: each a function of the current point alone, with no memory between steps.
//!
//! In OU time `u = -ln alpha^2`, where every VP schedule is the same process `dX = -X/2 du + dW`; with
//! `h = u_k - u_{k+1} > 0` and `s` the (guided) score at `(x, t_k)`:
//! - Euler-Maruyama of the reverse SDE: `x + h (x/2 + s) + sqrt(h) xi`;
//! - exponential integrator of the same SDE with the score frozen: `e^{h/2} x + 2 (e^{h/2} - 1) s + sqrt(e^h - 1) xi`.
//!   The score holds the stiff part `-x/sigma^2`, so this step over-disperses (docs/theory.md §2);
//! - SDE-DPM-Solver-1: the same SDE integrated exactly with the noise prediction `eps_hat` frozen; on the half
//!   log-SNR `lambda = ln(alpha/sigma)`, `x' = (alpha'/alpha) x - 2 sigma' (e^{dl} - 1) eps_hat
//!   + sigma' sqrt(e^{2 dl} - 1) xi` with `dl = lambda' - lambda`;
//! - DDPM ancestral: a draw from the Gaussian posterior `q(x_{t'} | x_t, x0_hat)`, which is the exact step of the
//!   SDE with the denoise `x0_hat` frozen;
//! - probability-flow ODE `dx/dv = (x + s)/2`, Heun's second-order method;
//! - DDIM: the exact step of that ODE when the noise prediction is held fixed;
//! - flow matching's Euler step: `x' = x + (t' - t) v` in the interpolant's own coordinates `x = c y`, with the
//!   velocity `v = alpha' x0_hat + sigma' eps_hat` read off the score.

use super::{ScoreFn, Solver, StepPoint};
use crate::noise::NoiseSource;
use burn::prelude::*;
use tilt_core::Prediction;
use tilt_core::score::param;

/// A step function with no state between steps.
pub(super) type StepFn = fn(&StepPoint, &mut ScoreFn, Tensor<2>, &mut NoiseSource) -> Tensor<2>;

/// A one-step sampler as a [`Solver`].
pub(super) struct Memoryless(pub StepFn);

impl Solver for Memoryless {
    fn step(&mut self, p: &StepPoint, score: &mut ScoreFn, x: Tensor<2>, noise: &mut NoiseSource) -> Tensor<2> {
        (self.0)(p, score, x, noise)
    }
}

pub(super) fn noise_like(x: &Tensor<2>, noise: &mut NoiseSource) -> Tensor<2> {
    let [n, d] = x.dims();
    noise.normal(n, d, &x.device())
}

pub(super) fn euler_maruyama(p: &StepPoint, score: &mut ScoreFn, x: Tensor<2>, noise: &mut NoiseSource) -> Tensor<2> {
    let s = score(x.clone(), p.t, p.k);
    let xi = noise_like(&x, noise);
    x.clone() + (x.mul_scalar(0.5) + s).mul_scalar(p.h) + xi.mul_scalar(p.h.sqrt())
}

pub(super) fn exponential_integrator(
    p: &StepPoint,
    score: &mut ScoreFn,
    x: Tensor<2>,
    noise: &mut NoiseSource,
) -> Tensor<2> {
    let s = score(x.clone(), p.t, p.k);
    let xi = noise_like(&x, noise);
    let e = (p.h / 2.0).exp();
    x.mul_scalar(e) + s.mul_scalar(2.0 * (e - 1.0)) + xi.mul_scalar(p.h.exp_m1().sqrt())
}

pub(super) fn sde_dpm_solver_1(p: &StepPoint, score: &mut ScoreFn, x: Tensor<2>, noise: &mut NoiseSource) -> Tensor<2> {
    let eps = param::noise_from_score(score(x.clone(), p.t, p.k), p.sigma);
    let xi = noise_like(&x, noise);
    // e^{dl} = (alpha'/sigma') / (alpha/sigma) > 1 on a decreasing grid.
    let e = (p.alpha_next * p.sigma) / (p.sigma_next * p.alpha);
    x.mul_scalar(p.alpha_next / p.alpha) - eps.mul_scalar(2.0 * p.sigma_next * (e - 1.0))
        + xi.mul_scalar(p.sigma_next * (e * e - 1.0).max(0.0).sqrt())
}

pub(super) fn ddpm_ancestral(p: &StepPoint, score: &mut ScoreFn, x: Tensor<2>, noise: &mut NoiseSource) -> Tensor<2> {
    let s = score(x.clone(), p.t, p.k);
    let x0 = param::clean_from_score(x.clone(), s, p.alpha, p.sigma);
    // q(x_{t'} | x_t, x0): alpha_{t|t'} = alpha / alpha', sigma_{t|t'}^2 = sigma^2 - alpha_{t|t'}^2 sigma'^2.
    let (s2, sn2) = (p.sigma * p.sigma, p.sigma_next * p.sigma_next);
    let a_ts = p.alpha / p.alpha_next;
    let var_ts = s2 - a_ts * a_ts * sn2;
    let mean = x.clone().mul_scalar(a_ts * sn2 / s2) + x0.mul_scalar(p.alpha_next * var_ts / s2);
    let std = (var_ts * sn2 / s2).max(0.0).sqrt();
    mean + noise_like(&x, noise).mul_scalar(std)
}

pub(super) fn heun(p: &StepPoint, score: &mut ScoreFn, x: Tensor<2>, _noise: &mut NoiseSource) -> Tensor<2> {
    let drift = |x: Tensor<2>, s: Tensor<2>| (x + s).mul_scalar(0.5);
    let d1 = drift(x.clone(), score(x.clone(), p.t, p.k));
    let x_euler = x.clone() + d1.clone().mul_scalar(p.h);
    let d2 = drift(x_euler.clone(), score(x_euler, p.t_next, p.k + 1));
    x + (d1 + d2).mul_scalar(p.h / 2.0)
}

pub(super) fn ddim(p: &StepPoint, score: &mut ScoreFn, x: Tensor<2>, _noise: &mut NoiseSource) -> Tensor<2> {
    let s = score(x.clone(), p.t, p.k);
    let eps = param::noise_from_score(s.clone(), p.sigma);
    let x0 = param::clean_from_score(x, s, p.alpha, p.sigma);
    x0.mul_scalar(p.alpha_next) + eps.mul_scalar(p.sigma_next)
}

pub(super) fn flow_match_euler(
    p: &StepPoint,
    score: &mut ScoreFn,
    y: Tensor<2>,
    _noise: &mut NoiseSource,
) -> Tensor<2> {
    let s = score(y.clone(), p.t, p.k);
    let scale = |q: &tilt_core::Interpolant| (q.alpha * q.alpha + q.sigma * q.sigma).sqrt();
    let (c, c_next) = (scale(&p.interpolant), scale(&p.interpolant_next));
    // On the interpolant: x = c y and grad_x log p = s / c.
    let x = y.mul_scalar(c);
    let v = Prediction::Velocity.from_score(x.clone(), s.mul_scalar(1.0 / c), p.interpolant);
    (x + v.mul_scalar(p.t_next - p.t)).mul_scalar(1.0 / c_next)
}
