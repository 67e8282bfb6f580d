//! Guidance terms against closed forms and finite differences, and the guidance machinery itself
//! (one model call for CFG, weight schedules, rescale, APG, negative class).

mod common;

use burn::prelude::*;
use common::*;
use std::cell::Cell;
use tilt_core::metrics::mean_se;
use tilt_core::score::param;
use tilt_core::{Classifier, Condition, ExpLinearReward, MixtureScore, Reward, Schedule, ScoreModel, tensor_ext};
use tilt_sampler::guidance::{
    Apg, BaseEval, CfgGuidance, CfgVariant, ClassifierGuidance, GuidanceTerm, NegativeClassGuidance, RewardGuidance,
    TrainingFreeGuidance, input_gradient,
};
use tilt_sampler::{GuidedScore, SamplerKind, WeightSchedule};

fn points() -> Tensor<2> {
    let v = [-1.3f32, 0.4, 0.2, -0.7, 1.1, 1.5, 2.5, -2.0, 0.0, 0.05];
    tensor_ext::matrix(&v, 5, 2, &device())
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn base_eval<'a>(model: &'a dyn ScoreModel, cond: &'a Condition, x: &Tensor<2>, t: f64) -> BaseEval<'a> {
    let (score, unconditional) = model.score_and_unconditional(x.clone(), t, cond);
    BaseEval { model, condition: cond, score, unconditional: Some(unconditional), step: 0, t_next: None }
}

#[test]
fn mixture_score_matches_host_density_by_finite_differences() {
    // The tensor score against central differences of the independent f64 host density.
    let mix = overlapping();
    for sched in [Schedule::Linear, Schedule::cosine(), Schedule::ddpm(), Schedule::rectified_flow()] {
        let oracle = MixtureScore::new(mix.clone(), sched, &device());
        for t in [1e-3, 0.1, 0.6, 0.99] {
            let s = tensor_ext::to_vec(oracle.score(points(), t, &Condition::Unconditional));
            let pts = tensor_ext::to_vec(points());
            for (i, p) in pts.chunks_exact(2).enumerate() {
                for j in 0..2 {
                    let h = 1e-5;
                    let mut a = [p[0] as f64, p[1] as f64];
                    let mut b = a;
                    a[j] += h;
                    b[j] -= h;
                    let fd = (mix.log_density_at(&a, t, sched) - mix.log_density_at(&b, t, sched)) / (2.0 * h);
                    let got = s[2 * i + j] as f64;
                    assert!(
                        (got - fd).abs() <= 2e-3 * (1.0 + fd.abs()),
                        "{sched:?} t={t} point {i} dim {j}: {got} vs {fd}"
                    );
                }
            }
        }
    }
}

#[test]
fn score_is_finite_near_zero_and_far_from_the_modes() {
    let mix = tilt_core::GaussianMixture::new(
        vec![0.5, 0.5],
        vec![vec![-3.0], vec![3.0]],
        vec![vec![0.01], vec![0.01]],
        vec![vec![0], vec![1]],
    )
    .unwrap();
    let oracle = MixtureScore::new(mix, Schedule::Linear, &device());
    let x = tensor_ext::matrix(&[-1e3, -3.0, 0.0, 2.9, 500.0], 5, 1, &device());
    for t in [0.0, 1e-6, 0.5, 1.0] {
        for cond in [Condition::Unconditional, Condition::class(1, 5, &device())] {
            let s = tensor_ext::to_vec(oracle.score(x.clone(), t, &cond));
            assert!(s.iter().all(|v| v.is_finite()), "t = {t}: {s:?}");
            let lp = tensor_ext::to_vec(oracle.class_log_posteriors(x.clone(), t));
            assert!(lp.iter().all(|v| v.is_finite() && *v <= 1e-6), "t = {t}: {lp:?}");
        }
    }
}

#[test]
fn classifier_gradient_matches_closed_form_and_finite_differences() {
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let (t, class) = (0.3, 1);
    let x = points();
    let cond = Condition::class(class, 5, &dev);
    let eval = base_eval(&oracle, &cond, &x, t);
    let g = tensor_ext::to_vec(ClassifierGuidance::new(&oracle, class).term(&x, t, &eval));
    // grad log p_t(c|x) = s_t(x|c) - s_t(x), exactly.
    let (sc, su) = oracle.score_and_unconditional(x.clone(), t, &cond);
    let closed = tensor_ext::to_vec(sc - su);
    assert!(max_abs(&g, &closed) < 1e-4, "autodiff {g:?} vs closed form {closed:?}");
    // Central differences of log p_t(c|x) through the f32 tensor code, h = 1e-2.
    let labels = tensor_ext::labels(&[class; 5], &dev);
    let f = |x: Tensor<2>| tensor_ext::to_vec_f64(oracle.log_prob(x, t, &labels));
    let h = 1e-2;
    for j in 0..2 {
        let mut e = vec![0f32; 10];
        for i in 0..5 {
            e[2 * i + j] = h as f32;
        }
        let e = tensor_ext::matrix(&e, 5, 2, &dev);
        let (fp, fm) = (f(x.clone() + e.clone()), f(x.clone() - e));
        for i in 0..5 {
            let fd = (fp[i] - fm[i]) / (2.0 * h);
            assert!(
                (g[2 * i + j] as f64 - fd).abs() < 2e-3 * (1.0 + fd.abs()),
                "row {i} dim {j}: {} vs fd {fd}",
                g[2 * i + j]
            );
        }
    }
}

#[test]
fn reward_gradient_term_matches_finite_differences_through_the_denoiser() {
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let reward = ExpLinearReward::new(vec![0.7, -0.4]);
    let t = 0.4;
    let (alpha, sigma) = (Schedule::Linear.alpha(t), Schedule::Linear.sigma(t));
    let x = points();
    let cond = Condition::Unconditional;
    let eval = base_eval(&oracle, &cond, &x, t);
    let g = tensor_ext::to_vec(TrainingFreeGuidance::reward_gradient(&reward).term(&x, t, &eval));
    let f = |x: Tensor<2>| {
        let s = oracle.score(x.clone(), t, &cond);
        tensor_ext::to_vec_f64(reward.log_reward(param::clean_from_score(x, s, alpha, sigma)))
    };
    let h = 1e-2;
    for j in 0..2 {
        let mut e = vec![0f32; 10];
        (0..5).for_each(|i| e[2 * i + j] = h as f32);
        let e = tensor_ext::matrix(&e, 5, 2, &dev);
        let (fp, fm) = (f(x.clone() + e.clone()), f(x.clone() - e));
        for i in 0..5 {
            let fd = (fp[i] - fm[i]) / (2.0 * h);
            assert!(
                (g[2 * i + j] as f64 - fd).abs() < 3e-3 * (1.0 + fd.abs()),
                "row {i} dim {j}: {} vs fd {fd}",
                g[2 * i + j]
            );
        }
    }
    // And the generic input-gradient helper on a closed form: grad of sum(x^2) = 2x.
    let g2 = tensor_ext::to_vec(input_gradient(&x, |x| x.square().sum_dim(1).reshape([5])));
    let want: Vec<f32> = tensor_ext::to_vec(x).iter().map(|v| 2.0 * v).collect();
    assert!(max_abs(&g2, &want) < 1e-6);
}

/// Counts model calls and forwards to the oracle.
struct Counting<'a> {
    inner: &'a MixtureScore,
    calls: Cell<usize>,
}
impl ScoreModel for Counting<'_> {
    fn score(&self, x: Tensor<2>, t: f64, c: &Condition) -> Tensor<2> {
        self.calls.set(self.calls.get() + 1);
        self.inner.score(x, t, c)
    }
    fn score_and_unconditional(&self, x: Tensor<2>, t: f64, c: &Condition) -> (Tensor<2>, Tensor<2>) {
        self.calls.set(self.calls.get() + 1);
        self.inner.score_and_unconditional(x, t, c)
    }
    fn schedule(&self) -> Schedule {
        self.inner.schedule()
    }
    fn shape(&self) -> Vec<usize> {
        vec![2]
    }
}

#[test]
fn cfg_costs_one_model_call_per_step_and_matches_its_formula() {
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let counting = Counting { inner: &oracle, calls: Cell::new(0) };
    let cond = Condition::class(0, 5, &dev);
    let w = 2.5;
    let mut g = GuidedScore::new(&counting, cond.clone()).with(CfgGuidance::new(), WeightSchedule::Constant(w));
    let got = tensor_ext::to_vec(g.score(points(), 0.5, 0));
    assert_eq!(counting.calls.get(), 1, "CFG must evaluate conditional and unconditional in one call");
    let sc = oracle.score(points(), 0.5, &cond);
    let su = oracle.score(points(), 0.5, &Condition::Unconditional);
    let want = tensor_ext::to_vec(sc.clone() + (sc - su).mul_scalar(w));
    assert!(max_abs(&got, &want) < 1e-5);
    // A full run: steps + 1 calls (one per step, one for the final denoise).
    counting.calls.set(0);
    let mut g = GuidedScore::new(&counting, Condition::class(0, 64, &dev))
        .with(CfgGuidance::new(), WeightSchedule::Constant(w));
    draw(&sampler(SamplerKind::SdeDpmSolver1, 25), &mut g, 64, 2, 0);
    assert_eq!(counting.calls.get(), 26);
}

#[test]
fn weight_schedules_switch_terms_on_and_off() {
    let iv = WeightSchedule::Interval { w: 3.0, t_start: 0.8, t_end: 0.2 };
    assert_eq!((iv.at(0.5, 0), iv.at(0.9, 0), iv.at(0.1, 0), iv.at(0.2, 0)), (3.0, 0.0, 0.0, 3.0));
    let ps = WeightSchedule::PerStep(vec![1.0, 2.0]);
    assert_eq!((ps.at(0.3, 0), ps.at(0.3, 1), ps.at(0.3, 7)), (1.0, 2.0, 2.0));
    // Outside the interval the guided score is the base score, and the unconditional call is skipped.
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let counting = Counting { inner: &oracle, calls: Cell::new(0) };
    let cond = Condition::class(1, 5, &dev);
    let mut g = GuidedScore::new(&counting, cond.clone()).with(CfgGuidance::new(), iv);
    let off = tensor_ext::to_vec(g.score(points(), 0.95, 0));
    assert!(max_abs(&off, &tensor_ext::to_vec(oracle.score(points(), 0.95, &cond))) < 1e-6);
    let on = tensor_ext::to_vec(g.score(points(), 0.5, 1));
    assert!(max_abs(&on, &tensor_ext::to_vec(oracle.score(points(), 0.5, &cond))) > 1e-2);
}

#[test]
fn noise_level_and_log_snr_intervals_are_the_time_intervals_they_name() {
    // sigma = sigma_t / alpha_t of the schedule's VP form; log-SNR = -2 ln sigma. Each end maps to the t where the
    // schedule has that sigma, on every schedule; the extremes map to the ends of time without overflow.
    for schedule in [Schedule::Linear, Schedule::cosine(), Schedule::ddpm(), Schedule::rectified_flow()] {
        let sigma_at = |t: f64| schedule.sigma(t) / schedule.alpha(t);
        let (lo, hi) = (0.28, 5.42);
        let WeightSchedule::Interval { w, t_start, t_end } = WeightSchedule::sigma_interval(2.0, lo, hi, &schedule)
        else {
            panic!("an interval")
        };
        assert_eq!(w, 2.0);
        for (t, want) in [(t_start, lo), (t_end, hi)] {
            assert!(
                (sigma_at(t) / want - 1.0).abs() < 1e-6,
                "{}: sigma({t}) = {} vs {want}",
                schedule.name(),
                sigma_at(t)
            );
        }
        let by_log_snr = WeightSchedule::log_snr_interval(2.0, -2.0 * lo.ln(), -2.0 * hi.ln(), &schedule);
        let WeightSchedule::Interval { t_start: a, t_end: b, .. } = by_log_snr else { panic!("an interval") };
        assert!((a - t_start).abs() < 1e-9 && (b - t_end).abs() < 1e-9, "{}: log-SNR {a}, {b}", schedule.name());
        // Inside and outside, through the weight itself.
        let iv = WeightSchedule::sigma_interval(2.0, lo, hi, &schedule);
        let mid = 0.5 * (t_start + t_end);
        assert_eq!((iv.at(mid, 0), iv.at(t_end + 0.01, 0), iv.at(t_start * 0.5, 0)), (2.0, 0.0, 0.0));
        for (sigma, t) in [(0.0, 0.0), (1e-300, 0.0), (1e300, 1.0), (f64::INFINITY, 1.0)] {
            let WeightSchedule::Interval { t_start, .. } = WeightSchedule::sigma_interval(1.0, sigma, 1.0, &schedule)
            else {
                panic!("an interval")
            };
            assert!((t_start - t).abs() < 1e-9, "{}: sigma {sigma} at t = {t_start}", schedule.name());
        }
        for (lambda, t) in [(f64::INFINITY, 0.0), (-1e300, 1.0), (f64::NEG_INFINITY, 1.0)] {
            let WeightSchedule::Interval { t_start, .. } =
                WeightSchedule::log_snr_interval(1.0, lambda, 0.0, &schedule)
            else {
                panic!("an interval")
            };
            assert!((t_start - t).abs() < 1e-9, "{}: log-SNR {lambda} at t = {t_start}", schedule.name());
        }
    }
}

#[test]
fn terms_add_and_reward_term_is_the_score_difference() {
    let dev = device();
    let mix = overlapping();
    let reward = ExpLinearReward::new(vec![0.5, 0.5]);
    let base = MixtureScore::new(mix.clone(), Schedule::Linear, &dev);
    let rw = MixtureScore::new(mix.tilted(&reward), Schedule::Linear, &dev);
    let cond = Condition::class(1, 5, &dev);
    let (w1, w2, t) = (0.7, 1.5, 0.3);
    let mut g = GuidedScore::new(&base, cond.clone())
        .with(RewardGuidance::reweighted(&rw), WeightSchedule::Constant(w1))
        .with(CfgGuidance::new(), WeightSchedule::Constant(w2));
    let got = tensor_ext::to_vec(g.score(points(), t, 0));
    let (sc, su) = base.score_and_unconditional(points(), t, &cond);
    let sr = rw.score(points(), t, &cond);
    let want = tensor_ext::to_vec(sc.clone() + (sr - sc.clone()).mul_scalar(w1) + (sc - su).mul_scalar(w2));
    assert!(max_abs(&got, &want) < 1e-5);
    // Residual form: g = delta directly. With delta = s_r - s the two forms agree.
    let delta = tilt_core::ScoreCombination::difference(&rw, &base);
    let mut a =
        GuidedScore::new(&base, cond.clone()).with(RewardGuidance::residual(&delta), WeightSchedule::Constant(w1));
    let mut b = GuidedScore::new(&base, cond).with(RewardGuidance::reweighted(&rw), WeightSchedule::Constant(w1));
    assert!(max_abs(&tensor_ext::to_vec(a.score(points(), t, 0)), &tensor_ext::to_vec(b.score(points(), t, 0))) < 1e-5);
}

#[test]
fn rescale_and_apg_reshape_cfg_as_specified() {
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let cond = Condition::class(0, 5, &dev);
    let (t, w) = (0.4, 3.0);
    let x = points();
    // Full rescale (phi = 1): each row of the guided score has the base score's standard deviation.
    let mut g =
        GuidedScore::new(&oracle, cond.clone()).with(CfgGuidance::new(), WeightSchedule::Constant(w)).with_rescale(1.0);
    let got = tensor_ext::to_vec(g.score(x.clone(), t, 0));
    let base = tensor_ext::to_vec(oracle.score(x.clone(), t, &cond));
    let std = |r: &[f32]| {
        let m = (r[0] + r[1]) / 2.0;
        (((r[0] - m).powi(2) + (r[1] - m).powi(2)) / 2.0).sqrt()
    };
    for (a, b) in got.chunks_exact(2).zip(base.chunks_exact(2)) {
        assert!((std(a) - std(b)).abs() < 1e-4 * (1.0 + std(b)), "{a:?} vs {b:?}");
    }
    // APG with eta = 0 and no threshold: the clean-space difference loses its component along x0(x|c).
    let eval = base_eval(&oracle, &cond, &x, t);
    let apg = Apg { eta: 0.0, norm_threshold: 0.0, momentum: 0.0 };
    let g = CfgGuidance::with_apg(apg).term(&x, t, &eval);
    let x0c =
        param::clean_from_score(x.clone(), eval.score.clone(), Schedule::Linear.alpha(t), Schedule::Linear.sigma(t));
    let dots = tensor_ext::to_vec((g.clone() * x0c).sum_dim(1));
    assert!(dots.iter().all(|d| d.abs() < 1e-4), "APG(eta=0) term must be orthogonal to x0(x|c): {dots:?}");
    // eta = 1 with a huge threshold is plain CFG.
    let plain = CfgGuidance::new().term(&x, t, &eval);
    let same = CfgGuidance::with_apg(Apg { eta: 1.0, norm_threshold: 1e9, momentum: 0.0 }).term(&x, t, &eval);
    assert!(max_abs(&tensor_ext::to_vec(plain.clone()), &tensor_ext::to_vec(same)) < 1e-4);
    // A norm threshold bounds the clean-space difference per row.
    let tau = 0.05;
    let clipped = CfgGuidance::with_apg(Apg { eta: 1.0, norm_threshold: tau, momentum: 0.0 }).term(&x, t, &eval);
    let to_x0 = (1.0 - Schedule::Linear.alpha_sq(t)) / Schedule::Linear.alpha(t);
    let norms = tensor_ext::to_vec(clipped.mul_scalar(to_x0).square().sum_dim(1).sqrt());
    assert!(norms.iter().all(|n| *n <= tau as f32 * 1.0001), "{norms:?}");
}

#[test]
fn apg_momentum_advances_once_per_sampler_step_and_resets_with_each_run() {
    // With eta = 1 and no threshold APG is the plain CFG difference D plus the momentum buffer: term_k = D + beta *
    // term_{k-1}. A second evaluation in the same step (Heun) must not advance the buffer; a step index that goes
    // back (a new run) must start with an empty one.
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let cond = Condition::class(0, 5, &dev);
    let (x, t, beta) = (points(), 0.4, 0.5);
    let mut apg = CfgGuidance::with_apg(Apg { eta: 1.0, norm_threshold: 0.0, momentum: beta });
    let mut at = |step: usize| {
        let mut eval = base_eval(&oracle, &cond, &x, t);
        eval.step = step;
        tensor_ext::to_vec(apg.term(&x, t, &eval))
    };
    let plain = tensor_ext::to_vec(CfgGuidance::new().term(&x, t, &base_eval(&oracle, &cond, &x, t)));
    let scaled = |k: f32| plain.iter().map(|v| v * k).collect::<Vec<_>>();
    assert!(max_abs(&at(0), &plain) < 1e-4, "first step: no momentum yet");
    assert!(max_abs(&at(1), &scaled(1.5)) < 1e-4, "step 1: D + 0.5 D");
    assert!(max_abs(&at(1), &scaled(1.5)) < 1e-4, "a second evaluation of step 1 does not advance the buffer");
    assert!(max_abs(&at(2), &scaled(1.75)) < 1e-4, "step 2: D + 0.5 (1.5 D)");
    assert!(max_abs(&at(0), &plain) < 1e-4, "a new run starts afresh");
}

#[test]
fn negative_class_guidance_lowers_that_class() {
    let dev = device();
    let mix = overlapping();
    let oracle = MixtureScore::new(mix.clone(), Schedule::Linear, &dev);
    let n = 4000;
    let prob_of_class0 = |w: f64| {
        let mut g = GuidedScore::new(&oracle, Condition::Unconditional)
            .with(NegativeClassGuidance::new(0), WeightSchedule::Constant(w));
        let x = draw(&sampler(SamplerKind::SdeDpmSolver1, 100), &mut g, n, 2, 9);
        let lp = tensor_ext::to_vec_f64(oracle.class_log_posteriors(tensor_ext::matrix(&x, n, 2, &dev), 0.0));
        tilt_core::metrics::mean_se(&lp.chunks_exact(2).map(|r| r[0].exp()).collect::<Vec<_>>())
    };
    let (p0, p2) = (prob_of_class0(0.0), prob_of_class0(2.0));
    // At w = 0 the mean of p(0|Y) is p(0) = 0.3 (E_p[p(c|X)] = p(c)); w = 2 must push it clearly lower.
    assert!((p0.mean - mix.class_prior(0)).abs() < 4.0 * p0.se, "{p0:?}");
    assert!(p2.mean + 4.0 * (p0.se + p2.se) < p0.mean, "p(class 0) {p0:?} -> {p2:?}");
}

#[test]
fn classifier_guidance_at_w1_on_unconditional_base_samples_the_class() {
    // s(x) + grad log p_t(c|x) = s(x|c): exact conditional sampling. Checked against a perfect sampler of p(.|c)
    // on the light-tailed E[log p(c|Y)] and on the mean, and on the heavy-tailed E[1/p(c|Y)] = 1/p(c).
    let dev = device();
    let mix = overlapping();
    let oracle = MixtureScore::new(mix.clone(), Schedule::Linear, &dev);
    let n = 50_000;
    let mut g = GuidedScore::new(&oracle, Condition::Unconditional)
        .with(ClassifierGuidance::new(&oracle, 0), WeightSchedule::Constant(1.0));
    let x = draw(&sampler(SamplerKind::SdeDpmSolver1, 150), &mut g, n, 2, 21);
    let log_p0 = |x: &[f32]| {
        let lp = tensor_ext::to_vec_f64(oracle.class_log_posteriors(tensor_ext::matrix(x, x.len() / 2, 2, &dev), 0.0));
        lp.chunks_exact(2).map(|r| r[0]).collect::<Vec<_>>()
    };
    let got = log_p0(&x);
    let reference = log_p0(&perfect_sampler_output(&mix.conditional(0), 4 * n, 22));
    let (got_log, ref_log) = (mean_se(&got), mean_se(&reference));
    let se = (got_log.se.powi(2) + ref_log.se.powi(2)).sqrt();
    assert_within("E[log p(0|Y)] under classifier guidance w = 1", got_log.mean, ref_log.mean, se, 4.0);
    let mean = mix.conditional(0).mean();
    for j in 0..2 {
        let m = mean_se(&x.chunks_exact(2).map(|r| r[j] as f64).collect::<Vec<_>>());
        assert_within(&format!("mean[{j}] under classifier guidance w = 1"), m.mean, mean[j], m.se, 4.0);
    }
    let inv = mean_se(&got.iter().map(|l| (-l).exp()).collect::<Vec<_>>());
    assert_within("E[1/p(0|Y)] under classifier guidance w = 1", inv.mean, 1.0 / mix.class_prior(0), inv.se, 4.0);
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a[0] * b[0] + a[1] * b[1]
}

/// A variant's `g` for one row, from that row's `c` and `u`.
type HostFormula = dyn Fn(&[f64], &[f64]) -> [f64; 2];

#[test]
fn cfg_variants_match_their_formulas_row_by_row() {
    // c = s(x|c), u = s(x) of the exact mixture; each variant recomputed on the host in f64.
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let cond = Condition::class(0, 5, &dev);
    let (x, t) = (points(), 0.4);
    let eval = base_eval(&oracle, &cond, &x, t);
    let c = tensor_ext::to_vec_f64(eval.score.clone());
    let u = tensor_ext::to_vec_f64(eval.unconditional.clone().unwrap());
    let check = |variant: CfgVariant, want: &HostFormula| {
        let got = tensor_ext::to_vec(CfgGuidance::variant(variant).term(&x, t, &eval));
        for i in 0..5 {
            let (ci, ui) = (&c[2 * i..2 * i + 2], &u[2 * i..2 * i + 2]);
            let w = want(ci, ui);
            for j in 0..2 {
                let g = got[2 * i + j] as f64;
                assert!((g - w[j]).abs() < 1e-4 * (1.0 + w[j].abs()), "{variant:?} row {i}: {g} vs {}", w[j]);
            }
        }
    };
    check(CfgVariant::Plain, &|c, u| [c[0] - u[0], c[1] - u[1]]);
    check(CfgVariant::ZeroStar, &|c, u| {
        let a = dot(c, u) / dot(u, u);
        [c[0] - a * u[0], c[1] - a * u[1]]
    });
    check(CfgVariant::MagnitudeAware { alpha: 8.0 }, &|c, u| {
        let d = [c[0] - u[0], c[1] - u[1]];
        let k = (-8.0 * dot(&d, &d).sqrt() / dot(u, u).sqrt()).exp();
        [k * d[0], k * d[1]]
    });
    // TCFG: the first right-singular vector of [c; u] by power iteration on M^T M (2 x 2), then u' = (u.v) v.
    check(CfgVariant::Tangential, &|c, u| {
        let m = [[c[0] * c[0] + u[0] * u[0], c[0] * c[1] + u[0] * u[1]], [0.0, c[1] * c[1] + u[1] * u[1]]];
        let mtm = [[m[0][0], m[0][1]], [m[0][1], m[1][1]]];
        let mut v = [1.0, 0.3];
        for _ in 0..500 {
            let nv = [mtm[0][0] * v[0] + mtm[0][1] * v[1], mtm[1][0] * v[0] + mtm[1][1] * v[1]];
            let n = dot(&nv, &nv).sqrt();
            v = [nv[0] / n, nv[1] / n];
        }
        let k = dot(u, &v);
        [c[0] - k * v[0], c[1] - k * v[1]]
    });
    // APG-Mix: plain CFG before its start step while the momentum fills; APG (here D + beta buffer) after.
    let apg = Apg { eta: 1.0, norm_threshold: 0.0, momentum: 0.5 };
    let mut mix = CfgGuidance::apg_mix(apg, 2);
    let plain: Vec<f32> = c.iter().zip(&u).map(|(c, u)| (c - u) as f32).collect();
    let mut at = |step: usize| {
        let mut e = base_eval(&oracle, &cond, &x, t);
        e.step = step;
        tensor_ext::to_vec(mix.term(&x, t, &e))
    };
    assert!(max_abs(&at(0), &plain) < 1e-4 && max_abs(&at(1), &plain) < 1e-4, "before the start: plain CFG");
    // Buffer after steps 0, 1: D, 1.5 D; at step 2: D + 0.5 * 1.5 D.
    let want: Vec<f32> = plain.iter().map(|v| v * 1.75).collect();
    assert!(max_abs(&at(2), &want) < 1e-4, "from the start step: APG with the momentum fed since step 0");
}

#[test]
fn zero_init_returns_zero_scores_without_a_model_call_then_guides() {
    let dev = device();
    let oracle = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let mut g = GuidedScore::new(&oracle, Condition::class(0, 5, &dev))
        .with(CfgGuidance::variant(CfgVariant::ZeroStar), WeightSchedule::Constant(2.0))
        .with_zero_init(2);
    for step in 0..2 {
        assert!(tensor_ext::to_vec(g.score(points(), 0.5, step)).iter().all(|v| *v == 0.0));
    }
    assert_eq!(g.base_calls, 0);
    assert!(tensor_ext::to_vec(g.score(points(), 0.5, 2)).iter().any(|v| *v != 0.0));
    assert_eq!((g.base_calls, g.model_evaluations), (1, 2.0), "one batched call of two rows per chain");
}

#[test]
fn autoguidance_is_the_good_minus_the_weak_score_and_sharpens_toward_the_good_law() {
    // Exact stand-ins: the good model is the mixture's exact score, the weak one the exact score of the same mixture
    // with every standard deviation 1.3 times larger (a model that spreads its mass, as an under-trained one does).
    let dev = device();
    let good_mix = overlapping();
    let weak_mix = tilt_core::GaussianMixture {
        stds: good_mix.stds.iter().map(|s| s.iter().map(|v| v * 1.3).collect()).collect(),
        ..good_mix.clone()
    };
    let good = MixtureScore::new(good_mix.clone(), Schedule::Linear, &dev);
    let weak = MixtureScore::new(weak_mix, Schedule::Linear, &dev);
    let cond = Condition::class(0, 5, &dev);
    let (x, t) = (points(), 0.3);
    let eval = base_eval(&good, &cond, &x, t);
    let got = tensor_ext::to_vec(tilt_sampler::guidance::AutoGuidance::new(&weak).term(&x, t, &eval));
    let want = tensor_ext::to_vec(good.score(x.clone(), t, &cond) - weak.score(x.clone(), t, &cond));
    assert!(max_abs(&got, &want) < 1e-5);
    // Guiding away from the broader law concentrates the samples: the class-0 variance falls below the exact one
    // (0.49 per coordinate) as w grows, while w = 0 reproduces it (4 SE, plus the 0.1 % bias of 200 steps).
    let n = 20_000;
    let variance = |w: f64| {
        let cond = Condition::class(0, n, &dev);
        let mut g = GuidedScore::new(&good, cond)
            .with(tilt_sampler::guidance::AutoGuidance::new(&weak), WeightSchedule::Constant(w));
        let x = draw(&sampler(SamplerKind::SdeDpmSolver1, 200), &mut g, n, 2, 4);
        let col: Vec<f64> = x.chunks_exact(2).map(|r| r[0] as f64).collect();
        let m = col.iter().sum::<f64>() / n as f64;
        mean_se(&col.iter().map(|c| (c - m).powi(2)).collect::<Vec<_>>())
    };
    let v0 = variance(0.0);
    assert!((v0.mean - 0.49).abs() < 4.0 * v0.se + 0.002, "w = 0: {v0:?}");
    let (v1, v2) = (variance(1.0), variance(2.0));
    assert!(v1.mean < v0.mean - 4.0 * v0.se && v2.mean < v1.mean - 4.0 * v1.se, "{v0:?} {v1:?} {v2:?}");
}

#[test]
fn cfg_plus_plus_steps_with_the_guided_denoise_and_renoises_unconditionally() {
    // CFG++'s defining step (Chung et al. 2024): x' = alpha' x0_l + sigma' eps(x), x0_l = x0(x) + l (x0(x|c) - x0(x)),
    // by hand from the exact scores, against the step tilt takes: DDIM, DPM-Solver++ 2M's first step, and flow
    // matching's Euler on rectified flow (DDIM's step written for the velocity).
    use tilt_sampler::guidance::CfgPlusPlus;
    use tilt_sampler::{NoiseSource, Sampler, TimeGrid};
    let dev = device();
    for (kind, schedule, k) in [
        (SamplerKind::Ddim, Schedule::Linear, 3),
        (SamplerKind::Ddim, Schedule::cosine(), 17),
        (SamplerKind::DpmSolverPp2M, Schedule::Linear, 0),
        (SamplerKind::FlowMatchEuler, Schedule::rectified_flow(), 8),
    ] {
        let oracle = MixtureScore::new(overlapping(), schedule, &dev);
        let sampler = Sampler::new(kind, schedule, TimeGrid::LogSnr, 20);
        let cond = Condition::class(1, 5, &dev);
        for l in [0.3, 0.8, 1e-9] {
            let mut g = GuidedScore::new(&oracle, cond.clone())
                .with(CfgPlusPlus::new(), WeightSchedule::Constant(l))
                .with_grid(&sampler.times);
            let p = sampler.step_point(k);
            let stepped =
                kind.solver(20).step(&p, &mut |x, t, k| g.score(x, t, k), points(), &mut NoiseSource::host(0));
            let (sc, su) = oracle.score_and_unconditional(points(), p.t, &cond);
            let x0c = param::clean_from_score(points(), sc, p.alpha, p.sigma);
            let x0u = param::clean_from_score(points(), su.clone(), p.alpha, p.sigma);
            let x0l = x0u.clone() + (x0c - x0u).mul_scalar(l);
            let want = x0l.mul_scalar(p.alpha_next) + param::noise_from_score(su, p.sigma).mul_scalar(p.sigma_next);
            let err = relative_error(&tensor_ext::to_vec(stepped), &tensor_ext::to_vec(want));
            assert!(err < 2e-5, "{kind:?} on {}, l = {l}: off by {err:e}", schedule.name());
        }
    }
    // The final denoise (a step to t = 0): x0_l itself; at l = 1 the conditional denoise.
    let oracle = MixtureScore::new(overlapping(), Schedule::Linear, &dev);
    let sampler = Sampler::new(SamplerKind::Ddim, Schedule::Linear, TimeGrid::LogSnr, 20);
    let cond = Condition::class(0, 5, &dev);
    let t_min = *sampler.times.last().unwrap();
    let mut g = GuidedScore::new(&oracle, cond.clone())
        .with(CfgPlusPlus::new(), WeightSchedule::Constant(1.0))
        .with_grid(&sampler.times);
    let s = g.score(points(), t_min, 20);
    let want = oracle.score(points(), t_min, &cond);
    assert!(max_abs(&tensor_ext::to_vec(s), &tensor_ext::to_vec(want)) < 1e-4);
    // CFG++ at l is CFG at the step's scale l kappa (papers' w = l kappa - 1); kappa > 1 and grows as steps shrink.
    let kappa = |steps: usize| {
        let s = Sampler::new(SamplerKind::Ddim, Schedule::Linear, TimeGrid::LogSnr, steps);
        CfgPlusPlus::kappa(&Schedule::Linear, s.times[steps / 2], s.times[steps / 2 + 1])
    };
    assert!(kappa(10) > 1.0 && kappa(100) > 5.0 * kappa(10), "kappa {} at 10 steps, {} at 100", kappa(10), kappa(100));
}
