//! A training run: its TOML config, the objectives (DSM, classifier, reward-weighted score matching), the
//! run directory with checkpoints and the loss curve, `--resume`, and loading trained models for sampling.

use crate::checkpoint::{self, Artifact, Checkpoint, FileKind};
use crate::data::{DataSpec, Dataset, Standardizer};
use crate::ema::Ema;
use crate::optim::OptimConfig;
use crate::output_dir::{OutputDir, OutputKind};
use crate::trainer::{LoopSettings, LossPoint, Progress, TrainState, train_loop};
use anyhow::{Context, Result, anyhow, bail};
use burn::config::Config;
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tilt_core::{RewardSpec, Schedule, tensor_ext};
use tilt_models::{
    Activation, NetClassifier, NetScore, NoisyClassifier, NoisyClassifierConfig, ScoreNet, ScoreNetConfig,
};

/// Network size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default = "d_hidden")]
    pub hidden: usize,
    #[serde(default = "d_blocks")]
    pub blocks: usize,
    #[serde(default = "d_time_dim")]
    pub time_dim: usize,
    #[serde(default)]
    pub activation: Activation,
}

fn d_hidden() -> usize {
    128
}
fn d_blocks() -> usize {
    3
}
fn d_time_dim() -> usize {
    32
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self { hidden: d_hidden(), blocks: d_blocks(), time_dim: d_time_dim(), activation: Activation::Silu }
    }
}

/// The three forms of reward-weighted score matching (docs/theory.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardForm {
    /// A new score network for `p_r`, per-sample weights `r(x0) / mean(r)`, the mean taken over the whole
    /// training set once (a per-batch mean fits a different law, biased by O(1/B): docs/theory.md §4).
    Full,
    /// Frozen base + small `delta_theta`; the guidance term is `delta` itself.
    Residual,
    /// Resample `x0 ∝ r(x0)` and run plain DSM (the same objective as `full` in expectation).
    Resample,
}

/// What is trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Objective {
    /// Denoising score matching. With labelled data and `conditional = true` the network is
    /// class-conditional and learns the unconditional score under the null label with probability `p_uncond`.
    Dsm {
        #[serde(default = "d_true")]
        conditional: bool,
        #[serde(default = "d_p_uncond")]
        p_uncond: f64,
    },
    /// A noise-aware classifier `p_t(c | x)` trained by cross-entropy on noised inputs.
    Classifier,
    /// The papers' trajectory-free reward-guided trainer.
    RewardWeighted {
        form: RewardForm,
        reward: RewardSpec,
        /// A trained unconditional score checkpoint: required by `residual` (the frozen base), optional
        /// initialisation for `full` and `resample`.
        base: Option<PathBuf>,
        /// Size of `delta_theta` (residual form).
        #[serde(default = "d_residual_model")]
        residual_model: ModelSpec,
    },
}

fn d_true() -> bool {
    true
}
fn d_p_uncond() -> f64 {
    0.1
}
fn d_residual_model() -> ModelSpec {
    ModelSpec { hidden: 64, blocks: 2, ..ModelSpec::default() }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub objective: Objective,
    pub data: DataSpec,
    pub steps: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Points drawn for generated data sets (CSV files give their own).
    #[serde(default = "d_data_size")]
    pub data_size: usize,
    /// Fraction held out as a test split (its loss is reported at the end).
    #[serde(default = "d_test_fraction")]
    pub test_fraction: f64,
    /// Train on standardised coordinates (statistics saved with the model, undone when sampling).
    #[serde(default)]
    pub standardize: bool,
    #[serde(default)]
    pub schedule: Schedule,
    /// Training times are drawn from `U(t_min, 1)`.
    #[serde(default = "d_t_min")]
    pub t_min: f64,
    #[serde(default)]
    pub model: ModelSpec,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default = "d_log_every")]
    pub log_every: usize,
    #[serde(default = "d_checkpoint_every")]
    pub checkpoint_every: usize,
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
}

fn d_batch() -> usize {
    512
}
fn d_data_size() -> usize {
    20_000
}
fn d_test_fraction() -> f64 {
    0.1
}
fn d_t_min() -> f64 {
    1e-3
}
fn d_log_every() -> usize {
    25
}
fn d_checkpoint_every() -> usize {
    1000
}
fn d_keep() -> usize {
    2
}

/// Limits checked before anything is allocated: a typo such as `batch_size = 1e11` must be a field error, not
/// an 800 GB allocation that aborts the process.
pub const MAX_BATCH_ROWS: usize = 1 << 20;
pub const MAX_DATA_ROWS: usize = 1 << 26;

impl TrainConfig {
    /// Parse TOML and validate; errors name the field.
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read and validate a config file; returns the text too (a run keeps it verbatim as `config.toml`).
    pub fn load(path: &Path) -> Result<(Self, String)> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let cfg = Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))?;
        Ok((cfg, text))
    }

    fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: usize| if v == 0 { bail!("{name}: expected a positive number") } else { Ok(()) };
        positive("steps", self.steps)?;
        positive("batch_size", self.batch_size)?;
        positive("data_size", self.data_size)?;
        positive("log_every", self.log_every)?;
        positive("checkpoint_every", self.checkpoint_every)?;
        positive("model.hidden", self.model.hidden)?;
        positive("model.time_dim", self.model.time_dim)?;
        if !self.model.time_dim.is_multiple_of(2) {
            bail!("model.time_dim: expected an even number, got {}", self.model.time_dim);
        }
        if !(0.0..0.9).contains(&self.test_fraction) {
            bail!("test_fraction: expected a value in [0, 0.9), got {}", self.test_fraction);
        }
        if !(self.t_min > 0.0 && self.t_min < 0.5) {
            bail!("t_min: expected a value in (0, 0.5), got {}", self.t_min);
        }
        self.schedule.validate().map_err(anyhow::Error::msg)?;
        self.optim.validate().map_err(anyhow::Error::msg)?;
        self.data.validate()?;
        if self.data_size > MAX_DATA_ROWS {
            bail!("data_size: expected at most {MAX_DATA_ROWS} points, got {}", self.data_size);
        }
        if self.batch_size > MAX_BATCH_ROWS {
            bail!(
                "batch_size: expected at most {MAX_BATCH_ROWS} rows per step (batches are drawn with replacement, so \
                 a larger batch only repeats rows), got {}",
                self.batch_size
            );
        }
        match &self.objective {
            Objective::Dsm { p_uncond, .. } if !(0.0..1.0).contains(p_uncond) => {
                bail!("objective.p_uncond: expected a probability in [0, 1), got {p_uncond}")
            }
            Objective::RewardWeighted { form: RewardForm::Residual, base: None, .. } => {
                bail!(
                    "objective.base: the residual form needs the trained base score checkpoint (objective.base = \"runs/base\")"
                )
            }
            _ => Ok(()),
        }
    }

    fn model_kind(&self) -> &'static str {
        match self.objective {
            Objective::Classifier => "classifier",
            Objective::RewardWeighted { form: RewardForm::Residual, .. } => "residual",
            _ => "score-net",
        }
    }
}

/// Saved with every checkpoint (`state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    pub tilt_version: String,
    pub step: usize,
    pub config: TrainConfig,
    /// The network's own config (`ScoreNetConfig` / `NoisyClassifierConfig` as JSON).
    pub net: serde_json::Value,
    pub standardizer: Standardizer,
    pub dim: usize,
    pub num_classes: usize,
    pub history: Vec<LossPoint>,
    /// SHA-256 of the training data (before the split and standardisation): `--resume` refuses changed data.
    /// Absent in checkpoints written before it existed.
    #[serde(default)]
    pub data_sha256: Option<String>,
}

/// How `train` treats the run directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run: the folder must be absent, empty, or an earlier `tilt train` folder without a checkpoint.
    New,
    /// Continue the run in the folder from its latest checkpoint.
    Resume,
    /// A new run in a folder holding files tilt did not write (`--force`): files with the names a run writes
    /// are replaced, the others are left alone.
    NewOverwriting,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub steps: usize,
    pub final_loss: f64,
    /// Loss of the EMA model on the held-out split (one pass, fixed noise).
    pub test_loss: Option<f64>,
    pub history: Vec<LossPoint>,
    pub checkpoint: PathBuf,
    pub seconds: f64,
}

/// A batch of noised clean samples: host draws, uploaded once.
struct Noised {
    x_t: Tensor<2>,
    t: Tensor<1>,
    z: Tensor<2>,
    x0: Vec<f32>,
    labels: Option<Vec<usize>>,
}

fn noised(data: &Dataset, idx: &[usize], sched: Schedule, t_min: f64, rng: &mut ChaCha8Rng, device: &Device) -> Noised {
    let d = data.dim;
    let b = idx.len();
    let (mut x0, mut xt, mut z, mut ts) =
        (Vec::with_capacity(b * d), Vec::with_capacity(b * d), Vec::with_capacity(b * d), Vec::with_capacity(b));
    for &i in idx {
        let t = t_min + (1.0 - t_min) * rng.random::<f64>();
        let (a, s) = (sched.alpha(t), sched.sigma(t));
        ts.push(t as f32);
        for &v in data.row(i) {
            let e: f64 = StandardNormal.sample(rng);
            x0.push(v);
            z.push(e as f32);
            xt.push((a * v as f64 + s * e) as f32);
        }
    }
    Noised {
        x_t: tensor_ext::matrix(&xt, b, d, device),
        t: Tensor::from_data(TensorData::new(ts, [b]), device),
        z: tensor_ext::matrix(&z, b, d, device),
        x0,
        labels: data.labels.as_ref().map(|l| idx.iter().map(|&i| l[i]).collect()),
    }
}

fn uniform_indices(n: usize, b: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    (0..b).map(|_| rng.random_range(0..n)).collect()
}

/// Per-row `mean_d (eps - z)^2`, weighted by `weights` (or 1), averaged over the batch.
fn weighted_mse(eps: Tensor<2>, z: Tensor<2>, weights: Option<&[f32]>) -> Tensor<1> {
    let [b, _] = eps.dims();
    let per_row = (eps - z).square().mean_dim(1).reshape([b]);
    match weights {
        None => per_row.mean(),
        Some(w) => {
            let w = Tensor::<1>::from_data(TensorData::new(w.to_vec(), [b]), &per_row.device());
            (per_row * w).mean()
        }
    }
}

/// `log r` of standardised rows, evaluated in data space.
fn log_rewards(
    reward: &dyn tilt_core::Reward,
    rows: &[f32],
    dim: usize,
    st: &Standardizer,
    device: &Device,
) -> Vec<f64> {
    let mut x = rows.to_vec();
    st.invert(&mut x);
    let n = x.len() / dim;
    tensor_ext::to_vec_f64(reward.log_reward(tensor_ext::matrix(&x, n, dim, device)))
}

/// `ln mean_i r_i` from `log r`, without overflow.
fn log_mean_reward(log_r: &[f64]) -> f64 {
    let m = log_r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + (log_r.iter().map(|l| (l - m).exp()).sum::<f64>() / log_r.len() as f64).ln()
}

/// Weights `r_i / mean(r)` for a fixed `ln mean(r)`.
fn weights_relative_to(log_r: &[f64], log_mean: f64) -> Vec<f32> {
    log_r.iter().map(|l| (l - log_mean).exp() as f32).collect()
}

/// The reward normalisation of one fixed data set: `ln mean r` over all its rows, computed once.
///
/// Dividing by the mean within each minibatch instead is biased: the expected gradient is that of the law
/// `∝ r E[1/(r + S_{B-1})] p`, which lowers the tilted mean reward by about `Var_{p_r}(r) / ((B-1) E_p[r])`
/// (docs/theory.md §4). With the data-set mean the loss is exactly the empirical tilted objective.
struct RewardScale {
    train: f64,
    test: f64,
}

impl RewardScale {
    fn of(data: &Dataset, reward: &dyn tilt_core::Reward, st: &Standardizer, device: &Device) -> f64 {
        log_mean_reward(&log_rewards(reward, &data.x, data.dim, st, device))
    }

    /// The scale of `data`, which is the training or the test set itself (compared by address, not by size).
    fn for_set(&self, data: &Dataset, train_set: &Dataset) -> f64 {
        if std::ptr::eq(data, train_set) { self.train } else { self.test }
    }
}

/// Build a model from the device RNG seeded with `seed`. Burn's RNG is process-global per backend, so the
/// seed-then-init pair is made atomic: concurrent runs (tests, threads) then still get reproducible weights.
fn seeded_init<M: Module>(device: &Device, seed: u64, init: impl FnOnce() -> M) -> M {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    with_sequential_ids(init())
}

/// Number the parameters 1, 2, ... in visiting order. Burn draws a random id per parameter, and the ids are
/// written into every model and optimizer file (they key the optimizer state): with random ids two identical
/// runs, or a run and its resumed twin, write different bytes.
fn with_sequential_ids<M: Module>(model: M) -> M {
    struct Sequential(u64);
    impl ModuleMapper for Sequential {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            self.0 += 1;
            let (_, value, mapper) = param.consume();
            Param::from_mapped_value(ParamId::from(self.0), value, mapper)
        }
    }
    model.map(&mut Sequential(0))
}

/// Train (or, with `resume`, continue) the run described by `cfg` in `run_dir`.
pub fn train(
    cfg: &TrainConfig,
    run_dir: &Path,
    start: Start,
    device: &Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainOutcome> {
    let resume = start == Start::Resume;
    // Everything that can fail on the config or the data fails before the run directory is touched.
    let mut data = cfg.data.generate(cfg.data_size, cfg.seed)?;
    let data_sha256 = data.sha256();
    let standardizer = if cfg.standardize { Standardizer::fit(&data) } else { Standardizer::identity(data.dim) };
    standardizer.apply(&mut data.x);
    check_data_range(&data, cfg)?;
    let dir = OutputDir::claim(run_dir, OutputKind::Train, start == Start::NewOverwriting)?;
    let has_run = checkpoint::resolve(run_dir).is_ok();
    if has_run && !resume {
        bail!(
            "{}: already holds a training run; pass --resume to continue it, or choose another --out",
            run_dir.display()
        );
    }
    if resume && !has_run {
        bail!("{}: --resume given but there is no checkpoint to resume from", run_dir.display());
    }
    let (train_set, test_set) = data.split(cfg.test_fraction, cfg.seed);
    let ctx = RunContext { cfg, run_dir, resume, device, standardizer, dim: data.dim, data_sha256, _dir: dir };
    let (b, sched, t_min) = (cfg.batch_size, cfg.schedule, cfg.t_min);
    let ad = device.clone().autodiff();
    let net_config = |spec: &ModelSpec, classes: usize| {
        ScoreNetConfig::new(data.dim)
            .with_hidden(spec.hidden)
            .with_blocks(spec.blocks)
            .with_time_dim(spec.time_dim)
            .with_activation(spec.activation)
            .with_num_classes(classes)
    };
    match &cfg.objective {
        Objective::Dsm { conditional, p_uncond } => {
            let classes = if *conditional && train_set.labels.is_some() { train_set.num_classes } else { 0 };
            let net_cfg = net_config(&cfg.model, classes);
            let p_uncond = *p_uncond;
            let loss = move |m: &ScoreNet, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
                let idx = uniform_indices(data.len(), b, rng);
                let batch = noised(data, &idx, sched, t_min, rng, dev);
                let labels = (classes > 0).then(|| {
                    let l: Vec<usize> = batch
                        .labels
                        .as_ref()
                        .expect("labelled")
                        .iter()
                        .map(|&c| if rng.random::<f64>() < p_uncond { classes } else { c })
                        .collect();
                    tensor_ext::labels(&l, dev)
                });
                weighted_mse(m.forward(batch.x_t, batch.t, labels), batch.z, None)
            };
            ctx.run(seeded_init(&ad, cfg.seed, || net_cfg.init(&ad)), &net_cfg, &train_set, &test_set, loss, progress)
        }
        Objective::Classifier => {
            if train_set.labels.is_none() || train_set.num_classes < 2 {
                bail!("data: the classifier objective needs labelled data with at least 2 classes");
            }
            let net_cfg = NoisyClassifierConfig::new(data.dim, train_set.num_classes)
                .with_hidden(cfg.model.hidden)
                .with_layers(cfg.model.blocks)
                .with_time_dim(cfg.model.time_dim)
                .with_activation(cfg.model.activation);
            let loss = move |m: &NoisyClassifier, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
                let idx = uniform_indices(data.len(), b, rng);
                let batch = noised(data, &idx, sched, t_min, rng, dev);
                let labels = tensor_ext::labels(batch.labels.as_ref().expect("labelled"), dev);
                log_softmax(m.forward(batch.x_t, batch.t), 1).gather(1, labels.reshape([b, 1])).mean().neg()
            };
            ctx.run(seeded_init(&ad, cfg.seed, || net_cfg.init(&ad)), &net_cfg, &train_set, &test_set, loss, progress)
        }
        Objective::RewardWeighted { form, reward, base, residual_model } => {
            reward.validate(data.dim).map_err(|e| anyhow!("objective.reward.{e}"))?;
            let reward = reward.build();
            let base = match base {
                Some(p) => {
                    let loaded = load_score(p, "score-net", device)
                        .with_context(|| format!("objective.base = {}", p.display()))?;
                    if loaded.standardizer != ctx.standardizer {
                        bail!(
                            "objective.base: {} was trained on differently standardised data (data or `standardize` differ)",
                            p.display()
                        );
                    }
                    Some(loaded)
                }
                None => None,
            };
            let scale = RewardScale {
                train: RewardScale::of(&train_set, reward.as_ref(), &ctx.standardizer, device),
                test: RewardScale::of(&test_set, reward.as_ref(), &ctx.standardizer, device),
            };
            let weights_of = |x0: &[f32], set: &Dataset, dev: &Device| {
                weights_relative_to(
                    &log_rewards(reward.as_ref(), x0, data.dim, &ctx.standardizer, dev),
                    scale.for_set(set, &train_set),
                )
            };
            match form {
                RewardForm::Full | RewardForm::Resample => {
                    // With a base, start from its weights and architecture (a class-conditional base is then
                    // trained and used under its null label, i.e. unconditionally).
                    let (net_cfg, model) = match &base {
                        Some(base) => {
                            let net_cfg: ScoreNetConfig = serde_json::from_value(base.state.net.clone())?;
                            let init = seeded_init(&ad, cfg.seed, || net_cfg.init(&ad));
                            let model = if resume {
                                init
                            } else {
                                Checkpoint::open(&base.path, "score-net")?.load_model(FileKind::EmaModel, init)?
                            };
                            (net_cfg, model)
                        }
                        None => {
                            let net_cfg = net_config(&cfg.model, 0);
                            let model = seeded_init(&ad, cfg.seed, || net_cfg.init(&ad));
                            (net_cfg, model)
                        }
                    };
                    if *form == RewardForm::Full {
                        let loss = |m: &ScoreNet, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
                            let idx = uniform_indices(data.len(), b, rng);
                            let batch = noised(data, &idx, sched, t_min, rng, dev);
                            let w = weights_of(&batch.x0, data, dev);
                            weighted_mse(m.forward(batch.x_t, batch.t, None), batch.z, Some(&w))
                        };
                        ctx.run(model, &net_cfg, &train_set, &test_set, loss, progress)
                    } else {
                        // Categorical over the training rows with probabilities ∝ r(x0), drawn by inverse CDF.
                        let cdf = |data: &Dataset| {
                            let log_r = log_rewards(reward.as_ref(), &data.x, data.dim, &ctx.standardizer, device);
                            let w = weights_relative_to(&log_r, scale.for_set(data, &train_set));
                            let mut acc = 0.0f64;
                            w.iter()
                                .map(|v| {
                                    acc += *v as f64;
                                    acc
                                })
                                .collect::<Vec<f64>>()
                        };
                        let (train_cdf, test_cdf) = (cdf(&train_set), cdf(&test_set));
                        let loss = |m: &ScoreNet, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
                            let c = if std::ptr::eq(data, &train_set) { &train_cdf } else { &test_cdf };
                            let total = *c.last().expect("non-empty data");
                            let idx: Vec<usize> = (0..b)
                                .map(|_| {
                                    let u = rng.random::<f64>() * total;
                                    c.partition_point(|&v| v < u).min(c.len() - 1)
                                })
                                .collect();
                            let batch = noised(data, &idx, sched, t_min, rng, dev);
                            weighted_mse(m.forward(batch.x_t, batch.t, None), batch.z, None)
                        };
                        ctx.run(model, &net_cfg, &train_set, &test_set, loss, progress)
                    }
                }
                RewardForm::Residual => {
                    let base = base.expect("validated: residual needs a base");
                    let base_net = base.score.net.clone();
                    let net_cfg = net_config(residual_model, 0).with_zero_init_output(true);
                    let loss = |m: &ScoreNet, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
                        let idx = uniform_indices(data.len(), b, rng);
                        let batch = noised(data, &idx, sched, t_min, rng, dev);
                        let w = weights_of(&batch.x0, data, dev);
                        // The frozen base runs on the plain device: a constant for autodiff.
                        let eps_base = base_net.forward(batch.x_t.clone().inner(), batch.t.clone().inner(), None);
                        let eps = m.forward(batch.x_t, batch.t, None) + eps_base;
                        weighted_mse(eps, batch.z, Some(&w))
                    };
                    ctx.run(
                        seeded_init(&ad, cfg.seed, || net_cfg.init(&ad)),
                        &net_cfg,
                        &train_set,
                        &test_set,
                        loss,
                        progress,
                    )
                }
            }
        }
    }
}

struct RunContext<'a> {
    cfg: &'a TrainConfig,
    run_dir: &'a Path,
    resume: bool,
    device: &'a Device,
    standardizer: Standardizer,
    dim: usize,
    data_sha256: String,
    /// Holds the run directory's lock until the run ends.
    _dir: OutputDir,
}

impl RunContext<'_> {
    /// The part every objective shares: state (fresh or resumed), the loop, checkpoints, loss curve, test loss.
    fn run<M: Module, C: Config>(
        &self,
        init: M,
        net_cfg: &C,
        train_set: &Dataset,
        test_set: &Dataset,
        loss: impl Fn(&M, &Dataset, &mut ChaCha8Rng, &Device) -> Tensor<1>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<TrainOutcome> {
        let start = std::time::Instant::now();
        let cfg = self.cfg;
        let kind = cfg.model_kind();
        let ad = self.device.clone().autodiff();
        let net_json = serde_json::to_value(net_cfg)?;
        let mut state = if self.resume {
            let ck = Checkpoint::open(self.run_dir, kind)?;
            let saved = load_state(&ck)?;
            check_same_config(&saved.config, cfg)?;
            if cfg.steps < saved.step {
                bail!(
                    "steps: {} is below the step of the checkpoint to resume ({}, in {}); give steps >= {}",
                    cfg.steps,
                    saved.step,
                    ck.dir.display(),
                    saved.step
                );
            }
            if let Some(before) = saved.data_sha256.as_ref().filter(|d| **d != self.data_sha256) {
                bail!(
                    "--resume: the training data differ from the run's (data SHA-256 {before} in the checkpoint, \
                     {} now); resuming would silently train on other data. Restore the data or start a new run",
                    self.data_sha256
                );
            }
            if saved.net != net_json {
                bail!("{}: the network config differs from the checkpoint's", self.run_dir.display());
            }
            let model = ck.load_model(FileKind::Model, init.clone())?;
            let ema = Ema { model: ck.load_model(FileKind::EmaModel, init.valid())?, decay: cfg.optim.ema_decay };
            let optim = ck.load_optimizer(cfg.optim.init())?;
            TrainState { model, ema, optim, step: saved.step, history: saved.history }
        } else {
            TrainState {
                ema: Ema::new(&init, cfg.optim.ema_decay),
                model: init,
                optim: cfg.optim.init(),
                step: 0,
                history: Vec::new(),
            }
        };
        let num_classes = train_set.num_classes;
        let save = |st: &TrainState<M>| -> Result<()> {
            let rs = RunState {
                tilt_version: env!("CARGO_PKG_VERSION").into(),
                step: st.step,
                config: cfg.clone(),
                net: net_json.clone(),
                standardizer: self.standardizer.clone(),
                dim: self.dim,
                num_classes,
                history: st.history.clone(),
                data_sha256: Some(self.data_sha256.clone()),
            };
            let artifacts = [
                Artifact::model("model.bpk", FileKind::Model, &st.model)?,
                Artifact::model("ema.bpk", FileKind::EmaModel, &st.ema.model)?,
                Artifact::optimizer(&st.optim)?,
                Artifact::json("state.json", &rs)?,
            ];
            checkpoint::save(self.run_dir, kind, st.step, &artifacts, cfg.keep_checkpoints)?;
            write_loss_csv(&self.run_dir.join("loss.csv"), &st.history)
        };
        let settings = LoopSettings {
            total: cfg.steps,
            seed: cfg.seed,
            log_every: cfg.log_every,
            checkpoint_every: cfg.checkpoint_every,
            optim: &cfg.optim,
        };
        let ad_dev = ad.clone();
        train_loop(&mut state, &settings, |m, rng| loss(m, train_set, rng, &ad_dev), save, progress)?;
        let test_loss = (!test_set.is_empty()).then(|| {
            let mut rng = crate::trainer::step_rng(cfg.seed ^ 0x7e57, 0);
            loss(&state.ema.model, test_set, &mut rng, self.device).into_scalar::<f64>()
        });
        let checkpoint = checkpoint::resolve(self.run_dir)?;
        Ok(TrainOutcome {
            steps: state.step,
            final_loss: state.history.last().map_or(f64::NAN, |p| p.loss),
            test_loss,
            history: state.history,
            checkpoint,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// `state.json` of a verified checkpoint, cross-checked with the manifest's step.
fn load_state(ck: &Checkpoint) -> Result<RunState> {
    let state: RunState = ck.load_json("state.json")?;
    if state.step != ck.manifest.step {
        bail!(
            "{}: state.json is at step {} but the manifest at step {}",
            ck.dir.display(),
            state.step,
            ck.manifest.step
        );
    }
    Ok(state)
}

/// Refuse data the forward process cannot noise to its N(0, I) prior: at the samplers' start `t_max` a VP
/// schedule keeps `alpha(t_max)` of every coordinate, and the sampler starts from pure noise. Beyond
/// `5 / alpha(t_max)` (1581 for the linear schedule) the data are unscaled; the cap 1e15 keeps f32 squares finite.
fn check_data_range(data: &Dataset, cfg: &TrainConfig) -> Result<()> {
    let alpha = cfg.schedule.alpha(tilt_sampler::DEFAULT_T_MAX);
    let limit = (5.0 / alpha).min(1e15);
    if let Some((row, v)) = data.first_beyond(limit) {
        bail!(
            "data: row {} has a coordinate of {v:e}{}: beyond ±{limit:.0}, which the forward process cannot noise to \
             its N(0, I) prior (alpha(t_max) = {alpha:.2e}); {}",
            row + 1,
            if cfg.standardize { " after standardisation" } else { "" },
            if cfg.standardize { "remove the outlier rows" } else { "set standardize = true or rescale the data" }
        );
    }
    Ok(())
}

/// Refuse to resume under a different config (only `steps` may grow).
fn check_same_config(saved: &TrainConfig, now: &TrainConfig) -> Result<()> {
    let (a, b) = (serde_json::to_value(saved)?, serde_json::to_value(now)?);
    if let (serde_json::Value::Object(a), serde_json::Value::Object(b)) = (&a, &b) {
        for (k, va) in a {
            if k != "steps" && Some(va) != b.get(k) {
                bail!(
                    "--resume: config field `{k}` differs from the run's ({va} in the checkpoint); only `steps` may change"
                );
            }
        }
    }
    Ok(())
}

fn write_loss_csv(path: &Path, history: &[LossPoint]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["step", "loss", "lr", "grad_norm"])?;
    for p in history {
        w.write_record([p.step.to_string(), p.loss.to_string(), p.lr.to_string(), p.grad_norm.to_string()])?;
    }
    crate::write_atomic(path, &w.into_inner()?)
}

/// A trained score network (EMA weights) ready for the sampler.
pub struct LoadedScore {
    pub path: PathBuf,
    pub score: NetScore,
    pub standardizer: Standardizer,
    pub state: RunState,
}

/// Load the EMA weights of a `score-net` or `residual` checkpoint (a run or checkpoint directory).
pub fn load_score(path: &Path, kind: &str, device: &Device) -> Result<LoadedScore> {
    let ck = Checkpoint::open(path, kind)?;
    let state = load_state(&ck)?;
    let net_cfg: ScoreNetConfig = serde_json::from_value(state.net.clone())
        .with_context(|| format!("{}: state.json holds no score-network config", ck.dir.display()))?;
    let net = ck.load_model(FileKind::EmaModel, net_cfg.init(device))?;
    Ok(LoadedScore {
        path: path.to_path_buf(),
        score: NetScore::new(net, state.config.schedule, state.dim),
        standardizer: state.standardizer.clone(),
        state,
    })
}

/// A trained noise-aware classifier (EMA weights).
pub struct LoadedClassifier {
    pub classifier: NetClassifier,
    pub standardizer: Standardizer,
    pub state: RunState,
}

pub fn load_classifier(path: &Path, device: &Device) -> Result<LoadedClassifier> {
    let ck = Checkpoint::open(path, "classifier")?;
    let state = load_state(&ck)?;
    let net_cfg: NoisyClassifierConfig = serde_json::from_value(state.net.clone())
        .with_context(|| format!("{}: state.json holds no classifier config", ck.dir.display()))?;
    let net = ck.load_model(FileKind::EmaModel, net_cfg.init(device))?;
    Ok(LoadedClassifier { classifier: NetClassifier { net }, standardizer: state.standardizer.clone(), state })
}
