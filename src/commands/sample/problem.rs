//! The exact quantities of the analytic data set a sweep runs on: the law each strength samples, and exact-classifier
//! statistics of the samples.

use crate::config::GuidanceKind;
use crate::plot;
use burn::prelude::*;
use serde::Serialize;
use tilt_core::metrics::{self, MeanSe};
use tilt_core::{ExpLinearReward, GaussianMixture, MixtureScore, tensor_ext};

/// Exact-classifier statistics of the samples for the guided class.
#[derive(Debug, Clone, Serialize)]
pub struct ClassStats {
    pub class: usize,
    /// `E[1/p(c|Y)]` (the quantity CFG provably lowers). Heavy-tailed: on the test mixtures `1/p(c|X)` has no
    /// finite fourth moment, so its standard error is itself unreliable; read it with the two companions below.
    pub mean_inv_class_prob: MeanSe,
    /// `1/p(c) = E_{p(.|c)}[1/p(c|X)]`: the exact unguided value.
    pub inv_class_prior: f64,
    /// `E[log p(c|Y)]`: light-tailed companion (its exact unguided value has no closed form; the reproduce
    /// experiments estimate it from exact samples).
    pub mean_log_class_prob: MeanSe,
    /// `E[p(c|Y)]`: bounded companion.
    pub mean_class_prob: MeanSe,
    /// Quantiles 5, 25, 50, 75, 95 % of `p(c|Y)`.
    pub class_prob_quantiles: [f64; 5],
    /// Fraction of samples whose most probable class is `class`.
    pub accuracy: f64,
}

pub const QUANTILE_LEVELS: [f64; 5] = [0.05, 0.25, 0.5, 0.75, 0.95];

/// Exact quantities of the analytic data set a sweep runs on.
pub struct Problem {
    pub mixture: GaussianMixture,
    /// `p` or `p(.|c)`: the law of the unguided base sampler.
    pub base_law: GaussianMixture,
    pub exp_linear: Option<ExpLinearReward>,
    pub class: Option<usize>,
}

impl Problem {
    pub fn new(
        mixture: GaussianMixture,
        kind: GuidanceKind,
        class: Option<usize>,
        exp_linear: Option<ExpLinearReward>,
    ) -> Self {
        // Classifier guidance starts from the unconditional model; every other kind from p(.|class).
        let conditional_base = class.filter(|_| kind != GuidanceKind::Classifier);
        let base_law = conditional_base.map_or_else(|| mixture.clone(), |c| mixture.conditional(c));
        Self { base_law, exp_linear, class, mixture }
    }

    /// The law that strength `w` samples exactly (with exact scores), if known.
    pub fn exact_target(&self, kind: GuidanceKind, w: f64) -> Option<(String, GaussianMixture)> {
        match (kind, w) {
            // Several terms, some possibly at fixed weights: no law is known, not even at w = 0.
            (GuidanceKind::Composite, _) => None,
            (GuidanceKind::None, _) => Some(("base".into(), self.base_law.clone())),
            (_, 0.0) => Some(("base".into(), self.base_law.clone())),
            (GuidanceKind::Reward | GuidanceKind::Smc, 1.0) => {
                Some(("p_r".into(), self.base_law.tilted(self.exp_linear.as_ref()?)))
            }
            // SMC targets p r^w at every w: for r = exp(a.x) that is the tilt by w a.
            (GuidanceKind::Smc, w) => {
                let a = &self.exp_linear.as_ref()?.a;
                let tilt = ExpLinearReward::new(a.iter().map(|v| v * w).collect());
                Some((format!("p r^{w}"), self.base_law.tilted(&tilt)))
            }
            (GuidanceKind::Classifier, 1.0) => Some(("p(.|c)".into(), self.mixture.conditional(self.class?))),
            (GuidanceKind::Cfg, -1.0) => Some(("p".into(), self.mixture.clone())),
            // One candidate is the base sampler itself.
            (GuidanceKind::BestOfN, 1.0) => Some(("base".into(), self.base_law.clone())),
            _ => None,
        }
    }

    /// Exact-classifier statistics of samples `x` (data space) for the guided class.
    pub fn class_stats(&self, x: &[f32], device: &Device) -> Option<ClassStats> {
        self.class_stats_and_log_probs(x, device).map(|(stats, _)| stats)
    }

    /// [`Problem::class_stats`] and `log p(c|y)` of every sample (for paired comparisons), from one classifier call.
    pub fn class_stats_and_log_probs(&self, x: &[f32], device: &Device) -> Option<(ClassStats, Vec<f64>)> {
        let c = self.class?;
        let d = self.mixture.dim();
        let n = x.len() / d;
        let oracle = MixtureScore::new(self.mixture.clone(), Default::default(), device);
        let log_post = tensor_ext::to_vec_f64(oracle.class_log_posteriors(tensor_ext::matrix(x, n, d, device), 0.0));
        let k = self.mixture.n_classes();
        let probs: Vec<f64> = log_post.chunks_exact(k).map(|row| row[c].exp()).collect();
        let inv: Vec<f64> = log_post.chunks_exact(k).map(|row| (-row[c]).exp()).collect();
        let logs: Vec<f64> = log_post.chunks_exact(k).map(|row| row[c]).collect();
        let hits = log_post.chunks_exact(k).filter(|row| argmax(row) == c).count();
        let q = metrics::quantiles(&probs, &QUANTILE_LEVELS);
        let stats = ClassStats {
            class: c,
            mean_inv_class_prob: metrics::mean_se(&inv),
            inv_class_prior: 1.0 / self.mixture.class_prior(c),
            mean_log_class_prob: metrics::mean_se(&logs),
            mean_class_prob: metrics::mean_se(&probs),
            class_prob_quantiles: [q[0], q[1], q[2], q[3], q[4]],
            accuracy: hits as f64 / n as f64,
        };
        Some((stats, logs))
    }

    /// A plotting window covering every component at 3.5 standard deviations.
    pub fn bounds(&self) -> plot::Bounds {
        let m = &self.mixture;
        let span = |j: usize| {
            let lo = (0..m.n_components()).map(|k| m.means[k][j] - 3.5 * m.stds[k][j]).fold(f64::INFINITY, f64::min);
            let hi =
                (0..m.n_components()).map(|k| m.means[k][j] + 3.5 * m.stds[k][j]).fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        };
        let (x0, x1) = span(0);
        let (y0, y1) = if m.dim() > 1 { span(1) } else { (-1.0, 1.0) };
        (x0, x1, y0, y1)
    }
}

fn argmax(row: &[f64]) -> usize {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}
