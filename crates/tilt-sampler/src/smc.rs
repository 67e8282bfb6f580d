//! Sequential Monte Carlo steering toward `p r^w` (the twisted / Feynman-Kac family: TDS, Wu et al. 2023; FK
//! steering, Singhal et al. 2025), with no reward gradient.
//!
//! Particles move with the base sampler. Each score evaluation at step `k` gives the denoise `x0_hat(x_k)`, and
//! the particle's log weight grows by `w (log r(x0_hat_k) - log r(x0_hat_{k-1}))`, with `x0_hat_{-1}` contributing
//! nothing. The final denoise is also a score evaluation, so the sum telescopes: a particle's total log weight is
//! `w log r(Y)` with `Y` the sampler's output. The weighted particles therefore target `q(y) r(y)^w`, `q` the
//! base sampler's output law, exactly as the number of particles grows; the intermediate potentials only decide
//! when particles are copied or dropped. When the effective sample size falls below `ess_threshold * n`, the
//! particles are resampled (systematic resampling) and the weights reset.
//!
//! The potentials come from the score evaluation the step makes anyway, so a step costs what the base step costs;
//! the resampling decision before step `k + 1` uses weights up to `x0_hat(x_k)`, one step behind (a valid choice:
//! resampling may use any function of the path so far).

use crate::samplers::Sampler;
use crate::{GuidedScore, NoiseSource};
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use tilt_core::score::param;
use tilt_core::{Reward, tensor_ext};

/// SMC settings.
#[derive(Clone, Debug)]
pub struct Smc {
    /// The tilt exponent `w` of the target `p r^w`.
    pub strength: f64,
    /// Resample when `ESS / n` falls below this (0.5 is the usual choice; 0 never resamples mid-chain).
    pub ess_threshold: f64,
    /// Seed of the resampling draws.
    pub seed: u64,
}

/// Weighted particles and what happened to them.
pub struct SmcOutput {
    /// The sampler's outputs, one row per particle.
    pub particles: Tensor<2>,
    /// Normalised weights of the particles (sum 1).
    pub weights: Vec<f64>,
    /// `ESS / n` before every step and at the end.
    pub ess_trace: Vec<f64>,
    /// How many times the particles were resampled mid-chain.
    pub resamplings: usize,
}

impl SmcOutput {
    /// The effective sample size of the final weights, over `n`.
    pub fn final_ess(&self) -> f64 {
        ess_fraction(&self.weights)
    }

    /// `n` equally weighted rows drawn from the weighted particles (systematic resampling).
    pub fn resampled(&self, seed: u64) -> Tensor<2> {
        let idx = systematic(&self.weights, self.weights.len(), &mut ChaCha8Rng::seed_from_u64(seed));
        gather(&self.particles, &idx)
    }
}

struct Particles {
    log_weights: Vec<f64>,
    /// `w log r(x0_hat)` at each particle's latest evaluation.
    last_potential: Vec<f64>,
}

impl Smc {
    /// Run `n` particles of dimension `d` with the base (unguided or otherwise guided) score `guided`.
    /// `sampler` must be a one-step stochastic sampler with one score evaluation per step and the final denoise on.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        sampler: &Sampler,
        guided: &mut GuidedScore,
        reward: &dyn Reward,
        n: usize,
        d: usize,
        device: &Device,
        noise: &mut NoiseSource,
    ) -> SmcOutput {
        let kind = sampler.kind;
        assert!(
            kind.is_stochastic() && !kind.is_multistep() && kind.evals_per_step() == 1 && sampler.recurrence == 1,
            "SMC needs a one-step stochastic sampler with one evaluation per step, got {kind:?} (callers validate)"
        );
        assert!(sampler.denoise_final, "SMC weighs the final denoise: keep denoise_final on");
        let state = RefCell::new(Particles { log_weights: vec![0.0; n], last_potential: vec![0.0; n] });
        let sched = sampler.schedule;
        let mut score = |x: Tensor<2>, t: f64, k: usize| {
            let s = guided.score(x.clone(), t, k);
            let x0 = param::clean_from_score(x, s.clone(), sched.alpha(t), sched.sigma(t));
            let lr = tensor_ext::to_vec_f64(reward.log_reward(x0));
            let mut st = state.borrow_mut();
            let Particles { log_weights, last_potential } = &mut *st;
            for ((lw, last), lr) in log_weights.iter_mut().zip(last_potential.iter_mut()).zip(lr) {
                let potential = self.strength * lr;
                *lw += potential - *last;
                *last = potential;
            }
            s
        };
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let (mut ess_trace, mut resamplings) = (Vec::new(), 0);
        let x = noise.normal(n, d, device);
        let out = sampler.run_with(&mut score, x, noise, &mut |_, _, x| {
            let mut st = state.borrow_mut();
            let w = normalised(&st.log_weights);
            let ess = ess_fraction(&w);
            ess_trace.push(ess);
            if ess >= self.ess_threshold {
                return x;
            }
            resamplings += 1;
            let idx = systematic(&w, n, &mut rng);
            st.last_potential = idx.iter().map(|&i| st.last_potential[i]).collect();
            st.log_weights = vec![0.0; n];
            gather(&x, &idx)
        });
        let weights = normalised(&state.borrow().log_weights);
        ess_trace.push(ess_fraction(&weights));
        SmcOutput { particles: out, weights, ess_trace, resamplings }
    }
}

fn normalised(log_weights: &[f64]) -> Vec<f64> {
    let max = log_weights.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = log_weights.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = w.iter().sum();
    w.into_iter().map(|v| v / total).collect()
}

/// `(sum w)^2 / sum w^2 / n` for normalised `w`.
fn ess_fraction(w: &[f64]) -> f64 {
    1.0 / w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64
}

/// Systematic resampling: `m` indices, index `i` appearing about `m w_i` times.
fn systematic(w: &[f64], m: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let u0: f64 = rng.random::<f64>() / m as f64;
    let (mut idx, mut cum, mut i) = (Vec::with_capacity(m), w[0], 0);
    for j in 0..m {
        let u = u0 + j as f64 / m as f64;
        while u > cum && i + 1 < w.len() {
            i += 1;
            cum += w[i];
        }
        idx.push(i);
    }
    idx
}

fn gather(x: &Tensor<2>, idx: &[usize]) -> Tensor<2> {
    let idx: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    let len = idx.len();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [len]), &x.device());
    x.clone().select(0, idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systematic_resampling_copies_in_proportion_to_the_weights() {
        let w = [0.1, 0.6, 0.0, 0.3];
        let idx = systematic(&w, 1000, &mut ChaCha8Rng::seed_from_u64(1));
        let count = |k: usize| idx.iter().filter(|&&i| i == k).count();
        // Systematic resampling puts floor or ceil of m w_i copies on each particle.
        assert!((99..=101).contains(&count(0)) && (599..=601).contains(&count(1)), "{idx:?}");
        assert_eq!(count(2), 0);
        assert!((299..=301).contains(&count(3)));
        assert!((ess_fraction(&[0.25; 4]) - 1.0).abs() < 1e-12 && (ess_fraction(&[1.0, 0.0]) - 0.5).abs() < 1e-12);
    }
}
