//! A training run: the objectives (DSM, classifier, reward-weighted score matching) wired to the loop, the run
//! directory with its checkpoints and loss curve, and `--resume`.

use crate::checkpoint::{self, Artifact, Checkpoint, FileKind, ModelKind};
use crate::config::{ModelSpec, NetKind, Objective, RewardForm, TrainConfig};
use crate::data::{Dataset, Standardizer};
use crate::ema::Ema;
use crate::load::{RunState, load_score, load_state};
use crate::objectives::{
    Noising, RewardScale, clean_batch, log_rewards, noised, seeded_init, uniform_indices, weighted_mse,
    weights_relative_to,
};
use crate::output_dir::{OutputDir, OutputKind};
use crate::trainer::{LoopSettings, LossPoint, Progress, TrainState, train_loop};
use anyhow::{Context, Result, anyhow, bail};
use burn::config::Config;
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use tilt_core::tensor_ext;
use tilt_models::{
    Autoencoder, AutoencoderConfig, Evaluator, EvaluatorConfig, NoiseNet, NoisyClassifier, NoisyClassifierConfig,
    ScoreNet, ScoreNetConfig, UNet,
};

/// The fixed parameters of the denoising score matching (and flow matching) loss.
#[derive(Clone, Copy)]
struct DsmSettings {
    batch: usize,
    noising: Noising,
    classes: usize,
    p_uncond: f64,
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
    let (train_set, test_set) = data.split(cfg.test_fraction, cfg.seed);
    if train_set.is_empty() {
        bail!(
            "test_fraction: {} of {} points leaves no training points; lower test_fraction or raise data_size",
            cfg.test_fraction,
            data.len()
        );
    }
    cfg.check_size(data.dim, data.image, train_set.num_classes)?;
    let dir = if resume {
        OutputDir::claim_to_resume(run_dir)?
    } else {
        OutputDir::claim(run_dir, OutputKind::Train, start == Start::NewOverwriting)?
    };
    let has_run = if resume { checkpoint::resolve_newest(run_dir) } else { checkpoint::resolve(run_dir) }.is_ok();
    if has_run && !resume {
        bail!(
            "{}: already holds a training run; pass --resume to continue it, or choose another --out",
            run_dir.display()
        );
    }
    if resume && !has_run {
        bail!("{}: --resume given but there is no checkpoint to resume from", run_dir.display());
    }
    let mut ctx = RunContext {
        cfg,
        run_dir,
        resume,
        device,
        standardizer,
        dim: data.dim,
        image: data.image,
        data_sha256,
        base_sha256: None,
        _dir: dir,
    };
    let b = cfg.batch_size;
    let (time, logit) = match cfg.objective {
        Objective::FlowMatching { time, t_mean, t_std, .. } => (time, (t_mean, t_std)),
        _ => (crate::TimeSampling::Uniform, (0.0, 1.0)),
    };
    let noising = Noising { schedule: cfg.schedule, t_min: cfg.t_min, prediction: cfg.prediction(), time, logit };
    // The classifier's inputs are noised the same way; what it outputs is a class, not a prediction.
    let classifier_noising = Noising { prediction: tilt_core::Prediction::Epsilon, ..noising };
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
        Objective::Dsm { conditional, p_uncond } | Objective::FlowMatching { conditional, p_uncond, .. } => {
            let classes = if *conditional && train_set.labels.is_some() { train_set.num_classes } else { 0 };
            let p_uncond = *p_uncond;
            // One loss for every noise network: label dropout to the null label with probability `p_uncond`.
            fn loss<N: NoiseNet>(
                m: &N,
                data: &Dataset,
                rng: &mut ChaCha8Rng,
                dev: &Device,
                s: DsmSettings,
            ) -> Tensor<1> {
                let idx = uniform_indices(data.len(), s.batch, rng);
                let batch = noised(data, &idx, s.noising, rng, dev);
                let labels = (s.classes > 0).then(|| {
                    let l: Vec<usize> = batch
                        .labels
                        .as_ref()
                        .expect("labelled")
                        .iter()
                        .map(|&c| if rng.random::<f64>() < s.p_uncond { s.classes } else { c })
                        .collect();
                    tensor_ext::labels(&l, dev)
                });
                weighted_mse(m.predict_noise(batch.x_t, batch.t, labels), batch.target, None)
            }
            let s = DsmSettings { batch: b, noising, classes, p_uncond };
            match cfg.model.kind {
                NetKind::Mlp => {
                    let net_cfg = net_config(&cfg.model, classes);
                    let init = seeded_init(&ad, cfg.seed, || net_cfg.init(&ad));
                    ctx.run(
                        init,
                        &net_cfg,
                        &train_set,
                        &test_set,
                        |m: &ScoreNet, d, r, v| loss(m, d, r, v, s),
                        progress,
                    )
                }
                NetKind::Unet => {
                    let image = data.image.ok_or_else(|| anyhow!("model.kind: the U-Net needs image data"))?;
                    let net_cfg = cfg.model.unet(image, classes);
                    net_cfg.check().map_err(|e| anyhow!("model.{e}"))?;
                    let init = seeded_init(&ad, cfg.seed, || net_cfg.init(&ad));
                    ctx.run(init, &net_cfg, &train_set, &test_set, |m: &UNet, d, r, v| loss(m, d, r, v, s), progress)
                }
            }
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
                let batch = noised(data, &idx, classifier_noising, rng, dev);
                let labels = tensor_ext::labels(batch.labels.as_ref().expect("labelled"), dev);
                log_softmax(m.forward(batch.x_t, batch.t), 1).gather(1, labels.reshape([b, 1])).mean().neg()
            };
            ctx.run(seeded_init(&ad, cfg.seed, || net_cfg.init(&ad)), &net_cfg, &train_set, &test_set, loss, progress)
        }
        Objective::Autoencoder { latent } => {
            let net_cfg = AutoencoderConfig::new(data.dim).with_latent(*latent).with_hidden(cfg.model.hidden);
            let loss = move |m: &Autoencoder, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
                let (x, _) = clean_batch(data, &uniform_indices(data.len(), b, rng), dev);
                (m.forward(x.clone()) - x).square().mean()
            };
            ctx.run(seeded_init(&ad, cfg.seed, || net_cfg.init(&ad)), &net_cfg, &train_set, &test_set, loss, progress)
        }
        Objective::Evaluator => {
            let image = data.image.ok_or_else(|| anyhow!("objective.kind: the evaluator needs image data"))?;
            if train_set.num_classes < 2 {
                bail!("data: the evaluator needs labelled images with at least 2 classes");
            }
            let net_cfg = EvaluatorConfig::new(image, train_set.num_classes).with_channels(cfg.model.channels);
            let loss = move |m: &Evaluator, data: &Dataset, rng: &mut ChaCha8Rng, dev: &Device| {
                let (x, labels) = clean_batch(data, &uniform_indices(data.len(), b, rng), dev);
                let labels = tensor_ext::labels(&labels.expect("labelled"), dev);
                log_softmax(m.forward(x), 1).gather(1, labels.reshape([b, 1])).mean().neg()
            };
            ctx.run(seeded_init(&ad, cfg.seed, || net_cfg.init(&ad)), &net_cfg, &train_set, &test_set, loss, progress)
        }
        Objective::RewardWeighted { form, reward, base, residual_model } => {
            let spec = reward;
            reward.validate(data.dim).map_err(|e| anyhow!("objective.reward.{e}"))?;
            let reward = reward.build();
            let base = match base {
                Some(p) => {
                    let loaded = load_score(p, ModelKind::ScoreNet, device)
                        .with_context(|| format!("objective.base = {}", p.display()))?;
                    if loaded.state.dim != data.dim {
                        bail!(
                            "objective.base: {} was trained on {}-dimensional data, these data are {}-dimensional",
                            p.display(),
                            loaded.state.dim,
                            data.dim
                        );
                    }
                    // The trainer reweights the base's own law: a base of another law would be tilted toward
                    // something else entirely. Generated data are the same law when their specs agree (the draws
                    // differ with data_size and seed, so their hashes are not compared); files are the user's call.
                    let generated =
                        |d: &crate::DataSpec| !matches!(d, crate::DataSpec::Csv { .. } | crate::DataSpec::Idx { .. });
                    let theirs = &loaded.state.config.data;
                    if generated(theirs) && generated(&cfg.data) && *theirs != cfg.data {
                        bail!(
                            "objective.base: {} was trained on other data ({}), not this config's [data] ({}); train \
                             the reward-weighted score on the law of its base",
                            p.display(),
                            serde_json::to_string(theirs)?,
                            serde_json::to_string(&cfg.data)?
                        );
                    }
                    let base_cfg = &loaded.state.config;
                    if base_cfg.schedule != cfg.schedule {
                        bail!(
                            "objective.base: {} was trained on schedule {} ({:?}), this run on {} ({:?}); the \
                             reweighted network starts from or adds to the base's output, so both need one schedule",
                            p.display(),
                            base_cfg.schedule.name(),
                            base_cfg.schedule,
                            cfg.schedule.name(),
                            cfg.schedule
                        );
                    }
                    if base_cfg.prediction() != cfg.prediction() {
                        bail!(
                            "model.prediction: objective.base {} outputs \"{}\", this run \"{}\"; give model.prediction = \
                             \"{}\" (the reweighted network starts from or adds to the base's output)",
                            p.display(),
                            base_cfg.prediction().name(),
                            cfg.prediction().name(),
                            base_cfg.prediction().name()
                        );
                    }
                    ctx.base_sha256 = loaded.ema_sha256.clone();
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
            // A reward that overflows f32 on the data would surface as "training diverged" a step later.
            if !scale.train.is_finite() || (!test_set.is_empty() && !scale.test.is_finite()) {
                let field = match spec {
                    tilt_core::RewardSpec::ExpLinear { .. } => "objective.reward.a",
                    tilt_core::RewardSpec::Bump { .. } => "objective.reward.height",
                };
                bail!(
                    "{field}: log E[r] over the training data is {}: the reward overflows f32 on these data; scale it down",
                    scale.train
                );
            }
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
                                Checkpoint::open(&base.path, ModelKind::ScoreNet)?
                                    .load_model(FileKind::EmaModel, init)?
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
                            let batch = noised(data, &idx, noising, rng, dev);
                            let w = weights_of(&batch.x0, data, dev);
                            weighted_mse(m.forward(batch.x_t, batch.t, None), batch.target, Some(&w))
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
                            let batch = noised(data, &idx, noising, rng, dev);
                            weighted_mse(m.forward(batch.x_t, batch.t, None), batch.target, None)
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
                        let batch = noised(data, &idx, noising, rng, dev);
                        let w = weights_of(&batch.x0, data, dev);
                        // The frozen base runs on the plain device: a constant for autodiff. Its output and the
                        // residual's are both the run's prediction, so they add.
                        let base_out = base_net.forward(batch.x_t.clone().inner(), batch.t.clone().inner(), None);
                        let out = m.forward(batch.x_t, batch.t, None) + base_out;
                        weighted_mse(out, batch.target, Some(&w))
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
    image: Option<[usize; 3]>,
    data_sha256: String,
    /// SHA-256 of the EMA weights of `objective.base`, when the objective reads one.
    base_sha256: Option<String>,
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
            let ck = Checkpoint::open(&checkpoint::resolve_newest(self.run_dir)?, kind)?;
            let saved = load_state(&ck)?;
            check_same_config(&saved.config, cfg, saved.data_sha256.is_some())?;
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
            if let (Some(before), Some(now)) = (&saved.base_sha256, &self.base_sha256)
                && before != now
            {
                bail!(
                    "--resume: objective.base changed since this run started (its EMA weights had SHA-256 {before}, \
                     now {now}); resuming would train against another base. Restore that base or start a new run"
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
                image: self.image,
                num_classes,
                history: st.history.clone(),
                data_sha256: Some(self.data_sha256.clone()),
                base_sha256: self.base_sha256.clone(),
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
        // Finished again from the final state: a kill between the last checkpoint and its pruning or its loss.csv
        // would otherwise leave an extra checkpoint or a stale loss.csv, which a resume with no step left to train
        // never repairs.
        checkpoint::prune_after(self.run_dir, state.step, cfg.keep_checkpoints)?;
        write_loss_csv(&self.run_dir.join("loss.csv"), &state.history)?;
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

/// Refuse to resume under a different config (only `steps` may grow). When the checkpoint holds the data's
/// content hash (checked separately), a data file's path may be spelled differently or moved: the data are the
/// same if their bytes are.
fn check_same_config(saved: &TrainConfig, now: &TrainConfig, content_hashed: bool) -> Result<()> {
    let (mut a, mut b) = (serde_json::to_value(saved)?, serde_json::to_value(now)?);
    if content_hashed {
        for v in [&mut a, &mut b] {
            if let Some(serde_json::Value::Object(data)) = v.get_mut("data") {
                for path_field in ["path", "images", "labels"] {
                    if let Some(p) = data.get_mut(path_field)
                        && !p.is_null()
                    {
                        *p = serde_json::Value::Bool(true);
                    }
                }
            }
        }
    }
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
