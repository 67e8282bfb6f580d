//! Frequency-decoupled guidance (FDG; Sadat et al. 2025, "Guidance in the Frequency Domain Enables High-Fidelity
//! Sampling at Low CFG Scales", Algorithm 2; diffusers' `FrequencyDecoupledGuidance`).
//!
//! The conditional and unconditional denoises `x0(x|c)`, `x0(x)` of an image model are split into Laplacian pyramids
//! (level 0 the finest detail, the last level the low-pass residual); on level `l` the CFG difference
//! `D_l = L_l(x0(x|c)) - L_l(x0(x))` is split into its part parallel to `L_l(x0(x|c))` and the rest, the parallel
//! part weighted by `parallel_weights[l]`, and scaled by `level_weights[l]`; the pyramid of these is collapsed back
//! into an image and turned into a score: `g = alpha / sigma^2 * collapse(level_weights[l] P_l(D_l))`. At weight `w`
//! that is diffusers' FDG with `guidance_scales[l] = 1 + w level_weights[l]`; with every level weight 1 and no
//! parallel weighting it is CFG's `s(x|c) - s(x)` exactly (the pyramid collapses to its input).
//!
//! The pyramid is kornia's (`build_laplacian_pyramid`, `pyrup`), which the paper and diffusers use: a 5 x 5 binomial
//! blur with reflected borders, down by averaging 2 x 2 blocks (bilinear at half size), up by bilinear doubling then
//! the blur. Sizes that are not a power of two are padded by kornia to the next one; tilt works at the size itself and
//! asks that each level halves exactly. Written on the host in f64 (images of tens of pixels a side: a small cost
//! beside the network's forward pass); no crate offers kornia's exact pyramid.

use super::{BaseEval, GuidanceTerm};
use burn::prelude::*;
use tilt_core::tensor_ext;

/// The FDG term for images of shape `[channels, height, width]`.
#[derive(Clone, Debug)]
pub struct FrequencyDecoupledGuidance {
    /// Per pyramid level, finest first: the factor on the term's weight.
    pub level_weights: Vec<f64>,
    /// Per level: the weight of the difference's component parallel to the conditional level (1 keeps it).
    pub parallel_weights: Vec<f64>,
    image: [usize; 3],
}

impl FrequencyDecoupledGuidance {
    /// FDG over `level_weights.len()` levels (at least 2) for images of `image = [c, h, w]`; `parallel_weights`
    /// defaults to all 1. Checks that every level halves exactly and that the coarsest is at least 3 pixels a side
    /// (the blur's reflected border needs 3).
    pub fn new(level_weights: Vec<f64>, parallel_weights: Option<Vec<f64>>, image: [usize; 3]) -> Result<Self, String> {
        let levels = level_weights.len();
        if levels < 2 {
            return Err(format!("level_weights: expected at least 2 levels (finest first), got {levels}"));
        }
        let parallel_weights = parallel_weights.unwrap_or_else(|| vec![1.0; levels]);
        if parallel_weights.len() != levels {
            return Err(format!("parallel_weights: expected one per level ({levels}), got {}", parallel_weights.len()));
        }
        for (name, v) in level_weights
            .iter()
            .map(|v| ("level_weights", v))
            .chain(parallel_weights.iter().map(|v| ("parallel_weights", v)))
        {
            if !(v.is_finite() && v.abs() <= 1e4) {
                return Err(format!("{name}: expected finite values in [-1e4, 1e4], got {v}"));
            }
        }
        let [_, h, w] = image;
        // More levels than bits would overflow the shift; such a pyramid could not fit any image anyway.
        let factor = 1usize.checked_shl((levels - 1) as u32).unwrap_or(usize::MAX);
        if h % factor != 0 || w % factor != 0 || h / factor < 3 || w / factor < 3 {
            return Err(format!(
                "level_weights: {levels} levels need images whose sides halve exactly {} times down to at least 3 pixels; the model's images are {h} x {w}",
                levels - 1
            ));
        }
        Ok(Self { level_weights, parallel_weights, image })
    }

    /// The guided denoise's pyramid difference, collapsed: `collapse(level_weights[l] P_l(L_l(cond) - L_l(uncond)))`
    /// for one image each (`[c, h, w]` in f64).
    pub fn guided_difference(&self, cond: &[f64], uncond: &[f64]) -> Vec<f64> {
        let [c, h, w] = self.image;
        let levels = self.level_weights.len();
        let pc = laplacian_pyramid(cond, c, h, w, levels);
        let pu = laplacian_pyramid(uncond, c, h, w, levels);
        let guided: Vec<Vec<f64>> = pc
            .iter()
            .zip(&pu)
            .enumerate()
            .map(|(l, (lc, lu))| {
                let diff: Vec<f64> = lc.iter().zip(lu).map(|(a, b)| a - b).collect();
                // torch.nn.functional.normalize: v / max(|v|, 1e-12).
                let norm = lc.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                let along = diff.iter().zip(lc).map(|(d, v)| d * v).sum::<f64>() / norm;
                let pw = self.parallel_weights[l];
                diff.iter()
                    .zip(lc)
                    .map(|(d, v)| {
                        let parallel = along * v / norm;
                        self.level_weights[l] * (pw * parallel + (d - parallel))
                    })
                    .collect()
            })
            .collect();
        collapse(&guided, c, h, w)
    }
}

impl GuidanceTerm for FrequencyDecoupledGuidance {
    fn name(&self) -> &'static str {
        "fdg"
    }

    fn needs_unconditional(&self) -> bool {
        true
    }

    fn term(&mut self, x: &Tensor<2>, t: f64, base: &BaseEval) -> Tensor<2> {
        let schedule = base.model.schedule();
        let (alpha, sigma) = (schedule.alpha(t), schedule.sigma(t));
        let x0 = |s: &Tensor<2>| tilt_core::score::param::clean_from_score(x.clone(), s.clone(), alpha, sigma);
        let cond = tensor_ext::to_vec_f64(x0(&base.score));
        let uncond = tensor_ext::to_vec_f64(x0(base.unconditional.as_ref().expect("requested")));
        let [n, d] = x.dims();
        let scale = alpha / (sigma * sigma);
        let out: Vec<f32> = cond
            .chunks_exact(d)
            .zip(uncond.chunks_exact(d))
            .flat_map(|(c, u)| self.guided_difference(c, u).into_iter().map(|v| (scale * v) as f32))
            .collect();
        tensor_ext::matrix(&out, n, d, &x.device())
    }
}

/// kornia's pyramid kernel: the outer product of `[1, 4, 6, 4, 1] / 16`.
const BINOMIAL: [f64; 5] = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];

/// PyTorch's `reflect` border: -1 -> 1, n -> n - 2.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let i = if i < 0 { -i } else { i };
    (if i >= n { 2 * (n - 1) - i } else { i }) as usize
}

/// The 5 x 5 binomial blur of one `h x w` plane, reflected borders (separable).
fn blur(p: &[f64], h: usize, w: usize) -> Vec<f64> {
    let mut rows = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            rows[y * w + x] = (0..5).map(|k| BINOMIAL[k] * p[y * w + reflect(x as isize + k as isize - 2, w)]).sum();
        }
    }
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (0..5).map(|k| BINOMIAL[k] * rows[reflect(y as isize + k as isize - 2, h) * w + x]).sum();
        }
    }
    out
}

/// Blur, then bilinear to half size (`align_corners = false`: the mean of each 2 x 2 block).
fn pyr_down(p: &[f64], h: usize, w: usize) -> Vec<f64> {
    let b = blur(p, h, w);
    let (h2, w2) = (h / 2, w / 2);
    let mut out = vec![0.0; h2 * w2];
    for y in 0..h2 {
        for x in 0..w2 {
            let at = |yy: usize, xx: usize| b[(2 * y + yy) * w + 2 * x + xx];
            out[y * w2 + x] = 0.25 * (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1));
        }
    }
    out
}

/// Bilinear to double size (`align_corners = false`, edges clamped), then blur.
fn pyr_up(p: &[f64], h: usize, w: usize) -> Vec<f64> {
    let (h2, w2) = (2 * h, 2 * w);
    // Output index o samples the input at (o + 0.5) / 2 - 0.5: 0.75 of the nearer input, 0.25 of the other.
    let taps = |o: usize, n: usize| -> (usize, usize) {
        let k = o / 2;
        let other = if o.is_multiple_of(2) { k.saturating_sub(1) } else { (k + 1).min(n - 1) };
        (k, other)
    };
    let mut up = vec![0.0; h2 * w2];
    for y in 0..h2 {
        let (y0, y1) = taps(y, h);
        for x in 0..w2 {
            let (x0, x1) = taps(x, w);
            let row = |yy: usize| 0.75 * p[yy * w + x0] + 0.25 * p[yy * w + x1];
            up[y * w2 + x] = 0.75 * row(y0) + 0.25 * row(y1);
        }
    }
    blur(&up, h2, w2)
}

/// kornia's `build_laplacian_pyramid` of an image `[c, h, w]`: `levels` bands, finest first, each `[c, h_l, w_l]`;
/// the last is the low-pass image itself.
pub fn laplacian_pyramid(img: &[f64], c: usize, h: usize, w: usize, levels: usize) -> Vec<Vec<f64>> {
    let mut bands = vec![Vec::new(); levels];
    for ch in 0..c {
        let (mut g, mut hh, mut ww) = (img[ch * h * w..(ch + 1) * h * w].to_vec(), h, w);
        for band in bands.iter_mut().take(levels - 1) {
            let down = pyr_down(&g, hh, ww);
            let up = pyr_up(&down, hh / 2, ww / 2);
            band.extend(g.iter().zip(&up).map(|(a, b)| a - b));
            (g, hh, ww) = (down, hh / 2, ww / 2);
        }
        bands[levels - 1].extend(g);
    }
    bands
}

/// The image a Laplacian pyramid of `[c, h, w]` stands for: from the coarsest band, `pyr_up` and add the next.
pub fn collapse(bands: &[Vec<f64>], c: usize, h: usize, w: usize) -> Vec<f64> {
    let levels = bands.len();
    let mut out = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        let (hl, wl) = (h >> (levels - 1), w >> (levels - 1));
        let mut img = bands[levels - 1][ch * hl * wl..(ch + 1) * hl * wl].to_vec();
        for l in (0..levels - 1).rev() {
            let (hh, ww) = (h >> l, w >> l);
            let up = pyr_up(&img, hh / 2, ww / 2);
            img = up.iter().zip(&bands[l][ch * hh * ww..(ch + 1) * hh * ww]).map(|(a, b)| a + b).collect();
        }
        out.extend(img);
    }
    out
}
