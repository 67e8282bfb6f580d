//! Output folders: one writer at a time, and nothing a user (or another run) left there replaced without a word.
//!
//! Every command that writes a folder (`tilt train`, `tilt sample`, `tilt reproduce`) claims it first:
//! - an exclusive lock on `<out>/.tilt.lock` (an OS file lock, released when the process exits or is killed)
//!   refuses a second writer, naming the folder and the holder's pid;
//! - a marker `<out>/.tilt-output.json` records which command owns the folder, so a folder holding files
//!   tilt did not write (or another command's output) is refused unless the user passes `--force`.
//!
//! The lock is `std::fs::File::try_lock` (flock on Unix, LockFileEx on Windows), stable since Rust 1.89: the
//! crates that offered it before (`fs4`, `fd-lock`) would add nothing.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file that makes one writer per folder.
pub const LOCK_FILE: &str = ".tilt.lock";
/// The marker that records which command wrote a folder.
pub const MARKER_FILE: &str = ".tilt-output.json";

/// The command that owns an output folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// A `tilt train` run.
    Train,
    /// A `tilt sample` sweep.
    Sample,
    /// A `tilt reproduce` report.
    Reproduce,
}

impl OutputKind {
    fn command(self) -> &'static str {
        match self {
            OutputKind::Train => "tilt train",
            OutputKind::Sample => "tilt sample",
            OutputKind::Reproduce => "tilt reproduce",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    command: OutputKind,
}

/// What a folder held before it was claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prior {
    /// Absent or empty.
    Empty,
    /// Output of the same command (e.g. a run to resume, or a reproduce to continue).
    Own,
    /// Files tilt did not write here, or another command's output (the first few names).
    Foreign(Vec<String>),
}

/// A claimed output folder: locked until dropped.
pub struct OutputDir {
    path: PathBuf,
    prior: Prior,
    _lock: File,
}

impl OutputDir {
    /// Create (if needed), lock and inspect `path` for `kind`. A folder holding foreign files is refused unless
    /// `force`; what to do with the command's own earlier output is the caller's decision ([`OutputDir::prior`]).
    pub fn claim(path: &Path, kind: OutputKind, force: bool) -> Result<Self> {
        Self::claim_impl(path, kind, force, false)
    }

    /// [`OutputDir::claim`] for `tilt train --resume`: never `--force`d, so a refusal does not advise it.
    pub fn claim_to_resume(path: &Path) -> Result<Self> {
        Self::claim_impl(path, OutputKind::Train, false, true)
    }

    fn claim_impl(path: &Path, kind: OutputKind, force: bool, resume: bool) -> Result<Self> {
        fs::create_dir_all(path).with_context(|| format!("cannot create output directory {}", path.display()))?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock = open_lock_file(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                bail!(
                    "{}: in use by another tilt process ({}); wait for it to finish, or choose another --out",
                    path.display(),
                    if holder.is_empty() { "pid unknown".to_string() } else { holder.to_string() }
                );
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
        let me = format!("pid {}, {}", std::process::id(), kind.command());
        lock.set_len(0)
            .and_then(|_| lock.rewind())
            .and_then(|_| lock.write_all(me.as_bytes()))
            .with_context(|| format!("cannot write {}", lock_path.display()))?;

        // Locked: any temporary here is a killed writer's leftover.
        crate::atomic::remove_leftover_temporaries(path);
        let prior = inspect(path, kind)?;
        if let Prior::Foreign(names) = &prior
            && resume
        {
            bail!(
                "{}: holds files that tilt train did not write ({}) and no checkpoint to resume from; give the folder \
                 of a training run (its checkpoints/ must hold a step-N directory)",
                path.display(),
                names.join(", ")
            );
        }
        if let Prior::Foreign(names) = &prior
            && !force
        {
            bail!(
                "{}: holds files that {} did not write ({}); choose an empty or new folder, or pass --force to write \
                 into it (files with the names it writes are replaced, the others are left)",
                path.display(),
                kind.command(),
                names.join(", ")
            );
        }
        let marker = serde_json::to_vec(&Marker { command: kind })?;
        crate::write_atomic(&path.join(MARKER_FILE), &marker)?;
        Ok(Self { path: path.to_path_buf(), prior, _lock: lock })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the folder held before it was claimed.
    pub fn prior(&self) -> &Prior {
        &self.prior
    }
}

/// Open (creating) the lock file without following a symlink: a link planted at `.tilt.lock` would otherwise have
/// its target truncated and rewritten with our pid, even when the folder is then refused.
fn open_lock_file(lock_path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    if fs::symlink_metadata(lock_path).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "{}: is a symbolic link; tilt does not write through links in an output folder (remove it, or choose another --out)",
            lock_path.display()
        );
    }
    options.open(lock_path).with_context(|| format!("cannot open the lock file {}", lock_path.display()))
}

fn inspect(path: &Path, kind: OutputKind) -> Result<Prior> {
    let mut names: Vec<String> = fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
        .filter(|n| n != LOCK_FILE && n != MARKER_FILE)
        .collect();
    names.sort();
    let marker_path = path.join(MARKER_FILE);
    let owner = match fs::read(&marker_path) {
        Ok(bytes) => serde_json::from_slice::<Marker>(&bytes).ok().map(|m| m.command),
        Err(_) => None,
    };
    // A training run is recognised by its checkpoints, not only by the marker: a run folder whose marker was
    // deleted, lost in a copy (`cp run/* new/`) or overwritten by a forced `tilt sample` stays resumable.
    let holds_run = kind == OutputKind::Train && crate::checkpoint::resolve_newest(path).is_ok();
    Ok(match owner {
        _ if names.is_empty() => Prior::Empty,
        _ if holds_run => Prior::Own,
        Some(k) if k == kind => Prior::Own,
        Some(other) => Prior::Foreign(vec![format!("the output of `{}`", other.command())]),
        None => {
            let more = names.len().saturating_sub(4);
            names.truncate(4);
            if more > 0 {
                names.push(format!("and {more} more"));
            }
            Prior::Foreign(names)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = OutputDir::claim(dir.path(), OutputKind::Train, false).unwrap();
        let err = format!("{:#}", OutputDir::claim(dir.path(), OutputKind::Train, false).err().unwrap());
        assert!(err.contains("in use by another tilt process"), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        let again = OutputDir::claim(dir.path(), OutputKind::Train, false).unwrap();
        assert_eq!(again.prior(), &Prior::Empty);
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        fs::write(&victim, "IMPORTANT").unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&victim, out.join(LOCK_FILE)).unwrap();
        let err = format!("{:#}", OutputDir::claim(&out, OutputKind::Sample, true).err().unwrap());
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "IMPORTANT");
    }

    #[test]
    fn foreign_files_need_force_and_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("summary.json"), "mine").unwrap();
        let err = format!("{:#}", OutputDir::claim(dir.path(), OutputKind::Sample, false).err().unwrap());
        assert!(err.contains("holds files that tilt sample did not write (summary.json)"), "{err}");
        assert_eq!(fs::read_to_string(dir.path().join("summary.json")).unwrap(), "mine");
        let forced = OutputDir::claim(dir.path(), OutputKind::Sample, true).unwrap();
        assert!(matches!(forced.prior(), Prior::Foreign(_)));
        drop(forced);
        // Now marked as a sample folder: its own command sees its earlier output, another command does not.
        assert_eq!(OutputDir::claim(dir.path(), OutputKind::Sample, false).unwrap().prior(), &Prior::Own);
        let err = format!("{:#}", OutputDir::claim(dir.path(), OutputKind::Train, false).err().unwrap());
        assert!(err.contains("the output of `tilt sample`"), "{err}");
    }
}
