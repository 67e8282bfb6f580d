//! The f32 kernels of GroupNorm followed by SiLU on a contiguous `[batch, channels, pixels]` buffer: one task per
//! (image, group), whose channels are adjacent in memory, so a task reads its group twice for the statistics and
//! once for the output (forward), and twice for the input gradient (backward), all of it in cache.
//!
//! Every sum runs in 16 f32 lanes combined in f64, in an order fixed by the shapes alone: the same bits at any
//! thread count. The parameter gradients add the images' per-channel sums in batch order after the parallel part.

use burn::backend::flex::simd::sigmoid_inplace_f32;
use core::mem::MaybeUninit;
use rayon::prelude::*;

/// Independent partial sums per reduction (enough for the compiler to keep them in vector registers).
const LANES: usize = 16;

/// Elements per rayon task at least: smaller jobs cost more in hand-offs than they save.
const MIN_TASK_ELEMENTS: usize = 16 * 1024;

/// The shape of a GroupNorm input: `batch` images of `channels` planes of `pixels` values, in `groups` groups.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub batch: usize,
    pub channels: usize,
    pub groups: usize,
    pub pixels: usize,
}

impl Dims {
    fn per_group(&self) -> usize {
        self.channels / self.groups
    }

    fn group_len(&self) -> usize {
        self.per_group() * self.pixels
    }

    /// Groups per rayon task at least.
    fn min_groups_per_task(&self) -> usize {
        MIN_TASK_ELEMENTS.div_ceil(self.group_len().max(1))
    }
}

/// Each (image, group)'s mean and reciprocal standard deviation `1 / sqrt(var + eps)`, indexed `image * groups +
/// group`: what the backward pass needs besides the input.
#[derive(Clone, Debug)]
pub(super) struct Statistics {
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// The parameter gradients of one backward pass, one value per channel.
pub(super) struct ParamGrads {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

/// `Σ f(x)` over `xs`, in [`LANES`] f32 partial sums added in f64.
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += f(x);
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + rest.iter().map(|&x| f(x) as f64).sum::<f64>()
}

/// `y = silu(gamma_c (x - mean) rstd + beta_c)` with the biased variance of each (image, group), as Burn's
/// `GroupNorm` then `silu` compute it; returns the statistics.
///
/// `y` need not be initialised: each plane's first pass writes every value before anything reads it.
pub(super) fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    d: Dims,
    eps: f64,
    y: &mut [MaybeUninit<f32>],
) -> Statistics {
    let tasks = d.batch * d.groups;
    let mut stats = Statistics { mean: vec![0.0; tasks], rstd: vec![0.0; tasks] };
    let m = d.group_len();
    if m == 0 {
        return stats;
    }
    y.par_chunks_mut(m)
        .zip(x.par_chunks(m))
        .zip(stats.mean.par_iter_mut().zip(stats.rstd.par_iter_mut()))
        .enumerate()
        .with_min_len(d.min_groups_per_task())
        .for_each(|(task, ((y, x), (mean, rstd)))| {
            let mu = (lane_sum(x, |v| v) / m as f64) as f32;
            let var = lane_sum(x, |v| (v - mu) * (v - mu)) / m as f64;
            let r = (1.0 / (var + eps).sqrt()) as f32;
            (*mean, *rstd) = (mu, r);
            let first = task % d.groups * d.per_group();
            for (c, (y, x)) in y.chunks_exact_mut(d.pixels).zip(x.chunks_exact(d.pixels)).enumerate() {
                let (g, b) = (gamma[first + c], beta[first + c]);
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write((x - mu) * r * g + b);
                }
                // SAFETY: every value of the plane was written just above.
                let y = unsafe { y.assume_init_mut() };
                // y = h sigmoid(h): the vectorised sigmoid in place, then the product with h recomputed.
                sigmoid_inplace_f32(y);
                for (y, &x) in y.iter_mut().zip(x) {
                    *y *= (x - mu) * r * g + b;
                }
            }
        });
    stats
}

/// The gradients of [`forward`] given the output gradient `dy`: the input gradient into `dx`, the parameter
/// gradients returned. With `x̂ = (x - mean) rstd`, `h = gamma x̂ + beta` and `s = sigmoid(h)`:
/// `dh = dy s (1 + h (1 - s))`, `d gamma_c = Σ dh x̂`, `d beta_c = Σ dh`, and per (image, group)
/// `dx = rstd (gamma dh - a - x̂ b)` with `a`, `b` the group means of `gamma dh` and `gamma dh x̂`.
pub(super) fn backward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &Statistics,
    dy: &[f32],
    d: Dims,
    dx: &mut [MaybeUninit<f32>],
) -> ParamGrads {
    let (m, per_group) = (d.group_len(), d.per_group());
    // Per (image, channel): Σ dh and Σ dh x̂.
    let mut sums = vec![[0f64; 2]; d.batch * d.channels];
    if m > 0 {
        dx.par_chunks_mut(m)
            .zip(x.par_chunks(m))
            .zip(dy.par_chunks(m))
            .zip(sums.par_chunks_mut(per_group))
            .enumerate()
            .with_min_len(d.min_groups_per_task())
            .for_each(|(task, (((dx, x), dy), sums))| {
                let (mu, r) = (stats.mean[task], stats.rstd[task]);
                let first = task % d.groups * per_group;
                let (mut a, mut b) = (0f64, 0f64);
                let planes = dx.chunks_exact_mut(d.pixels).zip(x.chunks_exact(d.pixels)).zip(dy.chunks_exact(d.pixels));
                for (c, ((dx, x), dy)) in planes.enumerate() {
                    let (g, bt) = (gamma[first + c], beta[first + c]);
                    for (s, &x) in dx.iter_mut().zip(x) {
                        s.write((x - mu) * r * g + bt);
                    }
                    // SAFETY: every value of the plane was written just above.
                    let dx = unsafe { dx.assume_init_mut() };
                    sigmoid_inplace_f32(dx);
                    let (mut acc_dh, mut acc_dh_xhat) = ([0f32; LANES], [0f32; LANES]);
                    let mut tail = [0f64; 2];
                    let step = |s: &mut f32, x: f32, dy: f32| {
                        let xhat = (x - mu) * r;
                        let h = xhat * g + bt;
                        let dh = dy * *s * (1.0 + h * (1.0 - *s));
                        *s = dh;
                        (dh, dh * xhat)
                    };
                    let lanes = dx.chunks_exact_mut(LANES).zip(x.chunks_exact(LANES)).zip(dy.chunks_exact(LANES));
                    for ((s, x), dy) in lanes {
                        // Fixed-length views: the lane loop carries no bounds checks and vectorises.
                        let s: &mut [f32; LANES] = s.try_into().expect("chunks_exact yields LANES values");
                        let x: &[f32; LANES] = x.try_into().expect("chunks_exact yields LANES values");
                        let dy: &[f32; LANES] = dy.try_into().expect("chunks_exact yields LANES values");
                        for l in 0..LANES {
                            let (p, q) = step(&mut s[l], x[l], dy[l]);
                            acc_dh[l] += p;
                            acc_dh_xhat[l] += q;
                        }
                    }
                    let done = d.pixels / LANES * LANES;
                    for ((s, &x), &dy) in dx[done..].iter_mut().zip(&x[done..]).zip(&dy[done..]) {
                        let (p, q) = step(s, x, dy);
                        tail[0] += p as f64;
                        tail[1] += q as f64;
                    }
                    let sum_dh = acc_dh.iter().map(|&v| v as f64).sum::<f64>() + tail[0];
                    let sum_dh_xhat = acc_dh_xhat.iter().map(|&v| v as f64).sum::<f64>() + tail[1];
                    sums[c] = [sum_dh, sum_dh_xhat];
                    a += g as f64 * sum_dh;
                    b += g as f64 * sum_dh_xhat;
                }
                let (a, b) = ((a / m as f64) as f32, (b / m as f64) as f32);
                // SAFETY: the loop above wrote every plane of the group.
                let dx = unsafe { dx.assume_init_mut() };
                for (c, (dx, x)) in dx.chunks_exact_mut(d.pixels).zip(x.chunks_exact(d.pixels)).enumerate() {
                    let g = gamma[first + c];
                    for (dx, &x) in dx.iter_mut().zip(x) {
                        let xhat = (x - mu) * r;
                        *dx = r * (g * *dx - a - xhat * b);
                    }
                }
            });
    }
    let (mut d_gamma, mut d_beta) = (vec![0f64; d.channels], vec![0f64; d.channels]);
    for image in sums.chunks_exact(d.channels.max(1)) {
        for (c, &[dh, dh_xhat]) in image.iter().enumerate() {
            d_beta[c] += dh;
            d_gamma[c] += dh_xhat;
        }
    }
    ParamGrads {
        gamma: d_gamma.into_iter().map(|v| v as f32).collect(),
        beta: d_beta.into_iter().map(|v| v as f32).collect(),
    }
}
