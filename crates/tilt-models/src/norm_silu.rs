//! GroupNorm followed by SiLU, the opening of every residual block of the U-Net and of its output: one fused
//! operation on Flex with f32 tensors (`tilt_kernels::group_norm_silu`, with the `flex` feature), Burn's
//! composition everywhere else (ndarray, the GPU backends, other element types), where results do not change.

use burn::nn::GroupNorm;
use burn::prelude::*;
#[cfg(not(feature = "flex"))]
use burn::tensor::activation::silu;

/// `silu(norm.forward(x))` for `x: [batch, channels, height, width]`.
pub fn group_norm_silu(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    return tilt_kernels::group_norm_silu::group_norm_silu(norm, x);
    #[cfg(not(feature = "flex"))]
    silu(norm.forward(x))
}
