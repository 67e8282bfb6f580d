//! TOML configuration of `tilt sample`, parsed with serde and validated with errors that name the field.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tilt_core::{GaussianMixture, MixtureSpec, RewardSpec, Schedule};
use tilt_sampler::guidance::{Apg, CfgVariant, TrainingFreeParams, TrainingFreePreset};
use tilt_sampler::{SamplerKind, TimeGrid};

/// Largest `sampler.batch`: 10^7 chains of a few coordinates and a few hidden layers already take gigabytes.
pub const MAX_BATCH: usize = 10_000_000;
/// Largest `sampler.steps` (the time grid is held in memory; 10^6 steps are far past any discretisation bias).
pub const MAX_STEPS: usize = 1_000_000;

/// The largest guidance strength or term weight: far beyond any useful guidance (CFG is used up to about 20), and
/// small enough that a strength times a score stays finite in f32.
pub const MAX_STRENGTH: f64 = 1e4;

/// The most candidates best-of-n draws per sample.
pub const MAX_CANDIDATES: usize = 1000;

/// The most rows (chains x smoothing draws) a training-free term may evaluate at once.
pub const MAX_SMOOTHING_ROWS: usize = 1 << 24;

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
    /// The schedule of exact scores (default `linear`); a trained base brings its own, and a `[schedule]` given
    /// beside one must equal it.
    #[serde(default)]
    pub schedule: Option<Schedule>,
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
    /// An `autoencoder` run: the base draws its latent codes (trained with `data.kind = "latent"` on this run), and
    /// the samples are decoded to images (pictures, evaluator) by it.
    pub autoencoder: Option<PathBuf>,
    /// An `evaluator` run (a CNN trained on clean labelled images): image samples are measured by it
    /// (`E[1/p_eval(c|Y)]`, accuracy, Fréchet distance beside its noise floor).
    pub evaluator: Option<PathBuf>,
    /// For diffusers model folders among the models: the class label a class-conditional model was trained to
    /// treat as "no class" (classifier-free guidance's unconditional score; diffusers has no convention). tilt
    /// needs it to be the last label of the table.
    pub null_label: Option<usize>,
    /// For a diffusers model folder without a scheduler config: what the network outputs (`epsilon`,
    /// `v-prediction`, `sample`); its schedule then comes from `[schedule]`.
    pub prediction: Option<tilt_core::Prediction>,
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
    /// of the seed for chunk `i`), which bounds the sampler's memory. Default: 100,000 for points; for an image
    /// network as many images as about 2 GB of activations hold (`image_chunk_rows`: 158 of 32 × 32).
    pub batch: Option<usize>,
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
            batch: None,
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

/// The default chunk of an image network's chains: about 2 GB of activations, reckoned at 4 bytes × 3,072 values
/// per pixel and chain (a U-Net of 128 base channels keeps some 24 such maps alive, its skips included; CFG's doubled
/// batch included), at least 1.
pub fn image_chunk_rows(height: usize, width: usize) -> usize {
    (2_000_000_000 / (4 * 3072 * height.max(1) * width.max(1))).clamp(1, default_batch())
}

impl SamplerConfig {
    /// Chains per chunk: `batch` when given, else the default for points or for images of `image` (`[c, h, w]`).
    pub fn chunk_rows(&self, image: Option<[usize; 3]>) -> usize {
        match (self.batch, image) {
            (Some(b), _) => b,
            (None, Some([_, h, w])) => image_chunk_rows(h, w),
            (None, None) => default_batch(),
        }
    }
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
    /// CFG++ toward `class`: the strengths are the guided denoise's scale `l` (0 to 1 typically), the re-noising
    /// unconditional. Needs `sampler.kind` = `ddim`, `dpm-solver++-2m`, or `flow-match-euler` on `rectified-flow`.
    #[serde(rename = "cfg++")]
    CfgPlusPlus,
    /// Classifier guidance toward `class` with the exact noised classifier (base: unconditional).
    Classifier,
    /// Training-free reward-gradient (DPS-style) guidance (needs `reward`).
    RewardGradient,
    /// Steer away from `negative_class`.
    NegativeClass,
    /// Several terms (`[[guidance.terms]]`): no single exact target.
    Composite,
    /// Best-of-N (needs `reward`): the strengths are `N`, the candidates drawn from the unguided sampler per sample;
    /// the one with the highest reward is kept (N times the model evaluations of one sample).
    BestOfN,
    /// SMC steering toward `p r^w` (needs `reward`): particles from the unguided base sampler, reweighted by the
    /// reward along the chain and resampled; `w` is the tilt exponent. Options: `guidance.smc`.
    Smc,
}

/// SMC options (`guidance.smc`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SmcConfig {
    /// Resample a group when its effective sample size falls below this fraction of its particles.
    #[serde(default = "half")]
    pub ess_threshold: f64,
    /// `base` (the unguided sampler moves the particles) or `guided` (the papers' rule with the reward term at the
    /// same `w` moves them, corrected exactly toward the base).
    #[serde(default)]
    pub proposal: tilt_sampler::Proposal,
    /// The intermediate potentials: `difference`, `max` or `sum` (all end in `w log r(Y)`).
    #[serde(default)]
    pub potential: tilt_sampler::Potential,
    /// Look at the ESS (and maybe resample) before every this-many-th step.
    #[serde(default = "one")]
    pub resample_every: usize,
    /// Independent particle systems; the standard error is the spread of their estimates.
    #[serde(default = "default_smc_groups")]
    pub groups: usize,
}

impl Default for SmcConfig {
    fn default() -> Self {
        Self {
            ess_threshold: half(),
            proposal: Default::default(),
            potential: Default::default(),
            resample_every: 1,
            groups: default_smc_groups(),
        }
    }
}

fn half() -> f64 {
    0.5
}
fn one() -> usize {
    1
}
fn default_smc_groups() -> usize {
    10
}

/// How `guidance.strengths` are written: the papers' `w` (`s(x|c) + w (s(x|c) - s(x))`, 0 = no guidance), or
/// diffusers' `guidance_scale = 1 + w` (`s(x) + scale (s(x|c) - s(x))`, 1 = no guidance).
#[derive(Clone, Copy, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StrengthConvention {
    #[default]
    Papers,
    Diffusers,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuidanceConfig {
    /// The single-term form: one term of this kind, swept over `strengths`. Give `kind` or `terms`, not both.
    pub kind: Option<GuidanceKind>,
    /// The sweep axis: the strength of every term with `sweep = true` (papers' convention unless `convention`).
    pub strengths: Vec<f64>,
    #[serde(default)]
    pub convention: StrengthConvention,
    /// Optional guidance interval, single-term form: `[t_start, t_end]` in time, `[sigma_start, sigma_end]` in noise
    /// level `sigma_t / alpha_t`, or `[log_snr_start, log_snr_end]` (one pair, both ends).
    pub t_start: Option<f64>,
    pub t_end: Option<f64>,
    pub sigma_start: Option<f64>,
    pub sigma_end: Option<f64>,
    pub log_snr_start: Option<f64>,
    pub log_snr_end: Option<f64>,
    /// Guidance rescale `phi` in [0, 1].
    #[serde(default)]
    pub rescale: f64,
    /// Adaptive projected guidance (CFG only), single-term form.
    pub apg: Option<Apg>,
    /// The class to steer away from (negative-class guidance), single-term form.
    pub negative_class: Option<usize>,
    /// CFG-Zero*'s zero-init: the first this many sampler steps return a zero score.
    #[serde(default)]
    pub zero_init_steps: usize,
    /// The list form: several terms, each with its own weight and schedule, added to the base score.
    #[serde(default)]
    pub terms: Vec<TermConfig>,
    /// SMC options (`kind = "smc"`).
    pub smc: Option<SmcConfig>,
    /// Choose the strength by the improvement identity instead of listing it (`kind = "reward"` or `"cfg"` on the
    /// exact mixture): `strengths` then holds the first pilot's strength.
    pub target: Option<StrengthTarget>,
}

/// `guidance.target`: the value the sweep should reach, and how hard to look.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StrengthTarget {
    /// Reward guidance: the mean reward `E[r(Y)]` to reach.
    pub mean_reward: Option<f64>,
    /// CFG: the `E[1/p(c|Y)]` to reach (below `1/p(c)`, which `w = 0` gives).
    pub inv_class_prob: Option<f64>,
    /// Chains per pilot run (default: `samples`, at most 4000).
    pub pilot_samples: Option<usize>,
    /// The most pilot runs (each re-estimates the gain integral at the latest strength).
    #[serde(default = "default_pilots")]
    pub pilots: usize,
}

fn default_pilots() -> usize {
    4
}

/// One guidance term of `[[guidance.terms]]`. Its weight at strength `w` of the sweep is `weight * w` when
/// `sweep = true`, else `weight`; an interval (in time, noise level or log-SNR) restricts it.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "toml::Table")]
pub struct TermConfig {
    pub kind: TermKind,
    pub weight: f64,
    pub sweep: bool,
    pub interval: IntervalFields,
}

/// The interval fields of a term as written: at most one pair, both ends ([`IntervalFields::resolve`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntervalFields {
    pub t_start: Option<f64>,
    pub t_end: Option<f64>,
    pub sigma_start: Option<f64>,
    pub sigma_end: Option<f64>,
    pub log_snr_start: Option<f64>,
    pub log_snr_end: Option<f64>,
}

/// Where a term acts, in the coordinate the user wrote.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GuidanceInterval {
    /// Sampler time, in `[0, 1]`.
    Time(f64, f64),
    /// Noise level `sigma_t / alpha_t` (k-diffusion's and EDM's sigma), `>= 0`.
    Sigma(f64, f64),
    /// `ln(alpha_t^2 / sigma_t^2)`.
    LogSnr(f64, f64),
}

/// One coordinate of an interval as written: its field names, its two ends, what an end must be, the test of it,
/// and the interval it makes.
type Coordinate<'a> =
    (&'a str, &'a str, Option<f64>, Option<f64>, &'a str, fn(f64) -> bool, fn(f64, f64) -> GuidanceInterval);

impl IntervalFields {
    /// Whether no interval is given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The interval, checked; `field(name)` spells a field in errors.
    pub fn resolve(&self, field: impl Fn(&str) -> String) -> Result<Option<GuidanceInterval>> {
        let coordinates: [Coordinate; 3] = [
            (
                "t_start",
                "t_end",
                self.t_start,
                self.t_end,
                "a time in [0, 1]",
                |v| (0.0..=1.0).contains(&v),
                |a, b| GuidanceInterval::Time(a, b),
            ),
            (
                "sigma_start",
                "sigma_end",
                self.sigma_start,
                self.sigma_end,
                "a noise level sigma >= 0 (inf allowed)",
                |v| v >= 0.0,
                |a, b| GuidanceInterval::Sigma(a, b),
            ),
            (
                "log_snr_start",
                "log_snr_end",
                self.log_snr_start,
                self.log_snr_end,
                "a log-SNR (any number, inf allowed; not NaN)",
                |v| !v.is_nan(),
                |a, b| GuidanceInterval::LogSnr(a, b),
            ),
        ];
        let given: Vec<_> = coordinates.iter().filter(|c| c.2.is_some() || c.3.is_some()).collect();
        if let [first, second, ..] = given[..] {
            bail!(
                "{}, {}: give the interval in one coordinate (time, sigma or log-SNR), not two",
                field(first.0),
                field(second.0)
            );
        }
        let Some(&&(start_name, end_name, start, end, expected, valid, make)) = given.first() else { return Ok(None) };
        let (Some(start), Some(end)) = (start, end) else {
            bail!("{}, {}: give both ends of the interval or neither", field(start_name), field(end_name));
        };
        for (name, v) in [(start_name, start), (end_name, end)] {
            if !valid(v) {
                bail!("{}: expected {expected}, got {v}", field(name));
            }
        }
        Ok(Some(make(start, end)))
    }
}

impl GuidanceInterval {
    /// The weight schedule of weight `w` on this interval, in the time of `schedule`.
    pub fn weight_schedule(&self, w: f64, schedule: &tilt_core::Schedule) -> tilt_sampler::WeightSchedule {
        use tilt_sampler::WeightSchedule;
        match *self {
            GuidanceInterval::Time(t_start, t_end) => WeightSchedule::Interval { w, t_start, t_end },
            GuidanceInterval::Sigma(a, b) => WeightSchedule::sigma_interval(w, a, b, schedule),
            GuidanceInterval::LogSnr(a, b) => WeightSchedule::log_snr_interval(w, a, b, schedule),
        }
    }
}

impl TryFrom<toml::Table> for TermConfig {
    type Error = String;

    /// The common fields first, then the rest as the `kind`'s own table (which rejects unknown fields): serde's
    /// `flatten` cannot do this with `deny_unknown_fields`.
    fn try_from(mut table: toml::Table) -> Result<Self, String> {
        let mut number = |field: &str| -> Result<Option<f64>, String> {
            match table.remove(field) {
                None => Ok(None),
                Some(toml::Value::Float(v)) => Ok(Some(v)),
                Some(toml::Value::Integer(v)) => Ok(Some(v as f64)),
                Some(other) => Err(format!("{field}: expected a number, got {other}")),
            }
        };
        let weight = number("weight")?;
        let interval = IntervalFields {
            t_start: number("t_start")?,
            t_end: number("t_end")?,
            sigma_start: number("sigma_start")?,
            sigma_end: number("sigma_end")?,
            log_snr_start: number("log_snr_start")?,
            log_snr_end: number("log_snr_end")?,
        };
        let sweep = match table.remove("sweep") {
            None => false,
            Some(toml::Value::Boolean(b)) => b,
            Some(other) => return Err(format!("sweep: expected true or false, got {other}")),
        };
        let kind =
            TermKind::deserialize(toml::Value::Table(table)).map_err(|e| e.to_string().trim_end().to_string())?;
        Ok(Self { kind, weight: weight.unwrap_or(1.0), sweep, interval })
    }
}

/// What a term computes.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TermKind {
    /// Reward guidance: the exact reweighted mixture, or `models.reweighted` / `models.residual`.
    Reward,
    /// Classifier-free guidance toward `class`, with a variant (`plain`, `zero-star`, `tangential`,
    /// `magnitude-aware` with `alpha`) and optional APG (`apg`, from `apg_start_step` on: APG-Mix).
    Cfg {
        #[serde(default)]
        variant: Option<CfgVariant>,
        apg: Option<Apg>,
        #[serde(default)]
        apg_start_step: usize,
    },
    /// CFG++ toward `class`; its weight is the guided denoise's scale `l`.
    #[serde(rename = "cfg++")]
    CfgPlusPlus,
    /// Classifier guidance toward `class` (exact noised classifier or `models.classifier`).
    Classifier,
    /// The training-free family: a named `preset` (reward-gradient, dps, freedom, mpgd, ugd, lgd), or `params`.
    TrainingFree { preset: Option<TrainingFreePreset>, params: Option<TrainingFreeParams> },
    /// Steer away from `class`.
    NegativeClass { class: usize },
    /// Autoguidance with the weaker network `model` (a `score-net` run of the same task).
    Autoguidance { model: PathBuf },
    /// Frequency-decoupled guidance toward `class` (image models): per Laplacian-pyramid level, finest first, a factor
    /// on the term's weight (`level_weights`) and on the difference's part parallel to the conditional level
    /// (`parallel_weights`, default all 1).
    Fdg { level_weights: Vec<f64>, parallel_weights: Option<Vec<f64>> },
    /// Perturbed-attention guidance: `s - s` with the identity attention map on `layers` (diffusers' names, by
    /// prefix; default `["mid"]`).
    Pag { layers: Option<Vec<String>> },
    /// Smoothed-energy guidance: the query blurred by a Gaussian of `sigma` pixels (inf: its mean) on `layers`.
    Seg { sigma: f64, layers: Option<Vec<String>> },
    /// Skip-layer guidance: `layers` skipped.
    Slg { layers: Option<Vec<String>> },
}

impl TermKind {
    /// The attention perturbation of a PAG, SEG or SLG term, and the layer patterns it applies to.
    pub fn attention_perturbation(&self) -> Option<(tilt_core::AttentionPerturbation, Vec<String>)> {
        use tilt_core::AttentionPerturbation as P;
        let (kind, layers) = match self {
            TermKind::Pag { layers } => (P::Identity, layers),
            TermKind::Seg { sigma, layers } => (P::BlurredQuery { sigma: *sigma }, layers),
            TermKind::Slg { layers } => (P::Skip, layers),
            _ => return None,
        };
        Some((kind, layers.clone().unwrap_or_else(|| vec!["mid".to_string()])))
    }
}

impl TermKind {
    /// The single-term kind this term corresponds to (for messages and exact targets).
    pub fn guidance_kind(&self) -> GuidanceKind {
        match self {
            TermKind::Reward => GuidanceKind::Reward,
            TermKind::Cfg { .. } => GuidanceKind::Cfg,
            TermKind::CfgPlusPlus => GuidanceKind::CfgPlusPlus,
            TermKind::Classifier => GuidanceKind::Classifier,
            TermKind::TrainingFree { .. } => GuidanceKind::RewardGradient,
            TermKind::NegativeClass { .. } => GuidanceKind::NegativeClass,
            TermKind::Autoguidance { .. }
            | TermKind::Fdg { .. }
            | TermKind::Pag { .. }
            | TermKind::Seg { .. }
            | TermKind::Slg { .. } => GuidanceKind::Composite,
        }
    }
}

impl GuidanceConfig {
    /// The kind of the sweep: the single-term kind, the kind of a one-term list (a training-free term with the
    /// plain reward-gradient parameters is `reward-gradient`), or `composite`.
    pub fn kind(&self) -> GuidanceKind {
        match (self.kind, self.terms.as_slice()) {
            (Some(k), _) => k,
            (None, [t]) => match &t.kind {
                TermKind::TrainingFree { preset: None | Some(TrainingFreePreset::RewardGradient), params: None }
                    if t.sweep && t.weight == 1.0 && t.interval.is_empty() =>
                {
                    GuidanceKind::RewardGradient
                }
                TermKind::Reward
                | TermKind::Cfg { variant: None | Some(CfgVariant::Plain), apg: None, .. }
                | TermKind::CfgPlusPlus
                | TermKind::Classifier
                | TermKind::NegativeClass { .. }
                    if t.sweep && t.weight == 1.0 && t.interval.is_empty() =>
                {
                    t.kind.guidance_kind()
                }
                _ => GuidanceKind::Composite,
            },
            (None, []) => GuidanceKind::None,
            (None, _) => GuidanceKind::Composite,
        }
    }

    /// The terms of the sweep: the list form as given, or the single-term form as a one-term list.
    pub fn term_list(&self) -> Vec<TermConfig> {
        if !self.terms.is_empty() {
            return self.terms.clone();
        }
        let kind = match self.kind {
            // SMC's guided proposal is the papers' rule: the reward term at the tilt exponent.
            Some(GuidanceKind::Smc) if self.smc_config().proposal == tilt_sampler::Proposal::Guided => TermKind::Reward,
            None | Some(GuidanceKind::None | GuidanceKind::Composite | GuidanceKind::Smc | GuidanceKind::BestOfN) => {
                return Vec::new();
            }
            Some(GuidanceKind::Reward) => TermKind::Reward,
            Some(GuidanceKind::Cfg) => TermKind::Cfg { variant: None, apg: self.apg.clone(), apg_start_step: 0 },
            Some(GuidanceKind::CfgPlusPlus) => TermKind::CfgPlusPlus,
            Some(GuidanceKind::Classifier) => TermKind::Classifier,
            Some(GuidanceKind::RewardGradient) => TermKind::TrainingFree { preset: None, params: None },
            Some(GuidanceKind::NegativeClass) => {
                TermKind::NegativeClass { class: self.negative_class.expect("validated: negative_class given") }
            }
        };
        vec![TermConfig { kind, weight: 1.0, sweep: true, interval: self.interval_fields() }]
    }

    /// The single-term form's interval fields.
    pub fn interval_fields(&self) -> IntervalFields {
        IntervalFields {
            t_start: self.t_start,
            t_end: self.t_end,
            sigma_start: self.sigma_start,
            sigma_end: self.sigma_end,
            log_snr_start: self.log_snr_start,
            log_snr_end: self.log_snr_end,
        }
    }

    /// `guidance.smc` with its defaults.
    pub fn smc_config(&self) -> SmcConfig {
        self.smc.clone().unwrap_or_default()
    }

    /// The papers' `w` of a strength as written.
    pub fn papers_w(&self, strength: f64) -> f64 {
        match self.convention {
            StrengthConvention::Papers => strength,
            StrengthConvention::Diffusers => strength - 1.0,
        }
    }

    /// Whether any term is of this kind.
    pub fn has(&self, pred: impl Fn(&TermKind) -> bool) -> bool {
        self.term_list().iter().any(|t| pred(&t.kind))
    }
}

/// The config spelling of an enum value (`reward-gradient`, `exponential-integrator`).
pub fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|j| j.as_str().map(str::to_owned)).unwrap_or_default()
}

impl SampleConfig {
    /// Read and validate a config file; every error names the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = tilt_train::config::read_config(path)?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parse and check everything that does not need the models (see [`SampleConfig::validate_for`]).
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: SampleConfig = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}", tilt_train::toml_error::explain(text, e.to_string().trim_end())))?;
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

    /// The schedule of exact scores: `[schedule]`, else `linear`.
    pub fn schedule(&self) -> Schedule {
        self.schedule.unwrap_or_default()
    }

    /// The mixture of the config, built (validated at parse time).
    pub fn built_mixture(&self) -> Option<GaussianMixture> {
        self.mixture.as_ref().map(|m| m.build().expect("validated at parse time"))
    }

    fn validate_static(&self) -> Result<()> {
        if self.samples < 2 {
            bail!("samples: expected at least 2, got {}", self.samples);
        }
        self.schedule().validate().map_err(anyhow::Error::msg)?;
        let s = &self.sampler;
        if s.steps == 0 {
            bail!("sampler.steps: expected at least 1");
        }
        if s.steps > MAX_STEPS {
            bail!("sampler.steps: expected at most {MAX_STEPS}, got {}", s.steps);
        }
        if let Some(b) = s.batch
            && !(1..=MAX_BATCH).contains(&b)
        {
            bail!("sampler.batch: expected 1 to {MAX_BATCH} chains at once, got {b}");
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
        s.grid.try_times(s.steps, s.t_max, s.t_min, self.schedule()).map_err(|e| anyhow::anyhow!("sampler.{e}"))?;
        let g = &self.guidance;
        if g.strengths.is_empty() {
            bail!("guidance.strengths: expected at least one strength");
        }
        if let Some(w) = g.strengths.iter().find(|w| !(w.is_finite() && w.abs() <= MAX_STRENGTH)) {
            bail!("guidance.strengths: expected values in [-{MAX_STRENGTH}, {MAX_STRENGTH}], got {w:?}");
        }
        for (i, w) in g.strengths.iter().enumerate() {
            // -0.0 == 0.0: one strength, one file name.
            if g.strengths[..i].contains(w) {
                bail!("guidance.strengths: {w} is listed twice; each strength is sampled once into its own files");
            }
        }
        if !(0.0..=1.0).contains(&g.rescale) {
            bail!("guidance.rescale: expected a value in [0, 1], got {}", g.rescale);
        }
        let list_form = !g.terms.is_empty();
        match (g.kind, list_form) {
            (Some(_), true) => {
                bail!(
                    "guidance.kind, guidance.terms: give one term (kind = ...) or a list ([[guidance.terms]]), not both"
                )
            }
            (None, false) => {
                bail!("guidance.kind: missing; give kind = \"cfg\" (or another kind), or a list of [[guidance.terms]]")
            }
            _ => {}
        }
        if list_form {
            for (field, given) in [
                ("t_start", g.t_start.is_some()),
                ("t_end", g.t_end.is_some()),
                ("sigma_start", g.sigma_start.is_some()),
                ("sigma_end", g.sigma_end.is_some()),
                ("log_snr_start", g.log_snr_start.is_some()),
                ("log_snr_end", g.log_snr_end.is_some()),
                ("apg", g.apg.is_some()),
                ("negative_class", g.negative_class.is_some()),
            ] {
                if given {
                    bail!(
                        "guidance.{field}: belongs to the single-term form; with [[guidance.terms]] give it inside the term"
                    );
                }
            }
            if !g.terms.iter().any(|t| t.sweep) && g.strengths.len() > 1 {
                bail!(
                    "guidance.terms: no term has sweep = true, so guidance.strengths would change nothing; mark the term(s) the strengths scale"
                );
            }
        }
        let kind = g.kind();
        if g.smc.is_some() && kind != GuidanceKind::Smc {
            bail!("guidance.smc: SMC options apply to guidance.kind = \"smc\" only");
        }
        if kind == GuidanceKind::BestOfN {
            if self.reward.is_none() {
                bail!("reward: guidance.kind = \"best-of-n\" needs a [reward] table (it ranks the candidates)");
            }
            if let Some(n) =
                g.strengths.iter().find(|n| !(n.fract() == 0.0 && (1.0..=MAX_CANDIDATES as f64).contains(*n)))
            {
                bail!(
                    "guidance.strengths: best-of-n's strengths are candidate counts N, whole numbers from 1 to {MAX_CANDIDATES}; got {n}"
                );
            }
        }
        if kind == GuidanceKind::Smc {
            if self.reward.is_none() {
                bail!("reward: guidance.kind = \"smc\" needs a [reward] table (its potentials)");
            }
            let k = s.kind;
            if !(k.is_stochastic() && !k.is_multistep() && k.evals_per_step() == 1)
                || s.recurrence != 1
                || !s.denoise_final
            {
                bail!(
                    "sampler.kind: SMC needs a one-step stochastic sampler with one evaluation per step (sde-dpm-solver-1, ddpm, euler-maruyama, exponential-integrator), recurrence = 1 and denoise_final = true; got {}",
                    kebab(&k)
                );
            }
            let smc = g.smc_config();
            if !(0.0..=1.0).contains(&smc.ess_threshold) {
                bail!("guidance.smc.ess_threshold: expected a fraction in [0, 1], got {}", smc.ess_threshold);
            }
            if !(1..=s.steps).contains(&smc.resample_every) {
                bail!(
                    "guidance.smc.resample_every: expected 1 to sampler.steps = {} steps, got {}",
                    s.steps,
                    smc.resample_every
                );
            }
            if smc.groups < 2 || smc.groups > self.samples / 2 {
                bail!(
                    "guidance.smc.groups: expected 2 to samples / 2 = {} independent groups (the standard error is their spread; each needs 2 particles), got {}",
                    self.samples / 2,
                    smc.groups
                );
            }
            if self.samples > s.chunk_rows(None) {
                bail!(
                    "samples: SMC runs all its particles at once, at most sampler.batch = {} (raise sampler.batch or lower samples), got {}",
                    s.chunk_rows(None),
                    self.samples
                );
            }
        }
        if let Some(target) = &g.target {
            let has_models = self.models.as_ref().is_some_and(|m| {
                m.base.is_some() || m.reweighted.is_some() || m.residual.is_some() || m.classifier.is_some()
            });
            match (target.mean_reward, target.inv_class_prob, kind) {
                (Some(_), Some(_), _) => {
                    bail!("guidance.target: give mean_reward (reward guidance) or inv_class_prob (CFG), not both")
                }
                (None, None, _) => bail!("guidance.target: give mean_reward = R or inv_class_prob = Q"),
                (Some(_), None, GuidanceKind::Reward) | (None, Some(_), GuidanceKind::Cfg) => {}
                (Some(_), None, _) => bail!("guidance.target.mean_reward: needs guidance.kind = \"reward\""),
                (None, Some(_), _) => bail!("guidance.target.inv_class_prob: needs guidance.kind = \"cfg\""),
            }
            if has_models || self.mixture.is_none() || !g.interval_fields().is_empty() || g.rescale > 0.0 {
                bail!(
                    "guidance.target: the gain integral needs h_t = E[r(X_0) | X_t] in closed form: exact mixture scores ([mixture], no [models]), a single term, no interval or rescale"
                );
            }
            let quantity = if target.mean_reward.is_some() { "mean_reward" } else { "inv_class_prob" };
            if let Some(v) = target.mean_reward.or(target.inv_class_prob).filter(|v| !(v.is_finite() && *v > 0.0)) {
                bail!("guidance.target.{quantity}: expected a positive finite value, got {v:?}");
            }
            if g.strengths.len() != 1 || g.strengths[0] == 0.0 {
                bail!(
                    "guidance.strengths: with guidance.target, give one nonzero strength, the first pilot's (the gain integral is measured there); got {:?}",
                    g.strengths
                );
            }
            if !(1..=20).contains(&target.pilots) {
                bail!("guidance.target.pilots: expected 1 to 20 pilot runs, got {}", target.pilots);
            }
            if let Some(p) = target.pilot_samples.filter(|p| !(2..=MAX_BATCH).contains(p)) {
                bail!("guidance.target.pilot_samples: expected 2 to {MAX_BATCH} chains, got {p}");
            }
        }
        if g.rescale > 0.0 && !g.has(|k| matches!(k, TermKind::Cfg { .. })) {
            bail!(
                "guidance.rescale: applies to guidance.kind = \"cfg\" only (it changes the guided score's scale, which would break e.g. the exactness of reward guidance at w = 1)"
            );
        }
        if g.zero_init_steps > 0 && !g.has(|k| matches!(k, TermKind::Cfg { .. })) {
            bail!("guidance.zero_init_steps: CFG-Zero*'s zero-init applies with a cfg term only");
        }
        if g.zero_init_steps > 0 && g.zero_init_steps >= s.steps {
            bail!(
                "guidance.zero_init_steps: expected fewer than sampler.steps = {}, got {}",
                s.steps,
                g.zero_init_steps
            );
        }
        if kind == GuidanceKind::NegativeClass && g.negative_class.is_none() && !list_form {
            bail!("guidance.negative_class: guidance.kind = \"negative-class\" needs the class to steer away from");
        }
        let models = self.models.clone().unwrap_or_default();
        let trained_reward = models.reweighted.is_some() || models.residual.is_some();
        if models.reweighted.is_some() && models.residual.is_some() {
            bail!("models.reweighted, models.residual: give one source for the reward term, not both");
        }
        for (i, t) in g.term_list().iter().enumerate() {
            // Names relative to the form the user wrote.
            let field = |name: &str| {
                if list_form { format!("guidance.terms[{i}].{name}") } else { format!("guidance.{name}") }
            };
            let what = if list_form {
                format!("guidance.terms[{i}] (kind = \"{}\")", crate::config::kebab(&t.kind.guidance_kind()))
            } else {
                format!("guidance.kind = {:?}", crate::config::kebab(&kind))
            };
            if !(t.weight.is_finite() && t.weight.abs() <= MAX_STRENGTH) {
                bail!("{}: expected a weight in [-{MAX_STRENGTH}, {MAX_STRENGTH}], got {}", field("weight"), t.weight);
            }
            t.interval.resolve(field)?;
            let needs_class = |what: &str| -> Result<()> {
                if self.class.is_none() {
                    bail!("class: {what} needs the class to guide toward");
                }
                Ok(())
            };
            match &t.kind {
                TermKind::Reward => {
                    if self.reward.is_none() {
                        bail!("reward: {what} needs a [reward] table");
                    }
                    if let (Some(c), true) = (self.class, trained_reward) {
                        bail!(
                            "class: class = {c} with a trained reward term is not supported: the trained reweighted/residual networks are unconditional, so their term is not the conditional tilt of class {c}; leave `class` out, or use the exact mixture"
                        );
                    }
                    if !trained_reward && self.reward.as_ref().and_then(RewardSpec::exp_linear).is_none() {
                        bail!(
                            "reward.kind: exact reward guidance needs kind = \"exp-linear\" (the closed-form tilt), or a trained models.reweighted / models.residual"
                        );
                    }
                }
                TermKind::Cfg { variant, apg, apg_start_step } => {
                    needs_class(&what)?;
                    if let Some(apg) = apg {
                        apg.validate(&field("apg")).map_err(anyhow::Error::msg)?;
                    }
                    // A start step the sweep never reaches, or one without APG, would silently leave plain CFG.
                    if *apg_start_step > 0 && apg.is_none() {
                        bail!("{}: has no effect without {}", field("apg_start_step"), field("apg"));
                    }
                    if *apg_start_step >= s.steps.max(1) && *apg_start_step > 0 {
                        bail!(
                            "{}: expected a step below sampler.steps = {} (APG would never apply), got {apg_start_step}",
                            field("apg_start_step"),
                            s.steps
                        );
                    }
                    if let Some(CfgVariant::MagnitudeAware { alpha }) = variant
                        && !(alpha.is_finite() && *alpha >= 0.0)
                    {
                        bail!("{}: expected a finite alpha >= 0, got {alpha}", field("variant.alpha"));
                    }
                }
                TermKind::Classifier => needs_class(&what)?,
                TermKind::Fdg { .. } => needs_class(&what)?,
                TermKind::CfgPlusPlus => {
                    needs_class(&what)?;
                    let ddim_like = match s.kind {
                        SamplerKind::Ddim | SamplerKind::DpmSolverPp2M => true,
                        SamplerKind::FlowMatchEuler => matches!(self.schedule(), Schedule::RectifiedFlow { .. }),
                        _ => false,
                    };
                    if !ddim_like || s.recurrence != 1 {
                        bail!(
                            "sampler.kind: {what} re-noises with the unconditional prediction inside a DDIM-type step: use ddim, dpm-solver++-2m, or flow-match-euler on a rectified-flow schedule, with recurrence = 1; got {}",
                            kebab(&s.kind)
                        );
                    }
                }
                TermKind::TrainingFree { preset, params } => {
                    if self.reward.is_none() {
                        bail!("reward: {what} needs a [reward] table");
                    }
                    if preset.is_some() && params.is_some() {
                        bail!("{}, {}: give a preset or explicit params, not both", field("preset"), field("params"));
                    }
                    if let Some(p) = params {
                        p.validate(&field("params")).map_err(anyhow::Error::msg)?;
                        // Each smoothing draw copies the batch of chains: bound the rows one step holds.
                        let rows = p.smoothing_samples.saturating_mul(s.chunk_rows(None));
                        if rows > MAX_SMOOTHING_ROWS {
                            bail!(
                                "{}: {} draws x sampler.batch = {} chains is {rows} rows per step, more than \
                                 {MAX_SMOOTHING_ROWS}; lower one of them",
                                field("params.smoothing_samples"),
                                p.smoothing_samples,
                                s.chunk_rows(None)
                            );
                        }
                    }
                }
                TermKind::Seg { sigma, .. } if sigma.is_nan() || *sigma <= 0.0 => {
                    bail!(
                        "{}: expected a blur of sigma > 0 pixels (inf: the query's mean), got {sigma}",
                        field("sigma")
                    );
                }
                TermKind::NegativeClass { .. }
                | TermKind::Autoguidance { .. }
                | TermKind::Pag { .. }
                | TermKind::Seg { .. }
                | TermKind::Slg { .. } => {}
            }
        }
        if g.apg.is_some() && kind != GuidanceKind::Cfg {
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
        for (i, t) in self.guidance.terms.iter().enumerate() {
            if let TermKind::NegativeClass { class } = t.kind {
                check_class(&format!("guidance.terms[{i}].class"), class)?;
            }
        }
        if let Some(r) = &self.reward {
            r.validate(dim).map_err(|e| anyhow::anyhow!("reward.{e}"))?;
        }
        Ok(())
    }
}
