//! Experiment 6: metrics against the number of sampling steps, for every sampler.

use super::{Ctx, PerPreset, StageOutput, Table, draw, fmt, mean_reward, sampler, stage_config};
use crate::commands::sample::Problem;
use crate::config::{GuidanceKind, kebab};
use crate::plot::{self, Series};
use anyhow::Result;
use serde::Deserialize;
use std::path::Path;
use tilt_core::metrics::{self, MeanSe};
use tilt_core::{Condition, GaussianMixture, MixtureScore, MixtureSpec, RewardSpec};
use tilt_sampler::guidance::{CfgGuidance, RewardGuidance};
use tilt_sampler::{GuidedScore, SamplerKind, WeightSchedule};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub seed: u64,
    pub samples: PerPreset<usize>,
    pub step_counts: PerPreset<Vec<usize>>,
    pub reward: RewardSpec,
    pub class: usize,
    pub cfg_strength: f64,
    /// Samples per cell of the bias table (unguided conditional sampling, where the truth is known closely).
    pub bias_samples: PerPreset<usize>,
    pub mixture: MixtureSpec,
}

pub fn run(ctx: &Ctx, dir: &Path) -> Result<StageOutput> {
    let (cfg, raw): (Config, _) = stage_config("discretisation")?;
    let p = ctx.preset;
    let dev = &ctx.device;
    let mixture = super::experiment_mixture(&cfg.mixture)?;
    let a = super::exact_reward(&cfg.reward)?;
    let reward = cfg.reward.build();
    let exact = MixtureScore::new(mixture.clone(), Default::default(), dev);
    let exact_rw = MixtureScore::new(mixture.tilted(&a), Default::default(), dev);
    let problem = Problem::new(mixture.clone(), GuidanceKind::Cfg, Some(cfg.class), None);
    let target = mixture.tilted_mean_reward(&a);
    let (n, counts) = (cfg.samples.get(p), cfg.step_counts.get(p));
    let limit = super::divergence_limit(&mixture);
    let bar = ctx.bar("discretisation", (SamplerKind::ALL.len() * counts.len()) as u64);
    let mut table = Table::new(
        "Mean reward (reward guidance, w = 1; exact E_p_r[r]) and E[1/p(c|Y)] (CFG) against the number of steps",
        &[
            "sampler",
            "steps",
            "score_evals",
            "mean_reward",
            "reward_se",
            "exact_E_p_r",
            "mean_inv_class_prob",
            "inv_se",
        ],
    );
    let (mut reward_series, mut cfg_series) = (Vec::new(), Vec::new());
    for kind in SamplerKind::ALL {
        let (mut rp, mut cp) = (Vec::new(), Vec::new());
        for &steps in &counts {
            let s = sampler(kind, steps, Default::default());
            let mut g = GuidedScore::new(&exact, Condition::Unconditional)
                .with(RewardGuidance::reweighted(&exact_rw), WeightSchedule::Constant(1.0));
            let x = draw(&s, &mut g, n, 2, cfg.seed, dev);
            let diverged = super::diverged_fraction(&x, 2, limit);
            let r = mean_reward(reward.as_ref(), &x, 2, dev);
            let mut g = GuidedScore::new(&exact, Condition::class(cfg.class, n, dev))
                .with(CfgGuidance::new(), WeightSchedule::Constant(cfg.cfg_strength));
            let c = problem.class_stats(&draw(&s, &mut g, n, 2, cfg.seed, dev), dev).expect("class set");
            let evals = steps * kind.evals_per_step() + 1;
            table.row(vec![
                kebab(&kind),
                steps.to_string(),
                evals.to_string(),
                if diverged > 0.0 { format!("diverged ({:.1} %)", 100.0 * diverged) } else { fmt(r.mean, 4) },
                if diverged > 0.0 { "—".into() } else { fmt(r.se, 4) },
                fmt(target, 4),
                fmt(c.mean_inv_class_prob.mean, 4),
                fmt(c.mean_inv_class_prob.se, 4),
            ]);
            // A diverged cell has no mean: NaN keeps it off the figure and names it in the reading.
            rp.push((steps as f64, if diverged > 0.0 { f64::NAN } else { r.mean }));
            cp.push((steps as f64, c.mean_inv_class_prob.mean));
            bar.inc(1);
        }
        reward_series.push(Series { name: kebab(&kind), points: rp });
        cfg_series.push(Series { name: kebab(&kind), points: cp });
    }
    bar.finish_and_clear();
    let bias = bias_table(ctx, &cfg, &mixture, &problem, &counts)?;
    plot::curves_scaled(
        &dir.join("reward_vs_steps.png"),
        "Reward guidance (w = 1): E[r(Y)] against steps (diverged points off the scale left out)",
        "steps",
        "E[r(Y)]",
        &on_scale(&reward_series, 0.5 * target, 2.0 * target),
        &[("E_p_r[r] (exact)".into(), target)],
        true,
    )?;
    plot::curves_scaled(
        &dir.join("cfg_vs_steps.png"),
        &format!("CFG (w = {}): E[1/p(c|Y)] against steps (diverged points left out)", cfg.cfg_strength),
        "steps",
        "E[1/p(c|Y)]",
        &on_scale(&cfg_series, 1.0, 3.0),
        &[],
        true,
    )?;
    plot::curves_scaled(
        &dir.join("variance_ratio_vs_steps.png"),
        "Unguided p(.|c): variance ratio against steps (points outside [0.5, 2] left out)",
        "steps",
        "variance ratio",
        &on_scale(&bias.series, 0.5, 2.0),
        &[("exact".into(), 1.0)],
        true,
    )?;
    let mut out =
        StageOutput::new("discretisation", "Discretisation: metrics against the number of steps", ctx, raw, cfg.seed);
    let last = counts.len() - 1;
    let reward_at = |i: usize| {
        reward_series
            .iter()
            .map(|s| match s.points.get(i).map(|p| p.1).filter(|v| v.is_finite()) {
                Some(v) => format!("{} {v:.4}", s.name),
                None => format!("{} diverged", s.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let se_last = table.rows.iter().rev().find_map(|r| r[4].parse::<f64>().ok()).unwrap_or(f64::NAN);
    let diverged_cells = table.rows.iter().filter(|r| r[3].starts_with("diverged")).count();
    out.reading = format!(
        "Reward guidance at w = 1 against the exact E_p_r[r] = {target:.4} (SE about {se_last:.4} per cell): at {} steps {}; at {} steps {}. \
         {diverged_cells} cells diverged (samples beyond 8 standard deviations of every component). Heun costs two score evaluations per step. {}",
        counts[0],
        reward_at(0),
        counts[last],
        reward_at(last),
        bias.reading,
    );
    out.headline = serde_json::json!({
        "target_mean_reward": target,
        "reward": reward_series.iter().map(|s| (s.name.clone(), s.points.clone())).collect::<Vec<_>>(),
        "most_accurate": bias.most_accurate,
    });
    out.figures = vec![
        ("reward_vs_steps.png".into(), "Mean reward at w = 1 against the number of steps, per sampler".into()),
        ("cfg_vs_steps.png".into(), "E[1/p(c|Y)] under CFG against the number of steps, per sampler".into()),
        (
            "variance_ratio_vs_steps.png".into(),
            "Unguided conditional sampling: variance ratio against the number of steps, per sampler".into(),
        ),
    ];
    out.tables = vec![table, bias.table];
    Ok(out)
}

/// The series with the points outside `[lo, hi]` left out: a sampler that diverges at 5 steps would otherwise
/// flatten every other curve. The tables keep every value.
fn on_scale(series: &[Series], lo: f64, hi: f64) -> Vec<Series> {
    series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            points: s.points.iter().copied().filter(|p| (lo..=hi).contains(&p.1)).collect(),
        })
        .collect()
}

/// The bias table and what it says.
struct Bias {
    table: Table,
    series: Vec<Series>,
    reading: String,
    /// Per step count, the sampler whose variance ratio is closest to 1.
    most_accurate: Vec<(usize, String)>,
}

/// Unguided conditional sampling of `class` (w = 0) with every sampler and step count, against what a perfect
/// sampler outputs: the Tweedie denoise at `t_min` of the exactly noised law, estimated from 4x as many exact
/// samples. Reports the variance ratio (mean over coordinates), `E[1/p(c|Y)]` against the closed form `1/p(c)`,
/// and the light-tailed `E[log p(c|Y)]`, each with a z-score.
fn bias_table(ctx: &Ctx, cfg: &Config, mixture: &GaussianMixture, problem: &Problem, counts: &[usize]) -> Result<Bias> {
    let dev = &ctx.device;
    let n = cfg.bias_samples.get(ctx.preset);
    let law = mixture.conditional(cfg.class);
    let d = law.dim();
    let inv_prior = 1.0 / mixture.class_prior(cfg.class);
    let oracle = MixtureScore::new(mixture.clone(), Default::default(), dev);
    let reference = tilt_sampler::diagnostics::perfect_denoised_samples(
        &law,
        Default::default(),
        tilt_sampler::DEFAULT_T_MIN,
        4 * n,
        cfg.seed ^ 0x5eed,
        dev,
    );
    let variance = |x: &[f32]| -> MeanSe {
        // Mean over coordinates of the per-coordinate squared deviations, averaged per row.
        let m = metrics::column_means(x, d);
        let sq: Vec<f64> = x
            .chunks_exact(d)
            .map(|r| r.iter().zip(&m).map(|(v, mu)| (*v as f64 - mu).powi(2)).sum::<f64>() / d as f64)
            .collect();
        metrics::mean_se(&sq)
    };
    let ref_var = variance(&reference);
    let ref_stats = problem.class_stats(&reference, dev).expect("class set");
    let mut table = Table::new(
        &format!(
            "Bias of unguided conditional sampling (class {}, w = 0, {n} samples per row) against a perfect sampler (exact samples noised to t_min and denoised exactly, {} rows): variance ratio, E[1/p(c|Y)] against 1/p(c) = {inv_prior:.4}, and the light-tailed E[log p(c|Y)] (reference {:.4} ± {:.4}); z = (value - reference) / combined SE",
            cfg.class,
            4 * n,
            ref_stats.mean_log_class_prob.mean,
            ref_stats.mean_log_class_prob.se
        ),
        &[
            "sampler",
            "steps",
            "variance_ratio",
            "ratio_se",
            "mean_inv_class_prob",
            "inv_se",
            "inv_z",
            "mean_log_class_prob",
            "log_se",
            "log_z",
        ],
    );
    let bar = ctx.bar("discretisation bias", (SamplerKind::ALL.len() * counts.len()) as u64);
    let mut series = Vec::new();
    // Per step count, the sampler closest to a variance ratio of 1, overall and among the stochastic ones.
    let mut best: Vec<Closest> = counts
        .iter()
        .map(|&steps| Closest { steps, sampler: String::new(), deviation: f64::INFINITY, se: 0.0 })
        .collect();
    let mut best_stochastic = best.clone();
    for kind in SamplerKind::ALL {
        let mut pts = Vec::new();
        for (i, &steps) in counts.iter().enumerate() {
            let s = sampler(kind, steps, Default::default());
            let mut g = GuidedScore::new(&oracle, Condition::class(cfg.class, n, dev));
            let x = draw(&s, &mut g, n, d, cfg.seed, dev);
            let v = variance(&x);
            let ratio = v.mean / ref_var.mean;
            let ratio_se = ratio * ((v.se / v.mean).powi(2) + (ref_var.se / ref_var.mean).powi(2)).sqrt();
            let c = problem.class_stats(&x, dev).expect("class set");
            let z = |a: MeanSe, b: MeanSe| (a.mean - b.mean) / (a.se.powi(2) + b.se.powi(2)).sqrt();
            let inv_z = (c.mean_inv_class_prob.mean - inv_prior) / c.mean_inv_class_prob.se;
            table.row(vec![
                kebab(&kind),
                steps.to_string(),
                fmt(ratio, 4),
                fmt(ratio_se, 4),
                fmt(c.mean_inv_class_prob.mean, 4),
                fmt(c.mean_inv_class_prob.se, 4),
                fmt(inv_z, 2),
                fmt(c.mean_log_class_prob.mean, 4),
                fmt(c.mean_log_class_prob.se, 4),
                fmt(z(c.mean_log_class_prob, ref_stats.mean_log_class_prob), 2),
            ]);
            pts.push((steps as f64, ratio));
            let here = Closest { steps, sampler: kebab(&kind), deviation: (ratio - 1.0).abs(), se: ratio_se };
            if here.deviation < best[i].deviation {
                best[i] = here.clone();
            }
            if kind.is_stochastic() && here.deviation < best_stochastic[i].deviation {
                best_stochastic[i] = here;
            }
            bar.inc(1);
        }
        series.push(Series { name: kebab(&kind), points: pts });
    }
    bar.finish_and_clear();
    let list = |b: &[Closest]| {
        b.iter()
            .map(|c| format!("{} steps: {} ({:.4} ± {:.4})", c.steps, c.sampler, c.deviation, c.se))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let reading = format!(
        "Bias table, the sampler whose variance ratio is closest to 1 (|ratio - 1| ± its SE in brackets): overall, {}. Among the stochastic samplers, {}. A ratio above 1 over-disperses, which inflates the heavy-tailed E[1/p(c|Y)] above 1/p(c) with no guidance at all; a ratio below 1 deflates it.",
        list(&best),
        list(&best_stochastic),
    );
    Ok(Bias { table, series, reading, most_accurate: best.into_iter().map(|c| (c.steps, c.sampler)).collect() })
}

/// The sampler whose variance ratio is closest to 1 at one step count.
#[derive(Clone)]
struct Closest {
    steps: usize,
    sampler: String,
    deviation: f64,
    se: f64,
}
