#!/usr/bin/env bash
# The paired benchmark against PyTorch: installs PyTorch (CPU use only) and diffusers (the U-Net twin is diffusers'
# UNet2DModel, the architecture of tilt's U-Net) into a virtualenv if missing, builds the
# tilt side (benches/paired.rs, with the test build's profile: dependencies at opt-level 3), then runs both
# interleaved at 1 and 2 threads and prints the table; the last line is the 1-thread tilt/PyTorch ratios.
#   bash benches/compare-pytorch.sh [--rounds N] [--threads 1 2]
# Not part of the test suite. Environment: TILT_TORCH_VENV (default ~/.cache/tilt-torch).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TILT_TORCH_VENV:-$HOME/.cache/tilt-torch}"
if ! "$venv/bin/python" -c "import torch, numpy, diffusers" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch numpy diffusers
fi
exe=$(cargo test --bench paired --no-run --features ndarray,wgpu 2>&1 | sed -n 's/.*Executable benches\/paired.rs (\(.*\))/\1/p')
[ -x "$exe" ] || { echo "compare-pytorch: could not build benches/paired.rs" >&2; exit 1; }
exec "$venv/bin/python" benches/pytorch/compare.py --tilt "$exe" "$@"
