//! `tilt reproduce`: the papers' experiments (docs/theory.md §7), each a config under `configs/experiments/`, run
//! as stages that write `<out>/<experiment>/{results.csv, summary.json, *.png}` and one `<out>/report.md`.
//!
//! A stage that fails is recorded in the report and the others still run; a stage whose outputs are complete
//! (its `summary.json` and every file it lists exist) is skipped unless `--force`. Trained models shared by
//! several stages live in `<out>/_models/`, trained on first use.

mod cfg_mixture;
mod discretisation;
mod efficiency;
mod guidance_zoo;
mod image_cfg;
mod image_guidance;
mod parametrisations;
mod report;
mod reward_mixture;
mod robustness;
mod swiss_roll;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tilt_core::{GaussianMixture, MixtureSpec, tensor_ext};
use tilt_sampler::{GuidedScore, NoiseSource, Sampler, SamplerKind, TimeGrid};

/// How big a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Seconds: for the smoke test.
    Tiny,
    /// A few minutes on 2 CPU cores: the README's main command.
    Fast,
    /// What docs/results.md shows.
    Full,
}

/// A value per preset, or one value for all: `steps = { tiny = 10, fast = 100, full = 400 }` or `steps = 100`.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum PerPreset<T> {
    One(T),
    Each { tiny: T, fast: T, full: T },
}

/// By hand rather than `#[serde(untagged)]`: an untagged enum reports only "data did not match any variant",
/// without the entry or the value at fault; this names the preset and keeps the inner error (and its value).
impl<'de, T: DeserializeOwned> Deserialize<'de> for PerPreset<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = toml::Value::deserialize(d)?;
        if let toml::Value::Table(t) = &v
            && t.keys().any(|k| ["tiny", "fast", "full"].contains(&k.as_str()))
        {
            if let Some(k) = t.keys().find(|k| !["tiny", "fast", "full"].contains(&k.as_str())) {
                return Err(D::Error::custom(format!("unknown preset `{k}`, expected tiny, fast and full")));
            }
            let get = |k: &str| -> Result<T, D::Error> {
                let x =
                    t.get(k).ok_or_else(|| D::Error::custom(format!("missing `{k}` (give tiny, fast and full)")))?;
                T::deserialize(x.clone()).map_err(|e| D::Error::custom(format!("{k}: {e}")))
            };
            return Ok(PerPreset::Each { tiny: get("tiny")?, fast: get("fast")?, full: get("full")? });
        }
        T::deserialize(v).map(PerPreset::One).map_err(D::Error::custom)
    }
}

impl<T: Clone> PerPreset<T> {
    pub fn get(&self, p: Preset) -> T {
        match self {
            PerPreset::One(v) => v.clone(),
            PerPreset::Each { tiny, fast, full } => match p {
                Preset::Tiny => tiny.clone(),
                Preset::Fast => fast.clone(),
                Preset::Full => full.clone(),
            },
        }
    }
}

/// A markdown table (also written as `results.csv` for the first table of a stage).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(caption: &str, header: &[&str]) -> Self {
        Self { caption: caption.into(), header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// What a stage produced; saved as its `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageOutput {
    pub name: String,
    pub title: String,
    /// A short reading of the numbers (markdown).
    pub reading: String,
    pub tables: Vec<Table>,
    /// `(file name in the stage directory, caption)`.
    pub figures: Vec<(String, String)>,
    /// Headline numbers, for tests and for docs.
    pub headline: serde_json::Value,
    pub config: serde_json::Value,
    pub preset: Preset,
    pub seed: u64,
    pub seconds: f64,
    pub tilt_version: String,
    pub device: String,
}

/// Shared by the stages of one `tilt reproduce`.
pub struct Ctx {
    pub preset: Preset,
    pub device: Device,
    pub out: PathBuf,
    pub progress: MultiProgress,
    pub force: bool,
}

impl Ctx {
    /// A progress bar for `len` units of work of one stage.
    pub fn bar(&self, stage: &str, len: u64) -> ProgressBar {
        let bar = self.progress.add(ProgressBar::new(len));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>16} [{bar:28}] {pos}/{len} {msg} {elapsed_precise}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(stage.to_string());
        bar
    }

    /// A line above the progress bars (or on stderr when they are hidden, e.g. not a terminal).
    pub fn say(&self, line: String) {
        if self.progress.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.progress.println(line);
        }
    }

    pub fn models_dir(&self) -> PathBuf {
        self.out.join("_models")
    }

    /// Train `cfg` into `_models/<name>` unless a finished run is there; returns the run directory.
    pub fn trained(&self, name: &str, cfg: &tilt_train::TrainConfig) -> Result<PathBuf> {
        let dir = self.models_dir().join(name);
        if tilt_train::checkpoint::resolve(&dir).is_ok() {
            // Verified, finished, trained with this very config and on these very data: reuse; anything else is
            // retrained. The data matter beside the config: a data file written by an earlier stage (latent codes)
            // can change under the same path.
            let data_sha256 = cfg.data.generate(cfg.data_size, cfg.seed)?.sha256();
            if tilt_train::load::run_state(&dir).is_ok_and(|s| {
                s.step == cfg.steps && s.config == *cfg && s.data_sha256.as_deref() == Some(data_sha256.as_str())
            }) {
                return Ok(dir);
            }
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear stale model run {}", dir.display()))?;
        }
        let bar = self.bar(&format!("train {name}"), cfg.steps as u64);
        let r = tilt_train::train(cfg, &dir, tilt_train::Start::New, &self.device, &mut |p| {
            bar.set_position(p.step as u64);
            bar.set_message(format!("loss {:.4}", p.loss));
        });
        bar.finish_and_clear();
        r.with_context(|| format!("training the shared model {name}"))?;
        Ok(dir)
    }
}

/// One experiment: its name (`--only`, the output folder), its built-in config and the function that runs it.
pub struct Stage {
    pub name: &'static str,
    embedded: &'static str,
    run: fn(&Ctx, &Path) -> Result<StageOutput>,
}

/// A stage of module `$m`, with its config `configs/experiments/$m.toml` compiled in.
macro_rules! stage {
    ($m:ident) => {
        Stage {
            name: stringify!($m),
            embedded: include_str!(concat!("../../../configs/experiments/", stringify!($m), ".toml")),
            run: $m::run,
        }
    };
}

/// The experiments, in report order: the one registry of `reproduce`.
pub const STAGES: &[Stage] = &[
    stage!(cfg_mixture),
    stage!(reward_mixture),
    stage!(swiss_roll),
    stage!(robustness),
    stage!(efficiency),
    stage!(discretisation),
    stage!(parametrisations),
    stage!(guidance_zoo),
    stage!(image_cfg),
    stage!(image_guidance),
];

/// The stage names, comma-separated (for help and errors).
pub fn stage_names() -> String {
    STAGES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

/// Read a stage's experiment config: `configs/experiments/<name>.toml` under the working directory if present,
/// else the copy compiled into the binary.
pub fn stage_config<T: DeserializeOwned>(name: &str) -> Result<(T, serde_json::Value)> {
    let embedded = STAGES.iter().find(|s| s.name == name).map_or("", |s| s.embedded);
    let (text, origin) = stage_config_text(name, embedded);
    let cfg: T = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!("{origin}: {}", tilt_train::toml_error::explain(&text, e.to_string().trim_end()))
    })?;
    let raw: toml::Value = toml::from_str(&text)?;
    check_stage_numbers(&raw, String::new()).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    Ok((cfg, serde_json::to_value(raw)?))
}

/// The bounds every stage config shares, checked over every preset's values before a stage runs: counts (steps,
/// samples, widths, budgets) at least 1, floats finite and within ±1e6 and, unless 0, at least 1e-30 in size.
/// `seed` and `class` may be 0; mixtures are checked by their own validation (`MixtureSpec::build`).
fn check_stage_numbers(v: &toml::Value, path: String) -> Result<(), String> {
    let key = path.rsplit('.').next().unwrap_or_default().split('[').next().unwrap_or_default().to_string();
    match v {
        toml::Value::Integer(i) if *i < 1 && !["seed", "class"].contains(&key.as_str()) => {
            Err(format!("{path}: expected a count of at least 1, got {i}"))
        }
        toml::Value::Float(x) if !(x.is_finite() && x.abs() <= 1e6 && (*x == 0.0 || x.abs() >= 1e-30)) => {
            Err(format!("{path}: expected a finite value within ±1e6 (0, or at least 1e-30 in size), got {x}"))
        }
        toml::Value::Table(t) => t.iter().filter(|(k, _)| !k.ends_with("mixture")).try_for_each(|(k, x)| {
            check_stage_numbers(x, if path.is_empty() { k.clone() } else { format!("{path}.{k}") })
        }),
        toml::Value::Array(a) => {
            a.iter().enumerate().try_for_each(|(i, x)| check_stage_numbers(x, format!("{path}[{i}]")))
        }
        _ => Ok(()),
    }
}

/// The text of a stage's config and where it came from (see [`stage_config`]).
fn stage_config_text(name: &str, embedded: &str) -> (String, String) {
    let path = Path::new("configs/experiments").join(format!("{name}.toml"));
    match std::fs::read_to_string(&path) {
        Ok(t) => (t, path.display().to_string()),
        Err(_) => (embedded.to_string(), format!("built-in {name}.toml")),
    }
}

/// A data file named relative to the repository: from the working directory if it is there, else from the
/// source tree this binary was built from (so `tilt reproduce` finds the shipped data from any directory).
pub fn data_path(path: &str) -> String {
    let p = Path::new(path);
    if p.is_relative() && !p.exists() {
        let in_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
        if in_tree.exists() {
            return in_tree.display().to_string();
        }
    }
    path.to_string()
}

const STAGE_MANIFEST: &str = "manifest.json";

/// What a completed stage wrote, for whom: a stage counts as complete only if this preset and this config
/// produced every file it lists, byte for byte. It is removed before a stage starts writing and written after
/// its last file, so a killed run, another preset's run or an edited config never passes as complete.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct StageManifest {
    preset: Preset,
    config_sha256: String,
    /// `(file name in the stage directory, SHA-256)`.
    files: Vec<(String, String)>,
}

fn file_sha256(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| tilt_train::checkpoint::sha256_hex(&b))
}

fn write_stage_manifest(dir: &Path, preset: Preset, config_sha256: String, s: &StageOutput) -> Result<()> {
    let names = ["summary.json".to_string(), "results.csv".to_string()]
        .into_iter()
        .chain(s.figures.iter().map(|f| f.0.clone()));
    let files = names.filter_map(|n| Some((n.clone(), file_sha256(&dir.join(&n))?))).collect();
    crate::output::write_json(&dir.join(STAGE_MANIFEST), &StageManifest { preset, config_sha256, files })
}

/// The stage's summary, if its outputs are complete for `preset` and the config whose hash is `config_sha256`.
fn complete(dir: &Path, preset: Preset, config_sha256: &str) -> Option<StageOutput> {
    let m: StageManifest = serde_json::from_str(&std::fs::read_to_string(dir.join(STAGE_MANIFEST)).ok()?).ok()?;
    if m.preset != preset || m.config_sha256 != config_sha256 {
        return None;
    }
    if !m.files.iter().all(|(name, sha)| file_sha256(&dir.join(name)).as_deref() == Some(sha.as_str())) {
        return None;
    }
    let s: StageOutput = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).ok()?).ok()?;
    let listed = |n: &str| m.files.iter().any(|(f, _)| f == n);
    (s.preset == preset && listed("summary.json") && listed("results.csv") && s.figures.iter().all(|f| listed(&f.0)))
        .then_some(s)
}

/// The outcome of one stage in the report.
pub enum Outcome {
    Done(StageOutput),
    Skipped(StageOutput),
    Failed(String, String),
}

/// Run the selected stages and write the report; returns the outcomes (the command fails if any stage failed).
pub fn run(preset: Preset, only: &[String], out: &Path, force: bool, device: &Device) -> Result<Vec<Outcome>> {
    for name in only {
        if !STAGES.iter().any(|s| s.name == name) {
            bail!("--only {name}: unknown experiment; expected one of {}", stage_names());
        }
    }
    // Locked for the whole run; an earlier reproduce here is continued (complete stages are skipped).
    let _dir = tilt_train::OutputDir::claim(out, tilt_train::OutputKind::Reproduce, force)?;
    let ctx = Ctx { preset, device: device.clone(), out: out.to_path_buf(), progress: MultiProgress::new(), force };
    let selected: Vec<&Stage> = STAGES.iter().filter(|s| only.is_empty() || only.iter().any(|o| o == s.name)).collect();
    let overall = ctx.progress.add(ProgressBar::new(selected.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:28}] {pos}/{len} stages {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    overall.set_prefix("reproduce");
    let mut outcomes = Vec::new();
    for stage in selected {
        let name = stage.name;
        overall.set_message(name.to_string());
        let dir = out.join(name);
        let config_sha256 = tilt_train::checkpoint::sha256_hex(stage_config_text(name, stage.embedded).0.as_bytes());
        if !ctx.force
            && let Some(s) = complete(&dir, preset, &config_sha256)
        {
            outcomes.push(Outcome::Skipped(s));
            overall.inc(1);
            continue;
        }
        let start = Instant::now();
        // The manifest goes first: from here until the stage's last file is written, it is not complete.
        let prepare = || -> Result<()> {
            tilt_train::atomic::refuse_linked_folder(&dir)?;
            tilt_train::atomic::refuse_linked_folder(&ctx.models_dir())?;
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            for f in [STAGE_MANIFEST, "summary.json"] {
                match std::fs::remove_file(dir.join(f)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("cannot remove {}", dir.join(f).display()));
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        // A panic inside a stage (a backend error, say) is a failed stage, not a failed report.
        let result = prepare().and_then(|_| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (stage.run)(&ctx, &dir))).unwrap_or_else(|p| {
                Err(anyhow::anyhow!(
                    "panicked: {}",
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                ))
            })
        });
        let result = result.and_then(|mut s| {
            s.seconds = start.elapsed().as_secs_f64();
            if let Some(t) = s.tables.first() {
                write_csv(&dir.join("results.csv"), t)?;
            }
            crate::output::write_json(&dir.join("summary.json"), &s)?;
            write_stage_manifest(&dir, preset, config_sha256.clone(), &s)?;
            Ok(s)
        });
        match result {
            Ok(s) => {
                ctx.say(format!("{name}: done in {:.1} s", s.seconds));
                outcomes.push(Outcome::Done(s));
            }
            Err(e) => {
                let msg = format!("{e:#}");
                ctx.say(format!("{name}: FAILED: {msg}"));
                let _ = std::fs::remove_file(dir.join(STAGE_MANIFEST));
                let _ = std::fs::remove_file(dir.join("summary.json"));
                outcomes.push(Outcome::Failed(name.to_string(), msg));
            }
        }
        overall.inc(1);
    }
    overall.finish_and_clear();
    report::write(&out.join("report.md"), preset, device, &outcomes)?;
    Ok(outcomes)
}

fn write_csv(path: &Path, t: &Table) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&t.header)?;
    for r in &t.rows {
        w.write_record(r)?;
    }
    crate::output::write_atomic(path, &w.into_inner()?)
}

impl StageOutput {
    pub fn new(name: &str, title: &str, ctx: &Ctx, config: serde_json::Value, seed: u64) -> Self {
        Self {
            name: name.into(),
            title: title.into(),
            reading: String::new(),
            tables: Vec::new(),
            figures: Vec::new(),
            headline: serde_json::json!({}),
            config,
            preset: ctx.preset,
            seed,
            seconds: 0.0,
            tilt_version: env!("CARGO_PKG_VERSION").into(),
            device: crate::device::describe(&ctx.device),
        }
    }
}

// ---- helpers shared by the stages ----

/// The overlapping 2-D mixture of the papers' experiments (also `configs/cfg_sweep.toml`).
pub fn experiment_mixture(spec: &MixtureSpec) -> Result<GaussianMixture> {
    spec.build().map_err(|e| anyhow::anyhow!("mixture.{e}"))
}

/// A sampler of `kind` with `steps` on the default (log-SNR) grid.
pub fn sampler(kind: SamplerKind, steps: usize, schedule: tilt_core::Schedule) -> Sampler {
    Sampler::new(kind, schedule, TimeGrid::LogSnr, steps)
}

/// Draw `n` samples with a guided score, host-seeded; returns host rows.
pub fn draw(s: &Sampler, guided: &mut GuidedScore, n: usize, d: usize, seed: u64, device: &Device) -> Vec<f32> {
    let mut noise = NoiseSource::host(seed);
    tensor_ext::to_vec(s.draw(guided, n, d, device, &mut noise))
}

/// `max_k (|mean_k|_inf + 8 max std_k)`: no exact sample of the mixture, nor of a moderate tilt of it, lies beyond.
pub fn divergence_limit(m: &GaussianMixture) -> f64 {
    (0..m.n_components())
        .map(|k| {
            let mean = m.means[k].iter().fold(0.0f64, |a, v| a.max(v.abs()));
            mean + 8.0 * m.stds[k].iter().fold(0.0f64, |a, v| a.max(*v))
        })
        .fold(0.0, f64::max)
}

/// The fraction of the rows of `x` (`d` columns) with a coordinate beyond `limit` or not finite: chains that left
/// the data, whose rewards are samples of no law and dominate any mean.
pub fn diverged_fraction(x: &[f32], d: usize, limit: f64) -> f64 {
    let beyond = x.chunks_exact(d).filter(|r| r.iter().any(|v| !v.is_finite() || v.abs() as f64 > limit));
    beyond.count() as f64 / (x.len() / d).max(1) as f64
}

/// `E[r(Y)]` with standard error, for `log r` given as a reward.
pub fn mean_reward(reward: &dyn tilt_core::Reward, x: &[f32], d: usize, device: &Device) -> tilt_core::metrics::MeanSe {
    tilt_core::metrics::mean_se(&rewards(reward, x, d, device))
}

/// `r(y)` of every sample.
pub fn rewards(reward: &dyn tilt_core::Reward, x: &[f32], d: usize, device: &Device) -> Vec<f64> {
    let lr = tensor_ext::to_vec_f64(reward.log_reward(tensor_ext::matrix(x, x.len() / d, d, device)));
    lr.into_iter().map(f64::exp).collect()
}

/// `m` against an exact value, in words computed from the numbers: `2.9020 ± 0.0230, +0.07 SE from 2.9005
/// (consistent)` or `... -3.10 SE from ... (differs)`. Two standard errors is the line.
pub fn versus(m: tilt_core::metrics::MeanSe, exact: f64) -> String {
    let z = (m.mean - exact) / m.se;
    let verdict = if z.abs() <= 2.0 { "consistent" } else { "differs" };
    format!("{:.4} ± {:.4}, {z:+.2} SE from {exact:.4} ({verdict})", m.mean, m.se)
}

/// `f` formatted with `digits` decimals.
pub fn fmt(v: f64, digits: usize) -> String {
    format!("{v:.digits$}")
}

/// The reward of an experiment that needs the closed-form tilt (`kind = "exp-linear"`).
pub fn exact_reward(spec: &tilt_core::RewardSpec) -> Result<tilt_core::ExpLinearReward> {
    spec.exp_linear().ok_or_else(|| {
        anyhow::anyhow!("reward.kind: this experiment needs \"exp-linear\" (the closed-form tilt of the mixture)")
    })
}

/// The training part of an experiment config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub steps: PerPreset<usize>,
    pub hidden: PerPreset<usize>,
    #[serde(default = "two")]
    pub blocks: usize,
    #[serde(default = "batch")]
    pub batch_size: usize,
    #[serde(default = "p_uncond")]
    pub p_uncond: f64,
    #[serde(default = "lr")]
    pub lr: f64,
}

fn two() -> usize {
    2
}
fn batch() -> usize {
    512
}
fn p_uncond() -> f64 {
    0.2
}
fn lr() -> f64 {
    2e-3
}

impl TrainSpec {
    /// A full training config for `data` and `objective` at this preset.
    pub fn config(
        &self,
        data: tilt_train::DataSpec,
        objective: tilt_train::Objective,
        p: Preset,
        seed: u64,
    ) -> tilt_train::TrainConfig {
        let steps = self.steps.get(p);
        tilt_train::TrainConfig {
            objective,
            data,
            steps,
            seed,
            batch_size: self.batch_size,
            data_size: 20_000,
            test_fraction: 0.1,
            standardize: false,
            schedule: Default::default(),
            t_min: 1e-3,
            model: tilt_train::ModelSpec::mlp(self.hidden.get(p), self.blocks),
            optim: tilt_train::OptimConfig {
                lr: self.lr,
                warmup_steps: (steps / 20).min(200),
                min_lr_ratio: 0.05,
                clip_grad_norm: Some(5.0),
                ema_decay: if steps < 500 { 0.9 } else { 0.995 },
                ..Default::default()
            },
            log_every: 25.min(steps),
            checkpoint_every: steps,
            keep_checkpoints: 1,
        }
    }
}

pub fn mixture_data(spec: &MixtureSpec) -> tilt_train::DataSpec {
    tilt_train::DataSpec::Mixture { mixture: spec.clone() }
}

pub fn dsm(conditional: bool, p_uncond: f64) -> tilt_train::Objective {
    tilt_train::Objective::Dsm(tilt_train::objectives::Dsm { conditional, p_uncond })
}

/// The plotting window of a mixture (every component at 3.5 standard deviations).
pub fn bounds(m: &GaussianMixture) -> crate::plot::Bounds {
    crate::commands::sample::Problem::new(m.clone(), crate::config::GuidanceKind::None, None, None).bounds()
}
