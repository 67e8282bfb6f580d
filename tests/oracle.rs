//! The exact mixture oracle against Monte Carlo estimates that share none of its formulas: the noised density and
//! score as a convolution over exact draws of `X_0`, and the exponential tilt by importance weighting.
//! Tolerances: 4 standard errors of the self-normalised estimates (delta method) plus f32 rounding.

mod common;

use common::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tilt_core::{Condition, ExpLinearReward, MixtureScore, Schedule, ScoreModel, tensor_ext};

const Z: f64 = 4.0;

/// `sum_i w_i g_i / sum_i w_i` and its delta-method standard error.
fn self_normalised(w: &[f64], g: &[f64]) -> (f64, f64) {
    let total: f64 = w.iter().sum();
    let est = w.iter().zip(g).map(|(w, g)| w * g).sum::<f64>() / total;
    let var = w.iter().zip(g).map(|(w, g)| (w * (g - est)).powi(2)).sum::<f64>();
    (est, var.sqrt() / total)
}

#[test]
fn noised_density_and_score_match_a_monte_carlo_convolution() {
    // p_t(x) = E[N(x; alpha X_0, sigma^2 I)] and grad log p_t(x) = E[w (alpha X_0 - x)/sigma^2] / E[w], with
    // w = N(x; alpha X_0, sigma^2 I) and X_0 drawn from the mixture itself.
    let mix = overlapping();
    let n = 400_000;
    let (x0, _) = mix.sample(n, &mut ChaCha8Rng::seed_from_u64(1));
    let sched = Schedule::Linear;
    let oracle = MixtureScore::new(mix.clone(), sched, &device());
    let points = [[0.3f32, -0.2], [-1.0, 0.8], [1.5, 0.1]];
    for t in [0.2, 0.6, 0.95] {
        let (alpha, s2) = (sched.alpha(t), sched.sigma(t).powi(2));
        let xs = tensor_ext::matrix(&points.concat(), points.len(), 2, &device());
        let score = tensor_ext::to_vec(oracle.score(xs, t, &Condition::Unconditional));
        for (i, p) in points.iter().enumerate() {
            let w: Vec<f64> = x0
                .chunks_exact(2)
                .map(|r| {
                    let d2 = (p[0] as f64 - alpha * r[0] as f64).powi(2) + (p[1] as f64 - alpha * r[1] as f64).powi(2);
                    (-d2 / (2.0 * s2)).exp() / (2.0 * std::f64::consts::PI * s2)
                })
                .collect();
            let density = tilt_core::metrics::mean_se(&w);
            let exact = mix.log_density_at(&[p[0] as f64, p[1] as f64], t, sched).exp();
            assert_within(&format!("p_t at t = {t}, point {i}"), density.mean, exact, density.se, Z);
            for j in 0..2 {
                let g: Vec<f64> = x0.chunks_exact(2).map(|r| (alpha * r[j] as f64 - p[j] as f64) / s2).collect();
                let (est, se) = self_normalised(&w, &g);
                let got = score[2 * i + j] as f64;
                assert!(
                    (got - est).abs() <= Z * se + 1e-4 * (1.0 + got.abs()),
                    "score at t = {t}, point {i}, dim {j}: oracle {got} vs Monte Carlo {est} ± {se}"
                );
            }
        }
    }
}

#[test]
fn exponential_tilt_matches_importance_weighting() {
    // p_r ∝ r p: its mean and component weights as r-weighted averages over draws of p.
    let mix = overlapping();
    let reward = ExpLinearReward::new(vec![0.8, 0.4]);
    let tilted = mix.tilted(&reward);
    let n = 1_000_000;
    let (x, comps) = mix.sample(n, &mut ChaCha8Rng::seed_from_u64(2));
    let w: Vec<f64> = x.chunks_exact(2).map(|r| (0.8 * r[0] as f64 + 0.4 * r[1] as f64).exp()).collect();
    let mean = tilted.mean();
    for j in 0..2 {
        let (est, se) = self_normalised(&w, &x.chunks_exact(2).map(|r| r[j] as f64).collect::<Vec<_>>());
        assert_within(&format!("p_r mean[{j}]"), est, mean[j], se, Z);
    }
    for k in 0..mix.n_components() {
        let (est, se) = self_normalised(&w, &comps.iter().map(|&c| f64::from(u8::from(c == k))).collect::<Vec<_>>());
        assert_within(&format!("p_r weight of component {k}"), est, tilted.weights[k], se, Z);
    }
    // E_p[r] and E_p_r[r] = E_p[r^2] / E_p[r].
    let er = tilt_core::metrics::mean_se(&w);
    assert_within("E_p[r]", er.mean, mix.mean_reward(&reward), er.se, Z);
    let (est, se) = self_normalised(&w, &w);
    assert_within("E_p_r[r]", est, mix.tilted_mean_reward(&reward), se, Z);
}
