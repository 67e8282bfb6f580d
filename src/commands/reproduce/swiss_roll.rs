//! Experiment 3: reward guidance on the Swiss roll, with the residual trajectory-free trainer.

use super::reward_mixture::reward_weighted;
use super::{
    Ctx, PerPreset, StageOutput, Table, TrainSpec, draw, dsm, fmt, mean_reward, sampler, stage_config, versus,
};
use crate::plot::{self, Series};
use anyhow::Result;
use serde::Deserialize;
use std::path::Path;
use tilt_core::metrics::{MeanSe, mean_se};
use tilt_core::{Condition, RewardSpec};
use tilt_sampler::guidance::RewardGuidance;
use tilt_sampler::{GuidedScore, SamplerKind, WeightSchedule};
use tilt_train::DataSpec;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub seed: u64,
    pub samples: PerPreset<usize>,
    pub steps: PerPreset<usize>,
    pub strengths: Vec<f64>,
    pub noise: f64,
    pub reward: RewardSpec,
    pub reference_points: PerPreset<usize>,
    /// Draws from the data law for the Monte Carlo references `E_p[r]` and `E_p_r[r]`.
    pub reference_reward_samples: PerPreset<usize>,
    pub base_train: TrainSpec,
    pub train: TrainSpec,
}

/// `E_p[r]` and `E_p_r[r] = E_p[r^2] / E_p[r]` by Monte Carlo on `n` draws of the data law, each with its
/// standard error (the ratio's by the delta method: `Var(r^2 - R r) / (n E[r]^2)`).
fn reward_references(
    data: &DataSpec,
    reward: &dyn tilt_core::Reward,
    n: usize,
    seed: u64,
    dev: &burn::prelude::Device,
) -> Result<(MeanSe, MeanSe)> {
    let x = data.generate(n, seed)?.x;
    let r: Vec<f64> =
        tilt_core::tensor_ext::to_vec_f64(reward.log_reward(tilt_core::tensor_ext::matrix(&x, n, 2, dev)))
            .into_iter()
            .map(f64::exp)
            .collect();
    let base = mean_se(&r);
    let tilted = r.iter().map(|v| v * v).sum::<f64>() / r.iter().sum::<f64>();
    let linearised: Vec<f64> = r.iter().map(|v| (v * v - tilted * v) / base.mean).collect();
    Ok((base, MeanSe { mean: tilted, se: mean_se(&linearised).se }))
}

/// Distance from each sample to its nearest reference point (the data manifold, up to its noise).
fn nearest_distances(x: &[f32], reference: &[f32]) -> Vec<f64> {
    x.chunks_exact(2)
        .map(|p| {
            reference
                .chunks_exact(2)
                .map(|r| ((p[0] - r[0]) as f64).powi(2) + ((p[1] - r[1]) as f64).powi(2))
                .fold(f64::INFINITY, f64::min)
                .sqrt()
        })
        .collect()
}

pub fn run(ctx: &Ctx, dir: &Path) -> Result<StageOutput> {
    let (cfg, raw): (Config, _) = stage_config("swiss_roll")?;
    let p = ctx.preset;
    let dev = &ctx.device;
    let data = DataSpec::SwissRoll { noise: cfg.noise };
    // Checked here, under this config's names, before the models' own checks name their train-config fields.
    data.validate().map_err(|e| anyhow::anyhow!("{}", format!("{e:#}").trim_start_matches("data.")))?;
    cfg.reward.validate(2).map_err(|e| anyhow::anyhow!("reward.{e}"))?;
    let base_run =
        ctx.trained("swiss_roll_base", &cfg.base_train.config(data.clone(), dsm(false, 0.0), p, cfg.seed))?;
    let residual_run = ctx.trained(
        "swiss_roll_reward_residual",
        &cfg.train.config(
            data.clone(),
            reward_weighted(tilt_train::RewardForm::Residual, &cfg.reward, &base_run, &cfg.train, p),
            p,
            cfg.seed,
        ),
    )?;
    let base = tilt_train::load_score(&base_run, tilt_train::ModelKind::ScoreNet, dev)?.score;
    let delta = tilt_train::load_score(&residual_run, tilt_train::ModelKind::Residual, dev)?.score;
    let reward = cfg.reward.build();
    // Fresh points of the roll (another seed than training) as the manifold reference.
    let reference = data.generate(cfg.reference_points.get(p), cfg.seed + 1)?.x;
    let noise_floor =
        mean_se(&nearest_distances(&data.generate(cfg.samples.get(p).min(2000), cfg.seed + 2)?.x, &reference));

    let (exact_base, exact_tilted) =
        reward_references(&data, reward.as_ref(), cfg.reference_reward_samples.get(p), cfg.seed + 3, dev)?;
    let (n, steps) = (cfg.samples.get(p), cfg.steps.get(p));
    let s = sampler(SamplerKind::SdeDpmSolver1, steps, Default::default());
    let mut table = Table::new(
        "Swiss roll: mean reward and distance to the data manifold (nearest reference point) against w",
        &["w", "mean_reward", "reward_se", "mean_distance_to_data", "distance_se", "frac_within_0.2"],
    );
    let bar = ctx.bar("swiss_roll", cfg.strengths.len() as u64);
    let (mut rpts, mut dpts) = (Vec::new(), Vec::new());
    let mut rewards: Vec<(f64, MeanSe)> = Vec::new();
    let mut figures = Vec::new();
    for &w in &cfg.strengths {
        let mut g = GuidedScore::new(&base, Condition::Unconditional)
            .with(RewardGuidance::residual(&delta), WeightSchedule::Constant(w));
        let x = draw(&s, &mut g, n, 2, cfg.seed, dev);
        let r = mean_reward(reward.as_ref(), &x, 2, dev);
        let dists = nearest_distances(&x, &reference);
        let dm = mean_se(&dists);
        let within = dists.iter().filter(|d| **d < 0.2).count() as f64 / n as f64;
        table.row(vec![format!("{w}"), fmt(r.mean, 4), fmt(r.se, 4), fmt(dm.mean, 4), fmt(dm.se, 4), fmt(within, 3)]);
        rewards.push((w, r));
        rpts.push((w, r.mean));
        dpts.push((w, dm.mean));
        let file = format!("samples_w{w}.png");
        plot::scatter_over_density(
            &dir.join(&file),
            &format!("Swiss roll, reward guidance w = {w} (contours: the reward)"),
            &x,
            2,
            (-4.5, 4.5, -4.5, 4.5),
            &|a, b| bump_log(&cfg.reward, a, b),
        )?;
        figures.push((file, format!("Samples at w = {w} over the reward's contours")));
        bar.inc(1);
    }
    bar.finish_and_clear();
    plot::curves(
        &dir.join("reward_and_distance.png"),
        "Swiss roll: reward and distance to the data against w",
        "w",
        "value",
        &[
            Series { name: "E[r(Y)]".into(), points: rpts.clone() },
            Series { name: "mean distance to data".into(), points: dpts.clone() },
        ],
        &[("distance of fresh data (noise floor)".into(), noise_floor.mean)],
    )?;
    figures.insert(
        0,
        ("reward_and_distance.png".into(), "Mean reward and mean distance to the nearest data point against w".into()),
    );
    let mut out = StageOutput::new("swiss_roll", "Reward guidance on the Swiss roll", ctx, raw, cfg.seed);
    let (r0, rl) = (rpts[0].1, rpts.last().map_or(f64::NAN, |p| p.1));
    let (d0, dl) = (dpts[0].1, dpts.last().map_or(f64::NAN, |p| p.1));
    let reward_at = |w: f64| rewards.iter().find(|(v, _)| *v == w).map(|(_, m)| *m);
    let mut checks = String::new();
    if let Some(m) = reward_at(0.0) {
        checks += &format!(
            " At w = 0 (the base network) E[r] = {} against the data law's E_p[r].",
            versus(m, exact_base.mean)
        );
    }
    if let Some(m) = reward_at(1.0) {
        let gap = m.mean - exact_tilted.mean;
        checks += &format!(
            " At w = 1, where exact scores would sample the tilted law p_r, E[r] = {} against E_p_r[r] (Monte Carlo, ± {:.4}): a gap of {gap:+.4} ({:+.1} %). With exact scores the gap would be Monte Carlo noise and the sampler's small bias; what exceeds that is the error of the trained base and residual networks.",
            versus(m, exact_tilted.mean),
            exact_tilted.se,
            100.0 * gap / exact_tilted.mean
        );
    }
    out.reading = format!(
        "Monte Carlo references on {} draws of the data law: E_p[r] = {:.4} ± {:.4}, E_p_r[r] = {:.4} ± {:.4}. The bump reward \
         (center (0, 3.5), the outer end of the roll) goes from {r0:.3} at w = 0 to {rl:.3} at w = {}.{checks} The mean distance to \
         the nearest reference point of the roll goes from {d0:.3} to {dl:.3}; fresh data sit at {:.3} (the floor set by the data \
         noise and the reference density).",
        cfg.reference_reward_samples.get(p),
        exact_base.mean,
        exact_base.se,
        exact_tilted.mean,
        exact_tilted.se,
        cfg.strengths.last().copied().unwrap_or(0.0),
        noise_floor.mean
    );
    out.headline = serde_json::json!({
        "reward": rpts, "distance": dpts, "noise_floor": noise_floor.mean,
        "exact_mean_reward": exact_base, "exact_tilted_mean_reward": exact_tilted,
    });
    out.figures = figures;
    out.tables = vec![table];
    Ok(out)
}

/// `log r` of the bump reward on the host (for contour backgrounds).
fn bump_log(spec: &RewardSpec, a: f64, b: f64) -> f64 {
    match spec {
        RewardSpec::Bump { center, width, height } => {
            height * (-((a - center[0]).powi(2) + (b - center[1]).powi(2)) / (2.0 * width * width)).exp()
        }
        RewardSpec::ExpLinear { a: v } => v[0] * a + v[1] * b,
    }
}
