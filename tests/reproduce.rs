//! `tilt reproduce` smoke test: every experiment with the tiny preset, the exact references of the headlines,
//! the counted network passes, and every file of the report exists and parses.

mod common;

use tilt::commands::reproduce::{self, Outcome, Preset, StageOutput};

#[test]
fn every_experiment_runs_and_the_report_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let outcomes = reproduce::run(Preset::Tiny, &[], out, false, &common::device()).unwrap();
    let mut stages = Vec::new();
    for o in &outcomes {
        match o {
            Outcome::Done(s) => stages.push(s.clone()),
            Outcome::Skipped(s) => panic!("{} skipped in a fresh directory", s.name),
            Outcome::Failed(n, e) => panic!("stage {n} failed: {e}"),
        }
    }
    assert_eq!(stages.len(), reproduce::STAGES.len());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for s in &stages {
        let d = out.join(&s.name);
        // summary.json parses back; results.csv has a header and rows; every figure is a decodable PNG.
        let back: StageOutput =
            serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
        assert_eq!(back.name, s.name);
        let mut csv = csv::Reader::from_path(d.join("results.csv")).unwrap();
        assert!(csv.records().count() >= 1, "{}: empty results.csv", s.name);
        assert!(!s.figures.is_empty());
        for (file, _) in &s.figures {
            let img = image::open(d.join(file)).unwrap_or_else(|e| panic!("{}/{file}: {e}", s.name));
            assert!(img.width() > 100 && img.height() > 100);
            assert!(report.contains(&format!("({}/{file})", s.name)), "report.md does not embed {}/{file}", s.name);
        }
        assert!(report.contains(&s.title));
    }
    let get = |name: &str| stages.iter().find(|s| s.name == name).unwrap();
    // The tiny preset's numbers are too noisy for the papers' claims (tests/theory.rs checks those); here the
    // headlines must be internally consistent with the exact references they are reported against.
    let cfg = &get("cfg_mixture").headline;
    assert!((cfg["inv_class_prior"].as_f64().unwrap() - 1.0 / 0.3).abs() < 1e-9, "1/p(c) of class 0 is 1/0.3");
    let rw = &get("reward_mixture").headline;
    assert!(
        (rw["target_mean_reward"].as_f64().unwrap() - 2.900507).abs() < 1e-5,
        "exact E_p_r[r] of the experiment mixture"
    );
    assert!((rw["base_mean_reward"].as_f64().unwrap() - 1.585148).abs() < 1e-5, "exact E_p[r]");
    // Every schedule and every prediction once, each with its trained numbers.
    let param = &get("parametrisations").headline["trained"];
    let pairs: Vec<(String, String)> = param
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["schedule"].as_str().unwrap().into(), r["prediction"].as_str().unwrap().into()))
        .collect();
    let (mut schedules, mut predictions): (Vec<_>, Vec<_>) = pairs.iter().cloned().unzip();
    schedules.sort();
    predictions.sort();
    assert_eq!(schedules, ["cosine", "discrete", "linear", "rectified-flow"]);
    assert_eq!(predictions, ["epsilon", "sample", "v-prediction", "velocity"]);
    // DRaFT-K's passes are counted by the sampler, not taken from the config: N steps plus the final denoise,
    // K + 1 of them on the tape (tiny preset: N = 10, K = 2).
    let draft = &get("efficiency").headline["draft"];
    assert_eq!(draft["forward_passes_per_step"].as_u64(), Some(draft["n"].as_u64().unwrap() + 1));
    assert_eq!(draft["passes_on_tape"].as_u64(), Some(draft["k"].as_u64().unwrap() + 1));
    // The image methods are compared at matched evaluations, as counted by the sampler: the conditional model
    // makes one per step (N steps plus the final denoise), every guided method two, whatever its term does.
    let image = &get("image_guidance").headline;
    let rows = image["rows"].as_array().unwrap();
    let per_step = (image["steps"].as_u64().unwrap() + 1) as f64;
    assert_eq!(rows[0]["method"], "conditional");
    assert_eq!(rows[0]["evaluations"].as_f64(), Some(per_step));
    let mut methods: Vec<&str> = rows[1..].iter().map(|r| r["method"].as_str().unwrap()).collect();
    methods.dedup();
    assert_eq!(methods, ["cfg", "apg", "cfg++", "pag", "fdg"]);
    for r in &rows[1..] {
        assert_eq!(r["evaluations"].as_f64(), Some(2.0 * per_step), "{r}");
    }

    // A second run skips the complete stages; --force re-runs them.
    let again = reproduce::run(Preset::Tiny, &["discretisation".into()], out, false, &common::device()).unwrap();
    assert!(matches!(again.as_slice(), [Outcome::Skipped(_)]));
    let forced = reproduce::run(Preset::Tiny, &["discretisation".into()], out, true, &common::device()).unwrap();
    assert!(matches!(forced.as_slice(), [Outcome::Done(_)]));
    // An unknown stage name is refused, naming the choices.
    let e = reproduce::run(Preset::Tiny, &["nope".into()], out, false, &common::device()).err().unwrap();
    assert!(format!("{e}").contains("--only nope: unknown experiment"));
}

/// A cached shared model is reused only when its config and its training data are unchanged: a data file rewritten
/// under the same path (as `image_cfg` rewrites its latent codes) retrains the model instead of reusing a model of
/// other data.
#[test]
fn cached_models_are_retrained_when_their_data_change() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("data.csv");
    let rows = |shift: f64| {
        (0..64).map(|i| format!("{},{}\n", (i as f64 * 0.1).sin() + shift, (i % 7) as f64 * 0.2)).collect::<String>()
    };
    std::fs::write(&csv, rows(0.0)).unwrap();
    let text = format!(
        "steps = 5\nseed = 0\nbatch_size = 16\nlog_every = 5\ncheckpoint_every = 5\n[objective]\nkind = \"dsm\"\n\
         [model]\nhidden = 8\nblocks = 1\n[data]\nkind = \"csv\"\npath = \"{}\"\n",
        csv.display()
    );
    let cfg = tilt_train::TrainConfig::parse(&text).unwrap();
    let ctx = reproduce::Ctx {
        preset: Preset::Tiny,
        device: common::device(),
        out: dir.path().join("out"),
        progress: indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()),
        force: false,
    };
    let sha = |c: &tilt_train::TrainConfig| c.data.generate(c.data_size, c.seed).unwrap().sha256();
    let trained_on = |run: &std::path::Path| tilt_train::load::run_state(run).unwrap().data_sha256.unwrap();
    let run = ctx.trained("m", &cfg).unwrap();
    assert_eq!(trained_on(&run), sha(&cfg));
    let model = run.join("checkpoints");
    let stamp = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = stamp(&model);
    // The same data: reused, nothing rewritten.
    assert_eq!(ctx.trained("m", &cfg).unwrap(), run);
    assert_eq!(stamp(&model), before);
    // Other data under the same path: retrained on them.
    std::fs::write(&csv, rows(0.5)).unwrap();
    ctx.trained("m", &cfg).unwrap();
    assert_eq!(trained_on(&run), sha(&cfg));
}
