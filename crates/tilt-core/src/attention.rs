//! Attention perturbations: what the attention-perturbation guidance family (PAG, SEG, SLG) asks of a network.
//!
//! A network with self-attention layers evaluates its score a second time with some layers perturbed; the guidance
//! term is the difference between the plain and the perturbed score (docs/theory.md). Networks without attention
//! report no layers and are refused by name.

use serde::{Deserialize, Serialize};

/// How a selected attention layer is changed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionPerturbation {
    /// PAG (Ahn et al. 2024): the attention map replaced by the identity, so every pixel attends to itself only and
    /// the layer outputs its projected values.
    Identity,
    /// SEG (Hong 2024): the query blurred over the pixel grid by a Gaussian of standard deviation `sigma` pixels
    /// (reflected borders); where the kernel would not fit the grid, or `sigma` is infinite, the query is replaced by
    /// its mean over the pixels (the limit of a wide blur).
    BlurredQuery {
        /// The blur's standard deviation in pixels of the layer's grid.
        sigma: f64,
    },
    /// SLG (Skip-layer guidance): the layer is skipped, passing its input through.
    Skip,
}

/// A perturbation and the layers it applies to, by index in the network's forward order.
#[derive(Clone, Debug, PartialEq)]
pub struct PerturbedAttention {
    /// The change.
    pub kind: AttentionPerturbation,
    /// `selected[i]`: whether attention layer `i` (forward order) is perturbed.
    pub selected: Vec<bool>,
}

impl PerturbedAttention {
    /// The perturbation on the layers whose names ([`crate::ScoreModel::attention_layers`]) equal one of
    /// `patterns` or start with it followed by a dot (`"down.block_1"` selects that block's layers, `"mid"` the
    /// middle one). Errors name the first pattern that matches nothing.
    pub fn select(kind: AttentionPerturbation, names: &[String], patterns: &[String]) -> Result<Self, String> {
        let matches = |name: &str, p: &str| name == p || name.starts_with(&format!("{p}."));
        if let Some(p) = patterns.iter().find(|p| !names.iter().any(|n| matches(n, p))) {
            return Err(format!(
                "no attention layer is named {p:?} or starts with it; the network's layers: {}",
                names.join(", ")
            ));
        }
        let selected = names.iter().map(|n| patterns.iter().any(|p| matches(n, p))).collect();
        Ok(Self { kind, selected })
    }

    /// Whether layer `i` is perturbed.
    pub fn applies_to(&self, i: usize) -> bool {
        self.selected.get(i).copied().unwrap_or(false)
    }
}

/// The `n x n` matrix of a 1-D Gaussian blur of standard deviation `sigma` with reflected borders (PyTorch's
/// `reflect`), as diffusers' SEG builds it: kernel size `ceil(6 sigma) + 1`, made odd, normalised. `None` where the
/// half-width reaches the border (reflection needs it below `n`) or `sigma` is not finite: callers then take the mean.
pub fn blur_matrix(sigma: f64, n: usize) -> Option<Vec<f64>> {
    // A kernel wider than twice the grid cannot fit; checking first keeps a sigma of 1e300 from overflowing the size.
    if !sigma.is_finite() || 6.0 * sigma > 2.0 * n as f64 {
        return None;
    }
    let mut size = (6.0 * sigma).ceil() as usize + 1;
    if size.is_multiple_of(2) {
        size -= 1;
    }
    let half = size / 2;
    if half >= n {
        return None;
    }
    let kernel: Vec<f64> = (0..size)
        .map(|i| {
            let x = i as f64 - half as f64;
            if sigma > 0.0 { (-0.5 * (x / sigma).powi(2)).exp() } else { f64::from(x == 0.0) }
        })
        .collect();
    let total: f64 = kernel.iter().sum();
    let mut m = vec![0.0; n * n];
    for out in 0..n {
        for (k, weight) in kernel.iter().enumerate() {
            let i = out as isize + k as isize - half as isize;
            let i = if i < 0 { -i } else { i };
            let i = if i >= n as isize { 2 * (n as isize - 1) - i } else { i } as usize;
            m[out * n + i] += weight / total;
        }
    }
    Some(m)
}
