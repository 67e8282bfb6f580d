//! diffusers models through the binary: `tilt forward` against diffusers' outputs, and `tilt sample` guiding a
//! loaded class-conditional model, with every refusal naming its field.

mod binary;
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

fn own(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers").join(name)
}

/// Name, dtype, shape and bytes of each tensor of a file.
type Tensors = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;
/// A bad input: what it is, how it is made from a good one, the tensor the error must name.
type Case = (&'static str, Box<dyn Fn(&mut Tensors)>, &'static str);

fn tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect()
}

fn write(path: &Path, tensors: &Tensors) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, dt, s, b)| (k.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// The reference inputs of a fixture under `tilt forward`'s names.
fn forward_input(fixture: &Path, dir: &Path) -> PathBuf {
    let reference = tensors(&fixture.join("reference.safetensors"));
    let rename = |from: &str, to: &str| {
        reference.iter().find(|t| t.0 == from).map(|t| (to.to_string(), t.1, t.2.clone(), t.3.clone()))
    };
    let input: Vec<_> =
        [rename("x", "sample"), rename("timesteps", "timestep"), rename("class_labels", "class_labels")]
            .into_iter()
            .flatten()
            .collect();
    let path = dir.join("in.safetensors");
    write(&path, &input);
    path
}

#[test]
fn forward_writes_diffusers_output() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny-fashion-classcond-pipeline", "tiny-default-multihead-v"] {
        let fixture = own(name);
        let input = forward_input(&fixture, tmp.path());
        let out = tmp.path().join(format!("{name}.safetensors"));
        let args = ["forward", "--model", fixture.to_str().unwrap(), "--input", input.to_str().unwrap()];
        let r = binary::tilt_within(LIMIT, &[&args[..], &["--out", out.to_str().unwrap(), "--repeat", "2"]].concat());
        assert!(r.ok, "{}", r.stderr);
        let got = tensors(&out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "sample");
        let want = tensors(&fixture.join("reference.safetensors"));
        let want = want.iter().find(|t| t.0 == "output").unwrap();
        assert_eq!(got[0].2, want.2);
        let (a, b) = (f32s(&got[0].3), f32s(&want.3));
        let err = common::relative_error(&a, &b);
        assert!(err <= 1e-5, "{name}: {err:e}");
    }
}

#[test]
fn forward_refuses_bad_inputs_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = own("tiny-fashion-classcond-pipeline");
    let mut good = tensors(&forward_input(&fixture, tmp.path()));
    let order = |name: &str| ["sample", "timestep", "class_labels"].iter().position(|n| *n == name);
    good.sort_by_key(|t| order(&t.0));
    let out = tmp.path().join("out.safetensors");
    let cases: Vec<Case> = vec![
        ("huge timestep", Box::new(|t| t[1].3[..4].copy_from_slice(&1e30f32.to_le_bytes())), "timestep"),
        ("NaN timestep", Box::new(|t| t[1].3[..4].copy_from_slice(&f32::NAN.to_le_bytes())), "timestep"),
        ("negative timestep", Box::new(|t| t[1].3[..4].copy_from_slice(&(-1f32).to_le_bytes())), "timestep"),
        ("NaN sample", Box::new(|t| t[0].3[8..12].copy_from_slice(&f32::NAN.to_le_bytes())), "sample"),
        ("label past the table", Box::new(|t| t[2].3[..8].copy_from_slice(&11i64.to_le_bytes())), "class_labels"),
        ("no labels", Box::new(|t| t.truncate(2)), "class_labels"),
        ("wrong channels", Box::new(|t| t[0].2 = vec![4, 28, 28, 1]), "sample"),
        (
            "timestep count",
            Box::new(|t| {
                t[1].2 = vec![2];
                t[1].3.truncate(8)
            }),
            "timestep",
        ),
        (
            "no sample",
            Box::new(|t| {
                t.remove(0);
            }),
            "sample",
        ),
    ];
    for (what, edit, field) in cases {
        let mut t = good.clone();
        edit(&mut t);
        let input = tmp.path().join("bad.safetensors");
        write(&input, &t);
        let r = binary::tilt_within(
            LIMIT,
            &[
                "forward",
                "--model",
                fixture.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(!r.ok, "{what}: accepted");
        assert!(r.stderr.contains(field), "{what}: {}", r.stderr);
        assert!(!out.exists(), "{what}: wrote an output");
    }
}

fn sample_config(dir: &Path, models: &str, guidance: &str) -> PathBuf {
    let path = dir.join("sample.toml");
    std::fs::write(
        &path,
        format!(
            "samples = 4\nclass = 3\n[models]\n{models}\n[sampler]\nkind = \"ddim\"\nsteps = 6\n[guidance]\n{guidance}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn sample_guides_a_loaded_class_conditional_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = own("tiny-fashion-classcond-pipeline");
    let cfg = sample_config(
        tmp.path(),
        &format!("base = {:?}\nnull_label = 10", model),
        "kind = \"cfg\"\nstrengths = [0.0, 3.0]",
    );
    let out = tmp.path().join("out");
    let r = binary::tilt_within(LIMIT, &["sample", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    for f in ["samples_w0_grid.png", "samples_w3_grid.png", "samples_w0.safetensors", "samples/w3/class3_0.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let raw = |w: &str| {
        let t = tensors(&out.join(format!("samples_w{w}.safetensors")));
        assert_eq!(t[0].2, vec![4, 1, 28, 28]);
        f32s(&t[0].3)
    };
    let (a, b) = (raw("0"), raw("3"));
    assert!(a.iter().chain(&b).all(|v| v.is_finite()));
    // The same noise under a guidance term that is not zero: CFG reaches the loaded model's labels.
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3), "w = 3 drew the same samples as w = 0");
}

#[test]
fn sample_refusals_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let model = own("tiny-fashion-classcond-pipeline");
    let cases = [
        (format!("base = {:?}", model), "null_label"),
        (format!("base = {:?}\nnull_label = 3", model), "null_label"),
        (format!("base = {:?}\nnull_label = 10\nprediction = \"epsilon\"", model), "models.prediction"),
    ];
    for (models, field) in cases {
        let cfg = sample_config(tmp.path(), &models, "kind = \"cfg\"\nstrengths = [1.0]");
        let out = tmp.path().join("out");
        let r =
            binary::tilt_within(LIMIT, &["sample", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(!r.ok && r.stderr.contains(field), "{models}: {}", r.stderr);
        assert!(!out.exists(), "{models}: left an output folder");
    }
    // A bare model folder (no scheduler config) needs [schedule].
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(model.join("unet").join(f), bare.join(f)).unwrap();
    }
    let cfg =
        sample_config(tmp.path(), &format!("base = {:?}\nnull_label = 10", bare), "kind = \"cfg\"\nstrengths = [1.0]");
    let r = binary::tilt_within(
        LIMIT,
        &["sample", "--config", cfg.to_str().unwrap(), "--out", tmp.path().join("o2").to_str().unwrap()],
    );
    assert!(!r.ok && r.stderr.contains("schedule"), "{}", r.stderr);
    let text = std::fs::read_to_string(&cfg).unwrap()
        + "[schedule]\nkind = \"discrete\"\nbeta_schedule = \"scaled-linear\"\nbeta_start = 0.00085\nbeta_end = 0.012\n";
    std::fs::write(&cfg, text.replace("null_label = 10", "null_label = 10\nprediction = \"sample\"")).unwrap();
    let r = binary::tilt_within(
        LIMIT,
        &["sample", "--config", cfg.to_str().unwrap(), "--out", tmp.path().join("o3").to_str().unwrap()],
    );
    assert!(r.ok, "{}", r.stderr);
}

/// A tiny class-conditional U-Net trained on the repository's Fashion-MNIST test split on a discrete
/// scaled-linear table with v-prediction, exported with `tilt export --format diffusers`. Returns the run, the
/// export and a `tilt forward` input.
fn trained_and_exported(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/data/fashion-mnist");
    let config = dir.join("train.toml");
    std::fs::write(
        &config,
        format!(
            "steps = 6\nseed = 1\nbatch_size = 8\nlog_every = 3\ncheckpoint_every = 6\n\
             [schedule]\nkind = \"discrete\"\nbeta_schedule = \"scaled-linear\"\nbeta_start = 0.00085\nbeta_end = 0.012\n\
             [objective]\nkind = \"dsm\"\nconditional = true\np_uncond = 0.2\n\
             [model]\nkind = \"unet\"\nchannels = 8\ngroups = 4\ntime_dim = 32\nattention = true\nprediction = \"v-prediction\"\n\
             [data]\nkind = \"idx\"\nimages = \"{}\"\nlabels = \"{}\"\nlimit = 100\n",
            data.join("t10k-images-idx3-ubyte.gz").display(),
            data.join("t10k-labels-idx1-ubyte.gz").display()
        ),
    )
    .unwrap();
    let (run, export) = (dir.join("run"), dir.join("export"));
    let r =
        binary::tilt_within(LIMIT, &["train", "--config", config.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    let args =
        ["export", "--checkpoint", run.to_str().unwrap(), "--out", export.to_str().unwrap(), "--format", "diffusers"];
    let r = binary::tilt_within(LIMIT, &args);
    assert!(r.ok, "{}", r.stderr);
    // Inputs: 4 images, timesteps 0, 10, 123.456 (fractional) and 999, labels 0, 3, 9 and the null label 10.
    let sample: Vec<u8> = (0..4 * 784).flat_map(|i| (((i * 37) % 101) as f32 / 50.0 - 1.0).to_le_bytes()).collect();
    let t: Vec<u8> = [0.0f32, 10.0, 123.456, 999.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let l: Vec<u8> = [0i64, 3, 9, 10].iter().flat_map(|v| v.to_le_bytes()).collect();
    let input = dir.join("in.safetensors");
    write(
        &input,
        &vec![
            ("sample".into(), safetensors::Dtype::F32, vec![4, 1, 28, 28], sample),
            ("timestep".into(), safetensors::Dtype::F32, vec![4], t),
            ("class_labels".into(), safetensors::Dtype::I64, vec![4], l),
        ],
    );
    (run, export, input)
}

fn forward(model: &Path, input: &Path, out: &Path) -> Vec<f32> {
    let args = [
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let r = binary::tilt_within(LIMIT, &args);
    assert!(r.ok, "{}", r.stderr);
    f32s(&tensors(out)[0].3)
}

#[test]
fn export_writes_a_diffusers_folder_tilt_reads_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, export, input) = trained_and_exported(tmp.path());
    let a = forward(&run, &input, &tmp.path().join("run_out.safetensors"));
    let b = forward(&export, &input, &tmp.path().join("export_out.safetensors"));
    assert!(a.iter().any(|v| v.abs() > 1e-4), "the trained network's output is still zero");
    assert_eq!(a, b, "the exported folder computes other numbers than the run");
    // config.json is diffusers' (every field tilt writes is one it reads), the scheduler the run's.
    let config = std::fs::read_to_string(export.join("config.json")).unwrap();
    let parsed = tilt_models::diffusers::UNet2DConfig::from_json(&config).unwrap();
    assert_eq!(
        (parsed.block_out_channels.clone(), parsed.num_class_embeds, parsed.add_attention),
        (vec![8, 16], Some(11), true)
    );
    let scheduler = std::fs::read_to_string(export.join("scheduler/scheduler_config.json")).unwrap();
    assert!(scheduler.contains("\"scaled_linear\"") && scheduler.contains("\"v_prediction\""), "{scheduler}");
    // Refusals: again without --force, into a folder with other files, an MLP run.
    let args =
        ["export", "--checkpoint", run.to_str().unwrap(), "--out", export.to_str().unwrap(), "--format", "diffusers"];
    let r = binary::tilt_within(LIMIT, &args);
    assert!(!r.ok && r.stderr.contains("--force"), "{}", r.stderr);
    let r = binary::tilt_within(LIMIT, &[&args[..], &["--force"]].concat());
    assert!(r.ok, "{}", r.stderr);
    std::fs::write(export.join("notes.txt"), "mine").unwrap();
    let r = binary::tilt_within(LIMIT, &[&args[..], &["--force"]].concat());
    assert!(!r.ok && r.stderr.contains("notes.txt"), "{}", r.stderr);
    // The exported folder guides like the run: `tilt sample` with CFG on it, null label 10.
    std::fs::remove_file(export.join("notes.txt")).unwrap();
    let cfg = sample_config(
        tmp.path(),
        &format!("base = {:?}\nnull_label = 10", export),
        "kind = \"cfg\"\nstrengths = [2.0]",
    );
    let out = tmp.path().join("sampled");
    let r = binary::tilt_within(LIMIT, &["sample", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
}

/// diffusers itself loads the export with the same outputs. Needs PyTorch and diffusers (a virtualenv made as
/// `scripts/make_diffusers_fixtures.py` says; its python in $TILT_TORCH_PYTHON, default
/// ~/.cache/tilt-torch/bin/python): `cargo test --test diffusers_cli -- --ignored`.
#[test]
#[ignore = "needs PyTorch and diffusers: cargo test --test diffusers_cli -- --ignored"]
fn diffusers_loads_the_export_with_the_same_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, export, input) = trained_and_exported(tmp.path());
    let ours = forward(&run, &input, &tmp.path().join("run_out.safetensors"));
    let python = std::env::var("TILT_TORCH_PYTHON")
        .unwrap_or_else(|_| format!("{}/.cache/tilt-torch/bin/python", std::env::var("HOME").unwrap()));
    let theirs_path = tmp.path().join("diffusers_out.safetensors");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_diffusers_fixtures.py");
    let o = std::process::Command::new(python)
        .args([script.to_str().unwrap(), "--forward", export.to_str().unwrap(), "--input", input.to_str().unwrap()])
        .args(["--output", theirs_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs = f32s(&tensors(&theirs_path)[0].3);
    let err = common::relative_error(&ours, &theirs);
    assert!(err <= 1e-5, "tilt vs diffusers on the export: {err:e} relative");
}

/// Image networks sample in chunks sized by their activations unless `sampler.batch` says otherwise; points keep
/// chunks of 100,000.
#[test]
fn image_chains_run_in_chunks_that_fit_memory() {
    use tilt::config::{SamplerConfig, image_chunk_rows};
    assert_eq!((image_chunk_rows(32, 32), image_chunk_rows(28, 28), image_chunk_rows(4096, 4096)), (158, 207, 1));
    let mut s = SamplerConfig::default();
    assert_eq!((s.chunk_rows(None), s.chunk_rows(Some([3, 32, 32]))), (100_000, 158));
    s.batch = Some(7);
    assert_eq!(s.chunk_rows(Some([3, 32, 32])), 7);
}

/// A batch larger than one chunk (207 images of 28 x 28) runs in chunks with the same numbers: the reference images
/// sit across the chunk boundary.
#[test]
fn forward_runs_large_batches_in_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = own("tiny-fashion-classcond-pipeline");
    let reference = tensors(&fixture.join("reference.safetensors"));
    let get = |name: &str| reference.iter().find(|t| t.0 == name).unwrap().3.clone();
    let (x, t, l) = (get("x"), get("timesteps"), get("class_labels"));
    let n = 210;
    let at = 205; // rows 205..209: two in the first chunk, two in the second
    let mut sample = vec![0u8; n * 784 * 4];
    sample[at * 784 * 4..(at + 4) * 784 * 4].copy_from_slice(&x);
    let mut timestep: Vec<u8> = (0..n).flat_map(|_| 500f32.to_le_bytes()).collect();
    timestep[at * 4..(at + 4) * 4].copy_from_slice(&t);
    let mut labels = vec![0u8; n * 8];
    labels[at * 8..(at + 4) * 8].copy_from_slice(&l);
    let input = tmp.path().join("big.safetensors");
    write(
        &input,
        &vec![
            ("sample".into(), safetensors::Dtype::F32, vec![n, 1, 28, 28], sample),
            ("timestep".into(), safetensors::Dtype::F32, vec![n], timestep),
            ("class_labels".into(), safetensors::Dtype::I64, vec![n], labels),
        ],
    );
    let out = tmp.path().join("out.safetensors");
    let args = ["forward", "--model", fixture.to_str().unwrap(), "--input", input.to_str().unwrap()];
    let r = binary::tilt_within(LIMIT, &[&args[..], &["--out", out.to_str().unwrap()]].concat());
    assert!(r.ok, "{}", r.stderr);
    let got = f32s(&tensors(&out)[0].3);
    let want = f32s(&get("output"));
    let err = common::relative_error(&got[at * 784..(at + 4) * 784], &want);
    assert!(err <= 1e-5, "across the chunk boundary: {err:e}");
}

#[test]
fn image_guidance_terms_run_on_a_loaded_model() {
    // FDG with equal level weights draws what CFG draws (same noise), other weights do not; CFG++ runs on DDIM.
    let tmp = tempfile::tempdir().unwrap();
    let model = own("tiny-fashion-classcond-pipeline");
    let models = format!("base = {:?}\nnull_label = 10", model);
    let run = |name: &str, guidance: &str| -> Vec<f32> {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let cfg = sample_config(&dir, &models, guidance);
        let out = dir.join("out");
        let r =
            binary::tilt_within(LIMIT, &["sample", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(r.ok, "{guidance}: {}", r.stderr);
        f32s(&tensors(&out.join("samples_w2.safetensors"))[0].3)
    };
    let cfg = run("cfg", "strengths = [2.0]\n[[guidance.terms]]\nkind = \"cfg\"\nsweep = true");
    let fdg_equal =
        run("fdg1", "strengths = [2.0]\n[[guidance.terms]]\nkind = \"fdg\"\nlevel_weights = [1.0, 1.0]\nsweep = true");
    let fdg = run(
        "fdg2",
        "strengths = [2.0]\n[[guidance.terms]]\nkind = \"fdg\"\nlevel_weights = [2.0, 0.25]\nparallel_weights = [0.5, 1.0]\nsweep = true",
    );
    let plus = run("cfgpp", "kind = \"cfg++\"\nstrengths = [2.0]");
    assert!(
        common::relative_error(&fdg_equal, &cfg) < 1e-4,
        "FDG at equal weights vs CFG: {}",
        common::relative_error(&fdg_equal, &cfg)
    );
    assert!(common::relative_error(&fdg, &cfg) > 1e-2, "FDG with other weights drew CFG's samples");
    assert!(plus.iter().all(|v| v.is_finite()) && common::relative_error(&plus, &cfg) > 1e-2);
    // Levels the image cannot hold are refused naming the field.
    let dir = tmp.path().join("bad");
    std::fs::create_dir(&dir).unwrap();
    let cfg = sample_config(
        &dir,
        &models,
        "strengths = [2.0]\n[[guidance.terms]]\nkind = \"fdg\"\nlevel_weights = [1.0, 1.0, 1.0, 1.0]\nsweep = true",
    );
    let r = binary::tilt_within(
        LIMIT,
        &["sample", "--config", cfg.to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()],
    );
    assert!(!r.ok && r.stderr.contains("guidance.terms[0].level_weights"), "{}", r.stderr);
    let bad_layer = sample_config(
        &dir,
        &models,
        "strengths = [2.0]\n[[guidance.terms]]\nkind = \"pag\"\nlayers = [\"down.block_0\"]\nsweep = true",
    );
    let r = binary::tilt_within(
        LIMIT,
        &["sample", "--config", bad_layer.to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()],
    );
    assert!(
        !r.ok && r.stderr.contains("guidance.terms[0].layers") && r.stderr.contains("up.block_1.attentions_0"),
        "{}",
        r.stderr
    );
    // A network without attention: refused by name.
    let no_attention = own("tiny-ddpm-noattn-learned-variance");
    std::fs::write(
        dir.join("noattn.toml"),
        format!("samples = 2\n[models]\nbase = {no_attention:?}\n[sampler]\nkind = \"ddim\"\nsteps = 4\n[guidance]\nstrengths = [1.0]\n[[guidance.terms]]\nkind = \"slg\"\nsweep = true\n"),
    )
    .unwrap();
    let r = binary::tilt_within(
        LIMIT,
        &["sample", "--config", dir.join("noattn.toml").to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()],
    );
    assert!(
        !r.ok && r.stderr.contains("guidance.terms[0].kind: \"slg\"") && r.stderr.contains("no attention"),
        "{}",
        r.stderr
    );
}
