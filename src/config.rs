//! TOML configuration of `tilt sample`, parsed with serde and validated with errors that name the field.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tilt_core::{GaussianMixture, MixtureSpec, RewardSpec, Schedule};
use tilt_sampler::guidance::Apg;
use tilt_sampler::{SamplerKind, TimeGrid};

/// Largest `sampler.batch`: 10^7 chains of a few coordinates and a few hidden layers already take gigabytes.
pub const MAX_BATCH: usize = 10_000_000;
/// Largest `sampler.steps` (the time grid is held in memory; 10^6 steps are far past any discretisation bias).
pub const MAX_STEPS: usize = 1_000_000;

/// `tilt sample` configuration. Every table rejects unknown fields.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Seed of the initial noise and of every step's noise.
    #[serde(default)]
    pub seed: u64,
    /// Number of samples per strength.
    pub samples: usize,
    /// The analytic data set: exact scores, and exact metrics. Optional when `models.base` is a network
    /// trained on a mixture (its data table is used).
    pub mixture: Option<MixtureSpec>,
    /// Trained checkpoints that replace exact scores (see `tilt train`).
    pub models: Option<ModelsConfig>,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub sampler: SamplerConfig,
    /// Condition on this class (index into `mixture.classes`).
    pub class: Option<usize>,
    pub reward: Option<RewardSpec>,
    pub guidance: GuidanceConfig,
}

/// Trained checkpoints (run directories or checkpoint directories) for `tilt sample`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// A `score-net` checkpoint used as the base score (class-conditional for CFG).
    pub base: Option<PathBuf>,
    /// A reward-weighted `score-net` checkpoint (full or resample form): reward guidance `g = s_r - s_base`.
    pub reweighted: Option<PathBuf>,
    /// A `residual` checkpoint: reward guidance `g = delta`.
    pub residual: Option<PathBuf>,
    /// A `classifier` checkpoint for classifier guidance (and nothing else: metrics stay exact).
    pub classifier: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    #[serde(default)]
    pub kind: SamplerKind,
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default)]
    pub grid: TimeGrid,
    #[serde(default = "default_t_max")]
    pub t_max: f64,
    #[serde(default = "default_t_min")]
    pub t_min: f64,
    /// Return the Tweedie denoise at `t_min` (default) instead of the last iterate.
    #[serde(default = "default_true")]
    pub denoise_final: bool,
    /// `host` (default): the same noise on every backend; `device`: the backend's RNG.
    #[serde(default)]
    pub noise: NoiseKind,
    /// Chains run at once: larger sample counts are drawn in chunks of this many rows (host noise: stream `i`
    /// of the seed for chunk `i`), which bounds the sampler's memory.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// TFG's recurrence (FreeDoM's time travel): take every step this many times, noising back in between.
    #[serde(default = "default_recurrence")]
    pub recurrence: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            kind: SamplerKind::default(),
            steps: default_steps(),
            grid: TimeGrid::default(),
            t_max: default_t_max(),
            t_min: default_t_min(),
            denoise_final: true,
            noise: NoiseKind::Host,
            batch: default_batch(),
            recurrence: default_recurrence(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseKind {
    #[default]
    Host,
    Device,
}

fn default_batch() -> usize {
    100_000
}
fn default_recurrence() -> usize {
    1
}
fn default_steps() -> usize {
    200
}
fn default_t_max() -> f64 {
    tilt_sampler::DEFAULT_T_MAX
}
fn default_t_min() -> f64 {
    tilt_sampler::DEFAULT_T_MIN
}
fn default_true() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GuidanceKind {
    /// No guidance term (only `w = 0` makes sense; the strengths are ignored).
    None,
    /// Reward guidance with the exact reweighted mixture (needs `reward`).
    Reward,
    /// Classifier-free guidance toward `class`.
    Cfg,
    /// Classifier guidance toward `class` with the exact noised classifier (base: unconditional).
    Classifier,
    /// Training-free reward-gradient (DPS-style) guidance (needs `reward`).
    RewardGradient,
    /// Steer away from `negative_class`.
    NegativeClass,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuidanceConfig {
    pub kind: GuidanceKind,
    /// Strengths `w` to sweep (papers' convention; CFG `guidance_scale = 1 + w`).
    pub strengths: Vec<f64>,
    /// Optional guidance interval `[t_start, t_end]` (both or neither).
    pub t_start: Option<f64>,
    pub t_end: Option<f64>,
    /// Guidance rescale `phi` in [0, 1].
    #[serde(default)]
    pub rescale: f64,
    /// Adaptive projected guidance (CFG only).
    pub apg: Option<Apg>,
    /// The class to steer away from (negative-class guidance).
    pub negative_class: Option<usize>,
}

impl SampleConfig {
    /// Read and validate a config file; every error names the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parse and check everything that does not need the models (see [`SampleConfig::validate_for`]).
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: SampleConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        let mixture =
            cfg.mixture.as_ref().map(|m| m.build().map_err(|e| anyhow::anyhow!("mixture.{e}"))).transpose()?;
        let has_base = cfg.models.as_ref().is_some_and(|m| m.base.is_some());
        if mixture.is_none() && !has_base {
            bail!("mixture: missing; give a [mixture] table, or a trained base model in [models] base = \"runs/...\"");
        }
        if let Some(m) = &mixture {
            cfg.validate_for(m.dim(), m.n_classes())?;
        } else {
            cfg.validate_static()?;
        }
        Ok(cfg)
    }

    /// The mixture of the config, built (validated at parse time).
    pub fn built_mixture(&self) -> Option<GaussianMixture> {
        self.mixture.as_ref().map(|m| m.build().expect("validated at parse time"))
    }

    fn validate_static(&self) -> Result<()> {
        if self.samples < 2 {
            bail!("samples: expected at least 2, got {}", self.samples);
        }
        self.schedule.validate().map_err(anyhow::Error::msg)?;
        let s = &self.sampler;
        if s.steps == 0 {
            bail!("sampler.steps: expected at least 1");
        }
        if s.steps > MAX_STEPS {
            bail!("sampler.steps: expected at most {MAX_STEPS}, got {}", s.steps);
        }
        if !(1..=MAX_BATCH).contains(&s.batch) {
            bail!("sampler.batch: expected 1 to {MAX_BATCH} chains at once, got {}", s.batch);
        }
        if !(1..=100).contains(&s.recurrence) {
            bail!("sampler.recurrence: expected 1 (no time travel) to 100, got {}", s.recurrence);
        }
        if s.recurrence > 1 && s.kind.is_multistep() {
            bail!(
                "sampler.recurrence: {:?} is a multistep solver, whose history cannot be rewound; use recurrence = 1 or a one-step sampler",
                s.kind
            );
        }
        if !(s.t_max.is_finite() && s.t_max < 1.0) {
            bail!(
                "sampler.t_max: expected a value below 1 (alpha(1) = 0 and every step divides by alpha; the default is 1 - 1e-5), got {}",
                s.t_max
            );
        }
        if !(0.0 < s.t_min && s.t_min < s.t_max) {
            bail!(
                "sampler.t_min, sampler.t_max: expected 0 < t_min < t_max < 1, got t_min = {}, t_max = {}",
                s.t_min,
                s.t_max
            );
        }
        let g = &self.guidance;
        if g.strengths.is_empty() {
            bail!("guidance.strengths: expected at least one strength");
        }
        if let Some(w) = g.strengths.iter().find(|w| !w.is_finite()) {
            bail!("guidance.strengths: expected finite values, got {w}");
        }
        if !(0.0..=1.0).contains(&g.rescale) {
            bail!("guidance.rescale: expected a value in [0, 1], got {}", g.rescale);
        }
        if g.rescale > 0.0 && g.kind != GuidanceKind::Cfg {
            bail!(
                "guidance.rescale: applies to guidance.kind = \"cfg\" only (it changes the guided score's scale, which would break e.g. the exactness of reward guidance at w = 1)"
            );
        }
        if g.t_start.is_some() != g.t_end.is_some() {
            bail!("guidance.t_start, guidance.t_end: give both ends of the interval or neither");
        }
        for (field, v) in [("t_start", g.t_start), ("t_end", g.t_end)] {
            if let Some(v) = v.filter(|v| !(0.0..=1.0).contains(v)) {
                bail!("guidance.{field}: expected a time in [0, 1], got {v}");
            }
        }
        if let Some(apg) = &g.apg {
            apg.validate("guidance.apg").map_err(anyhow::Error::msg)?;
        }
        let needs_reward = matches!(g.kind, GuidanceKind::Reward | GuidanceKind::RewardGradient);
        if needs_reward && self.reward.is_none() {
            bail!("reward: guidance.kind = {:?} needs a [reward] table", g.kind);
        }
        let models = self.models.clone().unwrap_or_default();
        let trained_reward = models.reweighted.is_some() || models.residual.is_some();
        if models.reweighted.is_some() && models.residual.is_some() {
            bail!("models.reweighted, models.residual: give one source for the reward term, not both");
        }
        if let (Some(c), GuidanceKind::Reward, true) = (self.class, g.kind, trained_reward) {
            bail!(
                "class: class = {c} with a trained reward term is not supported: the trained reweighted/residual networks are unconditional, so their term is not the conditional tilt of class {c}; leave `class` out, or use the exact mixture"
            );
        }
        if g.kind == GuidanceKind::Reward
            && !trained_reward
            && self.reward.as_ref().and_then(RewardSpec::exp_linear).is_none()
        {
            bail!(
                "reward.kind: exact reward guidance needs kind = \"exp-linear\" (the closed-form tilt), or a trained models.reweighted / models.residual"
            );
        }
        match g.kind {
            GuidanceKind::Cfg if self.class.is_none() => {
                bail!("class: guidance.kind = \"cfg\" needs the class to guide toward")
            }
            GuidanceKind::Classifier if self.class.is_none() => {
                bail!("class: guidance.kind = \"classifier\" needs the class to guide toward")
            }
            GuidanceKind::NegativeClass if g.negative_class.is_none() => {
                bail!("guidance.negative_class: guidance.kind = \"negative-class\" needs the class to steer away from")
            }
            _ => {}
        }
        if g.apg.is_some() && g.kind != GuidanceKind::Cfg {
            bail!("guidance.apg: adaptive projected guidance applies to guidance.kind = \"cfg\" only");
        }
        Ok(())
    }

    /// Everything [`SampleConfig::parse`] checks, plus what needs the data dimension and the class count.
    pub fn validate_for(&self, dim: usize, classes: usize) -> Result<()> {
        self.validate_static()?;
        let check_class = |field: &str, c: usize| -> Result<()> {
            if c >= classes {
                bail!("{field}: class {c} does not exist (the data have {classes} classes)");
            }
            Ok(())
        };
        if let Some(c) = self.class {
            check_class("class", c)?;
        }
        if let Some(c) = self.guidance.negative_class {
            check_class("guidance.negative_class", c)?;
        }
        if let Some(r) = &self.reward {
            r.validate(dim).map_err(|e| anyhow::anyhow!("reward.{e}"))?;
        }
        Ok(())
    }
}
