//! Running the tilt binary in tests: under a timeout (a hang fails the test), never a panic or a signal exit, in a
//! scratch folder per case; and the small train and sample configs the reliability tests vary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a run of the binary ended.
pub struct Ran {
    pub ok: bool,
    pub stderr: String,
}

pub fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tilt"))
        .args(args)
        .env("BURN_DEVICE", "flex")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Run the binary; fail the test on a hang (past `limit`), a panic or an allocator abort.
pub fn tilt_within(limit: Duration, args: &[&str]) -> Ran {
    let mut child = spawn(args);
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("HANG: tilt {} ran past {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    assert!(
        !stderr.contains("panicked") && code != Some(101) && code.is_some(),
        "PANIC/ABORT (exit {code:?}): tilt {}\n{stderr}",
        args.join(" ")
    );
    Ran { ok: out.status.success(), stderr }
}

pub fn tilt(args: &[&str]) -> Ran {
    tilt_within(Duration::from_secs(120), args)
}

/// A refused command: non-zero exit and every `wants` in the message.
pub fn refused(args: &[&str], wants: &[&str]) {
    let r = tilt(args);
    assert!(!r.ok, "accepted: tilt {}\n{}", args.join(" "), r.stderr);
    for w in wants {
        assert!(r.stderr.contains(w), "tilt {}: expected {w:?} in\n{}", args.join(" "), r.stderr);
    }
}

pub fn succeeded(args: &[&str]) -> String {
    let r = tilt(args);
    assert!(r.ok, "failed: tilt {}\n{}", args.join(" "), r.stderr);
    r.stderr
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub const TRAIN: &str = r#"
steps = 40
seed = 3
batch_size = 64
data_size = 1000
log_every = 10
checkpoint_every = 20
keep_checkpoints = 2
[objective]
kind = "dsm"
[model]
hidden = 16
blocks = 1
time_dim = 8
[data]
kind = "mixture"
weights = [0.5, 0.5]
means = [[-1.0, 0.0], [1.0, 0.0]]
std = [0.5, 0.5]
"#;

pub const SAMPLE: &str = r#"
samples = 200
class = 0
[mixture]
weights = [0.5, 0.5]
means = [[-1.0, 0.0], [1.0, 0.0]]
std = [0.6, 0.6]
[sampler]
steps = 10
[guidance]
kind = "cfg"
strengths = [0.0, 1.0]
"#;

pub struct Case {
    pub dir: tempfile::TempDir,
}

impl Case {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Write `text` to `name` and return its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
