"""The PyTorch twin of tilt's 2-D score-network benchmarks (benches/workloads/mod.rs), the way a PyTorch user
would write it: the same network, sizes, optimizer and sampler arithmetic, eager mode.

    python twin.py <train|sample|cfg|sample_per_label|cfg_per_label|unet_train|unet_cfg|matmul> <repeats>

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


class ConvBlock(nn.Module):
    """tilt-models unet.rs ConvBlock: GroupNorm, SiLU, 3x3 conv, the embedding added per channel, again, skip."""

    def __init__(self, i, o, emb_dim, groups):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, i), nn.Conv2d(i, o, 3, padding=1)
        self.emb = nn.Linear(emb_dim, o)
        self.norm2, self.conv2 = nn.GroupNorm(groups, o), nn.Conv2d(o, o, 3, padding=1)
        self.skip = nn.Conv2d(i, o, 1) if i != o else None
        self.act = nn.SiLU()

    def forward(self, x, emb):
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb(self.act(emb))[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return (self.skip(x) if self.skip is not None else x) + h


class SelfAttention(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.norm, self.qkv, self.out = nn.GroupNorm(groups, c), nn.Linear(c, 3 * c), nn.Linear(c, c)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        n, c, h, w = x.shape
        tokens = self.norm(x).reshape(n, c, h * w).transpose(1, 2)
        q, k, v = self.qkv(tokens).split(c, dim=2)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=2)
        return x + self.out(weights @ v).transpose(1, 2).reshape(n, c, h, w)


class UNet(nn.Module):
    """tilt-models unet.rs at benches/workloads `unet_config`: 28x28x1, levels x1 x2 x2, one block per level,
    GroupNorm(8), 64-d time embedding, 10 classes + null, attention at the lowest level, zero output conv."""

    def __init__(self, base=UNET_BASE, mults=(1, 2, 2), groups=8, time_dim=64, num_classes=10):
        super().__init__()
        self.time_dim, self.num_classes = time_dim, num_classes
        emb_dim = 4 * base
        ch = [base * m for m in mults]
        self.conv_in = nn.Conv2d(1, ch[0], 3, padding=1)
        self.time_mlp1, self.time_mlp2 = nn.Linear(time_dim, emb_dim), nn.Linear(emb_dim, emb_dim)
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.down, self.downsample, skips, c = nn.ModuleList(), nn.ModuleList(), [], ch[0]
        for level, out in enumerate(ch):
            self.down.append(ConvBlock(c, out, emb_dim, groups))
            c = out
            skips.append(c)
            if level + 1 < len(ch):
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1, self.attention, self.mid2 = (ConvBlock(c, c, emb_dim, groups), SelfAttention(c, groups),
                                                ConvBlock(c, c, emb_dim, groups))
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(ch))):
            self.up.append(ConvBlock(c + skips.pop(), ch[level], emb_dim, groups))
            c = ch[level]
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm_out, self.conv_out = nn.GroupNorm(groups, c), nn.Conv2d(c, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.act = nn.SiLU()

    def forward(self, x, t, labels):
        n = x.shape[0]
        emb = self.time_mlp2(self.act(self.time_mlp1(time_embedding(t, self.time_dim)))) + self.class_emb(labels)
        x = self.conv_in(x.reshape(n, 1, 28, 28))
        skips = []
        for level, block in enumerate(self.down):
            x = block(x, emb)
            skips.append(x)
            if level < len(self.downsample):
                x = self.downsample[level](x)
        x = self.mid2(self.attention(self.mid1(x, emb)), emb)
        for i, block in enumerate(self.up):
            x = block(torch.cat([x, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                x = self.upsample[i](nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
        return self.conv_out(self.act(self.norm_out(x))).reshape(n, 784)


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
    elif workload in ("sample", "cfg", "sample_per_label", "cfg_per_label"):
        seconds, checksum = sampling(repeats, workload.startswith("cfg"), workload.endswith("_per_label"))
    else:
        sys.exit(f"twin.py: unknown workload {workload!r}; expected train, sample, cfg, sample_per_label, "
                 "cfg_per_label, unet_train, unet_cfg or matmul")
    net = UNet() if workload.startswith("unet") else ScoreNet(num_classes=0 if workload == "train" else 2)
    params = sum(p.numel() for p in net.parameters())
    print(json.dumps({"workload": workload, "seconds": seconds, "checksum": checksum, "parameters": params}))


if __name__ == "__main__":
    main()
