//! `tilt train` / `tilt sample` with trained models / `tilt export` end to end, data sets and their errors,
//! divergence detection.

mod common;

use std::path::Path;
use std::process::Command;
use tilt_train::{DataSpec, TrainConfig};

const TINY: &str = r#"
steps = 40
seed = 1
batch_size = 128
data_size = 2000
log_every = 10
checkpoint_every = 20
[objective]
kind = "dsm"
p_uncond = 0.2
[model]
hidden = 32
blocks = 1
[data]
kind = "mixture"
weights = [0.5, 0.5]
means = [[-1.0, 0.0], [1.0, 0.0]]
std = [0.5, 0.5]
"#;

fn tilt(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tilt")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn train_sample_and_export_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let run = d.join("run");
    let (ok, err) = tilt(&["train", "--config", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    for f in ["loss.csv", "loss.png", "config.toml", "checkpoints/latest"] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let csv = std::fs::read_to_string(run.join("loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "one row per 10 steps:\n{csv}");
    // Training again into the same directory is refused; --resume with nothing left to do is fine.
    let (ok, err) = tilt(&["train", "--config", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(!ok && err.contains("--resume"), "{err}");

    // Sample with the trained network as the base: the mixture comes from the run, metrics are exact.
    let sample_cfg = d.join("sample.toml");
    std::fs::write(
        &sample_cfg,
        format!("samples = 200\nclass = 1\n[models]\nbase = \"{}\"\n[sampler]\nsteps = 30\n[guidance]\nkind = \"cfg\"\nstrengths = [0.0, 3.0]\n", run.display()),
    )
    .unwrap();
    let out = d.join("sampled");
    let (ok, err) = tilt(&["sample", "--config", sample_cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["scores"].as_str().unwrap().contains("base:"));
    let recs = summary["records"].as_array().unwrap();
    let acc = |r: &serde_json::Value| r["class"]["accuracy"].as_f64().unwrap();
    assert!(acc(&recs[1]) > acc(&recs[0]), "CFG with the trained network must raise the accuracy: {recs:?}");
    assert!(out.join("samples_w3.png").exists());

    // SafeTensors export of the EMA weights.
    let st = d.join("model.safetensors");
    let (ok, err) = tilt(&["export", "--checkpoint", run.to_str().unwrap(), "--out", st.to_str().unwrap()]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&st).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert!(header.as_object().unwrap().keys().any(|k| k.contains("output")), "{header}");
}

#[test]
fn class_guidance_with_an_unconditional_base_is_refused() {
    // An unconditional network answers every class query with its one score: CFG would be exactly zero.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("uncond.toml");
    std::fs::write(&cfg, TINY.replace("steps = 40", "steps = 10").replace("p_uncond = 0.2", "conditional = false"))
        .unwrap();
    let run = d.join("run");
    let (ok, err) = tilt(&["train", "--config", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    for (guidance, want) in [
        ("kind = \"cfg\"\nstrengths = [1.0]", "guidance.kind = \"cfg\" needs a class-conditional base"),
        (
            "kind = \"negative-class\"\nnegative_class = 0\nstrengths = [1.0]",
            "guidance.kind = \"negative-class\" needs",
        ),
        ("kind = \"none\"\nstrengths = [0.0]", "class = 1 needs a class-conditional base"),
    ] {
        let sample_cfg = d.join("sample.toml");
        std::fs::write(
            &sample_cfg,
            format!("samples = 50\nclass = 1\n[models]\nbase = \"{}\"\n[guidance]\n{guidance}\n", run.display()),
        )
        .unwrap();
        let (ok, err) =
            tilt(&["sample", "--config", sample_cfg.to_str().unwrap(), "--out", d.join("out").to_str().unwrap()]);
        assert!(!ok && err.contains("models.base") && err.contains(want), "{guidance}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn divergence_stops_with_an_error_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let text = TINY
        .replace("steps = 40", "steps = 200")
        .replace("log_every = 10", "log_every = 1")
        .replace("checkpoint_every = 20", "checkpoint_every = 1")
        + "[optim]\nlr = 0.9\nbeta1 = 0.0\nbeta2 = 0.0\nepsilon = 1e-30\n";
    let cfg = TrainConfig::parse(&text).unwrap();
    let run = dir.path().join("run");
    let err = tilt_train::train(&cfg, &run, tilt_train::Start::New, &common::device(), &mut |_| {}).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("training diverged"), "{msg}");
    // The newest checkpoint is the last step whose loss was finite, and it verifies and loads.
    let ck = tilt_train::checkpoint::Checkpoint::open(&run, tilt_train::ModelKind::ScoreNet).unwrap();
    let state: tilt_train::RunState = ck.load_json("state.json").unwrap();
    assert!(state.history.iter().all(|p| p.loss.is_finite()));
    assert_eq!(state.step, state.history.last().unwrap().step);
    assert!(tilt_train::load_score(&run, tilt_train::ModelKind::ScoreNet, &common::device()).is_ok());
}

#[test]
fn toy_data_sets_have_their_shapes() {
    let make = |s: &str| DataSpec::generate(&toml::from_str::<DataSpec>(s).unwrap(), 2000, 7).unwrap();
    let roll = make("kind = \"swiss-roll\"\nnoise = 0.0");
    for r in roll.x.chunks_exact(2) {
        let rad = ((r[0] as f64).powi(2) + (r[1] as f64).powi(2)).sqrt() * 4.0; // radius = t / 4 * 4 = t
        assert!((1.5 * std::f64::consts::PI - 1e-3..=4.5 * std::f64::consts::PI + 1e-3).contains(&rad), "{rad}");
    }
    let board = make("kind = \"checkerboard\"");
    assert!(board.x.chunks_exact(2).all(|r| ((r[0] + 2.0).floor() as i64 + (r[1] + 2.0).floor() as i64) % 2 == 0));
    let rings = make("kind = \"rings\"\nrings = 3\nnoise = 0.0");
    assert_eq!(rings.num_classes, 3);
    for (r, l) in rings.x.chunks_exact(2).zip(rings.labels.as_ref().unwrap()) {
        assert!(((r[0].hypot(r[1])) - (*l + 1) as f32).abs() < 1e-4);
    }
    let moons = make("kind = \"two-moons\"");
    assert_eq!(moons.labels.as_ref().unwrap().iter().filter(|&&c| c == 1).count(), 1000);
    // Same seed, same data; split sizes; standardisation round-trips.
    assert_eq!(make("kind = \"two-moons\""), moons);
    let (train, test) = moons.split(0.25, 1);
    assert_eq!((train.len(), test.len()), (1500, 500));
    let st = tilt_train::Standardizer::fit(&moons);
    let mut x = moons.x.clone();
    st.apply(&mut x);
    let m = tilt_core::metrics::column_means(&x, 2);
    assert!(m.iter().all(|v| v.abs() < 1e-5));
    st.invert(&mut x);
    assert!(x.iter().zip(&moons.x).all(|(a, b)| (a - b).abs() < 1e-4));
}

#[test]
fn csv_data_errors_name_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str, text: &str, labelled: bool| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        tilt_train::data::read_csv(&p, labelled, None).map_err(|e| format!("{e:#}"))
    };
    let ok = read("ok.csv", "x1,x2,label\n0.5,1.0,0\n-1,2,1\n", true).unwrap();
    assert_eq!((ok.len(), ok.dim, ok.num_classes), (2, 2, 2));
    let e = read("bad.csv", "x1,x2\n0.5,1.0\n0.1,abc\n", false).unwrap_err();
    assert!(e.contains("bad.csv: line 3, column 2: expected a number, got \"abc\""), "{e}");
    let e = read("ragged.csv", "1,2\n3,4,5\n", false).unwrap_err();
    assert!(e.contains("ragged.csv: line 2: expected 2 columns"), "{e}");
    let e = read("label.csv", "1,2,0\n3,4,x\n", true).unwrap_err();
    assert!(e.contains("label.csv: line 2, column 3: expected a class label"), "{e}");
    let e = read("nan.csv", "1,2\n3,NaN\n", false).unwrap_err();
    assert!(e.contains("line 2, column 2: expected a finite number"), "{e}");
    assert!(read("empty.csv", "x1,x2\n", false).unwrap_err().contains("no data rows"));
    // Blank lines count: the bad value is on line 5 of the file.
    let e = read("blank.csv", "x1,x2\n\n0.5,1.0\n\n0.1,abc\n", false).unwrap_err();
    assert!(e.contains("blank.csv: line 5, column 2"), "{e}");
    // 1e300 is finite in f64 but not in f32, where training runs.
    let e = read("huge.csv", "1,2\n3,1e300\n", false).unwrap_err();
    assert!(e.contains("line 2, column 2: expected a finite number within the f32 range"), "{e}");
    // A stray label is an error, not a new class; a huge one is refused before anything is allocated.
    let e = read("stray.csv", "1,2,0\n3,4,1\n5,6,7\n", true).unwrap_err();
    assert!(e.contains("stray.csv: line 3: label 7, but class 2 has no rows"), "{e}");
    let e = read("huge_label.csv", "1,2,0\n3,4,1000000000\n", true).unwrap_err();
    assert!(e.contains("huge_label.csv: line 2, column 3: expected a class label"), "{e}");
    let p = dir.path().join("declared.csv");
    std::fs::write(&p, "1,2,0\n3,4,2\n").unwrap();
    assert_eq!(tilt_train::data::read_csv(&p, true, Some(3)).unwrap().num_classes, 3);
    let e = format!("{:#}", tilt_train::data::read_csv(&p, true, Some(2)).unwrap_err());
    assert!(
        e.contains("line 2, column 3: expected a class label (0, 1, ... below data.classes = 2), got \"2\""),
        "{e}"
    );
    let missing = tilt_train::data::read_csv(Path::new("/nonexistent/data.csv"), false, None).unwrap_err();
    assert!(format!("{missing:#}").contains("cannot open data file /nonexistent/data.csv"));
}

/// Every shipped training config parses and validates (configs/train_*.toml), the GPU-sized U-Net one included.
#[test]
fn shipped_train_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("train_") && n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let (cfg, _) = TrainConfig::load(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(cfg.steps > 0, "{name}");
    }
    assert!(names.contains(&"train_unet_fashion.toml".to_string()));
}

#[test]
fn malformed_train_configs_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("steps = 40", "steps = 0", "steps: expected a positive number"),
        ("steps = 40", "stepz = 40", "unknown field `stepz`"),
        ("p_uncond = 0.2", "p_uncond = 1.5", "objective.p_uncond"),
        ("kind = \"dsm\"", "kind = \"gan\"", "unknown variant `gan`"),
        ("hidden = 32", "hidden = 32\nwidth = 3", "unknown field `width`"),
        ("std = [0.5, 0.5]", "std = [0.5, -0.5]", "data.std[1]: expected a positive standard deviation"),
    ];
    for (from, to, want) in cases {
        assert!(TINY.contains(from));
        let text = TINY.replacen(from, to, 1);
        let msg = match TrainConfig::parse(&text).and_then(|c| c.data.generate(10, 0).map(|_| c)) {
            Ok(_) => panic!("accepted: {to}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(msg.contains(want), "for {to:?}: expected {want:?} in {msg}");
    }
    let e = TrainConfig::parse(&format!("{TINY}[optim]\nlr = -1.0\n")).unwrap_err();
    assert!(format!("{e:#}").contains("optim.lr: expected a positive number"));
    let residual = TINY.replace(
        "kind = \"dsm\"\np_uncond = 0.2",
        "kind = \"reward-weighted\"\nform = \"residual\"\nreward = { kind = \"exp-linear\", a = [1.0, 0.0] }",
    );
    let e = TrainConfig::parse(&residual).unwrap_err();
    assert!(format!("{e:#}").contains("objective.base: the residual form needs"), "{e:#}");
}

#[test]
fn idx_images_train_and_bad_idx_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 24 images of 4 x 4 pixels in 3 classes, written as the IDX files of MNIST.
    let pixels: Vec<u8> = (0..24 * 16).map(|i| ((i * 37) % 256) as u8).collect();
    let labels: Vec<u8> = (0..24).map(|i| (i % 3) as u8).collect();
    std::fs::write(d.join("img"), tilt_train::idx::encode(&[24, 4, 4], &pixels)).unwrap();
    std::fs::write(d.join("lab"), tilt_train::idx::encode(&[24], &labels)).unwrap();
    std::fs::write(d.join("lab_short"), tilt_train::idx::encode(&[20], &labels[..20])).unwrap();
    let config_text = |labels: &str| {
        TINY.replace("data_size = 2000", "").replace(
            "kind = \"mixture\"\nweights = [0.5, 0.5]\nmeans = [[-1.0, 0.0], [1.0, 0.0]]\nstd = [0.5, 0.5]",
            &format!(
                "kind = \"idx\"\nimages = \"{}\"\nlabels = \"{}\"\nlimit = 20",
                d.join("img").display(),
                d.join(labels).display()
            ),
        )
    };
    let config = |labels: &str| TrainConfig::parse(&config_text(labels)).unwrap();
    let data = config("lab").data.generate(0, 0).unwrap();
    assert_eq!((data.len(), data.dim, data.num_classes), (20, 16, 3));
    assert!(data.x.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_eq!(data.x[1], 37.0 / 127.5 - 1.0);
    let out = tilt_train::train(&config("lab"), &d.join("run"), tilt_train::Start::New, &common::device(), &mut |_| {});
    assert!(out.unwrap().final_loss.is_finite());
    let e = format!("{:#}", config("lab_short").data.generate(0, 0).unwrap_err());
    assert!(e.contains("lab_short: 20 labels for the 24 images"), "{e}");

    // The pixel U-Net on the same images, class-conditional, through the binary: train, resume, export.
    let unet = |steps: usize| {
        config_text("lab").replace("steps = 40", &format!("steps = {steps}")).replace(
            "hidden = 32\nblocks = 1",
            "kind = \"unet\"\nchannels = 8\ngroups = 4\ntime_dim = 16\nattention = true",
        )
    };
    std::fs::write(d.join("unet20.toml"), unet(20)).unwrap();
    std::fs::write(d.join("unet40.toml"), unet(40)).unwrap();
    let path = |n: &str| d.join(n).display().to_string();
    let (ok, err) = tilt(&["train", "--config", &path("unet20.toml"), "--out", &path("unet")]);
    assert!(ok, "{err}");
    let (ok, err) = tilt(&["train", "--config", &path("unet40.toml"), "--out", &path("unet"), "--resume"]);
    assert!(ok && err.contains("trained 40 steps"), "{err}");
    let (score, state) = tilt_train::load_unet(&d.join("unet"), &common::device()).unwrap();
    assert_eq!((score.shape.clone(), state.image), (vec![1, 4, 4], Some([1, 4, 4])));
    assert_eq!(tilt_models::NoiseNet::null_label(&score.net), Some(3));
    let (ok, err) = tilt(&["export", "--checkpoint", &path("unet"), "--out", &path("unet.safetensors")]);
    assert!(ok, "{err}");
    // ... and is accepted by `tilt sample` as models.base: CFG on class 1, pictures beside the numbers.
    let sweep = format!(
        "samples = 6\nclass = 1\n[models]\nbase = \"{}\"\n[sampler]\nsteps = 4\n[guidance]\nkind = \"cfg\"\nstrengths = [0.0, 2.0]\n",
        path("unet")
    );
    std::fs::write(d.join("sweep.toml"), sweep).unwrap();
    let (ok, err) = tilt(&["sample", "--config", &path("sweep.toml"), "--out", &path("sweep")]);
    assert!(ok, "{err}");
    for f in ["summary.json", "samples_w2.csv", "samples_w2_grid.png", "samples_w0_grid.png"] {
        assert!(d.join("sweep").join(f).is_file(), "tilt sample on a U-Net wrote no {f}: {err}");
    }
    // One PNG per sample, pixel for pixel, and the raw samples as [n, c, h, w] f32.
    for i in 0..6 {
        let png = image::open(d.join(format!("sweep/samples/w2/class1_{i}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (4, 4));
    }
    let raw = std::fs::read(d.join("sweep/samples_w2.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    let samples = st.tensor("samples").unwrap();
    assert_eq!(samples.shape(), &[6, 1, 4, 4]);
    let csv_rows = std::fs::read_to_string(d.join("sweep/samples_w2.csv")).unwrap();
    let first: Vec<f32> = csv_rows.lines().nth(1).unwrap().split(',').map(|v| v.parse().unwrap()).collect();
    let stored: Vec<f32> =
        samples.data()[..64].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(first, stored, "the safetensors rows are the CSV's");
    // A rerun with fewer samples leaves no picture of the earlier sweep behind.
    std::fs::write(
        d.join("sweep4.toml"),
        std::fs::read_to_string(d.join("sweep.toml")).unwrap().replace("samples = 6", "samples = 4"),
    )
    .unwrap();
    let (ok, err) = tilt(&["sample", "--config", &path("sweep4.toml"), "--out", &path("sweep"), "--force"]);
    assert!(ok, "{err}");
    assert!(d.join("sweep/samples/w2/class1_3.png").is_file() && !d.join("sweep/samples/w2/class1_4.png").exists());
    let (ok, err) = tilt(&["sample", "--config", &path("sweep.toml"), "--out", &path("sweep"), "--force"]);
    assert!(ok, "{err}");
    let grid = image::open(d.join("sweep/samples_w2_grid.png")).unwrap();
    // 6 images of 4 x 4 in a row of 6, 2-pixel gaps: 6 * 6 + 2 = 38 wide, 4 + 4 = 8 high.
    assert_eq!((grid.width(), grid.height()), (38, 8));
    // A U-Net needs images: on points it is a named config error.
    let points = TINY.replace("hidden = 32\nblocks = 1", "kind = \"unet\"");
    let e = format!("{:#}", TrainConfig::parse(&points).unwrap_err());
    assert!(e.contains("model.kind: the U-Net needs image data"), "{e}");
}

/// The evaluator learns a separable image task: class c is bright in quadrant c of a 4 x 4 image.
#[test]
fn the_evaluator_learns_to_classify_clean_images() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 400;
    let mut pixels = Vec::with_capacity(n * 16);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % 4;
        labels.push(c as u8);
        for p in 0..16 {
            let (row, col) = (p / 4, p % 4);
            let quadrant = (row / 2) * 2 + col / 2;
            let noise = ((i * 131 + p * 17) % 61) as u8;
            pixels.push(if quadrant == c { 190 + noise } else { 10 + noise });
        }
    }
    std::fs::write(d.join("img"), tilt_train::idx::encode(&[n, 4, 4], &pixels)).unwrap();
    std::fs::write(d.join("lab"), tilt_train::idx::encode(&[n], &labels)).unwrap();
    let text = format!(
        "steps = 150\nseed = 2\nbatch_size = 64\nlog_every = 50\ncheckpoint_every = 150\n[objective]\nkind = \"evaluator\"\n\
         [model]\nkind = \"cnn\"\nchannels = 8\n[optim]\nlr = 5e-3\n[data]\nkind = \"idx\"\nimages = \"{}\"\nlabels = \"{}\"\n",
        d.join("img").display(),
        d.join("lab").display()
    );
    let cfg = TrainConfig::parse(&text).unwrap();
    tilt_train::train(&cfg, &d.join("ev"), tilt_train::Start::New, &common::device(), &mut |_| {}).unwrap();
    let (evaluator, state) = tilt_train::load_evaluator(&d.join("ev"), &common::device()).unwrap();
    assert_eq!(state.image, Some([1, 4, 4]));
    let data = cfg.data.generate(0, 0).unwrap();
    let acc = tilt_train::load::accuracy(&evaluator, &data, &common::device()).unwrap();
    assert!(acc > 0.95, "accuracy {acc}");
    // The features are the penultimate layer: 4 x channels per image.
    let x = tilt_core::tensor_ext::matrix(&data.x[..32], 2, 16, &common::device());
    assert_eq!(evaluator.features(x).dims(), [2, 32]);
    let points = text
        .replace("kind = \"idx\"", "kind = \"two-moons\"\n#")
        .replace("images =", "# images =")
        .replace("labels =", "# labels =");
    let e = format!("{:#}", TrainConfig::parse(&points).unwrap_err());
    assert!(e.contains("the evaluator is trained on labelled images"), "{e}");
}
