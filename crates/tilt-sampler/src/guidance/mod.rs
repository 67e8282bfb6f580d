//! One guidance rule: `s_guided(x, t) = s_base(x, t) + sum_i w_i(t) g_i(x, t)` (docs/theory.md §3).
//!
//! A guidance term is a small object ([`GuidanceTerm`]) with a weight schedule ([`WeightSchedule`]), like the
//! guiders of diffusers. [`GuidedScore`] evaluates the base model once per call, asks it for the unconditional
//! score in the SAME call when some active term needs it (CFG, APG), and adds the terms.
//!
//! Sign conventions (the papers'): `w = 0` is the base model; for reward guidance `w = 1` samples exactly
//! `p_r ∝ r p`; for CFG `s_cfg = s(x|c) + w (s(x|c) - s(x))`, which other libraries write as
//! `guidance_scale = 1 + w`.

mod attention;
mod autoguidance;
mod cfg;
mod cfg_pp;
mod classifier;
pub mod fdg;
mod negative;
mod reward;
mod training_free;

pub use attention::AttentionGuidance;
pub use autoguidance::AutoGuidance;
pub use cfg::{Apg, CfgGuidance, CfgVariant};
pub use cfg_pp::CfgPlusPlus;
pub use classifier::ClassifierGuidance;
pub use fdg::FrequencyDecoupledGuidance;
pub use negative::NegativeClassGuidance;
pub use reward::RewardGuidance;
pub use training_free::{TrainingFreeGuidance, TrainingFreeParams, TrainingFreePreset};

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use tilt_core::{Condition, Schedule, ScoreModel};

/// What the base model gave at `(x, t)`, handed to every term.
pub struct BaseEval<'a> {
    /// The base model the sampler guides.
    pub model: &'a dyn ScoreModel,
    /// The condition of the chains.
    pub condition: &'a Condition,
    /// `s_base(x, t | condition)`.
    pub score: Tensor<2>,
    /// `s_base(x, t)` unconditional, present when an active term asked for it.
    pub unconditional: Option<Tensor<2>>,
    /// The sampler step of this evaluation (Heun evaluates twice per step; the final denoise is step `steps`).
    /// Stateful terms (APG's momentum) advance once per step and start afresh when it goes back.
    pub step: usize,
    /// The time the sampler's step goes to (0 at the final denoise), when the guided score knows the grid
    /// ([`GuidedScore::with_grid`]): terms that depend on the step (CFG++) read it.
    pub t_next: Option<f64>,
}

/// A guidance term `g(x, t)`.
pub trait GuidanceTerm {
    /// Short name for logs and summaries.
    fn name(&self) -> &'static str;
    /// Whether `g` needs the base model's unconditional score; it is then computed together with the
    /// conditional one in a single model call.
    fn needs_unconditional(&self) -> bool {
        false
    }
    /// Score-model evaluations the term makes per call, in forward-pass equivalents (a backward pass counts
    /// two): the cost that [`GuidedScore::model_evaluations`] adds up.
    fn model_evaluations(&self) -> f64 {
        0.0
    }
    /// `g(x, t)`, shape `[n, d]`.
    fn term(&mut self, x: &Tensor<2>, t: f64, base: &BaseEval) -> Tensor<2>;
    /// What the term adds to the score at weight `weight`: `weight g(x, t)` for every term but those whose
    /// weight is not a plain factor (CFG++).
    fn weighted(&mut self, x: &Tensor<2>, t: f64, base: &BaseEval, weight: f64) -> Tensor<2> {
        self.term(x, t, base).mul_scalar(weight)
    }
}

/// When, and how strongly, a term acts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WeightSchedule {
    /// `w(t) = w` everywhere.
    Constant(f64),
    /// `w` for `t` in `[min(t_start, t_end), max(t_start, t_end)]`, 0 outside (guidance intervals).
    Interval {
        /// The weight inside the interval.
        w: f64,
        /// One end of the interval in `t`.
        t_start: f64,
        /// The other end.
        t_end: f64,
    },
    /// One weight per sampler step (the last one repeats when the sampler takes more steps).
    PerStep(Vec<f64>),
}

impl WeightSchedule {
    /// `w` while the noise level `sigma = sigma_t / alpha_t` (k-diffusion's and EDM's sigma; diffusers'
    /// `sqrt((1 - alphas_cumprod) / alphas_cumprod)`) lies between `sigma_start` and `sigma_end`: the interval in the
    /// time of `schedule` (sigma grows with `t`; `sigma = 0` is `t = 0`, an infinite sigma is `t = 1`).
    pub fn sigma_interval(w: f64, sigma_start: f64, sigma_end: f64, schedule: &Schedule) -> Self {
        // OU time u = ln(1 + sigma^2), without overflow for a sigma of 1e300.
        let ou = |sigma: f64| {
            let sigma = sigma.abs();
            if sigma > 1.0 { 2.0 * sigma.ln() + (sigma * sigma).recip().ln_1p() } else { (sigma * sigma).ln_1p() }
        };
        WeightSchedule::Interval {
            w,
            t_start: schedule.t_from_ou(ou(sigma_start)),
            t_end: schedule.t_from_ou(ou(sigma_end)),
        }
    }

    /// `w` while the log signal-to-noise ratio `ln(alpha_t^2 / sigma_t^2) = -2 ln sigma` lies between the two ends.
    pub fn log_snr_interval(w: f64, log_snr_start: f64, log_snr_end: f64, schedule: &Schedule) -> Self {
        // u = ln(1 + e^{-lambda}), a softplus.
        let ou = |lambda: f64| if lambda < -30.0 { -lambda + lambda.exp().ln_1p() } else { (-lambda).exp().ln_1p() };
        WeightSchedule::Interval {
            w,
            t_start: schedule.t_from_ou(ou(log_snr_start)),
            t_end: schedule.t_from_ou(ou(log_snr_end)),
        }
    }

    /// The weight at time `t` of step `step`.
    pub fn at(&self, t: f64, step: usize) -> f64 {
        match self {
            WeightSchedule::Constant(w) => *w,
            WeightSchedule::Interval { w, t_start, t_end } => {
                let (lo, hi) = (t_start.min(*t_end), t_start.max(*t_end));
                if (lo..=hi).contains(&t) { *w } else { 0.0 }
            }
            WeightSchedule::PerStep(ws) => ws.get(step).or(ws.last()).copied().unwrap_or(0.0),
        }
    }
}

/// A base score model, a condition, and weighted guidance terms: `s_base + sum_i w_i(t) g_i` (the papers' rule).
///
/// ```
/// use burn::prelude::*;
/// use tilt_core::{Condition, ExpLinearReward, GaussianMixture, MixtureScore, Schedule};
/// use tilt_sampler::guidance::{CfgGuidance, RewardGuidance};
/// use tilt_sampler::{GuidedScore, NoiseSource, Sampler, SamplerKind, TimeGrid, WeightSchedule};
///
/// // Library crates enable no backend: the caller brings the device (`Device::flex()` in the `tilt` binary).
/// fn guided_draws(device: &Device) -> (Tensor<2>, Tensor<2>) {
///     let mixture = GaussianMixture::new(
///         vec![0.5, 0.5],
///         vec![vec![-1.0, 0.0], vec![1.0, 0.0]],
///         vec![vec![0.5, 0.5], vec![0.5, 0.5]],
///         vec![vec![0], vec![1]],
///     )
///     .unwrap();
///     let schedule = Schedule::rectified_flow();
///     let sampler = Sampler::new(SamplerKind::default(), schedule, TimeGrid::LogSnr, 50);
///     // Classifier-free guidance toward class 1 at w = 2 (one batched call per step for a network).
///     let exact = MixtureScore::new(mixture.clone(), schedule, device);
///     let mut cfg = GuidedScore::new(&exact, Condition::class(1, 1000, device))
///         .with(CfgGuidance::new(), WeightSchedule::Constant(2.0));
///     let toward_class = sampler.draw(&mut cfg, 1000, 2, device, &mut NoiseSource::host(0));
///     // Reward guidance g = s_r - s with the exact tilted score: w = 1 samples p_r ∝ exp(a . x) p exactly.
///     let tilted = MixtureScore::new(mixture.tilted(&ExpLinearReward::new(vec![1.0, 0.0])), schedule, device);
///     let mut reward = GuidedScore::new(&exact, Condition::Unconditional)
///         .with(RewardGuidance::reweighted(&tilted), WeightSchedule::Constant(1.0));
///     let tilted_draws = sampler.draw(&mut reward, 1000, 2, device, &mut NoiseSource::host(1));
///     (toward_class, tilted_draws)
/// }
/// ```
pub struct GuidedScore<'a> {
    base: &'a dyn ScoreModel,
    condition: Condition,
    terms: Vec<(Box<dyn GuidanceTerm + 'a>, WeightSchedule)>,
    /// Guidance rescale `phi` (Lin et al. 2024): rescale the guided score of each row to the standard
    /// deviation of the base score, mixed with weight `phi`; 0 turns it off. Meant for CFG: on reward guidance
    /// it would break the exactness of `w = 1` (`tilt sample` refuses it there).
    rescale: f64,
    /// CFG-Zero*'s zero-init: the guided score is 0 (the model output "noise prediction 0") on steps below this.
    zero_init_steps: usize,
    /// The sampler's decreasing times, for terms that read where the step goes.
    grid: Option<Vec<f64>>,
    /// Model calls made so far (one per [`GuidedScore::score`] for the base, plus the terms' own).
    pub base_calls: usize,
    /// Score-model evaluations so far per row, in forward-pass equivalents: the base (two when the
    /// unconditional score rides along) plus what every active term reports.
    pub model_evaluations: f64,
}

impl<'a> GuidedScore<'a> {
    /// The unguided score of `base` under `condition`; add terms with [`GuidedScore::with`].
    pub fn new(base: &'a dyn ScoreModel, condition: Condition) -> Self {
        Self {
            base,
            condition,
            terms: Vec::new(),
            rescale: 0.0,
            zero_init_steps: 0,
            grid: None,
            base_calls: 0,
            model_evaluations: 0.0,
        }
    }

    /// Add a term with its weight schedule.
    pub fn with(mut self, term: impl GuidanceTerm + 'a, weight: WeightSchedule) -> Self {
        self.terms.push((Box::new(term), weight));
        self
    }

    /// Add a term chosen at run time.
    pub fn with_boxed(mut self, term: Box<dyn GuidanceTerm + 'a>, weight: WeightSchedule) -> Self {
        self.terms.push((term, weight));
        self
    }

    /// Guidance rescale (Lin et al. 2024) with factor `phi` in [0, 1], applied to CFG.
    pub fn with_rescale(mut self, phi: f64) -> Self {
        self.rescale = phi;
        self
    }

    /// CFG-Zero*'s zero-init: return 0 for the first `steps` sampler steps (no model call is made).
    pub fn with_zero_init(mut self, steps: usize) -> Self {
        self.zero_init_steps = steps;
        self
    }

    /// The sampler's time grid (`Sampler::times`): step `k` goes from `times[k]` to `times[k + 1]`, and the final
    /// denoise (step `times.len() - 1`) to 0. Terms that depend on the step (CFG++) need it.
    pub fn with_grid(mut self, times: &[f64]) -> Self {
        self.grid = Some(times.to_vec());
        self
    }

    /// The condition of the chains.
    pub fn condition(&self) -> &Condition {
        &self.condition
    }

    /// The guided score at `(x, t)` on sampler step `step`.
    pub fn score(&mut self, x: Tensor<2>, t: f64, step: usize) -> Tensor<2> {
        self.score_and_base(x, t, step).0
    }

    /// The guided score and the base model's own score `s_base(x, t | condition)` from the same call (SMC with a
    /// guided proposal weighs the one against the other).
    pub fn score_and_base(&mut self, x: Tensor<2>, t: f64, step: usize) -> (Tensor<2>, Tensor<2>) {
        if step < self.zero_init_steps {
            let zero = x.zeros_like();
            return (zero.clone(), zero);
        }
        let weights: Vec<f64> = self.terms.iter().map(|(_, w)| w.at(t, step)).collect();
        let active = |i: usize| weights[i] != 0.0;
        let need_uncond = self.terms.iter().enumerate().any(|(i, (g, _))| active(i) && g.needs_unconditional());
        self.base_calls += 1;
        self.model_evaluations += if need_uncond { 2.0 } else { 1.0 };
        let (score, unconditional) = if need_uncond {
            let (c, u) = self.base.score_and_unconditional(x.clone(), t, &self.condition);
            (c, Some(u))
        } else {
            (self.base.score(x.clone(), t, &self.condition), None)
        };
        let t_next = self.grid.as_ref().map(|g| g.get(step + 1).copied().unwrap_or(0.0));
        let eval = BaseEval { model: self.base, condition: &self.condition, score, unconditional, step, t_next };
        let mut guided = eval.score.clone();
        for (i, (term, _)) in self.terms.iter_mut().enumerate() {
            if active(i) {
                self.model_evaluations += term.model_evaluations();
                guided = guided + term.weighted(&x, t, &eval, weights[i]);
            }
        }
        if self.rescale > 0.0 && weights.iter().any(|w| *w != 0.0) {
            guided = rescale_to(guided, &eval.score, self.rescale);
        }
        (guided, eval.score)
    }
}

/// `phi * g * std(base)/std(g) + (1 - phi) * g`, row by row.
fn rescale_to(guided: Tensor<2>, base: &Tensor<2>, phi: f64) -> Tensor<2> {
    let row_std = |t: &Tensor<2>| {
        let centered = t.clone() - t.clone().mean_dim(1);
        centered.square().mean_dim(1).sqrt().clamp_min(1e-12)
    };
    let ratio = row_std(base) / row_std(&guided);
    guided.clone().mul(ratio).mul_scalar(phi) + guided.mul_scalar(1.0 - phi)
}

/// `grad_x f(x)` for a row-wise scalar function `f`, by autodiff on the input only.
///
/// The models stay on the plain device: their tensors act as constants and only `x` is tracked
/// (docs/theory.md §8). The returned gradient is a plain tensor; no graph outlives the call.
pub fn input_gradient(x: &Tensor<2>, f: impl FnOnce(Tensor<2>) -> Tensor<1>) -> Tensor<2> {
    let xa = x.clone().inner().autodiff().require_grad();
    let grads = f(xa.clone()).sum().backward();
    xa.grad(&grads).expect("the input was marked require_grad")
}
