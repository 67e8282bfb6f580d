//! Every numeric field of every shipped `tilt sample` and `tilt train` config, set in turn to NaN, ±inf, 0, −1,
//! 1e-300 and 1e300: the config is refused with an error naming the field, or accepted and then run by the binary
//! (under a timeout) to exit 0, or to exit 1 naming the field. Never a panic, a signal exit or a hang.
//!
//! The fields are generated, not listed by hand: a train config is parsed into `TrainConfig` and serialised back,
//! so every field appears, defaults included; a sample config (whose types are not serialisable) contributes every
//! numeric value its TOML holds, arrays and inline tables included.

mod binary;

use binary::*;
use serde_json::Value;
use std::time::Duration;

const VALUES: [f64; 6] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -1.0, 1e-300];
const HUGE: f64 = 1e300;

/// Paths (`a.b[2].c`) to every numeric leaf.
fn numeric_leaves(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::Number(_) => out.push(path),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| numeric_leaves(x, format!("{path}[{i}]"), out)),
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| numeric_leaves(x, if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out)),
        _ => {}
    }
}

fn leaf_mut<'a>(v: &'a mut Value, path: &str) -> &'a mut Value {
    let mut cur = v;
    for part in path.split('.') {
        let mut pieces = part.split('[');
        cur = cur.get_mut(pieces.next().unwrap()).unwrap();
        for index in pieces {
            cur = cur.get_mut(index.trim_end_matches(']').parse::<usize>().unwrap()).unwrap();
        }
    }
    cur
}

/// TOML with the mutated value written as TOML spells it (`nan`, `inf`, `-inf`, `1e300`).
fn to_toml(v: &Value, path: &str, x: f64) -> String {
    let mut v = v.clone();
    strip_nulls(&mut v);
    *leaf_mut(&mut v, path) = Value::String("@@MUTATED@@".into());
    let literal = if x.is_nan() {
        "nan".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else if x == x.trunc() && x.abs() < 1e15 {
        format!("{x:.1}")
    } else {
        format!("{x:e}")
    };
    toml::to_string(&v).unwrap().replace("\"@@MUTATED@@\"", &literal)
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Without list indices: `guidance.terms[1].weight` -> `guidance.terms.weight`.
fn without_indices(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_index = false;
    for ch in s.chars() {
        match ch {
            '[' if !in_index => in_index = true,
            ']' if in_index => in_index = false,
            c if !in_index => out.push(c),
            _ => {}
        }
    }
    out
}

/// Whether `message` names the field at `path`: its dotted path as a word (a one-word path only as `key:`,
/// `key,` or `key =`, since `samples` or `a` turn up in any sentence), the quoted source line that sets its key
/// (`12 | rings = -1`), or the field `toml_error` appends.
fn names_field(message: &str, path: &str) -> bool {
    let path = without_indices(path);
    let key = path.rsplit('.').next().unwrap();
    if tilt_train::toml_error::points_at(message, key) {
        return true;
    }
    let flat = without_indices(message);
    flat.match_indices(path.as_str()).any(|(i, _)| {
        let before = flat[..i].chars().next_back();
        let after = flat[i + path.len()..].chars().next();
        let word = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'))
            && after.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let qualified =
            path.contains('.') || matches!(after, Some(':' | ',')) || flat[i + path.len()..].starts_with(" =");
        word && qualified
    })
}

/// What happened to one mutant: refused by the config check, or run by the binary. Returns what went wrong.
fn check_mutant(
    kind: &str,
    c: &Case,
    name: &str,
    text: &str,
    path: &str,
    parse_error: Option<String>,
) -> Option<String> {
    if let Some(e) = parse_error {
        return (!names_field(&e, path)).then(|| format!("{name}: {path} refused without naming it: {e}"));
    }
    let cfg = c.file(&format!("{name}.toml"), text);
    let out = c.path(name);
    let r = tilt_within(Duration::from_secs(300), &[kind, "--config", s(&cfg), "--out", s(&out)]);
    let last = r.stderr.lines().rfind(|l| l.starts_with("Error")).unwrap_or_default().to_string();
    (!(r.ok || names_field(&r.stderr, path)))
        .then(|| format!("{name}: {path} accepted, then failed without naming it: {last}"))
}

fn report(failures: Vec<String>, mutants: usize) {
    assert!(failures.is_empty(), "{} of {mutants} mutants:\n{}", failures.len(), failures.join("\n"));
}

fn shipped(prefix_train: bool) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir("configs")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("train_") == prefix_train)
        .map(|p| (p.file_stem().unwrap().to_str().unwrap().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn every_numeric_field_of_every_shipped_sample_config_is_refused_by_name_or_runs() {
    let c = Case::new();
    let (mut failures, mut mutants) = (Vec::new(), 0);
    for (stem, text) in shipped(false) {
        let mut v: Value = serde_json::to_value(toml::from_str::<toml::Value>(&text).unwrap()).unwrap();
        // The binary runs accepted mutants: a few hundred samples keep each run short.
        if let Some(n) = v.get_mut("samples") {
            *n = Value::from(n.as_u64().unwrap().min(300));
        }
        let mut leaves = Vec::new();
        numeric_leaves(&v, String::new(), &mut leaves);
        assert!(!leaves.is_empty(), "{stem}: no numeric fields found");
        for (li, path) in leaves.iter().enumerate() {
            for (vi, x) in VALUES.iter().chain([&HUGE]).enumerate() {
                let mutant = to_toml(&v, path, *x);
                let name = format!("{stem}_{li}_{vi}");
                let parsed = tilt::config::SampleConfig::parse(&mutant).err().map(|e| format!("{e:#}"));
                mutants += 1;
                failures.extend(check_mutant("sample", &c, &name, &mutant, path, parsed));
            }
        }
    }
    report(failures, mutants);
}

#[test]
fn every_numeric_field_of_every_shipped_train_config_is_refused_by_name_or_runs() {
    let c = Case::new();
    let (mut failures, mut mutants) = (Vec::new(), 0);
    for (stem, text) in shipped(true) {
        if text.contains("/usr/share/datasets") && !std::path::Path::new("/usr/share/datasets/fashion-mnist").exists() {
            eprintln!("{stem}: skipped, Debian's dataset-fashion-mnist is not installed");
            continue;
        }
        let cfg = tilt_train::TrainConfig::parse(&text).unwrap();
        let mut v = serde_json::to_value(&cfg).unwrap();
        // Accepted mutants are trained for 2 steps (the question is whether they run, not how well) ...
        v["steps"] = Value::from(2);
        v["checkpoint_every"] = Value::from(1);
        // ... on a small batch of a few images, so that the U-Net's mutants take seconds, not minutes.
        v["batch_size"] = Value::from(v["batch_size"].as_u64().unwrap().min(16));
        if v["data"]["kind"] == "idx" {
            v["data"]["limit"] = Value::from(256);
        }
        // An image folder: a few small images in two classes, at most 8 x 8.
        if v["data"]["kind"] == "image-folder" {
            let folder = c.path("images");
            for class in ["a", "b"] {
                std::fs::create_dir_all(folder.join(class)).unwrap();
                for i in 0..4u8 {
                    let img = image::RgbImage::from_fn(10, 9, |x, y| image::Rgb([x as u8 * 20, y as u8 * 25, i * 60]));
                    img.save(folder.join(class).join(format!("{i}.png"))).unwrap();
                }
            }
            v["data"]["path"] = Value::from(s(&folder));
            v["data"]["size"] = Value::from(v["data"]["size"].as_u64().unwrap().min(8));
        }
        // `objective.base` names another run: the residual form needs it (its fields are those of the full form,
        // checked here), the other forms only start from it.
        if v["objective"].get("form").and_then(Value::as_str) == Some("residual") {
            continue;
        }
        if let Some(o) = v["objective"].as_object_mut() {
            o.remove("base");
        }
        let mut leaves = Vec::new();
        numeric_leaves(&v, String::new(), &mut leaves);
        for (li, path) in leaves.iter().enumerate() {
            for (vi, x) in VALUES.iter().chain([&HUGE]).enumerate() {
                let mutant = to_toml(&v, path, *x);
                let name = format!("{stem}_{li}_{vi}");
                let parsed = tilt_train::TrainConfig::parse(&mutant).err().map(|e| format!("{e:#}"));
                mutants += 1;
                failures.extend(check_mutant("train", &c, &name, &mutant, path, parsed));
            }
        }
    }
    report(failures, mutants);
}

/// The reproduce stage configs (`configs/experiments/*.toml`), each numeric value the tiny preset reads (scalars
/// and `tiny` entries), through `tilt reproduce --preset tiny --only <stage>` run from a folder holding the mutated
/// config. About 2,200 runs, so not part of the default test command: `cargo test --test every_field -- --ignored`.
#[test]
#[ignore = "about 2,200 reproduce runs; run with --ignored"]
fn every_numeric_field_of_every_stage_config_is_refused_by_name_or_runs() {
    let c = Case::new();
    let work = c.path("work");
    std::fs::create_dir_all(work.join("configs/experiments")).unwrap();
    let (mut failures, mut mutants) = (Vec::new(), 0);
    let mut stages: Vec<_> = std::fs::read_dir("configs/experiments").unwrap().map(|e| e.unwrap().path()).collect();
    stages.sort();
    for path in stages {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: Value = serde_json::to_value(toml::from_str::<toml::Value>(&text).unwrap()).unwrap();
        let mut leaves = Vec::new();
        numeric_leaves(&v, String::new(), &mut leaves);
        // Only what the tiny preset reads: `fast` and `full` entries (and their list items) are left alone.
        leaves.retain(|p| !p.split('.').any(|k| ["fast", "full"].contains(&k.split('[').next().unwrap_or(k))));
        for (li, leaf) in leaves.iter().enumerate() {
            for (vi, x) in VALUES.iter().chain([&HUGE]).enumerate() {
                mutants += 1;
                std::fs::write(work.join(format!("configs/experiments/{stem}.toml")), to_toml(&v, leaf, *x)).unwrap();
                let out = c.path(&format!("rep_{stem}_{li}_{vi}"));
                let o = std::process::Command::new(env!("CARGO_BIN_EXE_tilt"))
                    .args(["reproduce", "--preset", "tiny", "--only", &stem, "--out", s(&out)])
                    .current_dir(&work)
                    .env("BURN_DEVICE", "flex")
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&o.stderr);
                let panicked = err.contains("panicked") || o.status.code().is_none_or(|k| k == 101);
                if panicked || !(o.status.success() || names_field(&err, leaf)) {
                    let last =
                        err.lines().rfind(|l| l.contains("FAILED") || l.starts_with("Error")).unwrap_or_default();
                    failures.push(format!("{stem}: {leaf} = {x:e}: {last}"));
                }
                let _ = std::fs::remove_dir_all(&out);
            }
        }
        std::fs::remove_file(work.join(format!("configs/experiments/{stem}.toml"))).unwrap();
    }
    report(failures, mutants);
}
