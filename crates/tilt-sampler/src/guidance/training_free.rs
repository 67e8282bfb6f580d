//! The training-free guidance family as one parametrised term (TFG: Ye et al. 2024, "TFG: Unified
//! Training-Free Guidance for Diffusion Models"), written as a score term so that it composes with the rest:
//!
//! `g(x, t) = rho * grad_x log r~(x0_hat(x, t)) + (alpha / sigma^2) * Delta_0`
//!
//! - the first part differentiates through the denoiser (TFG's "variance guidance"; DPS, FreeDoM, UGD, LGD);
//! - `Delta_0` is TFG's "mean guidance": `iterations` gradient steps of size `mu * sigma(t)^2` on `log r~` taken in
//!   the space of the clean estimate, without the denoiser's Jacobian (MPGD, UGD's backward steps). Moving `x0_hat`
//!   by `Delta_0` is moving the score by `(alpha / sigma^2) Delta_0`, since `x0_hat = (x + sigma^2 s) / alpha`; the
//!   `sigma^2` in the step size (our choice; the papers tune a step per schedule) keeps that bounded as `t -> 0`,
//!   where one step moves the score by `alpha * mu * grad log r`, which is the exact tilt's guidance term at `t = 0`;
//! - `r~` is the reward smoothed over `x0_hat + smoothing * sigma(t) * xi`, `xi ~ N(0, I)`, estimated with
//!   `smoothing_samples` draws (LGD's Monte Carlo estimate of `E[r(X_0) | x_t]`; the width shrinks with `sigma`);
//! - TFG's recurrence (FreeDoM's "time travel") belongs to the sampler: `Sampler::recurrence`.
//!
//! `normalise` rescales the gradient part of each row to unit root-mean-square per coordinate, so that the
//! strength `w` is a step length (DPS's normalised step; DPS divides by the measurement residual `||y - A x0||`,
//! which a general reward does not have, so the gradient's own norm stands in for it).

use super::{BaseEval, GuidanceTerm, input_gradient};
use crate::NoiseSource;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use tilt_core::Reward;
use tilt_core::score::param;

/// The TFG hyper-parameters. `Default` is plain reward-gradient guidance (`rho = 1`, nothing else).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingFreeParams {
    /// Weight of the gradient through the denoiser.
    pub rho: f64,
    /// Step size of the clean-space steps, in units of `sigma(t)^2`.
    pub mu: f64,
    /// Number of clean-space steps (0 turns mean guidance off).
    pub iterations: usize,
    /// Smoothing width in units of `sigma(t)` (0: no smoothing).
    pub smoothing: f64,
    /// Draws of the smoothing estimate.
    pub smoothing_samples: usize,
    /// Rescale the gradient part to unit RMS per coordinate.
    pub normalise: bool,
}

impl Default for TrainingFreeParams {
    fn default() -> Self {
        Self { rho: 1.0, mu: 0.0, iterations: 0, smoothing: 0.0, smoothing_samples: 1, normalise: false }
    }
}

/// The named members of the family: the papers' choices translated to a reward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainingFreePreset {
    /// `grad_x log r(x0_hat)`: the unnormalised gradient through the denoiser.
    RewardGradient,
    /// DPS (Chung et al. 2023): the gradient through the denoiser, normalised per row.
    Dps,
    /// FreeDoM (Yu et al. 2023): the gradient through the denoiser, with time travel (run it with
    /// `Sampler::recurrence` > 1).
    Freedom,
    /// MPGD (He et al. 2024): one step in clean space, no Jacobian of the denoiser.
    Mpgd,
    /// Universal guidance (Bansal et al. 2023): forward gradient plus several backward clean-space steps, with
    /// recurrence.
    Ugd,
    /// LGD (Song et al. 2023): the gradient of the Monte Carlo smoothed reward `log E[r(x0_hat + sigma xi)]`.
    Lgd,
}

impl TrainingFreePreset {
    /// Every preset, for listings and tests.
    pub const ALL: [TrainingFreePreset; 6] = [
        TrainingFreePreset::RewardGradient,
        TrainingFreePreset::Dps,
        TrainingFreePreset::Freedom,
        TrainingFreePreset::Mpgd,
        TrainingFreePreset::Ugd,
        TrainingFreePreset::Lgd,
    ];

    /// The TFG parameters this preset stands for.
    pub fn params(&self) -> TrainingFreeParams {
        let base = TrainingFreeParams::default();
        match self {
            TrainingFreePreset::RewardGradient | TrainingFreePreset::Freedom => base,
            TrainingFreePreset::Dps => TrainingFreeParams { normalise: true, ..base },
            TrainingFreePreset::Mpgd => TrainingFreeParams { rho: 0.0, mu: 1.0, iterations: 1, ..base },
            TrainingFreePreset::Ugd => TrainingFreeParams { mu: 0.5, iterations: 3, ..base },
            TrainingFreePreset::Lgd => TrainingFreeParams { smoothing: 1.0, smoothing_samples: 8, ..base },
        }
    }

    /// The sampler recurrence the method was published with (FreeDoM's and UGD's time travel).
    pub fn recurrence(&self) -> usize {
        match self {
            TrainingFreePreset::Freedom | TrainingFreePreset::Ugd => 2,
            _ => 1,
        }
    }
}

/// The most Monte Carlo draws per chain and step for the smoothed reward (LGD uses 8).
pub const MAX_SMOOTHING_SAMPLES: usize = 256;
/// The most clean-space gradient steps per sampler step (UGD uses 3).
pub const MAX_ITERATIONS: usize = 100;

impl TrainingFreeParams {
    /// Check the parameters; names the field (under `prefix`) on failure.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        for (name, v) in [("rho", self.rho), ("mu", self.mu), ("smoothing", self.smoothing)] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{prefix}.{name}: expected a finite value >= 0, got {v}"));
            }
        }
        // Each smoothing draw is a copy of the batch and each iteration a gradient pass, at every step.
        if self.smoothing_samples > MAX_SMOOTHING_SAMPLES {
            return Err(format!(
                "{prefix}.smoothing_samples: expected at most {MAX_SMOOTHING_SAMPLES} draws, got {}",
                self.smoothing_samples
            ));
        }
        if self.iterations > MAX_ITERATIONS {
            return Err(format!("{prefix}.iterations: expected at most {MAX_ITERATIONS}, got {}", self.iterations));
        }
        if self.smoothing > 0.0 && self.smoothing_samples == 0 {
            return Err(format!("{prefix}.smoothing_samples: expected at least 1 draw when smoothing > 0"));
        }
        if self.rho == 0.0 && (self.mu == 0.0 || self.iterations == 0) {
            return Err(format!("{prefix}: rho = 0 and no clean-space steps (mu, iterations): the term would be 0"));
        }
        Ok(())
    }

    /// Model evaluations per call, counting a backward pass as two forward passes (the usual rule of thumb).
    pub fn model_evaluations(&self) -> f64 {
        if self.rho > 0.0 { 3.0 } else { 0.0 }
    }
}

/// The TFG term over a reward.
pub struct TrainingFreeGuidance<'a> {
    reward: &'a dyn Reward,
    params: TrainingFreeParams,
    noise: NoiseSource,
}

impl<'a> TrainingFreeGuidance<'a> {
    /// `seed` drives the smoothing draws (host RNG: the same numbers on every backend).
    pub fn new(reward: &'a dyn Reward, params: TrainingFreeParams, seed: u64) -> Self {
        Self { reward, params, noise: NoiseSource::host(seed) }
    }

    /// Plain reward-gradient guidance, `grad_x log r(x0_hat(x, t))` (the DPS-style baseline, unnormalised).
    pub fn reward_gradient(reward: &'a dyn Reward) -> Self {
        Self::new(reward, TrainingFreeParams::default(), 0)
    }

    /// The training-free term of `preset` for `reward`, its Monte Carlo draws seeded by `seed`.
    pub fn preset(reward: &'a dyn Reward, preset: TrainingFreePreset, seed: u64) -> Self {
        Self::new(reward, preset.params(), seed)
    }

    /// `log r~(x0)` per row: the reward, or the log of its Monte Carlo smoothing with the draws `xi`.
    fn smoothed_log_reward(&self, x0: Tensor<2>, xi: &Option<Tensor<2>>) -> Tensor<1> {
        let Some(xi) = xi else { return self.reward.log_reward(x0) };
        let [n, d] = x0.dims();
        let m = self.params.smoothing_samples;
        let repeated = x0.unsqueeze_dim::<3>(0).repeat_dim(0, m).reshape([m * n, d]);
        let lr = self.reward.log_reward(repeated + xi.clone()).reshape([m, n]);
        let max = lr.clone().max_dim(0).detach();
        ((lr - max.clone()).exp().mean_dim(0).log() + max).reshape([n])
    }
}

impl GuidanceTerm for TrainingFreeGuidance<'_> {
    fn name(&self) -> &'static str {
        "training-free"
    }
    fn model_evaluations(&self) -> f64 {
        self.params.model_evaluations()
    }
    fn term(&mut self, x: &Tensor<2>, t: f64, base: &BaseEval) -> Tensor<2> {
        let p = self.params.clone();
        let sched = base.model.schedule();
        let (alpha, sigma) = (sched.alpha(t), sched.sigma(t));
        let [n, d] = x.dims();
        let xi = (p.smoothing > 0.0)
            .then(|| self.noise.normal(p.smoothing_samples * n, d, &x.device()).mul_scalar(p.smoothing * sigma));
        // Each part only when it is on: no zero tensor to add to on the sampler's every step.
        let through = (p.rho > 0.0).then(|| {
            let grad = input_gradient(x, |xa| {
                let s = base.model.score(xa.clone(), t, base.condition);
                self.smoothed_log_reward(param::clean_from_score(xa, s, alpha, sigma), &xi)
            });
            let grad = if p.normalise {
                let rms = grad.clone().square().mean_dim(1).sqrt().clamp_min(1e-12);
                grad / rms
            } else {
                grad
            };
            grad.mul_scalar(p.rho)
        });
        let clean = (p.mu > 0.0 && p.iterations > 0).then(|| {
            let x0 = param::clean_from_score(x.clone(), base.score.clone(), alpha, sigma);
            let mut delta = x.zeros_like();
            for _ in 0..p.iterations {
                let step = input_gradient(&(x0.clone() + delta.clone()), |z| self.smoothed_log_reward(z, &xi));
                delta = delta + step.mul_scalar(p.mu * sigma * sigma);
            }
            delta.mul_scalar(alpha / (sigma * sigma))
        });
        match (through, clean) {
            (Some(a), Some(b)) => a + b,
            (Some(a), None) | (None, Some(a)) => a,
            // validate() refuses a term with neither part; a hand-built one contributes nothing.
            (None, None) => x.zeros_like(),
        }
    }
}
