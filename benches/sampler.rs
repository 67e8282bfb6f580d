//! Sampler throughput in sample-steps per second on the CPU backend (Flex):
//! the exact mixture unguided, with reward guidance, and with CFG batched (one model call per step) against
//! CFG unbatched (two calls). Run: `cargo bench --bench sampler`.

use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tilt_core::{Condition, ExpLinearReward, GaussianMixture, MixtureScore, Schedule, ScoreModel};
use tilt_sampler::guidance::{CfgGuidance, RewardGuidance};
use tilt_sampler::{GuidedScore, NoiseSource, Sampler, SamplerKind, TimeGrid, WeightSchedule};

const STEPS: usize = 20;

fn mixture() -> GaussianMixture {
    let k = 8;
    let means = (0..k).map(|i| {
        let a = i as f64 / k as f64 * std::f64::consts::TAU;
        vec![2.0 * a.cos(), 2.0 * a.sin()]
    });
    GaussianMixture::new(
        vec![1.0 / k as f64; k],
        means.collect(),
        vec![vec![0.3, 0.3]; k],
        vec![(0..4).collect(), (4..8).collect()],
    )
    .unwrap()
}

/// The oracle without its batched conditional + unconditional path: CFG then costs two calls.
struct Unbatched(MixtureScore);
impl ScoreModel for Unbatched {
    fn score(&self, x: Tensor<2>, t: f64, c: &Condition) -> Tensor<2> {
        self.0.score(x, t, c)
    }
    fn schedule(&self) -> Schedule {
        self.0.schedule()
    }
    fn shape(&self) -> Vec<usize> {
        self.0.shape()
    }
}

fn run(sampler: &Sampler, guided: &mut GuidedScore, n: usize, device: &Device) {
    let mut noise = NoiseSource::host(0);
    let x = sampler.draw(guided, n, 2, device, &mut noise);
    x.into_data(); // wait for the result
}

fn bench(c: &mut Criterion) {
    tilt::alloc::keep_freed_memory(); // as the tilt binary does (src/alloc.rs)
    let device = Device::flex();
    let mix = mixture();
    let reward = ExpLinearReward::new(vec![1.0, 0.5]);
    let oracle = MixtureScore::new(mix.clone(), Schedule::Linear, &device);
    let unbatched = Unbatched(oracle.clone());
    let reweighted = MixtureScore::new(mix.tilted(&reward), Schedule::Linear, &device);
    let sampler = Sampler {
        denoise_final: false,
        ..Sampler::new(SamplerKind::SdeDpmSolver1, Schedule::Linear, TimeGrid::LogSnr, STEPS)
    };
    for n in [1024usize, 16384] {
        let mut group = c.benchmark_group(format!("exact_mixture_n{n}"));
        group.sample_size(10).throughput(Throughput::Elements((n * STEPS) as u64));
        group.bench_function("unguided", |b| {
            b.iter(|| run(&sampler, &mut GuidedScore::new(&oracle, Condition::Unconditional), n, &device))
        });
        group.bench_function("reward_guided", |b| {
            b.iter(|| {
                let mut g = GuidedScore::new(&oracle, Condition::Unconditional)
                    .with(RewardGuidance::reweighted(&reweighted), WeightSchedule::Constant(1.0));
                run(&sampler, &mut g, n, &device)
            })
        });
        let cond = Condition::class(0, n, &device);
        group.bench_function("cfg_batched", |b| {
            b.iter(|| {
                let mut g =
                    GuidedScore::new(&oracle, cond.clone()).with(CfgGuidance::new(), WeightSchedule::Constant(2.0));
                run(&sampler, &mut g, n, &device)
            })
        });
        group.bench_function("cfg_two_calls", |b| {
            b.iter(|| {
                let mut g =
                    GuidedScore::new(&unbatched, cond.clone()).with(CfgGuidance::new(), WeightSchedule::Constant(2.0));
                run(&sampler, &mut g, n, &device)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
