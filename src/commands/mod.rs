//! The `tilt` subcommands.

pub mod sample;
pub mod train;
