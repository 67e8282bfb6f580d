#!/usr/bin/env python3
"""Tiny random diffusers `UNet2DModel`s and diffusers' own outputs on them: the fixtures of `tests/diffusers_unet.rs`.

    python3 -m venv ~/.cache/tilt-torch && ~/.cache/tilt-torch/bin/pip install torch diffusers safetensors numpy
    ~/.cache/tilt-torch/bin/python scripts/make_diffusers_fixtures.py            # writes tests/fixtures/diffusers/
    ~/.cache/tilt-torch/bin/python scripts/make_diffusers_fixtures.py --forward DIR --input IN --output OUT

Every parameter is moved off its default (GroupNorm weights 1 + 0.1 N(0,1), biases 0.1 N(0,1), weights + 0.01
N(0,1)), so a loader that skips, swaps or mis-transposes a tensor changes the output. Each model folder gets
`config.json`, the weights, `scheduler/scheduler_config.json` and `reference.safetensors` (`x`, `timesteps` with a
fractional one, `class_labels` for conditional models, `output` = diffusers' f32 forward, `output_f64` = the same
weights in f64). Deterministic: seeded torch generators, one thread.

`--forward` runs diffusers' forward of a model folder on `sample`/`timestep`/`class_labels` tensors of a safetensors
file (the format of `tilt forward`), for checking a model tilt exported (`tilt export --format diffusers`).
"""

import argparse
import json
import os
import shutil
import sys

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

torch.set_num_threads(1)

# name -> (UNet2DModel kwargs, DDPMScheduler kwargs, image shape, save options)
MODELS = {
    # diffusers' defaults: [cos, sin], shift 0, symmetric padding; multi-head attention at two levels;
    # squaredcos_cap_v2 betas and v-prediction.
    "tiny-default-multihead-v": (
        dict(
            sample_size=16,
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=8,
        ),
        dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing"),
        (3, 16, 16),
        {},
    ),
    # DDPM-CIFAR10 conventions without attention, learned variance (out = 2 in), centred input, a set time
    # embedding width, a mid-block scale factor; saved in half precision (diffusion_pytorch_model.fp16.safetensors).
    "tiny-ddpm-noattn-learned-variance": (
        dict(
            sample_size=16,
            in_channels=3,
            out_channels=6,
            block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            layers_per_block=2,
            norm_num_groups=8,
            norm_eps=1e-6,
            flip_sin_to_cos=False,
            freq_shift=1,
            downsample_padding=0,
            add_attention=False,
            center_input_sample=True,
            time_embedding_dim=48,
            mid_block_scale_factor=1.4142135623730951,
        ),
        dict(beta_schedule="linear", prediction_type="epsilon", variance_type="learned_range"),
        (3, 16, 16),
        {"fp16": True},
    ),
    # Fashion-MNIST's shape: one channel, 28 x 28, ten classes plus a null label, scale-shift residual blocks with a
    # GroupNorm in the middle attention (attn_norm_num_groups), one head; a pipeline folder with legacy attention
    # names (query/key/value/proj_attn) as pre-0.14 diffusers saved them.
    "tiny-fashion-classcond-pipeline": (
        dict(
            sample_size=28,
            in_channels=1,
            out_channels=1,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=None,
            num_class_embeds=11,
            resnet_time_scale_shift="scale_shift",
            attn_norm_num_groups=4,
        ),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="sample"),
        (1, 28, 28),
        {"pipeline": True, "legacy_attention_names": True},
    ),
}


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.add_(0.01 * noise)


def reference(model, shape, conditional, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((4, *shape), generator=g)
    timesteps = torch.tensor([0.0, 10.0, 123.456, 999.0])
    labels = torch.tensor([0, 3, 9, 10]) if conditional else None
    with torch.no_grad():
        out = model(x, timesteps, class_labels=labels).sample
        out64 = model.double()(x.double(), timesteps, class_labels=labels).sample.float()
        model.float()
    tensors = {"x": x, "timesteps": timesteps, "output": out, "output_f64": out64}
    if conditional:
        tensors["class_labels"] = labels
    return tensors


def legacy_names(path):
    tensors = load_file(path)
    renamed = {}
    for k, v in tensors.items():
        for new, old in (("to_q.", "query."), ("to_k.", "key."), ("to_v.", "value."), ("to_out.0.", "proj_attn.")):
            if "attentions." in k and new in k:
                k = k.replace(new, old)
        renamed[k] = v
    save_file(renamed, path, metadata={"format": "pt"})


def make(out_dir):
    for seed, (name, (unet_kwargs, sched_kwargs, shape, options)) in enumerate(sorted(MODELS.items())):
        torch.manual_seed(1000 + seed)
        model = UNet2DModel(**unet_kwargs).eval()
        perturb(model, 2000 + seed)
        root = os.path.join(out_dir, name)
        shutil.rmtree(root, ignore_errors=True)
        model_dir = os.path.join(root, "unet") if options.get("pipeline") else root
        variant = "fp16" if options.get("fp16") else None
        (model.half() if variant else model).save_pretrained(model_dir, variant=variant)
        scheduler = DDPMScheduler(**sched_kwargs)
        scheduler.save_pretrained(os.path.join(root, "scheduler"))
        if options.get("pipeline"):
            with open(os.path.join(root, "model_index.json"), "w") as f:
                json.dump(
                    {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
                     "unet": ["diffusers", "UNet2DModel"]}, f, indent=2)
        # Reload as a user would, so the reference is the saved model's.
        model = UNet2DModel.from_pretrained(
            model_dir, variant=variant, torch_dtype=torch.float32, low_cpu_mem_usage=False).eval()
        if options.get("legacy_attention_names"):
            legacy_names(os.path.join(model_dir, "diffusion_pytorch_model.safetensors"))
        tensors = reference(model, shape, unet_kwargs.get("num_class_embeds") is not None, 3000 + seed)
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(root, "reference.safetensors"))
        n = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n} parameters, max |output| {tensors['output'].abs().max():.3f}, "
              f"f32 vs f64 {((tensors['output'] - tensors['output_f64']).abs().max() / tensors['output'].abs().max()):.2e}")


def forward(model_dir, input_path, output_path):
    subfolder = "unet" if os.path.exists(os.path.join(model_dir, "model_index.json")) else None
    model = UNet2DModel.from_pretrained(model_dir, subfolder=subfolder, low_cpu_mem_usage=False).eval()
    inputs = load_file(input_path)
    labels = inputs.get("class_labels")
    with torch.no_grad():
        out = model(inputs["sample"], inputs["timestep"], class_labels=labels).sample
    save_file({"sample": out.contiguous()}, output_path)
    print(f"{model_dir}: {sum(p.numel() for p in model.parameters())} parameters, output {tuple(out.shape)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "diffusers"))
    parser.add_argument("--forward", metavar="DIR", help="run diffusers' forward of this model folder")
    parser.add_argument("--input", help="safetensors with sample, timestep[, class_labels]")
    parser.add_argument("--output", help="where --forward writes tensor `sample`")
    args = parser.parse_args()
    if args.forward:
        if not (args.input and args.output):
            sys.exit("--forward needs --input and --output")
        forward(args.forward, args.input, args.output)
    else:
        make(args.out)


if __name__ == "__main__":
    main()
