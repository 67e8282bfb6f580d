//! The score models of a sweep: exact mixture scores, trained checkpoints, or a mix; loaded and checked against
//! each other and against the terms that use them.

use crate::config::{SampleConfig, TermKind, kebab};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use std::path::Path;
use tilt_core::{Classifier, GaussianMixture, MixtureScore, Retimed, Reward, Schedule, ScoreModel};
use tilt_train::Standardizer;

/// `log r` of standardised coordinates: the reward lives in data space.
pub struct InDataSpace<'a> {
    pub reward: &'a dyn Reward,
    pub st: Standardizer,
}

impl Reward for InDataSpace<'_> {
    fn log_reward(&self, z: Tensor<2>) -> Tensor<1> {
        let d = self.st.mean.len();
        let dev = z.device();
        let row = |v: &[f64]| {
            Tensor::<2>::from_data(TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), [1, d]), &dev)
        };
        self.reward.log_reward(z * row(&self.st.std) + row(&self.st.mean))
    }
}

/// Every class label a sweep passes must exist in every network that receives it. A conditional network's label
/// `K` (its class count) is its null label: `class = K` would ask it for its unconditional score, so CFG's term
/// would be exactly zero and every strength would sample one law; a label beyond it would index past its class
/// embedding. A weak (autoguidance) network that is unconditional cannot answer a class query at all.
fn check_labels(cfg: &SampleConfig, labelled: &[(String, Option<usize>)], classifier: Option<usize>) -> Result<()> {
    // Classifier guidance samples the unconditional base: only the classifier sees `class`.
    let classifier_guided = cfg.guidance.has(|k| *k == TermKind::Classifier);
    let mut queries: Vec<(String, usize)> = Vec::new();
    if let Some(c) = cfg.class {
        queries.push(("class".into(), c));
    }
    if let Some(c) = cfg.guidance.negative_class {
        queries.push(("guidance.negative_class".into(), c));
    }
    for (i, t) in cfg.guidance.term_list().iter().enumerate() {
        if let TermKind::NegativeClass { class } = t.kind {
            queries.push((format!("guidance.terms[{i}].class"), class));
        }
    }
    for (field, c) in &queries {
        if let (Some(k), true) = (classifier, field == "class")
            && *c >= k
        {
            bail!("{field}: class {c} does not exist in models.classifier, which has {k} classes (0 to {})", k - 1);
        }
        if classifier_guided && field == "class" {
            continue;
        }
        for (net, classes) in labelled {
            match classes {
                Some(k) if c >= k => bail!(
                    "{field}: class {c} does not exist in {net}, which was trained on {k} classes (0 to {}; label {k} is its null label, so class {c} would silently sample without guidance)",
                    k - 1
                ),
                None if net != "models.base" => bail!(
                    "{net}: is unconditional, but {field} = {c} asks it for a class-conditional score; train the weak network with conditional = true on the same labels"
                ),
                _ => {}
            }
        }
    }
    Ok(())
}

pub type BoxedScore = Box<dyn ScoreModel>;

/// A score network `tilt sample` loaded: a tilt run (any architecture) or a diffusers model folder.
pub struct LoadedNet {
    pub score: Box<dyn ScoreModel>,
    /// A class-conditional network's class count (its null label), `None` when unconditional.
    pub null_label: Option<usize>,
    pub standardizer: Standardizer,
    /// The schedule it was trained on.
    pub schedule: Schedule,
    pub dim: usize,
    pub num_classes: usize,
    /// The class names of an image-folder run, in label order.
    pub class_names: Option<Vec<String>>,
}

impl From<tilt_train::LoadedAnyScore> for LoadedNet {
    fn from(l: tilt_train::LoadedAnyScore) -> Self {
        Self {
            class_names: l.state.class_names.clone(),
            schedule: l.state.config.schedule,
            dim: l.state.dim,
            num_classes: l.state.num_classes,
            score: l.score,
            null_label: l.null_label,
            standardizer: l.standardizer,
        }
    }
}

/// A diffusers model folder as a score model: the schedule and prediction of its scheduler config (or
/// `[schedule]` and `models.prediction` when it has none), the null label of `models.null_label`.
fn load_diffusers(cfg: &SampleConfig, dir: &Path, device: &Device) -> Result<LoadedNet> {
    use tilt_models::diffusers::{DiffusersFiles, DiffusersNet, TimestepMap, load_unet, read_config, read_scheduler};
    let models = cfg.models.clone().unwrap_or_default();
    let files = DiffusersFiles::find(dir)?;
    let config = read_config(&files.config)?;
    let (schedule, prediction) = match &files.scheduler {
        Some(path) => {
            let s = read_scheduler(path)?;
            if let Some(p) = models.prediction.filter(|p| *p != s.prediction) {
                bail!(
                    "models.prediction: {} says the network predicts {}, not {}; remove models.prediction",
                    path.display(),
                    s.prediction.name(),
                    p.name()
                );
            }
            check_schedule(cfg, &s.schedule, dir)?;
            (s.schedule, s.prediction)
        }
        None => {
            let schedule = cfg.schedule.ok_or_else(|| {
                anyhow::anyhow!(
                    "schedule: {} has no scheduler config (scheduler/scheduler_config.json), so give the schedule the                      model was trained on in [schedule] (kind = \"discrete\" with diffusers' beta_schedule, beta_start,                      beta_end, num_train_timesteps)",
                    dir.display()
                )
            })?;
            if !matches!(schedule, Schedule::Discrete { .. }) {
                bail!(
                    "schedule.kind: a diffusers UNet2DModel takes discrete training timesteps; expected kind =                      \"discrete\", got {}",
                    schedule.name()
                );
            }
            (schedule, models.prediction.unwrap_or_default())
        }
    };
    if let (Some(n), Some(l)) = (config.num_class_embeds, models.null_label)
        && l + 1 != n
    {
        bail!(
            "models.null_label: tilt reads labels 0 to K - 1 as classes and K as \"no class\", so the null label must              be the last of the model's {n} (expected {}), got {l}",
            n - 1
        );
    }
    let unet = load_unet(&config, &files.weights, device)?;
    let net = DiffusersNet::new(unet, &config, TimestepMap::for_schedule(schedule), models.null_label)
        .map_err(|e| anyhow::anyhow!("models.{e} ({})", dir.display()))?;
    let [c, h, w] = net.image();
    let null_label = tilt_models::NoiseNet::null_label(&net);
    let score = tilt_models::NetScore::new(net, schedule, vec![c, h, w]).with_prediction(prediction);
    Ok(LoadedNet {
        score: Box::new(score),
        null_label,
        standardizer: Standardizer::identity(c * h * w),
        schedule,
        dim: c * h * w,
        num_classes: null_label.unwrap_or(0),
        class_names: None,
    })
}

/// A score network from a tilt run or a diffusers model folder (`field` names it in errors).
fn load_net(
    cfg: &SampleConfig,
    p: &Path,
    kind: tilt_train::ModelKind,
    field: &str,
    device: &Device,
) -> Result<LoadedNet> {
    let loaded = if tilt_models::diffusers::is_diffusers_dir(p) {
        if kind == tilt_train::ModelKind::Residual {
            bail!("{field} = {}: a diffusers model folder is a full score network, not a residual", p.display());
        }
        load_diffusers(cfg, p, device)
    } else {
        tilt_train::load_any_score(p, kind, device).map(LoadedNet::from)
    };
    loaded.with_context(|| format!("{field} = {}", p.display()))
}

/// A classifier trained on another schedule, asked at the time of its own with the sampler's log-SNR (as
/// [`Retimed`] does for scores).
struct RetimedClassifier {
    inner: tilt_models::NetClassifier,
    own: Schedule,
    on: Schedule,
}

impl Classifier for RetimedClassifier {
    fn log_prob(&self, x: Tensor<2>, t: f64, labels: &Tensor<1, Int>) -> Tensor<1> {
        self.inner.log_prob(x, self.own.t_from_ou(self.on.ou_time(t)), labels)
    }
}

/// A `[schedule]` given beside a trained base must be the base's: the network was trained on its own and cannot be
/// read on another table. Names the field that differs.
fn check_schedule(cfg: &SampleConfig, trained: &Schedule, path: &Path) -> Result<()> {
    let Some(given) = cfg.schedule.as_ref().filter(|s| *s != trained) else { return Ok(()) };
    let field = match (given, trained) {
        (Schedule::Discrete { num_train_timesteps: a, .. }, Schedule::Discrete { num_train_timesteps: b, .. })
            if a != b =>
        {
            "schedule.num_train_timesteps"
        }
        (Schedule::Discrete { .. }, Schedule::Discrete { .. }) => "schedule.beta_schedule",
        (Schedule::RectifiedFlow { .. }, Schedule::RectifiedFlow { .. }) => "schedule.shift",
        (Schedule::Cosine { .. }, Schedule::Cosine { .. }) => "schedule.s",
        _ => "schedule.kind",
    };
    bail!(
        "{field}: models.base = {} was trained on {} ({}), but [schedule] asks for {} ({}); remove [schedule] (a \
         trained base brings its own) or give the base's",
        path.display(),
        trained.name(),
        serde_json::to_string(trained)?,
        given.name(),
        serde_json::to_string(given)?
    )
}

/// The score models of a sweep: exact, trained, or a mix.
pub struct Scores {
    pub base: Box<dyn ScoreModel>,
    pub reweighted: Option<Box<dyn ScoreModel>>,
    pub residual: Option<Box<dyn ScoreModel>>,
    pub classifier: Option<Box<dyn Classifier>>,
    /// Autoguidance's weak networks, one per term of the list (None for other kinds).
    pub weak: Vec<Option<Box<dyn ScoreModel>>>,
    pub standardizer: Standardizer,
    pub description: String,
    pub dim: usize,
    pub num_classes: usize,
    /// The base's class names (an image-folder run), in label order.
    pub class_names: Option<Vec<String>>,
}

pub fn load_scores(cfg: &SampleConfig, mixture: Option<&GaussianMixture>, device: &Device) -> Result<Scores> {
    let models = cfg.models.clone().unwrap_or_default();
    let mut standardizer: Option<(Standardizer, String)> = None;
    let mut agree = |st: &Standardizer, what: &str| -> Result<()> {
        if let Some(m) = mixture
            && st.mean.len() != m.dim()
        {
            bail!(
                "models.{what}: trained on {}-dimensional data, but the mixture is {}-dimensional",
                st.mean.len(),
                m.dim()
            );
        }
        match &standardizer {
            Some((s, first)) if s.mean.len() != st.mean.len() => {
                bail!(
                    "models.{what}: trained on {}-dimensional data, but models.{first} on {}-dimensional data",
                    st.mean.len(),
                    s.mean.len()
                )
            }
            Some((s, first)) if s != st => {
                bail!("models.{what}: standardised differently from models.{first}; train them on the same data")
            }
            Some(_) => Ok(()),
            None => {
                standardizer = Some((st.clone(), what.to_string()));
                Ok(())
            }
        }
    };
    let mut description = Vec::new();
    let trained_base = match &models.base {
        Some(p) => {
            let l = load_net(cfg, p, tilt_train::ModelKind::ScoreNet, "models.base", device)?;
            check_schedule(cfg, &l.schedule, p)?;
            agree(&l.standardizer, "base")?;
            description.push(format!("base: {}", p.display()));
            Some(l)
        }
        None => None,
    };
    let net = |p: &Path, kind: tilt_train::ModelKind, field: &str| load_net(cfg, p, kind, field, device);
    let reweighted = (models.reweighted.as_deref())
        .map(|p| net(p, tilt_train::ModelKind::ScoreNet, "models.reweighted"))
        .transpose()?;
    let residual =
        models.residual.as_deref().map(|p| net(p, tilt_train::ModelKind::Residual, "models.residual")).transpose()?;
    for (l, what, p) in [(&reweighted, "reweighted", &models.reweighted), (&residual, "residual", &models.residual)] {
        if let (Some(l), Some(p)) = (l, p) {
            agree(&l.standardizer, what)?;
            description.push(format!("{what}: {}", p.display()));
        }
    }
    let classifier = match &models.classifier {
        Some(p) => {
            let l = tilt_train::load_classifier(p, device)
                .with_context(|| format!("models.classifier = {}", p.display()))?;
            agree(&l.standardizer, "classifier")?;
            description.push(format!("classifier: {}", p.display()));
            Some(l)
        }
        None => None,
    };
    let terms = cfg.guidance.term_list();
    // Networks that receive the class label, with their class count (None: unconditional).
    let mut labelled: Vec<(String, Option<usize>)> = Vec::new();
    if let Some(b) = &trained_base {
        labelled.push(("models.base".into(), b.null_label));
    }
    let mut weak = Vec::new();
    for (i, t) in terms.iter().enumerate() {
        weak.push(match &t.kind {
            TermKind::Autoguidance { model } => {
                let l = net(model, tilt_train::ModelKind::ScoreNet, &format!("guidance.terms[{i}].model"))?;
                agree(&l.standardizer, &format!("guidance.terms[{i}].model"))?;
                description.push(format!("autoguidance weak network: {}", model.display()));
                labelled.push((format!("guidance.terms[{i}].model"), l.null_label));
                Some(l.score)
            }
            _ => None,
        });
    }
    let standardizer = standardizer.map(|s| s.0);
    check_labels(cfg, &labelled, classifier.as_ref().map(|c| c.state.num_classes))?;
    let uses_reward = cfg.guidance.has(|k| *k == TermKind::Reward);
    let uses_classifier = cfg.guidance.has(|k| *k == TermKind::Classifier);
    let exact_needed = trained_base.is_none()
        || (uses_reward && reweighted.is_none() && residual.is_none())
        || (uses_classifier && classifier.is_none());
    if exact_needed && standardizer.as_ref().is_some_and(|s| *s != Standardizer::identity(s.mean.len())) {
        bail!(
            "models: exact mixture scores cannot be combined with networks trained on standardised data (standardize = true)"
        );
    }
    if let (Some(b), Some(p)) = (&trained_base, &models.base) {
        // An unconditional network would answer every class query with its one score: CFG's term would be
        // exactly zero and the sweep would silently sample the unconditional law.
        let label_term = terms.iter().find(|t| {
            matches!(
                t.kind,
                TermKind::Cfg { .. } | TermKind::CfgPlusPlus | TermKind::Fdg { .. } | TermKind::NegativeClass { .. }
            )
        });
        let needs_labels = match label_term {
            Some(t) => Some(format!("guidance.kind = \"{}\"", kebab(&t.kind.guidance_kind()))),
            None if uses_classifier => None,
            None => cfg.class.map(|c| format!("class = {c}")),
        };
        if let (Some(what), None) = (needs_labels, b.null_label) {
            bail!(
                "models.base = {}: {what} needs a class-conditional base (trained with objective.kind = \"dsm\", conditional = true, on labelled data), but this network is unconditional",
                p.display()
            );
        }
    }
    let schedule = trained_base.as_ref().map_or(cfg.schedule(), |b| b.score.schedule());
    let exact = |m: Option<&GaussianMixture>, what: &str| -> Result<MixtureScore> {
        let m = m.ok_or_else(|| {
            anyhow::anyhow!("mixture: needed for the exact {what} (or give a trained model for it in [models])")
        })?;
        Ok(MixtureScore::new(m.clone(), schedule, device))
    };
    let (dim, num_classes) = match (&trained_base, mixture) {
        (Some(b), _) => (b.dim, b.num_classes),
        (None, Some(m)) => (m.dim(), m.n_classes()),
        (None, None) => bail!("mixture: missing (no trained base model either)"),
    };
    let class_names = trained_base.as_ref().and_then(|b| b.class_names.clone());
    let base: Box<dyn ScoreModel> = match trained_base {
        Some(b) => b.score,
        None => Box::new(exact(mixture, "base score")?),
    };
    // Networks trained on another schedule answer at the time of theirs with the sampler's log-SNR.
    let on_sampler_schedule = |s: Box<dyn ScoreModel>| -> Box<dyn ScoreModel> {
        if s.schedule() == schedule { s } else { Box::new(Retimed { score: s, on: schedule }) }
    };
    let weak = weak.into_iter().map(|w| w.map(on_sampler_schedule)).collect();
    let exact_reweighted = |m: Option<&GaussianMixture>| -> Result<Option<Box<dyn ScoreModel>>> {
        if !uses_reward {
            return Ok(None);
        }
        let r = cfg
            .reward
            .as_ref()
            .and_then(|r| r.exp_linear())
            .expect("validated: exact reward guidance has an exp-linear reward");
        let m = m.ok_or_else(|| {
            anyhow::anyhow!("mixture: needed for the exact reweighted score (or give models.reweighted)")
        })?;
        Ok(Some(Box::new(MixtureScore::new(m.tilted(&r), schedule, device))))
    };
    let (reweighted, residual): (Option<BoxedScore>, Option<BoxedScore>) = match (reweighted, residual) {
        (Some(r), _) => (Some(on_sampler_schedule(r.score)), None),
        (None, Some(r)) => (None, Some(on_sampler_schedule(r.score))),
        (None, None) => (exact_reweighted(mixture)?, None),
    };
    let classifier: Option<Box<dyn Classifier>> = match (classifier, uses_classifier) {
        (Some(c), _) if c.classifier.schedule == schedule => Some(Box::new(c.classifier)),
        (Some(c), _) => {
            Some(Box::new(RetimedClassifier { own: c.classifier.schedule, on: schedule, inner: c.classifier }))
        }
        (None, true) => Some(Box::new(exact(mixture, "classifier")?)),
        _ => None,
    };
    if description.is_empty() {
        description.push("exact mixture scores".into());
    }
    Ok(Scores {
        base,
        reweighted,
        residual,
        classifier,
        weak,
        standardizer: standardizer.unwrap_or_else(|| Standardizer::identity(dim)),
        description: description.join(", "),
        dim,
        num_classes,
        class_names,
    })
}
