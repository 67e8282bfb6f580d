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
