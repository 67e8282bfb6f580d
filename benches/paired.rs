//! The tilt side of the paired benchmark against PyTorch (`bash benches/compare-pytorch.sh` drives both).
//!
//! `paired <train|sample|cfg|cfg_sweep5|matmul> <repeats>` runs one workload of `benches/workloads` on Flex (threads from
//! `RAYON_NUM_THREADS`): an untimed warm-up (10 training steps, or one run), then `repeats` timed runs, and prints one JSON line
//! `{"workload": ..., "seconds": [...], "checksum": ...}`. The PyTorch twin prints the same line.

mod workloads;

use burn::prelude::*;
use std::time::Instant;
use tilt_models::Activation;
use workloads::{Guidance, Sampling, TrainStep};

fn main() {
    tilt::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let (Some(workload), Some(repeats)) = (args.first(), args.get(1).and_then(|r| r.parse::<usize>().ok())) else {
        eprintln!("usage: paired <train|sample|cfg|cfg_sweep5|matmul> <repeats>");
        std::process::exit(2);
    };
    let device = Device::flex();
    let mut seconds = Vec::with_capacity(repeats);
    let checksum: f64 = match workload.as_str() {
        "train" => {
            let mut w = TrainStep::new(Activation::Silu, &device);
            for _ in 0..10 {
                w.step(); // the same warm-up as the PyTorch twin
            }
            for _ in 0..repeats {
                let start = Instant::now();
                w.step();
                seconds.push(start.elapsed().as_secs_f64());
            }
            w.output().iter().map(|v| *v as f64).sum()
        }
        "sample" | "cfg" => {
            let w = Sampling::new(&device);
            let guidance = if workload == "cfg" { Guidance::Cfg } else { Guidance::Plain };
            let mut out = w.run(guidance);
            for _ in 0..repeats {
                let start = Instant::now();
                out = w.run(guidance);
                seconds.push(start.elapsed().as_secs_f64());
            }
            out.iter().map(|v| *v as f64).sum()
        }
        // Five strengths of a CFG sweep as one batch of 50,000 chains, against five runs of 10,000 ("cfg").
        "cfg_sweep5" => {
            let w = workloads::Sampling::with_rows(&device, 5 * workloads::SAMPLE_N);
            let mut out = w.run(Guidance::Cfg);
            for _ in 0..repeats {
                let start = Instant::now();
                out = w.run(Guidance::Cfg);
                seconds.push(start.elapsed().as_secs_f64());
            }
            out.iter().map(|v| *v as f64).sum()
        }
        "matmul" => {
            let (a, b) = workloads::matmul_operands(&device);
            let mut out = a.clone().matmul(b.clone());
            for _ in 0..repeats {
                let start = Instant::now();
                out = a.clone().matmul(b.clone());
                seconds.push(start.elapsed().as_secs_f64());
            }
            tilt_core::tensor_ext::to_vec(out).iter().map(|v| *v as f64).sum()
        }
        other => {
            eprintln!("paired: unknown workload {other:?}; expected train, sample, cfg, cfg_sweep5 or matmul");
            std::process::exit(2);
        }
    };
    let list: Vec<String> = seconds.iter().map(|s| format!("{s:.6}")).collect();
    println!("{{\"workload\": \"{workload}\", \"seconds\": [{}], \"checksum\": {checksum:.6e}}}", list.join(", "));
}
