//! The pixel U-Net on 28 x 28 Fashion-MNIST-sized images: one training step (forward, DSM loss with class
//! labels, backward, AdamW) and sampling throughput (CFG batched, the default SDE-DPM-Solver-1), plus the peak
//! host heap of the training step.
//!
//! The device is `BURN_DEVICE` (default: the first compiled backend), so the same bench runs on Flex and, with
//! `--features wgpu` and `BURN_DEVICE=wgpu`, on a GPU. CPU backends get the size the CPU can afford (16 base
//! channels, batch 32); wgpu gets the GPU size of `configs/train_unet_fashion.toml` (64 base channels, batch 128).
//! Run: `cargo bench --bench unet` (add `--features wgpu` and `BURN_DEVICE=wgpu` for a GPU).

mod workloads;

use burn::optim::GradientsParams;
use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;
use tilt::alloc;
use tilt_core::{Condition, Schedule, tensor_ext};
use tilt_models::{NetScore, UNet, UNetConfig};
use tilt_sampler::guidance::CfgGuidance;
use tilt_sampler::{GuidedScore, NoiseSource, Sampler, SamplerKind, TimeGrid, WeightSchedule};

#[global_allocator]
static ALLOC: tilt::alloc::PeakAlloc = tilt::alloc::PeakAlloc;

/// One bench size: the network and the batches it is timed on.
struct Size {
    name: &'static str,
    base_channels: usize,
    train_batch: usize,
    sample_batch: usize,
}

const CPU: Size = Size {
    name: "cpu_c16",
    base_channels: workloads::UNET_BASE_CHANNELS,
    train_batch: workloads::UNET_TRAIN_BATCH,
    sample_batch: workloads::UNET_SAMPLE_N,
};
const GPU: Size = Size { name: "gpu_c64", base_channels: 64, train_batch: 128, sample_batch: 200 };
const SAMPLE_STEPS: usize = 10;

fn setup() -> (Device, &'static Size) {
    let device = tilt::device::select(None).expect("BURN_DEVICE names a compiled backend");
    let gpu = matches!(std::env::var("BURN_DEVICE").as_deref(), Ok("wgpu" | "vulkan" | "metal"));
    (device, if gpu { &GPU } else { &CPU })
}

fn config(size: &Size) -> UNetConfig {
    workloads::unet_config(size.base_channels)
}

/// Deterministic inputs: noised images (`x0` in [-1, 1], times spread over (0, 1)), their noise, the times, and
/// labels cycling through the classes.
fn inputs(n: usize, device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1>, Tensor<1, Int>) {
    let mut noise = NoiseSource::host(3);
    let x0 = noise.normal(n, 784, device).tanh();
    let z = noise.normal(n, 784, device);
    let (xt, t) = workloads::diffused(x0, z.clone());
    let labels = tensor_ext::labels(&(0..n).map(|i| i % 10).collect::<Vec<_>>(), device);
    (xt, z, t, labels)
}

fn train_step_bench(c: &mut Criterion) {
    tilt::alloc::keep_freed_memory(); // as the tilt binary does (src/alloc.rs)
    let (device, size) = setup();
    let ad = device.clone().autodiff();
    ad.seed(0);
    let mut model: UNet = config(size).init(&ad);
    let mut optim = tilt_train::OptimConfig::default().init();
    let n = size.train_batch;
    let (xt, z, t, labels) = inputs(n, &ad);
    let mut step = |model: UNet| {
        let loss = (model.forward(xt.clone(), t.clone(), Some(labels.clone())) - z.clone()).square().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(1e-4, model, grads);
        ad.sync().expect("device sync");
        model
    };
    model = step(model);
    let before = alloc::reset_peak();
    for _ in 0..3 {
        model = step(model);
    }
    let peak = alloc::peak();
    println!(
        "unet_train_step/{}: batch {n}, peak host heap over 3 steps {:.1} MiB ({:.1} MiB above the resting {:.1} MiB)",
        size.name,
        peak as f64 / 1048576.0,
        (peak - before) as f64 / 1048576.0,
        before as f64 / 1048576.0
    );
    let mut group = c.benchmark_group("unet_train_step");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).throughput(Throughput::Elements(n as u64));
    let mut slot = Some(model);
    group.bench_function(format!("{}_b{n}", size.name), |b| {
        b.iter(|| {
            let m = step(slot.take().expect("model"));
            slot = Some(m);
        })
    });
    group.finish();
}

fn sampling_bench(c: &mut Criterion) {
    let (device, size) = setup();
    device.seed(0);
    let net = NetScore::new(config(size).init(&device), Schedule::Linear, vec![1, 28, 28]);
    let n = size.sample_batch;
    let sampler = Sampler::new(SamplerKind::SdeDpmSolver1, Schedule::Linear, TimeGrid::LogSnr, SAMPLE_STEPS);
    let cond = Condition::class(0, n, &device);
    let mut group = c.benchmark_group("unet_sampling");
    // Throughput in image-steps: images times sampler steps (CFG: two network rows per image-step).
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements((n * SAMPLE_STEPS) as u64));
    group.bench_function(format!("{}_cfg_n{n}_steps{SAMPLE_STEPS}", size.name), |b| {
        b.iter(|| {
            let mut g = GuidedScore::new(&net, cond.clone()).with(CfgGuidance::new(), WeightSchedule::Constant(2.0));
            let mut noise = NoiseSource::host(0);
            let x = sampler.sample(&mut |x, t, k| g.score(x, t, k), n, 784, &device, &mut noise, &mut |_, _, _| {});
            tensor_ext::to_vec(x)
        })
    });
    group.finish();
}

criterion_group!(benches, train_step_bench, sampling_bench);
criterion_main!(benches);
