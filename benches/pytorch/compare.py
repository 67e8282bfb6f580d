"""Paired benchmark: tilt (Flex) against its PyTorch twin, interleaved on the same machine.

Run through `bash benches/compare-pytorch.sh`, which installs PyTorch and builds the tilt side. For each thread
count (1 and 2) and each of `--rounds` rounds, every workload runs once as tilt and once as PyTorch, in
alternating order, each in a fresh process with one untimed warm-up; the table reports the median time per
repeat over all rounds and the tilt / PyTorch ratio of the medians. The sampling workloads also run a PyTorch
variant with tilt's per-label conditioning (see PER_LABEL). The last line is the 1-thread ratios against the
twin as a PyTorch user writes it.
"""

import argparse
import platform
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = {  # name: (repeats per process, description)
    "train": (30, "training step, batch 1024 (forward, backward, AdamW)"),
    "sample": (3, "sampling 10,000 points x 20 steps, plain"),
    "cfg": (3, "sampling with CFG (cond + uncond in one batch)"),
    "matmul": (200, "one hidden-layer product [1024,128] x [128,128] (the GEMM floor)"),
    "unet_train": (5, "U-Net training step, batch 32 (28x28, 16 base channels, 268,017 parameters, diffusers UNet2DModel layout)"),
    "unet_cfg": (2, "U-Net sampling with CFG, 20 images x 10 steps"),
    "diffusers_forward": (2, "diffusers UNet2DModel forward, DDPM-CIFAR10 size (35.7 M parameters), batch 16"),
}
# tilt's sampling forward computes the conditioning once per label and time (score_net.rs `forward_at`); the twin
# runs row by row as a PyTorch user writes it, and also as tilt does (`<name>_per_label`), so that the table shows
# how much of the ratio is that arithmetic and how much is the rest.
PER_LABEL = {"sample", "cfg"}

HEADLINE = ["train", "sample", "cfg"]  # the ratios of the last line; matmul is the floor beside them
UNET = ["unet_train", "unet_cfg", "diffusers_forward"]  # the image networks, a line of their own


def run(cmd, env_extra):
    env = dict(os.environ, **env_extra)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def cpu():
    """The CPU model and the widest vector ISA it offers, as the kernels on both sides choose at run time: AVX-512
    (tilt: gemm's x86-v4 kernels, compiled in and picked when the CPU has avx512f), AVX2, or NEON."""
    model, flags = platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == platform.machine():
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags |= set(value.split())
    except OSError:
        pass
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON")) if flag in flags),
               "scalar/SSE")
    return f"{model} ({os.cpu_count()} logical CPUs), vector ISA: {isa}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tilt", required=True, help="the built benches/paired.rs executable")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    twin = [sys.executable, os.path.join(HERE, "twin.py")]
    times = {}
    for threads in args.threads:
        env = {"RAYON_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        for r in range(args.rounds):
            for name, (repeats, _) in WORKLOADS.items():
                sides = [("tilt", [args.tilt, name, str(repeats)]), ("pytorch", twin + [name, str(repeats)])]
                if name in PER_LABEL:
                    sides.append(("pytorch_per_label", twin + [f"{name}_per_label", str(repeats)]))
                if r % 2:
                    sides.reverse()
                for side, cmd in sides:
                    res = run(cmd, env)
                    times.setdefault((threads, name, side), []).extend(res["seconds"])
                print(f"threads {threads} round {r + 1}/{args.rounds} {name}: done", file=sys.stderr, flush=True)
    import torch

    print(f"\nCPU: {cpu()}")
    print(f"PyTorch {torch.__version__}, tilt Flex; median per repeat over {args.rounds} interleaved rounds\n")
    print("| workload | threads | tilt (Flex) | PyTorch | tilt / PyTorch | PyTorch, per-label conditioning "
          "| tilt / that |")
    print("|---|---|---|---|---|---|---|")
    ratios = {}
    for name, (_, desc) in WORKLOADS.items():
        for threads in args.threads:
            t = statistics.median(times[(threads, name, "tilt")])
            p = statistics.median(times[(threads, name, "pytorch")])
            ratios[(threads, name)] = t / p
            fmt = {"train": lambda s: f"{s * 1e3:.2f} ms", "unet_train": lambda s: f"{s * 1e3:.0f} ms",
                   "matmul": lambda s: f"{s * 1e6:.0f} us"}.get(name, lambda s: f"{s:.3f} s")
            same = "| - | - |"
            if name in PER_LABEL:
                q = statistics.median(times[(threads, name, "pytorch_per_label")])
                same = f"| {fmt(q)} | {t / q:.2f} |"
            print(f"| {desc} | {threads} | {fmt(t)} | {fmt(p)} | {t / p:.2f} {same}")
    for threads in args.threads:
        print(f"ratio_unet@{threads}threads " + " ".join(f"{n}={ratios[(threads, n)]:.2f}" for n in UNET))
    for threads in args.threads[1:]:
        print(f"ratio@{threads}threads " + " ".join(f"{n}={ratios[(threads, n)]:.2f}" for n in HEADLINE))
    first = args.threads[0]
    print("ratio " + " ".join(f"{n}={ratios[(first, n)]:.2f}" for n in HEADLINE))


if __name__ == "__main__":
    main()
