//! Frequency-decoupled guidance against the paper's own code (Algorithm 2 with kornia: tests/fixtures/fdg, made by
//! scripts/make_fdg_fixture.py), and its defining property: at equal level weights it is CFG.

mod common;

use common::*;
use tilt_core::{Condition, GaussianMixture, MixtureScore, Schedule, tensor_ext};
use tilt_sampler::guidance::fdg::{collapse, laplacian_pyramid};
use tilt_sampler::guidance::{BaseEval, CfgGuidance, FrequencyDecoupledGuidance, GuidanceTerm};

#[derive(serde::Deserialize)]
struct Case {
    shape: [usize; 4],
    guidance_scales: Vec<f64>,
    parallel_weights: Vec<f64>,
    cond: Vec<f64>,
    uncond: Vec<f64>,
    pyramid_of_cond: Vec<Vec<f64>>,
    guided: Vec<f64>,
}

#[derive(serde::Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn the_pyramid_and_the_guided_denoise_match_kornia() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fdg/fdg.json")).unwrap();
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    for case in &fixture.cases {
        let [n, c, h, w] = case.shape;
        let levels = case.guidance_scales.len();
        let size = c * h * w;
        // At weight 1, diffusers' guidance_scale of a level is 1 + its level weight.
        let level_weights = case.guidance_scales.iter().map(|s| s - 1.0).collect();
        let fdg =
            FrequencyDecoupledGuidance::new(level_weights, Some(case.parallel_weights.clone()), [c, h, w]).unwrap();
        for i in 0..n {
            let cond = &case.cond[i * size..(i + 1) * size];
            let uncond = &case.uncond[i * size..(i + 1) * size];
            let bands = laplacian_pyramid(cond, c, h, w, levels);
            for (l, band) in bands.iter().enumerate() {
                let per = band.len();
                let want = &case.pyramid_of_cond[l][i * per..(i + 1) * per];
                assert!(max_diff(band, want) < 1e-12, "{:?} level {l}: {}", case.shape, max_diff(band, want));
            }
            // The pyramid collapses to its input.
            assert!(max_diff(&collapse(&bands, c, h, w), cond) < 1e-12);
            let guided: Vec<f64> = cond.iter().zip(fdg.guided_difference(cond, uncond)).map(|(a, b)| a + b).collect();
            let want = &case.guided[i * size..(i + 1) * size];
            assert!(max_diff(&guided, want) < 1e-11, "{:?} image {i}: {}", case.shape, max_diff(&guided, want));
        }
    }
}

#[test]
fn at_equal_level_weights_fdg_is_cfg_and_bad_shapes_are_refused() {
    // A two-class mixture on 1 x 12 x 12 "images": with level weights [1, 1] and no parallel weighting the FDG term
    // is s(x|c) - s(x), CFG's, to float rounding; with [1, 0] it is not.
    let dev = device();
    let d = 144;
    let mean = |k: usize| (0..d).map(|j| ((j * (k + 3)) % 7) as f64 / 7.0 - 0.5).collect::<Vec<_>>();
    let mix = GaussianMixture::new(
        vec![0.4, 0.6],
        vec![mean(0), mean(1)],
        vec![vec![0.6; d], vec![0.8; d]],
        vec![vec![0], vec![1]],
    )
    .unwrap();
    let oracle = MixtureScore::new(mix, Schedule::Linear, &dev);
    let x = tensor_ext::matrix(&(0..3 * d).map(|i| ((i * 37) % 11) as f32 / 5.0 - 1.0).collect::<Vec<_>>(), 3, d, &dev);
    let cond = Condition::class(1, 3, &dev);
    let t = 0.4;
    let (score, unconditional) = tilt_core::ScoreModel::score_and_unconditional(&oracle, x.clone(), t, &cond);
    let eval =
        BaseEval { model: &oracle, condition: &cond, score, unconditional: Some(unconditional), step: 0, t_next: None };
    let cfg = tensor_ext::to_vec(CfgGuidance::new().term(&x, t, &eval));
    let mut equal = FrequencyDecoupledGuidance::new(vec![1.0, 1.0], None, [1, 12, 12]).unwrap();
    let got = tensor_ext::to_vec(equal.term(&x, t, &eval));
    assert!(relative_error(&got, &cfg) < 1e-5, "{}", relative_error(&got, &cfg));
    let mut low_only = FrequencyDecoupledGuidance::new(vec![0.0, 1.0], None, [1, 12, 12]).unwrap();
    let low = tensor_ext::to_vec(low_only.term(&x, t, &eval));
    assert!(relative_error(&low, &cfg) > 0.05);
    for (weights, image, field) in [
        (vec![1.0], [1, 12, 12], "at least 2 levels"),
        (vec![1.0; 4], [1, 12, 12], "halve exactly 3 times down to at least 3"),
        (vec![1.0; 200], [1, 12, 12], "halve exactly 199 times"),
        (vec![1.0, 1.0], [3, 28, 27], "halve exactly"),
        (vec![1.0, f64::NAN], [1, 12, 12], "level_weights: expected finite"),
    ] {
        let err = FrequencyDecoupledGuidance::new(weights, None, image).unwrap_err();
        assert!(err.contains(field), "{err}");
    }
    let err = FrequencyDecoupledGuidance::new(vec![1.0, 1.0], Some(vec![1.0]), [1, 12, 12]).unwrap_err();
    assert!(err.contains("parallel_weights: expected one per level"), "{err}");
}
