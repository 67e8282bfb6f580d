//! Experiment 8: the guidance menu against exact answers (configs/experiments/guidance_zoo.toml).
//!
//! Part 1 puts every reward-steering method on the exact reward mixture at matched cost; part 2 puts CFG, its
//! variants and autoguidance on the trained conditional network toward one class.

use super::{Ctx, PerPreset, StageOutput, Table, TrainSpec, dsm, fmt, mixture_data, rewards, sampler, stage_config};
use crate::commands::sample::Problem;
use crate::config::GuidanceKind;
use crate::plot::{self, Series};
use anyhow::Result;
use burn::prelude::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use std::path::Path;
use std::time::Instant;
use tilt_core::metrics::{self, MeanSe};
use tilt_core::{Condition, ExpLinearReward, GaussianMixture, MixtureScore, MixtureSpec, RewardSpec, tensor_ext};
use tilt_sampler::best_of_n::best_of_n_indices;
use tilt_sampler::guidance::{
    Apg, AutoGuidance, CfgGuidance, CfgPlusPlus, CfgVariant, GuidanceTerm, RewardGuidance, TrainingFreeGuidance,
    TrainingFreePreset,
};
use tilt_sampler::{GuidedScore, NoiseSource, Proposal, SamplerKind, Smc, SmcOutput, WeightSchedule};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub seed: u64,
    pub samples: PerPreset<usize>,
    pub budget: PerPreset<usize>,
    pub budgets: PerPreset<Vec<usize>>,
    pub strengths: Vec<f64>,
    pub smc_groups: usize,
    pub reward: RewardSpec,
    pub class: usize,
    pub class_strengths: Vec<f64>,
    /// CFG++'s scales `l` (its strengths; DDIM, as CFG++ needs), beside CFG on DDIM at `class_strengths`.
    pub cfgpp_scales: Vec<f64>,
    /// Best-of-N's candidate counts at the main budget.
    pub best_of: Vec<usize>,
    pub class_steps: PerPreset<usize>,
    pub good_train: TrainSpec,
    pub weak_train: TrainSpec,
    pub mixture: MixtureSpec,
    pub class_mixture: MixtureSpec,
}

/// A reward-steering method of part 1.
#[derive(Clone, Copy, PartialEq)]
enum RewardMethod {
    /// The papers' rule with the exact reweighted score: `g = s_r - s`.
    ExactTilt,
    TrainingFree(TrainingFreePreset),
    /// SMC with reward potentials; the particles move with the base sampler or with the papers' rule (exact tilt).
    Smc(Proposal),
}

impl RewardMethod {
    fn all() -> Vec<RewardMethod> {
        let mut m = vec![RewardMethod::ExactTilt];
        m.extend(TrainingFreePreset::ALL.iter().map(|p| RewardMethod::TrainingFree(*p)));
        m.push(RewardMethod::Smc(Proposal::Base));
        m.push(RewardMethod::Smc(Proposal::Guided));
        m
    }

    fn label(&self) -> String {
        match self {
            RewardMethod::ExactTilt => "exact tilt (papers' rule)".into(),
            RewardMethod::TrainingFree(p) => format!("{} (TFG)", crate::config::kebab(p)),
            RewardMethod::Smc(Proposal::Base) => "SMC (base proposal)".into(),
            RewardMethod::Smc(Proposal::Guided) => "SMC (guided proposal: papers' rule)".into(),
        }
    }

    /// Model evaluations per sampler step (forward-pass equivalents).
    fn cost_per_step(&self) -> f64 {
        match self {
            RewardMethod::ExactTilt => 2.0,
            RewardMethod::TrainingFree(p) => (1.0 + p.params().model_evaluations()) * p.recurrence() as f64,
            RewardMethod::Smc(Proposal::Base) => 1.0,
            // The base and the reweighted score at every step.
            RewardMethod::Smc(Proposal::Guided) => 2.0,
        }
    }

    /// Steps so that `(steps + 1) * cost` (the chain plus the final denoise) is about `budget`.
    fn steps_for(&self, budget: usize) -> usize {
        ((budget as f64 / self.cost_per_step()).round() as usize).saturating_sub(1).max(2)
    }
}

/// One run of a reward method: the samples (resampled for SMC), `E[r]` with its SE, evaluations per sample.
struct RewardRun {
    x: Vec<f32>,
    reward: MeanSe,
    /// Fraction of samples beyond [`Problem1::limit`]: chains that left the data (their rewards are not samples of
    /// any tilted law, and a few of them dominate the mean).
    diverged: f64,
    evaluations: f64,
    seconds: f64,
    /// SMC: the mean final ESS / group size over its groups.
    ess: Option<f64>,
}

struct Problem1<'a> {
    exact: &'a MixtureScore,
    exact_rw: &'a MixtureScore,
    reward: &'a dyn tilt_core::Reward,
    n: usize,
    groups: usize,
    seed: u64,
    /// [`super::divergence_limit`] of the mixture.
    limit: f64,
}

impl Problem1<'_> {
    fn diverged(&self, x: &[f32]) -> f64 {
        super::diverged_fraction(x, 2, self.limit)
    }

    /// One SMC run of `n` particles in [`Problem1::groups`] independent groups at tilt exponent `w`.
    fn smc(&self, proposal: Proposal, w: f64, steps: usize, ess_threshold: f64, dev: &Device) -> SmcOutput {
        let s = sampler(SamplerKind::SdeDpmSolver1, steps, Default::default());
        let mut g = GuidedScore::new(self.exact, Condition::Unconditional);
        if proposal == Proposal::Guided {
            g = g.with(RewardGuidance::reweighted(self.exact_rw), WeightSchedule::Constant(w));
        }
        let smc = Smc { proposal, ess_threshold, groups: self.groups, ..Smc::new(w, self.seed) };
        smc.run(&s, &mut g, self.reward, self.n, 2, dev, &mut NoiseSource::host(self.seed))
    }

    fn run(&self, method: RewardMethod, w: f64, budget: usize, dev: &Device) -> RewardRun {
        let steps = method.steps_for(budget);
        let start = Instant::now();
        if let RewardMethod::Smc(proposal) = method {
            let out = self.smc(proposal, w, steps, 0.5, dev);
            let r = rewards(self.reward, &tensor_ext::to_vec(out.particles.clone()), 2, dev);
            let x = tensor_ext::to_vec(out.resampled(self.seed + 1000));
            return RewardRun {
                diverged: self.diverged(&x),
                x,
                // Independent groups give the standard error of the self-normalised estimate.
                reward: out.estimate(&r),
                evaluations: (steps + 1) as f64 * method.cost_per_step(),
                seconds: start.elapsed().as_secs_f64(),
                ess: Some(out.final_ess()),
            };
        }
        let term: Box<dyn GuidanceTerm> = match method {
            RewardMethod::ExactTilt => Box::new(RewardGuidance::reweighted(self.exact_rw)),
            RewardMethod::TrainingFree(p) => Box::new(TrainingFreeGuidance::preset(self.reward, p, self.seed)),
            RewardMethod::Smc(_) => unreachable!("handled above"),
        };
        let s = sampler(SamplerKind::SdeDpmSolver1, steps, Default::default());
        let mut noise = NoiseSource::host(self.seed);
        let recurrence = match method {
            RewardMethod::TrainingFree(p) => p.recurrence(),
            _ => 1,
        };
        let s = s.with_recurrence(recurrence);
        let mut g =
            GuidedScore::new(self.exact, Condition::Unconditional).with_boxed(term, WeightSchedule::Constant(w));
        let x = tensor_ext::to_vec(s.draw(&mut g, self.n, 2, dev, &mut noise));
        let r = rewards(self.reward, &x, 2, dev);
        // Rewards of diverged chains are not finite: they make the mean infinite, which the table then shows.
        RewardRun {
            diverged: self.diverged(&x),
            x,
            reward: metrics::mean_se(&r),
            evaluations: g.model_evaluations,
            seconds: start.elapsed().as_secs_f64(),
            ess: None,
        }
    }
}

/// `E_{p r^w}[r]` for `r = exp(a.x)`: the tilt of `p` by `r^w` is the tilt by `w a`.
fn tilted_mean_reward(m: &GaussianMixture, a: &ExpLinearReward, w: f64) -> f64 {
    m.tilted(&ExpLinearReward::new(a.a.iter().map(|v| v * w).collect())).mean_reward(a)
}

pub fn run(ctx: &Ctx, dir: &Path) -> Result<StageOutput> {
    let (cfg, raw): (Config, _) = stage_config("guidance_zoo")?;
    let p = ctx.preset;
    let dev = &ctx.device;
    let mixture = super::experiment_mixture(&cfg.mixture)?;
    let a = super::exact_reward(&cfg.reward)?;
    let reward = cfg.reward.build();
    let exact = MixtureScore::new(mixture.clone(), Default::default(), dev);
    let tilted = mixture.tilted(&a);
    let exact_rw = MixtureScore::new(tilted.clone(), Default::default(), dev);
    let n = cfg.samples.get(p);
    let (budget, budgets) = (cfg.budget.get(p), cfg.budgets.get(p));
    for (field, empty) in [("strengths", cfg.strengths.is_empty()), ("class_strengths", cfg.class_strengths.is_empty())]
    {
        if empty {
            anyhow::bail!("{field}: expected at least one strength");
        }
    }
    if cfg.smc_groups == 0 || n / cfg.smc_groups < 2 {
        anyhow::bail!("smc_groups: expected 1 to samples / 2 groups, got {}", cfg.smc_groups);
    }
    let problem = Problem1 {
        exact: &exact,
        exact_rw: &exact_rw,
        reward: reward.as_ref(),
        n,
        groups: cfg.smc_groups,
        seed: cfg.seed,
        limit: super::divergence_limit(&mixture),
    };
    let methods = RewardMethod::all();
    let class_methods = ClassMethod::all();
    let bar = ctx.bar(
        "guidance_zoo",
        (methods.len() * (cfg.strengths.len() + budgets.len())
            + cfg.strengths.len()
            + cfg.best_of.len()
            + class_methods.iter().map(|m| m.strengths(&cfg).len()).sum::<usize>()
            + 2) as u64,
    );

    // Part 1: strengths at the main budget.
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x200);
    let (reference, _) = tilted.sample(n.max(2000), &mut rng);
    let (fresh, _) = tilted.sample(n, &mut rng);
    let target = mixture.tilted_mean_reward(&a);
    let mut table = Table::new(
        &format!(
            "Reward steering on the exact mixture, r(x) = exp(a.x), exact base score, {budget} model evaluations per sample (forward-pass equivalents; a gradient through the denoiser counts 3); {n} samples per row, the same noise for every method. target: the exact E[r] of p r^w (at w = 1, p_r: {target:.4}); z = (mean - target) / se. sw_to_p_r: sliced Wasserstein to exact draws of p_r (w = 1 rows), beside the floor an exact sample of the same size scores. SMC: {} independent groups (its SE is their spread); ess: final effective sample size / particles",
            cfg.smc_groups
        ),
        &[
            "method",
            "w",
            "steps",
            "evals_per_sample",
            "mean_reward",
            "se",
            "target",
            "z",
            "sw_to_p_r",
            "sw_floor",
            "ess",
            "seconds",
        ],
    );
    let mut at_one = Vec::new();
    // z against the exact tilt at the largest strength, for the reading: the papers' rule alone and as SMC's proposal.
    let w_top = cfg.strengths.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut z_top: Vec<(RewardMethod, f64)> = Vec::new();
    let mut ess_top = (f64::NAN, f64::NAN);
    let mut headline = serde_json::Map::new();
    for &m in &methods {
        for &w in &cfg.strengths {
            let run = problem.run(m, w, budget, dev);
            let t = tilted_mean_reward(&mixture, &a, w);
            let finite = run.diverged == 0.0;
            let z = (run.reward.mean - t) / run.reward.se;
            let (sw, floor) = if w == 1.0 && finite {
                let d = metrics::distance_to_exact(&run.x, &reference, &fresh, 2, cfg.seed);
                (fmt(d.sliced_wasserstein, 4), fmt(d.sliced_wasserstein_floor, 4))
            } else {
                (String::new(), String::new())
            };
            table.row(vec![
                m.label(),
                format!("{w}"),
                m.steps_for(budget).to_string(),
                fmt(run.evaluations, 0),
                if finite { fmt(run.reward.mean, 4) } else { format!("diverged ({:.1} %)", 100.0 * run.diverged) },
                if finite { fmt(run.reward.se, 4) } else { "—".into() },
                fmt(t, 4),
                if finite { format!("{z:+.2}") } else { "diverged".into() },
                sw.clone(),
                floor.clone(),
                run.ess.map(|e| fmt(e, 3)).unwrap_or_default(),
                fmt(run.seconds, 2),
            ]);
            if w == w_top && finite {
                z_top.push((m, z));
            }
            if w == 1.0 {
                headline.insert(
                    m.label(),
                    serde_json::json!({ "mean_reward": run.reward.mean, "se": run.reward.se, "z": z, "sliced_wasserstein": sw, "evaluations": run.evaluations }),
                );
                let reward = if finite { run.reward } else { MeanSe { mean: f64::NAN, se: f64::NAN } };
                at_one.push((m, reward, sw.parse::<f64>().ok(), floor.parse::<f64>().ok()));
            }
            bar.inc(1);
        }
    }

    // Part 1, weight degeneracy: the final ESS with no resampling, base against guided proposal, the same particles
    // and steps.
    let ess_steps = RewardMethod::Smc(Proposal::Guided).steps_for(budget);
    let mut ess_table = Table::new(
        &format!(
            "SMC weight degeneracy: final effective sample size / particles with no resampling, {} groups of {} particles, {ess_steps} steps for both proposals (guided: the papers' rule with the exact reweighted score at the same w)",
            cfg.smc_groups,
            n / cfg.smc_groups
        ),
        &["w", "ess_base_proposal", "ess_guided_proposal", "ratio"],
    );
    for &w in &cfg.strengths {
        let base = problem.smc(Proposal::Base, w, ess_steps, 0.0, dev).final_ess();
        let guided = problem.smc(Proposal::Guided, w, ess_steps, 0.0, dev).final_ess();
        ess_table.row(vec![format!("{w}"), fmt(base, 4), fmt(guided, 4), fmt(guided / base, 2)]);
        if w == w_top {
            ess_top = (base, guided);
        }
        headline.insert(format!("smc_ess_ratio_w{w}"), serde_json::json!(guided / base));
        bar.inc(1);
    }

    // Part 1, best-of-N at the main budget: the search baseline. It samples no tilt p r^w; its exact reference is
    // the best of N exact draws of p (Monte Carlo), and the tilt with the same E[r] gives its equivalent w.
    let groups = 200_000;
    let mut bon_table = Table::new(
        &format!(
            "Best-of-N at about {budget} model evaluations per sample: N candidates from the unguided sampler, each with the steps that make N (steps + 1) the budget (at least 2), the one with the highest reward kept; {n} samples. exact: E[r] of the best of N exact draws of p ({groups} groups); z = (mean - exact) / combined SE; w_equivalent: the w whose tilt p r^w has the same E[r]"
        ),
        &["N", "steps", "evals_per_sample", "mean_reward", "se", "exact_best_of_n", "exact_se", "z", "w_equivalent"],
    );
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xb0b);
    for &candidates in &cfg.best_of {
        if candidates == 0 {
            anyhow::bail!("best_of: expected candidate counts of at least 1, got 0");
        }
        let steps = (budget / candidates).saturating_sub(1).max(2);
        let s = sampler(SamplerKind::SdeDpmSolver1, steps, Default::default());
        let mut g = GuidedScore::new(&exact, Condition::Unconditional);
        let x = tensor_ext::to_vec(s.draw(&mut g, n * candidates, 2, dev, &mut NoiseSource::host(cfg.seed)));
        let diverged = problem.diverged(&x);
        let r = rewards(reward.as_ref(), &x, 2, dev);
        let log_r: Vec<f64> = r.iter().map(|v| v.ln()).collect();
        let kept: Vec<f64> = best_of_n_indices(&log_r, candidates).into_iter().map(|i| r[i]).collect();
        let got = metrics::mean_se(&kept);
        let (draws, _) = mixture.sample(groups * candidates, &mut rng);
        let exact_r = rewards(reward.as_ref(), &draws, 2, dev);
        let best: Vec<f64> =
            exact_r.chunks_exact(candidates).map(|c| c.iter().cloned().fold(f64::NEG_INFINITY, f64::max)).collect();
        let reference = metrics::mean_se(&best);
        let z = (got.mean - reference.mean) / (got.se.powi(2) + reference.se.powi(2)).sqrt();
        // E_{p r^w}[r] increases with w: bisection.
        let (mut lo, mut hi) = (0.0, 20.0);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if tilted_mean_reward(&mixture, &a, mid) < got.mean { lo = mid } else { hi = mid }
        }
        let finite = diverged == 0.0;
        bon_table.row(vec![
            candidates.to_string(),
            steps.to_string(),
            fmt((candidates * (steps + 1)) as f64, 0),
            if finite { fmt(got.mean, 4) } else { format!("diverged ({:.1} %)", 100.0 * diverged) },
            if finite { fmt(got.se, 4) } else { "—".into() },
            fmt(reference.mean, 4),
            fmt(reference.se, 4),
            if finite { format!("{z:+.2}") } else { "diverged".into() },
            if finite { fmt(0.5 * (lo + hi), 3) } else { "—".into() },
        ]);
        headline.insert(format!("best_of_{candidates}_mean_reward"), serde_json::json!(got.mean));
        bar.inc(1);
    }

    // Part 1, figure: |bias| at w = 1 against the budget.
    let mut cost_table = Table::new(
        "Bias of E[r] at w = 1 against the budget (model evaluations per sample): mean - E_p_r[r] and its SE; diverged: the fraction of samples that left the data (beyond 8 standard deviations of every component), whose mean has no meaning",
        &["method", "budget", "steps", "evals_per_sample", "bias", "se"],
    );
    let mut series = Vec::new();
    // A bias below about two standard errors is not resolved: the figure draws that level.
    let mut noise_floor = 0.0f64;
    for &m in &methods {
        let mut pts = Vec::new();
        for &b in &budgets {
            let run = problem.run(m, 1.0, b, dev);
            if m == RewardMethod::ExactTilt && run.diverged == 0.0 {
                noise_floor = noise_floor.max(2.0 * run.reward.se);
            }
            let bias = run.reward.mean - target;
            let diverged = run.diverged > 0.0;
            cost_table.row(vec![
                m.label(),
                b.to_string(),
                m.steps_for(b).to_string(),
                fmt(run.evaluations, 0),
                if diverged { format!("diverged ({:.1} %)", 100.0 * run.diverged) } else { fmt(bias, 4) },
                if diverged { "—".into() } else { fmt(run.reward.se, 4) },
            ]);
            if !diverged {
                // log10: the biases span three orders of magnitude across the methods.
                pts.push((run.evaluations, bias.abs().max(1e-4).log10()));
            }
            bar.inc(1);
        }
        series.push(Series { name: m.label(), points: pts });
    }
    plot::curves_scaled(
        &dir.join("reward_vs_cost.png"),
        "Reward steering at w = 1: |E[r] - E_p_r[r]| against model evaluations per sample",
        "model evaluations per sample (log10)",
        "log10 |bias of E[r]| (diverged runs left out)",
        &series,
        &if noise_floor > 0.0 { vec![("2 SE of E[r] (resolution)".into(), noise_floor.log10())] } else { vec![] },
        true,
    )?;

    // Part 2: class guidance on a trained conditional network of the thin-branch mixture.
    let class_mix = cfg.class_mixture.build().map_err(|e| anyhow::anyhow!("class_mixture.{e}"))?;
    if cfg.class >= class_mix.n_classes() {
        anyhow::bail!("class: class {} does not exist in class_mixture ({} classes)", cfg.class, class_mix.n_classes());
    }
    let train = |name: &str, spec: &TrainSpec| {
        ctx.trained(name, &spec.config(mixture_data(&cfg.class_mixture), dsm(true, spec.p_uncond), p, cfg.seed))
    };
    let good_run = train("branches_conditional", &cfg.good_train)?;
    let weak_run = train("branches_conditional_weak", &cfg.weak_train)?;
    let good = tilt_train::load_score(&good_run, tilt_train::ModelKind::ScoreNet, dev)?.score;
    let weak = tilt_train::load_score(&weak_run, tilt_train::ModelKind::ScoreNet, dev)?.score;
    bar.inc(1);
    let class_problem = Problem::new(class_mix.clone(), GuidanceKind::Cfg, Some(cfg.class), None);
    let conditional = class_mix.conditional(cfg.class);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x300);
    let (class_reference, _) = conditional.sample(n.max(2000), &mut rng);
    let (class_fresh, _) = conditional.sample(n.max(2000), &mut rng);
    let log_density = |x: &[f32]| -> Vec<f64> {
        x.chunks_exact(2)
            .map(|r| conditional.log_density_at(&[r[0] as f64, r[1] as f64], 0.0, Default::default()))
            .collect()
    };
    // "Outside the data": below the 1 % quantile of exact draws' log density (an exact sampler: 1 %).
    let threshold = metrics::quantiles(&log_density(&class_fresh), &[0.01])[0];
    let outside = |x: &[f32]| log_density(x).iter().filter(|l| **l < threshold).count() as f64 / (x.len() / 2) as f64;
    let steps = cfg.class_steps.get(p);
    let s = sampler(SamplerKind::SdeDpmSolver1, steps, Default::default());
    let s_ddim = sampler(SamplerKind::Ddim, steps, Default::default());
    let mut class_table = Table::new(
        &format!(
            "Class guidance toward class {} of the thin-branch class_mixture, on a trained conditional network ({steps} steps, {n} samples per row, the same noise for every row). outside: fraction with exact log p(x|c) below the 1 % quantile of exact draws (an exact sampler scores 0.01); sw_to_p_c: sliced Wasserstein to exact draws of p(x|c), beside its floor. Autoguidance's guide: a network of half the width trained half as long ([weak_train])",
            cfg.class
        ),
        &["method", "w", "outside", "mean_log_class_prob", "se", "sw_to_p_c", "sw_floor"],
    );
    let mut class_rows: Vec<ClassRow> = Vec::new();
    let mut figures = vec![(
        "reward_vs_cost.png".to_string(),
        "Reward steering at w = 1: log10 of the absolute bias of E[r] against model evaluations per sample".to_string(),
    )];
    let floor = metrics::sliced_wasserstein(&class_fresh[..n * 2], &class_reference, 2, 64, cfg.seed);
    for &m in &class_methods {
        let strengths = m.strengths(&cfg);
        for w in strengths {
            let term: Box<dyn GuidanceTerm> = match m {
                ClassMethod::Cfg(v) | ClassMethod::CfgDdim(v) => Box::new(CfgGuidance::variant(v)),
                ClassMethod::CfgPlusPlus => Box::new(CfgPlusPlus::new()),
                ClassMethod::Apg => {
                    Box::new(CfgGuidance::with_apg(Apg { eta: 0.0, norm_threshold: 0.0, momentum: 0.0 }))
                }
                ClassMethod::Autoguidance => Box::new(AutoGuidance::new(&weak)),
                ClassMethod::Unguided => Box::new(CfgGuidance::new()),
            };
            let s = if m.on_ddim() { &s_ddim } else { &s };
            let mut g = GuidedScore::new(&good, Condition::class(cfg.class, n, dev))
                .with_boxed(term, WeightSchedule::Constant(w))
                .with_grid(&s.times);
            let x = tensor_ext::to_vec(s.draw(&mut g, n, 2, dev, &mut NoiseSource::host(cfg.seed)));
            let stats = class_problem.class_stats(&x, dev).expect("class set");
            let out = outside(&x);
            let sw = metrics::sliced_wasserstein(&x, &class_reference, 2, 64, cfg.seed);
            class_table.row(vec![
                m.label(),
                format!("{w}"),
                fmt(out, 4),
                fmt(stats.mean_log_class_prob.mean, 4),
                fmt(stats.mean_log_class_prob.se, 4),
                fmt(sw, 4),
                fmt(floor, 4),
            ]);
            // The EDM2 toy's picture: CFG and autoguidance at the middle strength, over the class density.
            let plotted = [ClassMethod::Cfg(CfgVariant::Plain), ClassMethod::Autoguidance];
            if plotted.contains(&m) && w == cfg.class_strengths[cfg.class_strengths.len() / 2] {
                let file = format!("class_{}.png", if m == ClassMethod::Autoguidance { "autoguidance" } else { "cfg" });
                plot::scatter_over_density(
                    &dir.join(&file),
                    &format!("{}, w = {w}, class {} of the branches (density of p(x|c))", m.label(), cfg.class),
                    &x,
                    2,
                    super::bounds(&class_mix),
                    &|u, v| conditional.log_density_at(&[u, v], 0.0, Default::default()),
                )?;
                figures.push((
                    file,
                    format!("{} at w = {w}: samples over the exact density of class {}", m.label(), cfg.class),
                ));
            }
            class_rows.push(ClassRow { method: m, w, outside: out, sw, floor });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let mut reading = reading(&at_one, target, &class_rows, budget);
    let z_of = |m: RewardMethod| z_top.iter().find(|(k, _)| *k == m).map(|(_, z)| *z);
    if let (Some(rule), Some(smc)) = (z_of(RewardMethod::ExactTilt), z_of(RewardMethod::Smc(Proposal::Guided))) {
        reading.push_str(&format!(
            " At w = {w_top}, where the tilt p r^w is not what the papers' rule samples, the rule alone is {rule:+.1} SE off E_{{p r^w}}[r] = {:.4}; SMC with the rule as its proposal {smc:+.1} SE, and without resampling its final ESS is {:.3} against the base proposal's {:.3}.",
            tilted_mean_reward(&mixture, &a, w_top),
            ess_top.1,
            ess_top.0
        ));
    }
    let at = |m: ClassMethod, w: f64| class_rows.iter().find(|r| r.method == m && r.w == w);
    let pp: Vec<String> = cfg
        .cfgpp_scales
        .iter()
        .filter_map(|l| at(ClassMethod::CfgPlusPlus, *l).map(|r| format!("l = {l}: {:.1} %", 100.0 * r.outside)))
        .collect();
    let plain: Vec<String> = cfg
        .class_strengths
        .iter()
        .filter_map(|w| {
            at(ClassMethod::CfgDdim(CfgVariant::Plain), *w).map(|r| format!("w = {w}: {:.1} %", 100.0 * r.outside))
        })
        .collect();
    if !pp.is_empty() && !plain.is_empty() {
        reading.push_str(&format!(
            " On DDIM ({steps} steps), samples outside the thin branches: CFG++ {}; CFG {}.",
            pp.join(", "),
            plain.join(", ")
        ));
    }
    headline.insert(
        "class".into(),
        serde_json::json!(class_rows.iter().map(|r| (r.method.label(), r.w, r.outside, r.sw)).collect::<Vec<_>>()),
    );
    let mut out = StageOutput::new("guidance_zoo", "The guidance menu against exact answers", ctx, raw, cfg.seed);
    out.tables = vec![table, ess_table, bon_table, cost_table, class_table];
    out.figures = figures;
    out.reading = reading;
    out.headline = serde_json::Value::Object(headline);
    Ok(out)
}

/// One row of part 2.
struct ClassRow {
    method: ClassMethod,
    w: f64,
    outside: f64,
    sw: f64,
    floor: f64,
}

/// A class-guidance method of part 2.
#[derive(Clone, Copy, PartialEq)]
enum ClassMethod {
    /// The conditional network alone (w = 0).
    Unguided,
    Cfg(CfgVariant),
    Apg,
    Autoguidance,
    /// CFG on DDIM, CFG++'s sampler.
    CfgDdim(CfgVariant),
    /// CFG++ (DDIM); its strength is the scale `l`.
    CfgPlusPlus,
}

impl ClassMethod {
    fn all() -> Vec<ClassMethod> {
        vec![
            ClassMethod::Unguided,
            ClassMethod::Cfg(CfgVariant::Plain),
            ClassMethod::Cfg(CfgVariant::ZeroStar),
            ClassMethod::Cfg(CfgVariant::Tangential),
            ClassMethod::Cfg(CfgVariant::MagnitudeAware { alpha: 8.0 }),
            ClassMethod::Apg,
            ClassMethod::Autoguidance,
            ClassMethod::CfgDdim(CfgVariant::Plain),
            ClassMethod::CfgPlusPlus,
        ]
    }

    /// The strengths the method runs at: CFG++'s scales `l`, 0 alone for the unguided row, else `class_strengths`.
    fn strengths(&self, cfg: &Config) -> Vec<f64> {
        match self {
            ClassMethod::Unguided => vec![0.0],
            ClassMethod::CfgPlusPlus => cfg.cfgpp_scales.clone(),
            _ => cfg.class_strengths.clone(),
        }
    }

    /// CFG++ and its CFG reference run on DDIM; the rest on SDE-DPM-Solver-1.
    fn on_ddim(&self) -> bool {
        matches!(self, ClassMethod::CfgDdim(_) | ClassMethod::CfgPlusPlus)
    }

    fn label(&self) -> String {
        match self {
            ClassMethod::Unguided => "unguided (conditional network)".into(),
            ClassMethod::Cfg(CfgVariant::Plain) => "cfg".into(),
            ClassMethod::Cfg(CfgVariant::ZeroStar) => "cfg-zero* (scale)".into(),
            ClassMethod::Cfg(CfgVariant::Tangential) => "tangential cfg".into(),
            ClassMethod::Cfg(CfgVariant::MagnitudeAware { alpha }) => format!("mambo-g (alpha {alpha})"),
            ClassMethod::Apg => "apg (eta 0)".into(),
            ClassMethod::Autoguidance => "autoguidance".into(),
            ClassMethod::CfgDdim(_) => "cfg (ddim)".into(),
            ClassMethod::CfgPlusPlus => "cfg++ (ddim; w is l)".into(),
        }
    }
}

/// The reading, computed from the rows.
fn reading(
    at_one: &[(RewardMethod, MeanSe, Option<f64>, Option<f64>)],
    target: f64,
    class_rows: &[ClassRow],
    budget: usize,
) -> String {
    let mut consistent = Vec::new();
    let mut differs = Vec::new();
    for (m, r, sw, floor) in at_one {
        let z = (r.mean - target) / r.se;
        let sw_text = match (sw, floor) {
            (Some(s), Some(f)) if *s > 1.5 * f => format!("SW {s:.4}, above its floor {f:.4}"),
            (Some(s), Some(f)) => format!("SW {s:.4}, at its floor {f:.4}"),
            _ => "no distance (diverged)".into(),
        };
        let entry = format!("{} ({:.4} ± {:.4}, {z:+.1} SE; {sw_text})", m.label(), r.mean, r.se);
        if z.is_finite() && z.abs() <= 2.0 {
            consistent.push(entry);
        } else {
            differs.push(entry);
        }
    }
    let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join("; ") };
    let mut text = format!(
        "At w = 1 and {budget} model evaluations per sample, against the exact E_p_r[r] = {target:.4}: consistent within 2 SE: {}. Differs: {}.",
        list(&consistent),
        list(&differs)
    );
    let strengths = class_rows.iter().filter(|r| r.method == ClassMethod::Autoguidance).map(|r| r.w);
    for w in strengths {
        let at = |m: ClassMethod| class_rows.iter().find(|r| r.method == m && r.w == w);
        if let (Some(cfg), Some(auto)) = (at(ClassMethod::Cfg(CfgVariant::Plain)), at(ClassMethod::Autoguidance)) {
            let closer = if auto.sw < cfg.sw { "closer to" } else { "not closer to" };
            text.push_str(&format!(
                " Class guidance at w = {w}: autoguidance {:.1} % of samples outside the data, CFG {:.1} % (an exact sampler: 1 %); sliced Wasserstein to p(x|c): autoguidance {:.4}, CFG {:.4} (floor {:.4}): autoguidance is {closer} the class law.",
                100.0 * auto.outside,
                100.0 * cfg.outside,
                auto.sw,
                cfg.sw,
                auto.floor,
            ));
        }
    }
    text
}
