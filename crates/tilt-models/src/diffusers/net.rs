//! A loaded diffusers model as a [`NoiseNet`]: tilt's time `t` becomes the model's fractional training timestep
//! `N t - 1`, rows become images, a learned variance is dropped, and the null label of classifier-free guidance is
//! the one the user declares (diffusers has no convention for it).

use super::config::UNet2DConfig;
use super::unet2d::UNet2D;
use crate::noise_net::NoiseNet;
use burn::prelude::*;

/// A diffusers `UNet2DModel` behind tilt's [`NoiseNet`]; wrap it in [`crate::NetScore`] with the schedule and
/// prediction of its scheduler config.
#[derive(Module, Debug)]
pub struct DiffusersNet {
    /// The network.
    pub unet: UNet2D,
    image: [usize; 3],
    out_channels: usize,
    num_train_timesteps: usize,
    null_label: Option<usize>,
}

impl DiffusersNet {
    /// `unet` (of `config`) trained on `num_train_timesteps` discrete steps; `null_label` is the class label that
    /// means "no class" for a class-conditional model (classifier-free guidance's unconditional score). Errors name
    /// the field: a conditional model needs a null label inside its table, an unconditional one takes none.
    pub fn new(
        unet: UNet2D,
        config: &UNet2DConfig,
        num_train_timesteps: usize,
        null_label: Option<usize>,
    ) -> Result<Self, String> {
        match (config.num_class_embeds, null_label) {
            (Some(n), Some(l)) if l >= n => {
                return Err(format!("null_label: expected a label below num_class_embeds ({n}), got {l}"));
            }
            (Some(n), None) => {
                return Err(format!(
                    "null_label: the model is class-conditional (num_class_embeds = {n}) and diffusers has no \
                     unconditional label; give the label it was trained to treat as \"no class\" (for example \
                     {}, the last)",
                    n - 1
                ));
            }
            (None, Some(l)) => {
                return Err(format!("null_label: the model is unconditional (no num_class_embeds), got label {l}"));
            }
            _ => {}
        }
        let [h, w] = config.sample_size;
        Ok(Self {
            unet,
            image: [config.in_channels, h, w],
            out_channels: config.out_channels,
            num_train_timesteps,
            null_label,
        })
    }

    /// The shape of one image, `[channels, height, width]`.
    pub fn image(&self) -> [usize; 3] {
        self.image
    }

    /// Class labels the model takes, the null label included (0 for an unconditional model).
    pub fn num_labels(&self) -> usize {
        self.unet.num_class_embeds().unwrap_or(0)
    }

    /// The model's timestep for tilt's `t`: knot `k` of the training table sits at `t = (k + 1) / N`.
    fn timesteps(&self, t: Tensor<1>) -> Tensor<1> {
        let n = self.num_train_timesteps as f64;
        t.mul_scalar(n).sub_scalar(1.0).clamp(0.0, n - 1.0)
    }
}

impl NoiseNet for DiffusersNet {
    fn predict_noise(&self, x: Tensor<2>, t: Tensor<1>, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        let n = x.dims()[0];
        let [c, h, w] = self.image;
        let labels = match (self.null_label, labels) {
            (Some(null), None) => Some(Tensor::<1, Int>::full([n], null as i64, &x.device())),
            (_, labels) => labels,
        };
        let out = self.unet.forward(x.reshape([n, c, h, w]), self.timesteps(t), labels);
        // A learned-variance model's second half is the variance interpolation, which tilt's samplers do not use.
        let out = if self.out_channels == c { out } else { out.narrow(1, 0, c) };
        out.reshape([n, c * h * w])
    }

    fn null_label(&self) -> Option<usize> {
        self.null_label
    }
}
