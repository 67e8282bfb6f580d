//! Checkpoints: one directory per saved step, with a manifest (format, kind, SHA-256, size and tensor shapes of
//! every file) that is checked on load.
//!
//! Layout of a run directory:
//! ```text
//! <run>/checkpoints/step-000500/{model.bpk, ema.bpk, optim.bpk, state.json, manifest.json}
//! <run>/checkpoints/latest          (text: the name of the newest complete checkpoint)
//! ```
//! A checkpoint is written into a hidden temporary directory and renamed into place only when complete;
//! `latest` is then replaced atomically. Older checkpoints are pruned only after that, so the previous good
//! checkpoint always survives a crash or a full disk. Burn's burnpack files carry no checksum (a flipped bit in
//! a tensor loads silently) and an optimizer loader accepts a model file (docs/theory.md §8): the manifest
//! closes both holes.

use anyhow::{Context, Result, anyhow, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

/// The manifest format this version writes and reads.
pub const FORMAT: &str = "tilt-checkpoint/1";

/// What a file in a checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    /// The online weights.
    Model,
    /// The EMA weights (what sampling uses).
    EmaModel,
    /// The optimizer state.
    Optimizer,
    /// `state.json`: the run state.
    State,
}

/// One file of a checkpoint as the manifest records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the checkpoint folder.
    pub name: String,
    /// What the file holds.
    pub kind: FileKind,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Parameter shapes in visiting order (model files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shapes: Vec<Vec<usize>>,
}

/// The kind of network a checkpoint holds, checked against what the loader expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// A noise-prediction score network (`dsm`, reward-weighted `full` and `resample`).
    ScoreNet,
    /// The `delta_theta` of reward-weighted `residual` training (a score network added to a frozen base).
    Residual,
    /// A noise-aware classifier.
    Classifier,
    /// The independent image evaluator (a classifier of clean images).
    Evaluator,
    /// An autoencoder (latent diffusion).
    Autoencoder,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelKind::ScoreNet => "score-net",
            ModelKind::Residual => "residual",
            ModelKind::Classifier => "classifier",
            ModelKind::Evaluator => "evaluator",
            ModelKind::Autoencoder => "autoencoder",
        })
    }
}

/// `manifest.json`: what a checkpoint holds, verified on every load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The kind of model the run trains.
    pub model_kind: ModelKind,
    /// The optimizer step of the checkpoint.
    pub step: usize,
    /// Every file with its hash.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The entry of the file of `kind`.
    pub fn file(&self, kind: FileKind) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.kind == kind)
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

struct Shapes(Vec<Vec<usize>>);
impl ModuleVisitor for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.shape().dims::<D>().to_vec());
    }
}

/// Parameter shapes of a module, in visiting order.
pub fn param_shapes<M: Module>(m: &M) -> Vec<Vec<usize>> {
    let mut s = Shapes(Vec::new());
    m.visit(&mut s);
    s.0
}

/// One file to write: its name, kind, content and (for models) shapes.
pub struct Artifact {
    /// File name.
    pub name: &'static str,
    /// What it holds.
    pub kind: FileKind,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The tensor shapes of a model file (empty otherwise).
    pub shapes: Vec<Vec<usize>>,
}

impl Artifact {
    /// A model file of `kind` (weights in Burn's format).
    pub fn model<M: Module>(name: &'static str, kind: FileKind, model: &M) -> Result<Self> {
        let shapes = param_shapes(model);
        let bytes = model.clone().into_record().into_bytes().map_err(|e| anyhow!("cannot serialise {name}: {e}"))?;
        Ok(Self { name, kind, bytes: bytes.to_vec(), shapes })
    }
    /// The optimizer state file.
    pub fn optimizer(optim: &ModuleOptimizer) -> Result<Self> {
        let bytes = optim.into_bytes().map_err(|e| anyhow!("cannot serialise optim.bpk: {e}"))?;
        let bytes = sorted_burnpack(bytes).map_err(|e| anyhow!("cannot serialise optim.bpk: {e}"))?;
        Ok(Self { name: "optim.bpk", kind: FileKind::Optimizer, bytes, shapes: vec![] })
    }
    /// A JSON file.
    pub fn json<T: Serialize>(name: &'static str, value: &T) -> Result<Self> {
        Ok(Self { name, kind: FileKind::State, bytes: serde_json::to_vec_pretty(value)?, shapes: vec![] })
    }
}

/// A burnpack file with its tensors in name order. Burn writes an optimizer's state from a hash map, in an order
/// that changes from run to run: the same state would give different bytes and checksums, and a resumed run could
/// not be compared byte for byte with an uninterrupted one. The loader looks tensors up by name.
fn sorted_burnpack(bytes: Bytes) -> Result<Vec<u8>, burn_pack::Error> {
    let reader = burn_pack::Reader::from_bytes(bytes)?;
    let (scalars, metadata) = (reader.scalars().clone(), reader.metadata().clone());
    let mut tensors = reader.into_tensors()?;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut writer = burn_pack::Writer::new(tensors);
    for (key, value) in &scalars {
        writer = writer.with_scalar(key, *value);
    }
    for (key, value) in &metadata {
        writer = writer.with_metadata(key, value);
    }
    Ok(writer.into_bytes()?.to_vec())
}

/// The `checkpoints/` folder of a run.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

fn step_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// The step of a checkpoint directory name `step-NNNNNN` (any number of digits), else `None`.
pub fn step_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("step-")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// Write a complete checkpoint for `step` and make it the latest; keep the newest `keep` checkpoints.
pub fn save(run: &Path, model_kind: ModelKind, step: usize, artifacts: &[Artifact], keep: usize) -> Result<PathBuf> {
    let root = checkpoints_dir(run);
    crate::atomic::refuse_linked_folder(&root)?;
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let name = step_name(step);
    let tmp = root.join(format!(".{name}.tmp"));
    remove_leftover(&tmp)?;
    fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut files = Vec::new();
    for a in artifacts {
        let path = tmp.join(a.name);
        write_synced(&path, &a.bytes)?;
        files.push(FileEntry {
            name: a.name.into(),
            kind: a.kind,
            sha256: sha256_hex(&a.bytes),
            bytes: a.bytes.len() as u64,
            shapes: a.shapes.clone(),
        });
    }
    let manifest = Manifest { format: FORMAT.into(), model_kind, step, files };
    write_synced(&tmp.join("manifest.json"), &serde_json::to_vec_pretty(&manifest)?)?;
    let dest = root.join(&name);
    if dest.exists() {
        // Re-saving the same step (a resumed run): move the old one aside first, then drop it.
        let old = root.join(format!(".{name}.old"));
        remove_leftover(&old)?;
        fs::rename(&dest, &old).with_context(|| format!("cannot move {} aside", dest.display()))?;
        fs::rename(&tmp, &dest).with_context(|| format!("cannot move checkpoint into {}", dest.display()))?;
        fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    } else {
        fs::rename(&tmp, &dest).with_context(|| format!("cannot move checkpoint into {}", dest.display()))?;
    }
    let latest_tmp = root.join(".latest.tmp");
    write_synced(&latest_tmp, name.as_bytes())?;
    let latest = root.join("latest");
    fs::rename(&latest_tmp, &latest).with_context(|| format!("cannot update {}", latest.display()))?;
    prune(&root, step, keep)?;
    Ok(dest)
}

/// Remove a leftover of an interrupted save (a directory, a file, or a symlink planted there: the link itself is
/// removed, never what it points at).
fn remove_leftover(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).with_context(|| format!("cannot clear stale {}", path.display()))
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("cannot clear stale {}", path.display())),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = crate::atomic::create_fresh(path)?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))
}

/// Prune as [`save`] does after writing `current`: for a run that ends without a save of its own (resumed at its
/// last step after a kill between that step's checkpoint and its pruning).
pub fn prune_after(run: &Path, current: usize, keep: usize) -> Result<()> {
    prune(&checkpoints_dir(run), current, keep)
}

/// Keep the newest `keep` checkpoints up to `current` (the one just written and named by `latest`), ordered by
/// step number (not by name: `step-1000000` sorts before `step-999999`). Checkpoints with a higher step than
/// `current` belong to an earlier run in the same folder and are left alone. A checkpoint is renamed to a hidden
/// name before it is deleted, so a kill mid-deletion leaves no half-deleted `step-*` directory behind (hidden
/// leftovers are cleared here on the next save).
fn prune(root: &Path, current: usize, keep: usize) -> Result<()> {
    let entries: Vec<(String, PathBuf)> = fs::read_dir(root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path())))
        .collect();
    for (name, path) in &entries {
        if name.starts_with(".step-") && name.ends_with(".trash") {
            fs::remove_dir_all(path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let mut steps: Vec<(usize, PathBuf)> = entries
        .into_iter()
        .filter_map(|(name, path)| step_of(&name).map(|s| (s, path)))
        .filter(|(s, _)| *s <= current)
        .collect();
    steps.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    for (step, path) in steps.into_iter().skip(keep.max(1)) {
        debug_assert!(step < current, "the checkpoint just written is always kept");
        let trash = root.join(format!(".{}.trash", step_name(step)));
        fs::rename(&path, &trash).with_context(|| format!("cannot prune {}", path.display()))?;
        fs::remove_dir_all(&trash).with_context(|| format!("cannot prune {}", trash.display()))?;
    }
    Ok(())
}

/// The newest complete checkpoint of a run, or of a checkpoint directory given directly.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join("manifest.json").exists() {
        return Ok(path.to_path_buf());
    }
    let latest = checkpoints_dir(path).join("latest");
    let name = fs::read_to_string(&latest).with_context(|| {
        format!("{}: no checkpoint found (expected {} or a manifest.json)", path.display(), latest.display())
    })?;
    // `latest` names a sibling directory and nothing else (never `../..` or an absolute path).
    let name = name.trim();
    if step_of(name).is_none() {
        bail!("{}: expected the name of a checkpoint directory (step-NNNNNN), got {name:?}", latest.display());
    }
    Ok(checkpoints_dir(path).join(name))
}

/// [`resolve`], or, when `checkpoints/latest` is missing (deleted, or lost in a copy), the newest `step-N`
/// directory that holds a manifest: what `--resume` continues from. Its files are verified when it is opened.
pub fn resolve_newest(path: &Path) -> Result<PathBuf> {
    let latest = checkpoints_dir(path).join("latest");
    if path.join("manifest.json").exists() || fs::symlink_metadata(&latest).is_ok() {
        return resolve(path);
    }
    let newest = fs::read_dir(checkpoints_dir(path))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((step_of(e.file_name().to_str()?)?, e.path())))
        .filter(|(_, p)| p.join("manifest.json").exists())
        .max_by_key(|(s, _)| *s);
    match newest {
        Some((_, dir)) => Ok(dir),
        None => resolve(path),
    }
}

/// A checkpoint opened and verified: every file exists, has its recorded size and SHA-256.
pub struct Checkpoint {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// Its verified manifest.
    pub manifest: Manifest,
}

impl Checkpoint {
    /// Open `path` (a run or a checkpoint directory), check the format and the model kind, verify every file.
    pub fn open(path: &Path, expected_kind: ModelKind) -> Result<Self> {
        let ck = Self::open_any(path)?;
        if ck.manifest.model_kind != expected_kind {
            bail!(
                "{}: this checkpoint holds a {} model, but a {expected_kind} model was expected",
                ck.dir.display(),
                ck.manifest.model_kind
            );
        }
        Ok(ck)
    }

    /// Open and verify `path` whatever model kind it holds.
    pub fn open_any(path: &Path) -> Result<Self> {
        let dir = resolve(path)?;
        let mpath = dir.join("manifest.json");
        let text = fs::read_to_string(&mpath).with_context(|| format!("cannot read {}", mpath.display()))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a tilt checkpoint manifest", mpath.display()))?;
        if manifest.format != FORMAT {
            bail!("{}: format {:?} is not {FORMAT:?}", mpath.display(), manifest.format);
        }
        let dir_step = dir.file_name().and_then(|n| n.to_str()).and_then(step_of);
        if dir_step.is_some_and(|s| s != manifest.step) {
            bail!(
                "{}: the manifest is for step {}, but the directory is {}",
                mpath.display(),
                manifest.step,
                dir.display()
            );
        }
        for f in &manifest.files {
            let p = dir.join(&f.name);
            let bytes =
                fs::read(&p).with_context(|| format!("{}: missing or unreadable checkpoint file", p.display()))?;
            if bytes.len() as u64 != f.bytes {
                bail!(
                    "{}: truncated or resized: {} bytes on disk, {} recorded in the manifest",
                    p.display(),
                    bytes.len(),
                    f.bytes
                );
            }
            if sha256_hex(&bytes) != f.sha256 {
                bail!("{}: checksum mismatch: the file is corrupted or was modified since it was saved", p.display());
            }
        }
        Ok(Self { dir, manifest })
    }

    fn entry(&self, kind: FileKind) -> Result<&FileEntry> {
        self.manifest.file(kind).ok_or_else(|| anyhow!("{}: the manifest lists no {kind:?} file", self.dir.display()))
    }

    fn bytes(&self, kind: FileKind) -> Result<(PathBuf, Vec<u8>)> {
        let e = self.entry(kind)?;
        let p = self.dir.join(&e.name);
        let bytes = fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        Ok((p, bytes))
    }

    /// Load a model file into `init` (a freshly built model of the configured architecture).
    pub fn load_model<M: Module>(&self, kind: FileKind, init: M) -> Result<M> {
        let entry = self.entry(kind)?;
        let path = self.dir.join(&entry.name);
        let want = param_shapes(&init);
        if entry.shapes != want {
            let i =
                entry.shapes.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(entry.shapes.len().min(want.len()));
            bail!(
                "{}: architecture mismatch: parameter {i} has shape {:?} in the checkpoint but the config builds {:?} ({} vs {} tensors)",
                path.display(),
                entry.shapes.get(i),
                want.get(i),
                entry.shapes.len(),
                want.len()
            );
        }
        let (path, bytes) = self.bytes(kind)?;
        let record =
            ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        init.try_load_record(record).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// The optimizer state of the checkpoint, loaded into `optim`.
    pub fn load_optimizer(&self, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
        let (path, bytes) = self.bytes(FileKind::Optimizer)?;
        optim.from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// A JSON file of the checkpoint, verified and parsed.
    pub fn load_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T> {
        let p = self.dir.join(name);
        if !self.manifest.files.iter().any(|f| f.name == name) {
            bail!("{}: not listed in the manifest", p.display());
        }
        let text = fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: malformed", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_artifact(step: usize) -> Artifact {
        Artifact {
            name: "state.json",
            kind: FileKind::State,
            bytes: format!("{{\"step\":{step}}}").into(),
            shapes: vec![],
        }
    }

    fn step_dirs(run: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(checkpoints_dir(run))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
            .filter(|n| n != "latest")
            .collect();
        names.sort();
        names
    }

    #[test]
    fn pruning_goes_by_step_number_across_a_digit_boundary() {
        let dir = tempfile::tempdir().unwrap();
        for step in [999_980, 999_990, 1_000_000, 1_000_010] {
            save(dir.path(), ModelKind::ScoreNet, step, &[state_artifact(step)], 1).unwrap();
            let latest = Checkpoint::open(dir.path(), ModelKind::ScoreNet).unwrap();
            assert_eq!(latest.manifest.step, step, "latest must name the checkpoint just written");
        }
        assert_eq!(step_dirs(dir.path()), ["step-1000010"]);
    }

    #[test]
    fn checkpoints_of_an_earlier_run_with_higher_steps_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        for step in [40, 60] {
            save(dir.path(), ModelKind::ScoreNet, step, &[state_artifact(step)], 2).unwrap();
        }
        fs::remove_file(checkpoints_dir(dir.path()).join("latest")).unwrap();
        for step in [10, 20, 30] {
            save(dir.path(), ModelKind::ScoreNet, step, &[state_artifact(step)], 2).unwrap();
            assert_eq!(Checkpoint::open(dir.path(), ModelKind::ScoreNet).unwrap().manifest.step, step);
        }
        assert_eq!(step_dirs(dir.path()), ["step-000020", "step-000030", "step-000040", "step-000060"]);
    }

    #[test]
    fn latest_must_name_a_sibling_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), ModelKind::ScoreNet, 5, &[state_artifact(5)], 1).unwrap();
        fs::write(checkpoints_dir(dir.path()).join("latest"), "../../etc").unwrap();
        let err = format!("{:#}", Checkpoint::open(dir.path(), ModelKind::ScoreNet).err().unwrap());
        assert!(err.contains("expected the name of a checkpoint directory"), "{err}");
    }

    #[test]
    fn a_manifest_for_another_step_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), ModelKind::ScoreNet, 5, &[state_artifact(5)], 1).unwrap();
        let root = checkpoints_dir(dir.path());
        fs::rename(root.join("step-000005"), root.join("step-000007")).unwrap();
        fs::write(root.join("latest"), "step-000007").unwrap();
        let err = format!("{:#}", Checkpoint::open(dir.path(), ModelKind::ScoreNet).err().unwrap());
        assert!(err.contains("the manifest is for step 5"), "{err}");
    }

    #[test]
    fn step_names_parse_only_digits() {
        assert_eq!(step_of("step-000042"), Some(42));
        assert_eq!(step_of("step-1000010"), Some(1_000_010));
        assert_eq!(step_of("step-"), None);
        assert_eq!(step_of("step-12a"), None);
        assert_eq!(step_of("../step-1"), None);
    }
}
