//! `tilt sample`: sweep a guidance strength and write numbers and pictures.
//!
//! The scores are exact (a Gaussian mixture) or trained checkpoints (`[models]`); the metrics are exact
//! whenever the data set is an analytic mixture. Output in `<out>/`: `summary.json` (one record per strength),
//! `samples_w<w>.csv` and `samples_w<w>.png` (samples over the density contours of the base law), and
//! `curve.png` (the headline metric against `w`).

mod evaluate;
mod problem;
mod record;
mod scores;
mod strength;
mod terms;

pub use problem::{ClassStats, Problem, QUANTILE_LEVELS};
pub use record::{Record, SmcRecord, Summary};
pub use strength::{Pilot, StrengthChoice};

use crate::config::{GuidanceKind, NoiseKind, SampleConfig, StrengthConvention, TermKind, kebab};
use crate::{device, output, plot};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scores::{InDataSpace, load_scores};
use std::path::Path;
use std::time::Instant;
use tilt_core::metrics::{self, MeanSe};
use tilt_core::{Condition, GaussianMixture, tensor_ext};
use tilt_sampler::{NoiseSource, Sampler};

/// The rows of `[n, d]` samples whose coordinates are all finite.
fn finite_rows(x: Vec<f32>, d: usize) -> Vec<f32> {
    if x.iter().all(|v| v.is_finite()) {
        return x;
    }
    x.chunks_exact(d).filter(|r| r.iter().all(|v| v.is_finite())).flatten().copied().collect()
}

/// A plotting window from the samples themselves (1 % and 99 % quantiles, padded).
fn sample_bounds(x: &[f32], d: usize) -> plot::Bounds {
    let span = |j: usize| {
        let col: Vec<f64> = x.chunks_exact(d).map(|r| r[j] as f64).collect();
        let q = metrics::quantiles(&col, &[0.01, 0.99]);
        let pad = 0.15 * (q[1] - q[0]).max(1e-3);
        (q[0] - pad, q[1] + pad)
    };
    let (x0, x1) = span(0);
    let (y0, y1) = if d > 1 { span(1) } else { (-1.0, 1.0) };
    (x0, x1, y0, y1)
}

/// `w` for file names and titles: as written when short, else in scientific notation (a strength of 1e300
/// printed in full is a 301-character file name). Both forms are Rust's shortest round-trip representation, so
/// distinct strengths never share a label (a rounded mantissa would map 1.00000000001 and 1.00000000002 onto one
/// file), and the plain form never contains an `e`, so the two forms cannot collide either.
/// The autoencoder run at `path` as the decoder of `latent`-dimensional codes, with the shape of its images.
fn load_decoder(path: &Path, latent: usize, device: &Device) -> Result<(Decoder, [usize; 3])> {
    let (ae, state) = tilt_train::load_autoencoder(path, device)
        .with_context(|| format!("models.autoencoder = {}", path.display()))?;
    let net: tilt_models::AutoencoderConfig = serde_json::from_value(state.net.clone())
        .with_context(|| format!("models.autoencoder = {}: its network config", path.display()))?;
    if net.latent != latent {
        bail!(
            "models.autoencoder = {}: decodes {}-dimensional codes, but models.base draws {latent}-dimensional \
             samples; train the base with data.kind = \"latent\" on this autoencoder",
            path.display(),
            net.latent
        );
    }
    let image = state.image.ok_or_else(|| {
        anyhow::anyhow!(
            "models.autoencoder = {}: was not trained on images, so its output is no picture",
            path.display()
        )
    })?;
    Ok((Decoder { ae, standardizer: state.standardizer }, image))
}

/// An autoencoder's decoder and the standardisation of the images it was trained on (undone after decoding).
pub struct Decoder {
    ae: tilt_models::Autoencoder,
    standardizer: tilt_train::Standardizer,
}

/// Codes `[n, latent]` decoded to image rows, in batches of 500.
fn decode(decoder: &Decoder, x: &[f32], latent: usize, device: &Device) -> Vec<f32> {
    let mut images = tensor_ext::map_rows(x, latent, 500, |z| decoder.ae.decode(z), device);
    decoder.standardizer.invert(&mut images);
    images
}

/// A class name as part of a file name: letters, digits, `-` and `_` kept, anything else `_`.
fn file_stem(name: &str) -> String {
    let stem: String =
        name.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if stem.is_empty() { "class".into() } else { stem }
}

pub fn w_label(w: f64) -> String {
    let plain = format!("{w}");
    if plain.len() <= 12 { plain } else { format!("{w:e}") }
}

/// Refuse a sweep whose results cannot be held in memory, before sampling: per sample the host keeps its
/// coordinates, the exact reference draws for the distances and a few per-row metrics. The sampler itself runs
/// in chunks of `sampler.batch` rows, so this is the only size that grows with `samples`.
fn check_memory(n: usize, d: usize, classes: usize) -> Result<()> {
    let per_row = d.checked_mul(16).and_then(|b| b.checked_add(8 * classes + 64));
    let bytes = per_row.and_then(|p| p.checked_mul(n));
    if bytes.is_some_and(|b| Vec::<u8>::new().try_reserve_exact(b).is_ok()) {
        return Ok(());
    }
    bail!(
        "samples: {n} samples of dimension {d} need about {} of memory for the samples and their metrics, which cannot \
         be allocated here; lower samples",
        bytes.map_or("more than 2^64 bytes".to_string(), |b| format!("{:.1} GB", b as f64 / 1e9))
    )
}

/// The largest `alpha(t_max) * (|mean| + 3 std)` over the components, per coordinate: the chains start from
/// N(0, I), which is the noised law at `t_max` only when the signal left there is small against the unit noise.
/// At 0.5 the start is off by at most half a noise standard deviation, which the backward chain corrects
/// (`tests/reliability_round2.rs` samples a mixture at this limit against its exact law); at std 300, means ±600 (6.6)
/// the sampler returned a wrong law with exit 0.
pub const MAX_SIGNAL_AT_T_MAX: f64 = 0.5;
/// The smallest standard deviation relative to the size of a component's mean: f32 coordinates resolve about
/// 1.2e-7 of a value, so a narrower component is sampled as a point (means 1e6, std 1e-6 returned sd 0).
pub const MIN_RELATIVE_STD: f64 = 1e-4;

/// Refuse a mixture the sampler cannot sample correctly in f32 from N(0, I) at `t_max` (see the constants).
fn check_scale(m: &GaussianMixture, schedule: tilt_core::Schedule, t_max: f64) -> Result<()> {
    let alpha = schedule.alpha(t_max);
    let mut reach: f64 = 0.0;
    for (k, (mean, stds)) in m.means.iter().zip(&m.stds).enumerate() {
        let size = mean.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for (v, &std) in mean.iter().zip(stds) {
            if std < MIN_RELATIVE_STD * size {
                bail!(
                    "mixture.std: component {k} has std {std:e} at a mean of size {size:e}; f32 samples cannot resolve \
                     a spread below {MIN_RELATIVE_STD:e} of the mean's size: rescale the mixture"
                );
            }
            reach = reach.max(alpha * (v.abs() + 3.0 * std));
        }
    }
    if reach > MAX_SIGNAL_AT_T_MAX {
        let needed = MAX_SIGNAL_AT_T_MAX / (reach / alpha);
        bail!(
            "mixture: components reach {:.4e} (|mean| + 3 std), so at sampler.t_max = {t_max} (alpha = {alpha:.3e}) \
             the chains' N(0, I) start is off by {reach:.3} noise standard deviations (at most {MAX_SIGNAL_AT_T_MAX}); \
             rescale the mixture, or raise sampler.t_max so that alpha(t_max) <= {needed:.3e}",
            reach / alpha
        );
    }
    Ok(())
}

/// Run the sweep described by `cfg` and write everything into `out`. `out` is claimed (locked, checked for
/// foreign files) only once the models have loaded, so a failed load leaves nothing behind; an earlier sweep's
/// results there are replaced only with `force`.
pub fn run(cfg: &SampleConfig, out: &Path, force: bool, device: &Device) -> Result<Summary> {
    // The analytic data set: the config's, else the one the base network was trained on (if a mixture).
    let mixture = match cfg.built_mixture() {
        Some(m) => Some(m),
        None => match cfg.models.as_ref().and_then(|m| m.base.as_ref()) {
            Some(p) if tilt_models::diffusers::is_diffusers_dir(p) => None,
            Some(p) => {
                let state = tilt_train::load::run_state(p).with_context(|| format!("models.base = {}", p.display()))?;
                match &state.config.data {
                    tilt_train::DataSpec::Mixture { mixture } if !state.config.standardize => {
                        Some(mixture.build().map_err(anyhow::Error::msg)?)
                    }
                    _ => None,
                }
            }
            None => None,
        },
    };
    let scores = load_scores(cfg, mixture.as_ref(), device)?;
    terms::check_terms(cfg, &scores)?;
    let d = scores.dim;
    cfg.validate_for(d, scores.num_classes.max(mixture.as_ref().map_or(0, GaussianMixture::n_classes)))?;
    if let Some(m) = &mixture
        && m.dim() != d
    {
        bail!("mixture: dimension {} differs from the trained models' dimension {d}", m.dim());
    }
    let s = &cfg.sampler;
    let schedule = scores.base.schedule();
    // The grid on the schedule the sampler uses (a trained base brings its own).
    let times = s.grid.try_times(s.steps, s.t_max, s.t_min, schedule).map_err(|e| anyhow::anyhow!("sampler.{e}"))?;
    if let Some(m) = &mixture {
        check_scale(m, schedule, s.t_max)?;
    }
    let kind = cfg.guidance.kind();
    // E_p[r] and E_p_r[r] are the laws at w = 0 and w = 1 of a single swept reward term only: under a composite
    // (fixed-weight terms beside the swept one) no strength samples either, so neither is shown as a reference.
    // A single term restricted to an interval samples no known law either (none is claimed, not even at w = 0).
    let laws_known = cfg.guidance.interval_fields().is_empty();
    let reward_references = laws_known && matches!(kind, GuidanceKind::Reward | GuidanceKind::RewardGradient);
    // Classifier guidance starts from the unconditional model; every other kind from p(.|class).
    let unconditional_base = cfg.guidance.has(|k| *k == TermKind::Classifier);
    let reward = cfg.reward.as_ref().map(|r| r.build());
    let exp_linear = cfg.reward.as_ref().and_then(|r| r.exp_linear());
    let base_kind = if unconditional_base { GuidanceKind::Classifier } else { kind };
    let problem = mixture.map(|m| Problem::new(m, base_kind, cfg.class, exp_linear.clone()));
    if let (Some(p), Some(r)) = (&problem, &exp_linear) {
        let (base, tilted) = (p.base_law.mean_reward(r), p.base_law.tilted_mean_reward(r));
        if !(base.is_finite() && tilted.is_finite()) {
            bail!(
                "reward.a: the reward overflows on this mixture (E_p[r] = {base:e}, E_p_r[r] = {tilted:e}); scale a down"
            );
        }
    }
    let n = cfg.samples;
    check_memory(n, d, scores.num_classes)?;
    // Latent pairs: the autoencoder that decodes the base's codes to images.
    let decoder = match cfg.models.as_ref().and_then(|m| m.autoencoder.as_deref()) {
        Some(p) => Some(load_decoder(p, d, device)?),
        None => None,
    };
    // The shape of the pictures: the samples' own (a pixel model), or the decoded images'.
    let image_shape: Option<[usize; 3]> = match (&decoder, &scores.base.shape()[..]) {
        (Some((_, image)), _) => Some(*image),
        (None, &[c, h, w]) => Some([c, h, w]),
        _ => None,
    };
    let evaluation = match (cfg.models.as_ref().and_then(|m| m.evaluator.as_deref()), image_shape) {
        (None, _) => None,
        (Some(p), Some(image)) => {
            Some(evaluate::Evaluation::load(p, image, cfg.class, scores.class_names.as_deref(), device)?)
        }
        (Some(p), None) => bail!(
            "models.evaluator = {}: the evaluator measures images, and models.base is not an image model (give \
             models.autoencoder for a latent one)",
            p.display()
        ),
    };
    let dir = tilt_train::OutputDir::claim(out, tilt_train::OutputKind::Sample, force)?;
    if *dir.prior() == tilt_train::Prior::Own && !force {
        bail!(
            "{}: holds the results of an earlier `tilt sample`; pass --force to replace them, or choose another --out",
            out.display()
        );
    }
    // summary.json is what says a folder's sweep is complete: it goes before the first new file is written and
    // comes back after the last, so a rerun that fails midway (a full disk) never leaves new samples under the old
    // summary.
    // Per-sample pictures of an earlier sweep here would mix with this one's (fewer samples, other strengths): the
    // folder goes when tilt wrote it, and a `samples/` tilt did not write is left alone and refused.
    let per_sample = out.join("samples");
    if image_shape.is_some() && per_sample.symlink_metadata().is_ok() {
        if *dir.prior() != tilt_train::Prior::Own || !per_sample.is_dir() || per_sample.is_symlink() {
            bail!(
                "{}: exists and was not written by tilt sample (per-sample pictures go there); move it or choose \
                 another --out",
                per_sample.display()
            );
        }
        std::fs::remove_dir_all(&per_sample)
            .with_context(|| format!("cannot remove the earlier {}", per_sample.display()))?;
    }
    match std::fs::remove_file(out.join("summary.json")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove the earlier {}", out.join("summary.json").display()));
        }
        _ => {}
    }
    let model_space_reward = reward.as_deref().map(|r| InDataSpace { reward: r, st: scores.standardizer.clone() });

    // Labels for `rows` chains.
    let condition = |rows: usize| match cfg.class {
        Some(c) if !unconditional_base => Condition::class(c, rows, device),
        _ => Condition::Unconditional,
    };
    let sampler = Sampler { kind: s.kind, schedule, times, denoise_final: s.denoise_final, recurrence: s.recurrence };
    let pixel_image = match scores.base.shape()[..] {
        [c, h, w] => Some([c, h, w]),
        _ => None,
    };
    let batch = s.chunk_rows(pixel_image);
    let chunks: Vec<usize> = (0..n.div_ceil(batch)).map(|i| batch.min(n - i * batch)).collect();

    if let Some(names) = &scores.class_names {
        let list: Vec<String> = names.iter().enumerate().map(|(i, n)| format!("{i} {n}")).collect();
        eprintln!("classes of models.base: {}", list.join(", "));
    }
    let class_name = |c: usize| scores.class_names.as_ref().and_then(|n| n.get(c).cloned());
    // The first chains of every strength, for the labelled sweep grid of image models.
    const GRID_ROWS: usize = 8;
    let mut sweep_columns: Vec<(String, Vec<f32>)> = Vec::new();
    let mut records = Vec::new();
    // guidance.target: the strength from pilot runs and the improvement identity, in place of the listed one.
    let strength_choice = match (&cfg.guidance.target, &problem) {
        (Some(_), Some(p)) => {
            let c = strength::choose(cfg, p, schedule, &sampler, device)?;
            for pilot in &c.pilots {
                eprintln!(
                    "pilot at w = {:.4}: gain integral I = {:.5} ± {:.5}, measured gain {:.5} ± {:.5}",
                    pilot.w, pilot.integral.mean, pilot.integral.se, pilot.measured_gain.mean, pilot.measured_gain.se
                );
            }
            eprintln!(
                "guidance.target: {} = {} (unguided {:.5}) predicted at w = {:.4} ± {:.4}",
                c.quantity, c.target, c.unguided, c.chosen_w, c.chosen_w_se
            );
            Some(c)
        }
        _ => None,
    };
    let strengths: Vec<f64> = match &strength_choice {
        Some(c) => vec![c.chosen_w],
        None => cfg.guidance.strengths.clone(),
    };
    for &strength in &strengths {
        let w = if strength_choice.is_some() { strength } else { cfg.guidance.papers_w(strength) };
        if cfg.guidance.convention == StrengthConvention::Diffusers && strength_choice.is_none() {
            eprintln!("guidance_scale {strength} (diffusers) = papers' w {w}");
        }
        // One guided score per chunk of chains: stateful terms (APG's momentum) start afresh with each chain.
        let guided_for = |rows: usize| {
            terms::guided_score(cfg, &scores, model_space_reward.as_ref(), condition(rows), w, &sampler.times)
        };

        // Best-of-N draws N candidates per sample: N times the rows, so N times the chunks.
        let candidates = if kind == GuidanceKind::BestOfN { w as usize } else { 1 };
        let chunks: Vec<usize> = if candidates > 1 {
            let per = (batch / candidates).max(1);
            (0..n.div_ceil(per)).map(|i| per.min(n - i * per)).collect()
        } else {
            chunks.clone()
        };
        let steps = sampler.steps();
        let bar = ProgressBar::new((steps * chunks.len()) as u64).with_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} steps {elapsed_precise} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("w = {}", w_label(w)));
        let start = Instant::now();
        let (mut x, mut model_calls) = (Vec::with_capacity(n * d), 0);
        let mut smc: Option<SmcRecord> = None;
        // SMC: the particles' weighted estimate of E[r] with the spread of independent groups as its SE.
        let mut smc_mean_reward: Option<MeanSe> = None;
        let mut evaluations_per_sample = 0.0;
        for (i, &rows) in chunks.iter().enumerate() {
            let mut noise = match (s.noise, i) {
                (NoiseKind::Host, _) => NoiseSource::host_stream(cfg.seed, i as u64),
                (NoiseKind::Device, 0) => NoiseSource::device(cfg.seed, device),
                (NoiseKind::Device, _) => NoiseSource::Device,
            };
            let mut guided = guided_for(rows);
            if kind == GuidanceKind::Smc {
                // Validated: SMC runs in one chunk.
                let c = cfg.guidance.smc_config();
                let run = tilt_sampler::Smc {
                    strength: w,
                    ess_threshold: c.ess_threshold,
                    seed: cfg.seed ^ i as u64,
                    proposal: c.proposal,
                    potential: c.potential,
                    resample_every: c.resample_every,
                    groups: c.groups,
                };
                let potential_reward = model_space_reward.as_ref().expect("validated: smc has a reward");
                let out = run.run(&sampler, &mut guided, potential_reward, rows, d, device, &mut noise);
                // The target's E[r]: each group's weighted estimate, the SE from their spread (data space).
                let mut particles = tensor_ext::to_vec(out.particles.clone());
                scores.standardizer.invert(&mut particles);
                let data_reward = reward.as_deref().expect("validated: smc has a reward");
                let r: Vec<f64> =
                    tensor_ext::to_vec_f64(data_reward.log_reward(tensor_ext::matrix(&particles, rows, d, device)))
                        .into_iter()
                        .map(f64::exp)
                        .collect();
                smc = Some(SmcRecord {
                    proposal: c.proposal,
                    potential: c.potential,
                    groups: out.groups.len(),
                    final_ess: out.final_ess(),
                    resamplings_per_group: out.resamplings as f64 / out.groups.len() as f64,
                });
                smc_mean_reward = Some(out.estimate(&r));
                x.extend(tensor_ext::to_vec(out.resampled(cfg.seed ^ (i as u64) ^ 0x5eed)));
                model_calls += guided.base_calls;
                evaluations_per_sample = guided.model_evaluations;
                bar.set_position(((i + 1) * steps) as u64);
                continue;
            }
            let chains = rows * candidates;
            let xc =
                sampler.sample(&mut |x, t, k| guided.score(x, t, k), chains, d, device, &mut noise, &mut |k, _, _| {
                    bar.set_position((i * steps + k) as u64)
                });
            let xc = match &model_space_reward {
                Some(r) if candidates > 1 => {
                    let lr = tensor_ext::to_vec_f64(tilt_core::Reward::log_reward(r, xc.clone()));
                    tilt_sampler::best_of_n::best_of_n(xc, &lr, candidates)
                }
                _ => xc,
            };
            x.extend(tensor_ext::to_vec(xc));
            model_calls += guided.base_calls;
            evaluations_per_sample = guided.model_evaluations * candidates as f64;
        }
        let seconds = start.elapsed().as_secs_f64();
        bar.finish_and_clear();
        scores.standardizer.invert(&mut x);
        let all = x.len() / d;
        let x = finite_rows(x, d);
        let n = x.len() / d;
        let non_finite_samples = all - n;
        if non_finite_samples > 0 {
            eprintln!(
                "warning: w = {}: {non_finite_samples} of {all} samples are not finite (NaN or inf); the sampler diverged \
                 (too few steps, or too strong a guidance). The metrics use the {n} finite samples.",
                w_label(w)
            );
        }
        if n < 2 {
            bail!("w = {}: fewer than 2 finite samples ({n} of {all}); nothing to measure", w_label(w));
        }

        // The pictures of the samples: themselves, or their decoded codes.
        let decoded = decoder.as_ref().map(|(ae, _)| decode(ae, &x, d, device));
        let pixels: &[f32] = decoded.as_deref().unwrap_or(&x);
        // SMC: the weighted estimate with the spread of independent groups (the resampled rows repeat particles, so
        // their naive standard error is too small).
        let mean_reward = match smc_mean_reward {
            Some(estimate) if non_finite_samples == 0 => Some(estimate),
            _ => reward.as_ref().map(|r| {
                let lr = tensor_ext::to_vec_f64(r.log_reward(tensor_ext::matrix(&x, n, d, device)));
                metrics::mean_se(&lr.into_iter().map(f64::exp).collect::<Vec<_>>())
            }),
        };
        let target_kind = if laws_known { kind } else { GuidanceKind::Composite };
        let target = problem.as_ref().and_then(|p| p.exact_target(target_kind, w));
        let distance = target.as_ref().map(|(_, law)| {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed);
            let (reference, _) = law.sample(n.max(2000), &mut rng);
            let (fresh, _) = law.sample(n, &mut rng);
            metrics::distance_to_exact(&x, &reference, &fresh, d, cfg.seed)
        });
        let record = Record {
            w,
            samples: n,
            steps: sampler.steps(),
            model_calls,
            evaluations_per_sample,
            seconds,
            sample_mean: metrics::column_means(&x, d),
            mean_reward,
            base_mean_reward: reward_references
                .then(|| problem.as_ref().zip(exp_linear.as_ref()))
                .flatten()
                .map(|(p, r)| p.base_law.mean_reward(r)),
            target_mean_reward: reward_references
                .then(|| problem.as_ref().zip(exp_linear.as_ref()))
                .flatten()
                .map(|(p, r)| p.base_law.tilted_mean_reward(r)),
            class: problem.as_ref().and_then(|p| p.class_stats(&x, device)),
            evaluator: evaluation.as_ref().map(|e| e.measure(pixels, device)),
            target: target.map(|t| t.0),
            distance_to_target: distance,
            non_finite_samples,
            smc,
        };
        eprintln!("{}", record::one_line(&record));

        let stem = format!("samples_w{}", w_label(w));
        output::write_samples_csv(&out.join(format!("{stem}.csv")), &x, d)?;
        let title = format!(
            "{} guidance, w = {}  ({n} samples, {} {} steps)",
            kebab(&kind),
            w_label(w),
            sampler.steps(),
            kebab(&s.kind)
        );
        let png = out.join(format!("{stem}.png"));
        if let Some(image) = image_shape {
            // Image models: a grid to look at, one PNG per sample, and the raw samples (decoded, for latent ones).
            let [channels, height, width] = image;
            plot::image_grid(&out.join(format!("{stem}_grid.png")), pixels, image, 8, 64)?;
            output::write_samples_safetensors(&out.join(format!("{stem}.safetensors")), pixels, image)?;
            let folder = out.join("samples").join(format!("w{}", w_label(w)));
            std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
            let who = match cfg.class {
                Some(c) => class_name(c).map_or(format!("class{c}"), |n| file_stem(&n)),
                None => "sample".to_string(),
            };
            for (i, one) in pixels.chunks_exact(channels * height * width).enumerate() {
                plot::image_png(&folder.join(format!("{who}_{i}.png")), one, image)?;
            }
            let shown = pixels.len().min(GRID_ROWS * channels * height * width);
            sweep_columns.push((format!("w = {}", w_label(w)), pixels[..shown].to_vec()));
        }
        match &problem {
            // The first two pixels of an image say nothing: image models get the grids instead.
            _ if scores.base.shape().len() == 3 => {}
            Some(p) => {
                let marginal = p.base_law.marginal(&[0, 1.min(d - 1)]);
                let sched = schedule;
                plot::scatter_over_density(&png, &title, &x, d, p.bounds(), &|a, b| {
                    marginal.log_density_at(&[a, b][..marginal.dim()], 0.0, sched)
                })?;
            }
            None => plot::scatter_over_density(&png, &title, &x, d, sample_bounds(&x, d), &|_, _| f64::NEG_INFINITY)?,
        }
        records.push(record);
    }

    let summary = Summary {
        tilt_version: env!("CARGO_PKG_VERSION"),
        device: device::describe(device),
        guidance: kind,
        sampler: format!("{:?}, {} steps, {:?} grid", s.kind, s.steps, s.grid),
        scores: scores.description,
        seed: cfg.seed,
        records,
        strength_choice,
    };
    if let Some(image) = image_shape {
        let rows = sweep_columns.iter().map(|c| c.1.len() / image.iter().product::<usize>()).min().unwrap_or(0);
        let target = match cfg.class {
            Some(c) => format!(" toward class {c}{}", class_name(c).map_or(String::new(), |n| format!(" ({n})"))),
            None => String::new(),
        };
        let title = format!("{} guidance{target}, {} {} steps", kebab(&kind), sampler.steps(), kebab(&s.kind));
        let labels: Vec<String> = (0..rows).map(|i| format!("chain {i}")).collect();
        plot::sweep_grid(&out.join("grid.png"), &title, &sweep_columns, &labels, image)?;
    }
    record::curve_plot(&out.join("curve.png"), &summary)?;
    output::write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}
