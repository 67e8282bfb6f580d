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

/// Relative max-abs error of `got` against `want`.
fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let err = got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    err / scale
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
        let got = unet.time_proj.forward(timesteps.clone()).into_data().convert::<f32>().into_vec::<f32>().unwrap();
        let err = relative_error(&got, &reference.f32("act.time_proj").0);
        assert!(err <= 1e-6, "{}: time_proj off by {err:e}", dir.display());
    }
    let out = unet.forward(x, timesteps, labels).into_data().convert::<f32>().into_vec::<f32>().unwrap();
    let err = relative_error(&out, &reference.f32("output").0);
    assert!(err <= TOLERANCE, "{}: output off by {err:e} relative (tolerance {TOLERANCE:e})", dir.display());
    // The f64 forward of the same weights: tilt is as close to it as diffusers' f32 forward is, give or take.
    let err64 = relative_error(&out, &reference.f32("output_f64").0);
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
