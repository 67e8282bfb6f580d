//! `tilt forward`: one raw forward pass of a network on tensors from a safetensors file (diffusers'
//! `unet(sample, timestep, class_labels).sample`), to check a port against PyTorch and to time a network.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use std::path::Path;
use std::time::Instant;
use tilt_models::NoiseNet;
use tilt_models::diffusers::{DiffusersFiles, UNet2D, is_diffusers_dir, load_unet, read_config};
use tilt_train::{ModelKind, NetKind};

/// Largest timestep accepted from the file: far above any training table, far below where f32 sinusoids lose
/// every digit.
const MAX_TIMESTEP: f64 = 1e5;
/// Largest number of values in `sample` (1 GiB of f32; the batch then runs in chunks that fit memory).
const MAX_VALUES: usize = 1 << 28;

/// A network `tilt forward` can run.
enum Network {
    Diffusers(Box<UNet2D>, [usize; 3], Option<usize>),
    Tilt(Box<dyn RawForward>),
}

/// A tilt-trained network's own output for flattened rows at its own times `t in [0, 1]`.
trait RawForward {
    fn shape(&self) -> Vec<usize>;
    fn num_labels(&self) -> usize;
    fn forward(&self, x: Tensor<2>, t: Tensor<1>, labels: Option<Tensor<1, Int>>) -> Tensor<2>;
}

struct TiltNet<N: NoiseNet> {
    net: N,
    shape: Vec<usize>,
    num_labels: usize,
}

impl<N: NoiseNet> RawForward for TiltNet<N> {
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }
    fn num_labels(&self) -> usize {
        self.num_labels
    }
    fn forward(&self, x: Tensor<2>, t: Tensor<1>, labels: Option<Tensor<1, Int>>) -> Tensor<2> {
        self.net.predict_noise(x, t, labels)
    }
}

fn load(model: &Path, device: &Device) -> Result<Network> {
    if is_diffusers_dir(model) {
        let files = DiffusersFiles::find(model)?;
        let config = read_config(&files.config)?;
        let unet = load_unet(&config, &files.weights, device)?;
        let [h, w] = config.sample_size;
        return Ok(Network::Diffusers(Box::new(unet), [config.in_channels, h, w], config.num_class_embeds));
    }
    let state = tilt_train::load::run_state(model).with_context(|| {
        format!("{}: neither a diffusers model folder (config.json) nor a tilt run", model.display())
    })?;
    let null = |n: Option<usize>| n.map_or(0, |k| k + 1);
    if state.config.model.kind() == NetKind::Unet {
        // tilt's U-Net is a diffusers UNet2DModel: run it in diffusers' units, as its export would be.
        let (s, _) = tilt_train::load_unet(model, device)?;
        let (labels, image) = (s.net.unet.num_class_embeds(), s.net.image());
        return Ok(Network::Diffusers(Box::new(s.net.unet), image, labels));
    }
    let s = tilt_train::load_score(model, ModelKind::ScoreNet, device)?.score;
    let num_labels = null(s.net.null_label());
    Ok(Network::Tilt(Box::new(TiltNet { shape: s.shape.clone(), net: s.net, num_labels })))
}

/// A tensor of the input file as f64 values with its shape; integer and float dtypes accepted.
fn read(st: &safetensors::SafeTensors, file: &Path, name: &str) -> Result<Option<(Vec<f64>, Vec<usize>)>> {
    let t = match st.tensor(name) {
        Ok(t) => t,
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => return Ok(None),
        Err(e) => bail!("{}: tensor {name}: {e}", file.display()),
    };
    let d = t.data();
    let values: Vec<f64> = match t.dtype() {
        safetensors::Dtype::F32 => {
            d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect()
        }
        safetensors::Dtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
        safetensors::Dtype::I64 => {
            d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect()
        }
        safetensors::Dtype::I32 => {
            d.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f64).collect()
        }
        other => bail!("{}: tensor {name}: expected f32, f64, i64 or i32, got {other:?}", file.display()),
    };
    Ok(Some((values, t.shape().to_vec())))
}

/// Runs the network of `model` (a diffusers model folder or a tilt run) on `input` and writes tensor `sample` to
/// `out`; with `repeat > 0` it times that many forwards after one warm-up and returns the median seconds.
pub fn run(model: &Path, input: &Path, out: &Path, repeat: usize, device: &Device) -> Result<Option<f64>> {
    if out.is_dir() {
        bail!("{}: is a directory; give the path of the .safetensors file to write", out.display());
    }
    let bytes = std::fs::read(input).with_context(|| format!("{}: cannot read", input.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", input.display()))?;
    let (x, shape) =
        read(&st, input, "sample")?.ok_or_else(|| anyhow::anyhow!("{}: no tensor `sample`", input.display()))?;
    let (t, t_shape) = read(&st, input, "timestep")?
        .ok_or_else(|| anyhow::anyhow!("{}: no tensor `timestep` (one per sample, or one for all)", input.display()))?;
    let labels = read(&st, input, "class_labels")?;
    let n = *shape
        .first()
        .ok_or_else(|| anyhow::anyhow!("{}: tensor sample: expected [n, ...], got a scalar", input.display()))?;
    if n == 0 || x.len() > MAX_VALUES {
        bail!(
            "{}: tensor sample: expected 1 to {MAX_VALUES} values in a non-empty batch, got shape {shape:?}",
            input.display()
        );
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        bail!("{}: tensor sample: value {i} is {}; expected finite values", input.display(), x[i]);
    }
    let t = match t.len() {
        1 => vec![t[0]; n],
        len if len == n && t_shape.len() == 1 => t,
        _ => bail!(
            "{}: tensor timestep: expected [{n}] (one per sample) or one value, got shape {t_shape:?}",
            input.display()
        ),
    };
    let network = load(model, device)?;
    let t_max = match network {
        Network::Diffusers(..) => MAX_TIMESTEP,
        Network::Tilt(_) => 1.0,
    };
    if let Some(v) = t.iter().find(|v| !(v.is_finite() && **v >= 0.0 && **v <= t_max)) {
        bail!(
            "{}: tensor timestep: expected values in [0, {t_max}] (the model's own units{}), got {v}",
            input.display(),
            if t_max == 1.0 { ": a tilt MLP's time t" } else { ": diffusers' training timesteps" }
        );
    }
    let num_labels = match &network {
        Network::Diffusers(_, _, classes) => classes.unwrap_or(0),
        Network::Tilt(net) => net.num_labels(),
    };
    let labels = match (labels, num_labels) {
        (None, 0) => None,
        (Some(_), 0) => {
            bail!("{}: tensor class_labels: the model is unconditional and takes no labels", input.display())
        }
        (None, k) => bail!(
            "{}: no tensor class_labels: the model is class-conditional ({k} labels) and needs one per sample",
            input.display()
        ),
        (Some((l, l_shape)), k) => {
            if l.len() != n || l_shape.len() != 1 {
                bail!("{}: tensor class_labels: expected [{n}], got shape {l_shape:?}", input.display());
            }
            if let Some(v) = l.iter().find(|v| !(v.fract() == 0.0 && **v >= 0.0 && **v < k as f64)) {
                bail!("{}: tensor class_labels: expected integer labels 0 to {}, got {v}", input.display(), k - 1);
            }
            Some(l.iter().map(|v| *v as i64).collect::<Vec<_>>())
        }
    };
    let x32: Vec<f32> = x.iter().map(|v| *v as f32).collect();
    let t32: Vec<f32> = t.iter().map(|v| *v as f32).collect();
    // Rows `start..start + rows` of the inputs on the device.
    let d = x32.len() / n;
    let slice = |start: usize, rows: usize| {
        let xs =
            Tensor::<1>::from_data(TensorData::new(x32[start * d..(start + rows) * d].to_vec(), [rows * d]), device);
        let ts = Tensor::<1>::from_data(TensorData::new(t32[start..start + rows].to_vec(), [rows]), device);
        let ls = labels
            .as_ref()
            .map(|l| Tensor::<1, Int>::from_data(TensorData::new(l[start..start + rows].to_vec(), [rows]), device));
        (xs, ts, ls)
    };
    let forward = || -> Result<(Vec<f32>, Vec<usize>)> {
        match &network {
            Network::Diffusers(unet, [c, h, w], _) => {
                if shape.len() != 4 || shape[1] != *c {
                    bail!(
                        "{}: tensor sample: expected [n, {c}, height, width] for this model, got {shape:?}",
                        input.display()
                    );
                }
                let levels = unet.down_blocks.len();
                let factor = 1usize << (levels - 1);
                if !shape[2].is_multiple_of(factor)
                    || !shape[3].is_multiple_of(factor)
                    || shape[2] == 0
                    || shape[3] == 0
                {
                    bail!(
                        "{}: tensor sample: height and width must be positive multiples of {factor} ({levels} levels), got {shape:?} (the model was trained at {h} x {w})",
                        input.display()
                    );
                }
                // In chunks that fit memory (every image's output depends on that image alone).
                let chunk = crate::config::image_chunk_rows(shape[2], shape[3]);
                let (mut y, mut dims) = (Vec::with_capacity(x32.len()), vec![n, *c, shape[2], shape[3]]);
                for start in (0..n).step_by(chunk) {
                    let rows = chunk.min(n - start);
                    let (xs, ts, ls) = slice(start, rows);
                    let out = unet.forward(xs.reshape([rows, *c, shape[2], shape[3]]), ts, ls);
                    let [_, oc, oh, ow] = out.dims();
                    dims = vec![n, oc, oh, ow];
                    y.extend(tilt_core::tensor_ext::to_vec(out.reshape([rows, oc * oh * ow])));
                }
                Ok((y, dims))
            }
            Network::Tilt(net) => {
                let want = net.shape();
                if shape[1..] != want[..] {
                    bail!(
                        "{}: tensor sample: expected [n, {}] for this network, got {shape:?}",
                        input.display(),
                        want.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
                    );
                }
                let (xs, ts, ls) = slice(0, n);
                let y = net.forward(xs.reshape([n, d]), ts, ls);
                Ok((tilt_core::tensor_ext::to_vec(y), shape.clone()))
            }
        }
    };
    let (y, y_shape) = forward()?;
    if let Some(i) = y.iter().position(|v| !v.is_finite()) {
        bail!("the network's output value {i} is {}: not written", y[i]);
    }
    let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, y_shape, &bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let file =
        safetensors::serialize([("sample", view)], None).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    tilt_train::write_atomic(out, &file)?;
    if repeat == 0 {
        return Ok(None);
    }
    let mut seconds = Vec::with_capacity(repeat);
    let bar = indicatif::ProgressBar::new(repeat as u64).with_message("timing forwards");
    for _ in 0..repeat {
        let start = Instant::now();
        forward()?;
        seconds.push(start.elapsed().as_secs_f64());
        bar.inc(1);
    }
    bar.finish_and_clear();
    seconds.sort_by(f64::total_cmp);
    Ok(Some(seconds[repeat / 2]))
}
