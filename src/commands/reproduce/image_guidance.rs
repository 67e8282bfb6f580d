//! Experiment: the image guidance methods side by side on Fashion-MNIST — CFG, APG, CFG++, PAG and FDG on one
//! class-conditional pixel U-Net with self-attention, every method at two score-model evaluations per step with the
//! same sampler, steps and noise (matched evaluations per sample, counted by the sampler, not assumed), measured by
//! `image_cfg`'s independent evaluator: `E[1/p_eval(c|Y)]` (what CFG provably lowers), the quantiles of
//! `p_eval(c|Y)`, accuracy, and the Fréchet distance in the evaluator's features beside its noise floor. PAG needs
//! no class and guides the conditional model away from its attention-perturbed self; the others use the
//! unconditional score of the same network (label dropout).

use super::image_cfg::{self, ImageEval, Verdict};
use super::{Ctx, PerPreset, StageOutput, Table, fmt, sampler, stage_config};
use crate::plot::{self, Series};
use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tilt_core::{AttentionPerturbation, Condition, PerturbedAttention, ScoreModel, tensor_ext};
use tilt_sampler::guidance::AttentionGuidance;
use tilt_sampler::guidance::{Apg, CfgGuidance, CfgPlusPlus, FrequencyDecoupledGuidance, GuidanceTerm};
use tilt_sampler::{GuidedScore, NoiseSource, SamplerKind, WeightSchedule};
use tilt_train::{ModelKind, Objective};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub seed: u64,
    pub per_class: PerPreset<usize>,
    pub steps: PerPreset<usize>,
    pub sampler: SamplerKind,
    pub grid_per_class: usize,
    pub unet: UNetPart,
    pub strengths: BTreeMap<Method, Vec<f64>>,
    pub apg: Apg,
    pub fdg: FdgPart,
    pub pag: PagPart,
}

/// The guided network and its training.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetPart {
    pub steps: PerPreset<usize>,
    pub batch_size: PerPreset<usize>,
    pub channels: usize,
    pub channel_mults: Vec<usize>,
    pub lr: f64,
    pub p_uncond: f64,
    pub ema_decay: PerPreset<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdgPart {
    pub level_weights: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagPart {
    pub layers: Vec<String>,
}

/// A guidance method of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Classifier-free guidance.
    Cfg,
    /// Adaptive projected guidance (`[apg]`).
    Apg,
    /// CFG++, its weight the guided denoise's lambda.
    #[serde(rename = "cfg++")]
    CfgPlusPlus,
    /// Perturbed-attention guidance on `[pag] layers`.
    Pag,
    /// Frequency-decoupled guidance with `[fdg] level_weights`.
    Fdg,
}

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::Cfg => "cfg",
            Method::Apg => "apg",
            Method::CfgPlusPlus => "cfg++",
            Method::Pag => "pag",
            Method::Fdg => "fdg",
        }
    }
}

/// One method at one strength: what the evaluator says of its samples (`None` when a chain diverged).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `conditional` for the unguided conditional model, else the method's name.
    pub method: String,
    pub w: f64,
    /// Score-model evaluations per sample, counted by the guided score (forward-pass equivalents).
    pub evaluations: f64,
    /// Fraction of samples with a non-finite pixel.
    pub diverged: f64,
    pub mean_inv_prob: Option<tilt_core::metrics::MeanSe>,
    /// The change of `E[1/p_eval(c|Y)]` from the conditional row, on paired samples (the same noise): its
    /// standard error is that of the per-sample differences, far below either row's own.
    pub change: Option<tilt_core::metrics::MeanSe>,
    pub mean_prob: Option<tilt_core::metrics::MeanSe>,
    pub quantiles: Option<[f64; 5]>,
    pub accuracy: Option<f64>,
    pub frechet: Option<f64>,
}

pub fn run(ctx: &Ctx, dir: &Path) -> Result<StageOutput> {
    let (cfg, raw): (Config, _) = stage_config("image_guidance")?;
    let (data_cfg, _): (image_cfg::Config, _) = stage_config("image_cfg")?;
    let (p, dev) = (ctx.preset, &ctx.device);
    for (m, ws) in &cfg.strengths {
        if ws.is_empty() {
            bail!("strengths.{}: expected at least one strength", m.label());
        }
        let most = if *m == Method::CfgPlusPlus { 1.0 } else { 100.0 };
        if let Some((i, w)) = ws.iter().enumerate().find(|(_, w)| !(**w > 0.0 && **w <= most)) {
            bail!("strengths.{}[{i}]: expected a strength in (0, {most}], got {w}", m.label());
        }
    }
    if cfg.strengths.len() < 2 {
        bail!("strengths: expected at least two methods to compare, got {}", cfg.strengths.len());
    }
    cfg.apg.validate("apg").map_err(|e| anyhow!(e))?;
    if !(0.0..1.0).contains(&cfg.unet.p_uncond) || cfg.unet.p_uncond == 0.0 {
        bail!("unet.p_uncond: expected a label-dropout probability in (0, 1), got {}", cfg.unet.p_uncond);
    }
    let ema_decay = cfg.unet.ema_decay.get(p);
    if !(0.0..1.0).contains(&ema_decay) {
        bail!("unet.ema_decay.{}: expected a decay in [0, 1), got {ema_decay}", format!("{p:?}").to_lowercase());
    }

    if !(cfg.unet.lr > 0.0 && cfg.unet.lr <= 1.0) {
        bail!("unet.lr: expected a learning rate in (0, 1], got {}", cfg.unet.lr);
    }

    let eval = ImageEval::load(ctx, &data_cfg)?;
    let classes = eval.held.num_classes;
    let data_image = eval.held.image.ok_or_else(|| anyhow!("image_cfg.images: expected images, got rows of points"))?;

    // The network: tilt's pixel U-Net with self-attention in the middle block, trained with label dropout.
    let unet_cfg = {
        let steps = cfg.unet.steps.get(p);
        let spec = super::TrainSpec {
            steps: PerPreset::One(steps),
            hidden: PerPreset::One(0),
            blocks: 0,
            batch_size: cfg.unet.batch_size.get(p),
            p_uncond: cfg.unet.p_uncond,
            lr: cfg.unet.lr,
        };
        let dsm = Objective::Dsm(tilt_train::objectives::Dsm { conditional: true, p_uncond: cfg.unet.p_uncond });
        let mut c = spec.config(eval.train_data.clone(), dsm, p, cfg.seed);
        c.model = tilt_train::ModelSpec::Unet(tilt_train::UNetSpec {
            channels: cfg.unet.channels,
            channel_mults: cfg.unet.channel_mults.clone(),
            attention: true,
            time_dim: 64,
            ..Default::default()
        });
        c.optim.clip_grad_norm = Some(1.0);
        c.optim.ema_decay = ema_decay;
        c
    };
    // What the U-Net cannot be, named by this stage's fields (the network's own messages start with the field).
    if let tilt_train::ModelSpec::Unet(u) = &unet_cfg.model {
        u.config(data_image, classes).check().map_err(|e| anyhow!("unet.{e}"))?;
    }
    let run = ctx.trained("image_guidance_unet", &unet_cfg)?;
    let loaded = tilt_train::load_any_score(&run, ModelKind::ScoreNet, dev)?;
    let model: &dyn ScoreModel = loaded.score.as_ref();
    let image: [usize; 3] = match model.shape()[..] {
        [c, h, w] => [c, h, w],
        ref other => bail!("{}: expected an image model, got data of shape {other:?}", run.display()),
    };
    let dim = image.iter().product::<usize>();

    // The terms, checked against the network before any sampling.
    let perturbation =
        PerturbedAttention::select(AttentionPerturbation::Identity, &model.attention_layers(), &cfg.pag.layers)
            .map_err(|e| anyhow!("pag.layers: {e}"))?;
    let fdg =
        FrequencyDecoupledGuidance::new(cfg.fdg.level_weights.clone(), None, image).map_err(|e| anyhow!("fdg.{e}"))?;
    let term = |m: Method| -> Box<dyn GuidanceTerm + '_> {
        match m {
            Method::Cfg => Box::new(CfgGuidance::new()),
            Method::Apg => Box::new(CfgGuidance::with_apg(cfg.apg.clone())),
            Method::CfgPlusPlus => Box::new(CfgPlusPlus::new()),
            Method::Pag => Box::new(AttentionGuidance::new(perturbation.clone())),
            Method::Fdg => Box::new(fdg.clone()),
        }
    };

    // Every row: `per_class` samples of each class with the same noise (class c: stream c), so that rows differ
    // by the method alone; pixels are clamped to [-1, 1] as a saved image is.
    let per_class = cfg.per_class.get(p);
    let steps = cfg.steps.get(p);
    let s = sampler(cfg.sampler, steps, model.schedule());
    let plan: Vec<(Option<Method>, f64)> = std::iter::once((None, 0.0))
        .chain(cfg.strengths.iter().flat_map(|(m, ws)| ws.iter().map(|w| (Some(*m), *w))))
        .collect();
    let bar = ctx.bar("image_guidance", (plan.len() * classes) as u64);
    let shown = cfg.grid_per_class.min(per_class);
    let (mut rows, mut grid) = (Vec::new(), Vec::new());
    let mut unguided: Option<Vec<f64>> = None;
    for &(method, w) in &plan {
        let (mut images, mut labels, mut evaluations) = (Vec::new(), Vec::new(), 0.0);
        for c in 0..classes {
            let mut g = GuidedScore::new(model, Condition::class(c, per_class, dev)).with_grid(&s.times);
            if let Some(m) = method {
                g = g.with_boxed(term(m), WeightSchedule::Constant(w));
            }
            let x = tensor_ext::to_vec(s.draw(
                &mut g,
                per_class,
                dim,
                dev,
                &mut NoiseSource::host_stream(cfg.seed, c as u64),
            ));
            evaluations = g.model_evaluations;
            images.extend(x);
            labels.extend(vec![c; per_class]);
            bar.inc(1);
        }
        let diverged = images.chunks_exact(dim).filter(|r| r.iter().any(|v| !v.is_finite())).count() as f64
            / images.len().div_ceil(dim) as f64;
        images.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
        // The grid shows the unguided row and each method at its strongest.
        let strongest = method.is_none_or(|m| cfg.strengths[&m].iter().all(|v| *v <= w));
        if strongest {
            grid.extend(images.chunks_exact(per_class * dim).map(|class| class[..shown * dim].to_vec()));
        }
        let verdict = (diverged == 0.0).then(|| eval.verdict(&images, &labels));
        let change = match (&verdict, &unguided) {
            (Some(v), Some(u)) => {
                Some(tilt_core::metrics::mean_se(&v.inv_probs.iter().zip(u).map(|(a, b)| a - b).collect::<Vec<_>>()))
            }
            _ => None,
        };
        if method.is_none() {
            unguided = verdict.as_ref().map(|v| v.inv_probs.clone());
        }
        rows.push(row(method, w, evaluations, diverged, verdict, change));
    }
    bar.finish_and_clear();

    let n_samples = per_class * classes;
    let floor = eval.frechet_floor(n_samples);
    let groups: Vec<String> = std::iter::once("conditional (w = 0)".to_string())
        .chain(
            cfg.strengths.iter().map(|(m, ws)| format!("{} w = {}", m.label(), ws.iter().cloned().fold(0.0, f64::max))),
        )
        .collect();
    image_cfg::write_grid(&dir.join("samples.png"), &grid, classes, groups.len(), shown, image)?;
    // Each method's path from the conditional model (w = 0) through its strengths, against the Fréchet distance.
    let paths = |y: &dyn Fn(&Row) -> Option<f64>| -> Vec<Series> {
        cfg.strengths
            .keys()
            .map(|m| Series {
                name: m.label().to_string(),
                points: std::iter::once(&rows[0])
                    .chain(rows.iter().filter(|r| r.method == m.label()))
                    .filter_map(|r| Some((r.frechet?, y(r)?)))
                    .collect(),
            })
            .collect()
    };
    plot::curves(
        &dir.join("tradeoff.png"),
        &format!("Fashion-MNIST pixel U-Net: E[1/p_eval(c|Y)] against Fréchet distance (floor {floor:.3})"),
        "Fréchet distance to held-out images (evaluator features)",
        "E[1/p_eval(c|Y)]",
        &paths(&|r| Some(r.mean_inv_prob?.mean)),
        &[("held-out real images".to_string(), eval.real.mean)],
    )?;
    plot::curves(
        &dir.join("tradeoff_accuracy.png"),
        &format!("Fashion-MNIST pixel U-Net: evaluator accuracy against Fréchet distance (floor {floor:.3})"),
        "Fréchet distance to held-out images (evaluator features)",
        "accuracy toward the class (evaluator)",
        &paths(&|r| r.accuracy),
        &[("held-out real images".to_string(), eval.held_accuracy)],
    )?;

    let mut out = StageOutput::new(
        "image_guidance",
        "Image guidance methods at matched evaluations (Fashion-MNIST pixel U-Net with attention)",
        ctx,
        raw,
        cfg.seed,
    );
    let mut table = Table::new(
        &format!(
            "{per_class} samples per class and row ({n_samples} per row, the same noise in every row), {steps} {} steps of a class-conditional pixel U-Net with self-attention ({} channels, levels {:?}, {} training steps at batch {}), measured by image_cfg's independent evaluator (held-out accuracy {:.3}; E[1/p_eval(c|x)] on held-out real images {:.4} ± {:.4}). evaluations: score-model evaluations per sample, counted. frechet: Fréchet distance of evaluator features to the {} held-out images (noise floor at this sample size {floor:.4}). APG: eta {}, norm threshold {}, momentum {}; FDG level weights {:?} (finest first); PAG on {:?}",
            serde_json::to_value(cfg.sampler)?.as_str().unwrap_or("the configured"),
            cfg.unet.channels,
            cfg.unet.channel_mults,
            unet_cfg.steps,
            unet_cfg.batch_size,
            eval.held_accuracy,
            eval.real.mean,
            eval.real.se,
            eval.held.len(),
            cfg.apg.eta,
            cfg.apg.norm_threshold,
            cfg.apg.momentum,
            cfg.fdg.level_weights,
            cfg.pag.layers,
        ),
        &[
            "method",
            "w",
            "evaluations",
            "diverged",
            "mean_inv_prob",
            "se",
            "change",
            "change_se",
            "mean_prob",
            "p_q05",
            "p_q50",
            "accuracy",
            "frechet",
        ],
    );
    for r in &rows {
        let opt = |v: Option<f64>| v.map_or("diverged".to_string(), |v| fmt(v, 4));
        table.row(vec![
            r.method.clone(),
            format!("{}", r.w),
            fmt(r.evaluations, 1),
            fmt(r.diverged, 4),
            opt(r.mean_inv_prob.map(|m| m.mean)),
            opt(r.mean_inv_prob.map(|m| m.se)),
            r.change.map_or("—".to_string(), |c| fmt(c.mean, 4)),
            r.change.map_or("—".to_string(), |c| fmt(c.se, 4)),
            opt(r.mean_prob.map(|m| m.mean)),
            opt(r.quantiles.map(|q| q[0])),
            opt(r.quantiles.map(|q| q[2])),
            opt(r.accuracy),
            opt(r.frechet),
        ]);
    }
    out.tables = vec![table];
    out.figures = vec![
        (
            "samples.png".into(),
            format!("Samples (rows: the {classes} classes; column groups: {})", groups.join(", ")),
        ),
        (
            "tradeoff.png".into(),
            "E[1/p_eval(c|Y)] against the Fréchet distance, each method from the conditional model (w = 0) through its strengths".into(),
        ),
        (
            "tradeoff_accuracy.png".into(),
            "The evaluator's accuracy toward the class against the Fréchet distance, each method from the conditional model through its strengths".into(),
        ),
    ];
    out.reading = reading(&rows, floor, eval.real);
    out.headline = serde_json::json!({
        "held_out_accuracy": eval.held_accuracy,
        "real_mean_inv_prob": eval.real,
        "frechet_floor": floor,
        "steps": steps,
        "unet_final_loss": loaded.state.history.last().map(|h| h.loss),
        "rows": rows,
    });
    Ok(out)
}

fn row(
    method: Option<Method>,
    w: f64,
    evaluations: f64,
    diverged: f64,
    v: Option<Verdict>,
    change: Option<tilt_core::metrics::MeanSe>,
) -> Row {
    Row {
        method: method.map_or("conditional", Method::label).to_string(),
        w,
        evaluations,
        diverged,
        mean_inv_prob: v.as_ref().map(|v| v.mean_inv_prob),
        change,
        mean_prob: v.as_ref().map(|v| v.mean_prob),
        quantiles: v.as_ref().map(|v| v.quantiles),
        accuracy: v.as_ref().map(|v| v.accuracy),
        frechet: v.as_ref().map(|v| v.frechet),
    }
}

/// The reading, computed from the rows.
fn reading(rows: &[Row], floor: f64, real: tilt_core::metrics::MeanSe) -> String {
    let Some(base) = rows.first() else { return String::new() };
    let (Some(q0), Some(f0)) = (base.mean_inv_prob, base.frechet) else {
        return "The conditional model's own samples diverged: nothing to compare against.".into();
    };
    let guided: Vec<&Row> = rows[1..].iter().collect();
    let acc_best = guided
        .iter()
        .filter(|r| r.accuracy.is_some())
        .max_by(|a, b| a.accuracy.expect("filtered").total_cmp(&b.accuracy.expect("filtered")));
    let evals: Vec<f64> = guided.iter().map(|r| r.evaluations).collect();
    let matched = evals.iter().all(|e| *e == evals[0]);
    let mut parts = vec![format!(
        "The conditional model (w = 0, {:.0} evaluations per sample): E[1/p_eval(c|Y)] {:.3} ± {:.3} (held-out real images {:.3} ± {:.3}), Fréchet {:.3} (noise floor {floor:.3}). Every guided row used {}.",
        base.evaluations,
        q0.mean,
        q0.se,
        real.mean,
        real.se,
        f0,
        if matched {
            format!("{:.0} evaluations per sample", evals.first().copied().unwrap_or(0.0))
        } else {
            format!(
                "between {:.0} and {:.0} evaluations per sample (not matched)",
                evals.iter().cloned().fold(f64::INFINITY, f64::min),
                evals.iter().cloned().fold(0.0, f64::max)
            )
        },
    )];
    let cells: Vec<String> = guided
        .iter()
        .map(|r| match (r.mean_inv_prob, r.change, r.frechet, r.accuracy, r.quantiles) {
            (Some(q), Some(d), Some(f), Some(acc), Some(p)) => format!(
                "{} w = {}: {:.3} ± {:.3} (paired change {:+.3} ± {:.3}, {:+.1} SE), accuracy {:.3}, median p_eval {:.3}, Fréchet {:.3}",
                r.method,
                r.w,
                q.mean,
                q.se,
                d.mean,
                d.se,
                d.mean / d.se,
                acc,
                p[2],
                f
            ),
            _ => format!("{} w = {}: {:.1} % of the chains diverged", r.method, r.w, 100.0 * r.diverged),
        })
        .collect();
    parts.push(format!(
        "E[1/p_eval(c|Y)] per row, its change from w = 0 on paired samples (the same noise), the evaluator's accuracy and median p_eval(c|Y), and the Fréchet distance: {}.",
        cells.join("; ")
    ));
    // A mean of 1/p is ruled by its few smallest p: say so when the conditional model's is far above real images'.
    if let (Some(acc0), Some(p0)) = (base.accuracy, base.quantiles)
        && q0.mean > 10.0 * real.mean
    {
        parts.push(format!(
            "The conditional model's E[1/p_eval(c|Y)] is {:.0} times that of real images: its 5 % quantile of p_eval(c|Y) is {:.1e}, so a few samples the evaluator puts in another class rule the mean and its standard error; the accuracy ({:.3} at w = 0) and the median p_eval ({:.3}) are the steadier readings here.",
            q0.mean / real.mean,
            p0[0],
            acc0,
            p0[2]
        ));
    }
    let finite: Vec<&&Row> = guided.iter().filter(|r| r.mean_inv_prob.is_some()).collect();
    if let (Some(best_q), Some(best_f)) = (
        finite
            .iter()
            .min_by(|a, b| a.mean_inv_prob.expect("finite").mean.total_cmp(&b.mean_inv_prob.expect("finite").mean)),
        finite.iter().min_by(|a, b| a.frechet.expect("finite").total_cmp(&b.frechet.expect("finite"))),
    ) {
        parts.push(format!(
            "Lowest E[1/p_eval(c|Y)]: {} at w = {}; lowest Fréchet distance among guided rows: {} at w = {} ({:.3}, {} the conditional model's {:.3}).",
            best_q.method,
            best_q.w,
            best_f.method,
            best_f.w,
            best_f.frechet.expect("finite"),
            if best_f.frechet.expect("finite") < f0 { "below" } else { "not below" },
            f0
        ));
    }
    if let (Some(best), Some(acc0)) = (acc_best, base.accuracy) {
        parts.push(format!(
            "Highest accuracy: {} at w = {} ({:.3}, against {acc0:.3} at w = 0).",
            best.method,
            best.w,
            best.accuracy.expect("filtered")
        ));
    }
    parts.join(" ")
}
