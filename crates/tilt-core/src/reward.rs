//! Rewards: positive weights `r(x) > 0`, represented by `log r(x)` so that exponential tilts
//! `r = exp(beta R)` and products stay finite (docs/theory.md §3.3).

use burn::prelude::*;

/// A positive weight `r(x)`, given as a differentiable `log r(x)` per row.
pub trait Reward {
    /// `log r(x_i)` for each row of `x: [n, d]`.
    fn log_reward(&self, x: Tensor<2>) -> Tensor<1>;
}

/// `r(x) = exp(a . x)`: the reward with a closed-form tilt of a Gaussian mixture.
#[derive(Clone, Debug)]
pub struct ExpLinearReward {
    /// The direction and scale `a` of `log r(x) = a . x`.
    pub a: Vec<f64>,
}

impl ExpLinearReward {
    /// `r(x) = exp(a . x)`.
    pub fn new(a: Vec<f64>) -> Self {
        Self { a }
    }
}

impl Reward for ExpLinearReward {
    fn log_reward(&self, x: Tensor<2>) -> Tensor<1> {
        let [n, d] = x.dims();
        assert_eq!(d, self.a.len(), "reward vector `a` has length {} but data have dimension {d}", self.a.len());
        let a: Vec<f32> = self.a.iter().map(|&v| v as f32).collect();
        let a = Tensor::<2>::from_data(TensorData::new(a, [d, 1]), &x.device());
        x.matmul(a).reshape([n])
    }
}

/// `r(x) = exp(height * exp(-|x - center|^2 / (2 width^2)))`: a smooth, bounded reward that favours one region
/// (e.g. one end of the Swiss roll) without pulling samples off to infinity.
#[derive(Clone, Debug)]
pub struct BumpReward {
    /// Where the bump peaks.
    pub center: Vec<f64>,
    /// Its standard deviation.
    pub width: f64,
    /// `log r` at the centre (the reward is `exp(height)` there and 1 far away).
    pub height: f64,
}

impl Reward for BumpReward {
    fn log_reward(&self, x: Tensor<2>) -> Tensor<1> {
        let [n, d] = x.dims();
        let c: Vec<f32> = self.center.iter().map(|&v| v as f32).collect();
        let c = Tensor::<2>::from_data(TensorData::new(c, [1, d]), &x.device());
        let sq = (x - c).square().sum_dim(1).reshape([n]);
        sq.mul_scalar(-0.5 / (self.width * self.width)).exp().mul_scalar(self.height)
    }
}

/// A reward as written in a config file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RewardSpec {
    /// `r(x) = exp(a . x)` (closed-form tilt of a Gaussian mixture).
    ExpLinear {
        /// The direction and scale of the tilt.
        a: Vec<f64>,
    },
    /// `r(x) = exp(height * exp(-|x - center|^2 / (2 width^2)))`.
    Bump {
        /// Where the bump peaks.
        center: Vec<f64>,
        /// Its standard deviation.
        width: f64,
        /// `log r` at the centre.
        height: f64,
    },
}

impl RewardSpec {
    /// The reward this spec describes.
    pub fn build(&self) -> Box<dyn Reward> {
        match self {
            RewardSpec::ExpLinear { a } => Box::new(ExpLinearReward::new(a.clone())),
            RewardSpec::Bump { center, width, height } => {
                Box::new(BumpReward { center: center.clone(), width: *width, height: *height })
            }
        }
    }

    /// The closed-form case, when this is one.
    pub fn exp_linear(&self) -> Option<ExpLinearReward> {
        match self {
            RewardSpec::ExpLinear { a } => Some(ExpLinearReward::new(a.clone())),
            _ => None,
        }
    }

    /// Check against the data dimension; errors are relative to the reward table (`a`, `center`, `width`).
    pub fn validate(&self, dim: usize) -> Result<(), String> {
        let finite = |name: &str, v: &[f64]| {
            if v.len() != dim {
                return Err(format!("{name}: expected length {dim} (the data dimension), got {}", v.len()));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("{name}: expected finite values"));
            }
            Ok(())
        };
        match self {
            RewardSpec::ExpLinear { a } => finite("a", a),
            RewardSpec::Bump { center, width, height } => {
                finite("center", center)?;
                // The reward is evaluated in f32: 1 / (2 width^2) must not overflow, nor r = e^height.
                if !(width.is_finite() && *width >= 1e-6) {
                    return Err(format!("width: expected a finite width >= 1e-6, got {width}"));
                }
                if !(height.is_finite() && height.abs() <= 80.0) {
                    return Err(format!(
                        "height: expected a value in [-80, 80] (r = e^height overflows f32 beyond 88), got {height}"
                    ));
                }
                Ok(())
            }
        }
    }
}
