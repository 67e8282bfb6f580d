#!/usr/bin/env bash
# The GPU benchmark: tilt's U-Net training step, U-Net CFG sampling and the forward of a DDPM-CIFAR10-size diffusers
# UNet2DModel on every GPU backend tilt can open here (wgpu through Vulkan; CUDA), and the same three in PyTorch on
# CUDA; prints medians, images per second and tilt / PyTorch ratios (below 1: tilt faster).
#   bash benches/gpu.sh [--tiny] [--repeats N] [--backends "vulkan cuda"]
# --backends: tilt's --device names, each compiled in as the cargo feature of that name. `vulkan` compiles kernels to
# SPIR-V, `wgpu` to WGSL (through Vulkan, Metal or DX12).
# --tiny: every size shrunk, for a dry run on a software driver: `bash benches/gpu.sh --tiny --backends wgpu` on Mesa's
# lavapipe (which crashes compiling the SPIR-V of the fused matmul kernel: a segfault in libvulkan_lvp); its numbers
# mean nothing.
# Installs what it needs: PyTorch and diffusers into a virtualenv (TILT_TORCH_VENV, default ~/.cache/tilt-torch) when
# a CUDA GPU is present. TILT_GPU_BENCH=path runs a prebuilt benches/gpu.rs binary instead of building one (a build
# with `--features vulkan,cuda` runs anywhere: libvulkan and libcuda are opened at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
tiny=""; repeats=5; backends="vulkan cuda"
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) tiny="--tiny"; repeats=2 ;;
    --repeats) repeats="$2"; shift ;;
    --backends) backends="$2"; shift ;;
    *) echo "usage: bash benches/gpu.sh [--tiny] [--repeats N] [--backends \"wgpu vulkan cuda\"]" >&2; exit 2 ;;
  esac
  shift
done
start=$(date +%s)
exe="${TILT_GPU_BENCH:-}"
# The features are the backends asked for (plus ndarray, so that the build shares the test build's artifacts).
build() { cargo test --bench gpu --no-run --features "ndarray,$(echo $1 | tr ' ' ',')" 2>&1 | sed -n 's/.*Executable benches\/gpu.rs (\(.*\))/\1/p'; }
if [ -z "$exe" ]; then
  exe=$(build "$backends") || true
  if ! [ -x "$exe" ] && [[ " $backends " == *" cuda "* ]]; then
    # cubecl-cuda 0.11.3 downloads an LLVM bundle from GitHub while it builds (tracel-llvm-bundler): offline, this fails.
    echo "gpu.sh: the CUDA build failed (it needs GitHub for cubecl's LLVM bundle); going on without cuda" >&2
    backends=$(echo " $backends " | sed 's/ cuda / /g')
    exe=$(build "$backends") || true
  fi
fi
[ -x "$exe" ] || { echo "gpu.sh: could not build benches/gpu.rs" >&2; exit 1; }
results=$(mktemp)
trap 'rm -f "$results"' EXIT
workloads="unet_train unet_cfg diffusers_forward"
for b in $backends; do
  for w in $workloads; do
    if ! "$exe" "$b" "$w" "$repeats" $tiny | sed "s/^{/{\"tilt_device\": \"$b\", /" >> "$results"; then
      echo "gpu.sh: tilt on $b could not run $w (no such device here?); skipping $b" >&2
      break
    fi
  done
done
torch_python=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  venv="${TILT_TORCH_VENV:-$HOME/.cache/tilt-torch}"
  if ! "$venv/bin/python" -c "import torch, diffusers; assert torch.cuda.is_available()" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch numpy diffusers
  fi
  torch_python="$venv/bin/python"
fi
if [ -n "$torch_python" ]; then
  for w in $workloads; do
    "$torch_python" benches/pytorch/gpu.py "$w" "$repeats" $tiny | sed 's/^{/{"backend": "pytorch-cuda", /' >> "$results" || true
  done
else
  echo "gpu.sh: no CUDA GPU (nvidia-smi), so no PyTorch CUDA column" >&2
fi
python3 - "$results" "$tiny" "$(( $(date +%s) - start ))" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
tiny, elapsed = sys.argv[2], sys.argv[3]
med = {}
for r in rows:
    backend = r.get("backend") or ("tilt-cuda" if "Cuda" in r["device"] else "tilt-" + r["tilt_device"])
    med[(backend, r["workload"])] = (statistics.median(r["seconds"]), r["images_per_run"], r["device"])
names = {"unet_train": "U-Net training step", "unet_cfg": "U-Net sampling with CFG", "diffusers_forward": "DDPM-CIFAR10 UNet2DModel forward"}
backends = [b for b in ("tilt-wgpu", "tilt-vulkan", "tilt-cuda", "pytorch-cuda") if any(k[0] == b for k in med)]
print(f"GPU benchmark{' (--tiny: a dry run; the numbers mean nothing)' if tiny else ''}, {elapsed} s in all")
for b in backends:
    print(f"  {b}: {next(v[2] for k, v in med.items() if k[0] == b)}")
tilt = [b for b in backends if b.startswith("tilt-")]
print("| workload | " + " | ".join(f"{b} (median s, images/s)" for b in backends) + "".join(f" | {b} / PyTorch" for b in tilt) + " |")
print("|---" * (len(backends) + len(tilt) + 1) + "|")
for w in names:
    cells = []
    for b in backends:
        v = med.get((b, w))
        cells.append(f"{v[0]:.4f} s, {v[1] / v[0]:.1f}/s" if v else "—")
    ratio = lambda b: f"{med[(b, w)][0] / med[('pytorch-cuda', w)][0]:.2f}" if (b, w) in med and ("pytorch-cuda", w) in med else "—"
    print(f"| {names[w]} | " + " | ".join(cells) + "".join(f" | {ratio(b)}" for b in tilt) + " |")
PY
