//! Seeded standard-normal noise for the samplers.

use burn::prelude::*;
use burn::tensor::Distribution;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, StandardNormal};

/// Where the sampler's Gaussian noise comes from.
// One per sampler run, passed by `&mut`: boxing the host stream would buy nothing.
/// Where the sampler's Gaussian noise comes from (`sampler.noise`).
#[allow(clippy::large_enum_variant)]
pub enum NoiseSource {
    /// A ChaCha8 stream on the host, uploaded each step: the same seed gives the same noise on every
    /// backend, so samples agree across backends to float rounding.
    Host(ChaCha8Rng),
    /// The backend's own RNG (no upload; reproducible per backend, different across backends).
    Device,
}

impl NoiseSource {
    /// A host ChaCha8 stream seeded by `seed`: the same numbers on every backend.
    pub fn host(seed: u64) -> Self {
        Self::host_stream(seed, 0)
    }

    /// Stream `stream` of the host generator seeded with `seed` (stream 0 is [`NoiseSource::host`]): independent
    /// noise for each chunk of a large sample, the same on every backend.
    pub fn host_stream(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        NoiseSource::Host(rng)
    }

    /// Seeds the device RNG (process-global per backend family, see docs/theory.md §8).
    pub fn device(seed: u64, device: &Device) -> Self {
        device.seed(seed);
        NoiseSource::Device
    }

    /// A `[n, d]` tensor of independent N(0, 1) draws.
    pub fn normal(&mut self, n: usize, d: usize, device: &Device) -> Tensor<2> {
        match self {
            NoiseSource::Host(rng) => {
                let v: Vec<f32> = (0..n * d).map(|_| StandardNormal.sample(rng)).collect();
                Tensor::from_data(TensorData::new(v, [n, d]), device)
            }
            NoiseSource::Device => Tensor::random([n, d], Distribution::Normal(0.0, 1.0), device),
        }
    }
}
