//! `guidance.target`: the strength chosen by the reward-improvement identity (docs/theory.md §3.1) instead of a grid
//! search.
//!
//! Along the chain guided at `w`, `E[r(Y^w)] - E_p[r] = w I(w)` with `I(w) = ∫ E[h_u |grad log h_u|^2] du`, the
//! expectation under the guided chain. One pilot at `w_k` measures `I(w_k)` (a Monte Carlo mean with its standard
//! error); the strength that reaches the target gain `G` solves `w = G / I(w)`, iterated from the pilot's strength:
//! `w_{k+1} = G / I(w_k)`, until two successive strengths agree within the pilot's own error. CFG is reward guidance
//! with `r = 1/p(c|x)` (`h = 1/p_t(c|x)`) at strength `-w`, so `E[1/p(c|Y)] - 1/p(c) = -w I(w)`. Both need `h` in
//! closed form: the exact mixture.

use super::Problem;
use crate::config::{GuidanceKind, SampleConfig};
use anyhow::{Result, bail};
use burn::prelude::*;
use serde::Serialize;
use tilt_core::metrics::MeanSe;
use tilt_core::{Condition, MixtureScore, Schedule, ScoreModel};
use tilt_sampler::guidance::CfgGuidance;
use tilt_sampler::{GuidedScore, Sampler, WeightSchedule};

/// One pilot run: its strength, the gain integral there, and the gain the identity predicts at that strength.
#[derive(Clone, Debug, Serialize)]
pub struct Pilot {
    pub w: f64,
    /// `I(w) = ∫ E[h |grad log h|^2] du` along the chain guided at `w`.
    pub integral: MeanSe,
    /// `E[r(Y^w)] - E_p[r]` measured along the same chain (`h_end - h_start`): equal to `w I(w)` within error.
    pub measured_gain: MeanSe,
}

/// How the strength was chosen.
#[derive(Clone, Debug, Serialize)]
pub struct StrengthChoice {
    /// `mean_reward` or `inv_class_prob`.
    pub quantity: &'static str,
    pub target: f64,
    /// The value at `w = 0` (`E_p[r]`, or `1/p(c)`).
    pub unguided: f64,
    pub pilots: Vec<Pilot>,
    /// The strength sampled: the last pilot's prediction.
    pub chosen_w: f64,
    /// Its uncertainty from the last pilot's integral: `|w| SE(I) / I`.
    pub chosen_w_se: f64,
}

/// Choose the strength for `cfg.guidance.target` on `mixture` with `sampler` (its final denoise is not used by the
/// pilots: the identity ends at the grid's last time).
pub fn choose(
    cfg: &SampleConfig,
    problem: &Problem,
    schedule: Schedule,
    sampler: &Sampler,
    device: &Device,
) -> Result<StrengthChoice> {
    let target = cfg.guidance.target.as_ref().expect("called with a target");
    let n = target.pilot_samples.unwrap_or(cfg.samples.min(4000));
    let pilot_sampler = Sampler { denoise_final: false, ..sampler.clone() };
    let d = problem.mixture.dim();
    let unc = Condition::Unconditional;
    // The exact scores every pilot uses, built once: the base law `p(.|class)` or `p` and its tilt by `r` (reward
    // guidance), or the full mixture with its class posteriors (CFG).
    let reward = cfg.reward.as_ref().and_then(|r| r.exp_linear());
    let (quantity, goal, unguided, sign) = match (cfg.guidance.kind(), &reward) {
        (GuidanceKind::Reward, Some(r)) => {
            ("mean_reward", target.mean_reward.expect("validated"), problem.base_law.mean_reward(r), 1.0)
        }
        _ => {
            let c = cfg.class.expect("validated: cfg has a class");
            ("inv_class_prob", target.inv_class_prob.expect("validated"), 1.0 / problem.mixture.class_prior(c), -1.0)
        }
    };
    let base = MixtureScore::new(problem.base_law.clone(), schedule, device);
    let tilted = reward.as_ref().map(|r| MixtureScore::new(problem.base_law.tilted(r), schedule, device));
    let full = MixtureScore::new(problem.mixture.clone(), schedule, device);
    let gain = goal - unguided;
    if gain * sign <= 0.0 {
        bail!(
            "guidance.target.{quantity}: {goal:?} is on the wrong side of the unguided value {unguided:.6} (guidance {} it)",
            if sign > 0.0 { "raises" } else { "lowers" }
        );
    }
    let mut w = cfg.guidance.papers_w(cfg.guidance.strengths[0]);
    let mut pilots = Vec::new();
    let mut w_se = f64::NAN;
    for k in 0..target.pilots {
        let seed = cfg.seed ^ (0x9170 + k as u64);
        let check = match (&tilted, cfg.class) {
            (Some(tilted), _) if sign > 0.0 => tilt_sampler::diagnostics::improvement_identity(
                &base,
                tilted,
                unguided.ln(),
                w,
                &pilot_sampler,
                n,
                seed,
                device,
            ),
            (_, c) => {
                let c = c.expect("validated: cfg has a class");
                // h = 1/p_t(c|x), grad log h = s(x) - s(x|c).
                let log_h = |x: Tensor<2>, t: f64| {
                    let [rows, _] = x.dims();
                    full.class_log_posteriors(x, t).narrow(1, c, 1).reshape([rows]).neg()
                };
                let grad_log_h = |x: Tensor<2>, t: f64| {
                    let rows = x.dims()[0];
                    full.score(x.clone(), t, &unc) - full.score(x, t, &Condition::class(c, rows, device))
                };
                let mut guided = GuidedScore::new(&full, Condition::class(c, n, device))
                    .with(CfgGuidance::new(), WeightSchedule::Constant(w));
                tilt_sampler::diagnostics::identity_along(
                    &mut guided,
                    &log_h,
                    &grad_log_h,
                    -w,
                    &pilot_sampler,
                    n,
                    d,
                    seed,
                    device,
                )
            }
        };
        // integral = strength * I: recover I (positive) and its SE.
        let strength = sign * w;
        let i = MeanSe { mean: check.integral.mean / strength, se: check.integral.se / strength.abs() };
        pilots.push(Pilot { w, integral: i, measured_gain: check.gain });
        if !(i.mean.is_finite() && i.mean > 0.0) {
            bail!(
                "guidance.target.{quantity}: the gain integral at w = {w:?} came out {:?} (no gain to extrapolate from)",
                i.mean
            );
        }
        let next = gain / (sign * i.mean);
        if !(next.is_finite() && next.abs() <= crate::config::MAX_STRENGTH) {
            bail!(
                "guidance.target.{quantity}: {goal:?} needs a strength beyond ±{} (the pilot at w = {w:?} predicts {next:?})",
                crate::config::MAX_STRENGTH
            );
        }
        w_se = next.abs() * i.se / i.mean;
        let settled = (next - w).abs() <= w_se.max(1e-3 * next.abs());
        w = next;
        if settled {
            break;
        }
    }
    Ok(StrengthChoice { quantity, target: goal, unguided, pilots, chosen_w: w, chosen_w_se: w_se })
}
