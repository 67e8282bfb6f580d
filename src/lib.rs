//! The `tilt` application: configuration, backend selection, commands, plots and output files.
//! The mathematics lives in the workspace crates (`tilt-core`, `tilt-sampler`, `tilt-models`, `tilt-train`).

pub mod alloc;
pub mod commands;
pub mod config;
pub mod device;
pub mod output;
pub mod plot;
pub mod threads;
