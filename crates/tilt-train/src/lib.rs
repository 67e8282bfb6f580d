#![warn(missing_docs)]
//! tilt-train: a hand-written training loop (Burn's `Learner` has no per-step hooks) for
//! - denoising score matching, unconditional or class-conditional with label dropout (one network for CFG);
//! - noise-aware classifiers;
//! - the papers' trajectory-free reward-weighted score matching (docs/theory.md §4): full, residual and resampling
//!   forms, trained on clean samples only, never running the backward chain.
//!
//! With AdamW/Adam (explicit epsilon and weight decay), warm-up + cosine learning rate, global-norm clipping,
//! EMA with warm-up, NaN/Inf detection, and verified atomic checkpoints that resume bit for bit.

/// Atomic writes and the temporaries they leave.
pub mod atomic;
/// Verified checkpoints: manifests, hashes, `latest`, pruning.
pub mod checkpoint;
/// Global-norm gradient clipping.
pub mod clip;
/// The TOML config of `tilt train`.
pub mod config;
/// Data sets and their standardisation.
pub mod data;
/// The exponential moving average of the weights.
pub mod ema;
/// The IDX (MNIST) file format.
pub mod idx;
/// Folders of PNG/JPEG images, decoded on demand.
pub mod image_folder;
/// Loading trained models for sampling.
pub mod load;
/// `[model]`: the network trained, tagged by kind.
pub mod model_spec;
/// The training objectives, one file each.
pub mod objectives;
/// Optimiser and learning-rate settings.
pub mod optim;
/// Output folders: one writer, recognised contents.
pub mod output_dir;
/// A training run: data, dispatch, checkpoints, resume.
pub mod run;
/// TOML errors that name their field.
pub mod toml_error;
/// The optimisation loop.
pub mod trainer;

pub use atomic::{write_atomic, write_atomic_with};
pub use checkpoint::ModelKind;
pub use config::{CnnSpec, MlpSpec, ModelSpec, NetKind, Objective, RewardForm, TimeSampling, TrainConfig, UNetSpec};
pub use data::{DataSpec, Dataset, Standardizer, Streamed};
pub use load::{
    LoadedAnyScore, LoadedClassifier, LoadedScore, RunState, load_any_score, load_autoencoder, load_classifier,
    load_evaluator, load_score, load_unet,
};
pub use optim::OptimConfig;
pub use output_dir::{OutputDir, OutputKind, Prior};
pub use run::{Start, TrainOutcome, train};
pub use trainer::{LossPoint, Progress};
