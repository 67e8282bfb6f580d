//! `[model]`: which network is trained, tagged by `kind`, each kind with its own fields (a field of another kind is
//! an error, not silently ignored).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use tilt_core::Prediction;
use tilt_models::{Activation, ScoreNetConfig, UNetConfig};

/// Which network is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NetKind {
    /// The residual MLP: points, or any data as flat rows.
    #[default]
    Mlp,
    /// The pixel U-Net: image data.
    Unet,
    /// The evaluator's CNN of clean images.
    Cnn,
}

/// The residual MLP (`[model] kind = "mlp"`, the default): score networks, classifiers, autoencoders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSpec {
    /// Width of the hidden layers.
    #[serde(default = "d_hidden")]
    pub hidden: usize,
    /// Residual blocks (classifier: hidden layers).
    #[serde(default = "d_blocks")]
    pub blocks: usize,
    /// Width of the time embedding.
    #[serde(default = "d_time_dim")]
    pub time_dim: usize,
    /// The activation.
    #[serde(default)]
    pub activation: Activation,
    /// What a score network outputs (`epsilon`, `v-prediction`, `sample`, `velocity`); the objective's own by
    /// default (`velocity` for flow matching, `epsilon` otherwise). Saved with the run: `tilt sample` reads the score
    /// off it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Prediction>,
}

/// The pixel U-Net (`[model] kind = "unet"`): GroupNorm, SiLU, time and class embeddings, skips, optional attention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetSpec {
    /// Base channels.
    #[serde(default = "d_channels")]
    pub channels: usize,
    /// Channel multiplier per level (each level halves the image).
    #[serde(default = "d_channel_mults")]
    pub channel_mults: Vec<usize>,
    /// Convolution blocks per level.
    #[serde(default = "d_blocks_per_level")]
    pub blocks_per_level: usize,
    /// GroupNorm groups.
    #[serde(default = "d_groups")]
    pub groups: usize,
    /// Self-attention at the lowest resolution.
    #[serde(default)]
    pub attention: bool,
    /// Width of the time embedding.
    #[serde(default = "d_time_dim")]
    pub time_dim: usize,
    /// What the network outputs (as for the MLP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Prediction>,
}

/// The evaluator's CNN (`[model] kind = "cnn"`, the default of `objective.kind = "evaluator"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnSpec {
    /// Its width.
    #[serde(default = "d_channels")]
    pub channels: usize,
}

/// Network architecture and size, tagged by `kind` (`mlp` when absent).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ModelSpec {
    /// The residual MLP.
    Mlp(MlpSpec),
    /// The pixel U-Net.
    Unet(UNetSpec),
    /// The evaluator's CNN.
    Cnn(CnnSpec),
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
fn d_channels() -> usize {
    32
}
fn d_channel_mults() -> Vec<usize> {
    vec![1, 2]
}
fn d_blocks_per_level() -> usize {
    1
}
fn d_groups() -> usize {
    8
}

impl Default for MlpSpec {
    fn default() -> Self {
        Self {
            hidden: d_hidden(),
            blocks: d_blocks(),
            time_dim: d_time_dim(),
            activation: Activation::Silu,
            prediction: None,
        }
    }
}

impl Default for UNetSpec {
    fn default() -> Self {
        Self {
            channels: d_channels(),
            channel_mults: d_channel_mults(),
            blocks_per_level: d_blocks_per_level(),
            groups: d_groups(),
            attention: false,
            time_dim: d_time_dim(),
            prediction: None,
        }
    }
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec::Mlp(MlpSpec::default())
    }
}

/// The fields of each kind in the flat form every `[model]` had before it was tagged: a run's `state.json` written
/// then holds all of them at once. Read back, the fields of the other kinds are dropped.
const MLP_FIELDS: [&str; 4] = ["hidden", "blocks", "activation", "time_dim"];
const UNET_FIELDS: [&str; 6] = ["channels", "channel_mults", "blocks_per_level", "groups", "attention", "time_dim"];
const FLAT_FIELDS: [&str; 10] = [
    "hidden",
    "blocks",
    "time_dim",
    "activation",
    "channels",
    "channel_mults",
    "blocks_per_level",
    "groups",
    "attention",
    "kind",
];

impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A TOML table keeps every value as written (NaN and infinities included), so a type error below still
        // quotes the value and `toml_error` can name its field; JSON (state.json) reads into it as well.
        let mut map = toml::Table::deserialize(deserializer)?;
        let kind = match map.remove("kind") {
            None => {
                // No kind is the MLP; a field only another kind has is a missing `kind`, said so.
                if let Some(f) = map.keys().find(|k| !MLP_FIELDS.contains(&k.as_str()) && k.as_str() != "prediction")
                    && UNET_FIELDS.contains(&f.as_str())
                {
                    return Err(D::Error::custom(format!(
                        "model.kind: `{f}` is a field of kind = \"unet\" (or \"cnn\", the evaluator's), but [model] \
                         gives no kind and the default is \"mlp\"; set kind"
                    )));
                }
                NetKind::Mlp
            }
            Some(k) => k.try_into().map_err(|e| D::Error::custom(format!("model.kind: {e}")))?,
        };
        // A flat spec as tilt wrote it into state.json before `[model]` was tagged: all ten fields present.
        if FLAT_FIELDS.iter().all(|f| *f == "kind" || map.contains_key(*f)) {
            let keep: &[&str] = match kind {
                NetKind::Mlp => &MLP_FIELDS,
                NetKind::Unet => &UNET_FIELDS,
                NetKind::Cnn => &["channels"],
            };
            map.retain(|k, _| keep.contains(&k) || k == "prediction");
        }
        let value = toml::Value::Table(map);
        let spec = match kind {
            NetKind::Mlp => value.try_into().map(ModelSpec::Mlp),
            NetKind::Unet => value.try_into().map(ModelSpec::Unet),
            NetKind::Cnn => value.try_into().map(ModelSpec::Cnn),
        };
        spec.map_err(|e| D::Error::custom(format!("model.kind = \"{}\": {e}", kind_name(kind))))
    }
}

fn kind_name(kind: NetKind) -> &'static str {
    match kind {
        NetKind::Mlp => "mlp",
        NetKind::Unet => "unet",
        NetKind::Cnn => "cnn",
    }
}

impl ModelSpec {
    /// Which network.
    pub fn kind(&self) -> NetKind {
        match self {
            ModelSpec::Mlp(_) => NetKind::Mlp,
            ModelSpec::Unet(_) => NetKind::Unet,
            ModelSpec::Cnn(_) => NetKind::Cnn,
        }
    }

    /// The prediction the spec asks for, if any.
    pub fn prediction(&self) -> Option<Prediction> {
        match self {
            ModelSpec::Mlp(m) => m.prediction,
            ModelSpec::Unet(u) => u.prediction,
            ModelSpec::Cnn(_) => None,
        }
    }

    /// Set the prediction (the CNN has none).
    pub fn set_prediction(&mut self, prediction: Option<Prediction>) {
        match self {
            ModelSpec::Mlp(m) => m.prediction = prediction,
            ModelSpec::Unet(u) => u.prediction = prediction,
            ModelSpec::Cnn(_) => {}
        }
    }

    /// An MLP of `hidden` units and `blocks` blocks, the other fields at their defaults.
    pub fn mlp(hidden: usize, blocks: usize) -> Self {
        ModelSpec::Mlp(MlpSpec { hidden, blocks, ..MlpSpec::default() })
    }
}

impl MlpSpec {
    /// The residual MLP score network of this spec for `dim`-dimensional data with `classes` labels (0:
    /// unconditional).
    pub fn score_net(&self, dim: usize, classes: usize) -> ScoreNetConfig {
        ScoreNetConfig::new(dim)
            .with_hidden(self.hidden)
            .with_blocks(self.blocks)
            .with_time_dim(self.time_dim)
            .with_activation(self.activation)
            .with_num_classes(classes)
    }
}

impl UNetSpec {
    /// The U-Net of this spec for images of `image = [channels, height, width]`.
    pub fn config(&self, image: [usize; 3], num_classes: usize) -> UNetConfig {
        UNetConfig::new(image)
            .with_base_channels(self.channels)
            .with_channel_mults(self.channel_mults.clone())
            .with_blocks_per_level(self.blocks_per_level)
            .with_groups(self.groups)
            .with_time_dim(self.time_dim)
            .with_num_classes(num_classes)
            .with_attention(self.attention)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flat_spec_of_earlier_runs_reads_as_its_kind() {
        // `config.model` of a state.json written before `[model]` was tagged: every field of every kind.
        let flat = |kind: &str| {
            format!(
                r#"{{"kind":"{kind}","hidden":96,"blocks":2,"time_dim":16,"activation":"silu","channels":8,"channel_mults":[1,2],"blocks_per_level":1,"groups":4,"attention":true}}"#
            )
        };
        let mlp: ModelSpec = serde_json::from_str(&flat("mlp")).unwrap();
        assert_eq!(mlp, ModelSpec::Mlp(MlpSpec { hidden: 96, blocks: 2, time_dim: 16, ..MlpSpec::default() }));
        let unet: ModelSpec = serde_json::from_str(&flat("unet")).unwrap();
        assert_eq!(
            unet,
            ModelSpec::Unet(UNetSpec {
                channels: 8,
                channel_mults: vec![1, 2],
                blocks_per_level: 1,
                groups: 4,
                attention: true,
                time_dim: 16,
                prediction: None
            })
        );
        // Written back, each holds its own fields only, and reads back equal.
        let json = serde_json::to_string(&unet).unwrap();
        assert!(!json.contains("hidden"), "{json}");
        assert_eq!(serde_json::from_str::<ModelSpec>(&json).unwrap(), unet);
    }

    #[test]
    fn a_field_of_another_kind_is_an_error() {
        let e = toml::from_str::<ModelSpec>("kind = \"unet\"\nhidden = 64").unwrap_err().to_string();
        assert!(e.contains("unknown field `hidden`"), "{e}");
        let e = toml::from_str::<ModelSpec>("channels = 8").unwrap_err().to_string();
        assert!(e.contains("model.kind") && e.contains("`channels`"), "{e}");
        assert_eq!(toml::from_str::<ModelSpec>("hidden = 64").unwrap(), ModelSpec::mlp(64, 3));
        assert_eq!(toml::from_str::<ModelSpec>("").unwrap(), ModelSpec::default());
    }
}
