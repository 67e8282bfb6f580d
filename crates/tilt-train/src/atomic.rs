//! Atomic file replacement: a reader (or a crash) never sees half a file, and the old content survives any
//! failure before the final rename.
//!
//! The temporary file is created by the `tempfile` crate: a name unique to this writer, opened with
//! `O_CREAT | O_EXCL` (so a symlink planted under that name is never followed, and two writers of one target
//! never share a temporary), removed again if anything fails. The final `rename` replaces the directory entry
//! itself: a symlink at the target is replaced by the new file, its own target is left untouched.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;

const TMP_INFIX: &str = ".tilt-";
const TMP_SUFFIX: &str = ".tmp";

/// Whether `name` is a temporary of [`write_atomic`] (`.<target>.tilt-XXXXXX.tmp`).
pub fn is_leftover_temporary(name: &str) -> bool {
    let Some(stem) = name.strip_prefix('.').and_then(|n| n.strip_suffix(TMP_SUFFIX)) else {
        return false;
    };
    stem.rfind(TMP_INFIX).is_some_and(|i| {
        let random = &stem[i + TMP_INFIX.len()..];
        random.len() == 6 && random.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Remove the temporaries a killed writer left in `dir` and, one level down, in its sub-folders. Only for a
/// folder the caller has locked: no other writer's temporary can be in flight there. Links are never followed.
pub fn remove_leftover_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        let name = e.file_name();
        if kind.is_file() && name.to_str().is_some_and(is_leftover_temporary) {
            let _ = std::fs::remove_file(e.path());
        } else if kind.is_dir() {
            for inner in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                let is_tmp = inner.file_name().to_str().is_some_and(is_leftover_temporary);
                if is_tmp && inner.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = std::fs::remove_file(inner.path());
                }
            }
        }
    }
}

/// Write `bytes` to a unique hidden sibling, sync it, then rename it over `path`. Writing a file onto its own
/// source (e.g. a config copied into the run that holds it) is safe: the source is read before, never truncated.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] for content produced by a writer (e.g. an encoder), without holding it all in memory first.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}{TMP_INFIX}");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(TMP_SUFFIX);
    // tempfile creates 0600 files; an output gets the mode `File::create` would give it (0666 less the umask).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file beside {}", path.display()))?;
    let tmp_path = tmp.path().to_path_buf();
    // On an error the `NamedTempFile` is dropped, which removes the temporary.
    write(tmp.as_file_mut())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", tmp_path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot move {} into place as {}", tmp_path.display(), path.display()))?;
    Ok(())
}

/// Refuse a folder inside an output folder that is a symbolic link: everything written there would land wherever
/// it points (`checkpoints/`, a reproduce stage's folder, `_models/`).
pub fn refuse_linked_folder(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        anyhow::bail!(
            "{}: is a symbolic link; tilt does not write through links inside an output folder (remove it)",
            path.display()
        );
    }
    Ok(())
}

/// Create `path` for writing, refusing to follow a symlink there (a link is removed, never written through), and
/// never opening an existing file: the caller's folder is locked, so an existing entry is a leftover.
pub fn create_fresh(path: &Path) -> Result<File> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.is_dir() {
            anyhow::bail!("{}: is a directory, expected a file", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove the leftover {}", path.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_symlink_at_the_target_is_replaced_and_its_target_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "user data").unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let target = out.join("summary.json");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "user data");
        assert!(!std::fs::symlink_metadata(&target).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        // The fixed temporary name of old versions, planted as a link, is never written through either.
        let planted = out.join(".config.toml.tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomic(&out.join("config.toml"), b"cfg").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "user data");
        // create_fresh removes a link rather than writing through it.
        let link = out.join("manifest.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        create_fresh(&link).unwrap().write_all(b"m").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "user data");
    }

    #[cfg(unix)]
    #[test]
    fn outputs_get_the_mode_a_plain_create_gives() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (atomic, plain) = (dir.path().join("a"), dir.path().join("b"));
        write_atomic(&atomic, b"x").unwrap();
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
    }

    #[test]
    fn concurrent_writers_of_one_target_never_mix_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model.safetensors");
        let payloads: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 1 << 20]).collect();
        std::thread::scope(|s| {
            for p in &payloads {
                let t = &target;
                s.spawn(move || write_atomic(t, p).unwrap());
            }
        });
        let got = std::fs::read(&target).unwrap();
        assert!(payloads.contains(&got), "the file holds a mix of writers");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temporaries left behind");
        assert!(is_leftover_temporary(".loss.csv.tilt-fct6uy.tmp"));
        assert!(!is_leftover_temporary("loss.csv") && !is_leftover_temporary(".config.toml.tmp"));
    }
}
