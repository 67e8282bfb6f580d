//! An MLP autoencoder from flattened images to a small latent code, for latent diffusion on the CPU.
//!
//! MLP rather than convolutional: measured on this project's 2-core machines, one training step of the smallest
//! useful conv U-Net (16 channels, batch 64, 28 x 28) takes 1.5 s on Burn's Flex backend, while dense layers
//! of this size take milliseconds, so the image experiment runs in latent space with the existing MLP score
//! network (the papers' ImageNet experiment is latent diffusion too).

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{silu, tanh};

/// An MLP autoencoder of flat rows (latent diffusion's encoder and decoder).
#[derive(Config, Debug)]
pub struct AutoencoderConfig {
    /// Values per input row (784 for 28 x 28 images).
    pub dim: usize,
    /// Width of the code.
    #[config(default = 16)]
    pub latent: usize,
    /// Width of the hidden layers.
    #[config(default = 512)]
    pub hidden: usize,
}

/// An MLP encoder and decoder.
#[derive(Module, Debug)]
pub struct Autoencoder {
    enc1: Linear,
    enc2: Linear,
    enc3: Linear,
    dec1: Linear,
    dec2: Linear,
    dec3: Linear,
}

impl AutoencoderConfig {
    /// The autoencoder, freshly initialised on `device`.
    pub fn init(&self, device: &Device) -> Autoencoder {
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        let (h, l) = (self.hidden, self.latent);
        Autoencoder {
            enc1: lin(self.dim, h),
            enc2: lin(h, h / 2),
            enc3: lin(h / 2, l),
            dec1: lin(l, h / 2),
            dec2: lin(h / 2, h),
            dec3: lin(h, self.dim),
        }
    }
}

impl Autoencoder {
    /// Latent codes `[n, latent]` of rows `[n, dim]`.
    pub fn encode(&self, x: Tensor<2>) -> Tensor<2> {
        self.enc3.forward(silu(self.enc2.forward(silu(self.enc1.forward(x)))))
    }

    /// Rows `[n, dim]` in [-1, 1] (the range images are scaled to) from codes `[n, latent]`.
    pub fn decode(&self, z: Tensor<2>) -> Tensor<2> {
        tanh(self.dec3.forward(silu(self.dec2.forward(silu(self.dec1.forward(z))))))
    }

    /// Encode and decode: the reconstruction of `x`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.decode(self.encode(x))
    }
}
