//! `tilt sample`: sweep a guidance strength and write numbers and pictures.
//!
//! The scores are exact (a Gaussian mixture) or trained checkpoints (`[models]`); the metrics are exact
//! whenever the data set is an analytic mixture. Output in `<out>/`: `summary.json` (one record per strength),
//! `samples_w<w>.csv` and `samples_w<w>.png` (samples over the density contours of the base law), and
//! `curve.png` (the headline metric against `w`).

use crate::config::{GuidanceKind, NoiseKind, SampleConfig};
use crate::{device, output, plot};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;
use tilt_core::metrics::{self, MeanSe, TargetDistance};
use tilt_core::{
    Classifier, Condition, ExpLinearReward, GaussianMixture, MixtureScore, Reward, ScoreModel, tensor_ext,
};
use tilt_sampler::guidance::{
    CfgGuidance, ClassifierGuidance, NegativeClassGuidance, RewardGuidance, TrainingFreeGuidance,
};
use tilt_sampler::{GuidedScore, NoiseSource, Sampler, WeightSchedule};
use tilt_train::Standardizer;

/// One strength's results.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub w: f64,
    pub samples: usize,
    pub steps: usize,
    /// Base-model calls (one per score evaluation, CFG batched into the same call).
    pub model_calls: usize,
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
}

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
            (GuidanceKind::None, _) => Some(("base".into(), self.base_law.clone())),
            (_, 0.0) => Some(("base".into(), self.base_law.clone())),
            (GuidanceKind::Reward, 1.0) => Some(("p_r".into(), self.base_law.tilted(self.exp_linear.as_ref()?))),
            (GuidanceKind::Classifier, 1.0) => Some(("p(.|c)".into(), self.mixture.conditional(self.class?))),
            (GuidanceKind::Cfg, -1.0) => Some(("p".into(), self.mixture.clone())),
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

/// The config spelling of an enum value (`reward-gradient`, `exponential-integrator`).
pub fn kebab<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|j| j.as_str().map(str::to_owned)).unwrap_or_default()
}

fn argmax(row: &[f64]) -> usize {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// The rows of `[n, d]` samples whose coordinates are all finite.
fn finite_rows(x: Vec<f32>, d: usize) -> Vec<f32> {
    if x.iter().all(|v| v.is_finite()) {
        return x;
    }
    x.chunks_exact(d).filter(|r| r.iter().all(|v| v.is_finite())).flatten().copied().collect()
}

/// A plotting window from the samples themselves (1 % and 99 % quantiles, padded).
fn sample_bounds(x: &[f32], d: usize) -> plot::Bounds {
    let span = |j: usize| {
        let col: Vec<f64> = x.chunks_exact(d).map(|r| r[j] as f64).collect();
        let q = metrics::quantiles(&col, &[0.01, 0.99]);
        let pad = 0.15 * (q[1] - q[0]).max(1e-3);
        (q[0] - pad, q[1] + pad)
    };
    let (x0, x1) = span(0);
    let (y0, y1) = if d > 1 { span(1) } else { (-1.0, 1.0) };
    (x0, x1, y0, y1)
}

/// `w` for file names and titles: as written when short, else in scientific notation (a strength of 1e300
/// printed in full is a 301-character file name).
pub fn w_label(w: f64) -> String {
    let plain = format!("{w}");
    if plain.len() <= 12 { plain } else { format!("{w:.4e}") }
}

/// Refuse a sweep whose results cannot be held in memory, before sampling: per sample the host keeps its
/// coordinates, the exact reference draws for the distances and a few per-row metrics. The sampler itself runs
/// in chunks of `sampler.batch` rows, so this is the only size that grows with `samples`.
fn check_memory(n: usize, d: usize, classes: usize) -> Result<()> {
    let per_row = d.checked_mul(16).and_then(|b| b.checked_add(8 * classes + 64));
    let bytes = per_row.and_then(|p| p.checked_mul(n));
    if bytes.is_some_and(|b| Vec::<u8>::new().try_reserve_exact(b).is_ok()) {
        return Ok(());
    }
    bail!(
        "samples: {n} samples of dimension {d} need about {} of memory for the samples and their metrics, which cannot \
         be allocated here; lower samples",
        bytes.map_or("more than 2^64 bytes".to_string(), |b| format!("{:.1} GB", b as f64 / 1e9))
    )
}

/// `log r` of standardised coordinates: the reward lives in data space.
struct InDataSpace<'a> {
    reward: &'a dyn Reward,
    st: Standardizer,
}

impl Reward for InDataSpace<'_> {
    fn log_reward(&self, z: Tensor<2>) -> Tensor<1> {
        let d = self.st.mean.len();
        let dev = z.device();
        let row = |v: &[f64]| {
            Tensor::<2>::from_data(TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), [1, d]), &dev)
        };
        self.reward.log_reward(z * row(&self.st.std) + row(&self.st.mean))
    }
}

type BoxedScore = Box<dyn ScoreModel>;

/// The score models of a sweep: exact, trained, or a mix.
struct Scores {
    base: Box<dyn ScoreModel>,
    reweighted: Option<Box<dyn ScoreModel>>,
    residual: Option<Box<dyn ScoreModel>>,
    classifier: Option<Box<dyn Classifier>>,
    standardizer: Standardizer,
    description: String,
    dim: usize,
    num_classes: usize,
}

fn load_scores(cfg: &SampleConfig, mixture: Option<&GaussianMixture>, device: &Device) -> Result<Scores> {
    let models = cfg.models.clone().unwrap_or_default();
    let mut standardizer: Option<(Standardizer, String)> = None;
    let mut agree = |st: &Standardizer, what: &str| -> Result<()> {
        match &standardizer {
            Some((s, first)) if s != st => {
                bail!("models.{what}: standardised differently from models.{first}; train them on the same data")
            }
            Some(_) => Ok(()),
            None => {
                standardizer = Some((st.clone(), what.to_string()));
                Ok(())
            }
        }
    };
    let mut description = Vec::new();
    let trained_base = match &models.base {
        Some(p) => {
            let l = tilt_train::load_score(p, tilt_train::ModelKind::ScoreNet, device)
                .with_context(|| format!("models.base = {}", p.display()))?;
            agree(&l.standardizer, "base")?;
            description.push(format!("base: {}", p.display()));
            Some(l)
        }
        None => None,
    };
    let load_net = |p: &Path, kind: tilt_train::ModelKind, field: &str| -> Result<tilt_train::LoadedScore> {
        tilt_train::load_score(p, kind, device).with_context(|| format!("models.{field} = {}", p.display()))
    };
    let reweighted =
        models.reweighted.as_deref().map(|p| load_net(p, tilt_train::ModelKind::ScoreNet, "reweighted")).transpose()?;
    let residual =
        models.residual.as_deref().map(|p| load_net(p, tilt_train::ModelKind::Residual, "residual")).transpose()?;
    for (l, what) in [(&reweighted, "reweighted"), (&residual, "residual")] {
        if let Some(l) = l {
            agree(&l.standardizer, what)?;
            description.push(format!("{what}: {}", l.path.display()));
        }
    }
    let classifier = match &models.classifier {
        Some(p) => {
            let l = tilt_train::load_classifier(p, device)
                .with_context(|| format!("models.classifier = {}", p.display()))?;
            agree(&l.standardizer, "classifier")?;
            description.push(format!("classifier: {}", p.display()));
            Some(l)
        }
        None => None,
    };
    let standardizer = standardizer.map(|s| s.0);
    let exact_needed = trained_base.is_none()
        || (cfg.guidance.kind == GuidanceKind::Reward && reweighted.is_none() && residual.is_none())
        || (cfg.guidance.kind == GuidanceKind::Classifier && classifier.is_none());
    if exact_needed && standardizer.as_ref().is_some_and(|s| *s != Standardizer::identity(s.mean.len())) {
        bail!(
            "models: exact mixture scores cannot be combined with networks trained on standardised data (standardize = true)"
        );
    }
    if let (Some(b), Some(p)) = (&trained_base, &models.base) {
        // An unconditional network would answer every class query with its one score: CFG's term would be
        // exactly zero and the sweep would silently sample the unconditional law.
        let needs_labels = match cfg.guidance.kind {
            GuidanceKind::Cfg | GuidanceKind::NegativeClass => {
                Some(format!("guidance.kind = \"{}\"", kebab(&cfg.guidance.kind)))
            }
            GuidanceKind::Classifier => None,
            _ => cfg.class.map(|c| format!("class = {c}")),
        };
        if let (Some(what), None) = (needs_labels, b.score.net.null_label()) {
            bail!(
                "models.base = {}: {what} needs a class-conditional base (trained with objective.kind = \"dsm\", conditional = true, on labelled data), but this network is unconditional",
                p.display()
            );
        }
    }
    let schedule = trained_base.as_ref().map_or(cfg.schedule, |b| b.score.schedule);
    let exact = |m: Option<&GaussianMixture>, what: &str| -> Result<MixtureScore> {
        let m = m.ok_or_else(|| {
            anyhow::anyhow!("mixture: needed for the exact {what} (or give a trained model for it in [models])")
        })?;
        Ok(MixtureScore::new(m.clone(), schedule, device))
    };
    let (dim, num_classes) = match (&trained_base, mixture) {
        (Some(b), _) => (b.state.dim, b.state.num_classes),
        (None, Some(m)) => (m.dim(), m.n_classes()),
        (None, None) => bail!("mixture: missing (no trained base model either)"),
    };
    let base: Box<dyn ScoreModel> = match trained_base {
        Some(b) => Box::new(b.score),
        None => Box::new(exact(mixture, "base score")?),
    };
    let exact_reweighted = |m: Option<&GaussianMixture>| -> Result<Option<Box<dyn ScoreModel>>> {
        if cfg.guidance.kind != GuidanceKind::Reward {
            return Ok(None);
        }
        let r = cfg
            .reward
            .as_ref()
            .and_then(|r| r.exp_linear())
            .expect("validated: exact reward guidance has an exp-linear reward");
        let m = m.ok_or_else(|| {
            anyhow::anyhow!("mixture: needed for the exact reweighted score (or give models.reweighted)")
        })?;
        Ok(Some(Box::new(MixtureScore::new(m.tilted(&r), schedule, device))))
    };
    let (reweighted, residual): (Option<BoxedScore>, Option<BoxedScore>) = match (reweighted, residual) {
        (Some(r), _) => (Some(Box::new(r.score)), None),
        (None, Some(r)) => (None, Some(Box::new(r.score))),
        (None, None) => (exact_reweighted(mixture)?, None),
    };
    let classifier: Option<Box<dyn Classifier>> = match (classifier, cfg.guidance.kind) {
        (Some(c), _) => Some(Box::new(c.classifier)),
        (None, GuidanceKind::Classifier) => Some(Box::new(exact(mixture, "classifier")?)),
        _ => None,
    };
    if description.is_empty() {
        description.push("exact mixture scores".into());
    }
    Ok(Scores {
        base,
        reweighted,
        residual,
        classifier,
        standardizer: standardizer.unwrap_or_else(|| Standardizer::identity(dim)),
        description: description.join(", "),
        dim,
        num_classes,
    })
}

/// Run the sweep described by `cfg` and write everything into `out`. `out` is claimed (locked, checked for
/// foreign files) only once the models have loaded, so a failed load leaves nothing behind; an earlier sweep's
/// results there are replaced only with `force`.
pub fn run(cfg: &SampleConfig, out: &Path, force: bool, device: &Device) -> Result<Summary> {
    // The analytic data set: the config's, else the one the base network was trained on (if a mixture).
    let mixture = match cfg.built_mixture() {
        Some(m) => Some(m),
        None => match cfg.models.as_ref().and_then(|m| m.base.as_ref()) {
            Some(p) => {
                let l = tilt_train::load_score(p, tilt_train::ModelKind::ScoreNet, device)
                    .with_context(|| format!("models.base = {}", p.display()))?;
                match &l.state.config.data {
                    tilt_train::DataSpec::Mixture { mixture } if !l.state.config.standardize => {
                        Some(mixture.build().map_err(anyhow::Error::msg)?)
                    }
                    _ => None,
                }
            }
            None => None,
        },
    };
    let scores = load_scores(cfg, mixture.as_ref(), device)?;
    let d = scores.dim;
    cfg.validate_for(d, scores.num_classes.max(mixture.as_ref().map_or(0, GaussianMixture::n_classes)))?;
    if let Some(m) = &mixture
        && m.dim() != d
    {
        bail!("mixture: dimension {} differs from the trained models' dimension {d}", m.dim());
    }
    let kind = cfg.guidance.kind;
    let reward = cfg.reward.as_ref().map(|r| r.build());
    let exp_linear = cfg.reward.as_ref().and_then(|r| r.exp_linear());
    let problem = mixture.map(|m| Problem::new(m, kind, cfg.class, exp_linear.clone()));
    if let (Some(p), Some(r)) = (&problem, &exp_linear) {
        let (base, tilted) = (p.base_law.mean_reward(r), p.base_law.tilted_mean_reward(r));
        if !(base.is_finite() && tilted.is_finite()) {
            bail!(
                "reward.a: the reward overflows on this mixture (E_p[r] = {base:e}, E_p_r[r] = {tilted:e}); scale a down"
            );
        }
    }
    let n = cfg.samples;
    check_memory(n, d, scores.num_classes)?;
    let dir = tilt_train::OutputDir::claim(out, tilt_train::OutputKind::Sample, force)?;
    if *dir.prior() == tilt_train::Prior::Own && !force {
        bail!(
            "{}: holds the results of an earlier `tilt sample`; pass --force to replace them, or choose another --out",
            out.display()
        );
    }
    let model_space_reward = reward.as_deref().map(|r| InDataSpace { reward: r, st: scores.standardizer.clone() });

    // Labels for `rows` chains (classifier guidance starts from the unconditional model).
    let condition = |rows: usize| match cfg.class {
        Some(c) if kind != GuidanceKind::Classifier => Condition::class(c, rows, device),
        _ => Condition::Unconditional,
    };
    let s = &cfg.sampler;
    let schedule = scores.base.schedule();
    let sampler = Sampler {
        kind: s.kind,
        schedule,
        times: s.grid.times(s.steps, s.t_max, s.t_min, schedule),
        denoise_final: s.denoise_final,
        recurrence: s.recurrence,
    };
    let chunks: Vec<usize> = (0..n.div_ceil(s.batch)).map(|i| s.batch.min(n - i * s.batch)).collect();

    let mut records = Vec::new();
    for &w in &cfg.guidance.strengths {
        let weight = match (cfg.guidance.t_start, cfg.guidance.t_end) {
            (Some(t_start), Some(t_end)) => WeightSchedule::Interval { w, t_start, t_end },
            _ => WeightSchedule::Constant(w),
        };
        // One guided score per chunk of chains: stateful terms (APG's momentum) start afresh with each chain.
        let guided_for = |rows: usize| {
            let weight = weight.clone();
            let guided = GuidedScore::new(scores.base.as_ref(), condition(rows)).with_rescale(cfg.guidance.rescale);
            match kind {
                GuidanceKind::None => guided,
                GuidanceKind::Reward => match (&scores.reweighted, &scores.residual) {
                    (Some(r), _) => guided.with(RewardGuidance::reweighted(r.as_ref()), weight),
                    (None, Some(r)) => guided.with(RewardGuidance::residual(r.as_ref()), weight),
                    (None, None) => unreachable!("load_scores provides a reward source"),
                },
                GuidanceKind::Cfg => match &cfg.guidance.apg {
                    Some(apg) => guided.with(CfgGuidance::with_apg(apg.clone()), weight),
                    None => guided.with(CfgGuidance::new(), weight),
                },
                GuidanceKind::Classifier => guided.with(
                    ClassifierGuidance::new(
                        scores.classifier.as_deref().expect("load_scores provides a classifier"),
                        cfg.class.expect("validated"),
                    ),
                    weight,
                ),
                GuidanceKind::RewardGradient => guided.with(
                    TrainingFreeGuidance::reward_gradient(model_space_reward.as_ref().expect("validated")),
                    weight,
                ),
                GuidanceKind::NegativeClass => {
                    guided.with(NegativeClassGuidance::new(cfg.guidance.negative_class.expect("validated")), weight)
                }
            }
        };

        let steps = sampler.steps();
        let bar = ProgressBar::new((steps * chunks.len()) as u64).with_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} steps {elapsed_precise} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("w = {}", w_label(w)));
        let start = Instant::now();
        let (mut x, mut model_calls) = (Vec::with_capacity(n * d), 0);
        for (i, &rows) in chunks.iter().enumerate() {
            let mut noise = match (s.noise, i) {
                (NoiseKind::Host, _) => NoiseSource::host_stream(cfg.seed, i as u64),
                (NoiseKind::Device, 0) => NoiseSource::device(cfg.seed, device),
                (NoiseKind::Device, _) => NoiseSource::Device,
            };
            let mut guided = guided_for(rows);
            let xc =
                sampler.sample(&mut |x, t, k| guided.score(x, t, k), rows, d, device, &mut noise, &mut |k, _, _| {
                    bar.set_position((i * steps + k) as u64)
                });
            x.extend(tensor_ext::to_vec(xc));
            model_calls += guided.base_calls;
        }
        let seconds = start.elapsed().as_secs_f64();
        bar.finish_and_clear();
        scores.standardizer.invert(&mut x);
        let all = x.len() / d;
        let x = finite_rows(x, d);
        let n = x.len() / d;
        let non_finite_samples = all - n;
        if non_finite_samples > 0 {
            eprintln!(
                "warning: w = {}: {non_finite_samples} of {all} samples are not finite (NaN or inf); the sampler diverged \
                 (too few steps, or too strong a guidance). The metrics use the {n} finite samples.",
                w_label(w)
            );
        }
        if n < 2 {
            bail!("w = {}: fewer than 2 finite samples ({n} of {all}); nothing to measure", w_label(w));
        }

        let mean_reward = reward.as_ref().map(|r| {
            let lr = tensor_ext::to_vec_f64(r.log_reward(tensor_ext::matrix(&x, n, d, device)));
            metrics::mean_se(&lr.into_iter().map(f64::exp).collect::<Vec<_>>())
        });
        let target = problem.as_ref().and_then(|p| p.exact_target(kind, w));
        let distance = target.as_ref().map(|(_, law)| {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed);
            let (reference, _) = law.sample(n.max(2000), &mut rng);
            let (fresh, _) = law.sample(n, &mut rng);
            metrics::distance_to_exact(&x, &reference, &fresh, d, cfg.seed)
        });
        let record = Record {
            w,
            samples: n,
            steps: sampler.steps(),
            model_calls,
            seconds,
            sample_mean: metrics::column_means(&x, d),
            mean_reward,
            base_mean_reward: problem.as_ref().zip(exp_linear.as_ref()).map(|(p, r)| p.base_law.mean_reward(r)),
            target_mean_reward: problem
                .as_ref()
                .zip(exp_linear.as_ref())
                .map(|(p, r)| p.base_law.tilted_mean_reward(r)),
            class: problem.as_ref().and_then(|p| p.class_stats(&x, device)),
            target: target.map(|t| t.0),
            distance_to_target: distance,
            non_finite_samples,
        };
        eprintln!("{}", output::one_line(&record));

        let stem = format!("samples_w{}", w_label(w));
        output::write_samples_csv(&out.join(format!("{stem}.csv")), &x, d)?;
        let title = format!(
            "{} guidance, w = {}  ({n} samples, {} {} steps)",
            kebab(&kind),
            w_label(w),
            sampler.steps(),
            kebab(&s.kind)
        );
        let png = out.join(format!("{stem}.png"));
        match &problem {
            Some(p) => {
                let marginal = p.base_law.marginal(&[0, 1.min(d - 1)]);
                let sched = schedule;
                plot::scatter_over_density(&png, &title, &x, d, p.bounds(), &|a, b| {
                    marginal.log_density_at(&[a, b][..marginal.dim()], 0.0, sched)
                })?;
            }
            None => plot::scatter_over_density(&png, &title, &x, d, sample_bounds(&x, d), &|_, _| f64::NEG_INFINITY)?,
        }
        records.push(record);
    }

    let summary = Summary {
        tilt_version: env!("CARGO_PKG_VERSION"),
        device: device::describe(device),
        guidance: kind,
        sampler: format!("{:?}, {} steps, {:?} grid", s.kind, s.steps, s.grid),
        scores: scores.description,
        seed: cfg.seed,
        records,
    };
    output::write_json(&out.join("summary.json"), &summary)?;
    output::curve_plot(&out.join("curve.png"), &summary)?;
    Ok(summary)
}
