//! The steering methods of the guidance menu against exact answers on the mixture oracle: the training-free (TFG)
//! family's terms in closed form, and SMC's convergence to the tilted law.

mod common;

use burn::prelude::*;
use common::*;
use tilt_core::metrics::mean_se;
use tilt_core::score::param;
use tilt_core::{Condition, ExpLinearReward, MixtureScore, Reward, Schedule, ScoreModel, tensor_ext};
use tilt_sampler::guidance::{BaseEval, GuidanceTerm, TrainingFreeGuidance, TrainingFreeParams, TrainingFreePreset};
use tilt_sampler::{GuidedScore, NoiseSource, SamplerKind, Smc};

const Z: f64 = 4.0;

fn points() -> Tensor<2> {
    tensor_ext::matrix(&[0.3, -0.2, -1.0, 0.8, 1.5, 0.1, 0.0, 0.0, -0.5, -1.2], 5, 2, &device())
}

fn term_at(term: &mut dyn GuidanceTerm, oracle: &MixtureScore, x: &Tensor<2>, t: f64) -> Vec<f32> {
    let cond = Condition::Unconditional;
    let eval = BaseEval {
        model: oracle,
        condition: &cond,
        score: oracle.score(x.clone(), t, &cond),
        unconditional: None,
        step: 0,
        t_next: None,
    };
    tensor_ext::to_vec(term.term(x, t, &eval))
}

/// `log r(x) = -|x - c|^2 / (2 l^2)`: its Gaussian smoothing has a closed form.
struct Quadratic {
    center: [f32; 2],
    width: f64,
}

impl Reward for Quadratic {
    fn log_reward(&self, x: Tensor<2>) -> Tensor<1> {
        let [n, _] = x.dims();
        let c = tensor_ext::matrix(&self.center, 1, 2, &x.device());
        (x - c).square().sum_dim(1).reshape([n]).mul_scalar(-0.5 / (self.width * self.width))
    }
}

#[test]
fn training_free_presets_match_their_closed_forms() {
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let a = [0.7, -0.4];
    let reward = ExpLinearReward::new(a.to_vec());
    let (t, x) = (0.4, points());
    let alpha = Schedule::Linear.alpha(t);
    let rg = term_at(&mut TrainingFreeGuidance::reward_gradient(&reward), &oracle, &x, t);
    let close = |what: &str, got: &[f32], want: &[f64], tol: f64| {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((*g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
        }
    };
    // MPGD: one clean-space step of mu sigma^2 grad log r = sigma^2 a moves the score by alpha a.
    let mpgd = term_at(&mut TrainingFreeGuidance::preset(&reward, TrainingFreePreset::Mpgd, 0), &oracle, &x, t);
    close("MPGD", &mpgd, &[alpha * a[0], alpha * a[1]].repeat(5), 1e-4);
    // UGD: the gradient through the denoiser plus three clean-space steps of 0.5: reward gradient + 1.5 alpha a.
    let ugd = term_at(&mut TrainingFreeGuidance::preset(&reward, TrainingFreePreset::Ugd, 0), &oracle, &x, t);
    let want: Vec<f64> = rg.iter().enumerate().map(|(i, g)| *g as f64 + 1.5 * alpha * a[i % 2]).collect();
    close("UGD", &ugd, &want, 1e-4);
    // DPS: the reward gradient, rescaled to unit RMS per row.
    let dps = term_at(&mut TrainingFreeGuidance::preset(&reward, TrainingFreePreset::Dps, 0), &oracle, &x, t);
    let want: Vec<f64> = rg
        .chunks_exact(2)
        .flat_map(|r| {
            let rms = ((r[0] as f64).powi(2) / 2.0 + (r[1] as f64).powi(2) / 2.0).sqrt();
            [r[0] as f64 / rms, r[1] as f64 / rms]
        })
        .collect();
    close("DPS", &dps, &want, 1e-4);
    // LGD on an exp-linear reward: log E[exp(a.(x0 + e))] = a.x0 + const, so the smoothing leaves the gradient.
    let lgd = term_at(&mut TrainingFreeGuidance::preset(&reward, TrainingFreePreset::Lgd, 3), &oracle, &x, t);
    close("LGD (exp-linear)", &lgd, &rg.iter().map(|g| *g as f64).collect::<Vec<_>>(), 1e-4);
}

#[test]
fn smoothing_estimates_the_gaussian_convolution_of_the_reward() {
    // For log r = -|x - c|^2/(2 l^2), log E[r(x0 + tau xi)] = -|x0 - c|^2 / (2 (l^2 + tau^2)) + const: a clean-space
    // step (rho = 0, mu = 1) moves the score by alpha grad = -alpha (x0 - c) / (l^2 + tau^2), tau = sigma(t).
    // Unsmoothed it would be -alpha (x0 - c) / l^2, 36 % larger here; 20,000 draws estimate it to about 0.5 %.
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let reward = Quadratic { center: [0.5, -0.5], width: 1.0 };
    let t = 0.4;
    let (alpha, sigma) = (Schedule::Linear.alpha(t), Schedule::Linear.sigma(t));
    let params = TrainingFreeParams {
        rho: 0.0,
        mu: 1.0,
        iterations: 1,
        smoothing: 1.0,
        smoothing_samples: 20_000,
        normalise: false,
    };
    let x = tensor_ext::matrix(&[0.3, -0.2], 1, 2, &dev);
    let got = term_at(&mut TrainingFreeGuidance::new(&reward, params, 5), &oracle, &x, t);
    let s = oracle.score(x.clone(), t, &Condition::Unconditional);
    let x0 = tensor_ext::to_vec_f64(param::clean_from_score(x, s, alpha, sigma));
    for j in 0..2 {
        let want = -alpha * (x0[j] - reward.center[j] as f64) / (1.0 + sigma * sigma);
        assert!((got[j] as f64 - want).abs() <= 0.03 * want.abs(), "dim {j}: {} vs {want}", got[j]);
    }
}

#[test]
fn smc_converges_to_the_tilt_of_its_base_sampler() {
    // SMC's weighted particles target q r^w, q the base sampler's output law: E[r] under it is E_q[r^(w+1)]/E_q[r^w].
    // Reference: 200,000 plain draws of q (delta-method SE). The two agree within Z combined SE (the SMC SE from 8
    // independent runs) plus the self-normalisation bias, O(1/particles), about var(r)/E[r]^2/n < 0.002 relative
    // at 4,000 particles. Both sit near the exact E_{p_r}[r] (the discretisation of 50 steps is the difference).
    let dev = device();
    let mix = overlapping();
    let a = ExpLinearReward::new(vec![0.8, 0.4]);
    let oracle = MixtureScore::new(mix.clone(), Schedule::Linear, &dev);
    let s = sampler(SamplerKind::SdeDpmSolver1, 50);
    let r_of =
        |x: &[f32]| -> Vec<f64> { x.chunks_exact(2).map(|r| (0.8 * r[0] as f64 + 0.4 * r[1] as f64).exp()).collect() };
    let mut g = GuidedScore::new(&oracle, Condition::Unconditional);
    let plain = r_of(&draw(&s, &mut g, 200_000, 2, 11));
    let (m1, m2) = (mean_se(&plain), mean_se(&plain.iter().map(|r| r * r).collect::<Vec<_>>()));
    let reference = m2.mean / m1.mean;
    // Delta method for a ratio of means of correlated terms, conservatively as if independent.
    let reference_se = reference * ((m2.se / m2.mean).powi(2) + (m1.se / m1.mean).powi(2)).sqrt();
    let (n, runs) = (4000, 8);
    let mut estimates = Vec::new();
    for run in 0..runs {
        // At w = 1 on this problem the ESS ends near 0.53 without resampling; 0.9 makes resampling happen.
        let smc = Smc { ess_threshold: 0.9, ..Smc::new(1.0, run) };
        let mut g = GuidedScore::new(&oracle, Condition::Unconditional);
        let out = smc.run(&s, &mut g, &a, n, 2, &dev, &mut NoiseSource::host(100 + run));
        assert!(out.resamplings > 0 && out.ess_trace.iter().all(|e| *e > 0.0 && *e <= 1.0 + 1e-9));
        assert_eq!(out.ess_trace.len(), s.steps() + 2);
        let r = r_of(&tensor_ext::to_vec(out.particles.clone()));
        estimates.push(out.estimate(&r).mean);
    }
    let smc = mean_se(&estimates);
    let tol = Z * (smc.se.powi(2) + reference_se.powi(2)).sqrt() + 0.002 * reference;
    assert!(
        (smc.mean - reference).abs() <= tol,
        "SMC {:.4} ± {:.4} vs the tilt of its base sampler {reference:.4} ± {reference_se:.4} (tolerance {tol:.4})",
        smc.mean,
        smc.se
    );
    // Without the weights the particles are just the base sampler: far from the tilt.
    let unguided = m1.mean;
    assert!(reference - unguided > 5.0 * tol, "tilt {reference} vs unguided {unguided}, tolerance {tol}");
    let exact = mix.tilted_mean_reward(&a);
    assert!((reference - exact).abs() < 0.03 * exact, "base-sampler tilt {reference} vs exact {exact}");
}
