//! Atomic file replacement: a reader (or a crash) never sees half a file, and the old content survives any
//! failure before the final rename.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Write `bytes` to a hidden sibling, sync it, then rename it over `path`. Writing a file onto its own source
/// (e.g. a config copied into the run that holds it) is safe: the source is read before, never truncated.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_sibling(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} into place as {}", tmp.display(), path.display()))
}

fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A fixed name: one writer per folder (the output lock), and a leftover from a kill is overwritten next time.
    path.with_file_name(format!(".{name}.tmp"))
}
