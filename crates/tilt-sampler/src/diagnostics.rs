//! The reward-improvement identity of docs/theory.md §3.1, checked along a guided trajectory with exact scores.
//!
//! With `h_t(x) = E_p[r(X_0) | X_t = x] = E_p[r] p_{r,t}(x) / p_t(x)`, guidance `w grad log h` makes `h(Y)` a
//! submartingale with drift `w h |grad log h|^2` in OU time, so per sample
//! `R = h_end(Y) - h_start(Y) - w ∫ h |grad log h|^2 du` has mean 0. Summed over samples, that is
//! `E[r(Y^w)] - E_p[r] = w ∫ E[h_u |grad log h_u|^2] du`.

use crate::guidance::{GuidedScore, RewardGuidance, WeightSchedule};
use crate::noise::NoiseSource;
use crate::samplers::Sampler;
use burn::prelude::*;
use tilt_core::metrics::{MeanSe, mean_se};
use tilt_core::{Condition, MixtureScore, ScoreModel, tensor_ext};

/// The identity's terms, each a Monte Carlo mean with its standard error.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IdentityCheck {
    /// The guidance strength of this check.
    pub w: f64,
    /// `E[h_end(Y)] - E[h_start(Y)]`: the reward gain.
    pub gain: MeanSe,
    /// `w ∫ E[h |grad log h|^2] du` (trapezoid over the grid).
    pub integral: MeanSe,
    /// Per-sample `gain - integral`: zero in expectation.
    pub residual: MeanSe,
    /// `E[h(Y)]` at `t_max`, which is `E_p[r]` up to `alpha(t_max)`.
    pub start: MeanSe,
}

/// Run `sampler` with exact reward guidance `w (s_r - s)` and evaluate the identity on `n` trajectories.
/// `log_mean_reward` is `log E_p[r]` (exact). Use `denoise_final = false` so the last state is the grid's end.
#[allow(clippy::too_many_arguments)] // a diagnostic with the sampler's own parameters, called from two places
pub fn improvement_identity(
    base: &MixtureScore,
    reweighted: &MixtureScore,
    log_mean_reward: f64,
    w: f64,
    sampler: &Sampler,
    n: usize,
    seed: u64,
    device: &Device,
) -> IdentityCheck {
    let unc = Condition::Unconditional;
    let log_h = |x: Tensor<2>, t: f64| {
        (reweighted.log_density(x.clone(), t, &unc) - base.log_density(x, t, &unc)).add_scalar(log_mean_reward)
    };
    let grad_log_h = |x: Tensor<2>, t: f64| reweighted.score(x.clone(), t, &unc) - base.score(x, t, &unc);
    let mut g =
        GuidedScore::new(base, unc.clone()).with(RewardGuidance::reweighted(reweighted), WeightSchedule::Constant(w));
    identity_along(&mut g, &log_h, &grad_log_h, w, sampler, n, base.dim(), seed, device)
}

/// The identity for any guided score that adds `strength * grad log h` to the base, `h_t(x) = E[r(X_0) | X_t = x]`
/// under the base: `log_h` and `grad_log_h` give it at `(x, t)`. Classifier-free guidance at `w` is this with
/// `r = 1/p(c|x)`, `h = 1/p_t(c|x)` and `strength = -w`. Use `denoise_final = false` on `sampler`.
#[allow(clippy::too_many_arguments)]
pub fn identity_along(
    guided: &mut GuidedScore,
    log_h: &dyn Fn(Tensor<2>, f64) -> Tensor<1>,
    grad_log_h: &dyn Fn(Tensor<2>, f64) -> Tensor<2>,
    strength: f64,
    sampler: &Sampler,
    n: usize,
    d: usize,
    seed: u64,
    device: &Device,
) -> IdentityCheck {
    let w = strength;
    let sched = sampler.schedule;
    let (mut h_path, mut q_path, mut us): (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<f64>) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut observe = |_k: usize, t: f64, x: &Tensor<2>| {
        let h: Vec<f64> = tensor_ext::to_vec_f64(log_h(x.clone(), t)).into_iter().map(f64::exp).collect();
        let g2 = tensor_ext::to_vec_f64(grad_log_h(x.clone(), t).square().sum_dim(1));
        q_path.push(h.iter().zip(&g2).map(|(a, b)| a * b).collect());
        h_path.push(h);
        us.push(sched.ou_time(t));
    };
    let mut noise = NoiseSource::host(seed);
    sampler.sample(&mut |x, t, k| guided.score(x, t, k), n, d, device, &mut noise, &mut observe);
    let last = h_path.len() - 1;
    let integral: Vec<f64> = (0..n)
        .map(|i| w * (0..last).map(|k| 0.5 * (q_path[k][i] + q_path[k + 1][i]) * (us[k] - us[k + 1])).sum::<f64>())
        .collect();
    let gain: Vec<f64> = (0..n).map(|i| h_path[last][i] - h_path[0][i]).collect();
    let residual: Vec<f64> = gain.iter().zip(&integral).map(|(a, b)| a - b).collect();
    IdentityCheck {
        w,
        gain: mean_se(&gain),
        integral: mean_se(&integral),
        residual: mean_se(&residual),
        start: mean_se(&h_path[0]),
    }
}

/// What a perfect sampler with the final Tweedie denoise returns: `n` exact draws of `law`, noised to `t_min`
/// and denoised with the exact score of `law`. The reference for statistics that have no closed form (and for
/// the variance, which the denoise lowers by `E[Var(X_0 | X_{t_min})] <= t_min`).
pub fn perfect_denoised_samples(
    law: &tilt_core::GaussianMixture,
    schedule: tilt_core::Schedule,
    t_min: f64,
    n: usize,
    seed: u64,
    device: &Device,
) -> Vec<f32> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let d = law.dim();
    let (x0, _) = law.sample(n, &mut rng);
    let (alpha, sigma) = (schedule.alpha(t_min), schedule.sigma(t_min));
    let x0 = tensor_ext::matrix(&x0, n, d, device);
    let xt = x0.mul_scalar(alpha) + NoiseSource::host(seed ^ 0x9e37_79b9).normal(n, d, device).mul_scalar(sigma);
    let s = MixtureScore::new(law.clone(), schedule, device).score(xt.clone(), t_min, &Condition::Unconditional);
    tensor_ext::to_vec(tilt_core::score::param::clean_from_score(xt, s, alpha, sigma))
}
