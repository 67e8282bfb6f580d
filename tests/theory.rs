//! method.md §7, claims 1 to 5, with exact mixture scores. Every tolerance is a multiple (4) of the Monte
//! Carlo standard error of the estimate at hand, so it shrinks with the sample size and is not tuned by hand.

mod common;

use common::*;
use tilt_core::metrics::mean_se;
use tilt_core::{Condition, ExpLinearReward, MixtureScore, Reward, ScoreModel, tensor_ext};
use tilt_sampler::guidance::{CfgGuidance, RewardGuidance};
use tilt_sampler::{GuidedScore, SamplerKind, TimeGrid, WeightSchedule};

const Z: f64 = 4.0;

/// Mean responsibilities: `E_p[p(k|X)] = pi_k`, so they test the component frequencies without hard assignment.
fn mean_responsibilities(oracle: &MixtureScore, x: &[f32]) -> Vec<(f64, f64)> {
    let dev = device();
    let k = oracle.mixture().n_components();
    // With one class per component, the class posterior IS the component responsibility.
    let per_comp = tilt_core::GaussianMixture { classes: (0..k).map(|i| vec![i]).collect(), ..oracle.mixture().clone() };
    let o = MixtureScore::new(per_comp, oracle.schedule(), &dev);
    let n = x.len() / 2;
    let post = tensor_ext::to_vec_f64(o.class_log_posteriors(tensor_ext::matrix(x, n, 2, &dev), 0.0));
    (0..k)
        .map(|j| {
            let g: Vec<f64> = post.chunks_exact(k).map(|r| r[j].exp()).collect();
            let m = mean_se(&g);
            (m.mean, m.se)
        })
        .collect()
}

#[test]
fn claim1_unguided_sampling_reproduces_the_mixture() {
    let dev = device();
    let mix = overlapping();
    let oracle = MixtureScore::new(mix.clone(), Default::default(), &dev);
    let n = 20_000;
    // DDPM's ancestral step drops Var[x0 | x_t] from the reverse transition. The loss per step is of order
    // h^2 / sigma^2, so it concentrates in the last steps, where the OU step h exceeds sigma^2 = u on a
    // uniform-u grid (9 % of the variance at 200 steps here). A grid geometric in t keeps h/u bounded.
    for (kind, grid) in [
        (SamplerKind::EulerMaruyama, TimeGrid::LogSnr),
        (SamplerKind::ExponentialIntegrator, TimeGrid::UniformU),
        (SamplerKind::ExponentialIntegrator, TimeGrid::LogSnr),
        (SamplerKind::Ddpm, TimeGrid::Geometric),
        (SamplerKind::Ddpm, TimeGrid::LogSnr),
        (SamplerKind::Heun, TimeGrid::UniformU),
        (SamplerKind::Ddim, TimeGrid::LogSnr),
    ] {
        let mut guided = GuidedScore::new(&oracle, Condition::Unconditional);
        let mut s = sampler(kind, 200);
        s.times = grid.times(200, 0.999, 1e-3, s.schedule);
        let x = draw(&s, &mut guided, n, 2, 1);
        let (mean, var) = (mix.mean(), mix.variance());
        for j in 0..2 {
            let col: Vec<f64> = x.chunks_exact(2).map(|r| r[j] as f64).collect();
            let m = mean_se(&col);
            assert_within(&format!("{kind:?}/{grid:?} mean[{j}]"), m.mean, mean[j], m.se, Z);
            let sq: Vec<f64> = col.iter().map(|v| (v - mean[j]).powi(2)).collect();
            let v = mean_se(&sq);
            assert_within(&format!("{kind:?}/{grid:?} variance[{j}]"), v.mean, var[j], v.se, Z);
        }
        for (k, (m, se)) in mean_responsibilities(&oracle, &x).into_iter().enumerate() {
            assert_within(&format!("{kind:?}/{grid:?} frequency of component {k}"), m, mix.weights[k], se, Z);
        }
    }
}

#[test]
fn claim1_error_falls_as_steps_grow() {
    let dev = device();
    let mix = overlapping();
    let oracle = MixtureScore::new(mix.clone(), Default::default(), &dev);
    let (mean, var) = (mix.mean(), mix.variance());
    // Moment error of Euler-Maruyama; the same noise seed for every step count.
    let error = |steps: usize| {
        let mut guided = GuidedScore::new(&oracle, Condition::Unconditional);
        let x = draw(&sampler(SamplerKind::EulerMaruyama, steps), &mut guided, 20_000, 2, 7);
        (0..2)
            .map(|j| {
                let col: Vec<f64> = x.chunks_exact(2).map(|r| r[j] as f64).collect();
                let m = mean_se(&col).mean;
                let v = col.iter().map(|c| (c - m).powi(2)).sum::<f64>() / col.len() as f64;
                (m - mean[j]).abs() + (v - var[j]).abs()
            })
            .sum::<f64>()
    };
    let errs: Vec<f64> = [4, 16, 64].iter().map(|&s| error(s)).collect();
    assert!(errs[0] > errs[1] && errs[1] > errs[2], "moment error must fall with steps: {errs:?}");
    assert!(errs[0] > 4.0 * errs[2], "64 steps should be far better than 4: {errs:?}");
}

/// `E[1/p(c|Y)]` with the exact classifier, with its standard error.
fn mean_inv_class_prob(oracle: &MixtureScore, x: &[f32], class: usize) -> (f64, f64) {
    let dev = device();
    let n = x.len() / 2;
    let lp = tensor_ext::to_vec_f64(oracle.class_log_posteriors(tensor_ext::matrix(x, n, 2, &dev), 0.0));
    let c = oracle.mixture().n_classes();
    let inv: Vec<f64> = lp.chunks_exact(c).map(|r| (-r[class]).exp()).collect();
    let m = mean_se(&inv);
    (m.mean, m.se)
}

fn cfg_samples(oracle: &MixtureScore, class: usize, w: f64, n: usize) -> Vec<f32> {
    let dev = device();
    let mut guided = GuidedScore::new(oracle, Condition::class(class, n, &dev)).with(CfgGuidance::new(), WeightSchedule::Constant(w));
    draw(&sampler(SamplerKind::ExponentialIntegrator, 200), &mut guided, n, 2, 11)
}

#[test]
fn claim2_conditional_sampling_gives_inverse_class_prior() {
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Default::default(), &dev);
    for class in [0, 1] {
        let x = cfg_samples(&oracle, class, 0.0, 20_000);
        let (m, se) = mean_inv_class_prob(&oracle, &x, class);
        assert_within(&format!("E[1/p({class}|Y)] at w = 0"), m, 1.0 / overlapping().class_prior(class), se, Z);
    }
}

#[test]
fn claim3_cfg_lowers_expected_inverse_class_probability() {
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Default::default(), &dev);
    let class = 0;
    let exact = 1.0 / overlapping().class_prior(class);
    let mut prev = f64::INFINITY;
    for w in [0.5, 1.0, 2.0, 4.0] {
        let (m, se) = mean_inv_class_prob(&oracle, &cfg_samples(&oracle, class, w, 10_000), class);
        assert!(m + Z * se < exact, "w = {w}: E[1/p(c|Y)] = {m:.4} ± {se:.4} is not below 1/p(c) = {exact:.4}");
        assert!(m < prev, "w = {w}: E[1/p(c|Y)] = {m:.4} did not fall (previous {prev:.4})");
        prev = m;
    }
}

#[test]
fn claim4_reward_guidance_raises_reward_and_hits_the_tilt_at_w1() {
    let dev = device();
    let mix = overlapping();
    let reward = ExpLinearReward::new(vec![0.8, 0.4]);
    let base = MixtureScore::new(mix.clone(), Default::default(), &dev);
    let tilted = mix.tilted(&reward);
    let reweighted = MixtureScore::new(tilted.clone(), Default::default(), &dev);
    let (base_mean, target_mean) = (mix.mean_reward(&reward), mix.tilted_mean_reward(&reward));
    let n = 20_000;
    let run = |w: f64| {
        let mut g = GuidedScore::new(&base, Condition::Unconditional).with(RewardGuidance::reweighted(&reweighted), WeightSchedule::Constant(w));
        let x = draw(&sampler(SamplerKind::ExponentialIntegrator, 200), &mut g, n, 2, 5);
        let r: Vec<f64> = tensor_ext::to_vec_f64(reward.log_reward(tensor_ext::matrix(&x, n, 2, &dev))).into_iter().map(f64::exp).collect();
        (x, mean_se(&r))
    };
    let (_, r0) = run(0.0);
    assert_within("E[r] at w = 0", r0.mean, base_mean, r0.se, Z);
    let (x1, r1) = run(1.0);
    assert_within("E[r] at w = 1 vs E_p_r[r]", r1.mean, target_mean, r1.se, Z);
    // The law at w = 1 is p_r: its mean and component frequencies.
    let tm = tilted.mean();
    for j in 0..2 {
        let col: Vec<f64> = x1.chunks_exact(2).map(|r| r[j] as f64).collect();
        let m = mean_se(&col);
        assert_within(&format!("mean[{j}] at w = 1 vs p_r"), m.mean, tm[j], m.se, Z);
    }
    for (k, (m, se)) in mean_responsibilities(&reweighted, &x1).into_iter().enumerate() {
        assert_within(&format!("p_r component {k} frequency"), m, tilted.weights[k], se, Z);
    }
    let (_, r2) = run(2.0);
    let (_, rneg) = run(-0.5);
    assert!(r1.mean > base_mean + Z * r1.se && r2.mean > r1.mean + Z * r2.se, "reward must rise with w: {r0:?} {r1:?} {r2:?}");
    assert!(rneg.mean < base_mean - Z * rneg.se, "w < 0 must lower the reward: {rneg:?} vs {base_mean}");
}

#[test]
fn claim5_reward_improvement_identity_holds_along_the_trajectory() {
    // E[h_end(Y)] - E[h_start(Y)] = w ∫ E[h_u |grad log h_u|^2](Y_u) du, tested per sample: the residual
    // R_i = h_end - h_start - w Σ_k h|∇log h|^2 Δu has mean 0 (it is a martingale increment).
    let dev = device();
    let mix = overlapping();
    let reward = ExpLinearReward::new(vec![0.6, -0.3]);
    let base = MixtureScore::new(mix.clone(), Default::default(), &dev);
    let reweighted = MixtureScore::new(mix.tilted(&reward), Default::default(), &dev);
    let log_mean_r = mix.log_mean_exp_linear(&reward.a);
    for w in [1.0, 2.0] {
        let mut s = common::sampler(SamplerKind::ExponentialIntegrator, 400);
        s.denoise_final = false;
        let c = tilt_sampler::diagnostics::improvement_identity(&base, &reweighted, log_mean_r, w, &s, 8_000, 3, &dev);
        assert!(c.gain.mean > 10.0 * c.gain.se, "w = {w}: the reward gain {:?} must be clearly positive", c.gain);
        assert_within(&format!("improvement identity residual at w = {w} (gain {:.4})", c.gain.mean), c.residual.mean, 0.0, c.residual.se, Z);
        // Start: h at t_max is E_p[r] up to alpha(t_max) ≈ 0.03, so the gain is also E[r(Y)] - E_p[r].
        assert_within("h at t_max vs E_p[r]", c.start.mean, log_mean_r.exp(), c.start.se.max(1e-3), Z);
    }
}
