//! Backward samplers, k-diffusion style: each sampler is a short step over a score closure (`Solver`), and one
//! loop ([`Sampler::run`]) drives them all.
//!
//! - `single_step`: Euler-Maruyama, exponential integrator, SDE-DPM-Solver-1, DDPM ancestral, Heun, DDIM;
//! - `dpm_solver_pp`: the multistep DPM-Solver++ 2M and 2M SDE, which keep the previous denoise.

mod dpm_solver_pp;
mod single_step;

use crate::noise::NoiseSource;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use tilt_core::score::param;
use tilt_core::{Interpolant, Schedule};

/// A score closure: `(x, t, step index) -> guided score`. The step index lets per-step guidance schedules
/// look up their weight.
pub type ScoreFn<'a> = dyn FnMut(Tensor<2>, f64, usize) -> Tensor<2> + 'a;

/// The start of every chain: `X_{t_max}` is drawn from `N(0, I)`, whose mismatch with the true marginal
/// (mean `alpha(t_max) E[X_0]`) the probability-flow ODE samplers carry all the way to `t = 0`. At `1 - 1e-5`,
/// `alpha = 0.003`, a bias of about 0.2 % in the mean reward of the test problems (0.999 gave 1.8 %).
pub const DEFAULT_T_MAX: f64 = 1.0 - 1e-5;
/// The end of every chain, where the final Tweedie denoise is taken.
pub const DEFAULT_T_MIN: f64 = 1e-3;

/// The step of the backward chain (`sampler.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// Euler-Maruyama on the reverse SDE.
    EulerMaruyama,
    /// Score frozen over the step (over-disperses; kept for comparison).
    ExponentialIntegrator,
    /// Noise prediction frozen over the step: the most accurate stochastic sampler here (docs/results.md,
    /// discretisation), hence the default.
    #[default]
    #[serde(rename = "sde-dpm-solver-1")]
    SdeDpmSolver1,
    /// DDPM ancestral: a draw from the Gaussian posterior with the denoise frozen.
    Ddpm,
    /// Heun's second-order method on the probability-flow ODE.
    Heun,
    /// DDIM: the exact probability-flow step with the noise prediction frozen.
    Ddim,
    /// DPM-Solver++ 2M: second-order multistep on the probability-flow ODE, in the data prediction.
    #[serde(rename = "dpm-solver++-2m")]
    DpmSolverPp2M,
    /// DPM-Solver++ 2M SDE: the same multistep denoise estimate on the reverse SDE.
    #[serde(rename = "dpm-solver++-2m-sde")]
    DpmSolverPp2MSde,
    /// Flow matching's Euler step on the probability-flow ODE in the schedule's own time and coordinates,
    /// `x' = x + (t' - t) v(x, t)` (diffusers' `FlowMatchEulerDiscreteScheduler`); on `rectified-flow` it is DDIM
    /// written for the velocity.
    FlowMatchEuler,
}

impl SamplerKind {
    /// Every sampler, for listings and tests.
    pub const ALL: [SamplerKind; 9] = [
        SamplerKind::EulerMaruyama,
        SamplerKind::ExponentialIntegrator,
        SamplerKind::SdeDpmSolver1,
        SamplerKind::Ddpm,
        SamplerKind::Heun,
        SamplerKind::Ddim,
        SamplerKind::DpmSolverPp2M,
        SamplerKind::DpmSolverPp2MSde,
        SamplerKind::FlowMatchEuler,
    ];

    /// Score evaluations per step (Heun evaluates twice).
    pub fn evals_per_step(&self) -> usize {
        if *self == SamplerKind::Heun { 2 } else { 1 }
    }

    /// Whether the sampler draws noise at every step.
    pub fn is_stochastic(&self) -> bool {
        !matches!(
            self,
            SamplerKind::Heun | SamplerKind::Ddim | SamplerKind::DpmSolverPp2M | SamplerKind::FlowMatchEuler
        )
    }

    /// Whether the solver carries state from step to step.
    pub fn is_multistep(&self) -> bool {
        matches!(self, SamplerKind::DpmSolverPp2M | SamplerKind::DpmSolverPp2MSde)
    }

    /// The step as a Gaussian transition `x' = a x + b s + c xi` in the (guided) score `s` at `(x, p.t)`, for the
    /// one-step stochastic samplers; `None` for the others. Two scores give two Gaussians with the same covariance
    /// `c^2 I` whose means differ by `b (s_1 - s_2)`: the density ratio SMC's guided proposal is corrected by.
    pub fn gaussian_step(&self, p: &StepPoint) -> Option<GaussianStep> {
        match self {
            SamplerKind::EulerMaruyama => Some(GaussianStep { a: 1.0 + p.h / 2.0, b: p.h, c: p.h.sqrt() }),
            SamplerKind::ExponentialIntegrator => {
                let e = (p.h / 2.0).exp();
                Some(GaussianStep { a: e, b: 2.0 * (e - 1.0), c: p.h.exp_m1().sqrt() })
            }
            SamplerKind::SdeDpmSolver1 => {
                // eps_hat = -sigma s; see single_step::sde_dpm_solver_1.
                let e = (p.alpha_next * p.sigma) / (p.sigma_next * p.alpha);
                Some(GaussianStep {
                    a: p.alpha_next / p.alpha,
                    b: 2.0 * p.sigma * p.sigma_next * (e - 1.0),
                    c: p.sigma_next * (e * e - 1.0).max(0.0).sqrt(),
                })
            }
            SamplerKind::Ddpm => {
                // x0_hat = (x + sigma^2 s) / alpha; see single_step::ddpm_ancestral.
                let (s2, sn2) = (p.sigma * p.sigma, p.sigma_next * p.sigma_next);
                let a_ts = p.alpha / p.alpha_next;
                let var_ts = s2 - a_ts * a_ts * sn2;
                let to_x0 = p.alpha_next * var_ts / s2;
                Some(GaussianStep {
                    a: a_ts * sn2 / s2 + to_x0 / p.alpha,
                    b: to_x0 * s2 / p.alpha,
                    c: (var_ts * sn2 / s2).max(0.0).sqrt(),
                })
            }
            _ => None,
        }
    }

    /// A fresh solver for one run of `steps` steps.
    pub fn solver(&self, steps: usize) -> Box<dyn Solver> {
        use single_step::*;
        match self {
            SamplerKind::EulerMaruyama => Box::new(Memoryless(euler_maruyama)),
            SamplerKind::ExponentialIntegrator => Box::new(Memoryless(exponential_integrator)),
            SamplerKind::SdeDpmSolver1 => Box::new(Memoryless(sde_dpm_solver_1)),
            SamplerKind::Ddpm => Box::new(Memoryless(ddpm_ancestral)),
            SamplerKind::Heun => Box::new(Memoryless(heun)),
            SamplerKind::Ddim => Box::new(Memoryless(ddim)),
            SamplerKind::DpmSolverPp2M => Box::new(dpm_solver_pp::DpmSolverPp2M::new(false, steps)),
            SamplerKind::DpmSolverPp2MSde => Box::new(dpm_solver_pp::DpmSolverPp2M::new(true, steps)),
            SamplerKind::FlowMatchEuler => Box::new(Memoryless(flow_match_euler)),
        }
    }
}

/// The two ends of one step, with the schedule quantities the step functions need.
#[derive(Clone, Copy, Debug)]
pub struct StepPoint {
    /// The step index, from 0.
    pub k: usize,
    /// The time the step starts from.
    pub t: f64,
    /// The time the step ends at (smaller).
    pub t_next: f64,
    /// OU step `h = u(t) - u(t_next) > 0`.
    pub h: f64,
    /// Signal scale of the VP form at `t`.
    pub alpha: f64,
    /// Noise scale of the VP form at `t`.
    pub sigma: f64,
    /// Signal scale of the VP form at `t_next`.
    pub alpha_next: f64,
    /// Noise scale of the VP form at `t_next`.
    pub sigma_next: f64,
    /// Half log-SNR `lambda = ln(alpha / sigma)` at both ends (increasing along the chain).
    pub lambda: f64,
    /// The half log-SNR at `t_next`.
    pub lambda_next: f64,
    /// The schedule's interpolant itself (not its VP form) at both ends: `x = c y` with
    /// `c = sqrt(alpha^2 + sigma^2)` (1 on a VP schedule), for steps written in the interpolant's coordinates.
    pub interpolant: Interpolant,
    /// The interpolant at `t_next`.
    pub interpolant_next: Interpolant,
}

/// A stochastic step written as `x' = a x + b s + c xi`, `xi ~ N(0, I)` ([`SamplerKind::gaussian_step`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaussianStep {
    /// The coefficient of the current point.
    pub a: f64,
    /// The coefficient of the score.
    pub b: f64,
    /// The noise scale.
    pub c: f64,
}

/// One step of a backward chain. `&mut self` holds what a multistep method carries between steps; a fresh
/// solver is made for every run ([`SamplerKind::solver`]), so nothing leaks from one chain into the next.
pub trait Solver {
    /// `x` at `p.t_next` from `x` at `p.t`, calling `score(x, t, step)` as often as the method needs.
    fn step(&mut self, p: &StepPoint, score: &mut ScoreFn, x: Tensor<2>, noise: &mut NoiseSource) -> Tensor<2>;
}

/// A configured backward chain.
///
/// The chain runs on the schedule's variance-preserving form `Y_t = X_t / c(t)` (see [`tilt_core::schedule`]), so
/// every solver works on every schedule; the state an observer sees is `Y_t`, and the result is `X_0` (or, without
/// the final denoise, `X_{t_min}` of the interpolant).
#[derive(Clone, Debug)]
pub struct Sampler {
    /// The step of the chain.
    pub kind: SamplerKind,
    /// The schedule the chain runs on (its VP form).
    pub schedule: Schedule,
    /// Decreasing times, `times[0] = t_max`, last = `t_min`.
    pub times: Vec<f64>,
    /// Return the Tweedie denoise `E[X_0 | X_{t_min} = x]` instead of the last `x`.
    pub denoise_final: bool,
    /// TFG's recurrence (FreeDoM's "time travel"): every step is taken `recurrence` times, the state noised back
    /// from `t_next` to `t` by the exact forward kernel in between. 1 is the plain chain. Only for one-step solvers.
    pub recurrence: usize,
}

impl Sampler {
    /// `kind` with `steps` on `grid`, from [`DEFAULT_T_MAX`] to [`DEFAULT_T_MIN`], ending in the Tweedie denoise.
    pub fn new(kind: SamplerKind, schedule: Schedule, grid: crate::TimeGrid, steps: usize) -> Self {
        let times = grid.times(steps, DEFAULT_T_MAX, DEFAULT_T_MIN, schedule);
        Self { kind, schedule, times, denoise_final: true, recurrence: 1 }
    }

    /// The same chain with every step repeated `recurrence` times ([`Sampler::recurrence`]).
    pub fn with_recurrence(self, recurrence: usize) -> Self {
        Self { recurrence, ..self }
    }

    /// The number of steps.
    pub fn steps(&self) -> usize {
        self.times.len() - 1
    }

    /// Run the chain from `x` at `times[0]`. `observe(k, t_k, x_k)` sees the state before every step and the
    /// final state (before the optional denoise); use it for progress bars and trajectory statistics.
    pub fn run(
        &self,
        score: &mut ScoreFn,
        x: Tensor<2>,
        noise: &mut NoiseSource,
        observe: &mut dyn FnMut(usize, f64, &Tensor<2>),
    ) -> Tensor<2> {
        self.run_with(score, x, noise, &mut |k, t, x| {
            observe(k, t, &x);
            x
        })
    }

    /// [`Sampler::run`] where `between(k, t_k, x_k)` may replace the state before every step and before the final
    /// denoise (particle resampling does).
    pub fn run_with(
        &self,
        score: &mut ScoreFn,
        x: Tensor<2>,
        noise: &mut NoiseSource,
        between: &mut dyn FnMut(usize, f64, Tensor<2>) -> Tensor<2>,
    ) -> Tensor<2> {
        assert!(
            self.recurrence >= 1 && (self.recurrence == 1 || !self.kind.is_multistep()),
            "recurrence {} with {:?}: a multistep solver's history cannot be rewound (callers validate this)",
            self.recurrence,
            self.kind
        );
        let mut solver = self.kind.solver(self.steps());
        self.run_solver(solver.as_mut(), score, x, noise, between)
    }

    /// Run the chain with a solver of your own instead of [`Sampler::kind`]'s: the grid, the schedule (its VP form:
    /// see [`tilt_core::schedule`]), the recurrence and the final denoise are this sampler's, each step is
    /// `solver.step`. A fresh solver per chain is the caller's to make (a multistep one keeps history).
    ///
    /// ```
    /// # use burn::prelude::*;
    /// use tilt_core::{Condition, GaussianMixture, MixtureScore, Schedule};
    /// use tilt_sampler::samplers::{ScoreFn, Solver, StepPoint};
    /// use tilt_sampler::{GuidedScore, NoiseSource, Sampler, SamplerKind, TimeGrid};
    ///
    /// /// The probability-flow ODE by Euler's method in OU time: dx/du = -(x + s)/2 backward.
    /// struct OdeEuler;
    /// impl Solver for OdeEuler {
    ///     fn step(&mut self, p: &StepPoint, score: &mut ScoreFn, x: Tensor<2>, _: &mut NoiseSource) -> Tensor<2> {
    ///         let s = score(x.clone(), p.t, p.k);
    ///         x.clone() + (x + s).mul_scalar(0.5 * p.h)
    ///     }
    /// }
    ///
    /// // Library crates enable no backend: the caller brings the device (`Device::flex()` in the `tilt` binary).
    /// fn mean_of_draws(device: &Device) -> f64 {
    ///     let mixture = GaussianMixture::new(vec![1.0], vec![vec![2.0]], vec![vec![0.5]], vec![vec![0]]).unwrap();
    ///     let oracle = MixtureScore::new(mixture, Schedule::Linear, device);
    ///     let mut guided = GuidedScore::new(&oracle, Condition::Unconditional);
    ///     let sampler = Sampler::new(SamplerKind::Ddim, Schedule::Linear, TimeGrid::LogSnr, 100);
    ///     let mut noise = NoiseSource::host(0);
    ///     let x0 = noise.normal(2000, 1, device);
    ///     let mut score = |x, t, k| guided.score(x, t, k);
    ///     let x = sampler.run_solver(&mut OdeEuler, &mut score, x0, &mut noise, &mut |_, _, x| x);
    ///     x.mean().into_scalar::<f64>() // about 2, the mixture's mean
    /// }
    /// ```
    pub fn run_solver(
        &self,
        solver: &mut dyn Solver,
        score: &mut ScoreFn,
        mut x: Tensor<2>,
        noise: &mut NoiseSource,
        between: &mut dyn FnMut(usize, f64, Tensor<2>) -> Tensor<2>,
    ) -> Tensor<2> {
        let sched = self.schedule;
        for k in 0..self.steps() {
            let p = self.step_point(k);
            let t = p.t;
            x = between(k, t, x);
            for _ in 1..self.recurrence {
                // x_t = (alpha/alpha') x_{t'} + sqrt(sigma^2 - (alpha/alpha')^2 sigma'^2) xi: q(x_t | x_{t'}).
                let back = p.alpha / p.alpha_next;
                let std = (p.sigma * p.sigma - back * back * p.sigma_next * p.sigma_next).max(0.0).sqrt();
                let stepped = solver.step(&p, score, x, noise);
                x = stepped.clone().mul_scalar(back) + single_step::noise_like(&stepped, noise).mul_scalar(std);
            }
            x = solver.step(&p, score, x, noise);
        }
        let (n_steps, t_min) = (self.steps(), *self.times.last().expect("non-empty grid"));
        x = between(n_steps, t_min, x);
        if self.denoise_final {
            let s = score(x.clone(), t_min, n_steps);
            x = param::clean_from_score(x, s, sched.alpha(t_min), sched.sigma(t_min));
        } else if !sched.is_variance_preserving() {
            // Back from the VP form to the interpolant's own X_{t_min}.
            x = x.mul_scalar(sched.scale(t_min));
        }
        x
    }

    /// The two ends of step `k` (`k < steps`) with the schedule quantities the step functions need.
    pub fn step_point(&self, k: usize) -> StepPoint {
        let sched = self.schedule;
        let half_log_snr = |t: f64| (sched.alpha(t) / sched.sigma(t)).ln();
        let (t, t_next) = (self.times[k], self.times[k + 1]);
        StepPoint {
            k,
            t,
            t_next,
            h: sched.ou_time(t) - sched.ou_time(t_next),
            alpha: sched.alpha(t),
            sigma: sched.sigma(t),
            alpha_next: sched.alpha(t_next),
            sigma_next: sched.sigma(t_next),
            lambda: half_log_snr(t),
            lambda_next: half_log_snr(t_next),
            interpolant: sched.interpolant(t),
            interpolant_next: sched.interpolant(t_next),
        }
    }

    /// Draw `n` rows of dimension `d` under a guided score: [`Sampler::sample`] with no observer.
    pub fn draw(
        &self,
        guided: &mut crate::GuidedScore,
        n: usize,
        d: usize,
        device: &Device,
        noise: &mut NoiseSource,
    ) -> Tensor<2> {
        self.sample(&mut |x, t, k| guided.score(x, t, k), n, d, device, noise, &mut |_, _, _| {})
    }

    /// Draw `x ~ N(0, I)` of shape `[n, d]` from `noise`, then [`Sampler::run`].
    pub fn sample(
        &self,
        score: &mut ScoreFn,
        n: usize,
        d: usize,
        device: &Device,
        noise: &mut NoiseSource,
        observe: &mut dyn FnMut(usize, f64, &Tensor<2>),
    ) -> Tensor<2> {
        let x = noise.normal(n, d, device);
        self.run(score, x, noise, observe)
    }
}
