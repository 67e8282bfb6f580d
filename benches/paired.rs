//! The tilt side of the paired benchmark against PyTorch (`bash benches/compare-pytorch.sh` drives both).
//!
//! `paired <train|sample|cfg|unet_train|unet_cfg|diffusers_forward|cfg_sweep5|matmul|silu> <repeats>` runs one workload of
//! `benches/workloads` on Flex (threads from `RAYON_NUM_THREADS`): an untimed warm-up (10 training steps of the 2-D
//! network, 3 of the U-Net, or one run), then `repeats` timed runs, and prints one JSON line
//! `{"workload": ..., "seconds": [...], "checksum": ...}`. The PyTorch twin prints the same line.

mod workloads;

use burn::prelude::*;

use tilt_models::Activation;
use workloads::{Guidance, Sampling, TrainStep, sum, timed};

fn main() {
    tilt::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let (Some(workload), Some(repeats)) = (args.first(), args.get(1).and_then(|r| r.parse::<usize>().ok())) else {
        eprintln!(
            "usage: paired <train|sample|cfg|unet_train|unet_cfg|diffusers_forward|cfg_sweep5|matmul|silu> <repeats>"
        );
        std::process::exit(2);
    };
    if let Err(e) = tilt::threads::init_pool() {
        eprintln!("paired: could not start rayon's worker threads: {e}");
        std::process::exit(2);
    }
    // On a pool worker, as the tilt binary runs its commands (src/threads.rs).
    let (seconds, checksum) = tilt::threads::run_on_worker(|| run_workload(workload, repeats));
    let list: Vec<String> = seconds.iter().map(|s| format!("{s:.6}")).collect();
    println!("{{\"workload\": \"{workload}\", \"seconds\": [{}], \"checksum\": {checksum:.6e}}}", list.join(", "));
}

/// Runs one workload: its timings in seconds and the checksum of its result.
fn run_workload(workload: &str, repeats: usize) -> (Vec<f64>, f64) {
    let device = Device::flex();
    match workload {
        "train" => {
            let mut w = TrainStep::new(Activation::Silu, &device);
            for _ in 0..10 {
                w.step(); // the same warm-up as the PyTorch twin
            }
            let seconds = timed(repeats, || w.step());
            (seconds, sum(&w.output()))
        }
        "sample" | "cfg" => {
            let guidance = if workload == "cfg" { Guidance::Cfg } else { Guidance::Plain };
            sampling(&Sampling::new(&device), guidance, repeats)
        }
        "unet_train" => {
            let mut w = workloads::UNetTrainStep::new(&device);
            eprintln!("unet_train: {} parameters", w.num_params());
            for _ in 0..3 {
                w.step(); // the same warm-up as the PyTorch twin
            }
            let seconds = timed(repeats, || w.step());
            (seconds, sum(&w.output()))
        }
        // A diffusers UNet2DModel of DDPM-CIFAR10's size (35.7 M parameters), one forward at batch 16.
        "diffusers_forward" => {
            let w = workloads::DiffusersForward::new(&device, false);
            eprintln!("diffusers_forward: {} parameters", w.num_params());
            drop(w.run());
            let seconds = timed(repeats, || drop(w.run()));
            (seconds, sum(&tilt_core::tensor_ext::to_vec(w.run().reshape([1, -1]))))
        }
        "unet_cfg" => {
            let w = workloads::UNetSampling::new(&device);
            let mut out = w.run();
            let seconds = timed(repeats, || out = w.run());
            (seconds, sum(&out))
        }
        // Five strengths of a CFG sweep as one batch of 50,000 chains, against five runs of 10,000 ("cfg").
        "cfg_sweep5" => sampling(&Sampling::with_rows(&device, 5 * workloads::SAMPLE_N), Guidance::Cfg, repeats),
        "matmul" => {
            let (a, b) = workloads::matmul_operands(&device);
            let seconds = timed(repeats, || drop(a.clone().matmul(b.clone())));
            (seconds, sum(&tilt_core::tensor_ext::to_vec(a.matmul(b))))
        }
        // Diagnostics (not in the table): one SiLU over the training step's hidden activations, [1024, 128],
        // shared input as in a network (the input stays alive for the backward pass).
        "silu" => {
            let (a, _) = workloads::matmul_operands(&device);
            let seconds = timed(repeats, || drop(burn::tensor::activation::silu(a.clone())));
            (seconds, sum(&tilt_core::tensor_ext::to_vec(burn::tensor::activation::silu(a))))
        }
        other => {
            eprintln!(
                "paired: unknown workload {other:?}; expected train, sample, cfg, unet_train, unet_cfg, diffusers_forward, cfg_sweep5, \
                 matmul or silu"
            );
            std::process::exit(2);
        }
    }
}

/// One untimed sampling run, then `repeats` timed ones; the checksum is of the last samples.
fn sampling(w: &Sampling, guidance: Guidance, repeats: usize) -> (Vec<f64>, f64) {
    let mut out = w.run(guidance);
    let seconds = timed(repeats, || out = w.run(guidance));
    (seconds, sum(&out))
}
