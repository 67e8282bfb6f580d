//! The training objectives, one file each behind one trait (`TrainObjective`), and the batches they share
//! (`batches`: noised batches toward any prediction, reward weights, seeded initialisation).
//!
//! An objective builds the network it trains and its loss, and hands both to the shared run (`RunContext::run`:
//! state, loop, checkpoints, resume); [`crate::train`] only prepares the data and dispatches. A new objective is a
//! file here plus its arm in [`crate::Objective`].

/// The autoencoder of latent diffusion.
pub mod autoencoder;
pub(crate) mod batches;
/// The noise-aware classifier.
pub mod classifier;
/// Denoising score matching.
pub mod dsm;
/// The evaluator of generated images.
pub mod evaluator;
/// Flow matching.
pub mod flow_matching;
/// The papers' reward-weighted trainer.
pub mod reward_weighted;

pub use autoencoder::Autoencoder;
pub use classifier::Classifier;
pub use dsm::Dsm;
pub use evaluator::Evaluator;
pub use flow_matching::{FlowMatching, TimeSampling};
pub use reward_weighted::{RewardForm, RewardWeighted};

use crate::data::Dataset;
use crate::run::{RunContext, TrainOutcome};
use crate::trainer::Progress;
use anyhow::Result;
use batches::Noising;

/// The data of a run, split and standardised, and how its batches are noised by default.
pub(crate) struct Sets<'a> {
    pub(crate) train: &'a Dataset,
    pub(crate) test: &'a Dataset,
    /// Values per sample.
    pub(crate) dim: usize,
    /// `[channels, height, width]` of image data.
    pub(crate) image: Option<[usize; 3]>,
    /// The run's schedule, `t_min` and prediction, times uniform on `[t_min, 1]`.
    pub(crate) noising: Noising,
}

/// What is trained: builds its network and loss and runs them through the shared loop.
pub(crate) trait TrainObjective {
    fn train(&self, run: &mut RunContext, sets: &Sets, progress: &mut dyn FnMut(&Progress)) -> Result<TrainOutcome>;
}
