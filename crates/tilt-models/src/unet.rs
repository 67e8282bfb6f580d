//! A pixel-space U-Net noise network (the DDPM/ADM layout, small): convolutional residual blocks with GroupNorm
//! and SiLU, the time (and class) embedding added in every block, strided-convolution down-sampling and
//! nearest up-sampling with skip connections, and optional self-attention at the lowest resolution.
//!
//! It takes and returns flattened rows `[n, channels * height * width]` like every [`NoiseNet`], so the sampler,
//! the guidance terms and the trainers are the same for points and images.

use crate::embedding::time_embedding;
use crate::noise_net::NoiseNet;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig};
use burn::nn::{PaddingConfig2d, activation::SiLU};
use burn::prelude::*;
use burn::tensor::activation::softmax;

/// The pixel U-Net of images.
#[derive(Config, Debug)]
pub struct UNetConfig {
    /// Channels, height and width of one image.
    pub image: [usize; 3],
    /// Channels of the first level; level `i` has `base_channels * channel_mults[i]`.
    #[config(default = 32)]
    pub base_channels: usize,
    /// One entry per resolution level (each after the first halves height and width).
    #[config(default = "vec![1, 2]")]
    pub channel_mults: Vec<usize>,
    /// Residual blocks per level.
    #[config(default = 1)]
    pub blocks_per_level: usize,
    /// GroupNorm groups (must divide every level's channels).
    #[config(default = 8)]
    pub groups: usize,
    /// Width of the time embedding.
    #[config(default = 64)]
    pub time_dim: usize,
    /// Number of classes; 0 makes an unconditional network, else the extra null label `num_classes` gives the
    /// unconditional score (classifier-free guidance).
    #[config(default = 0)]
    pub num_classes: usize,
    /// Self-attention at the lowest resolution.
    #[config(default = false)]
    pub attention: bool,
}

/// Two GroupNorm-SiLU-convolutions with the time (and class) embedding added between, and a skip.
#[derive(Module, Debug)]
pub struct ConvBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    emb: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
    act: SiLU,
}

/// Single-head self-attention over the pixels of a feature map.
#[derive(Module, Debug)]
pub struct SelfAttention {
    norm: GroupNorm,
    qkv: Linear,
    out: Linear,
}

/// The U-Net: down path, middle, up path with skips; its output is the declared prediction.
#[derive(Module, Debug)]
pub struct UNet {
    conv_in: Conv2d,
    time_mlp1: Linear,
    time_mlp2: Linear,
    class_emb: Option<Embedding>,
    down: Vec<ConvBlock>,
    downsample: Vec<Conv2d>,
    mid1: ConvBlock,
    attention: Option<SelfAttention>,
    mid2: ConvBlock,
    up: Vec<ConvBlock>,
    upsample: Vec<Conv2d>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    act: SiLU,
    image: [usize; 3],
    levels: usize,
    blocks_per_level: usize,
    time_dim: usize,
    num_classes: usize,
}

fn conv3(i: usize, o: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device)
}

impl UNetConfig {
    /// What makes a U-Net of this config impossible, naming the field.
    pub fn check(&self) -> Result<(), String> {
        let [c, h, w] = self.image;
        if c == 0 || h == 0 || w == 0 {
            return Err(format!("image: expected positive channels, height and width, got {:?}", self.image));
        }
        if self.channel_mults.is_empty() || self.channel_mults.contains(&0) {
            return Err(format!("channel_mults: expected positive multipliers, got {:?}", self.channel_mults));
        }
        if self.channel_mults.len() > 16 {
            return Err(format!("channel_mults: expected at most 16 levels, got {}", self.channel_mults.len()));
        }
        if self.base_channels == 0 || self.channel_mults.iter().any(|m| self.base_channels.checked_mul(*m).is_none()) {
            return Err(format!(
                "channels: expected a positive base width whose multiples {:?} fit, got {}",
                self.channel_mults, self.base_channels
            ));
        }
        let factor = 1usize << (self.channel_mults.len() - 1);
        if !h.is_multiple_of(factor) || !w.is_multiple_of(factor) {
            return Err(format!(
                "channel_mults: {} levels halve the image {} times, but {h} x {w} is not divisible by {factor}",
                self.channel_mults.len(),
                self.channel_mults.len() - 1
            ));
        }
        if self.groups == 0 || self.channel_mults.iter().any(|m| !(self.base_channels * m).is_multiple_of(self.groups))
        {
            return Err(format!(
                "groups: {} must divide every level's channels (base_channels {} times {:?})",
                self.groups, self.base_channels, self.channel_mults
            ));
        }
        if self.time_dim == 0 || !self.time_dim.is_multiple_of(2) {
            return Err(format!("time_dim: expected a positive even number, got {}", self.time_dim));
        }
        Ok(())
    }

    /// Panics on a config that [`UNetConfig::check`] refuses.
    pub fn init(&self, device: &Device) -> UNet {
        if let Err(e) = self.check() {
            panic!("invalid U-Net config: {e}");
        }
        let emb_dim = 4 * self.base_channels;
        let ch: Vec<usize> = self.channel_mults.iter().map(|m| self.base_channels * m).collect();
        let block = |i: usize, o: usize| ConvBlock {
            norm1: GroupNormConfig::new(self.groups, i).init(device),
            conv1: conv3(i, o, device),
            emb: LinearConfig::new(emb_dim, o).init(device),
            norm2: GroupNormConfig::new(self.groups, o).init(device),
            conv2: conv3(o, o, device),
            skip: (i != o).then(|| Conv2dConfig::new([i, o], [1, 1]).init(device)),
            act: SiLU::new(),
        };
        // Down: blocks of each level, then a stride-2 convolution (but after the last level).
        let (mut down, mut downsample, mut skips) = (Vec::new(), Vec::new(), Vec::new());
        let mut c = ch[0];
        for (level, &out) in ch.iter().enumerate() {
            for _ in 0..self.blocks_per_level {
                down.push(block(c, out));
                c = out;
                skips.push(c);
            }
            if level + 1 < ch.len() {
                downsample.push(
                    Conv2dConfig::new([c, c], [3, 3])
                        .with_stride([2, 2])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device),
                );
            }
        }
        let (mid1, mid2) = (block(c, c), block(c, c));
        let attention = self.attention.then(|| SelfAttention {
            norm: GroupNormConfig::new(self.groups, c).init(device),
            qkv: LinearConfig::new(c, 3 * c).init(device),
            out: LinearConfig::new(c, c).with_initializer(Initializer::Zeros).init(device),
        });
        // Up: each block takes the matching skip, levels from the lowest resolution back to the first.
        let (mut up, mut upsample) = (Vec::new(), Vec::new());
        for (level, &out) in ch.iter().enumerate().rev() {
            for _ in 0..self.blocks_per_level {
                let skip = skips.pop().expect("one skip per down block");
                up.push(block(c + skip, out));
                c = out;
            }
            if level > 0 {
                upsample.push(conv3(c, c, device));
            }
        }
        UNet {
            conv_in: conv3(self.image[0], ch[0], device),
            time_mlp1: LinearConfig::new(self.time_dim, emb_dim).init(device),
            time_mlp2: LinearConfig::new(emb_dim, emb_dim).init(device),
            class_emb: (self.num_classes > 0).then(|| EmbeddingConfig::new(self.num_classes + 1, emb_dim).init(device)),
            down,
            downsample,
            mid1,
            attention,
            mid2,
            up,
            upsample,
            norm_out: GroupNormConfig::new(self.groups, c).init(device),
            // Zero output: the untrained network predicts no noise, the usual diffusion initialisation.
            conv_out: Conv2dConfig::new([c, self.image[0]], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(Initializer::Zeros)
                .init(device),
            act: SiLU::new(),
            image: self.image,
            levels: ch.len(),
            blocks_per_level: self.blocks_per_level,
            time_dim: self.time_dim,
            num_classes: self.num_classes,
        }
    }
}

impl ConvBlock {
    fn forward(&self, x: Tensor<4>, emb: Tensor<2>) -> Tensor<4> {
        let [n, _, _, _] = x.dims();
        let h = self.conv1.forward(self.act.forward(self.norm1.forward(x.clone())));
        let e = self.emb.forward(self.act.forward(emb));
        let h = h + e.clone().reshape([n, e.dims()[1], 1, 1]);
        let h = self.conv2.forward(self.act.forward(self.norm2.forward(h)));
        match &self.skip {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

impl SelfAttention {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let tokens = self.norm.forward(x.clone()).reshape([n, c, h * w]).swap_dims(1, 2); // [n, hw, c]
        let qkv = self.qkv.forward(tokens);
        let (q, k, v) = (qkv.clone().narrow(2, 0, c), qkv.clone().narrow(2, c, c), qkv.narrow(2, 2 * c, c));
        let weights = softmax(q.matmul(k.swap_dims(1, 2)).div_scalar((c as f64).sqrt()), 2);
        let out = self.out.forward(weights.matmul(v)).swap_dims(1, 2).reshape([n, c, h, w]);
        x + out
    }
}

/// Nearest-neighbour up-sampling by 2 in height and width.
pub(crate) fn upsample2(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h, 1, w, 1]).repeat_dim(3, 2).repeat_dim(5, 2).reshape([n, c, 2 * h, 2 * w])
}

impl UNet {
    /// Predicted noise for flattened images `x: [n, c * h * w]` at times `t: [n]`; `labels: [n]` in
    /// `0..=num_classes` (`num_classes` is the null label; `None` means unconditional).
    pub fn forward(&self, x: Tensor<2>, t: Tensor<1>, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        let n = x.dims()[0];
        let [c, h, w] = self.image;
        let mut emb =
            self.time_mlp2.forward(self.act.forward(self.time_mlp1.forward(time_embedding(t, self.time_dim))));
        if let Some(e) = &self.class_emb {
            let l = labels.unwrap_or_else(|| Tensor::<1, Int>::full([n], self.num_classes as i64, &x.device()));
            let d = emb.dims()[1];
            emb = emb + e.forward(l.unsqueeze_dim::<2>(1)).reshape([n, d]);
        }
        let mut x = self.conv_in.forward(x.reshape([n, c, h, w]));
        let mut skips = Vec::with_capacity(self.down.len());
        for level in 0..self.levels {
            for b in &self.down[level * self.blocks_per_level..(level + 1) * self.blocks_per_level] {
                x = b.forward(x, emb.clone());
                skips.push(x.clone());
            }
            if let Some(d) = self.downsample.get(level) {
                x = d.forward(x);
            }
        }
        x = self.mid1.forward(x, emb.clone());
        if let Some(a) = &self.attention {
            x = a.forward(x);
        }
        x = self.mid2.forward(x, emb.clone());
        for (i, b) in self.up.iter().enumerate() {
            x = b.forward(Tensor::cat(vec![x, skips.pop().expect("one skip per up block")], 1), emb.clone());
            let level_done = (i + 1).is_multiple_of(self.blocks_per_level);
            if let Some(u) = self.upsample.get(i / self.blocks_per_level).filter(|_| level_done) {
                x = u.forward(upsample2(x));
            }
        }
        self.conv_out.forward(self.act.forward(self.norm_out.forward(x))).reshape([n, c * h * w])
    }

    /// The shape of one image, `[channels, height, width]`.
    pub fn image(&self) -> [usize; 3] {
        self.image
    }
}

impl NoiseNet for UNet {
    fn predict_noise(&self, x: Tensor<2>, t: Tensor<1>, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        self.forward(x, t, labels)
    }

    fn null_label(&self) -> Option<usize> {
        (self.num_classes > 0).then_some(self.num_classes)
    }
}
