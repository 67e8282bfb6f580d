//! DPM-Solver++ against the existing samplers on the exact mixture oracle, where the truth is known.
//! - 2M (an ODE solver): deterministic, so its error is measured path by path against a converged solution of the
//!   same probability-flow ODE from the same starting points; no Monte Carlo noise enters.
//! - 2M SDE: its samples against exact draws of the target law by sliced Wasserstein, beside the floor a perfect
//!   sampler scores; every sampler shares the same seeded noise stream, which makes the comparison paired.

mod common;

use common::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tilt_core::metrics::sliced_wasserstein;
use tilt_core::{Condition, ExpLinearReward, MixtureScore, Schedule, tensor_ext};
use tilt_sampler::guidance::{CfgGuidance, RewardGuidance};
use tilt_sampler::{GuidedScore, NoiseSource, Sampler, SamplerKind, TimeGrid, WeightSchedule};

/// Run `kind` with `steps` on `grid` from the fixed start `x_t` under exact CFG (w = 2, class 0); host rows.
fn ode_end(kind: SamplerKind, steps: usize, grid: TimeGrid, x_t: &[f32]) -> Vec<f32> {
    let (dev, n) = (device(), x_t.len() / 2);
    let exact = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let mut g =
        GuidedScore::new(&exact, Condition::class(0, n, &dev)).with(CfgGuidance::new(), WeightSchedule::Constant(2.0));
    let s = Sampler::new(kind, Schedule::Linear, grid, steps);
    let x = tensor_ext::matrix(x_t, n, 2, &dev);
    tensor_ext::to_vec(s.run(&mut |x, t, k| g.score(x, t, k), x, &mut NoiseSource::host(0), &mut |_, _, _| {}))
}

fn rms(a: &[f32], b: &[f32]) -> f64 {
    (a.iter().zip(b).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
}

#[test]
fn dpm_solver_pp_2m_has_the_smallest_ode_error_at_matched_model_evaluations() {
    let x_t = tensor_ext::to_vec(NoiseSource::host(7).normal(2000, 2, &device()));
    // Two second-order methods at 1000 and 2000 steps agree to 5e-6: the reference is converged far below the
    // errors compared here (3.6e-3 and up).
    let reference = ode_end(SamplerKind::Heun, 1000, TimeGrid::LogSnr, &x_t);
    let check = ode_end(SamplerKind::DpmSolverPp2M, 2000, TimeGrid::LogSnr, &x_t);
    assert!(rms(&reference, &check) < 1e-4, "reference not converged: {}", rms(&reference, &check));
    let mut previous = f64::INFINITY;
    for evals in [10, 20, 50] {
        let err =
            |kind: SamplerKind| rms(&ode_end(kind, evals / kind.evals_per_step(), TimeGrid::LogSnr, &x_t), &reference);
        let (dpm, ddim, heun) = (err(SamplerKind::DpmSolverPp2M), err(SamplerKind::Ddim), err(SamplerKind::Heun));
        assert!(
            dpm < ddim && dpm < heun,
            "{evals} evaluations: DPM-Solver++ 2M {dpm:.5}, DDIM {ddim:.5}, Heun {heun:.5}"
        );
        previous = {
            // Second order: from 20 to 50 evaluations the error falls by well over the first-order 2.5x.
            assert!(evals != 50 || previous / dpm > 4.0, "2M error {previous:.5} -> {dpm:.5}: not second order");
            dpm
        };
    }
    // The Karras grid is a valid grid for it, converging to the same end points.
    let karras = rms(&ode_end(SamplerKind::DpmSolverPp2M, 50, TimeGrid::Karras, &x_t), &reference);
    assert!(karras < 0.05, "Karras grid, 50 steps: {karras}");
}

#[test]
fn dpm_solver_pp_2m_sde_is_closer_to_the_exact_tilted_law_than_the_one_step_sdes() {
    // Exact reward guidance at w = 1 samples p_r exactly in continuous time: what remains is discretisation.
    let (dev, n) = (device(), 20_000);
    let mix = overlapping();
    let a = ExpLinearReward::new(vec![0.8, 0.4]);
    let exact = MixtureScore::new(mix.clone(), Schedule::Linear, &dev);
    let exact_rw = MixtureScore::new(mix.tilted(&a), Schedule::Linear, &dev);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (reference, _) = mix.tilted(&a).sample(n, &mut rng);
    let (fresh, _) = mix.tilted(&a).sample(n, &mut rng);
    let floor = sliced_wasserstein(&fresh, &reference, 2, 64, 1);
    for steps in [10, 20, 50] {
        let distance = |kind: SamplerKind| {
            let mut g = GuidedScore::new(&exact, Condition::Unconditional)
                .with(RewardGuidance::reweighted(&exact_rw), WeightSchedule::Constant(1.0));
            sliced_wasserstein(&draw(&sampler(kind, steps), &mut g, n, 2, 3), &reference, 2, 64, 1)
        };
        let dpm = distance(SamplerKind::DpmSolverPp2MSde);
        // Measured (three seeds, floor 0.012): 2M SDE 0.015-0.022 / 0.023-0.032 / 0.015-0.019 at 10 / 20 / 50
        // steps; SDE-DPM-Solver-1 0.032-0.040 at 20 and 0.021-0.023 at 50; DDPM and Euler-Maruyama 2-10x more.
        for other in [SamplerKind::SdeDpmSolver1, SamplerKind::Ddpm, SamplerKind::EulerMaruyama] {
            let d = distance(other);
            assert!(dpm < d, "{steps} steps: 2M SDE {dpm:.4} vs {other:?} {d:.4} (floor {floor:.4})");
        }
        assert!(dpm < 3.0 * floor, "{steps} steps: 2M SDE {dpm:.4} far above the floor {floor:.4}");
    }
}

#[test]
fn a_multistep_solver_starts_afresh_on_every_run() {
    let x_t = tensor_ext::to_vec(NoiseSource::host(1).normal(64, 2, &device()));
    let first = ode_end(SamplerKind::DpmSolverPp2M, 12, TimeGrid::LogSnr, &x_t);
    let dev = device();
    let exact = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let mut g =
        GuidedScore::new(&exact, Condition::class(0, 64, &dev)).with(CfgGuidance::new(), WeightSchedule::Constant(2.0));
    let s = Sampler::new(SamplerKind::DpmSolverPp2M, Schedule::Linear, TimeGrid::LogSnr, 12);
    let run = |g: &mut GuidedScore| {
        let x = tensor_ext::matrix(&x_t, 64, 2, &dev);
        tensor_ext::to_vec(s.run(&mut |x, t, k| g.score(x, t, k), x, &mut NoiseSource::host(0), &mut |_, _, _| {}))
    };
    assert_eq!(run(&mut g), first);
    assert_eq!(run(&mut g), first, "the second run of one sampler saw the first run's history");
}

#[test]
fn recurrence_keeps_the_law_and_multiplies_the_cost() {
    // Noising back with the exact forward kernel and stepping again leaves the marginals unchanged in continuous
    // time: with exact scores, recurrence 3 still reproduces the class-0 component (a single Gaussian, variance 0.49
    // per coordinate), to the 0.4 % bias of SDE-DPM-Solver-1 at 100 steps plus 4 SE, at three times the evaluations.
    let dev = device();
    let exact = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let n = 20_000;
    let s = sampler(SamplerKind::SdeDpmSolver1, 100).with_recurrence(3);
    let mut g = GuidedScore::new(&exact, Condition::class(0, n, &dev));
    let x = draw(&s, &mut g, n, 2, 9);
    assert_eq!(g.base_calls, 3 * 100 + 1, "three evaluations per step, one final denoise");
    for j in 0..2 {
        let col: Vec<f64> = x.chunks_exact(2).map(|r| r[j] as f64).collect();
        let m = tilt_core::metrics::mean_se(&col);
        assert!((m.mean - [-0.8, 0.0][j]).abs() < 4.0 * m.se, "mean[{j}] {m:?}");
        let v = tilt_core::metrics::mean_se(&col.iter().map(|c| (c - m.mean).powi(2)).collect::<Vec<_>>());
        assert!((v.mean - 0.49).abs() < 4.0 * v.se + 0.004 * 0.49 + 1e-3, "variance[{j}] {v:?}");
    }
}
