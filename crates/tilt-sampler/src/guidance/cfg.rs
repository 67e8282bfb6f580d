//! Classifier-free guidance: `g = s(x | c) - s(x)`, so `s_base + w g` is `s(x|c) + w (s(x|c) - s(x))`.
//!
//! In the unified view this is reward guidance with the cost `r = 1/p(c|x)` at strength `-w`. The variants, with
//! `c = s(x|c)` and `u = s(x)` per row (the formulas of diffusers' guiders, in the papers' `w = guidance_scale - 1`):
//! - APG (Sadat et al. 2024) reshapes the difference in the clean-sample space ([`Apg`]); APG-Mix runs plain CFG
//!   until a step, then APG, with the momentum buffer fed from the first step;
//! - CFG-Zero* (Fan et al. 2025): `g = c - a u`, `a = <c, u> / |u|^2` (the optimised scale); its zero-init is
//!   [`crate::GuidedScore::with_zero_init`];
//! - tangential CFG (TCFG, Kwon et al. 2025): `u` keeps only its component along the first right-singular vector of
//!   the 2 x d matrix `[c; u]`, dropping the direction in which `c` and `u` disagree;
//! - MAMBO-G (magnitude-aware): `g = e^{-alpha |c - u| / |u|} (c - u)`, which damps guidance where the
//!   difference is large relative to the unconditional score (early, noisy steps).

use super::{BaseEval, GuidanceTerm};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Adaptive projected guidance options. The difference `D = x0(x|c) - x0(x)` of the Tweedie denoises is
/// (1) accumulated with momentum `D <- D + momentum * D_prev`, (2) clipped to norm `norm_threshold` per row,
/// (3) split into the part parallel to `x0(x|c)` and the orthogonal rest, keeping `eta` of the parallel part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apg {
    /// The weight kept of the component parallel to the conditional prediction (0 drops it).
    #[serde(default)]
    pub eta: f64,
    /// The largest norm of the update per sample; larger ones are scaled down (0: no limit).
    #[serde(default)]
    pub norm_threshold: f64,
    /// The momentum of the running average of the difference (negative values push away from the average).
    #[serde(default)]
    pub momentum: f64,
}

impl Apg {
    /// Check the parameters; names the field (under `prefix`, e.g. `guidance.apg`) on failure.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        for (name, v) in [("eta", self.eta), ("norm_threshold", self.norm_threshold), ("momentum", self.momentum)] {
            if !v.is_finite() {
                return Err(format!("{prefix}.{name}: expected a finite value, got {v}"));
            }
        }
        // The momentum buffer grows without bound unless |momentum| < 1 (APG uses negative values such as -0.5),
        // and eta scales the parallel component (0 removes it, 1 keeps it).
        if self.momentum.abs() >= 1.0 {
            return Err(format!("{prefix}.momentum: expected a value in (-1, 1), got {}", self.momentum));
        }
        if self.eta.abs() > 100.0 {
            return Err(format!("{prefix}.eta: expected a value in [-100, 100], got {}", self.eta));
        }
        if self.norm_threshold < 0.0 {
            return Err(format!(
                "{prefix}.norm_threshold: expected a value >= 0 (0 turns clipping off), got {}",
                self.norm_threshold
            ));
        }
        Ok(())
    }
}

/// APG's momentum buffer, advanced once per sampler step (not per evaluation: Heun evaluates twice).
#[derive(Default)]
struct Momentum {
    step: Option<usize>,
    /// The buffer as it was when the current step began, and as this step left it.
    before: Option<Tensor<2>>,
    after: Option<Tensor<2>>,
}

impl Momentum {
    /// `d + beta * buffer`, where the buffer is the previous step's result; a step index that goes back starts a
    /// new run with an empty buffer.
    fn apply(&mut self, d: Tensor<2>, beta: f64, step: usize) -> Tensor<2> {
        match self.step {
            Some(k) if k == step => {}
            Some(k) if k < step => self.before = self.after.take(),
            _ => (self.before, self.after) = (None, None),
        }
        self.step = Some(step);
        let d = match &self.before {
            Some(prev) => d + prev.clone().mul_scalar(beta),
            None => d,
        };
        self.after = Some(d.clone());
        d
    }
}

/// How the unconditional score enters the difference (the CFG variants other than APG).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "variant", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CfgVariant {
    /// `g = c - u`.
    #[default]
    Plain,
    /// CFG-Zero*'s optimised scale: `g = c - a u`, `a = <c, u> / |u|^2` per row.
    ZeroStar,
    /// Tangential CFG: `u` projected on the first right-singular vector of `[c; u]`.
    Tangential,
    /// MAMBO-G: `g = e^{-alpha |c - u| / |u|} (c - u)` (diffusers' default `alpha = 8`).
    MagnitudeAware {
        /// How fast the weight falls with the relative size of the update.
        alpha: f64,
    },
}

/// Classifier-free guidance `g = s(x|c) - s(x)` and its variants, evaluated in one batched model call.
#[derive(Default)]
pub struct CfgGuidance {
    variant: CfgVariant,
    apg: Option<Apg>,
    /// APG-Mix: the first step at which APG replaces plain CFG (0: APG throughout).
    apg_start_step: usize,
    momentum: Momentum,
}

impl CfgGuidance {
    /// Plain CFG.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adaptive projected guidance with these settings.
    pub fn with_apg(apg: Apg) -> Self {
        Self { apg: Some(apg), ..Self::default() }
    }
    /// APG-Mix: plain CFG before `start_step`, APG from it on (the momentum runs from step 0).
    pub fn apg_mix(apg: Apg, start_step: usize) -> Self {
        Self { apg: Some(apg), apg_start_step: start_step, ..Self::default() }
    }
    /// CFG in one of its published variants.
    pub fn variant(variant: CfgVariant) -> Self {
        Self { variant, ..Self::default() }
    }
    /// The same guidance with the unconditional score entering as `variant` says.
    pub fn with_variant(self, variant: CfgVariant) -> Self {
        Self { variant, ..self }
    }
}

/// Row-wise dot product, `[n, 1]`.
fn dot(a: &Tensor<2>, b: &Tensor<2>) -> Tensor<2> {
    (a.clone() * b.clone()).sum_dim(1)
}

/// `c - u'` for the variant's `u'`.
fn difference(variant: CfgVariant, c: &Tensor<2>, u: Tensor<2>) -> Tensor<2> {
    match variant {
        CfgVariant::Plain => c.clone() - u,
        CfgVariant::ZeroStar => {
            let a = dot(c, &u) / (dot(&u, &u) + 1e-8);
            c.clone() - u * a
        }
        CfgVariant::Tangential => {
            // The top eigenvector (p, q) of the Gram matrix [[cc, cu], [cu, uu]] gives the first right-singular
            // vector v ∝ p c + q u; of its two closed forms, (l - uu, cu) is nonzero when cc >= uu and (cu, l - cc)
            // when uu >= cc.
            let (cc, cu, uu) = (dot(c, c), dot(c, &u), dot(&u, &u));
            let half_gap = (cc.clone() - uu.clone()).mul_scalar(0.5);
            let l = (cc.clone() + uu.clone()).mul_scalar(0.5) + (half_gap.square() + cu.clone().square()).sqrt();
            let first = cc.clone().greater_equal(uu.clone());
            let p = cu.clone().mask_where(first.clone(), l.clone() - uu);
            let q = (l - cc).mask_where(first, cu);
            let v = c.clone() * p + u.clone() * q;
            let along = dot(&u, &v) / (dot(&v, &v) + 1e-30);
            c.clone() - v * along
        }
        CfgVariant::MagnitudeAware { alpha } => {
            let d = c.clone() - u.clone();
            let ratio = dot(&d, &d).sqrt() / dot(&u, &u).sqrt().clamp_min(1e-12);
            d * ratio.mul_scalar(-alpha).exp()
        }
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
        let diff = difference(self.variant, &base.score, uncond);
        let Some(apg) = &self.apg else { return diff };
        // Work in clean-sample space: x0 = (x + sigma^2 s) / alpha, so D0 = (sigma^2 / alpha) diff.
        let sched = base.model.schedule();
        let (alpha, sigma2) = (sched.alpha(t), 1.0 - sched.alpha_sq(t));
        let to_x0 = sigma2 / alpha;
        let mut d0 = diff.clone().mul_scalar(to_x0);
        if apg.momentum != 0.0 {
            d0 = self.momentum.apply(d0, apg.momentum, base.step);
        }
        if base.step < self.apg_start_step {
            // APG-Mix before its start: plain CFG (the momentum above has been fed all the same).
            return diff;
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
