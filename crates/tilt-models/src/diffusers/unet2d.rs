//! diffusers' `UNet2DModel` as a Burn module: the same blocks, the same skip bookkeeping, the same tensor names.

use super::blocks::{
    Attention, Downsample2D, ResnetBlock2D, ResnetSettings, TimestepEmbedding, Timesteps, Upsample2D, conv3, group_norm,
};
use super::config::{BlockType, TimeScaleShift, UNet2DConfig};
use crate::norm_silu::group_norm_silu;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, EmbeddingConfig, GroupNorm};
use burn::prelude::*;
use tilt_core::PerturbedAttention;

/// `DownBlock2D` or `AttnDownBlock2D` (empty `attentions`).
#[derive(Module, Debug)]
pub struct DownBlock2D {
    /// Residual blocks.
    pub resnets: Vec<ResnetBlock2D>,
    /// One attention after each residual block, or none.
    pub attentions: Vec<Attention>,
    /// The stride-2 convolution (all but the last level).
    pub downsamplers: Vec<Downsample2D>,
}

/// `UNetMidBlock2D`: residual block, optional attention, residual block.
#[derive(Module, Debug)]
pub struct UNetMidBlock2D {
    /// The two residual blocks.
    pub resnets: Vec<ResnetBlock2D>,
    /// The attention between them, or none (`add_attention = false`).
    pub attentions: Vec<Attention>,
}

/// `UpBlock2D` or `AttnUpBlock2D`.
#[derive(Module, Debug)]
pub struct UpBlock2D {
    /// Residual blocks, each taking one skip.
    pub resnets: Vec<ResnetBlock2D>,
    /// One attention after each residual block, or none.
    pub attentions: Vec<Attention>,
    /// Nearest ×2 and a convolution (all but the last level).
    pub upsamplers: Vec<Upsample2D>,
}

/// diffusers' `UNet2DModel`, built from its [`UNet2DConfig`] by [`UNet2D::new`] and filled from a checkpoint by
/// `super::load`.
#[derive(Module, Debug)]
pub struct UNet2D {
    /// The sinusoidal projection of the timestep (no parameters).
    #[module(skip)]
    pub time_proj: Timesteps,
    /// The time embedding MLP.
    pub time_embedding: TimestepEmbedding,
    /// The class embedding table (class-conditional models).
    pub class_embedding: Option<Embedding>,
    /// First convolution.
    pub conv_in: Conv2d,
    /// Down path.
    pub down_blocks: Vec<DownBlock2D>,
    /// Middle.
    pub mid_block: UNetMidBlock2D,
    /// Up path.
    pub up_blocks: Vec<UpBlock2D>,
    /// Final GroupNorm.
    pub conv_norm_out: GroupNorm,
    /// Final convolution.
    pub conv_out: Conv2d,
    center_input_sample: bool,
}

impl UNet2D {
    /// The network of `config` with fresh parameters (a checkpoint then overwrites every one of them).
    pub fn new(config: &UNet2DConfig, device: &Device) -> Self {
        let ch = &config.block_out_channels;
        let levels = ch.len();
        let settings = ResnetSettings {
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            temb: config.time_embed_dim,
            scale_shift: config.resnet_time_scale_shift == TimeScaleShift::ScaleShift,
        };
        let attention = |c: usize, groups: Option<usize>, rescale: f64| {
            Attention::new(c, config.heads(c), groups, config.norm_eps, rescale, device)
        };
        let mut down_blocks = Vec::with_capacity(levels);
        let mut c = ch[0];
        for (level, (&out, kind)) in ch.iter().zip(&config.down_block_types).enumerate() {
            let resnets: Vec<_> = (0..config.layers_per_block)
                .map(|i| ResnetBlock2D::new(if i == 0 { c } else { out }, out, settings, 1.0, device))
                .collect();
            let attentions = match kind {
                BlockType::Attention => {
                    (0..config.layers_per_block).map(|_| attention(out, Some(config.norm_num_groups), 1.0)).collect()
                }
                BlockType::Plain => Vec::new(),
            };
            let downsamplers = if level + 1 < levels {
                vec![Downsample2D::new(out, config.downsample_padding, device)]
            } else {
                vec![]
            };
            down_blocks.push(DownBlock2D { resnets, attentions, downsamplers });
            c = out;
        }
        let scale = config.mid_block_scale_factor;
        let mid_block = UNetMidBlock2D {
            resnets: (0..2).map(|_| ResnetBlock2D::new(c, c, settings, scale, device)).collect(),
            attentions: if config.add_attention {
                vec![attention(c, config.mid_attention_groups(), scale)]
            } else {
                vec![]
            },
        };
        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(levels);
        let mut prev = reversed[0];
        for (i, (&out, kind)) in reversed.iter().zip(&config.up_block_types).enumerate() {
            let input = reversed[(i + 1).min(levels - 1)];
            let layers = config.layers_per_block + 1;
            let resnets: Vec<_> = (0..layers)
                .map(|r| {
                    let skip = if r == layers - 1 { input } else { out };
                    let from = if r == 0 { prev } else { out };
                    ResnetBlock2D::new(from + skip, out, settings, 1.0, device)
                })
                .collect();
            let attentions = match kind {
                BlockType::Attention => {
                    (0..layers).map(|_| attention(out, Some(config.norm_num_groups), 1.0)).collect()
                }
                BlockType::Plain => Vec::new(),
            };
            let upsamplers = if i + 1 < levels { vec![Upsample2D::new(out, device)] } else { vec![] };
            up_blocks.push(UpBlock2D { resnets, attentions, upsamplers });
            prev = out;
        }
        Self {
            time_proj: Timesteps::new(ch[0], config.flip_sin_to_cos, config.freq_shift),
            time_embedding: TimestepEmbedding::new(ch[0], config.time_embed_dim, device),
            class_embedding: config
                .num_class_embeds
                .map(|n| EmbeddingConfig::new(n, config.time_embed_dim).init(device)),
            conv_in: conv3(config.in_channels, ch[0], device),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(config.norm_num_groups, ch[0], config.norm_eps, device),
            conv_out: conv3(ch[0], config.out_channels, device),
            center_input_sample: config.center_input_sample,
        }
    }

    /// Number of class labels the model takes (`None`: unconditional).
    pub fn num_class_embeds(&self) -> Option<usize> {
        self.class_embedding.as_ref().map(|e| e.weight.dims()[0])
    }

    /// The time (and class) embedding of diffusers' forward, `[n, time_embed_dim]`.
    pub fn embedding(&self, timesteps: Tensor<1>, class_labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        let n = timesteps.dims()[0];
        let emb = self.time_embedding.forward(self.time_proj.forward(timesteps));
        match (&self.class_embedding, class_labels) {
            (Some(table), Some(labels)) => {
                let d = emb.dims()[1];
                emb + table.forward(labels.unsqueeze_dim::<2>(1)).reshape([n, d])
            }
            _ => emb,
        }
    }

    /// diffusers' `UNet2DModel.forward(sample, timestep, class_labels).sample`: `sample: [n, c, h, w]`,
    /// `timesteps: [n]` in the model's units (fractional allowed), `class_labels: [n]` for a class-conditional
    /// model (its embedding is then added; `None` leaves it out).
    pub fn forward(&self, sample: Tensor<4>, timesteps: Tensor<1>, class_labels: Option<Tensor<1, Int>>) -> Tensor<4> {
        self.forward_perturbed(sample, timesteps, class_labels, None)
    }

    /// The names of the attention layers in forward order, as diffusers' PAG names them: `down.block_{i}.attentions_{j}`,
    /// `mid`, `up.block_{i}.attentions_{j}`.
    pub fn attention_layers(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (i, block) in self.down_blocks.iter().enumerate() {
            names.extend((0..block.attentions.len()).map(|j| format!("down.block_{i}.attentions_{j}")));
        }
        if !self.mid_block.attentions.is_empty() {
            names.push("mid".to_string());
        }
        for (i, block) in self.up_blocks.iter().enumerate() {
            names.extend((0..block.attentions.len()).map(|j| format!("up.block_{i}.attentions_{j}")));
        }
        names
    }

    /// [`UNet2D::forward`] with the attention layers that `perturbation` selects perturbed (attention-perturbation
    /// guidance: PAG, SEG, SLG).
    pub fn forward_perturbed(
        &self,
        sample: Tensor<4>,
        timesteps: Tensor<1>,
        class_labels: Option<Tensor<1, Int>>,
        perturbation: Option<&PerturbedAttention>,
    ) -> Tensor<4> {
        let mut layer = 0;
        let mut attend = |a: &crate::diffusers::blocks::Attention, x: Tensor<4>| {
            let p = perturbation.filter(|p| p.applies_to(layer)).map(|p| p.kind);
            layer += 1;
            a.forward_perturbed(x, p)
        };
        let emb = self.embedding(timesteps, class_labels);
        let sample = if self.center_input_sample { sample.mul_scalar(2.0).sub_scalar(1.0) } else { sample };
        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            for (i, resnet) in block.resnets.iter().enumerate() {
                x = resnet.forward(x, emb.clone());
                if let Some(a) = block.attentions.get(i) {
                    x = attend(a, x);
                }
                skips.push(x.clone());
            }
            for d in &block.downsamplers {
                x = d.forward(x);
                skips.push(x.clone());
            }
        }
        x = self.mid_block.resnets[0].forward(x, emb.clone());
        if let Some(a) = self.mid_block.attentions.first() {
            x = attend(a, x);
        }
        x = self.mid_block.resnets[1].forward(x, emb.clone());
        for block in &self.up_blocks {
            for (i, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("the down path pushes one skip per up-path residual block");
                x = resnet.forward(Tensor::cat(vec![x, skip], 1), emb.clone());
                if let Some(a) = block.attentions.get(i) {
                    x = attend(a, x);
                }
            }
            for u in &block.upsamplers {
                x = u.forward(x);
            }
        }
        self.conv_out.forward(group_norm_silu(&self.conv_norm_out, x))
    }
}
