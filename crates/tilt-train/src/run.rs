//! A training run: the data prepared and the objective dispatched ([`crate::objectives`]), the run directory with its
//! checkpoints and loss curve, and `--resume`.

use crate::checkpoint::{self, Artifact, Checkpoint, FileKind};
use crate::config::TrainConfig;
use crate::data::{Dataset, Standardizer};
use crate::ema::Ema;
use crate::load::{RunState, load_state};
use crate::objectives::Sets;
use crate::objectives::batches::Noising;
use crate::output_dir::{OutputDir, OutputKind};
use crate::trainer::{LoopSettings, LossPoint, Progress, TrainState, train_loop};
use anyhow::{Result, bail};
use burn::config::Config;
use burn::module::Module;
use burn::prelude::*;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

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
    /// Steps trained in all.
    pub steps: usize,
    /// The last logged training loss.
    pub final_loss: f64,
    /// Loss of the EMA model on the held-out split (one pass, fixed noise).
    pub test_loss: Option<f64>,
    /// The loss curve.
    pub history: Vec<LossPoint>,
    /// The final checkpoint.
    pub checkpoint: PathBuf,
    /// Wall-clock seconds of this call.
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
    let mut data = match &cfg.data {
        crate::DataSpec::Latent { autoencoder } => crate::data::latent_codes(autoencoder, device)?,
        spec => spec.generate(cfg.data_size, cfg.seed)?,
    };
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
        class_names: data.class_names(),
        base_sha256: None,
        _dir: dir,
    };
    let noising = Noising {
        schedule: cfg.schedule,
        t_min: cfg.t_min,
        prediction: cfg.prediction(),
        time: crate::TimeSampling::Uniform,
        logit: (0.0, 1.0),
    };
    let sets = Sets { train: &train_set, test: &test_set, dim: data.dim, image: data.image, noising };
    cfg.objective.trainer().train(&mut ctx, &sets, progress)
}

/// One run: its config, folder and everything an objective's network and loss are run with.
pub(crate) struct RunContext<'a> {
    pub(crate) cfg: &'a TrainConfig,
    pub(crate) run_dir: &'a Path,
    pub(crate) resume: bool,
    pub(crate) device: &'a Device,
    pub(crate) standardizer: Standardizer,
    pub(crate) dim: usize,
    pub(crate) image: Option<[usize; 3]>,
    pub(crate) data_sha256: String,
    /// The class names of an image folder.
    pub(crate) class_names: Option<Vec<String>>,
    /// SHA-256 of the EMA weights of `objective.base`, when the objective reads one.
    pub(crate) base_sha256: Option<String>,
    /// Holds the run directory's lock until the run ends.
    _dir: OutputDir,
}

impl RunContext<'_> {
    /// The part every objective shares: state (fresh or resumed), the loop, checkpoints, loss curve, test loss.
    pub(crate) fn run<M: Module, C: Config>(
        &self,
        init: M,
        net_cfg: &C,
        train_set: &Dataset,
        test_set: &Dataset,
        loss: impl Fn(&M, &Dataset, &mut ChaCha8Rng, &Device) -> Result<Tensor<1>>,
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
                class_names: self.class_names.clone(),
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
        // Image folders: the next step's batch is decoded while this one computes (every objective that trains on
        // them draws its batch's indices first, uniformly, from the step's own stream).
        let mut step = state.step;
        let with_prefetch = |m: &M, rng: &mut ChaCha8Rng| {
            let out = loss(m, train_set, rng, &ad_dev);
            // After this step's batch is drawn: the decoding overlaps its backward pass and optimiser step.
            if step + 1 < cfg.steps {
                train_set.prefetch(cfg.batch_size, crate::trainer::step_rng(cfg.seed, step + 1));
            }
            step += 1;
            out
        };
        train_loop(&mut state, &settings, with_prefetch, save, progress)?;
        // Finished again from the final state: a kill between the last checkpoint and its pruning or its loss.csv
        // would otherwise leave an extra checkpoint or a stale loss.csv, which a resume with no step left to train
        // never repairs.
        checkpoint::prune_after(self.run_dir, state.step, cfg.keep_checkpoints)?;
        write_loss_csv(&self.run_dir.join("loss.csv"), &state.history)?;
        let test_loss = (!test_set.is_empty())
            .then(|| -> Result<f64> {
                let mut rng = crate::trainer::step_rng(cfg.seed ^ 0x7e57, 0);
                Ok(loss(&state.ema.model, test_set, &mut rng, self.device)?.into_scalar::<f64>())
            })
            .transpose()?;
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
                for path_field in ["path", "images", "labels", "autoencoder"] {
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
