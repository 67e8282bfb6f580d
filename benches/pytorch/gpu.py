"""The PyTorch CUDA side of benches/gpu.sh: the same three U-Net workloads as benches/gpu.rs, eager mode.

    python gpu.py <unet_train|unet_cfg|diffusers_forward> <repeats> [--tiny]

Untimed warm-ups, then `repeats` timed runs each ended by torch.cuda.synchronize(); prints one JSON line like
benches/gpu.rs. Exits 3 when CUDA is not available.
"""

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import twin  # noqa: E402  the CPU twin's U-Net (diffusers' UNet2DModel in tilt's benchmark configuration)


def timed(run, warmup, repeats):
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def main():
    workload, repeats = sys.argv[1], int(sys.argv[2])
    tiny = "--tiny" in sys.argv
    if not torch.cuda.is_available():
        print("gpu.py: CUDA is not available", file=sys.stderr)
        sys.exit(3)
    dev = torch.device("cuda")
    warmup = 1 if tiny else 3
    torch.manual_seed(0)
    if workload == "unet_train":
        n = 2 if tiny else twin.UNET_TRAIN_BATCH
        model = twin.UNet().to(dev)
        x0, z = torch.randn(n, 784, device=dev).tanh(), torch.randn(n, 784, device=dev)
        t = (torch.arange(n, dtype=torch.float32, device=dev) + 0.5) / n
        xt = x0 * (1 - t).sqrt()[:, None] + z * t.sqrt()[:, None]
        labels = torch.arange(n, device=dev) % 10
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-8, weight_decay=0.0)

        def step():
            opt.zero_grad(set_to_none=True)
            (model(xt, t, labels) - z).square().mean().backward()
            opt.step()

        seconds = timed(step, warmup, repeats)
        images = n
        with torch.no_grad():
            checksum = float(model(xt, t, labels).sum())
    elif workload == "unet_cfg":
        n, steps = (2, 2) if tiny else (twin.UNET_SAMPLE_N, twin.UNET_SAMPLE_STEPS)
        model = twin.UNet().to(dev).eval()
        grid = twin.log_snr_grid(steps)

        @torch.no_grad()
        def sample():
            x = torch.randn(n, 784, device=dev)
            labels = torch.zeros(n, dtype=torch.long, device=dev)
            both = torch.cat([labels, torch.full((n,), model.num_classes, dtype=torch.long, device=dev)])
            for (a, s, t), (a2, s2, _) in zip(grid, grid[1:]):
                tt = torch.full((2 * n,), t, device=dev)
                out = model(torch.cat([x, x]), tt, both)
                eps = out[:n] + twin.CFG_STRENGTH * (out[:n] - out[n:])
                e = (a2 * s) / (s2 * a)
                x = x * (a2 / a) - eps * (2 * s2 * (e - 1)) + torch.randn(n, 784, device=dev) * (
                    s2 * max(e * e - 1, 0.0) ** 0.5)
            return x

        seconds = timed(sample, 1, repeats)
        images = n
        checksum = float(sample().sum())
    elif workload == "diffusers_forward":
        from diffusers import UNet2DModel

        name, batch = ("tiny-unet.json", 2) if tiny else ("ddpm-cifar10-32.json", 16)
        path = os.path.join(os.path.dirname(__file__), "..", "configs", name)
        config = {k: v for k, v in json.load(open(path)).items() if not k.startswith("_")}
        model = UNet2DModel(**config).to(dev).eval()
        size = config["sample_size"]
        x = torch.randn(batch, config["in_channels"], size, size, device=dev)
        t = torch.tensor([(i * 997) % 1000 for i in range(batch)], dtype=torch.float32, device=dev)
        with torch.no_grad():
            seconds = timed(lambda: model(x, t).sample, warmup, repeats)
            checksum = float(model(x, t).sample.sum())
        images = batch
    else:
        sys.exit(f"gpu.py: unknown workload {workload!r}")
    print(json.dumps({"workload": workload, "device": torch.cuda.get_device_name(0), "seconds": seconds,
                      "images_per_run": images, "checksum": checksum}))


if __name__ == "__main__":
    main()
