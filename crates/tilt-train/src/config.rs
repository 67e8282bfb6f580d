//! The TOML config of `tilt train`: what is trained (`Objective`), on what data, with which network and
//! optimiser, validated with errors that name the field.

use crate::checkpoint::ModelKind;
use crate::data::DataSpec;
use crate::objectives;
use crate::optim::OptimConfig;
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tilt_core::{Prediction, Schedule};

pub use crate::model_spec::{CnnSpec, MlpSpec, ModelSpec, NetKind, UNetSpec};
pub use crate::objectives::{RewardForm, TimeSampling};

/// What is trained: one type per objective, each in its file of [`crate::objectives`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Objective {
    /// Denoising score matching ([`objectives::Dsm`]).
    Dsm(objectives::Dsm),
    /// Flow matching on `rectified-flow` ([`objectives::FlowMatching`]).
    FlowMatching(objectives::FlowMatching),
    /// A noise-aware classifier `p_t(c | x)` ([`objectives::Classifier`]).
    Classifier(objectives::Classifier),
    /// An autoencoder to a low-dimensional code ([`objectives::Autoencoder`]).
    Autoencoder(objectives::Autoencoder),
    /// The independent evaluator of generated images ([`objectives::Evaluator`]).
    Evaluator(objectives::Evaluator),
    /// The papers' trajectory-free reward-guided trainer ([`objectives::RewardWeighted`]).
    RewardWeighted(objectives::RewardWeighted),
}

impl Objective {
    /// The objective's trainer: the one dispatch from a config to its file.
    pub(crate) fn trainer(&self) -> &dyn objectives::TrainObjective {
        match self {
            Objective::Dsm(o) => o,
            Objective::FlowMatching(o) => o,
            Objective::Classifier(o) => o,
            Objective::Autoencoder(o) => o,
            Objective::Evaluator(o) => o,
            Objective::RewardWeighted(o) => o,
        }
    }
}

/// The config of `tilt train` (TOML), validated with errors that name the field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// What is trained.
    pub objective: Objective,
    /// The training data.
    pub data: DataSpec,
    /// Optimizer steps in all.
    pub steps: usize,
    /// Seed of the data, the initial weights and every step's draws.
    #[serde(default)]
    pub seed: u64,
    /// Rows per step, drawn with replacement.
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
    /// The noise schedule the network is trained on.
    #[serde(default)]
    pub schedule: Schedule,
    /// Training times are drawn from `U(t_min, 1)`.
    #[serde(default = "d_t_min")]
    pub t_min: f64,
    /// Network architecture, size and prediction.
    #[serde(default)]
    pub model: ModelSpec,
    /// Optimiser and learning rate.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Steps between loss readings (each one a host sync).
    #[serde(default = "d_log_every")]
    pub log_every: usize,
    /// Steps between checkpoints.
    #[serde(default = "d_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Checkpoints kept (the newest).
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
/// The most points of a generated data set.
pub const MAX_DATA_ROWS: usize = 1 << 26;
/// The widest layer (hidden units, time-embedding size, convolution channels).
pub const MAX_WIDTH: usize = 1 << 14;
/// The deepest stack of blocks (MLP blocks, U-Net blocks per level).
pub const MAX_DEPTH: usize = 256;
/// The most U-Net levels (each halves the image).
pub const MAX_UNET_LEVELS: usize = 12;
/// The most parameters a trained network may have (about 0.5 GB in f32, and four times that with Adam and EMA).
pub const MAX_PARAMETERS: usize = 1 << 27;
/// The most activations one training step may hold (8 GB in f32).
pub const MAX_ACTIVATIONS: usize = 1 << 31;

/// The text of a config file. Only a regular file is read: a FIFO with no writer would block for ever and
/// `/dev/zero` would grow until memory runs out.
pub fn read_config(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    if !meta.is_file() {
        bail!("{}: expected a config file (TOML), but it is not a regular file", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))
}

impl TrainConfig {
    /// Parse TOML and validate; errors name the field.
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: TrainConfig = toml::from_str(text)
            .map_err(|e| anyhow!("{}", crate::toml_error::explain(text, e.to_string().trim_end())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read and validate a config file; returns the text too (a run keeps it verbatim as `config.toml`).
    pub fn load(path: &Path) -> Result<(Self, String)> {
        let text = read_config(path)?;
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
        self.check_model()?;
        if !(0.0..0.9).contains(&self.test_fraction) {
            bail!("test_fraction: expected a value in [0, 0.9), got {}", self.test_fraction);
        }
        if !(self.t_min > 0.0 && self.t_min < 0.5) {
            bail!("t_min: expected a value in (0, 0.5), got {}", self.t_min);
        }
        self.schedule.validate().map_err(anyhow::Error::msg)?;
        let var = 1.0 - self.schedule.alpha_sq(self.t_min);
        if var.is_nan() || var < tilt_core::schedule::MIN_SIGMA_SQ * (1.0 - 1e-6) {
            bail!(
                "t_min: sigma^2(t_min) = {var:e} on this schedule, below {:e}: the noise level is not resolved in f64; \
                 raise t_min",
                tilt_core::schedule::MIN_SIGMA_SQ
            );
        }
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
        let images = matches!(self.data, DataSpec::Idx { .. } | DataSpec::ImageFolder { .. });
        if matches!(self.objective, Objective::Evaluator(_))
            && !matches!(self.data, DataSpec::Idx { labels: Some(_), .. } | DataSpec::ImageFolder { .. })
        {
            bail!(
                "objective.kind: the evaluator is trained on labelled images (data.kind = \"idx\" with data.labels, or \
                 \"image-folder\" with class sub-folders)"
            );
        }
        if let DataSpec::ImageFolder { .. } = self.data {
            if self.standardize {
                bail!("standardize: images are already scaled to [-1, 1]; per-pixel standardisation is not supported");
            }
            if matches!(self.objective, Objective::RewardWeighted(_)) {
                bail!(
                    "objective.kind: reward-weighted training normalises by the mean reward over every row, which an \
                     image folder decoded on demand does not hold; train it on data.kind = \"idx\""
                );
            }
        }
        self.check_prediction()?;
        if let ModelSpec::Unet(u) = &self.model {
            if !matches!(self.objective, Objective::Dsm(_) | Objective::FlowMatching(_)) {
                bail!(
                    "model.kind: the U-Net is trained with objective.kind = \"dsm\" or \"flow-matching\" (the other \
                     objectives use the MLP)"
                );
            }
            if !images {
                bail!("model.kind: the U-Net needs image data (data.kind = \"idx\" or \"image-folder\")");
            }
            if self.standardize {
                bail!("standardize: images are already scaled to [-1, 1]; per-pixel standardisation is not supported");
            }
            // The image size is known once the data are read (then `check_size` runs); everything else is checked
            // here, on an image the levels divide.
            if !(1..=MAX_UNET_LEVELS).contains(&u.channel_mults.len()) {
                bail!("model.channel_mults: expected 1 to {MAX_UNET_LEVELS} levels, got {}", u.channel_mults.len());
            }
            let side = 1usize << (u.channel_mults.len() - 1);
            u.config([1, side, side], 0).check().map_err(|e| anyhow!("model.{e}"))?;
        }
        // Which objectives train which network.
        let wanted = match self.objective {
            Objective::Evaluator(_) => &[NetKind::Cnn][..],
            Objective::Dsm(_) | Objective::FlowMatching(_) => &[NetKind::Mlp, NetKind::Unet][..],
            _ => &[NetKind::Mlp][..],
        };
        // An evaluator config without `[model]` gets the CNN's defaults.
        let evaluator_default = matches!(self.objective, Objective::Evaluator(_)) && self.model == ModelSpec::default();
        if !wanted.contains(&self.model.kind()) && !evaluator_default {
            bail!(
                "model.kind: {:?} is not a network of this objective (it trains {})",
                self.model.kind(),
                wanted.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(" or ")
            );
        }
        match &self.objective {
            Objective::Autoencoder(objectives::Autoencoder { latent })
                if *latent == 0 || *latent >= self.mlp().hidden =>
            {
                bail!(
                    "objective.latent: expected a code smaller than model.hidden = {}, got {latent}",
                    self.mlp().hidden
                )
            }
            Objective::Dsm(objectives::Dsm { p_uncond, .. })
            | Objective::FlowMatching(objectives::FlowMatching { p_uncond, .. })
                if !(0.0..1.0).contains(p_uncond) =>
            {
                bail!("objective.p_uncond: expected a probability in [0, 1), got {p_uncond}")
            }
            Objective::FlowMatching(objectives::FlowMatching { t_mean, .. })
                if !(t_mean.is_finite() && t_mean.abs() <= 10.0) =>
            {
                bail!("objective.t_mean: expected a logit mean in [-10, 10] (SD3 uses 0), got {t_mean}")
            }
            Objective::FlowMatching(objectives::FlowMatching { t_std, .. })
                if !(t_std.is_finite() && *t_std > 0.0 && *t_std <= 10.0) =>
            {
                bail!("objective.t_std: expected a logit standard deviation in (0, 10] (SD3 uses 1), got {t_std}")
            }
            Objective::RewardWeighted(objectives::RewardWeighted {
                form: RewardForm::Residual, base: None, ..
            }) => {
                bail!(
                    "objective.base: the residual form needs the trained base score checkpoint (objective.base = \"runs/base\")"
                )
            }
            _ => Ok(()),
        }
    }

    /// Refuse, before anything is allocated, a network or batch beyond the budget: the parameters of the network
    /// this config builds for `dim`-dimensional data (or `image`s) with `classes` labels, and the activations of
    /// one training step. Estimates, generous by design: they bound memory and time, not exact counts.
    pub fn check_size(&self, dim: usize, image: Option<[usize; 3]>, classes: usize) -> Result<()> {
        let (dim, classes, b) = (dim as u128, classes as u128, self.batch_size as u128);
        let (params, activations): (u128, u128) = match (&self.model, image) {
            (ModelSpec::Unet(m), Some([c, h, w])) => {
                if let Err(e) = m.config([c, h, w], 0).check() {
                    bail!("model.{e} (the data are {c} x {h} x {w} images)");
                }
                let (bpl, levels) = (m.blocks_per_level as u128, m.channel_mults.len() as u128);
                let widths = m.channel_mults.iter().map(|k| (m.channels * k) as u128);
                // Two 3x3 convolutions per block, down and up paths, attention and embeddings included.
                let p = widths.clone().map(|c| 64 * bpl * c * c).sum::<u128>() + 64 * (m.channels as u128).pow(2);
                let a = b
                    * (m.channels * m.channel_mults.iter().max().copied().unwrap_or(1)) as u128
                    * (h * w) as u128
                    * 16
                    * bpl
                    * levels;
                (p, a)
            }
            (_, Some([c, h, w])) if matches!(self.objective, Objective::Evaluator(_)) => {
                let ch = self.cnn().channels as u128;
                (9 * 21 * ch * ch + 9 * c as u128 * ch + 4 * ch * classes, b * ch * (h * w) as u128 * 8)
            }
            (ModelSpec::Mlp(m), _) => {
                let (hdn, blocks) = (m.hidden as u128, m.blocks as u128);
                let p = (dim + m.time_dim as u128 + classes + 2) * hdn + blocks * 3 * hdn * hdn + 2 * hdn * dim;
                (p, b * (hdn * (blocks + 2) * 8 + m.time_dim as u128 + dim))
            }
            (_, _) => bail!("model.kind: {:?} needs image data (data.kind = \"idx\")", self.model.kind()),
        };
        if params > MAX_PARAMETERS as u128 {
            bail!(
                "model: this network would have about {params} parameters on this data ({} dimensions, {classes} \
                 classes), more than the {MAX_PARAMETERS} tilt trains; lower model.hidden, model.blocks, \
                 model.time_dim or model.channels",
                dim
            );
        }
        if activations > MAX_ACTIVATIONS as u128 {
            bail!(
                "batch_size: a training step of {} rows would hold about {activations} activations, more than the \
                 {MAX_ACTIVATIONS} budget; lower batch_size or the network's width",
                self.batch_size
            );
        }
        Ok(())
    }

    /// The MLP spec of an objective that trains the MLP (validated; the default MLP otherwise).
    pub fn mlp(&self) -> MlpSpec {
        match &self.model {
            ModelSpec::Mlp(m) => m.clone(),
            _ => MlpSpec::default(),
        }
    }

    /// The CNN spec of the evaluator (its defaults when `[model]` is left out).
    pub fn cnn(&self) -> CnnSpec {
        match &self.model {
            ModelSpec::Cnn(c) => c.clone(),
            _ => CnnSpec { channels: 32 },
        }
    }

    /// Sizes of `[model]`: positive, within the limits, and an even time embedding.
    fn check_model(&self) -> Result<()> {
        let positive = |name: &str, v: usize| if v == 0 { bail!("{name}: expected a positive number") } else { Ok(()) };
        let limits: Vec<(&str, usize, usize)> = match &self.model {
            ModelSpec::Mlp(m) => vec![
                ("model.hidden", m.hidden, MAX_WIDTH),
                ("model.time_dim", m.time_dim, MAX_WIDTH),
                ("model.blocks", m.blocks, MAX_DEPTH),
            ],
            ModelSpec::Unet(u) => vec![
                ("model.channels", u.channels, MAX_WIDTH),
                ("model.time_dim", u.time_dim, MAX_WIDTH),
                ("model.blocks_per_level", u.blocks_per_level, MAX_DEPTH),
            ],
            ModelSpec::Cnn(c) => vec![("model.channels", c.channels, MAX_WIDTH)],
        };
        for (name, v, max) in limits {
            positive(name, v)?;
            if v > max {
                bail!("{name}: expected at most {max}, got {v}");
            }
        }
        if let ModelSpec::Unet(u) = &self.model
            && let Some(m) = u.channel_mults.iter().find(|m| u.channels.checked_mul(**m).is_none_or(|c| c > MAX_WIDTH))
        {
            bail!("model.channel_mults: model.channels x {m} is more than {MAX_WIDTH} channels");
        }
        let time_dim = match &self.model {
            ModelSpec::Mlp(m) => m.time_dim,
            ModelSpec::Unet(u) => u.time_dim,
            ModelSpec::Cnn(_) => 2,
        };
        if !time_dim.is_multiple_of(2) {
            bail!("model.time_dim: expected an even number, got {time_dim}");
        }
        Ok(())
    }

    /// What the trained score network outputs: `model.prediction`, else the objective's own.
    pub fn prediction(&self) -> Prediction {
        match (&self.objective, self.model.prediction()) {
            (_, Some(p)) => p,
            (Objective::FlowMatching(_), None) => Prediction::Velocity,
            _ => Prediction::Epsilon,
        }
    }

    /// `model.prediction` against the objective and the schedule.
    fn check_prediction(&self) -> Result<()> {
        let scores =
            matches!(self.objective, Objective::Dsm(_) | Objective::FlowMatching(_) | Objective::RewardWeighted(_));
        if let (Some(p), false) = (self.model.prediction(), scores) {
            bail!(
                "model.prediction: only score networks (objective.kind = \"dsm\", \"flow-matching\" or \
                 \"reward-weighted\") have a prediction; remove model.prediction = \"{}\"",
                p.name()
            );
        }
        if let Objective::FlowMatching(_) = self.objective {
            if !matches!(self.schedule, Schedule::RectifiedFlow { .. }) {
                bail!(
                    "schedule.kind: flow matching trains on the straight path; set [schedule] kind = \"rectified-flow\" \
                     (got \"{}\"), or use objective.kind = \"dsm\" with model.prediction = \"velocity\" on this schedule",
                    self.schedule.name()
                );
            }
            if let Some(p) = self.model.prediction().filter(|p| *p != Prediction::Velocity) {
                bail!(
                    "model.prediction: flow matching regresses the velocity; got \"{}\" (use objective.kind = \"dsm\" \
                     with schedule.kind = \"rectified-flow\" to train another prediction on that path)",
                    p.name()
                );
            }
        }
        // The linear schedule's alpha = sqrt(1 - t) has an unbounded derivative at t = 1: the velocity target
        // alpha' X_0 grows without bound near the end of training's time range.
        if scores && self.prediction() == Prediction::Velocity && self.schedule == Schedule::Linear {
            bail!(
                "model.prediction: \"velocity\" on schedule.kind = \"linear\" has an unbounded target near t = 1 \
                 (alpha' = -1/(2 sqrt(1 - t))); use schedule.kind = \"rectified-flow\", \"cosine\" or \"discrete\", or \
                 another prediction"
            );
        }
        Ok(())
    }

    /// The kind of network this config trains.
    pub fn model_kind(&self) -> ModelKind {
        match self.objective {
            Objective::Classifier(_) => ModelKind::Classifier,
            Objective::Evaluator(_) => ModelKind::Evaluator,
            Objective::Autoencoder(_) => ModelKind::Autoencoder,
            Objective::RewardWeighted(objectives::RewardWeighted { form: RewardForm::Residual, .. }) => {
                ModelKind::Residual
            }
            _ => ModelKind::ScoreNet,
        }
    }
}
