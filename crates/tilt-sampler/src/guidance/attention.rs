//! The attention-perturbation family: `g = s(x|c) - s_perturbed(x|c)`, the score against the same network with some
//! self-attention layers degraded (PAG: identity attention map, Ahn et al. 2024; SEG: blurred query, Hong 2024; SLG:
//! layers skipped). Like autoguidance it steers away from a weaker model, here made from the network itself at the
//! cost of one more forward pass per step; no class or reward is needed.

use super::{BaseEval, GuidanceTerm};
use burn::prelude::*;
use tilt_core::{AttentionPerturbation, PerturbedAttention};

/// Attention-perturbation guidance with a perturbation on selected layers.
#[derive(Clone, Debug)]
pub struct AttentionGuidance {
    perturbation: PerturbedAttention,
}

impl AttentionGuidance {
    /// The term for `perturbation`; the model it guides must have the attention layers it selects
    /// ([`tilt_core::ScoreModel::attention_layers`]).
    pub fn new(perturbation: PerturbedAttention) -> Self {
        Self { perturbation }
    }
}

impl GuidanceTerm for AttentionGuidance {
    fn name(&self) -> &'static str {
        match self.perturbation.kind {
            AttentionPerturbation::Identity => "pag",
            AttentionPerturbation::BlurredQuery { .. } => "seg",
            AttentionPerturbation::Skip => "slg",
        }
    }

    fn model_evaluations(&self) -> f64 {
        1.0
    }

    fn term(&mut self, x: &Tensor<2>, t: f64, base: &BaseEval) -> Tensor<2> {
        let perturbed = base
            .model
            .score_perturbed(x.clone(), t, base.condition, &self.perturbation)
            .expect("attention-perturbation guidance on a model without attention (callers check attention_layers)");
        base.score.clone() - perturbed
    }
}
