#![warn(missing_docs)]
//! tilt-models: the networks tilt trains, each a `#[derive(Module)]` struct with a `#[derive(Config)]` config
//! and `XxxConfig::init(&device)`, plus adapters that plug them into the sampler's [`tilt_core::ScoreModel`]
//! and [`tilt_core::Classifier`] interfaces.
//!
//! - [`score_net`]: residual MLP score network in the noise parametrisation, with a sinusoidal time embedding and
//!   an optional class embedding that has an extra null label for classifier-free guidance; the small residual
//!   term `delta_theta` of reward-weighted training is the same network with a zero-initialised output;
//! - [`unet`]: the pixel U-Net for images, a compact configuration of diffusers' `UNet2DModel`;
//! - [`diffusers`]: diffusers' `UNet2DModel` (config, blocks, loader of a model folder) as a [`NoiseNet`];
//! - [`autoencoder`]: an MLP autoencoder to a small latent code (latent diffusion on the CPU);
//! - [`classifier`]: a noise-aware classifier `p_t(c | x)`;
//! - [`evaluator`]: the independent CNN that measures generated images (trained on clean images only);
//! - [`noise_net`]: the [`NoiseNet`] trait every noise-prediction network implements;
//! - [`norm_silu`]: GroupNorm followed by SiLU, one operation each way on Flex;
//! - [`adapters`]: [`adapters::NetScore`] (for any [`NoiseNet`]) and [`adapters::NetClassifier`].

/// Trained networks behind the sampler's traits (`NetScore`, `NetClassifier`).
pub mod adapters;
/// The MLP autoencoder of latent diffusion.
pub mod autoencoder;
/// The noise-aware classifier.
pub mod classifier;
/// diffusers' `UNet2DModel`: loader, network and its `NoiseNet`.
pub mod diffusers;
/// Sinusoidal time embeddings.
pub mod embedding;
/// The evaluator CNN.
pub mod evaluator;
/// The trait every score network implements.
pub mod noise_net;
/// GroupNorm followed by SiLU as one operation (fused on Flex).
pub mod norm_silu;
/// The residual MLP score network.
pub mod score_net;
/// The pixel U-Net.
pub mod unet;

pub use adapters::{NetClassifier, NetScore};
pub use autoencoder::{Autoencoder, AutoencoderConfig};
pub use classifier::{NoisyClassifier, NoisyClassifierConfig};
pub use evaluator::{Evaluator, EvaluatorConfig};
pub use noise_net::NoiseNet;
pub use score_net::{Activation, ScoreNet, ScoreNetConfig};
pub use unet::{UNet, UNetConfig};
