//! The pieces of the training objectives: noised batches, the (weighted) noise-prediction loss, the reward
//! weights of reward-weighted score matching, and seeded, reproducible network initialisation.

use crate::config::TimeSampling;
use crate::data::{Dataset, Standardizer};
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::prelude::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use tilt_core::{Prediction, Schedule, tensor_ext};

/// A batch of noised clean samples: host draws, uploaded once.
pub(crate) struct Noised {
    pub(crate) x_t: Tensor<2>,
    pub(crate) t: Tensor<1>,
    /// What the network should output: the noise `Z`, or the declared prediction of `(X_0, Z)` at `t`.
    pub(crate) target: Tensor<2>,
    pub(crate) x0: Vec<f32>,
    pub(crate) labels: Option<Vec<usize>>,
}

/// How a batch is noised: on which interpolant, at which times, and toward which prediction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Noising {
    pub(crate) schedule: Schedule,
    pub(crate) t_min: f64,
    pub(crate) prediction: Prediction,
    pub(crate) time: TimeSampling,
    /// Mean and standard deviation of `logit t` (logit-normal times only).
    pub(crate) logit: (f64, f64),
}

impl Noising {
    /// One training time.
    fn draw_t(&self, rng: &mut ChaCha8Rng) -> f64 {
        match self.time {
            TimeSampling::Uniform => self.t_min + (1.0 - self.t_min) * rng.random::<f64>(),
            TimeSampling::LogitNormal => {
                let xi: f64 = StandardNormal.sample(rng);
                let t = 1.0 / (1.0 + (-(self.logit.0 + self.logit.1 * xi)).exp());
                // At most 1 - 1e-7: at t = 1 a VP schedule's alpha is 0 and no prediction but epsilon is defined.
                t.clamp(self.t_min, 1.0 - 1e-7)
            }
        }
    }
}

pub(crate) fn noised(
    data: &Dataset,
    idx: &[usize],
    how: Noising,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> anyhow::Result<Noised> {
    let d = data.dim;
    let rows = data.rows(idx, rng)?;
    let b = idx.len();
    let (mut x0, mut xt, mut z, mut ts) =
        (Vec::with_capacity(b * d), Vec::with_capacity(b * d), Vec::with_capacity(b * d), Vec::with_capacity(b));
    // Target = cx X_0 + cz Z per row (epsilon: the noise itself, uploaded as drawn).
    let mut target = Vec::with_capacity(if how.prediction == Prediction::Epsilon { 0 } else { b * d });
    for row in rows.chunks_exact(d) {
        let t = how.draw_t(rng);
        let p = how.schedule.interpolant(t);
        let (a, s) = (p.alpha, p.sigma);
        let (cx, cz) = how.prediction.target_coefficients(p);
        ts.push(t as f32);
        for &v in row {
            let e: f64 = StandardNormal.sample(rng);
            x0.push(v);
            z.push(e as f32);
            xt.push((a * v as f64 + s * e) as f32);
            if how.prediction != Prediction::Epsilon {
                target.push((cx * v as f64 + cz * e) as f32);
            }
        }
    }
    Ok(Noised {
        x_t: tensor_ext::matrix(&xt, b, d, device),
        t: Tensor::from_data(TensorData::new(ts, [b]), device),
        target: tensor_ext::matrix(if target.is_empty() { &z } else { &target }, b, d, device),
        x0,
        labels: data.labels.as_ref().map(|l| idx.iter().map(|&i| l[i]).collect()),
    })
}

pub(crate) fn uniform_indices(n: usize, b: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    (0..b).map(|_| rng.random_range(0..n)).collect()
}

/// Per-row `mean_d (prediction - target)^2`, weighted by `weights` (or 1), averaged over the batch.
pub(crate) fn weighted_mse(eps: Tensor<2>, z: Tensor<2>, weights: Option<&[f32]>) -> Tensor<1> {
    let [b, _] = eps.dims();
    let per_row = (eps - z).square().mean_dim(1).reshape([b]);
    match weights {
        None => per_row.mean(),
        Some(w) => {
            let w = Tensor::<1>::from_data(TensorData::new(w.to_vec(), [b]), &per_row.device());
            (per_row * w).mean()
        }
    }
}

/// `log r` of standardised rows, evaluated in data space.
pub(crate) fn log_rewards(
    reward: &dyn tilt_core::Reward,
    rows: &[f32],
    dim: usize,
    st: &Standardizer,
    device: &Device,
) -> Vec<f64> {
    let mut x = rows.to_vec();
    st.invert(&mut x);
    let n = x.len() / dim;
    tensor_ext::to_vec_f64(reward.log_reward(tensor_ext::matrix(&x, n, dim, device)))
}

/// `ln mean_i r_i` from `log r`, without overflow.
pub(crate) fn log_mean_reward(log_r: &[f64]) -> f64 {
    let m = log_r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + (log_r.iter().map(|l| (l - m).exp()).sum::<f64>() / log_r.len() as f64).ln()
}

/// Weights `r_i / mean(r)` for a fixed `ln mean(r)`.
pub(crate) fn weights_relative_to(log_r: &[f64], log_mean: f64) -> Vec<f32> {
    log_r.iter().map(|l| (l - log_mean).exp() as f32).collect()
}

/// The reward normalisation of one fixed data set: `ln mean r` over all its rows, computed once.
///
/// Dividing by the mean within each minibatch instead is biased: the expected gradient is that of the law
/// `∝ r E[1/(r + S_{B-1})] p`, which lowers the tilted mean reward by about `Var_{p_r}(r) / ((B-1) E_p[r])`
/// (docs/theory.md §4). With the data-set mean the loss is exactly the empirical tilted objective.
pub(crate) struct RewardScale {
    pub(crate) train: f64,
    pub(crate) test: f64,
}

impl RewardScale {
    pub(crate) fn of(data: &Dataset, reward: &dyn tilt_core::Reward, st: &Standardizer, device: &Device) -> f64 {
        log_mean_reward(&log_rewards(reward, &data.x, data.dim, st, device))
    }

    /// The scale of `data`, which is the training or the test set itself (compared by address, not by size).
    pub(crate) fn for_set(&self, data: &Dataset, train_set: &Dataset) -> f64 {
        if std::ptr::eq(data, train_set) { self.train } else { self.test }
    }
}

/// Build a model from the device RNG seeded with `seed`. Burn's RNG is process-global per backend, so the
/// seed-then-init pair is made atomic: concurrent runs (tests, threads) then still get reproducible weights.
pub(crate) fn seeded_init<M: Module>(device: &Device, seed: u64, init: impl FnOnce() -> M) -> M {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    with_sequential_ids(init())
}

/// Number the parameters 1, 2, ... in visiting order. Burn draws a random id per parameter, and the ids are
/// written into every model and optimizer file (they key the optimizer state): with random ids two identical
/// runs, or a run and its resumed twin, write different bytes.
fn with_sequential_ids<M: Module>(model: M) -> M {
    struct Sequential(u64);
    impl ModuleMapper for Sequential {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            self.0 += 1;
            let (_, value, mapper) = param.consume();
            Param::from_mapped_value(ParamId::from(self.0), value, mapper)
        }
    }
    model.map(&mut Sequential(0))
}

/// The clean rows `idx` of `data` as a tensor, and their labels (`rng` draws an image folder's flips).
pub(crate) fn clean_batch(
    data: &Dataset,
    idx: &[usize],
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> anyhow::Result<(Tensor<2>, Option<Vec<usize>>)> {
    let rows = data.rows(idx, rng)?;
    let labels = data.labels.as_ref().map(|l| idx.iter().map(|&i| l[i]).collect());
    Ok((tensor_ext::matrix(&rows, idx.len(), data.dim, device), labels))
}
