//! Sinusoidal embedding of the continuous diffusion time `t in [0, 1]`.

use burn::prelude::*;

/// `[sin(1000 t f_i), cos(1000 t f_i)]` with `f_i = 10000^(-i/half)`, `[n] -> [n, dim]`.
/// The factor 1000 spreads `[0, 1]` over the range the classic DDPM embedding was designed for.
pub fn time_embedding(t: Tensor<1>, dim: usize) -> Tensor<2> {
    let device = t.device();
    let half = dim / 2;
    let freqs =
        Tensor::<1, Int>::arange(0..half as i64, &device).float().mul_scalar(-(10000f64.ln()) / half as f64).exp();
    let args = t.mul_scalar(1000.0).unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim::<2>(0);
    Tensor::cat(vec![args.clone().sin(), args.cos()], 1)
}
