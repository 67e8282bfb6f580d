//! Optimizer and learning-rate settings, every field written out: PyTorch's Adam/AdamW defaults for the betas and
//! epsilon (Burn's epsilon is 1e-5), and weight decay 0 unless set (PyTorch's AdamW default is 1e-2, Burn's 1e-4;
//! docs/theory.md §8).

use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer, decay::WeightDecayConfig};
use serde::{Deserialize, Serialize};

/// Which optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (weight decay as an L2 term).
    Adam,
    /// AdamW (decoupled weight decay).
    #[default]
    AdamW,
}

/// Optimiser and learning-rate settings (`[optim]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Which optimiser.
    #[serde(default)]
    pub kind: OptimizerKind,
    /// Peak learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// First-moment decay.
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    /// Second-moment decay.
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    /// Added to the denominator (PyTorch's 1e-8 by default).
    #[serde(default = "d_eps")]
    pub epsilon: f64,
    /// Decoupled for AdamW, L2 for Adam.
    #[serde(default)]
    pub weight_decay: f64,
    /// Linear warm-up steps from 0 to `lr`, then cosine decay to `lr * min_lr_ratio`.
    #[serde(default)]
    pub warmup_steps: usize,
    /// The learning rate at the end, as a fraction of `lr`.
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Global-norm gradient clipping; none when absent.
    pub clip_grad_norm: Option<f64>,
    /// EMA decay of the weights (0 disables the average, the EMA then equals the model).
    #[serde(default = "d_ema")]
    pub ema_decay: f64,
}

fn d_lr() -> f64 {
    1e-3
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.999
}
fn d_eps() -> f64 {
    1e-8
}
fn d_ema() -> f64 {
    0.999
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::AdamW,
            lr: d_lr(),
            beta1: d_beta1(),
            beta2: d_beta2(),
            epsilon: d_eps(),
            weight_decay: 0.0,
            warmup_steps: 0,
            min_lr_ratio: 0.0,
            clip_grad_norm: None,
            ema_decay: d_ema(),
        }
    }
}

impl OptimConfig {
    /// The optimiser these settings describe.
    pub fn init(&self) -> ModuleOptimizer {
        match self.kind {
            OptimizerKind::Adam => AdamConfig::new()
                .with_beta_1(self.beta1 as f32)
                .with_beta_2(self.beta2 as f32)
                .with_epsilon(self.epsilon as f32)
                .with_weight_decay((self.weight_decay > 0.0).then(|| WeightDecayConfig::new(self.weight_decay as f32)))
                .init(),
            OptimizerKind::AdamW => AdamWConfig::new()
                .with_beta_1(self.beta1 as f32)
                .with_beta_2(self.beta2 as f32)
                .with_epsilon(self.epsilon as f32)
                .with_weight_decay(self.weight_decay as f32)
                .init(),
        }
    }

    /// Learning rate at optimizer step `step` of `total`: linear warm-up, then half-cosine decay.
    /// A pure function of the step, so resuming needs only the step counter.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let floor = self.lr * self.min_lr_ratio;
        floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    /// Check the settings; names the field on failure.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("optim.{name}: expected a positive number, got {v}"))
            }
        };
        pos("lr", self.lr)?;
        // Adam divides by sqrt(v) + epsilon in f32: below 1e-30 it is 0 there (or subnormal) and a parameter with
        // a zero gradient gets 0/0.
        if !(self.epsilon.is_finite() && (1e-30..=1.0).contains(&self.epsilon)) {
            return Err(format!("optim.epsilon: expected a value in [1e-30, 1], got {}", self.epsilon));
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2), ("ema_decay", self.ema_decay)] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("optim.{name}: expected a value in [0, 1), got {v}"));
            }
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(format!("optim.min_lr_ratio: expected a value in [0, 1], got {}", self.min_lr_ratio));
        }
        // Decoupled decay multiplies the weights by 1 - lr * weight_decay each step: at or beyond 1 it zeroes or
        // flips them.
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0 && self.weight_decay * self.lr < 1.0) {
            return Err(format!(
                "optim.weight_decay: expected a value >= 0 with lr x weight_decay < 1, got {}",
                self.weight_decay
            ));
        }
        if let Some(c) = self.clip_grad_norm {
            pos("clip_grad_norm", c)?;
        }
        Ok(())
    }
}
