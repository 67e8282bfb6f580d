//! The tilt side of `bash benches/gpu.sh`: one U-Net workload on one GPU backend.
//!
//! `gpu <device> <unet_train|unet_cfg|diffusers_forward> <repeats> [--tiny]` builds the workload on `--device`
//! (`vulkan`, `wgpu`, `cuda`, or a CPU backend for comparison), runs untimed warm-ups (Burn's autotune benchmarks
//! every new kernel shape the first time; with the `persistence` feature its choices are kept between runs), then
//! `repeats` timed runs, each ended by a device sync, and prints one JSON line
//! `{"workload", "device", "seconds": [...], "images_per_run", "checksum"}`. `--tiny` shrinks every size for a dry
//! run on a software driver (lavapipe): batch 2, 2 images x 2 steps, a 16 x 16 U-Net.
//!
//! Workloads: `unet_train` (tilt's benchmark U-Net, diffusers' UNet2DModel layout, 268,017 parameters: a DSM step
//! with AdamW at batch 32), `unet_cfg` (20 images x 10 steps with CFG in one batch), `diffusers_forward` (a
//! randomly initialised UNet2DModel of DDPM-CIFAR10's configuration, 35.7 M parameters, `benches/configs/`, one
//! forward at batch 16).

mod workloads;

use burn::prelude::*;

use workloads::{sum, timed};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let tiny = args.iter().any(|a| a == "--tiny");
    let args: Vec<&String> = args.iter().filter(|a| *a != "--tiny").collect();
    let (Some(device_name), Some(workload), Some(repeats)) =
        (args.first(), args.get(1), args.get(2).and_then(|r| r.parse::<usize>().ok()))
    else {
        eprintln!("usage: gpu <device> <unet_train|unet_cfg|diffusers_forward> <repeats> [--tiny]");
        std::process::exit(2);
    };
    let device = match tilt::device::select(Some(device_name)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("gpu: {e:#}");
            std::process::exit(3);
        }
    };
    let sync = |d: &Device| {
        if let Err(e) = d.sync() {
            eprintln!("gpu: device sync failed: {e:?}");
            std::process::exit(4);
        }
    };
    let warmup = if tiny { 1 } else { 3 };
    let (seconds, images, checksum) = match workload.as_str() {
        "unet_train" => {
            let batch = if tiny { 2 } else { workloads::UNET_TRAIN_BATCH };
            let mut w = workloads::UNetTrainStep::with_batch(&device, batch);
            for _ in 0..warmup {
                w.step();
            }
            sync(&device);
            let seconds = timed(repeats, || {
                w.step();
                sync(&device);
            });
            (seconds, batch, sum(&w.output()))
        }
        "unet_cfg" => {
            let (n, steps) = if tiny { (2, 2) } else { (workloads::UNET_SAMPLE_N, workloads::UNET_SAMPLE_STEPS) };
            let w = workloads::UNetSampling::with_size(&device, n, steps);
            let mut out = w.run();
            // run() reads the samples back: its end is the device's.
            let seconds = timed(repeats, || out = w.run());
            (seconds, n, sum(&out))
        }
        "diffusers_forward" => {
            let w = workloads::DiffusersForward::new(&device, tiny);
            eprintln!("diffusers_forward: {} parameters", w.num_params());
            for _ in 0..warmup {
                drop(w.run());
            }
            sync(&device);
            let seconds = timed(repeats, || {
                drop(w.run());
                sync(&device);
            });
            (seconds, w.batch(), w.run().sum().into_scalar::<f64>())
        }
        other => {
            eprintln!("gpu: unknown workload {other:?}; expected unet_train, unet_cfg or diffusers_forward");
            std::process::exit(2);
        }
    };
    let list: Vec<String> = seconds.iter().map(|s| format!("{s:.6}")).collect();
    println!(
        "{{\"workload\": \"{workload}\", \"device\": {:?}, \"seconds\": [{}], \"images_per_run\": {images}, \"checksum\": {checksum:.6e}}}",
        tilt::device::describe(&device),
        list.join(", ")
    );
}
