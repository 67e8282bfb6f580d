//! Predictions (epsilon, v, sample, velocity) against the score: every conversion round-trips, and each
//! prediction of the exact mixture agrees with a computation that shares no formula with it.

mod common;

use burn::prelude::*;
use common::device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tilt_core::prediction::{Interpolant, Prediction};
use tilt_core::{Condition, GaussianMixture, MixtureScore, Schedule, ScoreModel};
fn rows(v: &[f64], d: usize) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), [v.len() / d, d]), &device())
}

fn values(t: Tensor<2>) -> Vec<f64> {
    t.into_data().try_to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

/// The interpolants of the linear and cosine VP schedules (derivatives by formula) and of rectified flow.
fn interpolants() -> Vec<Interpolant> {
    let vp = |t: f64| {
        let (a, s) = ((1.0 - t).sqrt(), t.sqrt());
        Interpolant { alpha: a, sigma: s, d_alpha: -0.5 / a, d_sigma: 0.5 / s }
    };
    vec![vp(0.02), vp(0.5), vp(0.98), Interpolant::rectified_flow(0.1), Interpolant::rectified_flow(0.9)]
}

#[test]
fn every_prediction_round_trips_through_the_score() {
    let x = rows(&[0.3, -1.2, 2.0, 0.7, -0.4, 0.05], 2);
    let score = rows(&[-0.8, 1.1, 0.2, -2.5, 0.9, 0.0], 2);
    for p in interpolants() {
        for pred in Prediction::ALL {
            pred.check(p).unwrap();
            let back = values(pred.to_score(x.clone(), pred.from_score(x.clone(), score.clone(), p), p));
            for (g, w) in back.iter().zip(values(score.clone())) {
                // f32 arithmetic on O(1) values divided by B: a relative error of a few ulps of A x / B.
                let (a, b) = pred.affine(p);
                let tol = 1e-5 * (1.0 + (a / b).abs() * 3.0);
                assert!((g - w).abs() < tol, "{pred:?} at {p:?}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn v_prediction_on_a_vp_schedule_is_the_published_identity() {
    // Salimans & Ho: with alpha^2 + sigma^2 = 1, x0 = alpha x - sigma v and eps = sigma x + alpha v.
    let p = Interpolant { alpha: 0.6, sigma: 0.8, d_alpha: 0.0, d_sigma: 0.0 };
    let (x, score) = (rows(&[1.5, -0.5], 2), rows(&[-0.3, 0.7], 2));
    let v = Prediction::VPrediction.from_score(x.clone(), score.clone(), p);
    let x0 = Prediction::Sample.from_score(x.clone(), score.clone(), p);
    let eps = Prediction::Epsilon.from_score(x.clone(), score, p);
    let x0_from_v = values(x.clone().mul_scalar(0.6) - v.clone().mul_scalar(0.8));
    let eps_from_v = values(x.mul_scalar(0.8) + v.mul_scalar(0.6));
    for (a, b) in x0_from_v.iter().zip(values(x0)).chain(eps_from_v.iter().zip(values(eps))) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

/// Each prediction of the exact mixture against quantities computed without the conversion formulas: the
/// noise from central finite differences of the noised log density, the clean estimate from self-normalised
/// importance sampling of `E[X_0 | X_t = x]` over draws of the clean mixture.
#[test]
fn the_exact_mixtures_predictions_agree_with_independent_computations() {
    let m = GaussianMixture::new(
        vec![0.4, 0.6],
        vec![vec![-1.0, 0.5], vec![1.2, -0.3]],
        vec![vec![0.5, 0.7], vec![0.6, 0.4]],
        vec![vec![0], vec![1]],
    )
    .unwrap();
    let schedule = Schedule::Linear;
    let t = 0.4;
    let (a, s) = (schedule.alpha(t), schedule.sigma(t));
    let p = Interpolant { alpha: a, sigma: s, d_alpha: -0.5 / a, d_sigma: 0.5 / s };
    let points = [[0.2, 0.1], [-0.9, 0.6], [1.0, -0.5]];
    let exact = MixtureScore::new(m.clone(), schedule, &device());
    let x = rows(&points.concat(), 2);
    let score = exact.score(x.clone(), t, &Condition::Unconditional);
    // Clean draws for the importance sampler (one set for all points).
    let n = 400_000;
    let (draws, _) = m.sample(n, &mut ChaCha8Rng::seed_from_u64(11));
    for (i, pt) in points.iter().enumerate() {
        // Finite differences: eps_hat = -sigma grad log p_t, h = 1e-4 (error O(h^2) ~ 1e-8 here).
        let h = 1e-4;
        let grad: Vec<f64> = (0..2)
            .map(|j| {
                let (mut up, mut down) = (pt.to_vec(), pt.to_vec());
                up[j] += h;
                down[j] -= h;
                (m.log_density_at(&up, t, schedule) - m.log_density_at(&down, t, schedule)) / (2.0 * h)
            })
            .collect();
        let eps_fd: Vec<f64> = grad.iter().map(|g| -s * g).collect();
        // Importance sampling: weights N(x; a x0, s^2 I), E[X_0 | x] and its standard error per coordinate.
        let w: Vec<f64> = draws
            .chunks_exact(2)
            .map(|r| {
                let d2: f64 = (0..2).map(|j| (pt[j] - a * r[j] as f64).powi(2)).sum();
                (-d2 / (2.0 * s * s)).exp()
            })
            .collect();
        let total: f64 = w.iter().sum();
        let x0_mc: Vec<f64> = (0..2)
            .map(|j| draws.chunks_exact(2).zip(&w).map(|(r, wi)| wi * r[j] as f64).sum::<f64>() / total)
            .collect();
        let se: Vec<f64> = (0..2)
            .map(|j| {
                let var: f64 = draws
                    .chunks_exact(2)
                    .zip(&w)
                    .map(|(r, wi)| (wi / total).powi(2) * (r[j] as f64 - x0_mc[j]).powi(2))
                    .sum();
                var.sqrt()
            })
            .collect();
        let row = |pred: Prediction| -> Vec<f64> {
            let out = values(pred.from_score(x.clone(), score.clone(), p));
            out[2 * i..2 * i + 2].to_vec()
        };
        // f32 network-side arithmetic: 2e-5 absolute on O(1) outputs.
        let f32_tol = 2e-5;
        for j in 0..2 {
            let eps = row(Prediction::Epsilon)[j];
            assert!((eps - eps_fd[j]).abs() < 1e-6 + f32_tol, "epsilon at {pt:?}: {eps} vs {}", eps_fd[j]);
            let x0 = row(Prediction::Sample)[j];
            assert!(
                (x0 - x0_mc[j]).abs() < 4.0 * se[j] + f32_tol,
                "sample at {pt:?}: {x0} vs {} ± {}",
                x0_mc[j],
                se[j]
            );
            // v and velocity from their definitions on the independent estimates.
            let v = row(Prediction::VPrediction)[j];
            let v_ref = a * eps_fd[j] - s * x0_mc[j];
            assert!((v - v_ref).abs() < 4.0 * s * se[j] + 2.0 * f32_tol, "v at {pt:?}: {v} vs {v_ref}");
            let vel = row(Prediction::Velocity)[j];
            let vel_ref = p.d_alpha * x0_mc[j] + p.d_sigma * eps_fd[j];
            assert!(
                (vel - vel_ref).abs() < 4.0 * p.d_alpha.abs() * se[j] + 4.0 * f32_tol,
                "velocity at {pt:?}: {vel} vs {vel_ref}"
            );
        }
    }
}

/// The training target `cx X_0 + cz Z` of each prediction, averaged over the posterior of `(X_0, Z)` given
/// `X_t = x`, is what the prediction of a perfect network is: `cx E[X_0 | x] + cz E[Z | x] = A x + B s(x)`, with
/// Tweedie's `E[Z | x] = -sigma s` and `E[X_0 | x] = (x + sigma^2 s) / alpha`. Checked on every schedule's
/// interpolant, the discrete and rectified-flow ones included.
#[test]
fn each_training_target_averages_to_its_prediction() {
    use tilt_core::schedule::BetaSchedule;
    let schedules = [
        Schedule::Linear,
        Schedule::cosine(),
        Schedule::ddpm(),
        Schedule::Discrete {
            beta_schedule: BetaSchedule::ScaledLinear,
            beta_start: 0.00085,
            beta_end: 0.012,
            num_train_timesteps: 1000,
        },
        Schedule::RectifiedFlow { shift: 3.0 },
    ];
    let (x, s) = (0.7f64, -1.3f64);
    for schedule in schedules {
        for t in [0.0105, 0.3305, 0.7005, 0.9505] {
            let p = schedule.interpolant(t);
            let (ez, ex0) = (-p.sigma * s, (x + p.sigma * p.sigma * s) / p.alpha);
            for pred in Prediction::ALL {
                let (cx, cz) = pred.target_coefficients(p);
                let (a, b) = pred.affine(p);
                let (want, got) = (a * x + b * s, cx * ex0 + cz * ez);
                assert!((want - got).abs() < 1e-9 * (1.0 + want.abs()), "{schedule:?} t={t} {pred:?}: {got} vs {want}");
            }
        }
    }
}
