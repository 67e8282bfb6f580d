//! Training and network-sampling throughput on the CPU backend (Flex), on the workloads of
//! `benches/workloads` (the 2-D score network):
//! - one optimizer step (forward, backward, AdamW), batch 1024, and the peak heap memory over 50 steps;
//! - sampling with the network: plain, CFG batched into one call, CFG as two calls.
//!
//! Run: `cargo bench --bench training`. For the paired comparison with PyTorch: `bash benches/compare-pytorch.sh`.

mod workloads;

use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tilt::alloc;
use tilt_core::{Condition, Schedule, ScoreModel};
use tilt_models::{Activation, NetScore};
use workloads::{Guidance, SAMPLE_N, SAMPLE_STEPS, Sampling, TrainStep};

#[global_allocator]
static ALLOC: tilt::alloc::PeakAlloc = tilt::alloc::PeakAlloc;

fn train_step_bench(c: &mut Criterion) {
    tilt::alloc::keep_freed_memory(); // as the tilt binary does (src/alloc.rs)
    let device = Device::flex();
    let mut group = c.benchmark_group("train_step_b1024");
    group.sample_size(20).throughput(Throughput::Elements(1));
    for act in [Activation::Silu, Activation::Relu] {
        let mut w = TrainStep::new(act, &device);
        // Peak heap over 50 steps, after a warm-up step.
        w.step();
        let before = alloc::reset_peak();
        for _ in 0..50 {
            w.step();
        }
        let _ = w.output();
        let peak = alloc::peak();
        println!(
            "train_step_b1024/{act:?}: peak heap over 50 steps {:.2} MiB ({:.2} MiB above the resting {:.2} MiB)",
            peak as f64 / 1048576.0,
            (peak - before) as f64 / 1048576.0,
            before as f64 / 1048576.0
        );
        group.bench_function(format!("{act:?}"), |b| b.iter(|| w.step()));
        let _ = w.output();
    }
    group.finish();
}

/// The network without its batched conditional + unconditional path: CFG then costs two calls.
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
    let w = Sampling::new(&Device::flex());
    let two = TwoCalls(&w.net);
    let mut group = c.benchmark_group("network_sampling_n10000");
    group.sample_size(10).throughput(Throughput::Elements((SAMPLE_N * SAMPLE_STEPS) as u64));
    group.bench_function("plain", |b| b.iter(|| w.run(Guidance::Plain)));
    group.bench_function("cfg_batched", |b| b.iter(|| w.run(Guidance::Cfg)));
    group.bench_function("cfg_two_calls", |b| b.iter(|| w.run_with(&two, Guidance::Cfg)));
    group.finish();
}

criterion_group!(benches, train_step_bench, sampling_bench);
criterion_main!(benches);
