"""The PyTorch twin of tilt's 2-D score-network benchmarks (benches/workloads/mod.rs), the way a PyTorch user
would write it: the same network, sizes, optimizer and sampler arithmetic, eager mode.

    python twin.py <train|sample|cfg|sample_per_label|cfg_per_label|unet_train|unet_cfg|diffusers_forward|matmul> <repeats>

`sample` and `cfg` run the network row by row, the way a PyTorch user writes it; the `_per_label` variants
compute the conditioning once per label and time, as tilt's sampling forward does (the same numbers, less
arithmetic), so the table can show both comparisons.

Untimed warm-up (10 training steps, or one run), then `repeats` timed runs; prints one JSON line like `benches/paired.rs`. Threads: the
driver sets OMP_NUM_THREADS and torch.set_num_threads to the same count it gives tilt (RAYON_NUM_THREADS).
"""

import json
import math
import os
import sys
import time

import torch
from torch import nn

TRAIN_BATCH = 1024
SAMPLE_N = 10_000
SAMPLE_STEPS = 20
CFG_STRENGTH = 2.0
T_MAX, T_MIN = 1.0 - 1e-5, 1e-3
WARMUP_STEPS = 10  # untimed training steps first (PyTorch's first steps set up its kernels); tilt does the same


def time_embedding(t, dim):
    """[sin(1000 t f_i), cos(1000 t f_i)], f_i = 10000^(-i/half) (tilt-models embedding.rs)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / half))
    args = (t * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ScoreNet(nn.Module):
    """tilt-models ScoreNet: hidden 128, one residual block, time_dim 32, SiLU."""

    def __init__(self, dim=2, hidden=128, blocks=1, time_dim=32, num_classes=0):
        super().__init__()
        self.time_dim, self.num_classes = time_dim, num_classes
        self.input = nn.Linear(dim, hidden)
        self.time_mlp = nn.Linear(time_dim, hidden)
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"lin1": nn.Linear(hidden, hidden), "lin2": nn.Linear(hidden, hidden),
                           "cond": nn.Linear(hidden, hidden)}) for _ in range(blocks))
        self.output = nn.Linear(hidden, dim)
        self.act = nn.SiLU()

    def forward_at(self, x, t, labels):
        """`forward` with every row at time `t`, as tilt's sampling forward computes it (score_net.rs
        `forward_at`): the time embedding once, and the label-dependent conditioning once per label (a table of
        `num_classes + 1` rows that the rows gather from). The same numbers as `forward` with less arithmetic."""
        emb = self.time_mlp(time_embedding(torch.full((1,), t), self.time_dim))
        table = self.act(emb + self.class_emb.weight)
        h = self.input(x)
        for b in self.blocks:
            inner = b["lin1"](self.act(h)) + b["cond"](table)[labels]
            h = h + b["lin2"](self.act(inner))
        return self.output(self.act(h))

    def forward(self, x, t, labels=None):
        emb = self.time_mlp(time_embedding(t, self.time_dim))
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long)
            emb = emb + self.class_emb(labels)
        emb = self.act(emb)
        h = self.input(x)
        for b in self.blocks:
            inner = b["lin1"](self.act(h)) + b["cond"](emb)
            h = h + b["lin2"](self.act(inner))
        return self.output(self.act(h))


UNET_BASE, UNET_TRAIN_BATCH, UNET_SAMPLE_N, UNET_SAMPLE_STEPS = 16, 32, 20, 10
UNET_WARMUP_STEPS = 3


class UNet(nn.Module):
    """tilt's U-Net at benches/workloads `unet_config`, which is diffusers' UNet2DModel in this configuration: 28x28x1,
    block_out_channels (16, 32, 32), one resnet per down level, GroupNorm(8), a 64-wide time embedding MLP, 10 classes
    + null, single-head attention in the middle block, zero output conv; tilt's t in [0, 1] is fed as timestep
    clamp(1000 t - 1, 0, 999) (tilt-models diffusers/net.rs `TimestepMap`)."""

    def __init__(self, base=UNET_BASE, mults=(1, 2, 2), groups=8, time_dim=64, num_classes=10):
        super().__init__()
        from diffusers import UNet2DModel

        levels = len(mults)
        self.num_classes = num_classes
        self.unet = UNet2DModel(
            sample_size=28, in_channels=1, out_channels=1, block_out_channels=tuple(base * m for m in mults),
            down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels, layers_per_block=1,
            norm_num_groups=groups, time_embedding_dim=time_dim, num_class_embeds=num_classes + 1,
            attention_head_dim=None, add_attention=True)
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)

    def forward(self, x, t, labels):
        n = x.shape[0]
        k = (t * 1000.0 - 1.0).clamp(0.0, 999.0)
        return self.unet(x.reshape(n, 1, 28, 28), k, class_labels=labels).sample.reshape(n, 784)


def timed(run, warmup, repeats):
    """`warmup` untimed calls of `run`, then the wall-clock seconds of `repeats` timed ones, and the last result."""
    out = None
    for _ in range(warmup):
        out = run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        seconds.append(time.perf_counter() - start)
    return seconds, out


def training(model, lr, xt, t, z, labels, warmup, repeats):
    """Timed DSM steps of `model` (AdamW, `eps = 1e-8`, no weight decay) on fixed inputs; the checksum is the sum of
    the trained model's output on them."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, eps=1e-8, weight_decay=0.0)
    forward = (lambda: model(xt, t)) if labels is None else (lambda: model(xt, t, labels))

    def step():
        opt.zero_grad(set_to_none=True)
        (forward() - z).square().mean().backward()
        opt.step()

    seconds, _ = timed(step, warmup, repeats)
    with torch.no_grad():
        return seconds, float(forward().sum())


def diffused(x0, z):
    """The DSM inputs of a batch: times spread over (0, 1) and `x_t = sqrt(1 - t) x0 + sqrt(t) z`."""
    n = x0.shape[0]
    t = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    return x0 * (1 - t).sqrt()[:, None] + z * t.sqrt()[:, None], t


def unet_train(repeats):
    torch.manual_seed(0)
    n = UNET_TRAIN_BATCH
    model = UNet()
    x0, z = torch.randn(n, 784).tanh(), torch.randn(n, 784)
    xt, t = diffused(x0, z)
    return training(model, 1e-4, xt, t, z, torch.arange(n) % 10, UNET_WARMUP_STEPS, repeats)


def train(repeats):
    torch.manual_seed(0)
    model = ScoreNet()
    x0, z = torch.randn(TRAIN_BATCH, 2), torch.randn(TRAIN_BATCH, 2)
    xt, t = diffused(x0, z)
    return training(model, 1e-3, xt, t, z, None, WARMUP_STEPS, repeats)


def log_snr_grid(steps):
    """tilt's default time grid (linear schedule, uniform in log-SNR), as (alpha, sigma) per time."""
    lam = lambda t: math.log((1 - t) / t)
    l0, l1 = lam(T_MAX), lam(T_MIN)
    ts = [1.0 / (1.0 + math.exp(l0 + (l1 - l0) * k / steps)) for k in range(steps + 1)]
    return [(math.sqrt(1 - t), math.sqrt(t), t) for t in ts]


@torch.no_grad()
def sample(model, cfg, per_label=False, n=SAMPLE_N, steps=SAMPLE_STEPS, dim=2):
    """SDE-DPM-Solver-1 (tilt-sampler samplers.rs `sde_dpm_solver_1`), class 0, 20 steps, no final denoise.
    `per_label`: the network's conditioning once per label and time (`forward_at`), as tilt computes it."""
    torch.manual_seed(0)
    grid = log_snr_grid(steps)
    x = torch.randn(n, dim)
    labels = torch.zeros(n, dtype=torch.long)
    both = torch.cat([labels, torch.full((n,), model.num_classes, dtype=torch.long)])
    for (a, s, t), (a2, s2, _) in zip(grid, grid[1:]):
        tt = torch.full((n,), t)
        if cfg:
            xx = torch.cat([x, x])
            out = model.forward_at(xx, t, both) if per_label else model(xx, torch.cat([tt, tt]), both)
            eps_c, eps_u = out[:n], out[n:]
            eps = eps_c + CFG_STRENGTH * (eps_c - eps_u)
        else:
            eps = model.forward_at(x, t, labels) if per_label else model(x, tt, labels)
        e = (a2 * s) / (s2 * a)
        x = x * (a2 / a) - eps * (2 * s2 * (e - 1)) + torch.randn(n, dim) * (s2 * math.sqrt(max(e * e - 1, 0.0)))
    return x


def sampling(repeats, cfg, per_label):
    torch.manual_seed(0)
    model = ScoreNet(num_classes=2).eval()
    seconds, x = timed(lambda: sample(model, cfg, per_label), 1, repeats)
    return seconds, float(x.sum())


def unet_sampling(repeats):
    """20 images, 10 steps, CFG at w = 2 in one batch (tilt: benches/workloads `UNetSampling`)."""
    torch.manual_seed(0)
    model = UNet().eval()
    seconds, x = timed(lambda: sample(model, True, n=UNET_SAMPLE_N, steps=UNET_SAMPLE_STEPS, dim=784), 1, repeats)
    return seconds, float(x.sum())


def diffusers_forward(repeats):
    """diffusers' UNet2DModel of DDPM-CIFAR10's configuration (benches/configs/ddpm-cifar10-32.json, 35.7 M
    parameters), random weights, one forward at batch 16 without gradients (tilt: workloads `DiffusersForward`)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "ddpm-cifar10-32.json")
    config = {k: v for k, v in json.load(open(path)).items() if not k.startswith("_")}
    model = UNet2DModel(**config).eval()
    size, batch = config["sample_size"], 16
    x = torch.randn(batch, config["in_channels"], size, size)
    t = torch.tensor([(i * 997) % 1000 for i in range(batch)], dtype=torch.float32)
    with torch.no_grad():
        seconds, out = timed(lambda: model(x, t).sample, 1, repeats)
    return seconds, float(out.sum()), sum(p.numel() for p in model.parameters())


def matmul(repeats):
    """The hidden-layer product of the training step, [1024, 128] x [128, 128], alone."""
    torch.manual_seed(2)
    a, b = torch.randn(TRAIN_BATCH, 128), torch.randn(128, 128)
    seconds, out = timed(lambda: a @ b, 1, repeats)
    return seconds, float(out.sum())


def main():
    workload, repeats = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if workload == "train":
        seconds, checksum = train(repeats)
    elif workload == "matmul":
        seconds, checksum = matmul(repeats)
    elif workload == "unet_train":
        seconds, checksum = unet_train(repeats)
    elif workload == "unet_cfg":
        seconds, checksum = unet_sampling(repeats)
    elif workload == "diffusers_forward":
        seconds, checksum, params = diffusers_forward(repeats)
        print(json.dumps({"workload": workload, "seconds": seconds, "checksum": checksum, "parameters": params}))
        return
    elif workload in ("sample", "cfg", "sample_per_label", "cfg_per_label"):
        seconds, checksum = sampling(repeats, workload.startswith("cfg"), workload.endswith("_per_label"))
    else:
        sys.exit(f"twin.py: unknown workload {workload!r}; expected train, sample, cfg, sample_per_label, "
                 "cfg_per_label, unet_train, unet_cfg, diffusers_forward or matmul")
    net = UNet() if workload.startswith("unet") else ScoreNet(num_classes=0 if workload == "train" else 2)
    params = sum(p.numel() for p in net.parameters())
    print(json.dumps({"workload": workload, "seconds": seconds, "checksum": checksum, "parameters": params}))


if __name__ == "__main__":
    main()
