//! Training and network-sampling throughput on the CPU backend (Flex):
//! - one optimizer step (forward, backward, AdamW) of the 2-D score network, batch 1024, and the peak heap
//!   memory over 50 steps;
//! - sampling with the network: plain, CFG batched into one call, CFG as two calls.
//!
//! Network: x (2) -> Linear(128); time: 32-d sinusoidal embedding -> Linear(128); one residual block
//! (Linear(128,128), Linear(128,128), conditioning Linear(128,128)); output Linear(128, 2); SiLU.
//! Run: `cargo bench --bench training`.

use burn::optim::GradientsParams;
use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tilt::alloc;
use tilt_core::{Condition, Schedule, ScoreModel, tensor_ext};
use tilt_models::{Activation, NetScore, ScoreNetConfig};
use tilt_sampler::guidance::CfgGuidance;
use tilt_sampler::{
    DEFAULT_T_MAX, DEFAULT_T_MIN, GuidedScore, NoiseSource, Sampler, SamplerKind, TimeGrid, WeightSchedule,
};

#[global_allocator]
static ALLOC: tilt::alloc::PeakAlloc = tilt::alloc::PeakAlloc;

const BATCH: usize = 1024;

fn net_config(act: Activation, classes: usize) -> ScoreNetConfig {
    ScoreNetConfig::new(2)
        .with_hidden(128)
        .with_blocks(1)
        .with_time_dim(32)
        .with_activation(act)
        .with_num_classes(classes)
}

fn train_step_bench(c: &mut Criterion) {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let mut group = c.benchmark_group("train_step_b1024");
    group.sample_size(20).throughput(Throughput::Elements(1));
    for act in [Activation::Silu, Activation::Relu] {
        device.seed(0);
        let mut model = net_config(act, 0).init(&ad);
        let mut optim = tilt_train::OptimConfig::default().init();
        let mut noise = NoiseSource::host(1);
        let x0 = noise.normal(BATCH, 2, &ad);
        let z = noise.normal(BATCH, 2, &ad);
        let t = Tensor::<1>::from_data(
            TensorData::new((0..BATCH).map(|i| (i as f32 + 0.5) / BATCH as f32).collect::<Vec<_>>(), [BATCH]),
            &ad,
        );
        let mut step = |model: tilt_models::ScoreNet| {
            let a = t.clone().neg().add_scalar(1.0).sqrt().reshape([BATCH, 1]);
            let s = t.clone().sqrt().reshape([BATCH, 1]);
            let xt = x0.clone() * a + z.clone() * s;
            let loss = (model.forward(xt, t.clone(), None) - z.clone()).square().mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            optim.step(1e-3, model, grads)
        };
        // Peak heap over 50 steps, after a warm-up step.
        model = step(model);
        let before = alloc::reset_peak();
        for _ in 0..50 {
            model = step(model);
        }
        let _ = tensor_ext::to_vec(model.forward(x0.clone().inner(), t.clone().inner(), None));
        let peak = alloc::peak();
        println!(
            "train_step_b1024/{act:?}: peak heap over 50 steps {:.2} MiB ({:.2} MiB above the resting {:.2} MiB)",
            peak as f64 / 1048576.0,
            (peak - before) as f64 / 1048576.0,
            before as f64 / 1048576.0
        );
        let mut slot = Some(model);
        group.bench_function(format!("{act:?}"), |b| {
            b.iter(|| {
                let m = step(slot.take().expect("model"));
                slot = Some(m);
            })
        });
        // Make sure the last step's work is done.
        let _ = tensor_ext::to_vec(slot.take().expect("model").forward(x0.clone().inner(), t.clone().inner(), None));
    }
    group.finish();
}

struct TwoCalls<'a>(&'a NetScore);
impl ScoreModel for TwoCalls<'_> {
    fn score(&self, x: Tensor<2>, t: f64, c: &Condition) -> Tensor<2> {
        self.0.score(x, t, c)
    }
    fn schedule(&self) -> Schedule {
        Schedule::Linear
    }
    fn shape(&self) -> Vec<usize> {
        vec![2]
    }
}

fn sampling_bench(c: &mut Criterion) {
    let device = Device::flex();
    device.seed(0);
    let net = NetScore::new(net_config(Activation::Silu, 2).init(&device), Schedule::Linear, vec![2]);
    let two = TwoCalls(&net);
    let steps = 20;
    let n = 10_000;
    let sampler = Sampler {
        kind: SamplerKind::SdeDpmSolver1,
        schedule: Schedule::Linear,
        times: TimeGrid::LogSnr.times(steps, DEFAULT_T_MAX, DEFAULT_T_MIN, Schedule::Linear),
        denoise_final: false,
    };
    let cond = Condition::class(0, n, &device);
    let run = |g: &mut GuidedScore| {
        let mut noise = NoiseSource::host(0);
        tensor_ext::to_vec(sampler.sample(
            &mut |x, t, k| g.score(x, t, k),
            n,
            2,
            &device,
            &mut noise,
            &mut |_, _, _| {},
        ));
    };
    let mut group = c.benchmark_group("network_sampling_n10000");
    group.sample_size(10).throughput(Throughput::Elements((n * steps) as u64));
    group.bench_function("plain", |b| b.iter(|| run(&mut GuidedScore::new(&net, cond.clone()))));
    group.bench_function("cfg_batched", |b| {
        b.iter(
            || run(&mut GuidedScore::new(&net, cond.clone()).with(CfgGuidance::new(), WeightSchedule::Constant(2.0))),
        )
    });
    group.bench_function("cfg_two_calls", |b| {
        b.iter(
            || run(&mut GuidedScore::new(&two, cond.clone()).with(CfgGuidance::new(), WeightSchedule::Constant(2.0))),
        )
    });
    group.finish();
}

criterion_group!(benches, train_step_bench, sampling_bench);
criterion_main!(benches);
