//! Bring your own Burn network: define it, say what it predicts and on which schedule, and every tilt sampler and
//! guidance term works on it.
//!
//! Run: `cargo run --example guide_your_own_network`
//!
//! The network here is a small class-conditional MLP that predicts flow matching's velocity on the rectified-flow
//! schedule. It is trained for a few hundred steps with a loss written in a few lines, together with a twin trained by
//! the papers' reward-weighted objective (the same loss, each clean sample weighted by `r(x0) / mean r`: no sampling
//! trajectories). Then it is guided by classifier-free guidance and by the papers' reward term `s_r - s`.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::silu;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use tilt_core::metrics::mean_se;
use tilt_core::{Condition, ExpLinearReward, GaussianMixture, Prediction, Reward, Schedule, tensor_ext};
use tilt_models::{NetScore, NoiseNet};
use tilt_sampler::guidance::{CfgGuidance, RewardGuidance};
use tilt_sampler::{GuidedScore, NoiseSource, Sampler, SamplerKind, TimeGrid, WeightSchedule};

const TIME_FREQUENCIES: usize = 8;

/// Your network: any Burn module. This one embeds time (sinusoidal features) and class, and runs an MLP.
#[derive(Module, Debug)]
struct MyVelocityNet {
    input: Linear,
    time: Linear,
    class: Embedding,
    hidden: Vec<Linear>,
    output: Linear,
    /// Number of classes; label `classes` is the null label (the unconditional score, for CFG).
    classes: usize,
}

impl MyVelocityNet {
    fn new(dim: usize, classes: usize, width: usize, device: &Device) -> Self {
        Self {
            input: LinearConfig::new(dim, width).init(device),
            time: LinearConfig::new(2 * TIME_FREQUENCIES, width).init(device),
            class: EmbeddingConfig::new(classes + 1, width).init(device),
            hidden: (0..3).map(|_| LinearConfig::new(width, width).init(device)).collect(),
            output: LinearConfig::new(width, dim).init(device),
            classes,
        }
    }

    fn forward(&self, x: Tensor<2>, t: Tensor<1>, labels: Tensor<1, Int>) -> Tensor<2> {
        let n = x.dims()[0];
        let class = self.class.forward(labels.reshape([n, 1]));
        let [_, _, width] = class.dims();
        // sin and cos of t at frequencies 1, 2, 4, ...: a network sees the time scale of each noise level.
        let freqs = Tensor::<1, Int>::arange(0..TIME_FREQUENCIES as i64, &t.device()).float();
        let angles = t.reshape([n, 1]) * freqs.mul_scalar(std::f64::consts::LN_2).exp().reshape([1, TIME_FREQUENCIES]);
        let time = Tensor::cat(vec![angles.clone().sin(), angles.cos()], 1);
        let mut h = silu(self.input.forward(x) + self.time.forward(time) + class.reshape([n, width]));
        for layer in &self.hidden {
            h = h.clone() + silu(layer.forward(h));
        }
        self.output.forward(h)
    }
}

/// The one trait tilt needs: the output at `(x, t, labels)` and the null label. What the output means (here the
/// velocity) is declared to `NetScore`, which turns it into a score.
impl NoiseNet for MyVelocityNet {
    fn predict_noise(&self, x: Tensor<2>, t: Tensor<1>, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        let n = x.dims()[0];
        let labels = labels.unwrap_or_else(|| tensor_ext::labels(&vec![self.classes; n], &x.device()));
        self.forward(x, t, labels)
    }
    fn null_label(&self) -> Option<usize> {
        Some(self.classes)
    }
}

/// Flow matching on `schedule`: regress the velocity `alpha' x0 + sigma' z` at `x_t = alpha x0 + sigma z`, labels
/// dropped to the null label 20 % of the time; `weights` (the papers' reward weights) multiply each row's error.
fn train(
    data: &[f32],
    labels: &[usize],
    weights: Option<&[f64]>,
    schedule: Schedule,
    device: &Device,
) -> MyVelocityNet {
    // Parameters made on the autodiff device are tracked; `valid()` at the end drops the tape.
    let ad = device.clone().autodiff();
    let mut net = MyVelocityNet::new(2, 2, 128, &ad);
    let mut optim = AdamConfig::new().init();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (n, batch) = (labels.len(), 256);
    for _ in 0..1500 {
        let (mut xt, mut target, mut ts, mut ls, mut ws) = (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..batch {
            let i = (rand::Rng::random::<f64>(&mut rng) * n as f64) as usize % n;
            let t = 1e-3 + (1.0 - 1e-3) * rand::Rng::random::<f64>(&mut rng);
            let p = schedule.interpolant(t);
            let (cx, cz) = Prediction::Velocity.target_coefficients(p);
            for j in 0..2 {
                let (x0, z) = (data[2 * i + j] as f64, StandardNormal.sample(&mut rng));
                let z: f64 = z;
                xt.push((p.alpha * x0 + p.sigma * z) as f32);
                target.push((cx * x0 + cz * z) as f32);
            }
            ts.push(t as f32);
            ls.push(if rand::Rng::random::<f64>(&mut rng) < 0.2 { net.classes } else { labels[i] });
            ws.push(weights.map_or(1.0, |w| w[i]) as f32);
        }
        let out = net.forward(
            tensor_ext::matrix(&xt, batch, 2, &ad),
            Tensor::from_data(TensorData::new(ts, [batch]), &ad),
            tensor_ext::labels(&ls, &ad),
        );
        let per_row = (out - tensor_ext::matrix(&target, batch, 2, &ad)).square().mean_dim(1).reshape([batch]);
        let loss = (per_row * Tensor::from_data(TensorData::new(ws, [batch]), &ad)).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(2e-3, net, grads);
    }
    net.valid()
}

fn main() -> anyhow::Result<()> {
    let device = Device::flex();
    let schedule = Schedule::rectified_flow();
    let mixture = GaussianMixture::new(
        vec![0.3, 0.45, 0.25],
        vec![vec![-0.8, 0.0], vec![0.8, 0.3], vec![0.2, -0.9]],
        vec![vec![0.7, 0.7], vec![0.6, 0.8], vec![0.8, 0.5]],
        vec![vec![0], vec![1, 2]],
    )
    .map_err(anyhow::Error::msg)?;
    // Exact draws, labelled by class (a class is a set of components).
    let (data, components) = mixture.sample(10_000, &mut ChaCha8Rng::seed_from_u64(0));
    let class_of = |k: &usize| mixture.classes.iter().position(|members| members.contains(k)).unwrap_or(0);
    let labels: Vec<usize> = components.iter().map(class_of).collect();
    let reward = ExpLinearReward::new(vec![0.8, 0.4]);

    // The base network, and its reward-weighted twin: weights r(x0) / mean r over the data set.
    let base = train(&data, &labels, None, schedule, &device);
    let log_r = tensor_ext::to_vec_f64(reward.log_reward(tensor_ext::matrix(&data, labels.len(), 2, &device)));
    let mean_r = log_r.iter().map(|l| l.exp()).sum::<f64>() / log_r.len() as f64;
    let weights: Vec<f64> = log_r.iter().map(|l| l.exp() / mean_r).collect();
    let twin = train(&data, &labels, Some(&weights), schedule, &device);

    // Declare prediction and schedule: NetScore reads the score off the velocity.
    let base = NetScore::new(base, schedule, vec![2]).with_prediction(Prediction::Velocity);
    let twin = NetScore::new(twin, schedule, vec![2]).with_prediction(Prediction::Velocity);
    let sampler = Sampler::new(SamplerKind::FlowMatchEuler, schedule, TimeGrid::LogSnr, 50);
    let n = 4000;

    // The papers' reward term s_r - s: w = 1 targets p_r.
    for w in [0.0, 1.0] {
        let mut guided = GuidedScore::new(&base, Condition::Unconditional)
            .with(RewardGuidance::reweighted(&twin), WeightSchedule::Constant(w));
        let x = sampler.draw(&mut guided, n, 2, &device, &mut NoiseSource::host(1));
        let r: Vec<f64> = tensor_ext::to_vec_f64(reward.log_reward(x)).into_iter().map(f64::exp).collect();
        let m = mean_se(&r);
        println!("reward guidance w = {w}: E[r] = {:.3} ± {:.3}", m.mean, m.se);
    }
    println!(
        "(exact: E_p[r] = {:.3}, E_p_r[r] = {:.3}; 1500 training steps leave a few per cent)",
        mixture.mean_reward(&reward),
        mixture.tilted_mean_reward(&reward)
    );

    // Classifier-free guidance toward class 0, in one forward pass over [x; x] with labels [c; null].
    for w in [0.0, 2.0] {
        let mut guided = GuidedScore::new(&base, Condition::class(0, n, &device))
            .with(CfgGuidance::new(), WeightSchedule::Constant(w));
        let x = sampler.draw(&mut guided, n, 2, &device, &mut NoiseSource::host(2));
        let oracle = tilt_core::MixtureScore::new(mixture.clone(), schedule, &device);
        let log_post = tensor_ext::to_vec_f64(oracle.class_log_posteriors(x, 0.0));
        let inv = mean_se(&log_post.chunks_exact(2).map(|row| (-row[0]).exp()).collect::<Vec<_>>());
        println!(
            "CFG w = {w}: E[1/p(c|Y)] = {:.3} ± {:.3} (1/p(c) = {:.3})",
            inv.mean,
            inv.se,
            1.0 / mixture.class_prior(0)
        );
    }
    Ok(())
}
