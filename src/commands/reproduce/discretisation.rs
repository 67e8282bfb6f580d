//! Experiment 6: metrics against the number of sampling steps, for every sampler.

use super::{Ctx, PerPreset, StageOutput, Table, draw, fmt, mean_reward, sampler, stage_config};
use crate::commands::sample::Problem;
use crate::config::GuidanceKind;
use crate::plot::{self, Series};
use anyhow::Result;
use serde::Deserialize;
use std::path::Path;
use tilt_core::{Condition, MixtureScore, MixtureSpec, RewardSpec};
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
    pub mixture: MixtureSpec,
}

fn name(k: SamplerKind) -> String {
    serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

pub fn run(ctx: &Ctx, dir: &Path) -> Result<StageOutput> {
    let (cfg, raw): (Config, _) = stage_config("discretisation", include_str!("../../../configs/experiments/discretisation.toml"))?;
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
    let bar = ctx.bar("discretisation", (SamplerKind::ALL.len() * counts.len()) as u64);
    let mut table = Table::new(
        "Mean reward (reward guidance, w = 1; exact E_p_r[r]) and E[1/p(c|Y)] (CFG) against the number of steps",
        &["sampler", "steps", "score_evals", "mean_reward", "reward_se", "exact_E_p_r", "mean_inv_class_prob", "inv_se"],
    );
    let (mut reward_series, mut cfg_series) = (Vec::new(), Vec::new());
    for kind in SamplerKind::ALL {
        let (mut rp, mut cp) = (Vec::new(), Vec::new());
        for &steps in &counts {
            let s = sampler(kind, steps, Default::default());
            let mut g = GuidedScore::new(&exact, Condition::Unconditional).with(RewardGuidance::reweighted(&exact_rw), WeightSchedule::Constant(1.0));
            let r = mean_reward(reward.as_ref(), &draw(&s, &mut g, n, 2, cfg.seed, dev), 2, dev);
            let mut g = GuidedScore::new(&exact, Condition::class(cfg.class, n, dev)).with(CfgGuidance::new(), WeightSchedule::Constant(cfg.cfg_strength));
            let c = problem.class_stats(&draw(&s, &mut g, n, 2, cfg.seed, dev), dev).expect("class set");
            let evals = steps * kind.evals_per_step() + 1;
            table.row(vec![name(kind), steps.to_string(), evals.to_string(), fmt(r.mean, 4), fmt(r.se, 4), fmt(target, 4), fmt(c.mean_inv_class_prob.mean, 4), fmt(c.mean_inv_class_prob.se, 4)]);
            rp.push((steps as f64, r.mean));
            cp.push((steps as f64, c.mean_inv_class_prob.mean));
            bar.inc(1);
        }
        reward_series.push(Series { name: name(kind), points: rp });
        cfg_series.push(Series { name: name(kind), points: cp });
    }
    bar.finish_and_clear();
    plot::curves_scaled(&dir.join("reward_vs_steps.png"), "Reward guidance (w = 1): E[r(Y)] against steps", "steps", "E[r(Y)]", &reward_series, &[("E_p_r[r] (exact)".into(), target)], true)?;
    plot::curves_scaled(&dir.join("cfg_vs_steps.png"), &format!("CFG (w = {}): E[1/p(c|Y)] against steps", cfg.cfg_strength), "steps", "E[1/p(c|Y)]", &cfg_series, &[], true)?;
    let mut out = StageOutput::new("discretisation", "Discretisation: metrics against the number of steps", ctx, raw, cfg.seed);
    let at = |k: SamplerKind, i: usize| reward_series.iter().find(|s| s.name == name(k)).and_then(|s| s.points.get(i)).map_or(f64::NAN, |p| p.1);
    let last = counts.len() - 1;
    out.reading = format!(
        "With exact scores every sampler converges to the exact E_p_r[r] = {target:.4} as the steps grow: at {} steps the \
         exponential integrator gives {:.4}, Euler-Maruyama {:.4}, DDPM {:.4}, Heun {:.4}, DDIM {:.4}; at {} steps \
         {:.4}, {:.4}, {:.4}, {:.4}, {:.4}. Heun costs two score evaluations per step.",
        counts[0], at(SamplerKind::ExponentialIntegrator, 0), at(SamplerKind::EulerMaruyama, 0), at(SamplerKind::Ddpm, 0), at(SamplerKind::Heun, 0), at(SamplerKind::Ddim, 0),
        counts[last], at(SamplerKind::ExponentialIntegrator, last), at(SamplerKind::EulerMaruyama, last), at(SamplerKind::Ddpm, last), at(SamplerKind::Heun, last), at(SamplerKind::Ddim, last),
    );
    out.headline = serde_json::json!({ "target_mean_reward": target, "reward": reward_series.iter().map(|s| (s.name.clone(), s.points.clone())).collect::<Vec<_>>() });
    out.figures = vec![
        ("reward_vs_steps.png".into(), "Mean reward at w = 1 against the number of steps, per sampler".into()),
        ("cfg_vs_steps.png".into(), "E[1/p(c|Y)] under CFG against the number of steps, per sampler".into()),
    ];
    out.tables = vec![table];
    Ok(out)
}
