//! The `tilt` subcommands.

pub mod export;
pub mod forward;
pub mod reproduce;
pub mod sample;
pub mod train;
