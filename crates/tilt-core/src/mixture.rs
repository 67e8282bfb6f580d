//! Gaussian mixtures with diagonal covariances: exact noised scores, class posteriors and exponential tilts.
//!
//! For `p = sum_k pi_k N(mu_k, diag(s_k^2))` the noised law is again a mixture,
//! `p_t = sum_k pi_k N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2))`, so every quantity of docs/theory.md §5 is closed
//! form. [`GaussianMixture`] holds the parameters on the host (validation, sampling, tilts); [`MixtureScore`]
//! evaluates them with Burn tensor ops, on any backend, differentiable by autodiff.

use crate::reward::ExpLinearReward;
use crate::schedule::Schedule;
use crate::score::{Classifier, Condition, ScoreModel};
use crate::tensor_ext::{self, logsumexp};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Deserialize;
use std::f64::consts::PI;

/// A mixture as written in a TOML/JSON config: `std` (one isotropic value per component) or `stds`
/// (a vector per component), and optional classes (default: one class per component).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MixtureSpec {
    /// Component weights, summing to 1.
    pub weights: Vec<f64>,
    /// Component means, one row per component.
    pub means: Vec<Vec<f64>>,
    /// One isotropic standard deviation per component (or `stds`).
    pub std: Option<Vec<f64>>,
    /// Per-coordinate standard deviations, one row per component (or `std`).
    pub stds: Option<Vec<Vec<f64>>>,
    /// The components of each class; every component in exactly one (default: one class each).
    pub classes: Option<Vec<Vec<usize>>>,
}

impl MixtureSpec {
    /// Validate and build; errors name the field relative to the mixture table (`weights`, `std[1]`, ...).
    pub fn build(&self) -> Result<GaussianMixture, String> {
        let k = self.weights.len();
        let d = self.means.first().map_or(0, Vec::len);
        let stds = match (&self.std, &self.stds) {
            (Some(_), Some(_)) => {
                return Err(
                    "std, stds: give either `std` (one per component) or `stds` (a vector per component), not both"
                        .into(),
                );
            }
            (None, None) => {
                return Err("std: missing field `std` (one standard deviation per component) or `stds`".into());
            }
            (Some(s), None) if s.len() != k => {
                return Err(format!("std: expected {k} values (one per weight), got {}", s.len()));
            }
            (Some(s), None) => s.iter().map(|&v| vec![v; d]).collect(),
            (None, Some(s)) => s.clone(),
        };
        let classes = self.classes.clone().unwrap_or_else(|| (0..k).map(|i| vec![i]).collect());
        GaussianMixture::new(self.weights.clone(), self.means.clone(), stds, classes).map_err(|e| {
            // Scalar `std` surfaces as `stds[i][0]`: name the field the user wrote.
            if self.std.is_some() { e.replacen("stds[", "std[", 1).replace("][0]", "]") } else { e }
        })
    }
}

/// Largest |mean| and standard deviation a mixture may have: the samplers and the exact oracle compute in f32,
/// where squares of larger values lose all precision or overflow.
pub const MAX_PARAMETER: f64 = 1e6;
/// Smallest standard deviation: below it `(x - mean)^2 / std^2` overflows f32 for any x a sampler produces.
pub const MIN_STD: f64 = 1e-6;

/// Mixture parameters. Classes are sets of components; a component may belong to no class.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianMixture {
    /// Component weights, summing to 1.
    pub weights: Vec<f64>,
    /// Component means, one row per component.
    pub means: Vec<Vec<f64>>,
    /// Per component, per dimension standard deviations (diagonal covariance).
    pub stds: Vec<Vec<f64>>,
    /// `classes[c]` lists the components of class `c`.
    pub classes: Vec<Vec<usize>>,
}

impl GaussianMixture {
    /// Build and validate. Errors name the offending field (`weights`, `means[2]`, `stds[1][0]`, `classes[0]`).
    pub fn new(
        weights: Vec<f64>,
        means: Vec<Vec<f64>>,
        stds: Vec<Vec<f64>>,
        classes: Vec<Vec<usize>>,
    ) -> Result<Self, String> {
        let m = Self { weights, means, stds, classes };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), String> {
        let k = self.weights.len();
        if k == 0 {
            return Err("weights: expected at least one component".into());
        }
        if let Some((i, w)) = self.weights.iter().enumerate().find(|(_, w)| !(w.is_finite() && **w > 0.0)) {
            return Err(format!("weights[{i}]: expected a positive weight, got {w}"));
        }
        let total: f64 = self.weights.iter().sum();
        if (total - 1.0).abs() > 1e-6 {
            return Err(format!("weights: expected weights summing to 1 (within 1e-6), they sum to {total}"));
        }
        if self.means.len() != k {
            return Err(format!("means: expected {k} means (one per weight), got {}", self.means.len()));
        }
        if self.stds.len() != k {
            return Err(format!("stds: expected {k} entries (one per weight), got {}", self.stds.len()));
        }
        let d = self.means[0].len();
        if d == 0 {
            return Err("means[0]: expected a non-empty vector".into());
        }
        for (i, mu) in self.means.iter().enumerate() {
            if mu.len() != d {
                return Err(format!("means[{i}]: expected length {d} (the dimension of means[0]), got {}", mu.len()));
            }
            if let Some(v) = mu.iter().find(|v| !v.is_finite()) {
                return Err(format!("means[{i}]: expected finite values, got {v}"));
            }
            if let Some(v) = mu.iter().find(|v| v.abs() > MAX_PARAMETER) {
                return Err(format!(
                    "means[{i}]: expected values within ±{MAX_PARAMETER:e} (samplers and oracle compute in f32), got {v}"
                ));
            }
        }
        for (i, s) in self.stds.iter().enumerate() {
            if s.len() != d {
                return Err(format!("stds[{i}]: expected length {d}, got {}", s.len()));
            }
            if let Some((j, v)) = s.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v > 0.0)) {
                return Err(format!("stds[{i}][{j}]: expected a positive standard deviation, got {v}"));
            }
            if let Some((j, v)) = s.iter().enumerate().find(|(_, v)| !(MIN_STD..=MAX_PARAMETER).contains(*v)) {
                return Err(format!(
                    "stds[{i}][{j}]: expected a standard deviation in [{MIN_STD:e}, {MAX_PARAMETER:e}] (samplers and \
                     oracle compute in f32: (x - mean)^2 / std^2 must stay finite), got {v}"
                ));
            }
        }
        if self.classes.is_empty() {
            return Err("classes: expected at least one class (leave the field out for one class per component)".into());
        }
        let mut owner = vec![None; k];
        for (c, comps) in self.classes.iter().enumerate() {
            if comps.is_empty() {
                return Err(format!("classes[{c}]: expected at least one component"));
            }
            for &j in comps {
                if j >= k {
                    return Err(format!("classes[{c}]: component {j} does not exist (there are {k})"));
                }
                if let Some(other) = owner[j] {
                    return Err(format!("classes[{c}]: component {j} already belongs to class {other}"));
                }
                owner[j] = Some(c);
            }
        }
        Ok(())
    }

    /// The data dimension.
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }
    /// The number of components.
    pub fn n_components(&self) -> usize {
        self.weights.len()
    }
    /// The number of classes.
    pub fn n_classes(&self) -> usize {
        self.classes.len()
    }

    /// `p(c) = sum_{k in c} pi_k`.
    pub fn class_prior(&self, class: usize) -> f64 {
        self.classes[class].iter().map(|&k| self.weights[k]).sum()
    }

    /// `p(x | c)`: the mixture restricted to the components of `class`, renormalised, as a one-class mixture.
    pub fn conditional(&self, class: usize) -> GaussianMixture {
        let comps = &self.classes[class];
        let z = self.class_prior(class);
        GaussianMixture {
            weights: comps.iter().map(|&k| self.weights[k] / z).collect(),
            means: comps.iter().map(|&k| self.means[k].clone()).collect(),
            stds: comps.iter().map(|&k| self.stds[k].clone()).collect(),
            classes: vec![(0..comps.len()).collect()],
        }
    }

    /// Mean of the mixture.
    pub fn mean(&self) -> Vec<f64> {
        let mut m = vec![0.0; self.dim()];
        for (w, mu) in self.weights.iter().zip(&self.means) {
            for (a, b) in m.iter_mut().zip(mu) {
                *a += w * b;
            }
        }
        m
    }

    /// Per-dimension variance of the mixture (law of total variance).
    pub fn variance(&self) -> Vec<f64> {
        let mean = self.mean();
        let mut v = vec![0.0; self.dim()];
        for k in 0..self.n_components() {
            for j in 0..self.dim() {
                let dm = self.means[k][j] - mean[j];
                v[j] += self.weights[k] * (self.stds[k][j].powi(2) + dm * dm);
            }
        }
        v
    }

    /// `log E_p[exp(a . X)] = log sum_k pi_k exp(a . mu_k + a . S_k a / 2)`.
    pub fn log_mean_exp_linear(&self, a: &[f64]) -> f64 {
        let logs: Vec<f64> =
            (0..self.n_components()).map(|k| self.weights[k].ln() + self.exp_linear_log_gain(k, a)).collect();
        host_logsumexp(&logs)
    }

    fn exp_linear_log_gain(&self, k: usize, a: &[f64]) -> f64 {
        let mu = &self.means[k];
        let s = &self.stds[k];
        (0..self.dim()).map(|j| a[j] * mu[j] + 0.5 * a[j] * a[j] * s[j] * s[j]).sum()
    }

    /// The reweighted law `p_r ∝ exp(a . x) p(x)`: again a mixture, with means `mu_k + S_k a` and weights
    /// `∝ pi_k exp(a . mu_k + a . S_k a / 2)`. Component `k` of the result is the tilt of component `k`, so
    /// the classes carry over.
    pub fn tilted(&self, reward: &ExpLinearReward) -> GaussianMixture {
        let a = &reward.a;
        assert_eq!(a.len(), self.dim(), "reward vector and mixture dimension differ");
        let logs: Vec<f64> =
            (0..self.n_components()).map(|k| self.weights[k].ln() + self.exp_linear_log_gain(k, a)).collect();
        let z = host_logsumexp(&logs);
        GaussianMixture {
            weights: logs.iter().map(|l| (l - z).exp()).collect(),
            means: (0..self.n_components())
                .map(|k| (0..self.dim()).map(|j| self.means[k][j] + self.stds[k][j].powi(2) * a[j]).collect())
                .collect(),
            stds: self.stds.clone(),
            classes: self.classes.clone(),
        }
    }

    /// `E_p[r]` for `r = exp(a . x)`.
    pub fn mean_reward(&self, reward: &ExpLinearReward) -> f64 {
        self.log_mean_exp_linear(&reward.a).exp()
    }

    /// `E_{p_r}[r] = E_p[r^2] / E_p[r]`, the mean reward of exact reward-guided sampling at `w = 1`.
    pub fn tilted_mean_reward(&self, reward: &ExpLinearReward) -> f64 {
        let a2: Vec<f64> = reward.a.iter().map(|v| 2.0 * v).collect();
        (self.log_mean_exp_linear(&a2) - self.log_mean_exp_linear(&reward.a)).exp()
    }

    /// Exact samples, row-major `[n, d]`, with the component each row came from.
    pub fn sample<R: Rng>(&self, n: usize, rng: &mut R) -> (Vec<f32>, Vec<usize>) {
        let d = self.dim();
        let mut cumulative = Vec::with_capacity(self.n_components());
        let mut acc = 0.0;
        for w in &self.weights {
            acc += w;
            cumulative.push(acc);
        }
        let mut xs = Vec::with_capacity(n * d);
        let mut comps = Vec::with_capacity(n);
        for _ in 0..n {
            let u: f64 = rng.random::<f64>() * acc;
            let k = cumulative.iter().position(|&c| u < c).unwrap_or(self.n_components() - 1);
            for j in 0..d {
                let z: f64 = StandardNormal.sample(rng);
                xs.push((self.means[k][j] + self.stds[k][j] * z) as f32);
            }
            comps.push(k);
        }
        (xs, comps)
    }

    /// The class of each component (`None` for components in no class).
    pub fn component_class(&self) -> Vec<Option<usize>> {
        let mut owner = vec![None; self.n_components()];
        for (c, comps) in self.classes.iter().enumerate() {
            for &k in comps {
                owner[k] = Some(c);
            }
        }
        owner
    }

    /// The marginal on a subset of coordinates (exact for diagonal covariances); used for 2-D plots.
    pub fn marginal(&self, dims: &[usize]) -> GaussianMixture {
        GaussianMixture {
            weights: self.weights.clone(),
            means: self.means.iter().map(|m| dims.iter().map(|&j| m[j]).collect()).collect(),
            stds: self.stds.iter().map(|s| dims.iter().map(|&j| s[j]).collect()).collect(),
            classes: self.classes.clone(),
        }
    }

    /// Host-side `log p_t(x)` of one point (plots, and a cross-check of the tensor code).
    pub fn log_density_at(&self, x: &[f64], t: f64, schedule: Schedule) -> f64 {
        let (a2, s2) = (schedule.alpha_sq(t), 1.0 - schedule.alpha_sq(t));
        let a = a2.sqrt();
        let logs: Vec<f64> = (0..self.n_components())
            .map(|k| {
                let mut l = self.weights[k].ln();
                for ((xj, mu), sd) in x.iter().zip(&self.means[k]).zip(&self.stds[k]) {
                    let v = a2 * sd.powi(2) + s2;
                    let dx = xj - a * mu;
                    l += -0.5 * (dx * dx / v + (2.0 * PI * v).ln());
                }
                l
            })
            .collect();
        host_logsumexp(&logs)
    }
}

fn host_logsumexp(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Log-mask value for components outside a class. Finite (not -inf) so that `0 * mask` and masked
/// softmaxes never produce NaN, yet far below any log-density an f32 can hold.
const MASKED: f32 = -1.0e30;

/// The exact noised score of a [`GaussianMixture`], as Burn tensor ops on one device.
#[derive(Clone, Debug)]
pub struct MixtureScore {
    mixture: GaussianMixture,
    schedule: Schedule,
    log_weights: Tensor<1>,
    means: Tensor<2>,
    variances: Tensor<2>,
    /// `[C, K]`: 0 where component k is in class c, [`MASKED`] elsewhere.
    class_mask: Tensor<2>,
}

/// Per-component terms of the noised mixture at one `t`, shared by the score, the density and the posteriors.
struct Noised {
    /// `x - alpha mu_k`, `[n, K, d]`.
    diff: Tensor<3>,
    /// `alpha^2 s_k^2 + sigma^2`, `[1, K, d]`.
    var: Tensor<3>,
    /// `log pi_k + log N(x; alpha mu_k, var_k)`, `[n, K]`.
    log_joint: Tensor<2>,
}

impl MixtureScore {
    /// The exact scores of `mixture` noised by `schedule` (its variance-preserving form), computed on `device`.
    pub fn new(mixture: GaussianMixture, schedule: Schedule, device: &Device) -> Self {
        let (k, d, c) = (mixture.n_components(), mixture.dim(), mixture.n_classes());
        let flat = |rows: &Vec<Vec<f64>>, f: fn(f64) -> f64| -> Vec<f32> {
            rows.iter().flatten().map(|&v| f(v) as f32).collect()
        };
        let log_w: Vec<f32> = mixture.weights.iter().map(|w| w.ln() as f32).collect();
        let mut mask = vec![MASKED; c.max(1) * k];
        for (ci, comps) in mixture.classes.iter().enumerate() {
            for &j in comps {
                mask[ci * k + j] = 0.0;
            }
        }
        Self {
            log_weights: Tensor::from_data(TensorData::new(log_w, [k]), device),
            means: tensor_ext::matrix(&flat(&mixture.means, |v| v), k, d, device),
            variances: tensor_ext::matrix(&flat(&mixture.stds, |v| v * v), k, d, device),
            class_mask: tensor_ext::matrix(&mask, c.max(1), k, device),
            mixture,
            schedule,
        }
    }

    /// The clean mixture.
    pub fn mixture(&self) -> &GaussianMixture {
        &self.mixture
    }

    fn noised(&self, x: Tensor<2>, t: f64) -> Noised {
        let [n, d] = x.dims();
        let k = self.mixture.n_components();
        let alpha = self.schedule.alpha(t);
        let sigma2 = 1.0 - self.schedule.alpha_sq(t);
        let var = self.variances.clone().mul_scalar(alpha * alpha).add_scalar(sigma2).reshape([1, k, d]);
        let diff = x.reshape([n, 1, d]) - self.means.clone().mul_scalar(alpha).reshape([1, k, d]);
        let quad = (diff.clone().square() / var.clone()).sum_dim(2).reshape([n, k]);
        let log_norm = var.clone().log().sum_dim(2).reshape([1, k]).add_scalar(d as f64 * (2.0 * PI).ln());
        let log_joint = (quad + log_norm).mul_scalar(-0.5) + self.log_weights.clone().reshape([1, k]);
        Noised { diff, var, log_joint }
    }

    /// `log_joint` restricted to each row's class (components outside it masked out).
    fn masked(&self, log_joint: Tensor<2>, condition: &Condition) -> Tensor<2> {
        match condition {
            Condition::Unconditional => log_joint,
            Condition::Labels(labels) => log_joint + self.class_mask.clone().select(0, labels.clone()),
            // Callers check conditions against their models first (`tilt sample` takes class labels only).
            Condition::Embedding(_) => {
                panic!("the exact mixture oracle is conditioned on class labels, not embeddings")
            }
        }
    }

    /// `sum_k gamma_k * (-(x - alpha mu_k) / var_k)` for responsibilities computed from `log_joint`.
    fn score_from(&self, noised: &Noised, log_joint: Tensor<2>) -> Tensor<2> {
        let [n, k] = log_joint.dims();
        let d = self.mixture.dim();
        let gamma = softmax(log_joint, 1).reshape([n, k, 1]);
        (gamma * noised.diff.clone() / noised.var.clone()).sum_dim(1).reshape([n, d]).neg()
    }

    /// `log p_t(x | condition)` per row.
    pub fn log_density(&self, x: Tensor<2>, t: f64, condition: &Condition) -> Tensor<1> {
        let n = x.dims()[0];
        let noised = self.noised(x, t);
        let mut ld = logsumexp(self.masked(noised.log_joint, condition), 1).reshape([n]);
        if let Condition::Labels(labels) = condition {
            // Normalise by p(c): the masked sum is p_t(x, c).
            let log_prior: Vec<f32> =
                (0..self.mixture.n_classes()).map(|c| self.mixture.class_prior(c).ln() as f32).collect();
            let log_prior =
                Tensor::<1>::from_data(TensorData::new(log_prior, [self.mixture.n_classes()]), &ld.device());
            ld = ld - log_prior.select(0, labels.clone());
        }
        ld
    }

    /// `log p_t(c | x)` for every class, `[n, C]`.
    pub fn class_log_posteriors(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        let [n, _] = x.dims();
        let k = self.mixture.n_components();
        let c = self.mixture.n_classes();
        let log_gamma = log_softmax(self.noised(x, t).log_joint, 1).reshape([n, 1, k]);
        logsumexp(log_gamma + self.class_mask.clone().reshape([1, c, k]), 2).reshape([n, c])
    }
}

impl ScoreModel for MixtureScore {
    fn score(&self, x: Tensor<2>, t: f64, condition: &Condition) -> Tensor<2> {
        let noised = self.noised(x, t);
        let log_joint = self.masked(noised.log_joint.clone(), condition);
        self.score_from(&noised, log_joint)
    }

    /// Both scores from one set of per-component terms: only the softmax differs.
    fn score_and_unconditional(&self, x: Tensor<2>, t: f64, condition: &Condition) -> (Tensor<2>, Tensor<2>) {
        let noised = self.noised(x, t);
        let cond = self.score_from(&noised, self.masked(noised.log_joint.clone(), condition));
        let uncond = self.score_from(&noised, noised.log_joint.clone());
        (cond, uncond)
    }

    fn schedule(&self) -> Schedule {
        self.schedule
    }

    fn shape(&self) -> Vec<usize> {
        vec![self.mixture.dim()]
    }
}

impl Classifier for MixtureScore {
    fn log_prob(&self, x: Tensor<2>, t: f64, labels: &Tensor<1, Int>) -> Tensor<1> {
        let n = x.dims()[0];
        let all = self.class_log_posteriors(x, t);
        all.gather(1, labels.clone().reshape([n, 1])).reshape([n])
    }
}

/// Relative L2 error of a score model against the exact mixture score,
/// `sqrt(Σ_t σ_t² E|s_θ - s|² / Σ_t σ_t² E|s|²)` over `t` in `{0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 0.999}` with
/// `x ~ p_t` drawn exactly (`n` per time). The `σ²` weights are those of the noise-prediction loss.
pub fn relative_score_error(
    model: &dyn ScoreModel,
    exact: &MixtureScore,
    condition: &dyn Fn(usize) -> Condition,
    n: usize,
    seed: u64,
    device: &Device,
) -> f64 {
    use rand::SeedableRng;
    let d = exact.mixture().dim();
    let sched = exact.schedule();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut num, mut den) = (0.0, 0.0);
    // Up to t = 0.999, not 1: at t = 1 alpha = 0 and only an epsilon network's score is defined.
    for t in [0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 0.999] {
        let (x0, _) = exact.mixture().sample(n, &mut rng);
        let z: Vec<f32> = (0..n * d).map(|_| StandardNormal.sample(&mut rng)).collect();
        let xt = tensor_ext::matrix(&x0, n, d, device).mul_scalar(sched.alpha(t))
            + tensor_ext::matrix(&z, n, d, device).mul_scalar(sched.sigma(t));
        let c = condition(n);
        let e = exact.score(xt.clone(), t, &c);
        let m = model.score(xt, t, &c);
        let w = sched.sigma(t).powi(2);
        num += w * tensor_ext::to_vec_f64((m - e.clone()).square().sum())[0];
        den += w * tensor_ext::to_vec_f64(e.square().sum())[0];
    }
    (num / den).sqrt()
}
