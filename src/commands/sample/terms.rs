//! From `[guidance]` to a guided score: one `build` per term kind, each term with its weight at the sweep's
//! strength and its time interval.

use super::scores::{InDataSpace, Scores};
use crate::config::{SampleConfig, TermConfig, TermKind};
use tilt_core::{AttentionPerturbation, Condition, PerturbedAttention, Schedule};
use tilt_sampler::guidance::{
    AttentionGuidance, AutoGuidance, CfgGuidance, CfgPlusPlus, ClassifierGuidance, FrequencyDecoupledGuidance,
    GuidanceTerm, NegativeClassGuidance, RewardGuidance, TrainingFreeGuidance, TrainingFreeParams,
};
use tilt_sampler::{GuidedScore, WeightSchedule};

impl TermConfig {
    /// The term's weight schedule at the papers' strength `w` of the sweep, its interval in the time of `schedule`.
    pub fn schedule(&self, w: f64, schedule: &Schedule) -> WeightSchedule {
        let weight = if self.sweep { self.weight * w } else { self.weight };
        match self.interval.resolve(|f| f.to_string()).expect("validated at parse time") {
            Some(interval) => interval.weight_schedule(weight, schedule),
            None => WeightSchedule::Constant(weight),
        }
    }

    /// The term itself. `index` is the term's place in the list (for its weak network).
    pub fn build<'a>(
        &self,
        index: usize,
        cfg: &SampleConfig,
        scores: &'a Scores,
        reward: Option<&'a InDataSpace<'a>>,
    ) -> Box<dyn GuidanceTerm + 'a> {
        match &self.kind {
            TermKind::Reward => match (&scores.reweighted, &scores.residual) {
                (Some(r), _) => Box::new(RewardGuidance::reweighted(r.as_ref())),
                (None, Some(r)) => Box::new(RewardGuidance::residual(r.as_ref())),
                (None, None) => unreachable!("load_scores provides a reward source"),
            },
            TermKind::Cfg { variant, apg, apg_start_step } => {
                let term = match apg {
                    Some(apg) => CfgGuidance::apg_mix(apg.clone(), *apg_start_step),
                    None => CfgGuidance::new(),
                };
                Box::new(term.with_variant(variant.unwrap_or_default()))
            }
            TermKind::CfgPlusPlus => Box::new(CfgPlusPlus::new()),
            TermKind::Pag { .. } | TermKind::Seg { .. } | TermKind::Slg { .. } => {
                let (kind, layers) = self.kind.attention_perturbation().expect("an attention term");
                Box::new(AttentionGuidance::new(
                    PerturbedAttention::select(kind, &scores.base.attention_layers(), &layers)
                        .expect("checked by check_terms"),
                ))
            }
            TermKind::Fdg { level_weights, parallel_weights } => Box::new(
                FrequencyDecoupledGuidance::new(level_weights.clone(), parallel_weights.clone(), image_of(scores))
                    .expect("checked by check_terms"),
            ),
            TermKind::Classifier => Box::new(ClassifierGuidance::new(
                scores.classifier.as_deref().expect("load_scores provides a classifier"),
                cfg.class.expect("validated"),
            )),
            TermKind::TrainingFree { preset, params } => {
                let params = match (preset, params) {
                    (Some(p), _) => p.params(),
                    (None, Some(p)) => p.clone(),
                    (None, None) => TrainingFreeParams::default(),
                };
                Box::new(TrainingFreeGuidance::new(reward.expect("validated: a reward is set"), params, cfg.seed))
            }
            TermKind::NegativeClass { class } => Box::new(NegativeClassGuidance::new(*class)),
            TermKind::Autoguidance { .. } => Box::new(AutoGuidance::new(
                scores.weak[index].as_deref().expect("load_scores loads every weak network"),
            )),
        }
    }
}

/// The guided score of `rows` chains at the papers' strength `w`: the base under `condition`, every term, the
/// rescale and the zero-init of `[guidance]`.
pub fn guided_score<'a>(
    cfg: &SampleConfig,
    scores: &'a Scores,
    reward: Option<&'a InDataSpace<'a>>,
    condition: Condition,
    w: f64,
    times: &[f64],
) -> GuidedScore<'a> {
    let g = &cfg.guidance;
    let mut guided = GuidedScore::new(scores.base.as_ref(), condition)
        .with_rescale(g.rescale)
        .with_zero_init(g.zero_init_steps)
        .with_grid(times);
    for (i, term) in g.term_list().iter().enumerate() {
        guided = guided.with_boxed(term.build(i, cfg, scores, reward), term.schedule(w, &scores.base.schedule()));
    }
    guided
}

/// The `[c, h, w]` of an image base model (`[0, 0, 0]` for points, which [`check_terms`] refuses for image terms).
fn image_of(scores: &Scores) -> [usize; 3] {
    match scores.base.shape()[..] {
        [c, h, w] => [c, h, w],
        _ => [0, 0, 0],
    }
}

/// What can only be checked once the models are loaded: image-only terms on image models, with sizes they accept.
pub fn check_terms(cfg: &SampleConfig, scores: &Scores) -> anyhow::Result<()> {
    let list_form = !cfg.guidance.terms.is_empty();
    for (i, t) in cfg.guidance.term_list().iter().enumerate() {
        let field = |name: &str| {
            if list_form { format!("guidance.terms[{i}].{name}") } else { format!("guidance.{name}") }
        };
        if let Some((kind, layers)) = t.kind.attention_perturbation() {
            let names = scores.base.attention_layers();
            if names.is_empty() {
                let name = match kind {
                    AttentionPerturbation::Identity => "pag",
                    AttentionPerturbation::BlurredQuery { .. } => "seg",
                    AttentionPerturbation::Skip => "slg",
                };
                anyhow::bail!(
                    "{}: \"{name}\" perturbs self-attention, and models.base has no attention layers (give a network with attention: a diffusers model with Attn blocks, or tilt's U-Net with attention)",
                    field("kind"),
                );
            }
            PerturbedAttention::select(kind, &names, &layers)
                .map_err(|e| anyhow::anyhow!("{}: {e}", field("layers")))?;
        }
        if let TermKind::Fdg { level_weights, parallel_weights } = &t.kind {
            if scores.base.shape().len() != 3 {
                anyhow::bail!(
                    "{}: \"fdg\" splits images into frequency bands and needs an image model (samples [c, h, w]); models.base samples {}-dimensional points",
                    field("kind"),
                    scores.dim
                );
            }
            FrequencyDecoupledGuidance::new(level_weights.clone(), parallel_weights.clone(), image_of(scores))
                .map_err(|e| anyhow::anyhow!("{}", field(&e)))?;
        }
    }
    Ok(())
}
