//! Training-free reward-gradient guidance (DPS / universal-guidance baseline):
//! `g = grad_x log r(x0_hat(x, t))`, differentiating through the base model's Tweedie denoise.

use super::{BaseEval, GuidanceTerm, input_gradient};
use burn::prelude::*;
use tilt_core::Reward;
use tilt_core::score::param;

pub struct RewardGradientGuidance<'a> {
    reward: &'a dyn Reward,
}

impl<'a> RewardGradientGuidance<'a> {
    pub fn new(reward: &'a dyn Reward) -> Self {
        Self { reward }
    }
}

impl GuidanceTerm for RewardGradientGuidance<'_> {
    fn name(&self) -> &'static str {
        "reward-gradient"
    }
    fn term(&mut self, x: &Tensor<2>, t: f64, base: &BaseEval) -> Tensor<2> {
        let sched = base.model.schedule();
        let (alpha, sigma) = (sched.alpha(t), sched.sigma(t));
        input_gradient(x, |xa| {
            let s = base.model.score(xa.clone(), t, base.condition);
            self.reward.log_reward(param::clean_from_score(xa, s, alpha, sigma))
        })
    }
}
