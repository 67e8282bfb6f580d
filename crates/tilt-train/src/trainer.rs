//! The generic optimisation loop: loss -> backward -> global-norm clip -> optimizer step -> EMA, with a
//! deterministic per-step RNG (so a resumed run draws exactly what an uninterrupted one would), periodic host
//! reads of the loss (few syncs on GPU backends), NaN/Inf detection, and checkpoint hooks.

use crate::clip::clip_grad_norm;
use crate::ema::Ema;
use crate::optim::OptimConfig;
use anyhow::{Result, bail};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One logged point of the loss curve (means over the steps since the previous point).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    /// The step of the reading.
    pub step: usize,
    /// Mean loss since the previous reading.
    pub loss: f64,
    /// The learning rate at the step.
    pub lr: f64,
    /// Mean global gradient norm since the previous reading (before clipping).
    pub grad_norm: f64,
}

/// What the loop reports at each log step.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Steps taken.
    pub step: usize,
    /// Steps in all.
    pub total: usize,
    /// Mean loss since the previous report.
    pub loss: f64,
    /// The learning rate.
    pub lr: f64,
    /// Steps per second since the previous report.
    pub steps_per_sec: f64,
}

/// Everything that changes during training.
pub struct TrainState<M: Module> {
    /// The online model, on the autodiff device.
    pub model: M,
    /// The EMA of the weights.
    pub ema: Ema<M>,
    /// The optimizer and its state.
    pub optim: ModuleOptimizer,
    /// Optimizer steps taken.
    pub step: usize,
    /// The loss curve.
    pub history: Vec<LossPoint>,
}

/// The RNG of optimizer step `step`: a ChaCha8 stream per step, so no RNG state needs saving.
pub fn step_rng(seed: u64, step: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step as u64);
    rng
}

/// The fixed settings of the loop.
pub struct LoopSettings<'a> {
    /// Steps in all.
    pub total: usize,
    /// Seed of every step's RNG.
    pub seed: u64,
    /// Steps between loss readings.
    pub log_every: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Optimiser and learning-rate settings.
    pub optim: &'a OptimConfig,
}

/// Train until `settings.total` steps. `loss_fn(model, rng)` draws its batch from `rng` and returns the scalar
/// loss; `save(state)` writes a checkpoint (called every `checkpoint_every` steps and at the end).
pub fn train_loop<M: Module>(
    st: &mut TrainState<M>,
    settings: &LoopSettings,
    mut loss_fn: impl FnMut(&M, &mut ChaCha8Rng) -> Result<Tensor<1>>,
    mut save: impl FnMut(&TrainState<M>) -> Result<()>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<()> {
    let (mut loss_acc, mut norm_acc): (Option<Tensor<1>>, Option<Tensor<1>>) = (None, None);
    let mut window_start = (st.step, Instant::now());
    // A resumed run starts from a checkpoint; a new one has none until its first save.
    let mut last_checkpoint = (st.step > 0).then_some(st.step);
    while st.step < settings.total {
        let mut rng = step_rng(settings.seed, st.step);
        let loss = loss_fn(&st.model, &mut rng)?;
        let value = loss.clone().detach().inner();
        let grads = GradientsParams::from_grads(loss.backward(), &st.model);
        let (grads, norm) = clip_grad_norm(&st.model, grads, settings.optim.clip_grad_norm);
        let lr = settings.optim.lr_at(st.step, settings.total);
        st.model = st.optim.step(lr, st.model.clone(), grads);
        st.ema.update(&st.model, st.step);
        st.step += 1;
        loss_acc = Some(loss_acc.map_or(value.clone(), |a| a + value));
        if let Some(n) = norm {
            let n = n.detach().inner();
            norm_acc = Some(norm_acc.map_or(n.clone(), |a| a + n));
        }
        let at_checkpoint = st.step.is_multiple_of(settings.checkpoint_every) || st.step == settings.total;
        if st.step.is_multiple_of(settings.log_every) || at_checkpoint {
            let steps = (st.step - window_start.0) as f64;
            let loss = loss_acc.take().expect("at least one step").into_scalar::<f64>() / steps;
            let grad_norm = norm_acc.take().map_or(0.0, |n| n.into_scalar::<f64>() / steps);
            if !loss.is_finite() || !grad_norm.is_finite() {
                let kept = match last_checkpoint {
                    Some(s) => format!("the checkpoint of step {s} is kept"),
                    None => "no checkpoint had been written yet".to_string(),
                };
                bail!(
                    "training diverged: the loss became {loss} (gradient norm {grad_norm}) between steps {} and {}; \
                     {kept}. Lower optim.lr or set optim.clip_grad_norm.",
                    window_start.0 + 1,
                    st.step,
                );
            }
            let elapsed = window_start.1.elapsed().as_secs_f64().max(1e-9);
            st.history.push(LossPoint { step: st.step, loss, lr, grad_norm });
            progress(&Progress { step: st.step, total: settings.total, loss, lr, steps_per_sec: steps / elapsed });
            window_start = (st.step, Instant::now());
        }
        if at_checkpoint {
            save(st)?;
            last_checkpoint = Some(st.step);
        }
    }
    Ok(())
}
