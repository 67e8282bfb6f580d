//! diffusers' `config.json` of a `UNet2DModel` and the noise schedule of its `scheduler_config.json`, read with
//! diffusers' defaults and checked field by field: a value tilt does not implement is refused naming the field.

use serde::Deserialize;
use serde_json::{Map, Value};
use tilt_core::Prediction;
use tilt_core::schedule::{BetaSchedule, Schedule};

/// The down and up block types tilt builds: `DownBlock2D` / `UpBlock2D`, or with self-attention after each residual
/// block, `AttnDownBlock2D` / `AttnUpBlock2D`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockType {
    /// Residual blocks only.
    Plain,
    /// Each residual block followed by self-attention.
    Attention,
}

impl BlockType {
    /// diffusers' class name of this block on the `side` ("Down" or "Up") of the network.
    fn name(self, side: &str) -> String {
        match self {
            BlockType::Plain => format!("{side}Block2D"),
            BlockType::Attention => format!("Attn{side}Block2D"),
        }
    }

    /// The blocks of `field` (`side` "Down" or "Up"), each entry refused by index when tilt does not build it.
    fn parse_all(field: &str, side: &str, names: &[String]) -> Result<Vec<Self>, String> {
        (names.iter().enumerate())
            .map(|(i, b)| {
                [BlockType::Plain, BlockType::Attention].into_iter().find(|t| t.name(side) == *b).ok_or_else(|| {
                    format!(
                        "{field}[{i}]: tilt implements \"{}\" and \"{}\", got \"{b}\"",
                        BlockType::Plain.name(side),
                        BlockType::Attention.name(side)
                    )
                })
            })
            .collect()
    }
}

/// How a residual block takes the time embedding (`resnet_time_scale_shift`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimeScaleShift {
    /// `"default"`: added after the first convolution.
    #[default]
    Add,
    /// `"scale_shift"`: `norm2(h) * (1 + scale) + shift` (ADM).
    ScaleShift,
}

/// A `UNet2DModel` configuration, every field checked. Built by [`UNet2DConfig::from_json`].
#[derive(Clone, Debug, PartialEq)]
pub struct UNet2DConfig {
    /// Image height and width (`sample_size`).
    pub sample_size: [usize; 2],
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (twice the input for a learned-variance model).
    pub out_channels: usize,
    /// `2x - 1` before the network (a model of images in `[0, 1]`).
    pub center_input_sample: bool,
    /// `[cos, sin]` rather than `[sin, cos]` in the time embedding.
    pub flip_sin_to_cos: bool,
    /// The divisor of the embedding's frequency exponent is `half - freq_shift`.
    pub freq_shift: f64,
    /// Width of the time embedding MLP (`4 * block_out_channels[0]` unless set).
    pub time_embed_dim: usize,
    /// Channels of each level.
    pub block_out_channels: Vec<usize>,
    /// Down block of each level.
    pub down_block_types: Vec<BlockType>,
    /// Up block of each level (from the lowest resolution up).
    pub up_block_types: Vec<BlockType>,
    /// Residual blocks per down block (one more per up block).
    pub layers_per_block: usize,
    /// Output divisor of the middle block's residual blocks and attention.
    pub mid_block_scale_factor: f64,
    /// 1: symmetric padding of the stride-2 convolution; 0: TF's asymmetric `(0, 1, 0, 1)`.
    pub downsample_padding: usize,
    /// Width of an attention head (`None`: one head over all channels).
    pub attention_head_dim: Option<usize>,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// GroupNorm groups of the middle block's attention (`None`: as diffusers decides, see `mid_attention_groups`).
    pub attn_norm_num_groups: Option<usize>,
    /// GroupNorm epsilon.
    pub norm_eps: f64,
    /// How residual blocks take the time embedding.
    pub resnet_time_scale_shift: TimeScaleShift,
    /// Self-attention in the middle block.
    pub add_attention: bool,
    /// Size of the class embedding table (`None`: an unconditional model).
    pub num_class_embeds: Option<usize>,
}

/// The fields of `config.json` and their defaults, as diffusers 0.42's `UNet2DModel.__init__` declares them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUNet2D {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    #[serde(default)]
    sample_size: Option<Value>,
    #[serde(default = "three")]
    in_channels: usize,
    #[serde(default = "three")]
    out_channels: usize,
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default = "positional")]
    time_embedding_type: String,
    #[serde(default)]
    time_embedding_dim: Option<usize>,
    #[serde(default)]
    freq_shift: f64,
    #[serde(default = "yes")]
    flip_sin_to_cos: bool,
    #[serde(default = "default_down")]
    down_block_types: Vec<String>,
    #[serde(default = "default_mid")]
    mid_block_type: Option<String>,
    #[serde(default = "default_up")]
    up_block_types: Vec<String>,
    #[serde(default = "default_channels")]
    block_out_channels: Vec<usize>,
    #[serde(default = "two")]
    layers_per_block: usize,
    #[serde(default = "one")]
    mid_block_scale_factor: f64,
    #[serde(default = "one_usize")]
    downsample_padding: usize,
    #[serde(default = "conv")]
    downsample_type: String,
    #[serde(default = "conv")]
    upsample_type: String,
    #[serde(default)]
    #[allow(dead_code)] // training only
    dropout: f64,
    #[serde(default = "silu")]
    act_fn: String,
    #[serde(default = "eight")]
    attention_head_dim: Option<usize>,
    #[serde(default = "thirty_two")]
    norm_num_groups: Option<usize>,
    #[serde(default)]
    attn_norm_num_groups: Option<usize>,
    #[serde(default = "eps")]
    norm_eps: f64,
    #[serde(default = "default_shift")]
    resnet_time_scale_shift: String,
    #[serde(default = "yes")]
    add_attention: bool,
    #[serde(default)]
    class_embed_type: Option<String>,
    #[serde(default)]
    num_class_embeds: Option<usize>,
    #[serde(default)]
    #[allow(dead_code)] // only used by `time_embedding_type = "learned"`, which is refused
    num_train_timesteps: Option<usize>,
}

fn three() -> usize {
    3
}
fn two() -> usize {
    2
}
fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn eight() -> Option<usize> {
    Some(8)
}
fn thirty_two() -> Option<usize> {
    Some(32)
}
fn eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn positional() -> String {
    "positional".into()
}
fn conv() -> String {
    "conv".into()
}
fn silu() -> String {
    "silu".into()
}
fn default_shift() -> String {
    "default".into()
}
fn default_mid() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn default_channels() -> Vec<usize> {
    vec![224, 448, 672, 896]
}
fn default_down() -> Vec<String> {
    ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"].map(String::from).to_vec()
}
fn default_up() -> Vec<String> {
    ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"].map(String::from).to_vec()
}

/// Largest channel count, image side, class count or layer count accepted (far above any published model, far
/// below sizes whose products overflow).
const MAX_SIZE: usize = 1 << 16;

impl UNet2DConfig {
    /// Parses and checks `config.json`; every error names the field and what was expected.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let mut map: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object of config fields: {e}"))?;
        // diffusers' bookkeeping (`_diffusers_version`, `_name_or_path`, ...) says nothing about the network.
        map.retain(|k, _| !k.starts_with('_') || k == "_class_name");
        let raw: RawUNet2D = serde_json::from_value(Value::Object(map)).map_err(|e| {
            let e = e.to_string();
            if e.starts_with("unknown field") {
                format!("{e}: tilt reads the UNet2DModel fields of diffusers 0.42 and refuses one it does not know")
            } else {
                e
            }
        })?;
        raw.check()
    }

    /// Channels of GroupNorm in the middle block's attention, or `None` for no GroupNorm there (diffusers drops it
    /// for `scale_shift` models unless `attn_norm_num_groups` is set).
    pub fn mid_attention_groups(&self) -> Option<usize> {
        self.attn_norm_num_groups.or(match self.resnet_time_scale_shift {
            TimeScaleShift::Add => Some(self.norm_num_groups),
            TimeScaleShift::ScaleShift => None,
        })
    }

    /// Number of attention heads over `channels` channels.
    pub fn heads(&self, channels: usize) -> usize {
        self.attention_head_dim.map_or(1, |d| channels / d)
    }

    /// The `config.json` diffusers 0.42 writes for this model (read back by [`UNet2DConfig::from_json`] and by
    /// `UNet2DModel.from_pretrained`).
    pub fn to_json(&self) -> Value {
        let down: Vec<String> = self.down_block_types.iter().map(|b| b.name("Down")).collect();
        let up: Vec<String> = self.up_block_types.iter().map(|b| b.name("Up")).collect();
        let [h, w] = self.sample_size;
        serde_json::json!({
            "_class_name": "UNet2DModel",
            "_diffusers_version": "0.42.1",
            "act_fn": "silu",
            "add_attention": self.add_attention,
            "attention_head_dim": self.attention_head_dim,
            "attn_norm_num_groups": self.attn_norm_num_groups,
            "block_out_channels": self.block_out_channels,
            "center_input_sample": self.center_input_sample,
            "class_embed_type": null,
            "down_block_types": down,
            "downsample_padding": self.downsample_padding,
            "downsample_type": "conv",
            "dropout": 0.0,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "in_channels": self.in_channels,
            "layers_per_block": self.layers_per_block,
            "mid_block_scale_factor": self.mid_block_scale_factor,
            "mid_block_type": "UNetMidBlock2D",
            "norm_eps": self.norm_eps,
            "norm_num_groups": self.norm_num_groups,
            "num_class_embeds": self.num_class_embeds,
            "num_train_timesteps": null,
            "out_channels": self.out_channels,
            "resnet_time_scale_shift": match self.resnet_time_scale_shift {
                TimeScaleShift::Add => "default",
                TimeScaleShift::ScaleShift => "scale_shift",
            },
            "sample_size": if h == w { serde_json::json!(h) } else { serde_json::json!([h, w]) },
            "time_embedding_dim": self.time_embed_dim,
            "time_embedding_type": "positional",
            "up_block_types": up,
            "upsample_type": "conv",
        })
    }

    /// Whether the model predicts a variance too (`out_channels = 2 * in_channels`): tilt reads the first half.
    pub fn learned_variance(&self) -> bool {
        self.out_channels == 2 * self.in_channels
    }
}

fn positive(field: &str, v: usize) -> Result<usize, String> {
    if v == 0 || v > MAX_SIZE {
        return Err(format!("{field}: expected 1 to {MAX_SIZE}, got {v}"));
    }
    Ok(v)
}

impl RawUNet2D {
    fn check(self) -> Result<UNet2DConfig, String> {
        match self.class_name.as_deref() {
            Some("UNet2DModel") | None => {}
            Some(other) => {
                return Err(format!(
                    "_class_name: tilt loads \"UNet2DModel\", got \"{other}\" (UNet2DConditionModel and transformer \
                     models need cross-attention, which tilt does not implement)"
                ));
            }
        }
        let sample_size = match &self.sample_size {
            None | Some(Value::Null) => return Err("sample_size: expected the image size, got none".into()),
            Some(Value::Number(n)) => {
                let s = n.as_u64().ok_or(format!("sample_size: expected a positive integer, got {n}"))? as usize;
                [s, s]
            }
            Some(Value::Array(a)) if a.len() == 2 => {
                let mut hw = [0; 2];
                for (slot, v) in hw.iter_mut().zip(a) {
                    *slot = v.as_u64().ok_or(format!("sample_size: expected [height, width], got {v}"))? as usize;
                }
                hw
            }
            Some(v) => return Err(format!("sample_size: expected an integer or [height, width], got {v}")),
        };
        for s in sample_size {
            positive("sample_size", s)?;
        }
        let in_channels = positive("in_channels", self.in_channels)?;
        let out_channels = positive("out_channels", self.out_channels)?;
        if out_channels != in_channels && out_channels != 2 * in_channels {
            return Err(format!(
                "out_channels: expected in_channels ({in_channels}) or twice it (a learned variance), got \
                 {out_channels}: tilt reads the output as a prediction of the input"
            ));
        }
        if self.time_embedding_type != "positional" {
            return Err(format!(
                "time_embedding_type: tilt implements \"positional\" (sinusoidal), got \"{}\"",
                self.time_embedding_type
            ));
        }
        if self.act_fn != "silu" {
            return Err(format!("act_fn: tilt implements \"silu\", got \"{}\"", self.act_fn));
        }
        for (field, v) in [("downsample_type", &self.downsample_type), ("upsample_type", &self.upsample_type)] {
            if v != "conv" {
                return Err(format!("{field}: tilt implements \"conv\", got \"{v}\""));
            }
        }
        if let Some(t) = &self.class_embed_type {
            return Err(format!(
                "class_embed_type: tilt implements the default (null: a table of num_class_embeds), got \"{t}\""
            ));
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2D") => {}
            other => return Err(format!("mid_block_type: tilt implements \"UNetMidBlock2D\", got {other:?}")),
        }
        let levels = self.block_out_channels.len();
        if levels == 0 || levels > 16 {
            return Err(format!("block_out_channels: expected 1 to 16 levels, got {levels}"));
        }
        for &c in &self.block_out_channels {
            positive("block_out_channels", c)?;
        }
        for (field, n) in
            [("down_block_types", self.down_block_types.len()), ("up_block_types", self.up_block_types.len())]
        {
            if n != levels {
                return Err(format!("{field}: expected one block per level of block_out_channels ({levels}), got {n}"));
            }
        }
        let down_block_types = BlockType::parse_all("down_block_types", "Down", &self.down_block_types)?;
        let up_block_types = BlockType::parse_all("up_block_types", "Up", &self.up_block_types)?;
        let factor = 1usize << (levels - 1);
        if sample_size.iter().any(|s| !s.is_multiple_of(factor)) {
            return Err(format!(
                "sample_size: {levels} levels halve the image {} times, so {sample_size:?} must be divisible by \
                 {factor}",
                levels - 1
            ));
        }
        let layers_per_block = positive("layers_per_block", self.layers_per_block)?;
        if !(self.mid_block_scale_factor.is_finite() && self.mid_block_scale_factor > 0.0) {
            return Err(format!(
                "mid_block_scale_factor: expected a positive number, got {}",
                self.mid_block_scale_factor
            ));
        }
        if self.downsample_padding > 1 {
            return Err(format!("downsample_padding: expected 0 or 1, got {}", self.downsample_padding));
        }
        let norm_num_groups = self.norm_num_groups.ok_or(
            "norm_num_groups: expected a number of GroupNorm groups (null, diffusers' per-block default, is not \
             implemented)",
        )?;
        positive("norm_num_groups", norm_num_groups)?;
        if let Some(c) = self.block_out_channels.iter().find(|c| !c.is_multiple_of(norm_num_groups)) {
            return Err(format!(
                "norm_num_groups: {norm_num_groups} does not divide {c} channels of block_out_channels"
            ));
        }
        if let Some(g) = self.attn_norm_num_groups {
            let c = self.block_out_channels[levels - 1];
            if g == 0 || !c.is_multiple_of(g) {
                return Err(format!("attn_norm_num_groups: expected a divisor of {c} channels, got {g}"));
            }
        }
        if let Some(d) = self.attention_head_dim {
            let attention_levels = (0..levels).filter(|&i| {
                down_block_types[i] == BlockType::Attention
                    || up_block_types[levels - 1 - i] == BlockType::Attention
                    || (i == levels - 1 && self.add_attention)
            });
            for i in attention_levels {
                let c = self.block_out_channels[i];
                if d == 0 || !c.is_multiple_of(d) {
                    return Err(format!(
                        "attention_head_dim: expected a divisor of the {c} channels attention runs over, got {d}"
                    ));
                }
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return Err(format!("norm_eps: expected a GroupNorm epsilon in (0, 1), got {}", self.norm_eps));
        }
        let resnet_time_scale_shift = match self.resnet_time_scale_shift.as_str() {
            "default" => TimeScaleShift::Add,
            "scale_shift" => TimeScaleShift::ScaleShift,
            other => {
                return Err(format!(
                    "resnet_time_scale_shift: tilt implements \"default\" and \"scale_shift\", got \"{other}\""
                ));
            }
        };
        let c0 = self.block_out_channels[0];
        if !c0.is_multiple_of(2) {
            return Err(format!("block_out_channels[0]: the sinusoidal time embedding needs an even width, got {c0}"));
        }
        let half = (c0 / 2) as f64;
        if !(self.freq_shift.is_finite() && self.freq_shift < half) {
            return Err(format!(
                "freq_shift: expected a number below half the embedding width ({half}), got {}",
                self.freq_shift
            ));
        }
        let time_embed_dim = positive("time_embedding_dim", self.time_embedding_dim.unwrap_or(4 * c0))?;
        let num_class_embeds = match self.num_class_embeds {
            Some(n) => Some(positive("num_class_embeds", n)?),
            None => None,
        };
        Ok(UNet2DConfig {
            sample_size,
            in_channels,
            out_channels,
            center_input_sample: self.center_input_sample,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            time_embed_dim,
            block_out_channels: self.block_out_channels,
            down_block_types,
            up_block_types,
            layers_per_block,
            mid_block_scale_factor: self.mid_block_scale_factor,
            downsample_padding: self.downsample_padding,
            attention_head_dim: self.attention_head_dim,
            norm_num_groups,
            attn_norm_num_groups: self.attn_norm_num_groups,
            norm_eps: self.norm_eps,
            resnet_time_scale_shift,
            add_attention: self.add_attention,
            num_class_embeds,
        })
    }
}

/// The parts of a diffusers scheduler config that define the model's noise schedule and output; the sampler's own
/// settings (`clip_sample`, `timestep_spacing`, `steps_offset`, `thresholding`, ...) are tilt's sampler's business
/// and are not read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// The training noise schedule.
    pub schedule: Schedule,
    /// What the network outputs.
    pub prediction: Prediction,
}

impl SchedulerConfig {
    /// The `scheduler_config.json` of a model trained on `schedule` to output `prediction`: diffusers'
    /// `DDPMScheduler` for discrete tables and tilt's cosine (diffusers' `squaredcos_cap_v2`), its
    /// `FlowMatchEulerDiscreteScheduler` for velocity on rectified flow. `Err` names what diffusers has no
    /// scheduler for (tilt's `linear` schedule, a cosine offset other than 0.008, a non-velocity flow model).
    pub fn to_json(schedule: Schedule, prediction: Prediction) -> Result<Value, String> {
        let prediction_type = match prediction {
            Prediction::Epsilon => "epsilon",
            Prediction::VPrediction => "v_prediction",
            Prediction::Sample => "sample",
            Prediction::Velocity => "velocity",
        };
        let ddpm = |beta_schedule: &str, beta_start: f64, beta_end: f64, n: usize| -> Result<Value, String> {
            if prediction == Prediction::Velocity {
                return Err("model.prediction: diffusers' DDPM scheduler takes epsilon, v-prediction or sample, \
                            not velocity"
                    .into());
            }
            Ok(serde_json::json!({
                "_class_name": "DDPMScheduler",
                "_diffusers_version": "0.42.1",
                "beta_end": beta_end,
                "beta_schedule": beta_schedule,
                "beta_start": beta_start,
                "clip_sample": false,
                "num_train_timesteps": n,
                "prediction_type": prediction_type,
                "timestep_spacing": "trailing",
                "variance_type": "fixed_small",
            }))
        };
        match schedule {
            Schedule::Discrete { beta_schedule, beta_start, beta_end, num_train_timesteps } => {
                let name = match beta_schedule {
                    BetaSchedule::Linear => "linear",
                    BetaSchedule::ScaledLinear => "scaled_linear",
                    BetaSchedule::SquaredcosCapV2 => "squaredcos_cap_v2",
                };
                ddpm(name, beta_start, beta_end, num_train_timesteps)
            }
            Schedule::Cosine { s: 0.008 } => ddpm("squaredcos_cap_v2", 1e-4, 0.02, 1000),
            Schedule::Cosine { s } => {
                Err(format!("schedule.s: diffusers' squaredcos_cap_v2 is the cosine schedule with s = 0.008, got {s}"))
            }
            Schedule::RectifiedFlow { shift } if prediction == Prediction::Velocity => Ok(serde_json::json!({
                "_class_name": "FlowMatchEulerDiscreteScheduler",
                "_diffusers_version": "0.42.1",
                "num_train_timesteps": 1000,
                "shift": shift,
            })),
            Schedule::RectifiedFlow { .. } => Err(format!(
                "model.prediction: diffusers' flow-matching scheduler takes velocity, got {}",
                prediction.name()
            )),
            Schedule::Linear => Err("schedule.kind: diffusers has no scheduler for tilt's linear schedule \
                                     (alpha^2 = 1 - t); train on \"discrete\" or \"cosine\" to export one"
                .into()),
        }
    }

    /// Parses `scheduler_config.json` of any discrete-time diffusers scheduler (DDPM, DDIM, PNDM, Euler,
    /// DPM-Solver, ...), with their defaults (1000 steps, linear betas 1e-4 to 0.02, epsilon).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let map: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object of scheduler fields: {e}"))?;
        let class = map.get("_class_name").and_then(Value::as_str).unwrap_or("DDPMScheduler");
        let number = |field: &str, default: f64| -> Result<f64, String> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_f64().ok_or(format!("{field}: expected a number, got {v}")),
            }
        };
        if class == "FlowMatchEulerDiscreteScheduler" {
            // Rectified flow, the network predicting the velocity noise - x0 at timestep 1000 t.
            for field in ["use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"] {
                if map.get(field).and_then(Value::as_bool) == Some(true) {
                    return Err(format!("{field}: tilt implements the static shift of the flow-matching scheduler"));
                }
            }
            if number("num_train_timesteps", 1000.0)? != 1000.0 {
                return Err("num_train_timesteps: tilt reads flow-matching models fed timestep 1000 t".into());
            }
            let schedule = Schedule::RectifiedFlow { shift: number("shift", 1.0)? };
            schedule.validate().map_err(|e| e.replace("schedule.", ""))?;
            return Ok(Self { schedule, prediction: Prediction::Velocity });
        }
        if class.starts_with("FlowMatch") {
            return Err(format!("_class_name: tilt reads FlowMatchEulerDiscreteScheduler, not \"{class}\""));
        }
        let string = |field: &str, default: &'static str| -> Result<String, String> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Err(format!("{field}: expected a string, got {v}")),
            }
        };
        if map.get("trained_betas").is_some_and(|v| !v.is_null()) {
            return Err("trained_betas: an explicit beta table is not implemented (use beta_schedule)".into());
        }
        if map.get("rescale_betas_zero_snr").and_then(Value::as_bool) == Some(true) {
            return Err(
                "rescale_betas_zero_snr: zero terminal SNR (alpha_bar = 0 at the last step) is not implemented".into(),
            );
        }
        let steps = number("num_train_timesteps", 1000.0)?;
        if !(steps.fract() == 0.0 && steps >= 0.0 && steps <= usize::MAX as f64) {
            return Err(format!("num_train_timesteps: expected a whole number of steps, got {steps}"));
        }
        let beta_schedule = match string("beta_schedule", "linear")?.as_str() {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "squaredcos_cap_v2" => BetaSchedule::SquaredcosCapV2,
            other => {
                return Err(format!(
                    "beta_schedule: expected \"linear\", \"scaled_linear\" or \"squaredcos_cap_v2\", got \"{other}\""
                ));
            }
        };
        let schedule = Schedule::Discrete {
            beta_schedule,
            beta_start: number("beta_start", 1e-4)?,
            beta_end: number("beta_end", 0.02)?,
            num_train_timesteps: steps as usize,
        };
        schedule.validate().map_err(|e| e.replace("schedule.", ""))?;
        let prediction = match string("prediction_type", "epsilon")?.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            "sample" => Prediction::Sample,
            other => {
                return Err(format!(
                    "prediction_type: expected \"epsilon\", \"v_prediction\" or \"sample\", got \"{other}\""
                ));
            }
        };
        Ok(Self { schedule, prediction })
    }
}
