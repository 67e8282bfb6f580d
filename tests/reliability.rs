//! Bad inputs, faults and interruptions through the binary, the way a careful (or unlucky) user meets them:
//! configs and CSVs out of range, output folders that hold other files, two writers at once, kill -9 mid-run.
//! Every case runs under a timeout (a hang fails it), and no case may panic, abort, lose data or exit 0 with a
//! wrong result. The cases are those of the reliability probe that found the defects (docs/reliability.md).

mod binary;

use binary::*;
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn resuming_with_the_runs_own_config_keeps_it() {
    let c = Case::new();
    let cfg = c.file("t.toml", TRAIN);
    let run = c.path("run");
    succeeded(&["train", "--config", s(&cfg), "--out", s(&run)]);
    let own = run.join("config.toml");
    let before = read(&own);
    assert!(!before.is_empty());
    succeeded(&["train", "--config", s(&own), "--out", s(&run), "--resume"]);
    assert_eq!(read(&own), before, "config.toml changed by resuming with it");
}

#[test]
fn a_new_run_where_latest_was_deleted_keeps_its_checkpoints() {
    let c = Case::new();
    let run = c.path("run");
    succeeded(&[
        "train",
        "--config",
        s(&c.file("a.toml", &TRAIN.replace("steps = 40", "steps = 60"))),
        "--out",
        s(&run),
    ]);
    std::fs::remove_file(run.join("checkpoints/latest")).unwrap();
    let short = TRAIN.replace("steps = 40", "steps = 30").replace("checkpoint_every = 20", "checkpoint_every = 10");
    let err = succeeded(&["train", "--config", s(&c.file("b.toml", &short)), "--out", s(&run)]);
    assert!(err.contains("trained 30 steps"), "{err}");
    assert_eq!(std::fs::read_to_string(run.join("checkpoints/latest")).unwrap(), "step-000030");
    for kept in ["step-000020", "step-000030", "step-000040", "step-000060"] {
        assert!(run.join("checkpoints").join(kept).join("manifest.json").exists(), "{kept} missing");
    }
    succeeded(&["export", "--checkpoint", s(&run), "--out", s(&c.path("m.safetensors"))]);
}

#[test]
fn resume_refuses_changed_data_and_fewer_steps() {
    let c = Case::new();
    let rows = |shift: f64| -> String {
        (0..200).map(|i| format!("{},{},{}\n", (i % 7) as f64 * 0.1 + shift, (i % 5) as f64 * 0.2, i % 2)).collect()
    };
    let data = c.file("d.csv", &rows(0.0));
    let cfg = TRAIN.replace(
        "[data]\nkind = \"mixture\"\nweights = [0.5, 0.5]\nmeans = [[-1.0, 0.0], [1.0, 0.0]]\nstd = [0.5, 0.5]\n",
        &format!("[data]\nkind = \"csv\"\npath = \"{}\"\nlabelled = true\n", data.display()),
    );
    let cfg_path = c.file("t.toml", &cfg);
    let run = c.path("run");
    succeeded(&["train", "--config", s(&cfg_path), "--out", s(&run)]);
    let more = c.file("more.toml", &cfg.replace("steps = 40", "steps = 60"));
    std::fs::write(&data, rows(0.5)).unwrap();
    refused(&["train", "--config", s(&more), "--out", s(&run), "--resume"], &["the training data differ", "SHA-256"]);
    std::fs::write(&data, rows(0.0)).unwrap();
    let fewer = c.file("fewer.toml", &cfg.replace("steps = 40", "steps = 30"));
    refused(&["train", "--config", s(&fewer), "--out", s(&run), "--resume"], &["steps: 30 is below the step", "40"]);
    succeeded(&["train", "--config", s(&more), "--out", s(&run), "--resume"]);
}

#[test]
fn out_of_range_inputs_are_field_errors_not_hangs_or_aborts() {
    let c = Case::new();
    let sample = |name: &str, from: &str, to: &str, wants: &[&str]| {
        assert!(SAMPLE.contains(from), "{from}");
        let cfg = c.file(&format!("{name}.toml"), &SAMPLE.replacen(from, to, 1));
        refused(&["sample", "--config", s(&cfg), "--out", s(&c.path(name))], wants);
        assert!(!c.path(name).exists(), "{name}: a refused sweep left an output folder");
    };
    sample("mean_huge", "[-1.0, 0.0], [1.0", "[-1.0, 0.0], [1e200", &["mixture.means[1]: expected values within"]);
    sample(
        "std_tiny",
        "std = [0.6, 0.6]",
        "std = [0.6, 1e-300]",
        &["mixture.std[1]: expected a standard deviation in"],
    );
    sample("samples_max", "samples = 200", "samples = 18446744073709551615", &["samples:", "cannot be allocated"]);
    sample("samples_1e12", "samples = 200", "samples = 1000000000000", &["samples:", "cannot be allocated"]);
    sample("batch_zero", "steps = 10", "steps = 10\nbatch = 0", &["sampler.batch: expected 1 to"]);
    let reward = "[reward]\nkind = \"exp-linear\"\na = [1000.0, 0.4]\n[guidance]\nkind = \"reward\"";
    let cfg = c.file("reward.toml", &SAMPLE.replace("class = 0\n", "").replace("[guidance]\nkind = \"cfg\"", reward));
    refused(&["sample", "--config", s(&cfg), "--out", s(&c.path("reward"))], &["reward.a: the reward overflows"]);

    let train = |name: &str, from: &str, to: &str, wants: &[&str]| {
        assert!(TRAIN.contains(from), "{from}");
        let cfg = c.file(&format!("{name}.toml"), &TRAIN.replacen(from, to, 1));
        refused(&["train", "--config", s(&cfg), "--out", s(&c.path(name))], wants);
        assert!(!c.path(name).exists(), "{name}: a refused run left a run folder");
    };
    train("batch_huge", "batch_size = 64", "batch_size = 100000000000", &["batch_size: expected at most"]);
    train("data_huge", "data_size = 1000", "data_size = 100000000000", &["data_size: expected at most"]);
    train("mixture_bad", "std = [0.5, 0.5]", "std = [0.5, -1.0]", &["invalid config", "data.std[1]"]);
    let csv = |name: &str, text: &str, wants: &[&str]| {
        let data = c.file(&format!("{name}.csv"), text);
        let cfg = TRAIN.replace(
            "kind = \"mixture\"\nweights = [0.5, 0.5]\nmeans = [[-1.0, 0.0], [1.0, 0.0]]\nstd = [0.5, 0.5]",
            &format!("kind = \"csv\"\npath = \"{}\"\nlabelled = true", data.display()),
        );
        let cfg = c.file(&format!("{name}.toml"), &cfg);
        refused(&["train", "--config", s(&cfg), "--out", s(&c.path(name))], wants);
    };
    csv("label_stray", "0.1,0.2,0\n0.3,0.1,1\n0.2,0.2,7\n", &["line 3: label 7, but class 2 has no rows"]);
    csv("label_huge", "0.1,0.2,0\n0.3,0.1,1000000000\n", &["line 2, column 3: expected a class label"]);
    csv("value_f32", "0.1,0.2,0\n1e300,0.1,1\n", &["line 2, column 1: expected a finite number within the f32 range"]);
    csv("value_unscaled", "0.1,0.2,0\n1e30,0.1,1\n", &["data: row 2 has a coordinate of 1e30", "standardize = true"]);
}

#[test]
fn degenerate_sweeps_finish_or_fail_by_name_without_hanging() {
    let c = Case::new();
    // Two samples and one step: E[1/p(c|Y)] may be infinite; the curve is skipped, never an endless loop.
    let cfg = c.file("min.toml", &SAMPLE.replace("samples = 200", "samples = 2").replace("steps = 10", "steps = 1"));
    let r = tilt_within(Duration::from_secs(60), &["sample", "--config", s(&cfg), "--out", s(&c.path("min"))]);
    assert!(r.ok || r.stderr.contains("fewer than 2 finite samples"), "{}", r.stderr);
    // A strength of 1e300 is refused by name; the largest allowed one runs, or fails by name if it diverges.
    let cfg = c.file("huge_w.toml", &SAMPLE.replace("strengths = [0.0, 1.0]", "strengths = [1e300]"));
    refused(&["sample", "--config", s(&cfg), "--out", s(&c.path("huge_w"))], &["guidance.strengths"]);
    let cfg = c.file("big_w.toml", &SAMPLE.replace("strengths = [0.0, 1.0]", "strengths = [10000.0]"));
    let r = tilt(&["sample", "--config", s(&cfg), "--out", s(&c.path("big_w"))]);
    assert!(r.ok || r.stderr.contains("w = 10000: fewer than 2 finite"), "{}", r.stderr);
}

#[test]
fn output_folders_are_never_overwritten_without_force() {
    let c = Case::new();
    let sample_cfg = c.file("s.toml", SAMPLE);
    let mine = c.path("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("summary.json"), "user data").unwrap();
    refused(&["sample", "--config", s(&sample_cfg), "--out", s(&mine)], &["did not write (summary.json)", "--force"]);
    refused(&["train", "--config", s(&c.file("t.toml", TRAIN)), "--out", s(&mine)], &["did not write"]);
    refused(&["reproduce", "--preset", "tiny", "--only", "cfg_mixture", "--out", s(&mine)], &["did not write"]);
    assert_eq!(read(&mine.join("summary.json")), b"user data");

    // A second sweep into the first one's folder needs --force.
    let out = c.path("sweep");
    succeeded(&["sample", "--config", s(&sample_cfg), "--out", s(&out)]);
    refused(&["sample", "--config", s(&sample_cfg), "--out", s(&out)], &["earlier `tilt sample`", "--force"]);
    succeeded(&["sample", "--config", s(&sample_cfg), "--out", s(&out), "--force"]);
    let other = c.file("other.txt", "keep me");
    succeeded(&["sample", "--config", s(&sample_cfg), "--out", s(&mine), "--force"]);
    assert_eq!(read(&other), b"keep me");

    // Export: an existing file is replaced only with --force; two exports are byte-identical.
    let run = c.path("run");
    succeeded(&["train", "--config", s(&c.file("t.toml", TRAIN)), "--out", s(&run)]);
    let target = c.file("m.safetensors", "user file");
    refused(&["export", "--checkpoint", s(&run), "--out", s(&target)], &["already exists", "--force"]);
    assert_eq!(read(&target), b"user file");
    succeeded(&["export", "--checkpoint", s(&run), "--out", s(&target), "--force"]);
    let again = c.path("again.safetensors");
    succeeded(&["export", "--checkpoint", s(&run), "--out", s(&again)]);
    assert_eq!(read(&target), read(&again), "two exports of one checkpoint differ");
    refused(&["export", "--checkpoint", s(&run), "--out", s(&run)], &["is a directory"]);
    // A garbage manifest is named.
    let manifest = run.join("checkpoints/step-000040/manifest.json");
    std::fs::write(&manifest, "{\"format\": 12}").unwrap();
    refused(&["export", "--checkpoint", s(&run), "--out", s(&c.path("x.safetensors"))], &["manifest.json"]);
}

#[test]
fn a_second_writer_is_refused_while_the_first_runs() {
    let c = Case::new();
    let long =
        TRAIN.replace("steps = 40", "steps = 1000000").replace("checkpoint_every = 20", "checkpoint_every = 100000");
    let cfg = c.file("long.toml", &long);
    let run = c.path("run");
    let mut first = spawn(&["train", "--config", s(&cfg), "--out", s(&run)]);
    let lock = run.join(".tilt.lock");
    let start = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("pid")) {
        assert!(start.elapsed() < Duration::from_secs(60), "the first run never took its lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = format!("pid {}", first.id());
    refused(&["train", "--config", s(&cfg), "--out", s(&run)], &["in use by another tilt process", &pid]);
    refused(&["train", "--config", s(&cfg), "--out", s(&run), "--resume"], &["in use by another tilt process", &pid]);
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn two_runs_started_at_once_leave_one_complete_run() {
    let c = Case::new();
    let cfg = c.file("t.toml", &TRAIN.replace("checkpoint_every = 20", "checkpoint_every = 5"));
    let reference = c.path("reference");
    succeeded(&["train", "--config", s(&cfg), "--out", s(&reference)]);
    for trial in 0..3 {
        let run = c.path(&format!("run{trial}"));
        let args = ["train", "--config", s(&cfg), "--out", s(&run)];
        let (a, b) = (spawn(&args), spawn(&args));
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let ok = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(ok, 1, "trial {trial}: {ok} of 2 runs succeeded");
        let loser = outs.iter().find(|o| !o.status.success()).unwrap();
        let err = String::from_utf8_lossy(&loser.stderr);
        assert!(
            err.contains("in use by another tilt process") || err.contains("already holds a training run"),
            "trial {trial}: {err}"
        );
        assert_eq!(run_files(&reference).len(), run_files(&run).len(), "trial {trial}: stray files");
        assert!(run_files(&reference) == run_files(&run), "trial {trial}: the surviving run differs");
    }
}

/// Every file of a run directory (but the lock, which holds a pid), as bytes.
fn run_files(run: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![run.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != ".tilt.lock" {
                files.push((p.strip_prefix(run).unwrap().display().to_string(), read(&p)));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_run_killed_repeatedly_and_resumed_matches_an_uninterrupted_one_byte_for_byte() {
    let c = Case::new();
    let cfg = TRAIN
        .replace("steps = 40", "steps = 300")
        .replace("checkpoint_every = 20", "checkpoint_every = 25")
        .replace("log_every = 10", "log_every = 15");
    let cfg = c.file("k.toml", &cfg);
    let reference = c.path("reference");
    succeeded(&["train", "--config", s(&cfg), "--out", s(&reference)]);

    let run = c.path("killed");
    let latest = run.join("checkpoints/latest");
    let (mut kills, mut done) = (0, false);
    // Each life is killed after its first new checkpoint plus 0-40 ms, i.e. mid-step or mid-write.
    for life in 0..40 {
        let seen = std::fs::read_to_string(&latest).ok();
        let mut args = vec!["train", "--config", s(&cfg), "--out", s(&run)];
        if seen.is_some() {
            args.push("--resume");
        }
        let mut child = spawn(&args);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(status.success(), "life {life}: {err}");
                done = true;
                break;
            }
            if kills < 6 && std::fs::read_to_string(&latest).ok() != seen {
                std::thread::sleep(Duration::from_millis(10 * (life % 5)));
                let _ = child.kill();
                child.wait().unwrap();
                kills += 1;
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "HANG in life {life}");
            std::thread::sleep(Duration::from_millis(2));
        }
        if done {
            break;
        }
    }
    assert!(done && kills >= 3, "done = {done}, kills = {kills}");
    let (a, b) = (run_files(&reference), run_files(&run));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "the killed run holds other files");
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name} differs after {kills} kills and resumes");
    }
}

#[test]
fn a_reward_trainer_accepts_a_standardised_base() {
    let c = Case::new();
    let base_cfg = TRAIN.replace("seed = 3", "seed = 3\nstandardize = true");
    let base = c.path("base");
    succeeded(&["train", "--config", s(&c.file("base.toml", &base_cfg)), "--out", s(&base)]);
    for form in ["full", "residual"] {
        let cfg = base_cfg.replace(
            "[objective]\nkind = \"dsm\"",
            &format!(
                "[objective]\nkind = \"reward-weighted\"\nform = \"{form}\"\nbase = \"{}\"\nreward = {{ kind = \"exp-linear\", a = [1.0, 0.0] }}",
                base.display()
            ),
        );
        succeeded(&["train", "--config", s(&c.file(&format!("{form}.toml"), &cfg)), "--out", s(&c.path(form))]);
    }
}
