#![warn(missing_docs)]
//! tilt-core: the pieces every other tilt crate stands on.
//!
//! - [`schedule`]: the variance-preserving forward process `X_t = alpha(t) X_0 + sigma(t) Z` and OU time;
//! - [`score`]: the score-model abstraction the samplers call, and the score / noise / clean conversions;
//! - [`mixture`]: Gaussian mixtures with exact noised scores, class posteriors and exponential tilts;
//! - [`reward`]: positive weights `r(x)` written as differentiable `log r(x)`;
//! - [`metrics`]: host-side statistics (mean and standard error, quantiles, MMD, sliced Wasserstein);
//! - [`frechet`]: the Fréchet distance between Gaussians fitted to features (the FID formula).
//!
//! No backend is named here: every tensor lives on the `Device` the caller passes.

/// The Fréchet distance between two sets of feature vectors.
/// Attention perturbations for the PAG/SEG/SLG guidance family.
pub mod attention;
pub mod frechet;
/// Means with standard errors, quantiles, MMD and sliced Wasserstein distances.
pub mod metrics;
/// Gaussian mixtures: exact scores, tilts, classifiers and samples on every schedule.
pub mod mixture;
/// What a network predicts, and the exact maps between each prediction and the score.
pub mod prediction;
/// Rewards `r(x)` through their logarithm.
pub mod reward;
/// Noise schedules and their variance-preserving form.
pub mod schedule;
/// The score-model and classifier traits, and conditions.
pub mod score;
/// Small host/tensor conversions.
pub mod tensor_ext;

pub use attention::{AttentionPerturbation, PerturbedAttention};
pub use mixture::{GaussianMixture, MixtureScore, MixtureSpec};
pub use prediction::{Interpolant, Prediction};
pub use reward::{BumpReward, ExpLinearReward, Reward, RewardSpec};
pub use schedule::BetaSchedule;
pub use schedule::Schedule;
pub use score::{Classifier, Condition, Retimed, ScoreCombination, ScoreModel, SmoothlyPerturbed};
