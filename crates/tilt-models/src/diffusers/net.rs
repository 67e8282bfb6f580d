//! A loaded diffusers model as a [`crate::NoiseNet`]: tilt's time `t` becomes the model's fractional training timestep
//! `N t - 1`, rows become images, a learned variance is dropped, and the null label of classifier-free guidance is
//! the one the user declares (diffusers has no convention for it).

use super::config::UNet2DConfig;
use super::unet2d::UNet2D;
use crate::noise_net::NoiseNet;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use tilt_core::PerturbedAttention;
use tilt_core::Schedule;

/// How tilt's time `t in [0, 1]` becomes the network's timestep: `clamp(scale t + offset, 0, max)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimestepMap {
    /// Timesteps per unit of `t`.
    pub scale: f64,
    /// Added after scaling.
    pub offset: f64,
    /// The largest timestep fed.
    pub max: f64,
}

impl TimestepMap {
    /// diffusers' convention for `schedule`: a discrete table of `N` steps has knot `k` at `t = (k + 1) / N`
    /// (timestep `N t - 1`); the cosine schedule is diffusers' `squaredcos_cap_v2` table of 1000 steps under the
    /// same map; flow matching feeds `1000 t` (diffusers' `FlowMatchEulerDiscreteScheduler`); tilt's `linear`
    /// schedule, which diffusers lacks, takes the 1000-step map.
    pub fn for_schedule(schedule: Schedule) -> Self {
        match schedule {
            Schedule::Discrete { num_train_timesteps: n, .. } => Self::discrete(n),
            Schedule::RectifiedFlow { .. } => Self { scale: 1000.0, offset: 0.0, max: 1000.0 },
            Schedule::Linear | Schedule::Cosine { .. } => Self::discrete(1000),
        }
    }

    /// The map of a table of `n` training steps.
    pub fn discrete(n: usize) -> Self {
        Self { scale: n as f64, offset: -1.0, max: n.saturating_sub(1) as f64 }
    }

    /// The timesteps of times `t`.
    pub fn apply(&self, t: Tensor<1>) -> Tensor<1> {
        t.mul_scalar(self.scale).add_scalar(self.offset).clamp(0.0, self.max)
    }
}

/// A diffusers `UNet2DModel` behind tilt's [`NoiseNet`]; wrap it in [`crate::NetScore`] with the schedule and
/// prediction of its scheduler config.
#[derive(Module, Debug)]
pub struct DiffusersNet {
    /// The network.
    pub unet: UNet2D,
    #[module(skip)]
    timesteps: TimestepMap,
    null_label: Option<usize>,
    #[module(skip)]
    config: UNet2DConfig,
}

impl DiffusersNet {
    /// `unet` (of `config`) fed timesteps by `timesteps`; `null_label` is the class label that means "no class"
    /// for a class-conditional model (classifier-free guidance's unconditional score). Errors name the field: a
    /// conditional model needs a null label inside its table, an unconditional one takes none.
    pub fn new(
        unet: UNet2D,
        config: &UNet2DConfig,
        timesteps: TimestepMap,
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
        Ok(Self { unet, timesteps, null_label, config: config.clone() })
    }

    /// The shape of one image, `[channels, height, width]`.
    pub fn image(&self) -> [usize; 3] {
        let [h, w] = self.config.sample_size;
        [self.config.in_channels, h, w]
    }

    /// Class labels the model takes, the null label included (0 for an unconditional model).
    pub fn num_labels(&self) -> usize {
        self.unet.num_class_embeds().unwrap_or(0)
    }

    /// The diffusers configuration of the network.
    pub fn unet_config(&self) -> &UNet2DConfig {
        &self.config
    }

    /// How tilt's `t` becomes the network's timestep.
    pub fn timestep_map(&self) -> TimestepMap {
        self.timesteps
    }

    /// The output for flattened images `x: [n, c * h * w]` at tilt's times `t: [n]` (the null label when
    /// `labels` is `None` for a conditional network).
    pub fn forward(&self, x: Tensor<2>, t: Tensor<1>, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        self.predict_noise(x, t, labels)
    }
}

impl DiffusersNet {
    fn output(
        &self,
        x: Tensor<2>,
        t: Tensor<1>,
        labels: Option<Tensor<1, Int>>,
        perturbation: Option<&PerturbedAttention>,
    ) -> Tensor<2> {
        let n = x.dims()[0];
        let [c, h, w] = self.image();
        let labels = match (self.null_label, labels) {
            (Some(null), None) => Some(Tensor::<1, Int>::full([n], null as i64, &x.device())),
            (_, labels) => labels,
        };
        let out = self.unet.forward_perturbed(x.reshape([n, c, h, w]), self.timesteps.apply(t), labels, perturbation);
        // A learned-variance model's second half is the variance interpolation, which tilt's samplers do not use.
        let out = if self.config.learned_variance() { out.narrow(1, 0, c) } else { out };
        out.reshape([n, c * h * w])
    }
}

impl NoiseNet for DiffusersNet {
    fn predict_noise(&self, x: Tensor<2>, t: Tensor<1>, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        self.output(x, t, labels, None)
    }

    fn attention_layers(&self) -> Vec<String> {
        self.unet.attention_layers()
    }

    fn predict_noise_perturbed(
        &self,
        x: Tensor<2>,
        t: Tensor<1>,
        labels: Option<Tensor<1, Int>>,
        perturbation: &PerturbedAttention,
    ) -> Option<Tensor<2>> {
        Some(self.output(x, t, labels, Some(perturbation)))
    }

    fn null_label(&self) -> Option<usize> {
        self.null_label
    }
}
