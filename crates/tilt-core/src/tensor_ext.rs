//! Small tensor helpers shared by the crates: host <-> device copies and a stable log-sum-exp.

use burn::prelude::*;

/// Upload a row-major `[rows, cols]` host matrix as an `f32` tensor.
pub fn matrix(values: &[f32], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), [rows, cols]), device)
}

/// Copy a float tensor to the host as `f32` (any backend dtype is converted).
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("float tensor reads back as f32")
}

/// Copy an integer tensor (labels, argmax) to the host as `i64`.
pub fn to_vec_i64<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data().try_into_vec_as::<i64>().expect("int tensor reads back as i64")
}

/// Copy a float tensor to the host as `f64`.
pub fn to_vec_f64<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    to_vec(t).into_iter().map(f64::from).collect()
}

/// `log sum_j exp(x_j)` along `dim` (kept), shifted by the maximum so that nothing overflows.
pub fn logsumexp<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    // The shift is a constant for autodiff purposes; detaching it keeps the gradient exact
    // (d/dx of max cancels) and avoids routing gradients through the argmax.
    let m = x.clone().max_dim(dim).detach();
    (x - m.clone()).exp().sum_dim(dim).log() + m
}

/// Labels as an `Int` tensor (the backend's own int dtype).
pub fn labels(values: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = values.iter().map(|&c| c as i64).collect();
    Tensor::from_data(TensorData::new(v, [values.len()]), device)
}

/// `f` over the rows of `x` (`[n, d]`, row-major) in batches of `batch` rows, the outputs concatenated on the host:
/// memory holds one batch of activations however many rows there are.
pub fn map_rows(x: &[f32], d: usize, batch: usize, f: impl Fn(Tensor<2>) -> Tensor<2>, device: &Device) -> Vec<f32> {
    x.chunks(batch * d).flat_map(|rows| to_vec(f(matrix(rows, rows.len() / d, d, device)))).collect()
}
