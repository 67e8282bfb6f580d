//! tilt-train: a hand-written training loop (Burn's `Learner` has no per-step hooks) for
//! - denoising score matching, unconditional or class-conditional with label dropout (one network for CFG);
//! - noise-aware classifiers;
//! - the papers' trajectory-free reward-weighted score matching (docs/theory.md §4): full, residual and resampling
//!   forms, trained on clean samples only, never running the backward chain.
//!
//! With AdamW/Adam (explicit epsilon and weight decay), warm-up + cosine learning rate, global-norm clipping,
//! EMA with warm-up, NaN/Inf detection, and verified atomic checkpoints that resume bit for bit.

pub mod atomic;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod data;
pub mod ema;
pub mod idx;
pub mod load;
pub mod objectives;
pub mod optim;
pub mod output_dir;
pub mod run;
pub mod toml_error;
pub mod trainer;

pub use atomic::{write_atomic, write_atomic_with};
pub use checkpoint::ModelKind;
pub use config::{ModelSpec, NetKind, Objective, RewardForm, TimeSampling, TrainConfig};
pub use data::{DataSpec, Dataset, Standardizer};
pub use load::{
    LoadedAnyScore, LoadedClassifier, LoadedScore, RunState, load_any_score, load_autoencoder, load_classifier,
    load_evaluator, load_score, load_unet,
};
pub use optim::OptimConfig;
pub use output_dir::{OutputDir, OutputKind, Prior};
pub use run::{Start, TrainOutcome, train};
pub use trainer::{LossPoint, Progress};
