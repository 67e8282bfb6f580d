//! Shared test helpers: the CPU device, test mixtures, and a one-call sampler over the exact oracle.
#![allow(dead_code)]

use burn::prelude::*;
use tilt_core::{GaussianMixture, Schedule};
use tilt_sampler::{GuidedScore, NoiseSource, Sampler, SamplerKind, TimeGrid};

pub fn device() -> Device {
    Device::flex()
}

/// Three overlapping components in 2-D; class 0 = {0}, class 1 = {1, 2}. Even here `1/p(c|X)` is heavy-tailed
/// (standard deviation 17 for class 0, no finite fourth moment): its sample standard error is unreliable, so
/// the tests check it at large sample sizes and beside the light-tailed `E[log p(c|Y)]` (docs/theory.md §6).
pub fn overlapping() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.3, 0.45, 0.25],
        vec![vec![-0.8, 0.0], vec![0.8, 0.3], vec![0.2, -0.9]],
        vec![vec![0.7, 0.7], vec![0.6, 0.8], vec![0.8, 0.5]],
        vec![vec![0], vec![1, 2]],
    )
    .unwrap()
}

/// `kind` with `steps` on the default (log-SNR) grid and the default ends.
pub fn sampler(kind: SamplerKind, steps: usize) -> Sampler {
    Sampler::new(kind, Schedule::Linear, TimeGrid::LogSnr, steps)
}

/// Sample `n` rows with a guided score; returns the host copy `[n, d]`.
pub fn draw(sampler: &Sampler, guided: &mut GuidedScore, n: usize, d: usize, seed: u64) -> Vec<f32> {
    let dev = device();
    let mut noise = NoiseSource::host(seed);
    let x = sampler.draw(guided, n, d, &dev, &mut noise);
    tilt_core::tensor_ext::to_vec(x)
}

/// `|a - b| <= z * se`, with a message that shows the numbers.
pub fn assert_within(what: &str, estimate: f64, exact: f64, se: f64, z: f64) {
    assert!(
        (estimate - exact).abs() <= z * se,
        "{what}: estimate {estimate:.5} vs exact {exact:.5}: |diff| = {:.5} > {z} SE = {:.5}",
        (estimate - exact).abs(),
        z * se
    );
}

/// Exact draws of `law`, noised to `t_min` and denoised exactly: what a perfect sampler returns.
pub fn perfect_sampler_output(law: &GaussianMixture, n: usize, seed: u64) -> Vec<f32> {
    tilt_sampler::diagnostics::perfect_denoised_samples(
        law,
        Schedule::Linear,
        tilt_sampler::DEFAULT_T_MIN,
        n,
        seed,
        &device(),
    )
}

/// Max-abs error of `got` against `want`, relative to the largest `|want|` (how ports are compared to PyTorch).
pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let err = got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    err / scale
}
