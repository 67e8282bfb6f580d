//! The one interface every noise-prediction network implements, so that [`crate::NetScore`] (and through it the
//! sampler) works for any of them.

use burn::module::Module;
use burn::prelude::*;

/// A network that predicts the noise `eps(x_t, t[, c])` (or another [`tilt_core::Prediction`], which
/// [`crate::NetScore`] is told) of a batch of flattened samples `x: [n, d]` at times
/// `t: [n]`. A class-conditional network takes labels `[n]` and has one extra, null label (classifier-free
/// guidance's unconditional score); an image network reshapes the rows into images itself.
pub trait NoiseNet: Module + Clone + std::fmt::Debug {
    fn predict_noise(&self, x: Tensor<2>, t: Tensor<1>, labels: Option<Tensor<1, Int>>) -> Tensor<2>;

    /// The noise with every row at the same time `t` (the sampler's case). The default repeats `t` per row; a
    /// network whose time path is per-row work embeds `t` once instead.
    fn predict_noise_at(&self, x: Tensor<2>, t: f64, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        let n = x.dims()[0];
        let tt = Tensor::<1>::full([n], t, &x.device());
        self.predict_noise(x, tt, labels)
    }

    /// The label that asks for the unconditional score, or `None` for an unconditional network.
    fn null_label(&self) -> Option<usize>;
}
