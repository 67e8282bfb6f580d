//! GroupNorm followed by SiLU as one operation on Flex.
//!
//! Burn composes GroupNorm from nine tensor operations (two means, a subtraction, a square, a square root, a
//! division, the affine product and sum, reshapes) and SiLU from two, and autodiff adds about twice as many in
//! the backward pass: each a pass over the whole activation. Here, for f32 tensors, the forward reads each
//! (image, group) twice for its statistics (the mean, then the variance about it) and once for the output, and the
//! backward (written by hand) twice, each group in cache (`kernels.rs`). The values differ from the
//! composition's by rounding only (tested against it in tilt's `tests/backends.rs`).

mod kernels;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, DispatchDevice, Flex, TensorMetadata, backend_extension};
use burn::nn::GroupNorm;
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::{DType, TensorData};
use core::mem::MaybeUninit;
use kernels::{Dims, Statistics};

/// GroupNorm then SiLU as one backend operation (Flex, and autodiff over Flex).
#[backend_extension(Flex, Autodiff)]
pub trait GroupNormSiluOps: Backend {
    /// `silu(group_norm(x))` of `x: [batch, channels, ...]` with per-channel `gamma`, `beta`.
    fn group_norm_silu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

/// `silu(norm.forward(x))` for `x: [batch, channels, height, width]`: the fused operation where it applies (see
/// [`applies`]), Burn's composition elsewhere.
pub fn group_norm_silu(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    let (Some(gamma), Some(beta), true) = (&norm.gamma, &norm.beta, applies(norm, &x)) else {
        return silu(norm.forward(x));
    };
    let out = <Dispatch as GroupNormSiluOps>::group_norm_silu(
        x.into_dispatch(),
        gamma.val().into_dispatch(),
        beta.val().into_dispatch(),
        norm.num_groups,
        norm.epsilon,
    );
    Tensor::from_dispatch(out)
}

/// Whether the fused operation computes `silu(norm.forward(x))`: an affine GroupNorm whose channels are `x`'s,
/// and f32 tensors on a Flex device (plain or autodiff).
pub fn applies(norm: &GroupNorm, x: &Tensor<4>) -> bool {
    let (Some(gamma), Some(beta)) = (&norm.gamma, &norm.beta) else {
        return false;
    };
    let (gamma, beta) = (gamma.val(), beta.val());
    let on_flex = |device: Device| matches!(device.inner().as_dispatch(), DispatchDevice::Flex(_));
    let channels = x.dims()[1];
    norm.affine
        && norm.num_groups > 0
        && channels == norm.num_channels
        && channels.is_multiple_of(norm.num_groups)
        && gamma.dims() == [channels]
        && beta.dims() == [channels]
        && [x.dtype(), gamma.dtype(), beta.dtype()] == [DType::F32; 3]
        && on_flex(x.device())
        && on_flex(gamma.device())
        && on_flex(beta.device())
}

/// `t` itself when its values are one contiguous run, else a contiguous copy.
fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() { t.clone() } else { t.to_contiguous() }
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor (see `contiguous` and `applies`)")
}

/// A new f32 tensor of `shape` whose values `write` writes, every one of them (the kernels do), and what `write`
/// returns: not zeroed first, a pass over memory that was 1.2 % of a U-Net training step (one thread of an AMD EPYC
/// with AVX-512).
fn written_by<R>(shape: Shape, write: impl FnOnce(&mut [MaybeUninit<f32>]) -> R) -> (FlexTensor, R) {
    let len = shape.num_elements();
    let mut out = Vec::with_capacity(len);
    let result = write(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: `write` wrote each of the first `len` values (`kernels::forward` and `kernels::backward` do).
    unsafe { out.set_len(len) };
    (FlexTensor::from_data(TensorData::new(out, shape)), result)
}

fn dims(x: &FlexTensor, groups: usize) -> Dims {
    let shape = x.shape();
    let (batch, channels) = (shape[0], shape[1]);
    Dims { batch, channels, groups, pixels: shape.iter().skip(2).product() }
}

fn forward(x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor, groups: usize, eps: f64) -> (FlexTensor, Statistics) {
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    written_by(x.shape(), |y| kernels::forward(values(&x), values(&gamma), values(&beta), dims(&x, groups), eps, y))
}

impl GroupNormSiluOps for Flex {
    fn group_norm_silu(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, groups: usize, epsilon: f64) -> FlexTensor {
        forward(&x, &gamma, &beta, groups, epsilon).0
    }
}

/// What the backward pass keeps: the input, the parameters and the forward's statistics.
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    stats: Statistics,
    groups: usize,
}

#[derive(Debug)]
struct GroupNormSiluBackward;

impl Backward<Flex, 3> for GroupNormSiluBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let saved = ops.state;
        let (x, gamma, beta) = (contiguous(&saved.x), contiguous(&saved.gamma), contiguous(&saved.beta));
        let d = dims(&x, saved.groups);
        let (dx, params) = written_by(x.shape(), |dx| {
            kernels::backward(values(&x), values(&gamma), values(&beta), &saved.stats, values(&dy), d, dx)
        });
        let per_channel = |v: Vec<f32>| FlexTensor::from_data(TensorData::new(v, [d.channels]));
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, per_channel(params.gamma));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, per_channel(params.beta));
        }
    }
}

impl<C: CheckpointStrategy> GroupNormSiluOps for Autodiff<Flex, C> {
    fn group_norm_silu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let (y, stats) = forward(x.primitive(), gamma.primitive(), beta.primitive(), groups, epsilon);
        match GroupNormSiluBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let saved = Saved {
                    x: x.into_primitive(),
                    gamma: gamma.into_primitive(),
                    beta: beta.into_primitive(),
                    stats,
                    groups,
                };
                prep.finish(saved, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
