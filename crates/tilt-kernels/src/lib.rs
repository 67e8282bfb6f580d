#![warn(missing_docs)]
//! tilt-kernels: operations of tilt's networks that Burn composes from many tensor operations, each written as
//! one CPU kernel for Burn's Flex backend with its backward pass, and exposed through Burn's backend-extension
//! mechanism so that a `Tensor` on a Flex device (plain or autodiff) reaches it.
//!
//! - [`group_norm_silu`]: GroupNorm followed by SiLU (every residual block of the U-Net opens with it).
//!
//! Each entry point falls back to Burn's composition where its kernel does not apply (another backend, another
//! element type), so a caller needs no test of its own.

/// GroupNorm followed by SiLU.
pub mod group_norm_silu;
