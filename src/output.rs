//! Writing results atomically: JSON and CSV samples.

use anyhow::Result;
use serde::Serialize;
use std::path::Path;

pub use tilt_train::write_atomic;

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

/// `x1,...,xd` header and one row per sample.
pub fn write_samples_csv(path: &Path, x: &[f32], d: usize) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record((1..=d).map(|j| format!("x{j}")))?;
    for row in x.chunks_exact(d) {
        w.write_record(row.iter().map(|v| v.to_string()))?;
    }
    write_atomic(path, &w.into_inner()?)
}

/// Image samples `[n, c, h, w]` (rows of `x`) as a safetensors file with the one f32 tensor `samples`.
pub fn write_samples_safetensors(path: &Path, x: &[f32], image: [usize; 3]) -> Result<()> {
    let n = x.len() / image.iter().product::<usize>();
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, image[0], image[1], image[2]], &bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let out =
        safetensors::serialize([("samples", view)], None).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    write_atomic(path, &out)
}
