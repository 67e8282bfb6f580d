//! Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023): the network regresses the velocity
//! `dX_t/dt = alpha' X_0 + sigma' Z` of the `rectified-flow` schedule, at times drawn uniform or logit-normal (SD3).

use super::dsm::{d_p_uncond, d_true, train_noise_net};
use super::{Sets, TrainObjective};
use crate::run::{RunContext, TrainOutcome};
use crate::trainer::Progress;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// How training times are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TimeSampling {
    /// `t ~ U(t_min, 1)`.
    #[default]
    Uniform,
    /// `t = sigmoid(t_mean + t_std xi)`, `xi ~ N(0, 1)`, raised to at least `t_min` (SD3's choice).
    LogitNormal,
}

/// Flow matching on `rectified-flow` (`model.prediction` is `velocity`). Labels and `p_uncond` as for `dsm`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowMatching {
    /// Train a class-conditional network when the data are labelled.
    #[serde(default = "d_true")]
    pub conditional: bool,
    /// Probability of dropping a label to the null label.
    #[serde(default = "d_p_uncond")]
    pub p_uncond: f64,
    /// How training times are drawn.
    #[serde(default)]
    pub time: TimeSampling,
    /// Mean of the logit of `t` (logit-normal only).
    #[serde(default)]
    pub t_mean: f64,
    /// Standard deviation of the logit of `t` (logit-normal only).
    #[serde(default = "d_t_std")]
    pub t_std: f64,
}

fn d_t_std() -> f64 {
    1.0
}

impl TrainObjective for FlowMatching {
    fn train(&self, run: &mut RunContext, sets: &Sets, progress: &mut dyn FnMut(&Progress)) -> Result<TrainOutcome> {
        let noising = super::batches::Noising { time: self.time, logit: (self.t_mean, self.t_std), ..sets.noising };
        train_noise_net(run, sets, noising, self.conditional, self.p_uncond, progress)
    }
}
