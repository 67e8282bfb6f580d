//! Loading a diffusers model folder: the layouts people hold, `config.json`, the weights through Burn's
//! `SafetensorsStore` with its PyTorch adapter, and a check that every tensor was used and every parameter filled
//! with finite values.

use super::config::{SchedulerConfig, UNet2DConfig};
use super::unet2d::UNet2D;
use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::store::{FloatCastAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::DType;
use std::path::{Path, PathBuf};

/// The weights file diffusers writes (f32), and its half-precision variant.
const WEIGHTS: [&str; 2] = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"];

/// The files of one diffusers model, found in any of the layouts people hold: a model folder
/// (`UNet2DModel.save_pretrained`: `config.json` and the weights), a pipeline folder (`model_index.json`, `unet/`,
/// `scheduler/`), or an older single folder with `scheduler_config.json` beside the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffusersFiles {
    /// `config.json` of the `UNet2DModel`.
    pub config: PathBuf,
    /// The safetensors weights.
    pub weights: PathBuf,
    /// The scheduler config, if the folder has one.
    pub scheduler: Option<PathBuf>,
}

/// Whether `dir` looks like a diffusers model or pipeline folder (it has `config.json` or `model_index.json`).
pub fn is_diffusers_dir(dir: &Path) -> bool {
    dir.is_dir() && (dir.join("config.json").is_file() || dir.join("model_index.json").is_file())
}

impl DiffusersFiles {
    /// Finds the files under `dir`, naming what is missing.
    pub fn find(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                "{}: expected a diffusers model folder (config.json and {}), found no folder",
                dir.display(),
                WEIGHTS[0]
            );
        }
        let model = if dir.join("config.json").is_file() {
            dir.to_path_buf()
        } else if dir.join("model_index.json").is_file() {
            let unet = dir.join("unet");
            if !unet.join("config.json").is_file() {
                bail!(
                    "{}: a pipeline folder (model_index.json) without unet/config.json: tilt loads the pipeline's \
                     UNet2DModel from unet/",
                    dir.display()
                );
            }
            unet
        } else {
            bail!("{}: expected config.json (a model folder) or model_index.json (a pipeline folder)", dir.display());
        };
        let weights = match WEIGHTS.iter().map(|w| model.join(w)).find(|p| p.is_file()) {
            Some(w) => w,
            None if model.join("diffusion_pytorch_model.safetensors.index.json").is_file() => bail!(
                "{}: sharded weights (diffusion_pytorch_model.safetensors.index.json) are not implemented; a \
                 UNet2DModel fits one file",
                model.display()
            ),
            None if model.join("diffusion_pytorch_model.bin").is_file() => bail!(
                "{}: only diffusion_pytorch_model.bin (a PyTorch pickle) found: convert it once with diffusers \
                 (`UNet2DModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`)",
                model.display()
            ),
            None => bail!("{}: expected {} in the model folder", model.display(), WEIGHTS[0]),
        };
        let candidates = [
            model.join("scheduler").join("scheduler_config.json"),
            model.join("scheduler_config.json"),
            model.parent().map(|p| p.join("scheduler").join("scheduler_config.json")).unwrap_or_default(),
        ];
        let scheduler = candidates.into_iter().find(|p| p.is_file());
        Ok(Self { config: model.join("config.json"), weights, scheduler })
    }
}

/// Reads and checks the model's `config.json`.
pub fn read_config(path: &Path) -> Result<UNet2DConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    UNet2DConfig::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads the noise schedule and prediction type of a scheduler config.
pub fn read_scheduler(path: &Path) -> Result<SchedulerConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    SchedulerConfig::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Builds the network of `config` and fills every parameter from the safetensors file `weights`: a tensor the
/// network has no place for, a parameter the file lacks, a shape that differs or a value that is not finite is an
/// error naming the tensor. Half-precision files are widened to f32; pre-0.14 attention names (`query`, `key`,
/// `value`, `proj_attn`) are read as today's (`to_q`, `to_k`, `to_v`, `to_out.0`), as diffusers itself does.
pub fn load_unet(config: &UNet2DConfig, weights: &Path, device: &Device) -> Result<UNet2D> {
    let mut net = UNet2D::new(config, device);
    let mut store = SafetensorsStore::from_file(weights)
        .with_from_adapter(PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32)))
        .with_key_remapping(r"(attentions\.\d+)\.query\.", "${1}.to_q.")
        .with_key_remapping(r"(attentions\.\d+)\.key\.", "${1}.to_k.")
        .with_key_remapping(r"(attentions\.\d+)\.value\.", "${1}.to_v.")
        .with_key_remapping(r"(attentions\.\d+)\.proj_attn\.", "${1}.to_out.0.")
        .validate(false)
        .allow_partial(true);
    let result = net
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("{}: not a readable safetensors file: {e}", weights.display()))?;
    let file = weights.display();
    if let Some(e) = result.errors.first() {
        bail!("{file}: {e} ({} tensor(s) do not fit the network config.json describes)", result.errors.len());
    }
    if let Some((path, _)) = result.missing.first() {
        bail!(
            "{file}: no tensor {path} ({} parameter(s) of the network config.json describes are missing)",
            result.missing.len()
        );
    }
    if let Some(path) = result.unused.first() {
        bail!(
            "{file}: tensor {path} has no place in the network config.json describes ({} unused tensor(s))",
            result.unused.len()
        );
    }
    let mut finite = FiniteCheck::default();
    net.visit(&mut finite);
    if let Some(path) = finite.first_bad {
        bail!("{file}: tensor {path} holds NaN or infinite values");
    }
    Ok(net)
}

/// Finds the first parameter with a non-finite entry, by its path.
#[derive(Default)]
struct FiniteCheck {
    path: Vec<String>,
    first_bad: Option<String>,
}

impl ModuleVisitor for FiniteCheck {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.first_bad.is_none() {
            let t = param.val();
            let bad = t.clone().is_nan().any().into_scalar() || t.is_inf().any().into_scalar();
            if bad {
                self.first_bad = Some(self.path.join("."));
            }
        }
    }
}
