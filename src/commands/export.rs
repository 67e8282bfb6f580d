//! `tilt export`: the EMA weights of a checkpoint as SafeTensors, byte for byte the same on every export; or a
//! trained U-Net as a diffusers model folder (`--format diffusers`).

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde_json::Value;
use std::path::Path;
use tilt_train::checkpoint::Checkpoint;
use tilt_train::{ModelKind, NetKind};

/// Write the EMA weights of `checkpoint` (a run or a checkpoint directory) to `out`. An existing `out` is
/// replaced only with `force`; the file is written atomically.
pub fn run(checkpoint: &Path, out: &Path, force: bool, device: &Device) -> Result<()> {
    if out.is_dir() {
        bail!("{}: is a directory; give the path of the .safetensors file to write", out.display());
    }
    refuse_run_files(out)?;
    // One export into a folder at a time: a second waits, then finds the first's file (and needs --force).
    let _lock = lock_folder_of(out)?;
    if std::fs::symlink_metadata(out).is_ok() && !force {
        bail!("{}: already exists; pass --force to replace it, or choose another --out", out.display());
    }
    let ck = Checkpoint::open_any(checkpoint)?;
    let kind = ck.manifest.model_kind;
    let mut store = SafetensorsStore::from_bytes(None)
        .metadata("tilt_model_kind", kind.to_string())
        .metadata("step", ck.manifest.step.to_string());
    let err = |e: burn::store::SafetensorsStoreError| anyhow!("cannot serialise {}: {e}", ck.dir.display());
    match kind {
        ModelKind::Autoencoder => {
            tilt_train::load_autoencoder(&ck.dir, device)?.0.save_into(&mut store).map_err(err)?
        }
        ModelKind::Evaluator => tilt_train::load_evaluator(&ck.dir, device)?.0.save_into(&mut store).map_err(err)?,
        ModelKind::Classifier => {
            tilt_train::load_classifier(&ck.dir, device)?.classifier.net.save_into(&mut store).map_err(err)?
        }
        ModelKind::ScoreNet if tilt_train::load::run_state(&ck.dir)?.config.model.kind() == NetKind::Unet => {
            tilt_train::load_unet(&ck.dir, device)?.0.net.save_into(&mut store).map_err(err)?
        }
        ModelKind::ScoreNet | ModelKind::Residual => {
            tilt_train::load_score(&ck.dir, kind, device)?.score.net.save_into(&mut store).map_err(err)?
        }
    }
    let bytes = store.get_bytes().map_err(err)?;
    tilt_train::write_atomic(out, &canonical(&bytes).with_context(|| format!("cannot write {}", out.display()))?)
}

/// What `tilt export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One SafeTensors file of the EMA weights under tilt's module names.
    Safetensors,
    /// A diffusers model folder (a U-Net run only): `config.json`, `diffusion_pytorch_model.safetensors` and
    /// `scheduler/scheduler_config.json`, which `UNet2DModel.from_pretrained` loads.
    Diffusers,
}

/// The files of a diffusers model folder tilt writes.
const DIFFUSERS_FILES: [&str; 3] =
    ["config.json", "diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"];

/// Writes the U-Net run `checkpoint` as a diffusers model folder `out` (absent or empty; with `force`, a folder
/// holding an earlier export is overwritten). Without a diffusers scheduler for the run's schedule the folder has
/// no scheduler config, and the returned note says why.
pub fn run_diffusers(checkpoint: &Path, out: &Path, force: bool, device: &Device) -> Result<Option<String>> {
    use tilt_models::diffusers::SchedulerConfig;
    let ck = Checkpoint::open_any(checkpoint)?;
    if ck.manifest.model_kind != ModelKind::ScoreNet
        || tilt_train::load::run_state(&ck.dir)?.config.model.kind() != NetKind::Unet
    {
        bail!(
            "--checkpoint {}: --format diffusers exports a U-Net score network (model.kind = \"unet\"); this run \
             trained a {:?} {}",
            checkpoint.display(),
            tilt_train::load::run_state(&ck.dir)?.config.model.kind(),
            ck.manifest.model_kind
        );
    }
    refuse_run_files(out)?;
    if out.is_file() {
        bail!("{}: is a file; --format diffusers writes a folder", out.display());
    }
    let _lock = lock_folder_of(out)?;
    if let Ok(entries) = std::fs::read_dir(out) {
        let existing: Vec<String> =
            entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        let ours =
            |n: &String| ["config.json", "diffusion_pytorch_model.safetensors", "scheduler"].contains(&n.as_str());
        if let Some(foreign) = existing.iter().find(|n| !ours(n)) {
            bail!(
                "{}: holds {foreign}, which tilt did not write; export into an absent or empty folder",
                out.display()
            );
        }
        if !existing.is_empty() && !force {
            bail!("{}: holds an earlier export; pass --force to replace it, or choose another --out", out.display());
        }
    }
    let (score, state) = tilt_train::load_unet(&ck.dir, device)?;
    let config = score.net.unet_config();
    let scheduler = SchedulerConfig::to_json(state.config.schedule, state.config.prediction());
    let err = |e: burn::store::SafetensorsStoreError| anyhow!("cannot serialise {}: {e}", ck.dir.display());
    let mut store =
        SafetensorsStore::from_bytes(None).with_to_adapter(burn::store::BurnToPyTorchAdapter).metadata("format", "pt");
    score.net.unet.save_into(&mut store).map_err(err)?;
    let weights = canonical(&store.get_bytes().map_err(err)?)?;
    std::fs::create_dir_all(out.join("scheduler")).with_context(|| format!("cannot create {}", out.display()))?;
    tilt_train::write_atomic(&out.join(DIFFUSERS_FILES[1]), &weights)?;
    tilt_train::write_atomic(
        &out.join(DIFFUSERS_FILES[0]),
        serde_json::to_string_pretty(&config.to_json())?.as_bytes(),
    )?;
    match scheduler {
        Ok(s) => {
            tilt_train::write_atomic(&out.join(DIFFUSERS_FILES[2]), serde_json::to_string_pretty(&s)?.as_bytes())?;
            Ok(None)
        }
        Err(why) => {
            let _ = std::fs::remove_file(out.join(DIFFUSERS_FILES[2]));
            let _ = std::fs::remove_dir(out.join("scheduler"));
            Ok(Some(format!("no scheduler config written: {why}")))
        }
    }
}

/// Names tilt's commands write into their output folders: an export never replaces one of them (`--force`
/// included), nor anything inside a run's `checkpoints`, where it would destroy the run it reads.
const RUN_FILES: &[&str] = &[
    "config.toml",
    "loss.csv",
    "loss.png",
    "summary.json",
    "report.md",
    "results.csv",
    tilt_train::output_dir::LOCK_FILE,
    tilt_train::output_dir::MARKER_FILE,
];

fn refuse_run_files(out: &Path) -> Result<()> {
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let Ok(parent) = std::fs::canonicalize(&parent) else {
        return Ok(()); // the write itself names the missing folder
    };
    if parent.join(tilt_train::output_dir::MARKER_FILE).exists() && RUN_FILES.contains(&name) {
        bail!(
            "{}: is a file that tilt writes in its output folder {}; export to another name",
            out.display(),
            parent.display()
        );
    }
    for dir in parent.ancestors() {
        let in_checkpoints = dir.file_name().is_some_and(|n| n == "checkpoints")
            && (dir.join("latest").exists() || dir.parent().is_some_and(|r| r.join("config.toml").exists()));
        let is_step = dir.file_name().and_then(|n| n.to_str()).and_then(tilt_train::checkpoint::step_of).is_some()
            && dir.join("manifest.json").exists();
        if in_checkpoints || is_step {
            bail!(
                "{}: lies inside the checkpoints of a run ({}); writing there would destroy a checkpoint, export elsewhere",
                out.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// An exclusive lock on the folder `out` is written into, held until dropped (flock on the directory itself, so
/// nothing is left behind in the user's folder).
fn lock_folder_of(out: &Path) -> Result<Option<std::fs::File>> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if cfg!(unix) {
        let dir = std::fs::File::open(parent).with_context(|| format!("cannot open {}", parent.display()))?;
        dir.lock().with_context(|| format!("cannot lock {}", parent.display()))?;
        Ok(Some(dir))
    } else {
        Ok(None)
    }
}

/// The same SafeTensors file with its JSON header's keys sorted: Burn writes the metadata from a hash map, whose
/// order changes from run to run. Tensor data and their offsets (relative to the end of the header) are unchanged.
fn canonical(bytes: &[u8]) -> Result<Vec<u8>> {
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    let header = n.and_then(|n| bytes.get(8..8 + n)).ok_or_else(|| anyhow!("malformed SafeTensors header"))?;
    let value: Value = serde_json::from_slice(header).context("malformed SafeTensors header")?;
    let mut text = serde_json::to_string(&sorted(value))?;
    // SafeTensors pads the header with spaces so the tensor data start 8-byte aligned.
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + header.len()..]);
    Ok(out)
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}
