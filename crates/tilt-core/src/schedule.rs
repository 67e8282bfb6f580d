//! Noise schedules: the Gaussian interpolants `X_t = alpha(t) X_0 + sigma(t) Z`, `t in [0, 1]`.
//!
//! Four families, each under its config name: `linear` (the papers' `sigma^2 = t`), `cosine` (Nichol & Dhariwal),
//! `discrete` (a DDPM beta table, as diffusers computes it) and `rectified-flow` (flow matching's `alpha = 1 - t`,
//! `sigma = t`, with SD3's shift). Only the first three are variance-preserving.
//!
//! **One sampler for all of them.** Any interpolant is a rescaled variance-preserving one: with
//! `c(t) = sqrt(alpha^2 + sigma^2)`, `Y_t = X_t / c(t) = (alpha/c) X_0 + (sigma/c) Z` has `(alpha/c)^2 + (sigma/c)^2 = 1`,
//! and its score is `grad log p_Y(y) = c grad log p_X(c y)`. Two schedules with the same log-SNR
//! `ln(alpha^2/sigma^2)` at `t` have the same `Y_t`. So [`Schedule::alpha`], [`Schedule::sigma`],
//! [`Schedule::ou_time`] and the rest describe that **variance-preserving form**, which is all a sampler, a grid,
//! a guidance term or the exact mixture oracle needs; [`Schedule::interpolant`] gives the interpolant itself (what a
//! network is trained on and fed), and [`Schedule::scale`] the factor `c(t)` between the two (1 for VP schedules).
//! Every VP process is the Ornstein-Uhlenbeck process `dY = -Y/2 du + dW_u` run in OU time `u = -ln alpha_vp(t)^2`;
//! a schedule is then only the map `t -> u`.

use serde::{Deserialize, Serialize};
use std::f64::consts::FRAC_PI_2;
use std::sync::{Arc, Mutex, OnceLock};

/// The largest cosine offset `s` (0.008 is Nichol & Dhariwal's).
pub const MAX_COSINE_OFFSET: f64 = 1e6;

/// The most training timesteps of a discrete schedule (diffusers' models use 1000). The table is computed once per
/// parameter set and kept; 1e6 entries is 8 MB.
pub const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

/// The range of SD3's time shift: at `shift = 1e-6` or `1e6` the shifted time already rounds to 0 or 1 over most of
/// `(0, 1)` in f64.
pub const SHIFT_RANGE: (f64, f64) = (1e-3, 1e3);

/// The smallest noise variance `sigma^2(t) = 1 - alpha^2(t)` a sampler or trainer may reach: `1 - alpha^2` computed
/// in f64 has an absolute error of about 1.1e-16, so its relative error stays below 1e-6 only above about 1e-10;
/// 1e-9 leaves a margin (`sampler.t_min = 1e-15` gave `E[1/p(c|Y)]` = 13.9 for an exact 3.33). It is checked with
/// a relative slack of 1e-6, so `t_min = 1e-9` itself passes on the linear schedule, where `1 - (1 - 1e-9)` rounds
/// to just below 1e-9.
pub const MIN_SIGMA_SQ: f64 = 1e-9;

/// How a discrete schedule's betas are laid out over its `num_train_timesteps` (diffusers' `beta_schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BetaSchedule {
    /// `beta_k = linspace(beta_start, beta_end, N)` (DDPM; diffusers' `linear`).
    #[default]
    Linear,
    /// `beta_k = linspace(sqrt(beta_start), sqrt(beta_end), N)^2` (latent diffusion; diffusers' `scaled_linear`).
    ScaledLinear,
    /// `beta_k = min(1 - f((k+1)/N) / f(k/N), 0.999)`, `f(t) = cos^2((t + 0.008)/1.008 pi/2)` (diffusers'
    /// `squaredcos_cap_v2`); `beta_start` and `beta_end` are not used.
    #[serde(rename = "squaredcos-cap-v2")]
    SquaredcosCapV2,
}

/// A noise schedule, `t in [0, 1]` (module docs).
///
/// ```
/// use tilt_core::Schedule;
/// use tilt_core::schedule::BetaSchedule;
///
/// // Flow matching's straight path with SD3's shift: alpha = 1 - t', sigma = t'.
/// let rf = Schedule::RectifiedFlow { shift: 3.0 };
/// let p = rf.interpolant(0.5);
/// assert!((p.sigma - 0.75).abs() < 1e-12 && (p.alpha - 0.25).abs() < 1e-12);
/// // Samplers see its variance-preserving form: the same log-SNR, alpha^2 + sigma^2 = 1.
/// assert!((rf.alpha_sq(0.5) + rf.sigma_sq(0.5) - 1.0).abs() < 1e-12);
/// assert!((rf.alpha(0.5) - p.alpha / rf.scale(0.5)).abs() < 1e-12);
///
/// // diffusers' DDPM table: knot k at t = (k + 1)/N, fed to the network as the timestep N t - 1.
/// let ddpm = Schedule::Discrete {
///     beta_schedule: BetaSchedule::Linear,
///     beta_start: 1e-4,
///     beta_end: 0.02,
///     num_train_timesteps: 1000,
/// };
/// assert_eq!(ddpm, Schedule::ddpm());
/// assert!((ddpm.alpha_sq(0.5) - 0.078_587_234).abs() < 1e-7);
/// assert_eq!(ddpm.timestep(0.5), Some(499.0));
/// // Every schedule round-trips through OU time, what the samplers step in.
/// assert!((ddpm.t_from_ou(ddpm.ou_time(0.3)) - 0.3).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Schedule {
    /// The papers' convention: `sigma(t)^2 = t`, `alpha(t) = sqrt(1 - t)`; `u = -ln(1 - t)`.
    #[default]
    Linear,
    /// Nichol & Dhariwal's cosine schedule, `alpha(t) = cos((t + s) / (1 + s) pi/2) / cos(s / (1 + s) pi/2)`.
    Cosine {
        /// The offset `s` that keeps `beta` finite at `t = 0` (default 0.008).
        #[serde(default = "default_cosine_offset")]
        s: f64,
    },
    /// A DDPM beta table, `alpha_bar_k = prod_{i <= k} (1 - beta_i)` in f32 as diffusers computes it. Knot `k` sits at
    /// `t = (k + 1) / N`, with `alpha = 1` at `t = 0`, and `ln alpha` is linear in `t` between knots; a network
    /// trained on the table is fed the fractional timestep `N t - 1` ([`Schedule::timestep`]; docs/theory.md §1).
    Discrete {
        /// How the betas are laid out.
        #[serde(default)]
        beta_schedule: BetaSchedule,
        /// The first beta (diffusers' default 1e-4).
        #[serde(default = "default_beta_start")]
        beta_start: f64,
        /// The last beta (diffusers' default 0.02).
        #[serde(default = "default_beta_end")]
        beta_end: f64,
        /// `N`, the number of training timesteps (diffusers' default 1000).
        #[serde(default = "default_train_timesteps")]
        num_train_timesteps: usize,
    },
    /// Rectified flow (flow matching's straight path): `alpha = 1 - t'`, `sigma = t'`, with SD3's time shift
    /// `t' = shift t / (1 + (shift - 1) t)` (default 1: no shift). Not variance-preserving.
    RectifiedFlow {
        /// SD3's `shift`: above 1 it spends more of `[0, 1]` at high noise.
        #[serde(default = "default_shift")]
        shift: f64,
    },
}

fn default_cosine_offset() -> f64 {
    0.008
}
fn default_beta_start() -> f64 {
    1e-4
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_train_timesteps() -> usize {
    1000
}
fn default_shift() -> f64 {
    1.0
}

/// The OU times `u_k = -ln alpha_bar_{k-1}` of a discrete schedule at its knots `t = k / N`, `k = 0..=N`
/// (`u_0 = 0`), computed once per parameter set.
fn discrete_knots(beta_schedule: BetaSchedule, beta_start: f64, beta_end: f64, n: usize) -> Arc<[f64]> {
    type Key = (BetaSchedule, u64, u64, usize);
    type Tables = Mutex<Vec<(Key, Arc<[f64]>)>>;
    static TABLES: OnceLock<Tables> = OnceLock::new();
    let key = (beta_schedule, beta_start.to_bits(), beta_end.to_bits(), n);
    let tables = TABLES.get_or_init(|| Mutex::new(Vec::new()));
    let mut tables = tables.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, knots)) = tables.iter().find(|(k, _)| *k == key) {
        return knots.clone();
    }
    let betas = discrete_betas(beta_schedule, beta_start, beta_end, n);
    let mut knots = Vec::with_capacity(n + 1);
    knots.push(0.0);
    // diffusers: alphas = 1 - betas in f32, alphas_cumprod = torch.cumprod(alphas), which on the CPU accumulates
    // in f64 (torch's acc_type of float) and stores each partial product as f32.
    let mut alpha_bar = 1.0f64;
    for beta in betas {
        alpha_bar *= (1.0 - beta) as f64;
        knots.push(-(alpha_bar as f32 as f64).ln());
    }
    let knots: Arc<[f64]> = knots.into();
    tables.push((key, knots.clone()));
    knots
}

/// diffusers' betas in f32 (`DDPMScheduler.__init__`).
fn discrete_betas(beta_schedule: BetaSchedule, beta_start: f64, beta_end: f64, n: usize) -> Vec<f32> {
    match beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(beta_start as f32, beta_end as f32, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace_f32(beta_start.sqrt() as f32, beta_end.sqrt() as f32, n).into_iter().map(|b| b * b).collect()
        }
        BetaSchedule::SquaredcosCapV2 => {
            // betas_for_alpha_bar: computed in f64, then stored as f32.
            let f = |t: f64| ((t + 0.008) / 1.008 * FRAC_PI_2).cos().powi(2);
            (0..n).map(|k| (1.0 - f((k + 1) as f64 / n as f64) / f(k as f64 / n as f64)).min(0.999) as f32).collect()
        }
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` on the CPU: f32 arithmetic, the first half counted from `start`,
/// the second from `end` (so both ends are exact).
fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n).map(|i| if i < halfway { start + step * i as f32 } else { end - step * (n - i - 1) as f32 }).collect()
}

impl Schedule {
    /// The cosine schedule with the usual offset `s = 0.008`.
    pub fn cosine() -> Self {
        Schedule::Cosine { s: default_cosine_offset() }
    }

    /// diffusers' `DDPMScheduler` defaults: linear betas from 1e-4 to 0.02 over 1000 timesteps.
    pub fn ddpm() -> Self {
        Schedule::Discrete {
            beta_schedule: BetaSchedule::Linear,
            beta_start: default_beta_start(),
            beta_end: default_beta_end(),
            num_train_timesteps: default_train_timesteps(),
        }
    }

    /// Rectified flow without shift.
    pub fn rectified_flow() -> Self {
        Schedule::RectifiedFlow { shift: default_shift() }
    }

    /// The config name (`schedule.kind`).
    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Linear => "linear",
            Schedule::Cosine { .. } => "cosine",
            Schedule::Discrete { .. } => "discrete",
            Schedule::RectifiedFlow { .. } => "rectified-flow",
        }
    }

    /// Whether `alpha^2 + sigma^2 = 1` (every schedule but rectified flow).
    pub fn is_variance_preserving(&self) -> bool {
        !matches!(self, Schedule::RectifiedFlow { .. })
    }

    /// SD3's shifted time `t'` and `dt'/dt` (rectified flow).
    fn shifted(shift: f64, t: f64) -> (f64, f64) {
        let den = 1.0 + (shift - 1.0) * t;
        (shift * t / den, shift / (den * den))
    }

    /// The knot segment of `t` on a discrete schedule: `(k, fraction)` with `t = (k + fraction) / N`.
    fn segment(knots: &[f64], t: f64) -> (usize, f64) {
        let n = knots.len() - 1;
        let pos = (t.clamp(0.0, 1.0) * n as f64).min(n as f64);
        let k = (pos.floor() as usize).min(n - 1);
        (k, pos - k as f64)
    }

    /// `alpha(t)^2` of the variance-preserving form: the signal fraction `alpha^2 / (alpha^2 + sigma^2)`.
    pub fn alpha_sq(&self, t: f64) -> f64 {
        match *self {
            Schedule::Linear => 1.0 - t,
            Schedule::Cosine { s } => {
                let f = |t: f64| ((t + s) / (1.0 + s) * FRAC_PI_2).cos();
                (f(t) / f(0.0)).powi(2).min(1.0)
            }
            Schedule::Discrete { .. } | Schedule::RectifiedFlow { .. } => (-self.ou_time(t)).exp(),
        }
    }

    /// `sigma(t)^2 = 1 - alpha(t)^2` of the variance-preserving form, computed without cancellation where the
    /// schedule allows.
    pub fn sigma_sq(&self, t: f64) -> f64 {
        match *self {
            Schedule::Linear | Schedule::Cosine { .. } => (1.0 - self.alpha_sq(t)).max(0.0),
            Schedule::Discrete { .. } => -(-self.ou_time(t)).exp_m1(),
            Schedule::RectifiedFlow { shift } => {
                let (ts, _) = Self::shifted(shift, t);
                ts * ts / ((1.0 - ts) * (1.0 - ts) + ts * ts)
            }
        }
    }

    /// `alpha(t)` of the variance-preserving form.
    pub fn alpha(&self, t: f64) -> f64 {
        self.alpha_sq(t).max(0.0).sqrt()
    }

    /// `sigma(t) = sqrt(1 - alpha(t)^2)` of the variance-preserving form.
    pub fn sigma(&self, t: f64) -> f64 {
        self.sigma_sq(t).max(0.0).sqrt()
    }

    /// `c(t) = sqrt(alpha^2 + sigma^2)` of the interpolant: `X_t = c(t) Y_t` (module docs). 1 for a VP schedule.
    pub fn scale(&self, t: f64) -> f64 {
        match *self {
            Schedule::RectifiedFlow { shift } => {
                let (ts, _) = Self::shifted(shift, t);
                ((1.0 - ts) * (1.0 - ts) + ts * ts).sqrt()
            }
            _ => 1.0,
        }
    }

    /// The interpolant itself at `t` (not its VP form): `alpha`, `sigma` and their time derivatives, what a network
    /// is trained on and what a velocity prediction needs (see [`crate::prediction`]).
    pub fn interpolant(&self, t: f64) -> crate::prediction::Interpolant {
        use crate::prediction::Interpolant;
        match *self {
            Schedule::RectifiedFlow { shift } => {
                let (ts, dts) = Self::shifted(shift, t);
                Interpolant { alpha: 1.0 - ts, sigma: ts, d_alpha: -dts, d_sigma: dts }
            }
            _ => {
                let (alpha, sigma) = (self.alpha(t), self.sigma(t));
                let d_alpha = match *self {
                    Schedule::Linear => -0.5 / alpha,
                    Schedule::Cosine { s } => {
                        let arg = |t: f64| (t + s) / (1.0 + s) * FRAC_PI_2;
                        -arg(t).sin() * FRAC_PI_2 / (1.0 + s) / arg(0.0).cos()
                    }
                    // alpha = e^{-u/2} with u piecewise linear in t: the slope of t's segment (the right one at a knot).
                    Schedule::Discrete { beta_schedule, beta_start, beta_end, num_train_timesteps } => {
                        let knots = discrete_knots(beta_schedule, beta_start, beta_end, num_train_timesteps);
                        let (k, _) = Self::segment(&knots, t);
                        -0.5 * alpha * (knots[k + 1] - knots[k]) * num_train_timesteps as f64
                    }
                    Schedule::RectifiedFlow { .. } => unreachable!("handled above"),
                };
                Interpolant { alpha, sigma, d_alpha, d_sigma: -alpha * d_alpha / sigma }
            }
        }
    }

    /// The fractional training timestep `N t - 1`, clamped to `[0, N - 1]`, that a network trained on a discrete
    /// table is fed at `t` (knot `k` sits at `t = (k + 1) / N`); `None` for the continuous schedules.
    pub fn timestep(&self, t: f64) -> Option<f64> {
        match *self {
            Schedule::Discrete { num_train_timesteps: n, .. } => {
                Some((n as f64 * t - 1.0).clamp(0.0, n.saturating_sub(1) as f64))
            }
            _ => None,
        }
    }

    /// OU time `u(t) = -ln alpha(t)^2` of the VP form; infinite at a `t` where `alpha = 0`.
    pub fn ou_time(&self, t: f64) -> f64 {
        match *self {
            Schedule::Linear | Schedule::Cosine { .. } => -self.alpha_sq(t).ln(),
            Schedule::Discrete { beta_schedule, beta_start, beta_end, num_train_timesteps } => {
                let knots = discrete_knots(beta_schedule, beta_start, beta_end, num_train_timesteps);
                let (k, f) = Self::segment(&knots, t);
                knots[k] + f * (knots[k + 1] - knots[k])
            }
            // u = ln(1 + sigma^2/alpha^2), sigma/alpha = t'/(1 - t').
            Schedule::RectifiedFlow { shift } => {
                let (ts, _) = Self::shifted(shift, t);
                (ts / (1.0 - ts)).powi(2).ln_1p()
            }
        }
    }

    /// Inverse of [`Schedule::ou_time`].
    pub fn t_from_ou(&self, u: f64) -> f64 {
        match *self {
            Schedule::Linear => -(-u).exp_m1(),
            Schedule::Cosine { s } => {
                let alpha = (-u / 2.0).exp();
                let c0 = (s / (1.0 + s) * FRAC_PI_2).cos();
                (alpha * c0).clamp(-1.0, 1.0).acos() / FRAC_PI_2 * (1.0 + s) - s
            }
            Schedule::Discrete { beta_schedule, beta_start, beta_end, num_train_timesteps: n } => {
                let knots = discrete_knots(beta_schedule, beta_start, beta_end, n);
                // The knots increase strictly (every beta is in (0, 1)): the first knot above u ends u's segment.
                let j = knots.partition_point(|&v| v <= u).clamp(1, n);
                let (lo, hi) = (knots[j - 1], knots[j]);
                let f = ((u - lo) / (hi - lo)).clamp(0.0, 1.0);
                ((j - 1) as f64 + f) / n as f64
            }
            Schedule::RectifiedFlow { shift } => {
                let r = u.exp_m1().max(0.0).sqrt();
                let ts = r / (1.0 + r);
                if r.is_infinite() {
                    return 1.0;
                }
                ts / (shift - (shift - 1.0) * ts)
            }
        }
    }

    /// Check the parameters; names the field on failure.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Schedule::Linear => Ok(()),
            Schedule::Cosine { s } if !(s.is_finite() && (0.0..=MAX_COSINE_OFFSET).contains(&s)) => Err(format!(
                "schedule.s: expected an offset in [0, {MAX_COSINE_OFFSET:e}] (beyond it (t + s)/(1 + s) rounds to 1 \
                 in f64 and alpha = 1 at every t), got {s}"
            )),
            Schedule::Cosine { .. } => Ok(()),
            Schedule::RectifiedFlow { shift }
                if !(shift.is_finite() && shift >= SHIFT_RANGE.0 && shift <= SHIFT_RANGE.1) =>
            {
                Err(format!(
                    "schedule.shift: expected a time shift in [{:e}, {:e}] (SD3 uses 3; 1 is no shift), got {shift}",
                    SHIFT_RANGE.0, SHIFT_RANGE.1
                ))
            }
            Schedule::RectifiedFlow { .. } => Ok(()),
            Schedule::Discrete { beta_schedule, beta_start, beta_end, num_train_timesteps: n } => {
                if !(2..=MAX_TRAIN_TIMESTEPS).contains(&n) {
                    return Err(format!(
                        "schedule.num_train_timesteps: expected 2 to {MAX_TRAIN_TIMESTEPS} timesteps (diffusers' models \
                         use 1000), got {n}"
                    ));
                }
                if beta_schedule != BetaSchedule::SquaredcosCapV2 {
                    for (field, b) in [("beta_start", beta_start), ("beta_end", beta_end)] {
                        if !(b.is_finite() && b > 0.0 && b < 1.0) {
                            return Err(format!(
                                "schedule.{field}: expected a beta in (0, 1) (a noise variance per step; diffusers' \
                                 defaults are 1e-4 and 0.02), got {b}"
                            ));
                        }
                        // In f32, as diffusers stores it: a beta below f32's resolution of 1 leaves alpha_bar at 1.
                        if 1.0 - b as f32 >= 1.0
                            || (beta_schedule == BetaSchedule::ScaledLinear && b.sqrt() as f32 == 0.0)
                        {
                            return Err(format!(
                                "schedule.{field}: {b:e} is below f32's resolution at 1 (6e-8): 1 - beta rounds to 1 \
                                 and the step adds no noise"
                            ));
                        }
                    }
                }
                let knots = discrete_knots(beta_schedule, beta_start, beta_end, n);
                if let Some(k) = knots.windows(2).position(|w| !(w[1] > w[0] && w[1].is_finite())) {
                    return Err(format!(
                        "schedule: the beta table's alpha_bar stops decreasing or reaches 0 (f32) at timestep {k} of \
                         {n}: every timestep must add noise and keep some signal (lower schedule.beta_end or \
                         schedule.num_train_timesteps)"
                    ));
                }
                Ok(())
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_their_published_formulas() {
        // The papers' schedule: alpha^2 = 1 - t, sigma^2 = t.
        assert!((Schedule::Linear.alpha_sq(0.37) - 0.63).abs() < 1e-12);
        assert!((Schedule::Linear.sigma(0.37).powi(2) - 0.37).abs() < 1e-12);
        // Nichol & Dhariwal (2021), alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t + s)/(1 + s) pi/2), s = 0.008;
        // values computed independently in f64.
        for (t, alpha_bar) in
            [(0.1, 0.972_092_737_113_969), (0.5, 0.493_843_590_440_637_75), (0.9, 0.024_091_724_140_085_854)]
        {
            assert!((Schedule::cosine().alpha_sq(t) - alpha_bar).abs() < 1e-12, "cosine alpha_bar({t})");
        }
        // OU time: u = -ln(1 - t) for the linear schedule.
        assert!((Schedule::Linear.ou_time(0.5) - std::f64::consts::LN_2).abs() < 1e-12);
    }

    fn every_kind() -> Vec<Schedule> {
        vec![
            Schedule::Linear,
            Schedule::cosine(),
            Schedule::Cosine { s: 0.5 },
            Schedule::ddpm(),
            Schedule::Discrete {
                beta_schedule: BetaSchedule::ScaledLinear,
                beta_start: 0.00085,
                beta_end: 0.012,
                num_train_timesteps: 1000,
            },
            Schedule::Discrete {
                beta_schedule: BetaSchedule::SquaredcosCapV2,
                beta_start: 1e-4,
                beta_end: 0.02,
                num_train_timesteps: 1000,
            },
            Schedule::rectified_flow(),
            Schedule::RectifiedFlow { shift: 3.0 },
        ]
    }

    #[test]
    fn interpolant_derivatives_match_finite_differences() {
        for sched in every_kind() {
            // Off the discrete knots (k / 1000), where alpha is smooth.
            for &t in &[0.0105, 0.2005, 0.5005, 0.8005, 0.9905] {
                let p = sched.interpolant(t);
                let h = 1e-7;
                let fd = |f: &dyn Fn(f64) -> f64| (f(t + h) - f(t - h)) / (2.0 * h);
                let (da, ds) = (fd(&|t| sched.interpolant(t).alpha), fd(&|t| sched.interpolant(t).sigma));
                // Central differences: O(h^2) truncation and about 1e-16 / h of rounding.
                let tol = |v: f64| 1e-5 * (1.0 + v.abs());
                assert!((p.d_alpha - da).abs() < tol(da), "{sched:?} t={t}: alpha' {} vs {da}", p.d_alpha);
                assert!((p.d_sigma - ds).abs() < tol(ds), "{sched:?} t={t}: sigma' {} vs {ds}", p.d_sigma);
                // The VP form is the interpolant divided by its scale, and is variance-preserving.
                let c = sched.scale(t);
                assert!((p.alpha / c - sched.alpha(t)).abs() < 1e-12, "{sched:?} t={t}: VP alpha");
                assert!((p.sigma / c - sched.sigma(t)).abs() < 1e-12, "{sched:?} t={t}: VP sigma");
                assert!((sched.alpha_sq(t) + sched.sigma_sq(t) - 1.0).abs() < 1e-12, "{sched:?} t={t}");
            }
        }
    }

    #[test]
    fn rectified_flow_is_the_straight_path_with_sd3_shift() {
        let rf = Schedule::rectified_flow();
        let p = rf.interpolant(0.3);
        assert!((p.alpha - 0.7).abs() < 1e-15 && (p.sigma - 0.3).abs() < 1e-15);
        assert_eq!((p.d_alpha, p.d_sigma), (-1.0, 1.0));
        // SD3: t' = shift t / (1 + (shift - 1) t); shift 3 at t = 0.5 gives 0.75.
        let p = Schedule::RectifiedFlow { shift: 3.0 }.interpolant(0.5);
        assert!((p.sigma - 0.75).abs() < 1e-15 && (p.alpha - 0.25).abs() < 1e-15);
        // The VP form has the same log-SNR: alpha_vp^2 / sigma_vp^2 = (1 - t)^2 / t^2.
        let t: f64 = 0.3;
        assert!((rf.alpha_sq(t) / rf.sigma_sq(t) - (0.7f64 / 0.3).powi(2)).abs() < 1e-12);
        assert!(!rf.is_variance_preserving() && Schedule::ddpm().is_variance_preserving());
    }

    #[test]
    fn discrete_table_is_diffusers_at_the_knots() {
        // diffusers' DDPM table (linear betas 1e-4..0.02, N = 1000), read continuously: knot k at t = (k + 1)/N and
        // ln alpha linear between knots. Values interpolated from diffusers 0.42.1's f32 table, which tilt's
        // reproduces to 2.3e-7 (two f32 rounding steps; tests/discrete_schedule.rs).
        let ddpm = Schedule::ddpm();
        for (t, alpha_bar) in
            [(0.5, 0.078_587_234_0), (0.5005, 0.078_190_944_3), (1.0 - 1e-5, 4.036_645_8e-5), (1e-3, 0.999_899_98)]
        {
            let got = ddpm.alpha_sq(t);
            assert!((got / alpha_bar - 1.0).abs() < 1e-6, "t = {t}: alpha_bar {got} vs {alpha_bar}");
        }
        assert_eq!(ddpm.timestep(0.5), Some(499.0));
        assert!((ddpm.timestep(0.5005).unwrap() - 499.5).abs() < 1e-9);
        assert_eq!(ddpm.alpha_sq(0.0), 1.0);
        // diffusers' squaredcos_cap_v2 is the cosine schedule at the knots, up to the f32 cumulative product
        // (5.6e-7 measured), except where the 0.999 cap bites (the last timesteps).
        let sq = Schedule::Discrete {
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            beta_start: 1e-4,
            beta_end: 0.02,
            num_train_timesteps: 1000,
        };
        let worst = (0..=990)
            .map(|k| {
                let t = (k + 1) as f64 / 1000.0;
                (sq.alpha_sq(t) / Schedule::cosine().alpha_sq(t) - 1.0).abs()
            })
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "squaredcos-cap-v2 vs cosine: {worst}");
        assert!(worst > 1e-8, "the f32 table should differ from the f64 closed form: {worst}");
        // The closed-form linear VP schedule is not the DDPM table (up to 7 % off).
        let off = (0..1000)
            .map(|k| {
                let t = (k + 1) as f64 / 1000.0;
                let beta_bar = |s: f64| 1000.0 * (1e-4 * s + (0.02 - 1e-4) * s * s / 2.0);
                ((-beta_bar(t)).exp() / ddpm.alpha_sq(t) - 1.0).abs()
            })
            .fold(0.0, f64::max);
        assert!(off > 0.05, "the VP-SDE reading should be off by several percent: {off}");
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let d = |beta_start, beta_end, n| Schedule::Discrete {
            beta_schedule: BetaSchedule::Linear,
            beta_start,
            beta_end,
            num_train_timesteps: n,
        };
        for (s, field) in [
            (d(0.0, 0.02, 1000), "schedule.beta_start"),
            (d(1e-4, 1.0, 1000), "schedule.beta_end"),
            (d(1e-4, f64::NAN, 1000), "schedule.beta_end"),
            (d(-1e-4, 0.02, 1000), "schedule.beta_start"),
            (d(1e-300, 0.02, 1000), "schedule.beta_start"),
            (d(1e-4, 0.02, 1), "schedule.num_train_timesteps"),
            (d(1e-4, 0.02, usize::MAX), "schedule.num_train_timesteps"),
            (d(0.9, 0.99, 100_000), "schedule: the beta table"),
            (Schedule::RectifiedFlow { shift: 0.0 }, "schedule.shift"),
            (Schedule::RectifiedFlow { shift: -1.0 }, "schedule.shift"),
            (Schedule::RectifiedFlow { shift: f64::INFINITY }, "schedule.shift"),
            (Schedule::RectifiedFlow { shift: 1e300 }, "schedule.shift"),
        ] {
            let e = s.validate().expect_err(&format!("{s:?} should be refused"));
            assert!(e.starts_with(field), "{s:?}: {e}");
        }
        for s in every_kind() {
            s.validate().unwrap_or_else(|e| panic!("{s:?}: {e}"));
        }
    }

    #[test]
    fn ou_time_round_trips() {
        for sched in every_kind() {
            for &t in &[1e-4, 0.01, 0.3, 0.5005, 0.7, 0.99, 1.0 - 1e-5] {
                let back = sched.t_from_ou(sched.ou_time(t));
                assert!((back - t).abs() < 1e-9, "{sched:?} t={t} back={back}");
            }
            assert!(sched.alpha(0.0) > 0.999_999);
        }
    }
}
