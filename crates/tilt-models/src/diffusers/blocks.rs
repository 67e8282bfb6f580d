//! The building blocks of diffusers' `UNet2DModel`, with diffusers' field names so that a checkpoint's tensor names
//! are the Burn module paths (GroupNorm `weight`/`bias` and the transposed `Linear` weights are Burn's
//! `PyTorchToBurnAdapter`'s business).

use crate::norm_silu::group_norm_silu;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use tilt_core::attention::{AttentionPerturbation, blur_matrix};

/// A 3×3 convolution with padding 1 (diffusers' `conv_in`, `conv1`, `conv2`, upsampler, `conv_out`).
pub(crate) fn conv3(i: usize, o: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device)
}

/// A GroupNorm with diffusers' groups and epsilon.
pub(crate) fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels).with_epsilon(eps).init(device)
}

/// diffusers' `Timesteps` (the sinusoidal projection, no parameters): `[sin(k f_i), cos(k f_i)]` (or `[cos, sin]`
/// with `flip_sin_to_cos`) with `f_i = exp(-ln(10000) i / (half - freq_shift))`.
///
/// The frequency table is computed on the host in PyTorch's order of f32 operations (f32 product, f32 quotient,
/// `exp` correctly rounded to f32): any other order moves up to half the frequencies by one unit in the last place,
/// which at timesteps near 1000 changes the embedding by ~3e-5.
#[derive(Clone, Debug)]
pub struct Timesteps {
    freqs: Vec<f32>,
    flip_sin_to_cos: bool,
}

impl Timesteps {
    /// The projection of width `dim` (even).
    pub fn new(dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> Self {
        let half = dim / 2;
        let divisor = (half as f64 - freq_shift) as f32;
        let log_period = -(10000f64.ln()) as f32;
        let freqs = (0..half).map(|i| (((log_period * i as f32) / divisor) as f64).exp() as f32).collect();
        Self { freqs, flip_sin_to_cos }
    }

    /// `[n] -> [n, dim]` for timesteps in the model's own units (`0..num_train_timesteps`).
    pub fn forward(&self, timesteps: Tensor<1>) -> Tensor<2> {
        let device = timesteps.device();
        let freqs = Tensor::<1>::from_data(TensorData::new(self.freqs.clone(), [self.freqs.len()]), &device);
        let args = timesteps.unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim::<2>(0);
        let (sin, cos) = (args.clone().sin(), args.cos());
        Tensor::cat(if self.flip_sin_to_cos { vec![cos, sin] } else { vec![sin, cos] }, 1)
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// Projection to the embedding width.
    pub linear_1: Linear,
    /// Second layer.
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// A `[n, input] -> [n, dim]` MLP.
    pub fn new(input: usize, dim: usize, device: &Device) -> Self {
        Self {
            linear_1: LinearConfig::new(input, dim).init(device),
            linear_2: LinearConfig::new(dim, dim).init(device),
        }
    }

    /// The embedding.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// diffusers' `ResnetBlock2D`: two GroupNorm-SiLU-convolutions with the time embedding between, and a skip.
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    /// First GroupNorm.
    pub norm1: GroupNorm,
    /// First convolution.
    pub conv1: Conv2d,
    /// Projection of the time embedding (`out` channels, or `2 out` for scale and shift).
    pub time_emb_proj: Linear,
    /// Second GroupNorm.
    pub norm2: GroupNorm,
    /// Second convolution.
    pub conv2: Conv2d,
    /// 1×1 convolution of the skip where the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
    scale_shift: bool,
    output_scale_factor: f64,
}

/// The settings every residual block of one model shares.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResnetSettings {
    pub groups: usize,
    pub eps: f64,
    pub temb: usize,
    pub scale_shift: bool,
}

impl ResnetBlock2D {
    pub(crate) fn new(i: usize, o: usize, s: ResnetSettings, output_scale_factor: f64, device: &Device) -> Self {
        Self {
            norm1: group_norm(s.groups, i, s.eps, device),
            conv1: conv3(i, o, device),
            time_emb_proj: LinearConfig::new(s.temb, if s.scale_shift { 2 * o } else { o }).init(device),
            norm2: group_norm(s.groups, o, s.eps, device),
            conv2: conv3(o, o, device),
            conv_shortcut: (i != o).then(|| Conv2dConfig::new([i, o], [1, 1]).init(device)),
            scale_shift: s.scale_shift,
            output_scale_factor,
        }
    }

    /// The block on `x: [n, c, h, w]` with the time embedding `temb: [n, temb]`.
    pub fn forward(&self, x: Tensor<4>, temb: Tensor<2>) -> Tensor<4> {
        let n = x.dims()[0];
        let h = self.conv1.forward(group_norm_silu(&self.norm1, x.clone()));
        let e = self.time_emb_proj.forward(silu(temb));
        let width = e.dims()[1];
        let h = if self.scale_shift {
            let o = width / 2;
            let scale = e.clone().narrow(1, 0, o).reshape([n, o, 1, 1]);
            let shift = e.narrow(1, o, o).reshape([n, o, 1, 1]);
            silu(self.norm2.forward(h) * scale.add_scalar(1.0) + shift)
        } else {
            group_norm_silu(&self.norm2, h + e.reshape([n, width, 1, 1]))
        };
        let h = self.conv2.forward(h);
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        let out = skip + h;
        if self.output_scale_factor == 1.0 { out } else { out.div_scalar(self.output_scale_factor) }
    }
}

/// diffusers' spatial self-attention (`Attention` with `residual_connection`, as `AttnDownBlock2D`,
/// `AttnUpBlock2D` and `UNetMidBlock2D` build it): optional GroupNorm, multi-head attention over the pixels, output
/// projection, residual, divided by `rescale_output_factor`.
#[derive(Module, Debug)]
pub struct Attention {
    /// GroupNorm before the projections (absent in a `scale_shift` model's middle block).
    pub group_norm: Option<GroupNorm>,
    /// Query projection.
    pub to_q: Linear,
    /// Key projection.
    pub to_k: Linear,
    /// Value projection.
    pub to_v: Linear,
    /// Output projection (diffusers' `to_out.0`; `to_out.1` is dropout).
    pub to_out: Vec<Linear>,
    heads: usize,
    rescale_output_factor: f64,
}

impl Attention {
    pub(crate) fn new(
        channels: usize,
        heads: usize,
        groups: Option<usize>,
        eps: f64,
        rescale_output_factor: f64,
        device: &Device,
    ) -> Self {
        let linear = || LinearConfig::new(channels, channels).init(device);
        Self {
            group_norm: groups.map(|g| group_norm(g, channels, eps, device)),
            to_q: linear(),
            to_k: linear(),
            to_v: linear(),
            to_out: vec![linear()],
            heads,
            rescale_output_factor,
        }
    }

    /// Self-attention over the `h w` pixels of `x: [n, c, h, w]`, `softmax(q kᵀ / sqrt(d)) v` per head.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_perturbed(x, None)
    }

    /// [`Attention::forward`], with the layer perturbed as attention-perturbation guidance asks.
    pub fn forward_perturbed(&self, x: Tensor<4>, perturbation: Option<AttentionPerturbation>) -> Tensor<4> {
        if perturbation == Some(AttentionPerturbation::Skip) {
            return x;
        }
        let [n, c, h, w] = x.dims();
        let normed = match &self.group_norm {
            Some(g) => g.forward(x.clone()),
            None => x.clone(),
        };
        let tokens = normed.reshape([n, c, h * w]).swap_dims(1, 2); // [n, hw, c]
        let attended = if perturbation == Some(AttentionPerturbation::Identity) {
            // An identity attention map: each pixel's output is its own value.
            self.to_v.forward(tokens)
        } else {
            let d = c / self.heads;
            let split = |t: Tensor<3>| t.reshape([n, h * w, self.heads, d]).swap_dims(1, 2); // [n, heads, hw, d]
            let query = self.to_q.forward(tokens.clone());
            let query = match perturbation {
                Some(AttentionPerturbation::BlurredQuery { sigma }) => blur_tokens(query, h, w, sigma),
                _ => query,
            };
            let q = split(query);
            let k = split(self.to_k.forward(tokens.clone()));
            let v = split(self.to_v.forward(tokens));
            let weights = softmax(q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt()), 3);
            weights.matmul(v).swap_dims(1, 2).reshape([n, h * w, c])
        };
        let out = self.to_out[0].forward(attended).swap_dims(1, 2).reshape([n, c, h, w]) + x;
        if self.rescale_output_factor == 1.0 { out } else { out.div_scalar(self.rescale_output_factor) }
    }
}

/// SEG's blur of the query tokens `[n, h w, c]` over the `h x w` grid: separable Gaussian with reflected borders, or
/// the mean over the pixels where the kernel does not fit ([`blur_matrix`]).
pub fn blur_tokens(tokens: Tensor<3>, h: usize, w: usize, sigma: f64) -> Tensor<3> {
    let [n, hw, c] = tokens.dims();
    let device = tokens.device();
    let (Some(bh), Some(bw)) = (blur_matrix(sigma, h), blur_matrix(sigma, w)) else {
        return tokens.mean_dim(1).repeat_dim(1, hw);
    };
    let matrix = |m: Vec<f64>, k: usize| {
        Tensor::<2>::from_data(TensorData::new(m.into_iter().map(|v| v as f32).collect::<Vec<_>>(), [k, k]), &device)
    };
    // Along w: [w, n h c] = B_w [w, w] x that; then along h the same way.
    let grid = tokens.reshape([n, h, w, c]);
    let along_w = matrix(bw, w).matmul(grid.permute([2, 0, 1, 3]).reshape([w, n * h * c]));
    let grid = along_w.reshape([w, n, h, c]).permute([1, 2, 0, 3]);
    let along_h = matrix(bh, h).matmul(grid.permute([1, 0, 2, 3]).reshape([h, n * w * c]));
    along_h.reshape([h, n, w, c]).permute([1, 0, 2, 3]).reshape([n, hw, c])
}

/// diffusers' `Downsample2D` with a convolution: stride 2, padding 1, or TF's asymmetric `(0, 1, 0, 1)` for
/// `downsample_padding = 0`.
#[derive(Module, Debug)]
pub struct Downsample2D {
    /// The stride-2 convolution.
    pub conv: Conv2d,
}

impl Downsample2D {
    pub(crate) fn new(channels: usize, padding: usize, device: &Device) -> Self {
        // Burn's order is (top, left, bottom, right); PyTorch's F.pad(x, (0, 1, 0, 1)) pads right and bottom.
        let pad =
            if padding == 0 { PaddingConfig2d::Explicit(0, 0, 1, 1) } else { PaddingConfig2d::Explicit(1, 1, 1, 1) };
        Self {
            conv: Conv2dConfig::new([channels, channels], [3, 3]).with_stride([2, 2]).with_padding(pad).init(device),
        }
    }

    /// Halves height and width.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x)
    }
}

/// diffusers' `Upsample2D` with a convolution: nearest-neighbour ×2, then a 3×3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D {
    /// The convolution after the up-sampling.
    pub conv: Conv2d,
}

impl Upsample2D {
    pub(crate) fn new(channels: usize, device: &Device) -> Self {
        Self { conv: conv3(channels, channels, device) }
    }

    /// Doubles height and width.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(crate::unet::upsample2(x))
    }
}
