//! Experiment 1: CFG on a Gaussian mixture, exact and trained scores.

use super::{Ctx, PerPreset, StageOutput, Table, draw, dsm, fmt, mixture_data, sampler, stage_config};
use crate::commands::sample::{ClassStats, Problem, QUANTILE_LEVELS};
use crate::config::GuidanceKind;
use crate::plot::{self, Series};
use anyhow::Result;
use serde::Deserialize;
use std::path::Path;
use tilt_core::metrics::{self, MeanSe};
use tilt_core::{Condition, MixtureScore, MixtureSpec, ScoreModel};
use tilt_sampler::guidance::CfgGuidance;
use tilt_sampler::{GuidedScore, SamplerKind, WeightSchedule};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub seed: u64,
    pub class: usize,
    pub samples: PerPreset<usize>,
    pub steps: PerPreset<usize>,
    pub strengths: Vec<f64>,
    pub train: super::TrainSpec,
    pub mixture: MixtureSpec,
}

pub fn run(ctx: &Ctx, dir: &Path) -> Result<StageOutput> {
    let (cfg, raw): (Config, _) = stage_config("cfg_mixture")?;
    let p = ctx.preset;
    let mixture = super::experiment_mixture(&cfg.mixture)?;
    let problem = Problem::new(mixture.clone(), GuidanceKind::Cfg, Some(cfg.class), None);
    let (n, steps) = (cfg.samples.get(p), cfg.steps.get(p));
    let run_dir = ctx.trained(
        "mixture_conditional",
        &cfg.train.config(mixture_data(&cfg.mixture), dsm(true, cfg.train.p_uncond), p, cfg.seed),
    )?;
    let trained = tilt_train::load_score(&run_dir, tilt_train::ModelKind::ScoreNet, &ctx.device)?;
    let exact = MixtureScore::new(mixture.clone(), Default::default(), &ctx.device);
    let sources: [(&str, &dyn ScoreModel); 2] = [("exact", &exact), ("trained", &trained.score)];

    let mut out = StageOutput::new(
        "cfg_mixture",
        "CFG on a Gaussian mixture: E[1/p(c|Y)] against the strength",
        ctx,
        raw,
        cfg.seed,
    );
    let mut table = Table::new(
        "E[1/p(c|Y)] (exact classifier) against the CFG strength w, with its light-tailed companions E[log p(c|Y)] and E[p(c|Y)]; 1/p(c) is the exact unguided value of the first, the row `reference` gives all three for a perfect sampler (exact samples of p(.|c) noised to t_min and denoised exactly). Every strength uses the same noise, so `paired_diff` = E[1/p(c|Y^w) - 1/p(c|Y^0)] is measured on paired samples, with its own, much smaller, standard error",
        &[
            "w",
            "scores",
            "mean_inv_class_prob",
            "se",
            "inv_class_prior",
            "paired_diff",
            "paired_se",
            "mean_log_class_prob",
            "log_se",
            "mean_class_prob",
            "prob_se",
            "accuracy",
            "p_q05",
            "p_q25",
            "p_q50",
            "p_q75",
            "p_q95",
        ],
    );
    let row = |w: &str, name: &str, c: &ClassStats, paired: Option<MeanSe>| {
        let q = c.class_prob_quantiles;
        let paired = paired.unwrap_or(MeanSe { mean: f64::NAN, se: f64::NAN });
        let values = [
            c.mean_inv_class_prob.mean,
            c.mean_inv_class_prob.se,
            c.inv_class_prior,
            paired.mean,
            paired.se,
            c.mean_log_class_prob.mean,
            c.mean_log_class_prob.se,
            c.mean_class_prob.mean,
            c.mean_class_prob.se,
            c.accuracy,
            q[0],
            q[1],
            q[2],
            q[3],
            q[4],
        ];
        [w.to_string(), name.to_string()].into_iter().chain(values.iter().map(|v| fmt(*v, 4))).collect::<Vec<_>>()
    };
    // What a perfect sampler returns for the unguided law: the reference for the companions, which have no closed
    // form (exact samples, noised to t_min and denoised exactly, as every sampler's output is).
    let n_ref = 20 * n;
    let exact_x = tilt_sampler::diagnostics::perfect_denoised_samples(
        &mixture.conditional(cfg.class),
        Default::default(),
        tilt_sampler::DEFAULT_T_MIN,
        n_ref,
        cfg.seed ^ 0x5eed,
        &ctx.device,
    );
    let reference = problem.class_stats(&exact_x, &ctx.device).expect("a class is set");
    table.row(row("-", &format!("reference ({n_ref} samples of a perfect sampler)"), &reference, None));
    let bar = ctx.bar("cfg_mixture", (2 * cfg.strengths.len()) as u64);
    let s = sampler(SamplerKind::default(), steps, Default::default());
    let mut curves: Vec<Series> = Vec::new();
    let mut quantile_curves: Vec<Series> = QUANTILE_LEVELS
        .iter()
        .map(|q| Series { name: format!("{:.0} % quantile of p(c|Y), exact", q * 100.0), points: vec![] })
        .collect();
    let mut stats: Vec<Stat> = Vec::new();
    for (name, model) in sources {
        let mut pts = Vec::new();
        // Class statistics and per-sample 1/p(c|y) at strength w; every strength draws the same noise.
        let cfg_stats = |w: f64| {
            let mut g = GuidedScore::new(model, Condition::class(cfg.class, n, &ctx.device))
                .with(CfgGuidance::new(), WeightSchedule::Constant(w));
            let x = draw(&s, &mut g, n, 2, cfg.seed, &ctx.device);
            let (stats, logs) = problem.class_stats_and_log_probs(&x, &ctx.device).expect("a class is set");
            (stats, logs.iter().map(|l| (-l).exp()).collect::<Vec<f64>>())
        };
        let zero = cfg_stats(0.0);
        let at_zero = &zero.1;
        for &w in &cfg.strengths {
            let (c, inv) = if w == 0.0 { zero.clone() } else { cfg_stats(w) };
            let paired = metrics::mean_se(&inv.iter().zip(at_zero).map(|(a, b)| a - b).collect::<Vec<_>>());
            table.row(row(&format!("{w}"), name, &c, Some(paired)));
            if w > 0.0 {
                pts.push((w, c.mean_inv_class_prob.mean));
                if name == "exact" {
                    for (i, qc) in quantile_curves.iter_mut().enumerate() {
                        qc.points.push((w, c.class_prob_quantiles[i]));
                    }
                }
            }
            let lowered = inv.iter().zip(at_zero).filter(|(a, b)| a > b).count() as f64 / n as f64;
            stats.push(Stat { name, w, class: c, paired, lowered });
            bar.inc(1);
        }
        curves.push(Series { name: format!("{name} scores"), points: pts });
    }
    bar.finish_and_clear();
    let inv_prior = 1.0 / mixture.class_prior(cfg.class);
    let at = |name: &str, w: f64| stats.iter().find(|s| s.name == name && s.w == w).map(|s| &s.class);
    let mut refs = vec![("1/p(c), exact (= w = 0 in theory)".to_string(), inv_prior)];
    for name in ["exact", "trained"] {
        if let Some(c) = at(name, 0.0) {
            refs.push((format!("w = 0, {name} scores (sampled)"), c.mean_inv_class_prob.mean));
        }
    }
    plot::curves_scaled(
        &dir.join("inv_class_prob.png"),
        "CFG: E[1/p(c|Y)] against w (log scale)",
        "w",
        "E[1/p(c|Y)]",
        &curves,
        &refs,
        true,
    )?;
    plot::curves_scaled(
        &dir.join("class_prob_quantiles.png"),
        "Per-sample p(c|Y) under CFG (exact scores)",
        "w",
        "p(c|Y)",
        &quantile_curves,
        &[],
        true,
    )?;
    out.figures = vec![
        ("inv_class_prob.png".into(), "E[1/p(c|Y)] against w, exact and trained scores, with the exact 1/p(c)".into()),
        (
            "class_prob_quantiles.png".into(),
            "Quantiles of the per-sample class probability p(c|Y) against w (exact scores)".into(),
        ),
    ];
    out.reading = reading(&stats, &reference, inv_prior, n);
    let w_max = cfg.strengths.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    out.headline = serde_json::json!({
        "inv_class_prior": inv_prior,
        "reference": reference,
        "exact_w0": at("exact", 0.0), "trained_w0": at("trained", 0.0),
        "exact_wmax": at("exact", w_max), "trained_wmax": at("trained", w_max), "w_max": w_max,
        "trained_final_loss": trained.state.history.last().map(|h| h.loss),
    });
    out.tables = vec![table];
    Ok(out)
}

/// One row of the sweep: a score source at one strength.
struct Stat<'a> {
    name: &'a str,
    w: f64,
    class: ClassStats,
    /// `E[1/p(c|Y^w) - 1/p(c|Y^0)]` on samples that share their noise.
    paired: MeanSe,
    /// Fraction of those pairs whose `p(c|Y)` fell: the theorem bounds the average of `1/p(c|Y)`, not each sample's.
    lowered: f64,
}

/// The stage's reading, every statement computed from the numbers it describes.
fn reading(stats: &[Stat], reference: &ClassStats, inv_prior: f64, n: usize) -> String {
    let mut text = format!("The exact unguided value is 1/p(c) = {inv_prior:.4} ({n} samples per row).");
    let list = |ws: &[f64]| {
        if ws.is_empty() {
            "none".to_string()
        } else {
            ws.iter().map(|w| format!("{w}")).collect::<Vec<_>>().join(", ")
        }
    };
    for name in ["exact", "trained"] {
        let rows: Vec<&Stat> = stats.iter().filter(|s| s.name == name).collect();
        if let Some(s) = rows.iter().find(|s| s.w == 0.0) {
            let c = &s.class;
            text += &format!(
                " With {name} scores at w = 0: E[1/p(c|Y)] = {}; the light-tailed companions against the perfect sampler: E[log p(c|Y)] = {}, E[p(c|Y)] = {}.",
                super::versus(c.mean_inv_class_prob, inv_prior),
                super::versus(c.mean_log_class_prob, reference.mean_log_class_prob.mean),
                super::versus(c.mean_class_prob, reference.mean_class_prob.mean),
            );
        }
        let guided: Vec<&&Stat> = rows.iter().filter(|s| s.w > 0.0).collect();
        let z_of = |m: MeanSe, target: f64| (m.mean - target) / m.se;
        let ws = |f: &dyn Fn(&Stat) -> bool| guided.iter().filter(|s| f(s)).map(|s| s.w).collect::<Vec<_>>();
        let below = ws(&|s| z_of(s.class.mean_inv_class_prob, inv_prior) < -2.0);
        let level = ws(&|s| z_of(s.class.mean_inv_class_prob, inv_prior).abs() <= 2.0);
        let above = ws(&|s| z_of(s.class.mean_inv_class_prob, inv_prior) > 2.0);
        let paired_below = ws(&|s| z_of(s.paired, 0.0) < -2.0);
        let paired_not = ws(&|s| z_of(s.paired, 0.0) >= -2.0);
        text += &format!(" E[1/p(c|Y)] lies more than 2 SE below 1/p(c) at w = {}", list(&below));
        if !level.is_empty() {
            text += &format!("; within 2 SE of it at w = {}", list(&level));
        }
        if !above.is_empty() {
            text += &format!("; more than 2 SE ABOVE it at w = {}", list(&above));
        }
        text += &format!(
            ". On paired samples (the same noise at w and at 0) the decrease E[1/p(c|Y^w) - 1/p(c|Y^0)] is more than 2 SE below 0 at w = {}",
            list(&paired_below)
        );
        if !paired_not.is_empty() {
            text += &format!(", and NOT at w = {}", list(&paired_not));
        }
        text += ".";
        if let Some(s) = guided.iter().max_by(|a, b| a.w.total_cmp(&b.w)) {
            let m = s.class.mean_inv_class_prob;
            text += &format!(" At w = {} E[1/p(c|Y)] = {:.4} ± {:.4}.", s.w, m.mean, m.se);
        }
    }
    let smallest_w = stats.iter().filter(|t| t.name == "exact" && t.w > 0.0).min_by(|a, b| a.w.total_cmp(&b.w));
    if let (Some(s), Some(small)) = (stats.iter().find(|s| s.name == "exact" && s.w == 1.0), smallest_w) {
        let q = s.class.class_prob_quantiles;
        text += &format!(
            " Per sample: at w = 1 (exact scores) the 5 % quantile of p(c|Y) is {:.3} and the median {:.3}, against {:.3} and {:.3} unguided, and on paired samples p(c|Y) fell for {:.1} % of them (at w = {}: {:.1} %).",
            q[0],
            q[2],
            reference.class_prob_quantiles[0],
            reference.class_prob_quantiles[2],
            100.0 * s.lowered,
            small.w,
            100.0 * small.lowered,
        );
    }
    text += " Caveat: 1/p(c|X) has no finite fourth moment on this mixture, so its standard error is itself noisy; the companions and the paired differences are the reliable checks.";
    text
}
