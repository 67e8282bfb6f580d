//! The one interface every noise-prediction network implements, so that [`crate::NetScore`] (and through it the
//! sampler) works for any of them.

use burn::module::Module;
use burn::prelude::*;

/// A network that predicts the noise `eps(x_t, t[, c])` (or another [`tilt_core::Prediction`], which
/// [`crate::NetScore`] is told) of a batch of flattened samples `x: [n, d]` at times
/// `t: [n]`. A class-conditional network takes labels `[n]` and has one extra, null label (classifier-free
/// guidance's unconditional score); an image network reshapes the rows into images itself.
pub trait NoiseNet: Module + Clone + std::fmt::Debug {
    /// The network's output for rows `x: [n, d]` at times `t: [n]`; `labels` `None` asks a conditional network
    /// for its unconditional output (the null label).
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

    /// The names of the network's self-attention layers in forward order (none by default).
    fn attention_layers(&self) -> Vec<String> {
        Vec::new()
    }

    /// The output with `perturbation` applied to the attention layers; `None` (the default) for a network without.
    fn predict_noise_perturbed(
        &self,
        x: Tensor<2>,
        t: Tensor<1>,
        labels: Option<Tensor<1, Int>>,
        perturbation: &tilt_core::PerturbedAttention,
    ) -> Option<Tensor<2>> {
        let _ = (x, t, labels, perturbation);
        None
    }

    /// The width `e` of the per-row embedding (`Condition::Embedding`, `[n, e]`) the network is conditioned on, or
    /// `None` (the default) for a network that takes none.
    fn embedding_dim(&self) -> Option<usize> {
        None
    }

    /// The prediction conditioned on a per-row `embedding` `[n, e]`; its unconditional prediction is
    /// [`NoiseNet::predict_noise`] with no labels. Called only when [`NoiseNet::embedding_dim`] is `Some`; the
    /// default, for networks without embeddings, is never reached through `NetScore`.
    fn predict_with_embedding(&self, x: Tensor<2>, t: Tensor<1>, embedding: Tensor<2>) -> Tensor<2> {
        let _ = (t, embedding);
        panic!("{:?} takes no embedding (embedding_dim is None); NetScore checks this first", x.dims())
    }
}
