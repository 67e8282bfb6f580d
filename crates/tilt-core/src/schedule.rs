//! Variance-preserving noise schedules.
//!
//! `X_t = alpha(t) X_0 + sigma(t) Z` with `alpha^2 + sigma^2 = 1`. Every VP schedule is the same
//! Ornstein-Uhlenbeck process `dX = -X/2 du + dW_u` run in "OU time" `u = -ln alpha(t)^2`; a schedule is
//! only the map `t -> u`. The samplers work in `u`, so they are schedule-agnostic.

use serde::{Deserialize, Serialize};
use std::f64::consts::FRAC_PI_2;

/// The largest cosine offset `s` (0.008 is Nichol & Dhariwal's).
pub const MAX_COSINE_OFFSET: f64 = 1e6;

/// The smallest noise variance `sigma^2(t) = 1 - alpha^2(t)` a sampler or trainer may reach: `1 - alpha^2` computed
/// in f64 has an absolute error of about 1.1e-16, so its relative error stays below 1e-6 only above about 1e-10;
/// 1e-9 leaves a margin (`sampler.t_min = 1e-15` gave `E[1/p(c|Y)]` = 13.9 for an exact 3.33). It is checked with
/// a relative slack of 1e-6, so `t_min = 1e-9` itself passes on the linear schedule, where `1 - (1 - 1e-9)` rounds
/// to just below 1e-9.
pub const MIN_SIGMA_SQ: f64 = 1e-9;

/// A variance-preserving schedule, `t in [0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Schedule {
    /// The papers' convention: `sigma(t)^2 = t`, `alpha(t) = sqrt(1 - t)`; `u = -ln(1 - t)`.
    #[default]
    Linear,
    /// Nichol & Dhariwal's cosine schedule, `alpha(t) = cos((t + s) / (1 + s) pi/2) / cos(s / (1 + s) pi/2)`.
    Cosine {
        #[serde(default = "default_cosine_offset")]
        s: f64,
    },
}

fn default_cosine_offset() -> f64 {
    0.008
}

impl Schedule {
    /// The cosine schedule with the usual offset `s = 0.008`.
    pub fn cosine() -> Self {
        Schedule::Cosine { s: default_cosine_offset() }
    }

    /// `alpha(t)^2`, the signal variance.
    pub fn alpha_sq(&self, t: f64) -> f64 {
        match *self {
            Schedule::Linear => 1.0 - t,
            Schedule::Cosine { s } => {
                let f = |t: f64| ((t + s) / (1.0 + s) * FRAC_PI_2).cos();
                (f(t) / f(0.0)).powi(2).min(1.0)
            }
        }
    }

    /// `alpha(t)`, the signal scale.
    pub fn alpha(&self, t: f64) -> f64 {
        self.alpha_sq(t).max(0.0).sqrt()
    }

    /// `sigma(t) = sqrt(1 - alpha(t)^2)`.
    pub fn sigma(&self, t: f64) -> f64 {
        (1.0 - self.alpha_sq(t)).max(0.0).sqrt()
    }

    /// `alpha`, `sigma` and their time derivatives at `t` (what a velocity prediction needs; see
    /// [`crate::prediction`]). For a VP schedule `sigma' = -alpha alpha' / sigma`.
    pub fn interpolant(&self, t: f64) -> crate::prediction::Interpolant {
        let (alpha, sigma) = (self.alpha(t), self.sigma(t));
        let d_alpha = match *self {
            Schedule::Linear => -0.5 / alpha,
            Schedule::Cosine { s } => {
                let arg = |t: f64| (t + s) / (1.0 + s) * FRAC_PI_2;
                -arg(t).sin() * FRAC_PI_2 / (1.0 + s) / arg(0.0).cos()
            }
        };
        crate::prediction::Interpolant { alpha, sigma, d_alpha, d_sigma: -alpha * d_alpha / sigma }
    }

    /// OU time `u(t) = -ln alpha(t)^2`; infinite at a `t` where `alpha = 0`.
    pub fn ou_time(&self, t: f64) -> f64 {
        -self.alpha_sq(t).ln()
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

    #[test]
    fn interpolant_derivatives_match_finite_differences() {
        for sched in [Schedule::Linear, Schedule::cosine(), Schedule::Cosine { s: 0.5 }] {
            for &t in &[0.01, 0.2, 0.5, 0.8, 0.99] {
                let p = sched.interpolant(t);
                let h = 1e-6;
                let fd = |f: &dyn Fn(f64) -> f64| (f(t + h) - f(t - h)) / (2.0 * h);
                let (da, ds) = (fd(&|t| sched.alpha(t)), fd(&|t| sched.sigma(t)));
                // Central differences: O(h^2) truncation and about 1e-16 / h of rounding.
                let tol = |v: f64| 1e-6 * (1.0 + v.abs());
                assert!((p.d_alpha - da).abs() < tol(da), "{sched:?} t={t}: alpha' {} vs {da}", p.d_alpha);
                assert!((p.d_sigma - ds).abs() < tol(ds), "{sched:?} t={t}: sigma' {} vs {ds}", p.d_sigma);
            }
        }
    }

    #[test]
    fn ou_time_round_trips() {
        for sched in [Schedule::Linear, Schedule::cosine()] {
            for &t in &[1e-4, 0.01, 0.3, 0.7, 0.99, 1.0 - 1e-5] {
                let back = sched.t_from_ou(sched.ou_time(t));
                assert!((back - t).abs() < 1e-9, "{sched:?} t={t} back={back}");
            }
            assert!(sched.alpha(0.0) > 0.999_999);
        }
    }
}
