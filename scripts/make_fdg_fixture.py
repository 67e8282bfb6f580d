"""Reference outputs of frequency-decoupled guidance (Sadat et al. 2025, Algorithm 2, with kornia as the paper
uses it) for tests/fdg.rs: random conditional and unconditional denoises, their Laplacian pyramids, and the guided
denoise at given per-level scales and parallel weights.

    python -m venv ~/.cache/tilt-torch && ~/.cache/tilt-torch/bin/pip install torch kornia
    ~/.cache/tilt-torch/bin/python scripts/make_fdg_fixture.py

Writes tests/fixtures/fdg/fdg.json (float64 throughout, as kornia computes on float64 inputs).
"""
import json
import pathlib

import kornia
import torch
from kornia.geometry.transform import build_laplacian_pyramid


def project(v0, v1):
    v1 = torch.nn.functional.normalize(v1, dim=[-1, -2, -3])
    v0_parallel = (v0 * v1).sum(dim=[-1, -2, -3], keepdim=True) * v1
    return v0_parallel, v0 - v0_parallel


def build_image_from_pyramid(pyramid):
    img = pyramid[-1]
    for i in range(len(pyramid) - 2, -1, -1):
        img = kornia.geometry.pyrup(img) + pyramid[i]
    return img


def laplacian_guidance(pred_cond, pred_uncond, guidance_scale, parallel_weights):
    levels = len(guidance_scale)
    pc = build_laplacian_pyramid(pred_cond, levels)
    pu = build_laplacian_pyramid(pred_uncond, levels)
    guided = []
    for p_cond, p_uncond, scale, par_weight in zip(pc, pu, guidance_scale, parallel_weights):
        diff = p_cond - p_uncond
        diff_parallel, diff_orthogonal = project(diff, p_cond)
        diff = par_weight * diff_parallel + diff_orthogonal
        guided.append(p_cond + (scale - 1) * diff)
    return build_image_from_pyramid(guided)


torch.manual_seed(0)
cases = []
for shape, scales, parallel in [
    ((2, 3, 16, 16), [4.0, 2.0, 1.5], [1.0, 0.5, 0.0]),
    ((1, 1, 32, 32), [3.0, 1.0], [1.0, 1.0]),
]:
    cond = torch.randn(shape, dtype=torch.float64)
    uncond = cond + 0.3 * torch.randn(shape, dtype=torch.float64)
    pyramid = build_laplacian_pyramid(cond, len(scales))
    cases.append({
        "shape": list(shape),
        "guidance_scales": scales,
        "parallel_weights": parallel,
        "cond": cond.flatten().tolist(),
        "uncond": uncond.flatten().tolist(),
        "pyramid_of_cond": [band.flatten().tolist() for band in pyramid],
        "guided": laplacian_guidance(cond, uncond, scales, parallel).flatten().tolist(),
    })
out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "fdg" / "fdg.json"
out.write_text(json.dumps({"kornia": kornia.__version__, "torch": torch.__version__, "cases": cases}))
print(f"wrote {out} ({out.stat().st_size} bytes)")
