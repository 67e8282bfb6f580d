//! Loading trained models: the run state saved with every checkpoint, and the EMA weights of a score network or
//! a classifier, verified, ready for the sampler.

use crate::checkpoint::{Checkpoint, FileKind, ModelKind};
use crate::config::TrainConfig;
use crate::data::{Dataset, Standardizer};
use crate::trainer::LossPoint;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tilt_core::ScoreModel;
use tilt_models::{
    Autoencoder, AutoencoderConfig, Evaluator, EvaluatorConfig, NetClassifier, NetScore, NoiseNet,
    NoisyClassifierConfig, ScoreNetConfig, UNet, UNetConfig,
};

/// Saved with every checkpoint (`state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    /// The tilt version that wrote it.
    pub tilt_version: String,
    /// The optimizer step.
    pub step: usize,
    /// The run's config.
    pub config: TrainConfig,
    /// The network's own config (`ScoreNetConfig` / `NoisyClassifierConfig` as JSON).
    pub net: serde_json::Value,
    /// The standardisation of the training data (undone when sampling).
    pub standardizer: Standardizer,
    /// Values per sample.
    pub dim: usize,
    /// `[channels, height, width]` when the data are images.
    #[serde(default)]
    pub image: Option<[usize; 3]>,
    /// Number of classes of the data.
    pub num_classes: usize,
    /// The loss curve so far.
    pub history: Vec<LossPoint>,
    /// SHA-256 of the training data (before the split and standardisation): `--resume` refuses changed data.
    /// Absent in checkpoints written before it existed.
    #[serde(default)]
    pub data_sha256: Option<String>,
    /// SHA-256 of the EMA weights of `objective.base` (reward-weighted runs): `--resume` refuses a changed base.
    #[serde(default)]
    pub base_sha256: Option<String>,
    /// The class names of an image folder (its sub-folders), in label order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
}

/// `state.json` of a verified checkpoint, cross-checked with the manifest's step.
pub(crate) fn load_state(ck: &Checkpoint) -> Result<RunState> {
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

/// The state of the newest checkpoint of a run (or of a checkpoint directory), every file verified.
pub fn run_state(path: &Path) -> Result<RunState> {
    load_state(&Checkpoint::open_any(path)?)
}

/// A verified checkpoint of `kind`, its run state, and the network config saved in `state.json` (`what` names
/// the expected network in the error).
fn open_with_config<C: serde::de::DeserializeOwned>(
    path: &Path,
    kind: ModelKind,
    what: &str,
) -> Result<(Checkpoint, RunState, C)> {
    let ck = Checkpoint::open(path, kind)?;
    let state = load_state(&ck)?;
    let net_cfg = net_config(&ck, &state, kind, what)?;
    Ok((ck, state, net_cfg))
}

/// The network config of an opened checkpoint, refused when its architecture is not `what`.
fn net_config<C: serde::de::DeserializeOwned>(
    ck: &Checkpoint,
    state: &RunState,
    kind: ModelKind,
    what: &str,
) -> Result<C> {
    let is_unet = state.config.model.kind() == crate::NetKind::Unet;
    if is_unet != (what == "U-Net") && kind == ModelKind::ScoreNet {
        bail!(
            "{}: holds a {} score network, but a {what} was expected here{}",
            ck.dir.display(),
            if is_unet { "U-Net (image)" } else { "MLP" },
            if is_unet { " (this use takes MLP score networks of vector data)" } else { "" }
        );
    }
    serde_json::from_value(state.net.clone())
        .with_context(|| format!("{}: state.json holds no {what} config", ck.dir.display()))
}

/// SHA-256 of the EMA weights file, as the verified manifest records it: the network's identity.
fn ema_sha256(ck: &Checkpoint) -> Option<String> {
    ck.manifest.file(FileKind::EmaModel).map(|f| f.sha256.clone())
}

/// The EMA weights of an opened MLP score checkpoint as a score model, with its prediction (a residual reads as one).
fn mlp_score(ck: &Checkpoint, state: &RunState, kind: ModelKind, device: &Device) -> Result<NetScore> {
    let net_cfg: ScoreNetConfig = net_config(ck, state, kind, "score-network")?;
    let net = ck.load_model(FileKind::EmaModel, net_cfg.init(device))?;
    let score = NetScore::new(net, state.config.schedule, vec![state.dim]).with_prediction(state.config.prediction());
    Ok(if kind == ModelKind::Residual { score.as_residual() } else { score })
}

/// The EMA weights of an opened U-Net score checkpoint as a score model, with its prediction.
fn unet_score(ck: &Checkpoint, state: &RunState, device: &Device) -> Result<NetScore<UNet>> {
    let net_cfg: UNetConfig = net_config(ck, state, ModelKind::ScoreNet, "U-Net")?;
    let net = ck.load_model(FileKind::EmaModel, net_cfg.init(device)).with_context(|| {
        format!(
            "{}: a U-Net checkpoint of the layout tilt used before its U-Net became a configuration of diffusers' \
             UNet2DModel (exportable to diffusers); train it again",
            ck.dir.display()
        )
    })?;
    Ok(NetScore::new(net, state.config.schedule, net_cfg.image.to_vec()).with_prediction(state.config.prediction()))
}

/// A trained score network (EMA weights) ready for the sampler.
pub struct LoadedScore {
    /// The run or checkpoint it was loaded from.
    pub path: PathBuf,
    /// The network as a score model.
    pub score: NetScore,
    /// The standardisation of its training data.
    pub standardizer: Standardizer,
    /// Its run state.
    pub state: RunState,
    /// SHA-256 of the EMA weights file, as the verified manifest records it: the network's identity.
    pub ema_sha256: Option<String>,
}

/// Load the EMA weights of a `score-net` or `residual` checkpoint (a run or checkpoint directory).
pub fn load_score(path: &Path, kind: ModelKind, device: &Device) -> Result<LoadedScore> {
    let ck = Checkpoint::open(path, kind)?;
    let state = load_state(&ck)?;
    let score = mlp_score(&ck, &state, kind, device)?;
    let ema_sha256 = ema_sha256(&ck);
    Ok(LoadedScore { path: path.to_path_buf(), score, standardizer: state.standardizer.clone(), state, ema_sha256 })
}

/// A trained score network of any architecture (the MLP or the U-Net), behind the sampler's interface.
pub struct LoadedAnyScore {
    /// The run or checkpoint it was loaded from.
    pub path: PathBuf,
    /// The network as a score model.
    pub score: Box<dyn ScoreModel>,
    /// The null label of a class-conditional network (its class count), `None` when unconditional.
    pub null_label: Option<usize>,
    /// The standardisation of its training data.
    pub standardizer: Standardizer,
    /// Its run state.
    pub state: RunState,
    /// SHA-256 of the EMA weights file (the network's identity).
    pub ema_sha256: Option<String>,
}

/// Load a `score-net` or `residual` checkpoint of any architecture, with its prediction and schedule.
pub fn load_any_score(path: &Path, kind: ModelKind, device: &Device) -> Result<LoadedAnyScore> {
    // One open: the checkpoint's files are hashed once, whatever the architecture.
    let ck = Checkpoint::open(path, kind)?;
    let state = load_state(&ck)?;
    let (score, null_label): (Box<dyn ScoreModel>, _) =
        if state.config.model.kind() == crate::NetKind::Unet && kind == ModelKind::ScoreNet {
            let s = unet_score(&ck, &state, device)?;
            let null = s.net.null_label();
            (Box::new(s), null)
        } else {
            let s = mlp_score(&ck, &state, kind, device)?;
            let null = s.net.null_label();
            (Box::new(s), null)
        };
    Ok(LoadedAnyScore {
        path: path.to_path_buf(),
        score,
        null_label,
        standardizer: state.standardizer.clone(),
        ema_sha256: ema_sha256(&ck),
        state,
    })
}

/// A trained noise-aware classifier (EMA weights).
pub struct LoadedClassifier {
    /// The classifier behind the sampler's trait.
    pub classifier: NetClassifier,
    /// The standardisation of its training data.
    pub standardizer: Standardizer,
    /// Its run state.
    pub state: RunState,
}

/// Load the EMA weights of a `classifier` checkpoint.
pub fn load_classifier(path: &Path, device: &Device) -> Result<LoadedClassifier> {
    let (ck, state, net_cfg): (_, _, NoisyClassifierConfig) =
        open_with_config(path, ModelKind::Classifier, "classifier")?;
    let net = ck.load_model(FileKind::EmaModel, net_cfg.init(device))?;
    Ok(LoadedClassifier {
        classifier: NetClassifier { net, schedule: state.config.schedule },
        standardizer: state.standardizer.clone(),
        state,
    })
}

/// The EMA weights of a U-Net score checkpoint.
pub fn load_unet(path: &Path, device: &Device) -> Result<(NetScore<UNet>, RunState)> {
    let ck = Checkpoint::open(path, ModelKind::ScoreNet)?;
    let state = load_state(&ck)?;
    Ok((unet_score(&ck, &state, device)?, state))
}

/// The EMA weights of an evaluator checkpoint.
pub fn load_evaluator(path: &Path, device: &Device) -> Result<(Evaluator, RunState)> {
    let (ck, state, net_cfg): (_, _, EvaluatorConfig) = open_with_config(path, ModelKind::Evaluator, "evaluator")?;
    Ok((ck.load_model(FileKind::EmaModel, net_cfg.init(device))?, state))
}

/// The fraction of `data`'s rows the evaluator classifies as their label, in batches of 1000.
pub fn accuracy(evaluator: &Evaluator, data: &Dataset, device: &Device) -> Result<f64> {
    let labels = data.labels.as_ref().ok_or_else(|| anyhow::anyhow!("accuracy needs labelled data"))?;
    let mut hits = 0usize;
    for start in (0..data.len()).step_by(1000) {
        let n = 1000.min(data.len() - start);
        let rows = data.clean_rows(&(start..start + n).collect::<Vec<_>>())?;
        let logits = evaluator.forward(tilt_core::tensor_ext::matrix(&rows, n, data.dim, device));
        let predicted = tilt_core::tensor_ext::to_vec_i64(logits.argmax(1).reshape([n]));
        hits += predicted.iter().zip(&labels[start..start + n]).filter(|(p, l)| **p as usize == **l).count();
    }
    Ok(hits as f64 / data.len() as f64)
}

/// The EMA weights of an autoencoder checkpoint.
pub fn load_autoencoder(path: &Path, device: &Device) -> Result<(Autoencoder, RunState)> {
    let (ck, state, net_cfg): (_, _, AutoencoderConfig) =
        open_with_config(path, ModelKind::Autoencoder, "autoencoder")?;
    Ok((ck.load_model(FileKind::EmaModel, net_cfg.init(device))?, state))
}
