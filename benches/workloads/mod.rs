//! The workloads of the 2-D score-network benchmarks, shared by `benches/training.rs` (criterion) and
//! `benches/paired.rs` (the tilt side of the paired run against the PyTorch twin in `benches/pytorch/twin.py`).
//!
//! Network: x (2) -> Linear(128); time: 32-d sinusoidal embedding -> Linear(128); one residual block
//! (Linear(128,128), Linear(128,128), conditioning Linear(128,128)); output Linear(128, 2). 54,402 parameters
//! without classes (the training step), 54,786 with the 3-row class embedding (2 classes + null; sampling).
#![allow(dead_code)] // each bench uses its own part

use burn::optim::GradientsParams;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use tilt_core::{Condition, Schedule, tensor_ext};
use tilt_models::{Activation, NetScore, ScoreNet, ScoreNetConfig, UNet, UNetConfig};
use tilt_sampler::guidance::CfgGuidance;
use tilt_sampler::{GuidedScore, NoiseSource, Sampler, SamplerKind, TimeGrid, WeightSchedule};

pub const TRAIN_BATCH: usize = 1024;
pub const SAMPLE_N: usize = 10_000;
pub const SAMPLE_STEPS: usize = 20;
pub const CFG_STRENGTH: f64 = 2.0;

pub fn net_config(act: Activation, classes: usize) -> ScoreNetConfig {
    ScoreNetConfig::new(2)
        .with_hidden(128)
        .with_blocks(1)
        .with_time_dim(32)
        .with_activation(act)
        .with_num_classes(classes)
}

/// The DSM inputs of a batch: times spread evenly over (0, 1) and `x_t = sqrt(1 - t) x0 + sqrt(t) z`.
pub fn diffused(x0: Tensor<2>, z: Tensor<2>) -> (Tensor<2>, Tensor<1>) {
    let n = x0.dims()[0];
    let device = x0.device();
    let t =
        Tensor::<1>::from_data(TensorData::new((0..n).map(|i| (i as f32 + 0.5) / n as f32).collect(), [n]), &device);
    let a = t.clone().neg().add_scalar(1.0).sqrt().reshape([n, 1]);
    let s = t.clone().sqrt().reshape([n, 1]);
    (x0 * a + z * s, t)
}

/// One DSM training step at batch 1024 on fixed inputs: forward, loss, backward, AdamW (PyTorch's defaults but
/// `eps = 1e-8` and no weight decay, as `tilt_train::OptimConfig::default()`).
pub struct TrainStep {
    model: Option<ScoreNet>,
    optim: ModuleOptimizer,
    xt: Tensor<2>,
    t: Tensor<1>,
    z: Tensor<2>,
}

impl TrainStep {
    pub fn new(act: Activation, device: &Device) -> Self {
        let ad = device.clone().autodiff();
        ad.seed(0);
        let model = net_config(act, 0).init(&ad);
        let mut noise = NoiseSource::host(1);
        let x0 = noise.normal(TRAIN_BATCH, 2, &ad);
        let z = noise.normal(TRAIN_BATCH, 2, &ad);
        let (xt, t) = diffused(x0, z.clone());
        Self { model: Some(model), optim: tilt_train::OptimConfig::default().init(), xt, t, z }
    }

    pub fn step(&mut self) {
        let model = self.model.take().expect("model");
        let loss = (model.forward(self.xt.clone(), self.t.clone(), None) - self.z.clone()).square().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(1e-3, model, grads));
    }

    /// The model's output on the training inputs (forces any pending work).
    pub fn output(&self) -> Vec<f32> {
        let m = self.model.as_ref().expect("model");
        tensor_ext::to_vec(m.forward(self.xt.clone().inner(), self.t.clone().inner(), None).inner())
    }
}

/// Sampling 10,000 points (or `n`) with 20 SDE-DPM-Solver-1 steps (the default sampler), plain or with CFG.
pub struct Sampling {
    pub net: NetScore,
    sampler: Sampler,
    cond: Condition,
    device: Device,
    n: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guidance {
    /// The conditional score alone: one network row per point and step.
    Plain,
    /// Classifier-free guidance at w = 2, conditional and unconditional rows in one forward.
    Cfg,
}

impl Sampling {
    pub fn new(device: &Device) -> Self {
        Self::with_rows(device, SAMPLE_N)
    }

    /// The same chains with `n` rows (a sweep of `n / 10,000` strengths batched into one run costs this).
    pub fn with_rows(device: &Device, n: usize) -> Self {
        device.seed(0);
        let net = NetScore::new(net_config(Activation::Silu, 2).init(device), Schedule::Linear, vec![2]);
        let mut sampler = Sampler::new(SamplerKind::SdeDpmSolver1, Schedule::Linear, TimeGrid::LogSnr, SAMPLE_STEPS);
        sampler.denoise_final = false;
        Self { net, sampler, cond: Condition::class(0, n, device), device: device.clone(), n }
    }

    /// One sampling run with `score` as the base model; returns the samples.
    pub fn run_with(&self, base: &dyn tilt_core::ScoreModel, guidance: Guidance) -> Vec<f32> {
        let mut g = GuidedScore::new(base, self.cond.clone());
        if guidance == Guidance::Cfg {
            g = g.with(CfgGuidance::new(), WeightSchedule::Constant(CFG_STRENGTH));
        }
        let mut noise = NoiseSource::host(0);
        let x = self.sampler.sample(
            &mut |x, t, k| g.score(x, t, k),
            self.n,
            2,
            &self.device,
            &mut noise,
            &mut |_, _, _| {},
        );
        tensor_ext::to_vec(x)
    }

    pub fn run(&self, guidance: Guidance) -> Vec<f32> {
        self.run_with(&self.net, guidance)
    }
}

/// The shape of the network's hidden layers in the training step, `[1024, 128] x [128, 128]`: the matrix
/// product alone, to separate the GEMM library's speed from everything around it.
pub fn matmul_operands(device: &Device) -> (Tensor<2>, Tensor<2>) {
    let mut noise = NoiseSource::host(2);
    (noise.normal(TRAIN_BATCH, 128, device), noise.normal(128, 128, device))
}

/// The pixel U-Net of `benches/unet.rs` at its CPU size on 28 x 28 images: 16 base channels, levels x1, x2, x2,
/// one block per level, GroupNorm with 8 groups, 64-d time embedding, 10 classes, attention at the lowest level.
pub fn unet_config(base_channels: usize) -> UNetConfig {
    UNetConfig::new([1, 28, 28])
        .with_base_channels(base_channels)
        .with_channel_mults(vec![1, 2, 2])
        .with_blocks_per_level(1)
        .with_groups(8)
        .with_time_dim(64)
        .with_num_classes(10)
        .with_attention(true)
}

pub const UNET_BASE_CHANNELS: usize = 16;
pub const UNET_TRAIN_BATCH: usize = 32;
pub const UNET_SAMPLE_N: usize = 20;
pub const UNET_SAMPLE_STEPS: usize = 10;

/// One U-Net DSM training step with class labels at batch 32 on fixed inputs, AdamW at 1e-4.
pub struct UNetTrainStep {
    model: Option<UNet>,
    optim: ModuleOptimizer,
    xt: Tensor<2>,
    t: Tensor<1>,
    z: Tensor<2>,
    labels: Tensor<1, Int>,
}

impl UNetTrainStep {
    pub fn new(device: &Device) -> Self {
        Self::with_batch(device, UNET_TRAIN_BATCH)
    }

    /// The same step at batch `n`.
    pub fn with_batch(device: &Device, n: usize) -> Self {
        let ad = device.clone().autodiff();
        ad.seed(0);
        let model = unet_config(UNET_BASE_CHANNELS).init(&ad);
        let mut noise = NoiseSource::host(3);
        let x0 = noise.normal(n, 784, &ad).tanh();
        let z = noise.normal(n, 784, &ad);
        let (xt, t) = diffused(x0, z.clone());
        let labels = tensor_ext::labels(&(0..n).map(|i| i % 10).collect::<Vec<_>>(), &ad);
        Self { model: Some(model), optim: tilt_train::OptimConfig::default().init(), xt, t, z, labels }
    }

    pub fn step(&mut self) {
        let model = self.model.take().expect("model");
        let predicted = model.forward(self.xt.clone(), self.t.clone(), Some(self.labels.clone()));
        let loss = (predicted - self.z.clone()).square().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(1e-4, model, grads));
    }

    pub fn num_params(&self) -> usize {
        burn::module::Module::num_params(self.model.as_ref().expect("model"))
    }

    /// The model's output on the training inputs (forces any pending work).
    pub fn output(&self) -> Vec<f32> {
        let m = self.model.as_ref().expect("model");
        let out = m.forward(self.xt.clone().inner(), self.t.clone().inner(), Some(self.labels.clone().inner()));
        tensor_ext::to_vec(out.inner())
    }
}

/// Sampling 20 images with 10 SDE-DPM-Solver-1 steps and CFG at w = 2 (conditional and unconditional rows in one
/// forward), class 0.
pub struct UNetSampling {
    net: NetScore<UNet>,
    sampler: Sampler,
    cond: Condition,
    device: Device,
    n: usize,
}

impl UNetSampling {
    pub fn new(device: &Device) -> Self {
        Self::with_size(device, UNET_SAMPLE_N, UNET_SAMPLE_STEPS)
    }

    /// `n` images with `steps` steps.
    pub fn with_size(device: &Device, n: usize, steps: usize) -> Self {
        device.seed(0);
        let net = NetScore::new(unet_config(UNET_BASE_CHANNELS).init(device), Schedule::Linear, vec![1, 28, 28]);
        let mut sampler = Sampler::new(SamplerKind::SdeDpmSolver1, Schedule::Linear, TimeGrid::LogSnr, steps);
        sampler.denoise_final = false;
        let cond = Condition::class(0, n, device);
        Self { net, sampler, cond, device: device.clone(), n }
    }

    pub fn run(&self) -> Vec<f32> {
        let mut g = GuidedScore::new(&self.net, self.cond.clone())
            .with(CfgGuidance::new(), WeightSchedule::Constant(CFG_STRENGTH));
        let mut noise = NoiseSource::host(0);
        let x = self.sampler.draw(&mut g, self.n, 784, &self.device, &mut noise);
        tensor_ext::to_vec(x)
    }
}

/// Wall-clock seconds of each of `repeats` calls of `f` (the caller makes `f` end when the device's work does).
pub fn timed(repeats: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..repeats)
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect()
}

/// The sum of `values` in f64 (a benchmark's checksum).
pub fn sum(values: &[f32]) -> f64 {
    values.iter().map(|v| *v as f64).sum()
}

/// A randomly initialised diffusers `UNet2DModel` of DDPM-CIFAR10's configuration (`benches/configs/`, 35.7 M
/// parameters) and one forward at batch 16; `tiny`: `tiny-unet.json` at batch 2 (dry runs on software drivers).
/// The PyTorch side builds the same model from the same file (`benches/pytorch/twin.py`, `gpu.py`).
pub struct DiffusersForward {
    unet: tilt_models::diffusers::UNet2D,
    x: Tensor<4>,
    t: Tensor<1>,
}

impl DiffusersForward {
    pub fn new(device: &Device, tiny: bool) -> Self {
        use tilt_models::diffusers::{UNet2D, UNet2DConfig};
        let (file, batch) = if tiny { ("tiny-unet.json", 2) } else { ("ddpm-cifar10-32.json", 16) };
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/configs").join(file);
        let config = UNet2DConfig::from_json(&std::fs::read_to_string(&path).expect("benches/configs"))
            .expect("a valid UNet2DModel config");
        device.seed(0);
        let unet = UNet2D::new(&config, device);
        let (c, [h, w]) = (config.in_channels, config.sample_size);
        let x = Tensor::<4>::random([batch, c, h, w], burn::tensor::Distribution::Normal(0.0, 1.0), device);
        let times: Vec<f32> = (0..batch).map(|i| (i * 997 % 1000) as f32).collect();
        let t = Tensor::<1>::from_data(TensorData::new(times, [batch]), device);
        Self { unet, x, t }
    }

    pub fn num_params(&self) -> usize {
        burn::module::Module::num_params(&self.unet)
    }

    pub fn batch(&self) -> usize {
        self.x.dims()[0]
    }

    pub fn run(&self) -> Tensor<4> {
        self.unet.forward(self.x.clone(), self.t.clone(), None)
    }
}
