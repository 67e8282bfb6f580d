//! The exact Gaussian-mixture oracle: every score, tilt and guided law in closed form, so a sampler or a guidance
//! method can be checked to Monte Carlo precision.
//!
//! Run: `cargo run --example exact_mixture_oracle`
//!
//! A 2-D mixture with two classes and the reward `r(x) = exp(a . x)`: reward guidance at strength `w = 1` with the
//! exact reweighted score samples `p_r ∝ r p` exactly, on every schedule (the papers' rule, docs/theory.md §3), and
//! classifier-free guidance lowers `E[1/p(c|Y)]` below `1/p(c)`.

use burn::prelude::*;
use tilt_core::metrics::mean_se;
use tilt_core::{Condition, ExpLinearReward, GaussianMixture, MixtureScore, Reward, Schedule, tensor_ext};
use tilt_sampler::guidance::{CfgGuidance, RewardGuidance};
use tilt_sampler::{GuidedScore, NoiseSource, Sampler, SamplerKind, TimeGrid, WeightSchedule};

fn main() -> anyhow::Result<()> {
    let device = Device::flex();
    let mixture = GaussianMixture::new(
        vec![0.3, 0.45, 0.25],
        vec![vec![-0.8, 0.0], vec![0.8, 0.3], vec![0.2, -0.9]],
        vec![vec![0.7, 0.7], vec![0.6, 0.8], vec![0.8, 0.5]],
        vec![vec![0], vec![1, 2]],
    )
    .map_err(anyhow::Error::msg)?;
    let reward = ExpLinearReward::new(vec![0.8, 0.4]);
    let (n, steps) = (20_000, 100);
    println!(
        "exact E_p[r] = {:.4}, E_p_r[r] = {:.4}",
        mixture.mean_reward(&reward),
        mixture.tilted_mean_reward(&reward)
    );

    for schedule in [Schedule::Linear, Schedule::ddpm(), Schedule::rectified_flow()] {
        // The exact scores of p and of p_r, on this schedule.
        let base = MixtureScore::new(mixture.clone(), schedule, &device);
        let tilted = MixtureScore::new(mixture.tilted(&reward), schedule, &device);
        let sampler = Sampler::new(SamplerKind::default(), schedule, TimeGrid::LogSnr, steps);
        // s_guided = s + w (s_r - s): at w = 1 the guided score is exactly that of p_r.
        let mut guided = GuidedScore::new(&base, Condition::Unconditional)
            .with(RewardGuidance::reweighted(&tilted), WeightSchedule::Constant(1.0));
        let x = sampler.draw(&mut guided, n, 2, &device, &mut NoiseSource::host(0));
        let r: Vec<f64> = tensor_ext::to_vec_f64(reward.log_reward(x)).into_iter().map(f64::exp).collect();
        let m = mean_se(&r);
        println!("{:>15}: reward guidance at w = 1 gives E[r] = {:.4} ± {:.4}", schedule.name(), m.mean, m.se);
    }

    // CFG on class 0 with the exact conditional and unconditional scores; 1/p(c|y) from the exact classifier.
    let oracle = MixtureScore::new(mixture.clone(), Schedule::Linear, &device);
    let sampler = Sampler::new(SamplerKind::default(), Schedule::Linear, TimeGrid::LogSnr, steps);
    for w in [0.0, 1.0, 4.0] {
        let mut guided = GuidedScore::new(&oracle, Condition::class(0, n, &device))
            .with(CfgGuidance::new(), WeightSchedule::Constant(w));
        let x = sampler.draw(&mut guided, n, 2, &device, &mut NoiseSource::host(1));
        let log_post = tensor_ext::to_vec_f64(oracle.class_log_posteriors(x, 0.0));
        let inv = mean_se(&log_post.chunks_exact(2).map(|row| (-row[0]).exp()).collect::<Vec<_>>());
        println!(
            "CFG w = {w}: E[1/p(c|Y)] = {:.3} ± {:.3} (1/p(c) = {:.3})",
            inv.mean,
            inv.se,
            1.0 / mixture.class_prior(0)
        );
    }
    Ok(())
}
