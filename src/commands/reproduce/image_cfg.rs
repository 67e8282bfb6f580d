//! Experiment: classifier-free and classifier guidance on Fashion-MNIST, in the latent space of an autoencoder,
//! measured by an independent CNN evaluator (the papers' ImageNet experiment, with the evaluator in the role of
//! Inception-v3): `E[1/p_eval(c|Y)]` per strength (the theorem: it falls with `w` and stays below its `w = 0`
//! value), the quantiles of `p_eval(c|Y)` (not every sample rises), accuracy, and a Fréchet distance in the
//! evaluator's features against held-out images (the fidelity cost of strong guidance), beside its noise floor.

use super::{Ctx, PerPreset, StageOutput, Table, fmt, sampler, stage_config};
use crate::commands::sample::QUANTILE_LEVELS;
use crate::plot::{self, Series};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tilt_core::metrics::{self, MeanSe};
use tilt_core::{Condition, ScoreModel, tensor_ext};
use tilt_sampler::guidance::{CfgGuidance, ClassifierGuidance};
use tilt_sampler::{GuidedScore, NoiseSource, SamplerKind, WeightSchedule};
use tilt_train::{DataSpec, Dataset, ModelKind, Objective};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub seed: u64,
    pub images: PerPreset<String>,
    pub labels: PerPreset<String>,
    pub held_out_images: PerPreset<String>,
    pub held_out_labels: PerPreset<String>,
    pub train_images: PerPreset<usize>,
    pub held_out: PerPreset<usize>,
    pub per_class: PerPreset<usize>,
    pub steps: PerPreset<usize>,
    pub strengths: Vec<f64>,
    pub grid_per_strength: usize,
    pub autoencoder: AutoencoderSpec,
    pub diffusion: NetSpec,
    pub classifier: NetSpec,
    pub evaluator: EvaluatorSpec,
    pub reward: RewardPart,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardPart {
    pub beta: f64,
    pub steps: PerPreset<usize>,
    /// Guidance strengths for the trained term and the reward-gradient baseline (w = 0 is the unguided base).
    pub strengths: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderSpec {
    pub latent: usize,
    pub hidden: usize,
    pub steps: PerPreset<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    pub steps: PerPreset<usize>,
    pub hidden: PerPreset<usize>,
    #[serde(default = "three")]
    pub blocks: usize,
    #[serde(default)]
    pub p_uncond: f64,
}

fn three() -> usize {
    3
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorSpec {
    pub steps: PerPreset<usize>,
    pub channels: usize,
}

/// A training config with this experiment's optimiser settings.
fn train_config(
    data: DataSpec,
    objective: Objective,
    steps: usize,
    seed: u64,
    standardize: bool,
) -> tilt_train::TrainConfig {
    let spec = super::TrainSpec {
        steps: PerPreset::One(steps),
        hidden: PerPreset::One(0),
        blocks: 3,
        batch_size: 256,
        p_uncond: 0.0,
        lr: 2e-3,
    };
    let mut cfg = spec.config(data, objective, super::Preset::Fast, seed);
    cfg.standardize = standardize;
    cfg
}

fn idx(images: &str, labels: &str, limit: usize) -> DataSpec {
    DataSpec::Idx { images: PathBuf::from(images), labels: Some(PathBuf::from(labels)), limit: Some(limit) }
}

/// What the image stages measure with: the training images' spec, the held-out images, the independent evaluator
/// (a CNN trained on clean training images only, the role of Inception-v3) and its features of the held-out images.
pub(super) struct ImageEval {
    pub train_data: DataSpec,
    pub held: Dataset,
    pub evaluator: tilt_models::Evaluator,
    /// The evaluator's accuracy on the held-out images.
    pub held_accuracy: f64,
    /// `E[1/p_eval(c|x)]` over the held-out real images.
    pub real: MeanSe,
    held_features: Vec<f32>,
    device: Device,
}

/// The evaluator's verdict on a set of labelled samples.
pub(super) struct Verdict {
    pub mean_inv_prob: MeanSe,
    pub mean_prob: MeanSe,
    /// Quantiles of `p_eval(c|Y)` at [`QUANTILE_LEVELS`].
    pub quantiles: [f64; 5],
    pub accuracy: f64,
    /// Fréchet distance of the evaluator's features to the held-out images'.
    pub frechet: f64,
    /// `1/p_eval(c_i|Y_i)` of every sample, in order (for paired comparisons of rows drawn with the same noise).
    pub inv_probs: Vec<f64>,
}

impl ImageEval {
    /// The data of `cfg` at the context's preset and the evaluator, trained into `_models/image_evaluator` on first
    /// use (shared by every image stage).
    pub fn load(ctx: &Ctx, cfg: &Config) -> Result<Self> {
        let (p, dev) = (ctx.preset, &ctx.device);
        let (images, labels) = (super::data_path(&cfg.images.get(p)), super::data_path(&cfg.labels.get(p)));
        if !Path::new(&images).exists() {
            if images.starts_with("/usr/share/datasets") {
                bail!(
                    "{images}: not found; the {p:?} preset reads Fashion-MNIST from Debian's package: sudo apt-get install dataset-fashion-mnist"
                );
            }
            bail!(
                "{images}: not found (looked in the working directory and in the tilt source tree {}); the {p:?} preset \
                 reads the Fashion-MNIST files shipped in the repository's assets/data",
                env!("CARGO_MANIFEST_DIR")
            );
        }
        let (n_train, n_held) = (cfg.train_images.get(p), cfg.held_out.get(p));
        // Held-out images: after the training ones in the same file, or a file of their own (full preset).
        let held = match cfg.held_out_images.get(p) {
            path if path.is_empty() => {
                let all = tilt_train::data::read_idx(images.as_ref(), Some(labels.as_ref()), Some(n_train + n_held))?;
                if all.len() < n_train + n_held {
                    bail!("{images}: {} images, the {p:?} preset needs {} + {}", all.len(), n_train, n_held);
                }
                all.subset(&(n_train..n_train + n_held).collect::<Vec<_>>())
            }
            path => tilt_train::data::read_idx(path.as_ref(), Some(cfg.held_out_labels.get(p).as_ref()), Some(n_held))?,
        };
        let train_data = idx(&images, &labels, n_train);
        let ev_cfg = {
            let mut c = train_config(
                train_data.clone(),
                Objective::Evaluator(Default::default()),
                cfg.evaluator.steps.get(p),
                cfg.seed,
                false,
            );
            c.model = tilt_train::ModelSpec::Cnn(tilt_train::CnnSpec { channels: cfg.evaluator.channels });
            c.batch_size = 64; // convolutions are the slow part on the CPU (docs/results.md)
            c.optim.lr = 3e-3;
            c
        };
        let (evaluator, _) = tilt_train::load_evaluator(&ctx.trained("image_evaluator", &ev_cfg)?, dev)?;
        let held_accuracy = tilt_train::load::accuracy(&evaluator, &held, dev)?;
        let held_features = features(&evaluator, &held.x, held.dim, dev);
        let held_probs = class_probs(&evaluator, &held.x, held.dim, held.labels.as_ref().expect("labelled"), dev);
        let real = metrics::mean_se(&held_probs.iter().map(|p| 1.0 / p).collect::<Vec<_>>());
        Ok(Self { train_data, held, evaluator, held_accuracy, real, held_features, device: dev.clone() })
    }

    /// Width of the evaluator's features.
    fn feature_dim(&self) -> usize {
        self.held_features.len() / self.held.len()
    }

    /// The Fréchet distance between two disjoint sets of held-out images, `n` of them (at most half the held-out
    /// set): what a perfect sampler would score at that sample size.
    pub fn frechet_floor(&self, n: usize) -> f64 {
        let (f, rows) = (self.feature_dim(), n.min(self.held.len() / 2));
        tilt_core::frechet::frechet_distance(&self.held_features[..rows * f], &self.held_features[rows * f..], f)
    }

    /// The evaluator on `images` (rows of pixels) generated for `labels`.
    pub fn verdict(&self, images: &[f32], labels: &[usize]) -> Verdict {
        let (dim, dev) = (self.held.dim, &self.device);
        let probs = class_probs(&self.evaluator, images, dim, labels, dev);
        let q = metrics::quantiles(&probs, &QUANTILE_LEVELS);
        let inv_probs: Vec<f64> = probs.iter().map(|p| 1.0 / p).collect();
        Verdict {
            mean_inv_prob: metrics::mean_se(&inv_probs),
            mean_prob: metrics::mean_se(&probs),
            quantiles: [q[0], q[1], q[2], q[3], q[4]],
            accuracy: accuracy_of(&self.evaluator, images, dim, labels, dev),
            frechet: self.frechet_to_held(images),
            inv_probs,
        }
    }

    /// Fréchet distance of `images`' evaluator features to the held-out images'.
    pub fn frechet_to_held(&self, images: &[f32]) -> f64 {
        let sample_features = features(&self.evaluator, images, self.held.dim, &self.device);
        tilt_core::frechet::frechet_distance(&sample_features, &self.held_features, self.feature_dim())
    }
}

/// One guidance kind at one strength: the evaluator's verdict on the decoded samples.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageStat {
    pub guidance: String,
    pub w: f64,
    pub mean_inv_prob: MeanSe,
    pub mean_prob: MeanSe,
    pub quantiles: [f64; 5],
    pub accuracy: f64,
    pub frechet: f64,
}

pub fn run(ctx: &Ctx, dir: &Path) -> Result<StageOutput> {
    let (cfg, raw): (Config, _) = stage_config("image_cfg")?;
    let p = ctx.preset;
    let dev = &ctx.device;
    if !cfg.reward.strengths.contains(&1.0) || cfg.reward.strengths.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
        bail!("reward.strengths: expected positive strengths including 1 (where the trained term targets p r)");
    }
    let eval = ImageEval::load(ctx, &cfg)?;
    let (train_data, held, held_accuracy) = (&eval.train_data, &eval.held, eval.held_accuracy);
    let classes = held.num_classes;

    // The autoencoder on the images; latent score network and classifier on the codes.
    let ae_cfg = {
        let mut c = train_config(
            train_data.clone(),
            Objective::Autoencoder(tilt_train::objectives::Autoencoder { latent: cfg.autoencoder.latent }),
            cfg.autoencoder.steps.get(p),
            cfg.seed,
            false,
        );
        c.model = tilt_train::ModelSpec::mlp(cfg.autoencoder.hidden, tilt_train::MlpSpec::default().blocks);
        c
    };
    let ae_run = ctx.trained("image_autoencoder", &ae_cfg)?;
    let (autoencoder, ae_state) = tilt_train::load_autoencoder(&ae_run, dev)?;

    // Latent codes of the training images, written once as a labelled CSV (full f32 precision).
    let latents = ctx.models_dir().join("image_latents.csv");
    let train_set = train_data.generate(0, 0)?;
    let codes = encode(&autoencoder, &train_set, dev);
    let mut csv = String::new();
    for (row, label) in codes.chunks_exact(cfg.autoencoder.latent).zip(train_set.labels.as_ref().expect("labelled")) {
        csv += &row.iter().map(|v| v.to_string()).chain([label.to_string()]).collect::<Vec<_>>().join(",");
        csv.push('\n');
    }
    tilt_train::write_atomic(&latents, csv.as_bytes())?;
    let latent_data = DataSpec::Csv { path: latents, labelled: true, classes: Some(classes) };
    let net = |spec: &NetSpec, objective: Objective| {
        let mut c = train_config(latent_data.clone(), objective, spec.steps.get(p), cfg.seed, true);
        c.model = tilt_train::ModelSpec::mlp(spec.hidden.get(p), spec.blocks);
        c
    };
    let dsm = Objective::Dsm(tilt_train::objectives::Dsm { conditional: true, p_uncond: cfg.diffusion.p_uncond });
    let dsm_run = ctx.trained("image_latent_dsm", &net(&cfg.diffusion, dsm))?;
    let diffusion = tilt_train::load_score(&dsm_run, ModelKind::ScoreNet, dev)?;
    let classifier = tilt_train::load_classifier(
        &ctx.trained("image_latent_classifier", &net(&cfg.classifier, Objective::Classifier(Default::default())))?,
        dev,
    )?;
    if diffusion.standardizer != classifier.standardizer {
        bail!("the latent score network and classifier were standardised differently");
    }
    let st = diffusion.standardizer.clone();

    // Reference values on held-out real images, and the Fréchet noise floor at the sample size.
    let per_class = cfg.per_class.get(p);
    let n_samples = per_class * classes;
    let dim = held.dim;
    let real = eval.real;
    let frechet_floor = eval.frechet_floor(n_samples);

    // The sweep: for each guidance kind and strength, `per_class` samples of every class, decoded and evaluated.
    let s = sampler(SamplerKind::default(), cfg.steps.get(p), diffusion.score.schedule);
    let d = cfg.autoencoder.latent;
    let bar = ctx.bar("image_cfg", (2 * cfg.strengths.len() * classes) as u64);
    let mut stats = Vec::new();
    let mut grid: Vec<Vec<f32>> = Vec::new();
    for kind in ["cfg", "classifier"] {
        for &w in &cfg.strengths {
            let (mut images, mut labels_all) = (Vec::new(), Vec::new());
            for c in 0..classes {
                let mut noise = NoiseSource::host_stream(cfg.seed, c as u64);
                let weight = WeightSchedule::Constant(w);
                let base: &dyn ScoreModel = &diffusion.score;
                let mut g = match kind {
                    "cfg" => {
                        GuidedScore::new(base, Condition::class(c, per_class, dev)).with(CfgGuidance::new(), weight)
                    }
                    _ => GuidedScore::new(base, Condition::Unconditional)
                        .with(ClassifierGuidance::new(&classifier.classifier, c), weight),
                };
                let z = s.draw(&mut g, per_class, d, dev, &mut noise);
                let mut z = tensor_ext::to_vec(z);
                st.invert(&mut z);
                let x = tensor_ext::to_vec(autoencoder.decode(tensor_ext::matrix(&z, per_class, d, dev)));
                labels_all.extend(vec![c; per_class]);
                if kind == "cfg" {
                    grid.push(x[..cfg.grid_per_strength.min(per_class) * dim].to_vec());
                }
                images.extend(x);
                bar.inc(1);
            }
            let v = eval.verdict(&images, &labels_all);
            stats.push(ImageStat {
                guidance: kind.into(),
                w,
                mean_inv_prob: v.mean_inv_prob,
                mean_prob: v.mean_prob,
                quantiles: v.quantiles,
                accuracy: v.accuracy,
                frechet: v.frechet,
            });
        }
    }
    bar.finish_and_clear();

    // The trajectory-free trainer on images: r(z) = exp(beta z_1 / sd(z_1)) on the latent code, trained full form
    // from the latent base; reward guidance at w = 1 samples p_r, whose mean reward is E_data[r^2] / E_data[r].
    let first: Vec<f64> = codes.chunks_exact(d).map(|r| r[0] as f64).collect();
    let sd = metrics::mean_se(&first).se * (first.len() as f64).sqrt();
    let mut a = vec![0.0; d];
    a[0] = cfg.reward.beta / sd;
    let reward_spec = tilt_core::RewardSpec::ExpLinear { a };
    let rw_cfg = {
        let objective = Objective::RewardWeighted(tilt_train::objectives::RewardWeighted {
            form: tilt_train::RewardForm::Full,
            reward: reward_spec.clone(),
            base: Some(dsm_run.clone()),
            residual_model: tilt_train::ModelSpec::default(),
        });
        let mut c = net(&cfg.diffusion, objective);
        c.steps = cfg.reward.steps.get(p);
        c
    };
    let reweighted =
        tilt_train::load_score(&ctx.trained("image_latent_reward_full", &rw_cfg)?, ModelKind::ScoreNet, dev)?;
    let reward = reward_spec.build();
    let r_data = super::rewards(reward.as_ref(), &codes, d, dev);
    let n_reward = n_samples;
    // The same reward in the sampler's standardised coordinates (for its gradient): exp(a_1 (m_1 + s_1 y_1)) is
    // exp(a_1 s_1 y_1) up to a constant factor, which the gradient of log r does not see.
    let mut a_std = vec![0.0; d];
    a_std[0] = cfg.reward.beta / sd * st.std[0];
    let reward_std = tilt_core::ExpLinearReward::new(a_std);
    let unguided = |w: f64| w == 0.0;
    // A sample "left the data" when a latent coordinate is not finite or lies beyond the training codes' range by
    // more than the range itself: a diverged chain, whose reward is not a sample of any tilted law.
    let (lo, hi): (Vec<f32>, Vec<f32>) = (0..d)
        .map(|j| {
            codes.iter().skip(j).step_by(d).fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)))
        })
        .unzip();
    let off_data = |z: &[f32]| {
        let off = z
            .chunks_exact(d)
            .filter(|row| {
                row.iter().enumerate().any(|(j, v)| {
                    let span = hi[j] - lo[j];
                    !v.is_finite() || *v < lo[j] - span || *v > hi[j] + span
                })
            })
            .count();
        off as f64 / (z.len() / d) as f64
    };
    let mut reward_rows: Vec<RewardRow> = Vec::new();
    for method in [RewardMethod::TrajectoryFree, RewardMethod::Gradient] {
        for &w in std::iter::once(&0.0).chain(&cfg.reward.strengths) {
            if unguided(w) && method == RewardMethod::Gradient {
                continue; // one unguided row serves both
            }
            let mut g = GuidedScore::new(&diffusion.score as &dyn ScoreModel, Condition::Unconditional);
            g = match method {
                RewardMethod::TrajectoryFree => g.with(
                    tilt_sampler::guidance::RewardGuidance::reweighted(&reweighted.score),
                    WeightSchedule::Constant(w),
                ),
                RewardMethod::Gradient => g.with(
                    tilt_sampler::guidance::TrainingFreeGuidance::reward_gradient(&reward_std),
                    WeightSchedule::Constant(w),
                ),
            };
            // The same noise for every row: differences between rows are not sampling noise.
            let mut noise = NoiseSource::host_stream(cfg.seed, 1000);
            let z = s.draw(&mut g, n_reward, d, dev, &mut noise);
            let mut z = tensor_ext::to_vec(z);
            st.invert(&mut z);
            let x = tensor_ext::to_vec(autoencoder.decode(tensor_ext::matrix(&z, n_reward, d, dev)));
            reward_rows.push(RewardRow {
                method: if unguided(w) { "unguided" } else { method.name() },
                w,
                sampled: super::mean_reward(reward.as_ref(), &z, d, dev),
                off_data: off_data(&z),
                tilted: tilted_mean(&r_data, w),
                frechet: eval.frechet_to_held(&x),
            });
        }
    }
    let target = tilted_mean(&r_data, 1.0);
    let at_w1 = |m: &str| reward_rows.iter().find(|r| r.method == m && r.w == 1.0).expect("strengths include w = 1");
    let (trained_row, gradient_row) =
        (at_w1(RewardMethod::TrajectoryFree.name()), at_w1(RewardMethod::Gradient.name()));
    let (sampled, gradient_w1) = (trained_row.sampled, gradient_row.sampled);
    let data_mean = metrics::mean_se(&r_data);

    // Figures: the CFG sample grid (rows = classes, columns = strengths) and the curves.
    let image = ae_state.image.unwrap_or([1, 28, 28]);
    write_grid(
        &dir.join("samples_cfg.png"),
        &grid,
        classes,
        cfg.strengths.len(),
        cfg.grid_per_strength.min(per_class),
        image,
    )?;
    let curve = |kind: &str, get: &dyn Fn(&ImageStat) -> f64| Series {
        name: format!("{kind} guidance"),
        points: stats.iter().filter(|s| s.guidance == kind).map(|s| (s.w, get(s))).collect(),
    };
    plot::curves(
        &dir.join("inv_class_prob.png"),
        "Fashion-MNIST: E[1/p_eval(c|Y)] against w",
        "w",
        "E[1/p_eval(c|Y)]",
        &[curve("cfg", &|s| s.mean_inv_prob.mean), curve("classifier", &|s| s.mean_inv_prob.mean)],
        &[("held-out real images".to_string(), real.mean)],
    )?;
    plot::curves(
        &dir.join("frechet.png"),
        "Fashion-MNIST: Fréchet distance to held-out images (evaluator features)",
        "w",
        "Fréchet distance",
        &[curve("cfg", &|s| s.frechet), curve("classifier", &|s| s.frechet)],
        &[("noise floor (real vs real, same size)".to_string(), frechet_floor)],
    )?;

    let mut out = StageOutput::new(
        "image_cfg",
        "Guidance on Fashion-MNIST (latent diffusion, independent evaluator)",
        ctx,
        raw,
        cfg.seed,
    );
    let mut table = Table::new(
        &format!(
            "{per_class} samples per class and strength ({n_samples} per row; classifier guidance at w = 0 is the unconditional model, CFG at w = 0 the conditional one), decoded and measured by the independent evaluator (held-out accuracy {held_accuracy:.3}; E[1/p_eval(c|x)] on held-out real images {:.4} ± {:.4}). frechet: Fréchet distance of evaluator features to the {} held-out images (noise floor at this sample size {frechet_floor:.4})",
            real.mean,
            real.se,
            held.len()
        ),
        &[
            "guidance",
            "w",
            "mean_inv_prob",
            "se",
            "mean_prob",
            "prob_se",
            "p_q05",
            "p_q25",
            "p_q50",
            "p_q75",
            "p_q95",
            "accuracy",
            "frechet",
        ],
    );
    for s in &stats {
        let q = s.quantiles;
        table.row(
            [s.guidance.clone(), format!("{}", s.w)]
                .into_iter()
                .chain(
                    [
                        s.mean_inv_prob.mean,
                        s.mean_inv_prob.se,
                        s.mean_prob.mean,
                        s.mean_prob.se,
                        q[0],
                        q[1],
                        q[2],
                        q[3],
                        q[4],
                        s.accuracy,
                        s.frechet,
                    ]
                    .iter()
                    .map(|v| fmt(*v, 4)),
                )
                .collect(),
        );
    }
    let mut reward_table = Table::new(
        &format!(
            "Reward guidance on images: r(z) = exp({} z_1 / sd(z_1)) on the latent code; the trajectory-free trainer (full form from the latent base, no reward gradient) against the reward-gradient (DPS-style) baseline, {n_reward} samples per row with the same noise. tilted: E_data[r^(w+1)] / E_data[r^w] over the {} training codes, the mean reward of the law p r^w (delta-method SE); the trained term targets p r exactly at w = 1 only. off_data: fraction of samples with a latent coordinate beyond the training codes' range by more than the range (diverged chains). frechet: as above (noise floor {frechet_floor:.4})",
            cfg.reward.beta,
            first.len()
        ),
        &["method", "w", "mean_reward", "se", "tilted", "tilted_se", "z", "off_data", "frechet"],
    );
    for r in &reward_rows {
        // Diverged chains have no meaningful mean or SE, so no z-score either: all three say so.
        let (mean, se, z) = match r.off_data {
            0.0 => (
                fmt(r.sampled.mean, 4),
                fmt(r.sampled.se, 4),
                format!("{:+.2}", (r.sampled.mean - r.tilted.mean) / r.sampled.se.hypot(r.tilted.se)),
            ),
            _ => ("diverged".to_string(), "—".to_string(), "diverged".to_string()),
        };
        reward_table.row(vec![
            r.method.to_string(),
            format!("{}", r.w),
            mean,
            se,
            fmt(r.tilted.mean, 4),
            fmt(r.tilted.se, 4),
            z,
            fmt(r.off_data, 4),
            fmt(r.frechet, 4),
        ]);
    }
    out.tables = vec![table, reward_table];
    out.figures = vec![
        (
            "samples_cfg.png".into(),
            "CFG samples: rows are the 10 classes, column groups the strengths w (left to right)".into(),
        ),
        ("inv_class_prob.png".into(), "E[1/p_eval(c|Y)] against w for CFG and classifier guidance".into()),
        ("frechet.png".into(), "Fréchet distance to held-out images against w, with its noise floor".into()),
    ];
    // The target is itself an estimate: the z-scores use both standard errors.
    // A row with diverged chains has no meaningful mean or standard error: it is named as such, never "consistent".
    let against_target = |r: &RewardRow| {
        if r.off_data > 0.0 {
            format!(
                "diverged: {:.1} % of its samples left the data (mean reward {:.3e})",
                100.0 * r.off_data,
                r.sampled.mean
            )
        } else {
            super::versus(MeanSe { mean: r.sampled.mean, se: r.sampled.se.hypot(target.se) }, target.mean)
        }
    };
    out.reading = format!(
        "{} Reward guidance at w = 1 against E_data[r^2]/E_data[r]: the trajectory-free trainer {}; the reward-gradient baseline {}; unguided E_data[r] = {:.4}. {}",
        reading(&stats, frechet_floor, held_accuracy),
        against_target(trained_row),
        against_target(gradient_row),
        data_mean.mean,
        reward_cost_reading(&reward_rows, frechet_floor)
    );
    out.headline = serde_json::json!({
        "held_out_accuracy": held_accuracy,
        "real_mean_inv_prob": real,
        "frechet_floor": frechet_floor,
        "autoencoder_test_mse": ae_state.history.last().map(|h| h.loss),
        "reward_w1": sampled, "reward_gradient_w1": gradient_w1, "reward_target": target, "reward_data_mean": data_mean,
        "reward_rows": reward_rows,
        "stats": stats,
    });
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RewardMethod {
    /// The papers' trainer: reward-weighted DSM on clean codes, guidance term `s_r - s_base`.
    TrajectoryFree,
    /// `grad log r(x0_hat)` through the base model's denoise (DPS-style), no training.
    Gradient,
}

impl RewardMethod {
    fn name(self) -> &'static str {
        match self {
            RewardMethod::TrajectoryFree => "trajectory-free",
            RewardMethod::Gradient => "reward-gradient",
        }
    }
}

#[derive(serde::Serialize)]
struct RewardRow {
    method: &'static str,
    w: f64,
    sampled: MeanSe,
    /// `E_data[r^(w+1)] / E_data[r^w]`: the mean reward of `p r^w`.
    tilted: MeanSe,
    /// Fraction of samples that left the data (see `off_data` in `run`).
    off_data: f64,
    frechet: f64,
}

/// `E[r^(w+1)] / E[r^w]` with a delta-method standard error: `Var(r^(w+1) - R r^w) / (n E[r^w]^2)`.
fn tilted_mean(r: &[f64], w: f64) -> MeanSe {
    let n = r.len() as f64;
    let (den, num): (Vec<f64>, Vec<f64>) = r.iter().map(|v| (v.powf(w), v.powf(w + 1.0))).unzip();
    let (m_den, m_num) = (den.iter().sum::<f64>() / n, num.iter().sum::<f64>() / n);
    let ratio = m_num / m_den;
    let var = num.iter().zip(&den).map(|(a, b)| (a - ratio * b).powi(2)).sum::<f64>() / (n - 1.0);
    MeanSe { mean: ratio, se: (var / n).sqrt() / m_den }
}

/// Which method reaches a higher mean reward at each strength, and the fidelity it costs (Fréchet distance).
fn reward_cost_reading(rows: &[RewardRow], floor: f64) -> String {
    let base = rows.iter().find(|r| r.method == "unguided");
    let mut parts = Vec::new();
    for m in [RewardMethod::TrajectoryFree.name(), RewardMethod::Gradient.name()] {
        let cells: Vec<String> = rows
            .iter()
            .filter(|r| r.method == m)
            .map(|r| match r.off_data {
                0.0 => format!("w = {}: E[r] {:.3}, Fréchet {:.3}", r.w, r.sampled.mean, r.frechet),
                off => format!("w = {}: {:.1} % diverged, Fréchet {:.3}", r.w, 100.0 * off, r.frechet),
            })
            .collect();
        parts.push(format!("{m}: {}", cells.join("; ")));
    }
    match base {
        Some(b) => format!(
            "Cost in fidelity (Fréchet distance; unguided {:.3}, noise floor {floor:.3}): {}.",
            b.frechet,
            parts.join(". ")
        ),
        None => parts.join(". "),
    }
}

/// Latent codes of every row of `data`, in batches.
fn encode(ae: &tilt_models::Autoencoder, data: &Dataset, dev: &Device) -> Vec<f32> {
    batched(&data.x, data.dim, |x| ae.encode(x), dev)
}

fn features(ev: &tilt_models::Evaluator, x: &[f32], dim: usize, dev: &Device) -> Vec<f32> {
    batched(x, dim, |x| ev.features(x), dev)
}

/// `f` over `[n, d]` rows in batches of 1000, concatenated on the host.
fn batched(x: &[f32], d: usize, f: impl Fn(Tensor<2>) -> Tensor<2>, dev: &Device) -> Vec<f32> {
    tensor_ext::map_rows(x, d, 1000, f, dev)
}

/// `p_eval(label_i | x_i)` of every row.
fn class_probs(ev: &tilt_models::Evaluator, x: &[f32], dim: usize, labels: &[usize], dev: &Device) -> Vec<f64> {
    let logp = batched(x, dim, |x| log_softmax(ev.forward(x), 1), dev);
    let k = logp.len() / labels.len();
    labels.iter().enumerate().map(|(i, &c)| (logp[i * k + c] as f64).exp()).collect()
}

fn accuracy_of(ev: &tilt_models::Evaluator, x: &[f32], dim: usize, labels: &[usize], dev: &Device) -> f64 {
    let data =
        Dataset { x: x.to_vec(), labels: Some(labels.to_vec()), dim, num_classes: 0, image: None, streamed: None };
    tilt_train::load::accuracy(ev, &data, dev).expect("in-memory labelled rows")
}

/// Rows = classes, columns = `per` images for each strength, with a 2-pixel gap between strengths.
pub(super) fn write_grid(
    path: &Path,
    grid: &[Vec<f32>],
    classes: usize,
    strengths: usize,
    per: usize,
    image: [usize; 3],
) -> Result<()> {
    let [_, h, w] = image;
    let gap = 2;
    let (width, height) = (strengths * (per * w + gap), classes * h);
    let mut img = image::GrayImage::from_pixel(width as u32, height as u32, image::Luma([255]));
    // `grid` is in sweep order: for each strength, for each class, `per` images.
    for (k, block) in grid.iter().enumerate() {
        let (si, c) = (k / classes, k % classes);
        for (j, pixels) in block.chunks_exact(h * w).enumerate() {
            for (p, v) in pixels.iter().enumerate() {
                let (x, y) = (si * (per * w + gap) + j * w + p % w, c * h + p / w);
                img.put_pixel(x as u32, y as u32, image::Luma([((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8]));
            }
        }
    }
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    tilt_train::write_atomic(path, &bytes)
}

/// The reading, computed from the numbers.
fn reading(stats: &[ImageStat], floor: f64, held_accuracy: f64) -> String {
    let mut parts =
        vec![format!("The evaluator classifies {:.1} % of held-out real images correctly.", 100.0 * held_accuracy)];
    for kind in ["cfg", "classifier"] {
        let rows: Vec<&ImageStat> = stats.iter().filter(|s| s.guidance == kind).collect();
        let Some(zero) = rows.iter().find(|s| s.w == 0.0) else { continue };
        let above: Vec<String> = rows
            .iter()
            .filter(|s| s.w > 0.0 && s.mean_inv_prob.mean > zero.mean_inv_prob.mean)
            .map(|s| format!("{}", s.w))
            .collect();
        let last = rows.last().expect("at least one strength");
        let min = rows.iter().min_by(|a, b| a.mean_inv_prob.mean.total_cmp(&b.mean_inv_prob.mean)).expect("rows");
        parts.push(format!(
            "{kind}: E[1/p_eval(c|Y)] goes from {:.3} ± {:.3} at w = 0 to {:.3} ± {:.3} at w = {} (lowest {:.3} ± {:.3} at w = {}); {}. The 5 % quantile of p_eval(c|Y) is {:.3} at w = 0 and {:.3} at w = {}, accuracy {:.3} -> {:.3}; the Fréchet distance goes from {:.3} to {:.3} (noise floor {floor:.3}).",
            zero.mean_inv_prob.mean,
            zero.mean_inv_prob.se,
            last.mean_inv_prob.mean,
            last.mean_inv_prob.se,
            last.w,
            min.mean_inv_prob.mean,
            min.mean_inv_prob.se,
            min.w,
            if above.is_empty() {
                "every w > 0 stays below the w = 0 value".to_string()
            } else {
                format!("w = {} lie above the w = 0 value", above.join(", "))
            },
            zero.quantiles[0],
            last.quantiles[0],
            last.w,
            zero.accuracy,
            last.accuracy,
            zero.frechet,
            last.frechet,
        ));
    }
    parts.join(" ")
}
