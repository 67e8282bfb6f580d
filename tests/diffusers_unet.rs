//! diffusers' `UNet2DModel` loaded into Burn against diffusers' own forward: on the fixtures the project generates
//! (`tests/fixtures/diffusers/`, made by `scripts/make_diffusers_fixtures.py`) and on the two made independently
//! (`../shared/fixtures/diffusers-unet/`). Tolerance: max |tilt - diffusers| / max |diffusers| <= 1e-5; diffusers'
//! f32 forward itself differs from the same weights in f64 by 1-2e-6 relative, the floor an f32 port can reach.

mod common;

use burn::prelude::*;
use std::path::{Path, PathBuf};
use tilt_models::diffusers::{DiffusersFiles, load_unet, read_config};

const TOLERANCE: f64 = 1e-5;

fn own(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers").join(name)
}

fn shared(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/diffusers-unet").join(name)
}

struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn open(dir: &Path) -> Self {
        let path = dir.join("reference.safetensors");
        Self { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }

    fn has(&self, name: &str) -> bool {
        safetensors::SafeTensors::deserialize(&self.bytes).unwrap().tensor(name).is_ok()
    }

    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let data = t.data();
        let values = match t.dtype() {
            safetensors::Dtype::F32 => {
                data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
            }
            safetensors::Dtype::I64 => {
                data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32).collect()
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        (values, t.shape().to_vec())
    }
}

/// Loads the model in `dir`, runs it on the reference inputs and compares the output and, block by block, the
/// intermediate activations the reference carries (so a mismatch names the first block that differs).
fn check(dir: &Path) {
    let device = common::device();
    let files = DiffusersFiles::find(dir).unwrap();
    let config = read_config(&files.config).unwrap();
    let unet = load_unet(&config, &files.weights, &device).unwrap();
    let reference = Reference::open(dir);
    let (x, shape) = reference.f32("x");
    let x = Tensor::<1>::from_data(TensorData::new(x, [shape.iter().product::<usize>()]), &device)
        .reshape([shape[0], shape[1], shape[2], shape[3]]);
    let (t, _) = reference.f32("timesteps");
    let n = t.len();
    let timesteps = Tensor::<1>::from_data(TensorData::new(t, [n]), &device);
    let labels = reference.has("class_labels").then(|| {
        let (l, _) = reference.f32("class_labels");
        Tensor::<1, Int>::from_data(TensorData::new(l.iter().map(|v| *v as i64).collect::<Vec<_>>(), [n]), &device)
    });
    if reference.has("act.time_proj") {
        let got = unet.time_proj.forward(timesteps.clone()).into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        let err = common::relative_error(&got, &reference.f32("act.time_proj").0);
        assert!(err <= 1e-6, "{}: time_proj off by {err:e}", dir.display());
    }
    let out = unet.forward(x, timesteps, labels).into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let err = common::relative_error(&out, &reference.f32("output").0);
    assert!(err <= TOLERANCE, "{}: output off by {err:e} relative (tolerance {TOLERANCE:e})", dir.display());
    // The f64 forward of the same weights: tilt is as close to it as diffusers' f32 forward is, give or take.
    let err64 = common::relative_error(&out, &reference.f32("output_f64").0);
    assert!(err64 <= TOLERANCE, "{}: output off the f64 forward by {err64:e}", dir.display());
    eprintln!("{}: {err:.2e} from diffusers' f32 forward, {err64:.2e} from its f64 forward", dir.display());
}

#[test]
fn shared_ddpm_like_attention_matches_diffusers() {
    check(&shared("tiny-ddpm-like-attn"));
}

#[test]
fn shared_class_conditional_scale_shift_matches_diffusers() {
    check(&shared("tiny-classcond-scaleshift"));
}

#[test]
fn own_default_multihead_v_prediction_matches_diffusers() {
    check(&own("tiny-default-multihead-v"));
}

#[test]
fn own_half_precision_learned_variance_centred_matches_diffusers() {
    check(&own("tiny-ddpm-noattn-learned-variance"));
}

#[test]
fn own_pipeline_folder_with_legacy_attention_names_matches_diffusers() {
    check(&own("tiny-fashion-classcond-pipeline"));
}

/// The `NoiseNet` a sampler sees: tilt's `t = (k + 1) / N` reaches the network as timestep `k`, rows are images,
/// and a learned variance's second half is dropped.
#[test]
fn noise_net_feeds_the_training_timestep_and_drops_the_learned_variance() {
    use tilt_models::NoiseNet;
    use tilt_models::diffusers::{DiffusersNet, read_scheduler};
    let dir = own("tiny-ddpm-noattn-learned-variance");
    let device = common::device();
    let files = DiffusersFiles::find(&dir).unwrap();
    let config = read_config(&files.config).unwrap();
    let scheduler = read_scheduler(files.scheduler.as_ref().unwrap()).unwrap();
    let steps = scheduler.schedule.timestep(1.0).unwrap() as usize + 1;
    assert_eq!(steps, 1000);
    let map = tilt_models::diffusers::TimestepMap::for_schedule(scheduler.schedule);
    let net = DiffusersNet::new(load_unet(&config, &files.weights, &device).unwrap(), &config, map, None).unwrap();
    let reference = Reference::open(&dir);
    let (x, shape) = reference.f32("x");
    let (k, _) = reference.f32("timesteps");
    let n = shape[0];
    let d = shape[1..].iter().product::<usize>();
    let t: Vec<f32> = k.iter().map(|k| ((*k as f64 + 1.0) / steps as f64) as f32).collect();
    let out = net.predict_noise(
        Tensor::<1>::from_data(TensorData::new(x, [n * d]), &device).reshape([n, d]),
        Tensor::<1>::from_data(TensorData::new(t, [n]), &device),
        None,
    );
    let got = out.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let (full, _) = reference.f32("output");
    // The first `c` of `2c` output channels of each image.
    let want: Vec<f32> = full.chunks_exact(2 * d).flat_map(|img| img[..d].to_vec()).collect();
    // (k + 1)/N rounded to f32 and back moves k by up to 1e-4: the embedding's slope is at most max freq = 1.
    let err = common::relative_error(&got, &want);
    assert!(err <= 1e-4, "NoiseNet output off by {err:e}");
}

/// A copy of a fixture folder to edit.
fn copy_fixture(dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
    }
    tmp
}

fn load_error(dir: &Path) -> String {
    let device = common::device();
    let result = DiffusersFiles::find(dir).and_then(|files| {
        let config = read_config(&files.config)?;
        load_unet(&config, &files.weights, &device)
    });
    format!("{:#}", result.expect_err("the load must fail"))
}

/// Rewrites the weights with `edit` applied to the list of (name, dtype, shape, bytes).
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> =
        st.tensors().into_iter().map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, dt, s, b)| (k.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn a_tensor_without_a_place_is_refused_by_name() {
    let tmp = copy_fixture(&shared("tiny-ddpm-like-attn"));
    edit_weights(tmp.path(), |t| t.push(("extra.weight".into(), safetensors::Dtype::F32, vec![1], vec![0; 4])));
    let e = load_error(tmp.path());
    assert!(e.contains("extra.weight") && e.contains("no place"), "{e}");
}

#[test]
fn a_missing_tensor_is_refused_by_name() {
    let tmp = copy_fixture(&shared("tiny-ddpm-like-attn"));
    edit_weights(tmp.path(), |t| t.retain(|(k, ..)| k != "mid_block.attentions.0.to_q.weight"));
    let e = load_error(tmp.path());
    assert!(e.contains("mid_block.attentions.0.to_q.weight") && e.contains("missing"), "{e}");
}

#[test]
fn a_mis_shaped_tensor_is_refused_by_name() {
    let tmp = copy_fixture(&shared("tiny-ddpm-like-attn"));
    edit_weights(tmp.path(), |t| {
        let entry = t.iter_mut().find(|(k, ..)| k == "conv_in.bias").unwrap();
        entry.2 = vec![8];
        entry.3.truncate(32);
    });
    let e = load_error(tmp.path());
    assert!(e.contains("conv_in.bias"), "{e}");
}

#[test]
fn a_non_finite_weight_is_refused_by_name() {
    let tmp = copy_fixture(&shared("tiny-ddpm-like-attn"));
    edit_weights(tmp.path(), |t| {
        let entry = t.iter_mut().find(|(k, ..)| k == "up_blocks.1.resnets.2.conv2.weight").unwrap();
        entry.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let e = load_error(tmp.path());
    assert!(e.contains("up_blocks.1.resnets.2.conv2.weight") && e.contains("NaN"), "{e}");
}

#[test]
fn a_config_the_weights_do_not_fit_is_refused() {
    let tmp = copy_fixture(&shared("tiny-ddpm-like-attn"));
    let path = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("\"layers_per_block\": 2", "\"layers_per_block\": 1");
    std::fs::write(&path, text).unwrap();
    let e = load_error(tmp.path());
    assert!(e.contains("diffusion_pytorch_model.safetensors") && e.contains("up_blocks"), "{e}");
}

#[test]
fn unsupported_config_values_are_refused_naming_the_field() {
    use tilt_models::diffusers::UNet2DConfig;
    let base = std::fs::read_to_string(shared("tiny-ddpm-like-attn").join("config.json")).unwrap();
    let cases = [
        (
            "\"DownBlock2D\",\n    \"AttnDownBlock2D\"",
            "\"DownBlock2D\",\n    \"CrossAttnDownBlock2D\"",
            "down_block_types[1]",
        ),
        ("\"time_embedding_type\": \"positional\"", "\"time_embedding_type\": \"fourier\"", "time_embedding_type"),
        ("\"act_fn\": \"silu\"", "\"act_fn\": \"gelu\"", "act_fn"),
        ("\"norm_eps\": 1e-06", "\"norm_eps\": 1e300", "norm_eps"),
        ("\"norm_eps\": 1e-06", "\"norm_eps\": -1e-300", "norm_eps"),
        ("\"norm_num_groups\": 8", "\"norm_num_groups\": 7", "norm_num_groups"),
        ("\"sample_size\": 32", "\"sample_size\": 30", "sample_size"),
        ("\"downsample_padding\": 0", "\"downsample_padding\": 2", "downsample_padding"),
        (
            "\"resnet_time_scale_shift\": \"default\"",
            "\"resnet_time_scale_shift\": \"spatial\"",
            "resnet_time_scale_shift",
        ),
        ("\"upsample_type\": \"conv\"", "\"upsample_type\": \"resnet\"", "upsample_type"),
        ("\"class_embed_type\": null", "\"class_embed_type\": \"timestep\"", "class_embed_type"),
        ("\"mid_block_type\": \"UNetMidBlock2D\"", "\"mid_block_type\": null", "mid_block_type"),
        ("\"_class_name\": \"UNet2DModel\"", "\"_class_name\": \"UNet2DConditionModel\"", "_class_name"),
        ("\"act_fn\": \"silu\"", "\"act_fn\": \"silu\", \"cross_attention_dim\": 768", "cross_attention_dim"),
        ("\"block_out_channels\": [\n    16,", "\"block_out_channels\": [\n    15,", "block_out_channels"),
        ("\"out_channels\": 3", "\"out_channels\": 5", "out_channels"),
    ];
    for (from, to, field) in cases {
        assert!(base.contains(from), "the fixture has {from}");
        let e = UNet2DConfig::from_json(&base.replace(from, to)).expect_err(field);
        assert!(e.contains(field), "{field}: {e}");
    }
    assert!(UNet2DConfig::from_json("[1, 2]").is_err());
}

#[test]
fn scheduler_configs_give_the_schedule_and_prediction() {
    use tilt_core::Prediction;
    use tilt_core::schedule::{BetaSchedule, Schedule};
    use tilt_models::diffusers::SchedulerConfig;
    let c = SchedulerConfig::from_json(
        r#"{"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "beta_end": 0.012, "prediction_type": "v_prediction", "clip_sample": false, "timestep_spacing": "trailing"}"#,
    )
    .unwrap();
    assert_eq!(c.prediction, Prediction::VPrediction);
    assert_eq!(
        c.schedule,
        Schedule::Discrete {
            beta_schedule: BetaSchedule::ScaledLinear,
            beta_start: 0.00085,
            beta_end: 0.012,
            num_train_timesteps: 1000
        }
    );
    assert_eq!(SchedulerConfig::from_json("{}").unwrap().schedule, Schedule::ddpm());
    let flow =
        SchedulerConfig::from_json(r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}"#).unwrap();
    assert_eq!((flow.schedule, flow.prediction), (Schedule::RectifiedFlow { shift: 3.0 }, Prediction::Velocity));
    // What tilt writes for a model it exports reads back as the same schedule and prediction.
    for (schedule, prediction) in [
        (Schedule::ddpm(), Prediction::Epsilon),
        (c.schedule, Prediction::VPrediction),
        (Schedule::RectifiedFlow { shift: 3.0 }, Prediction::Velocity),
    ] {
        let text = SchedulerConfig::to_json(schedule, prediction).unwrap().to_string();
        assert_eq!(SchedulerConfig::from_json(&text).unwrap(), SchedulerConfig { schedule, prediction });
    }
    let cosine = SchedulerConfig::from_json(
        &SchedulerConfig::to_json(Schedule::cosine(), Prediction::Sample).unwrap().to_string(),
    )
    .unwrap();
    assert_eq!(cosine.schedule.name(), "discrete");
    assert!(SchedulerConfig::to_json(Schedule::Linear, Prediction::Epsilon).unwrap_err().contains("schedule.kind"));
    for (text, field) in [
        (r#"{"_class_name": "FlowMatchHeunDiscreteScheduler"}"#, "_class_name"),
        (r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": true}"#, "use_dynamic_shifting"),
        (r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1e300}"#, "shift"),
        (r#"{"beta_schedule": "sigmoid"}"#, "beta_schedule"),
        (r#"{"prediction_type": "flow"}"#, "prediction_type"),
        (r#"{"beta_end": 1e300}"#, "beta_end"),
        (r#"{"num_train_timesteps": 1.5}"#, "num_train_timesteps"),
        (r#"{"num_train_timesteps": 0}"#, "num_train_timesteps"),
        (r#"{"trained_betas": [0.1, 0.2]}"#, "trained_betas"),
        (r#"{"rescale_betas_zero_snr": true}"#, "rescale_betas_zero_snr"),
    ] {
        let e = SchedulerConfig::from_json(text).expect_err(field);
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[test]
fn null_labels_are_checked_against_the_model() {
    use tilt_models::diffusers::{DiffusersNet, TimestepMap};
    let device = common::device();
    let dir = shared("tiny-classcond-scaleshift");
    let files = DiffusersFiles::find(&dir).unwrap();
    let config = read_config(&files.config).unwrap();
    let unet = || load_unet(&config, &files.weights, &device).unwrap();
    assert!(DiffusersNet::new(unet(), &config, TimestepMap::discrete(1000), None).unwrap_err().contains("null_label"));
    assert!(
        DiffusersNet::new(unet(), &config, TimestepMap::discrete(1000), Some(11)).unwrap_err().contains("null_label")
    );
    assert!(DiffusersNet::new(unet(), &config, TimestepMap::discrete(1000), Some(10)).is_ok());
    let dir = shared("tiny-ddpm-like-attn");
    let files = DiffusersFiles::find(&dir).unwrap();
    let config = read_config(&files.config).unwrap();
    let unet = load_unet(&config, &files.weights, &device).unwrap();
    assert!(
        DiffusersNet::new(unet, &config, TimestepMap::discrete(1000), Some(0)).unwrap_err().contains("unconditional")
    );
}

#[test]
fn folders_that_are_not_models_are_refused_naming_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let e = format!("{:#}", DiffusersFiles::find(tmp.path()).unwrap_err());
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
    let e = format!("{:#}", DiffusersFiles::find(tmp.path()).unwrap_err());
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
    std::fs::write(tmp.path().join("diffusion_pytorch_model.bin"), "x").unwrap();
    let e = format!("{:#}", DiffusersFiles::find(tmp.path()).unwrap_err());
    assert!(e.contains("pickle"), "{e}");
    let e = format!("{:#}", DiffusersFiles::find(&tmp.path().join("nope")).unwrap_err());
    assert!(e.contains("no folder"), "{e}");
    // A truncated weights file.
    std::fs::write(tmp.path().join("diffusion_pytorch_model.safetensors"), [1u8, 2, 3]).unwrap();
    std::fs::copy(shared("tiny-ddpm-like-attn").join("config.json"), tmp.path().join("config.json")).unwrap();
    let e = load_error(tmp.path());
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
}
