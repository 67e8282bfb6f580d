//! What a network predicts, and the exact map between each prediction and the score.
//!
//! For any Gaussian interpolant `X_t = alpha(t) X_0 + sigma(t) Z` (variance-preserving or not: flow matching's
//! `alpha = 1 - t, sigma = t` included), Tweedie's formula gives `E[Z | X_t = x] = -sigma s(x)` and
//! `E[X_0 | X_t = x] = (x + sigma^2 s(x)) / alpha`, with `s = grad log p_t`. Every prediction below is a fixed
//! linear combination of those two conditional means, so at fixed `t` it is an affine function of the score:
//!
//! ```text
//! prediction = A(t) x + B(t) s(x),        s(x) = (prediction - A(t) x) / B(t).
//! ```
//!
//! | prediction | target | A | B |
//! |---|---|---|---|
//! | `epsilon` | `Z` | 0 | `-sigma` |
//! | `sample` (diffusers' name for the clean estimate) | `X_0` | `1/alpha` | `sigma^2/alpha` |
//! | `v-prediction` (Salimans & Ho; diffusers: `alpha Z - sigma X_0`) | `alpha Z - sigma X_0` | `-sigma/alpha` | `-sigma (alpha^2 + sigma^2)/alpha` |
//! | `velocity` (flow matching: `dX_t/dt`) | `alpha' X_0 + sigma' Z` | `alpha'/alpha` | `alpha' sigma^2/alpha - sigma sigma'` |
//!
//! Because the map is affine at fixed `t`, any guidance rule written on scores (a base plus weighted differences
//! of scores) reads the same on every prediction: the `A x` parts cancel in the differences.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// The quantity a network is trained to output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Prediction {
    /// The noise `Z` (DDPM; diffusers' `epsilon`).
    #[default]
    Epsilon,
    /// `alpha Z - sigma X_0` (Salimans & Ho 2022; diffusers' `v_prediction`).
    VPrediction,
    /// The clean sample `X_0` (diffusers' `sample`).
    Sample,
    /// The interpolant's time derivative `alpha' X_0 + sigma' Z` (flow matching, rectified flow).
    Velocity,
}

/// A Gaussian interpolant `X_t = alpha X_0 + sigma Z` at one time: its coefficients and their time derivatives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interpolant {
    /// Signal scale `alpha(t)`, positive.
    pub alpha: f64,
    /// Noise scale `sigma(t)`, positive.
    pub sigma: f64,
    /// `d alpha / dt`.
    pub d_alpha: f64,
    /// `d sigma / dt`.
    pub d_sigma: f64,
}

impl Interpolant {
    /// Rectified flow (flow matching's straight path): `alpha = 1 - t`, `sigma = t`.
    pub fn rectified_flow(t: f64) -> Self {
        Self { alpha: 1.0 - t, sigma: t, d_alpha: -1.0, d_sigma: 1.0 }
    }
}

impl Prediction {
    /// Every prediction, for tests and listings.
    pub const ALL: [Prediction; 4] =
        [Prediction::Epsilon, Prediction::VPrediction, Prediction::Sample, Prediction::Velocity];

    /// `(A, B)` with `prediction = A x + B s(x)` on the interpolant `p` (module docs).
    pub fn affine(self, p: Interpolant) -> (f64, f64) {
        let Interpolant { alpha: a, sigma: s, d_alpha: da, d_sigma: ds } = p;
        match self {
            Prediction::Epsilon => (0.0, -s),
            Prediction::Sample => (1.0 / a, s * s / a),
            Prediction::VPrediction => (-s / a, -s * (a * a + s * s) / a),
            Prediction::Velocity => (da / a, da * s * s / a - s * ds),
        }
    }

    /// `(cx, cz)` with `target = cx X_0 + cz Z`: what a network of this prediction is trained to output for the
    /// clean sample `X_0` noised with `Z` on the interpolant `p`.
    pub fn target_coefficients(self, p: Interpolant) -> (f64, f64) {
        match self {
            Prediction::Epsilon => (0.0, 1.0),
            Prediction::Sample => (1.0, 0.0),
            Prediction::VPrediction => (-p.sigma, p.alpha),
            Prediction::Velocity => (p.d_alpha, p.d_sigma),
        }
    }

    /// The prediction a perfect network would output where the score is `score`.
    pub fn from_score(self, x: Tensor<2>, score: Tensor<2>, p: Interpolant) -> Tensor<2> {
        let (a, b) = self.affine(p);
        if a == 0.0 { score.mul_scalar(b) } else { x.mul_scalar(a) + score.mul_scalar(b) }
    }

    /// The score implied by a network's `prediction` at `x`.
    pub fn to_score(self, x: Tensor<2>, prediction: Tensor<2>, p: Interpolant) -> Tensor<2> {
        let (a, b) = self.affine(p);
        // Multiplying by 1/B keeps the epsilon case `s = eps * (-1/sigma)` bit for bit what it has always been.
        if a == 0.0 { prediction.mul_scalar(1.0 / b) } else { (prediction - x.mul_scalar(a)).mul_scalar(1.0 / b) }
    }

    /// The score of a difference of two predictions at the same `x` (a residual network's output, or a guidance
    /// term written on predictions): the `A x` parts cancel, so it is `delta / B`.
    pub fn difference_to_score(self, delta: Tensor<2>, p: Interpolant) -> Tensor<2> {
        let (_, b) = self.affine(p);
        delta.mul_scalar(1.0 / b)
    }

    /// The config name (`model.prediction`), as diffusers' `prediction_type` spells it where it has one.
    pub fn name(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::VPrediction => "v-prediction",
            Prediction::Sample => "sample",
            Prediction::Velocity => "velocity",
        }
    }

    /// Why this prediction cannot be converted on `p` (a zero or non-finite coefficient), naming it.
    pub fn check(self, p: Interpolant) -> Result<(), String> {
        let (a, b) = self.affine(p);
        if !(p.alpha > 0.0 && p.sigma > 0.0) {
            return Err(format!("alpha = {} and sigma = {} must both be positive", p.alpha, p.sigma));
        }
        if !(a.is_finite() && b.is_finite() && b != 0.0) {
            return Err(format!("{self:?} is not invertible here (A = {a}, B = {b})"));
        }
        Ok(())
    }
}
