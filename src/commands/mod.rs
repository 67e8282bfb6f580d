//! The `tilt` subcommands.

pub mod reproduce;
pub mod sample;
pub mod train;
