//! What a sweep reports: one record per strength, the summary, the terminal line and the strength curve.

use super::problem::ClassStats;
use crate::config::GuidanceKind;
use crate::plot::{self, Series};
use anyhow::Result;
use serde::Serialize;
use std::path::Path;
use tilt_core::metrics::{MeanSe, TargetDistance};

/// One strength's results.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub w: f64,
    pub samples: usize,
    pub steps: usize,
    /// Base-model calls (one per score evaluation, CFG batched into the same call).
    pub model_calls: usize,
    /// Score-model evaluations per output sample, in forward-pass equivalents (a backward pass counts two; best-of-N
    /// counts its N candidates).
    pub evaluations_per_sample: f64,
    pub seconds: f64,
    pub sample_mean: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_reward: Option<MeanSe>,
    /// Exact `E[r]` under the base law (guidance off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_mean_reward: Option<f64>,
    /// Exact `E_{p_r}[r]`: what reward guidance reaches at `w = 1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_mean_reward: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<ClassStats>,
    /// Image samples measured by `models.evaluator`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluator: Option<super::evaluate::EvaluatorStats>,
    /// The law this strength samples exactly with exact scores, when one is known (`w = 0`; `w = 1` for
    /// reward and classifier guidance; `w = -1` for CFG).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Distances to the exact `target` law: signed `MMD^2_u` with its permutation p-value, and sliced Wasserstein
    /// beside its noise floor (an exact sample of the same size scores the floor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance_to_target: Option<TargetDistance>,
    /// Samples that came out NaN or infinite; the metrics above use the finite ones only.
    pub non_finite_samples: usize,
    /// SMC runs: what the particles went through. `mean_reward` is then the particles' weighted estimate (the mean of
    /// the groups' self-normalised estimates) with the spread of the independent groups as its standard error; the written samples are the particles after a final
    /// resampling (repeated particles), so the other statistics' standard errors are optimistic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smc: Option<SmcRecord>,
}

/// SMC diagnostics of one strength.
#[derive(Debug, Clone, Serialize)]
pub struct SmcRecord {
    pub proposal: tilt_sampler::Proposal,
    pub potential: tilt_sampler::Potential,
    /// Independent particle systems.
    pub groups: usize,
    /// Final effective sample size over the group size, averaged over the groups.
    pub final_ess: f64,
    /// Mid-chain resamplings, averaged over the groups.
    pub resamplings_per_group: f64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub tilt_version: &'static str,
    pub device: String,
    pub guidance: GuidanceKind,
    pub sampler: String,
    /// `exact` or the checkpoint paths used.
    pub scores: String,
    pub seed: u64,
    pub records: Vec<Record>,
    /// `guidance.target`: the pilots and the strength they chose (the one record's `w`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strength_choice: Option<super::StrengthChoice>,
}

/// A one-line digest of a record for the terminal.
pub fn one_line(r: &Record) -> String {
    let mut s = format!("w = {:<6} {:>6.2} s", super::w_label(r.w), r.seconds);
    if let Some(m) = &r.mean_reward {
        s += &format!("  E[r] = {:.4} ± {:.4}", m.mean, m.se);
        if let Some(t) = r.target_mean_reward {
            s += &format!(" (E_p_r[r] = {t:.4})");
        }
    }
    if let Some(c) = &r.class {
        s += &format!(
            "  E[1/p(c|Y)] = {:.4} ± {:.4} (1/p(c) = {:.4}), acc = {:.3}",
            c.mean_inv_class_prob.mean, c.mean_inv_class_prob.se, c.inv_class_prior, c.accuracy
        );
    }
    if let (Some(t), Some(m)) = (&r.target, &r.distance_to_target) {
        s += &format!(
            "  to {t}: MMD² = {:.2e} (p = {:.2}), SW = {:.4} (floor {:.4})",
            m.mmd.mmd2, m.mmd.p_value, m.sliced_wasserstein, m.sliced_wasserstein_floor
        );
    }
    if let Some(e) = &r.evaluator {
        if let (Some(inv), Some(acc)) = (&e.inv_class_prob, e.accuracy) {
            s += &format!("  E[1/p_eval(c|Y)] = {:.4} ± {:.4}, acc = {acc:.3}", inv.mean, inv.se);
        }
        s += &format!("  Fréchet = {:.4} (floor {:.4})", e.frechet, e.frechet_floor);
    }
    if let Some(smc) = &r.smc {
        s += &format!(
            "  SMC ({} proposal, SE over {} groups): final ESS {:.3}, {:.1} resamplings per group",
            crate::config::kebab(&smc.proposal),
            smc.groups,
            smc.final_ess,
            smc.resamplings_per_group
        );
    }
    if r.non_finite_samples > 0 {
        s += &format!("  NON-FINITE samples: {}", r.non_finite_samples);
    }
    s
}

/// The headline metric against `w`: mean reward when a reward is set, else `E[1/p(c|Y)]`.
pub fn curve_plot(path: &Path, summary: &Summary) -> Result<()> {
    let recs = &summary.records;
    if recs.len() < 2 {
        return Ok(());
    }
    if recs[0].mean_reward.is_some() {
        let pts = recs.iter().filter_map(|r| r.mean_reward.map(|m| (r.w, m.mean))).collect();
        let mut refs = vec![];
        if let Some(b) = recs[0].base_mean_reward {
            refs.push(("E_p[r] (w = 0, exact)".to_string(), b));
        }
        if let Some(t) = recs[0].target_mean_reward {
            refs.push(("E_p_r[r] (w = 1, exact)".to_string(), t));
        }
        plot::curves(
            path,
            "Mean reward against guidance strength",
            "w",
            "E[r(Y)]",
            &[Series { name: "sampled".into(), points: pts }],
            &refs,
        )
    } else if recs[0].evaluator.is_some() {
        evaluator_plots(path, recs)
    } else if let Some(c0) = &recs[0].class {
        let pts = recs.iter().filter_map(|r| r.class.as_ref().map(|c| (r.w, c.mean_inv_class_prob.mean))).collect();
        plot::curves(
            path,
            "E[1/p(c|Y)] against guidance strength",
            "w",
            "E[1/p(c|Y)]",
            &[Series { name: "sampled".into(), points: pts }],
            &[("1/p(c) (w = 0, exact)".to_string(), c0.inv_class_prior)],
        )
    } else {
        Ok(())
    }
}

/// The evaluator's measures against `w`: `E[1/p_eval(c|Y)]` (when a class is guided toward) in `path`, the
/// Fréchet distance with its noise floor in `frechet.png` beside it.
fn evaluator_plots(path: &Path, recs: &[Record]) -> Result<()> {
    let stats: Vec<(f64, &super::evaluate::EvaluatorStats)> =
        recs.iter().filter_map(|r| r.evaluator.as_ref().map(|e| (r.w, e))).collect();
    let inv: Vec<(f64, f64)> = stats.iter().filter_map(|(w, e)| e.inv_class_prob.map(|m| (*w, m.mean))).collect();
    if !inv.is_empty() {
        plot::curves(
            path,
            "E[1/p_eval(c|Y)] against guidance strength (independent evaluator)",
            "w",
            "E[1/p_eval(c|Y)]",
            &[Series { name: "sampled".into(), points: inv }],
            &[],
        )?;
    }
    let frechet = stats.iter().map(|(w, e)| (*w, e.frechet)).collect();
    let floor = stats.iter().map(|(_, e)| e.frechet_floor).fold(f64::NAN, f64::max);
    plot::curves(
        &path.with_file_name("frechet.png"),
        "Fréchet distance of evaluator features to real images",
        "w",
        "Fréchet distance",
        &[Series { name: "samples".into(), points: frechet }],
        &[("noise floor (real vs real, same size)".to_string(), floor)],
    )
}
