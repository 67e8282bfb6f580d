//! diffusers' `UNet2DModel` in Burn: the network (`unet2d`, `blocks`), its `config.json` and scheduler config
//! (`config`), the loader of a model folder (`load`) and the [`crate::NoiseNet`] a loaded model is sampled through
//! (`net`). Module and field names are diffusers' own, so a checkpoint's tensor names are Burn's module paths and
//! a tilt-trained model of this type saves to a folder diffusers loads.

/// The block types of `UNet2DModel`.
pub mod blocks;
/// `config.json` and `scheduler_config.json`, checked field by field.
pub mod config;
/// Finding and loading a model folder.
pub mod load;
/// A loaded model as a `NoiseNet`.
pub mod net;
/// The network.
pub mod unet2d;

pub use config::{SchedulerConfig, UNet2DConfig};
pub use load::{DiffusersFiles, is_diffusers_dir, load_unet, read_config, read_scheduler};
pub use net::{DiffusersNet, TimestepMap};
pub use unet2d::UNet2D;
