//! `data.kind = "image-folder"`: decoding (resize, centre crop, channels, scaling), classes from sub-folders,
//! training a U-Net with random flips that resumes byte for byte, and the refusals (a file that does not decode,
//! a changed folder, stray images).

mod common;

use std::path::Path;
use tilt_train::image_folder::{Decoding, decode};
use tilt_train::{Start, TrainConfig};

/// An RGB image whose pixel (x, y) has channels (10 x + 1, 10 y + 2, 7).
fn gradient(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(10 * x + 1) as u8, (10 * y + 2) as u8, 7]))
}

fn scaled(v: u8) -> f32 {
    v as f32 / 127.5 - 1.0
}

#[test]
fn decoding_crops_the_centre_and_scales_to_minus_one_one() {
    let dir = tempfile::tempdir().unwrap();
    // 6 x 4 at size 4: the shorter side is already 4, so no resampling; the centre 4 columns are x = 1..5.
    let path = dir.path().join("wide.png");
    gradient(6, 4).save(&path).unwrap();
    let v = decode(&path, Decoding { size: 4, channels: 3 }).unwrap();
    assert_eq!(v.len(), 3 * 16);
    for y in 0..4 {
        for x in 0..4 {
            assert_eq!(v[y * 4 + x], scaled((10 * (x + 1) + 1) as u8), "R at ({x}, {y})");
            assert_eq!(v[16 + y * 4 + x], scaled((10 * y + 2) as u8), "G at ({x}, {y})");
            assert_eq!(v[32 + y * 4 + x], 7.0 / 127.5 - 1.0);
        }
    }
    // Tall: rows y = 1..5 of 4 x 6.
    let path = dir.path().join("tall.png");
    gradient(4, 6).save(&path).unwrap();
    let v = decode(&path, Decoding { size: 4, channels: 3 }).unwrap();
    assert_eq!(v[16], scaled(12), "G of the first row is y = 1");
    // Grey: the image crate's luma of a flat colour.
    let path = dir.path().join("flat.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 200, 200])).save(&path).unwrap();
    let v = decode(&path, Decoding { size: 2, channels: 1 }).unwrap();
    assert_eq!(v, vec![scaled(200); 4], "a flat image stays flat when downscaled");
    // A JPEG decodes too (lossy: within a few levels).
    let path = dir.path().join("flat.jpg");
    image::RgbImage::from_pixel(16, 16, image::Rgb([40, 120, 200])).save(&path).unwrap();
    let v = decode(&path, Decoding { size: 8, channels: 3 }).unwrap();
    for (c, want) in [40u8, 120, 200].iter().enumerate() {
        assert!(v[c * 64..(c + 1) * 64].iter().all(|x| (x - scaled(*want)).abs() < 4.0 / 127.5), "channel {c}");
    }
}

/// Two classes, `n` images each, of mixed sizes and formats.
fn make_folder(root: &Path, n: u32) {
    for (c, class) in ["coat", "shoe"].iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(10 + i, 12, |x, y| {
                image::Rgb([(x * 20 + c as u32 * 90) as u8, (y * 15) as u8, (i * 30) as u8])
            });
            let ext = if i % 3 == 0 { "jpg" } else { "png" };
            img.save(dir.join(format!("{i:03}.{ext}"))).unwrap();
        }
    }
    std::fs::write(root.join("README.txt"), "not an image: ignored").unwrap();
}

fn config(root: &Path, steps: usize, extra: &str) -> TrainConfig {
    TrainConfig::parse(&format!(
        r#"
steps = {steps}
seed = 3
batch_size = 4
log_every = 2
checkpoint_every = 2
test_fraction = 0.2
[optim]
min_lr_ratio = 1.0
[objective]
kind = "dsm"
p_uncond = 0.2
[model]
kind = "unet"
channels = 8
groups = 4
time_dim = 16
channel_mults = [1, 2]
[data]
kind = "image-folder"
path = "{}"
size = 8
flip = true
{extra}
"#,
        root.display()
    ))
    .unwrap()
}

/// The checkpoint's weight and optimizer files, by name.
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let ck = tilt_train::checkpoint::resolve(dir).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "state.json" && e.file_name() != "manifest.json")
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn a_folder_trains_with_flips_and_resumes_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    make_folder(&root, 6);
    let data = config(&root, 4, "").data.generate(0, 0).unwrap();
    assert_eq!((data.len(), data.dim, data.num_classes, data.image), (12, 3 * 64, 2, Some([3, 8, 8])));
    assert_eq!(data.class_names(), Some(vec!["coat".to_string(), "shoe".to_string()]));
    assert_eq!(data.labels.as_ref().unwrap().iter().filter(|l| **l == 1).count(), 6);
    let device = common::device();
    let straight = tmp.path().join("straight");
    tilt_train::train(&config(&root, 4, ""), &straight, Start::New, &device, &mut |_| {}).unwrap();
    let halves = tmp.path().join("halves");
    tilt_train::train(&config(&root, 2, ""), &halves, Start::New, &device, &mut |_| {}).unwrap();
    tilt_train::train(&config(&root, 4, ""), &halves, Start::Resume, &device, &mut |_| {}).unwrap();
    assert!(files_of(&straight) == files_of(&halves), "a resumed run differs from a straight one");
    // The label map travels with the run.
    let state = tilt_train::load::run_state(&straight).unwrap();
    assert_eq!(state.class_names, Some(vec!["coat".to_string(), "shoe".to_string()]));
    assert_eq!(state.image, Some([3, 8, 8]));
    // Flips are drawn: the same run without them trains other weights.
    let unflipped = tmp.path().join("unflipped");
    let text = |root: &Path| config(root, 4, "");
    let mut cfg = text(&root);
    if let tilt_train::DataSpec::ImageFolder { flip, .. } = &mut cfg.data {
        *flip = false;
    }
    tilt_train::train(&cfg, &unflipped, Start::New, &device, &mut |_| {}).unwrap();
    assert!(files_of(&straight) != files_of(&unflipped), "flip = true trained the same weights as flip = false");
    // A changed image: resume is refused.
    image::RgbImage::from_pixel(10, 12, image::Rgb([1, 2, 3])).save(root.join("shoe/001.png")).unwrap();
    let e = format!(
        "{:#}",
        tilt_train::train(&config(&root, 6, ""), &halves, Start::Resume, &device, &mut |_| {}).unwrap_err()
    );
    assert!(e.contains("data differ"), "{e}");
}

#[test]
fn bad_files_are_named_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    make_folder(&root, 3);
    std::fs::write(root.join("coat/broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    let e = format!("{:#}", config(&root, 2, "").data.generate(0, 0).unwrap_err());
    assert!(e.contains("broken.png") && e.contains("skip_bad"), "{e}");
    let data = config(&root, 2, "skip_bad = true").data.generate(0, 0).unwrap();
    assert_eq!(data.len(), 6, "the broken file is left out, the rest kept");
    // An image beside the class folders, an empty folder, a bad size or channel count.
    std::fs::copy(root.join("coat/001.png"), root.join("stray.png")).unwrap();
    let e = format!("{:#}", config(&root, 2, "").data.generate(0, 0).unwrap_err());
    assert!(e.contains("stray.png"), "{e}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = format!("{:#}", config(&empty, 2, "").data.generate(0, 0).unwrap_err());
    assert!(e.contains("no PNG or JPEG"), "{e}");
    for (field, value) in [("size", "0"), ("size", "100000"), ("channels", "2")] {
        let text = format!(
            "steps = 1\n[objective]\nkind = \"dsm\"\n[model]\nkind = \"unet\"\n[data]\nkind = \"image-folder\"\npath = \"{}\"\n{}\n",
            root.display(),
            if field == "size" { format!("size = {value}") } else { format!("size = 8\nchannels = {value}") }
        );
        let e = format!("{:#}", TrainConfig::parse(&text).unwrap_err());
        assert!(e.contains(&format!("data.{field}")), "{field} = {value}: {e}");
    }
    let text = format!(
        "steps = 1\nstandardize = true\n[objective]\nkind = \"dsm\"\n[model]\nkind = \"unet\"\n[data]\nkind = \"image-folder\"\npath = \"{}\"\nsize = 8\n",
        root.display()
    );
    assert!(format!("{:#}", TrainConfig::parse(&text).unwrap_err()).contains("standardize"));
}

/// A folder of quadrant images: class `c` is bright in quadrant `c` of an 8 x 8 RGB image, with a little noise.
fn quadrant_folder(root: &Path, per_class: usize) {
    for (c, name) in ["top left", "top-right"].iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(8, 8, |x, y| {
                let quadrant = (y / 4) * 2 + x / 4;
                let noise = ((i as u32 * 131 + x * 17 + y * 29) % 41) as u8;
                let v = if quadrant == c as u32 { 200 + noise } else { 10 + noise };
                image::Rgb([v, v / 2, 255 - v])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

/// Train a U-Net and an evaluator on one folder; `tilt sample` names the per-sample files by class, labels the
/// sweep grid, and reports the evaluator's measures with the Fréchet floor.
#[test]
fn sample_reports_the_evaluator_on_an_image_folder_model() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let root = d.join("quadrants");
    quadrant_folder(&root, 40);
    let run = |text: String, out: &str| {
        let cfg = TrainConfig::parse(&text).unwrap();
        tilt_train::train(&cfg, &d.join(out), Start::New, &common::device(), &mut |_| {}).unwrap();
    };
    let data = format!("[data]\nkind = \"image-folder\"\npath = \"{}\"\nsize = 8\n", root.display());
    run(
        format!(
            "steps = 60\nseed = 2\nbatch_size = 32\nlog_every = 20\ncheckpoint_every = 60\n[objective]\nkind = \"evaluator\"\n\
             [model]\nkind = \"cnn\"\nchannels = 8\n[optim]\nlr = 5e-3\n{data}"
        ),
        "evaluator",
    );
    run(
        format!(
            "steps = 20\nseed = 2\nbatch_size = 16\nlog_every = 10\ncheckpoint_every = 20\n[objective]\nkind = \"dsm\"\n\
             conditional = true\np_uncond = 0.2\n[model]\nkind = \"unet\"\nchannels = 8\ngroups = 4\ntime_dim = 16\n{data}"
        ),
        "unet",
    );
    let sweep = format!(
        "samples = 12\nclass = 1\n[models]\nbase = \"{}\"\nevaluator = \"{}\"\n[sampler]\nsteps = 4\n[guidance]\nkind = \"cfg\"\nstrengths = [0.0, 2.0]\n",
        d.join("unet").display(),
        d.join("evaluator").display()
    );
    std::fs::write(d.join("sweep.toml"), sweep).unwrap();
    let out = d.join("sweep");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tilt"))
        .args(["sample", "--config", d.join("sweep.toml").to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("0 top left, 1 top-right"), "the label map is shown: {stderr}");
    for f in ["grid.png", "frechet.png", "curve.png", "samples/w2/top-right_0.png", "samples/w0/top-right_11.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    // The evaluator's numbers recomputed from the samples written beside them.
    let (evaluator, _) = tilt_train::load_evaluator(&d.join("evaluator"), &common::device()).unwrap();
    for (r, w) in summary["records"].as_array().unwrap().iter().zip(["0", "2"]) {
        let e = &r["evaluator"];
        let bytes = std::fs::read(out.join(format!("samples_w{w}.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let x: Vec<f32> = st
            .tensor("samples")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let logits = evaluator.forward(tilt_core::tensor_ext::matrix(&x, 12, 192, &common::device()));
        let logp = tilt_core::tensor_ext::to_vec(burn::tensor::activation::log_softmax(logits, 1));
        let inv = (0..12).map(|i| (-(logp[2 * i + 1] as f64)).exp()).sum::<f64>() / 12.0;
        let acc = (0..12).filter(|&i| logp[2 * i + 1] > logp[2 * i]).count() as f64 / 12.0;
        assert!((e["inv_class_prob"]["mean"].as_f64().unwrap() - inv).abs() <= 1e-6 * inv, "{e} vs {inv}");
        assert_eq!(e["accuracy"].as_f64().unwrap(), acc, "{e}");
        let (fd, floor) = (e["frechet"].as_f64().unwrap(), e["frechet_floor"].as_f64().unwrap());
        assert!(fd.is_finite() && floor.is_finite() && floor > 0.0, "{e}");
        // 40 real images of the class: 12 (the sample count) held back for the floor, 28 as the reference.
        assert_eq!((e["floor_images"].as_u64(), e["reference_images"].as_u64()), (Some(12), Some(28)), "{e}");
    }
}

/// Latent pairs: an autoencoder on the folder, a class-conditional MLP on its codes (`data.kind = "latent"`), and
/// `tilt sample` with `models.autoencoder` decoding the guided codes into pictures the evaluator measures.
#[test]
fn latent_pairs_sample_decoded_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let root = d.join("quadrants");
    quadrant_folder(&root, 30);
    let run = |text: String, out: &str| {
        let cfg = TrainConfig::parse(&text).unwrap();
        tilt_train::train(&cfg, &d.join(out), Start::New, &common::device(), &mut |_| {}).unwrap();
    };
    let images = format!("[data]\nkind = \"image-folder\"\npath = \"{}\"\nsize = 8\n", root.display());
    let head = "seed = 2\nbatch_size = 32\nlog_every = 20\ncheckpoint_every = 40\nsteps = 40\n";
    run(format!("{head}[objective]\nkind = \"autoencoder\"\nlatent = 4\n[model]\nhidden = 32\n{images}"), "ae");
    run(
        format!("{head}[objective]\nkind = \"evaluator\"\n[model]\nkind = \"cnn\"\nchannels = 8\n{images}"),
        "evaluator",
    );
    let latent = format!("[data]\nkind = \"latent\"\nautoencoder = \"{}\"\n", d.join("ae").display());
    run(
        format!(
            "{head}standardize = true\n[objective]\nkind = \"dsm\"\nconditional = true\n[model]\nhidden = 32\n{latent}"
        ),
        "latent",
    );
    let state = tilt_train::load::run_state(&d.join("latent")).unwrap();
    assert_eq!((state.dim, state.num_classes), (4, 2));
    let sweep = |autoencoder: &Path| {
        format!(
            "samples = 10\nclass = 0\n[models]\nbase = \"{}\"\nautoencoder = \"{}\"\nevaluator = \"{}\"\n[sampler]\nsteps = 6\n[guidance]\nkind = \"cfg\"\nstrengths = [0.0, 3.0]\n",
            d.join("latent").display(),
            autoencoder.display(),
            d.join("evaluator").display()
        )
    };
    std::fs::write(d.join("sweep.toml"), sweep(&d.join("ae"))).unwrap();
    let out = d.join("sweep");
    let sample = |out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tilt"))
            .args(["sample", "--config", d.join("sweep.toml").to_str().unwrap(), "--out", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = sample(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["grid.png", "samples_w3_grid.png", "samples/w3/class0_9.png", "samples_w0.csv"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let bytes = std::fs::read(out.join("samples_w3.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("samples").unwrap().shape(), &[10, 3, 8, 8], "decoded pictures, not codes");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["records"][1]["evaluator"]["frechet"].as_f64().unwrap().is_finite());
    assert_eq!(summary["records"][1]["sample_mean"].as_array().unwrap().len(), 4, "the record describes the codes");
    // An autoencoder of another code width is refused by name before anything is written.
    run(format!("{head}[objective]\nkind = \"autoencoder\"\nlatent = 6\n[model]\nhidden = 32\n{images}"), "ae6");
    std::fs::write(d.join("sweep.toml"), sweep(&d.join("ae6"))).unwrap();
    let o = sample(&d.join("refused"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("models.autoencoder"), "{stderr}");
    assert!(!d.join("refused").exists());
}

/// The prefetch decodes exactly the batch a step draws first from its stream (indices, then flips), serves it
/// when asked, and a request it did not predict is decoded afresh: the same rows either way.
#[test]
fn the_prefetched_batch_is_the_drawn_one() {
    use rand::Rng;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    make_folder(&root, 5);
    let data = config(&root, 4, "").data.generate(0, 0).unwrap();
    let folder = data.streamed.as_ref().unwrap().folder.clone();
    let draw = |step: usize| {
        let mut rng = tilt_train::trainer::step_rng(3, step);
        let idx: Vec<usize> = (0..4).map(|_| rng.random_range(0..data.len())).collect();
        let rows = data.rows(&idx, &mut rng).unwrap();
        (idx, rows, rng.random::<u64>())
    };
    let (_, fresh, after_fresh) = draw(7);
    data.prefetch(4, tilt_train::trainer::step_rng(3, 7));
    let (_, served, after_served) = draw(7);
    assert_eq!(folder.prefetch_hits(), 1, "the prefetch of step 7 was not the batch step 7 drew");
    assert_eq!((fresh, after_fresh), (served, after_served), "prefetched rows or the stream after them differ");
    data.prefetch(4, tilt_train::trainer::step_rng(3, 8));
    let (_, other, _) = draw(9);
    assert_eq!(folder.prefetch_hits(), 1, "a mismatched prefetch was served");
    assert_eq!(other, draw(9).1);
}
