//! Time grids for the backward chain, from `t_max` (near 1) down to `t_min` (near 0).

use serde::{Deserialize, Serialize};
use tilt_core::Schedule;

/// Where the steps of a chain fall between `t_max` and `t_min` (`sampler.grid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TimeGrid {
    /// Equal steps in `t`.
    UniformT,
    /// Equal steps in OU time `u = -ln alpha^2` (equal "amounts of noise removed" per step).
    UniformU,
    /// Geometric in `t`: small steps near 0, where the score is sharpest.
    Geometric,
    /// Equal steps in log signal-to-noise ratio `lambda = ln(alpha^2 / sigma^2)` (DPM-Solver's choice):
    /// small steps at both ends, so `h / u` stays bounded near 0 and the first steps near `t = 1` are short.
    /// The default: it keeps the DDPM/DDIM under-dispersion near `t = 0` small (it does not remove it; see
    /// docs/results.md, discretisation).
    #[default]
    LogSnr,
    /// Karras et al. 2022 (EDM): equal steps in `sigma_ve^(1/rho)`, `rho = 7`, where `sigma_ve = sigma/alpha` is the
    /// noise level of the variance-exploding form; denser near `t = 0` than the log-SNR grid.
    Karras,
}

/// EDM's `rho`: the grid is uniform in `sigma_ve^(1/rho)`.
const KARRAS_RHO: f64 = 7.0;

impl TimeGrid {
    /// `steps + 1` decreasing, finite times, `t[0] = t_max`, `t[steps] = t_min`.
    ///
    /// Panics unless `steps >= 1` and `0 < t_min < t_max < 1`: at `t = 1` the signal `alpha` is 0, OU time is
    /// infinite and every step divides by `alpha`. Callers validate user input first and name the field.
    pub fn times(&self, steps: usize, t_max: f64, t_min: f64, schedule: Schedule) -> Vec<f64> {
        self.try_times(steps, t_max, t_min, schedule).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`TimeGrid::times`], or what makes the grid impossible: `t_min` so small that f64 cannot tell
    /// `alpha^2(t_min)` from 1 (the log-SNR is infinite), a schedule whose noise does not reach `t_max`, or a
    /// grid that is not strictly decreasing. Validation calls this with the schedule the sampler will use.
    pub fn try_times(&self, steps: usize, t_max: f64, t_min: f64, schedule: Schedule) -> Result<Vec<f64>, String> {
        if !(steps >= 1 && 0.0 < t_min && t_min < t_max && t_max < 1.0) {
            return Err(format!("invalid grid: steps {steps}, t_min {t_min}, t_max {t_max}"));
        }
        let var = 1.0 - schedule.alpha_sq(t_min);
        if var.is_nan() || var < tilt_core::schedule::MIN_SIGMA_SQ * (1.0 - 1e-6) {
            return Err(format!(
                "t_min = {t_min:e}: sigma^2(t_min) = {var:e} on this schedule, below {:e}, where 1 - alpha^2 computed in \
                 f64 has a relative error above 1e-6 (the last step would denoise with a wrong noise level); raise \
                 t_min",
                tilt_core::schedule::MIN_SIGMA_SQ
            ));
        }
        for (name, t) in [("t_min", t_min), ("t_max", t_max)] {
            let a2 = schedule.alpha_sq(t);
            if !(a2 > 0.0 && a2 < 1.0 && log_snr(schedule, t).is_finite()) {
                return Err(format!(
                    "{name} = {t:e}: alpha^2({name}) = {a2} on this schedule, which f64 cannot tell from {}; the noise \
                     level is not resolved (raise t_min, or lower t_max, or use a schedule with noise there)",
                    if a2 >= 1.0 - f64::EPSILON { 1 } else { 0 }
                ));
            }
        }
        let frac = |k: usize| k as f64 / steps as f64;
        let times: Vec<f64> = (0..=steps)
            .map(|k| match self {
                TimeGrid::UniformT => t_max + (t_min - t_max) * frac(k),
                TimeGrid::UniformU => {
                    let (u0, u1) = (schedule.ou_time(t_max), schedule.ou_time(t_min));
                    schedule.t_from_ou(u0 + (u1 - u0) * frac(k))
                }
                TimeGrid::Geometric => t_max * (t_min / t_max).powf(frac(k)),
                TimeGrid::LogSnr => {
                    let (l0, l1) = (log_snr(schedule, t_max), log_snr(schedule, t_min));
                    // alpha^2 = sigmoid(lambda), so u = -ln alpha^2 = ln(1 + e^{-lambda}).
                    let lambda = l0 + (l1 - l0) * frac(k);
                    schedule.t_from_ou((-lambda).exp().ln_1p())
                }
                TimeGrid::Karras => {
                    let ve = |t: f64| (1.0 / schedule.alpha_sq(t) - 1.0).sqrt();
                    let (r0, r1) = (ve(t_max).powf(1.0 / KARRAS_RHO), ve(t_min).powf(1.0 / KARRAS_RHO));
                    let sigma_ve = (r0 + (r1 - r0) * frac(k)).powf(KARRAS_RHO);
                    // alpha^2 = 1 / (1 + sigma_ve^2), so u = ln(1 + sigma_ve^2).
                    schedule.t_from_ou(sigma_ve.powi(2).ln_1p())
                }
            })
            .collect();
        let ok = times.iter().all(|t| t.is_finite() && *t > 0.0 && *t < 1.0)
            && times.windows(2).all(|p| p[1] <= p[0])
            && schedule.alpha(t_max) > 0.0;
        if !ok {
            return Err(format!(
                "the {self:?} grid from t_max = {t_max} to t_min = {t_min} leaves (0, 1) or reaches alpha = 0 on this \
                 schedule"
            ));
        }
        Ok(times)
    }
}

fn log_snr(schedule: Schedule, t: f64) -> f64 {
    let a2 = schedule.alpha_sq(t);
    (a2 / (1.0 - a2)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_run_from_t_max_to_t_min_monotonically() {
        for g in [TimeGrid::UniformT, TimeGrid::UniformU, TimeGrid::Geometric, TimeGrid::LogSnr, TimeGrid::Karras] {
            for s in [Schedule::Linear, Schedule::cosine()] {
                let ts = g.times(10, 0.99, 1e-3, s);
                assert_eq!(ts.len(), 11);
                assert!((ts[0] - 0.99).abs() < 1e-9 && (ts[10] - 1e-3).abs() < 1e-9, "{g:?} {ts:?}");
                assert!(ts.windows(2).all(|w| w[1] < w[0]));
            }
        }
        // Uniform in u: equal OU steps.
        let s = Schedule::Linear;
        let ts = TimeGrid::UniformU.times(4, 0.9, 0.01, s);
        let hs: Vec<f64> = ts.windows(2).map(|w| s.ou_time(w[0]) - s.ou_time(w[1])).collect();
        assert!(hs.iter().all(|h| (h - hs[0]).abs() < 1e-9));
        // Karras: equal steps in sigma_ve^(1/7).
        let ts = TimeGrid::Karras.times(5, 0.99, 0.01, Schedule::cosine());
        let r: Vec<f64> =
            ts.iter().map(|&t| (1.0 / Schedule::cosine().alpha_sq(t) - 1.0).sqrt().powf(1.0 / KARRAS_RHO)).collect();
        let dr: Vec<f64> = r.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(dr.iter().all(|x| (x - dr[0]).abs() < 1e-9 && *x < 0.0), "{dr:?}");
    }
}
