//! tilt's pixel U-Net: a compact configuration of diffusers' `UNet2DModel` (crate::diffusers): residual blocks
//! with GroupNorm and SiLU, the time (and class) embedding in every block, strided-convolution down-sampling,
//! nearest up-sampling with skip connections, optional single-head self-attention in the middle block, and a
//! zero-initialised output convolution (an untrained network predicts no noise).
//!
//! It takes and returns flattened rows `[n, channels * height * width]` like every [`crate::NoiseNet`], so the
//! sampler, the guidance terms and the trainers are the same for points and images.

use crate::diffusers::config::{BlockType, TimeScaleShift};
use crate::diffusers::{DiffusersNet, TimestepMap, UNet2D, UNet2DConfig};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{Initializer, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

fn default_timesteps() -> TimestepMap {
    TimestepMap::discrete(1000)
}

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
    /// Residual blocks per down level (diffusers' `layers_per_block`; each up level has one more).
    #[config(default = 1)]
    pub blocks_per_level: usize,
    /// GroupNorm groups (must divide every level's channels).
    #[config(default = 8)]
    pub groups: usize,
    /// Width of the time embedding MLP (diffusers' `time_embedding_dim`; its sinusoidal input has `base_channels`).
    #[config(default = 64)]
    pub time_dim: usize,
    /// Number of classes; 0 makes an unconditional network, else the extra null label `num_classes` gives the
    /// unconditional score (classifier-free guidance).
    #[config(default = 0)]
    pub num_classes: usize,
    /// Single-head self-attention in the middle block (the lowest resolution).
    #[config(default = false)]
    pub attention: bool,
    /// How tilt's time `t` becomes the network's timestep (set from the training schedule).
    #[config(default = "default_timesteps()")]
    pub timesteps: TimestepMap,
}

/// tilt's pixel U-Net: diffusers' `UNet2DModel` in the configuration [`UNetConfig`] describes, so that a trained
/// one exports to a folder diffusers loads (`tilt export --format diffusers`).
pub type UNet = DiffusersNet;

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
        let first = self.base_channels * self.channel_mults[0];
        if !first.is_multiple_of(2) {
            return Err(format!(
                "channels: the first level's {first} channels are also the sinusoidal time embedding's width, which \
                 must be even"
            ));
        }
        Ok(())
    }

    /// The diffusers `UNet2DModel` configuration this U-Net is.
    pub fn to_diffusers(&self) -> UNet2DConfig {
        let [c, h, w] = self.image;
        let levels = self.channel_mults.len();
        UNet2DConfig {
            sample_size: [h, w],
            in_channels: c,
            out_channels: c,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            time_embed_dim: self.time_dim,
            block_out_channels: self.channel_mults.iter().map(|m| self.base_channels * m).collect(),
            down_block_types: vec![BlockType::Plain; levels],
            up_block_types: vec![BlockType::Plain; levels],
            layers_per_block: self.blocks_per_level,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            attention_head_dim: None,
            norm_num_groups: self.groups,
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: TimeScaleShift::Add,
            add_attention: self.attention,
            num_class_embeds: (self.num_classes > 0).then_some(self.num_classes + 1),
        }
    }

    /// Panics on a config that [`UNetConfig::check`] refuses.
    pub fn init(&self, device: &Device) -> UNet {
        if let Err(e) = self.check() {
            panic!("invalid U-Net config: {e}");
        }
        let config = self.to_diffusers();
        let mut unet = UNet2D::new(&config, device);
        // Zero output: the untrained network predicts no noise, the usual diffusion initialisation.
        unet.conv_out = Conv2dConfig::new([self.base_channels * self.channel_mults[0], self.image[0]], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_initializer(Initializer::Zeros)
            .init(device);
        let null = (self.num_classes > 0).then_some(self.num_classes);
        DiffusersNet::new(unet, &config, self.timesteps, null).expect("the null label is the table's last")
    }
}

/// Nearest-neighbour up-sampling by 2 in height and width (PyTorch's `interpolate(mode="nearest")`, which
/// diffusers' `Upsample2D` calls): one gather forward and one gather-sum backward, where a reshape with two
/// `repeat_dim`s copied an element at a time and summed the gradient over two broadcast axes.
pub(crate) fn upsample2(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let options = InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([2 * h, 2 * w]);
    burn::tensor::module::interpolate(x, options)
}
