//! `report.md`: every stage's reading, tables, figures, config and seed, with the version and backend.

use super::{Outcome, Preset, StageOutput};
use anyhow::Result;
use burn::prelude::*;
use std::fmt::Write;
use std::path::Path;

fn table_md(t: &super::Table) -> String {
    let mut s = format!(
        "*{}*\n\n| {} |\n|{}|\n",
        t.caption,
        t.header.join(" | "),
        t.header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in &t.rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

fn stage_md(s: &StageOutput, status: &str) -> String {
    let mut m = format!(
        "## {}\n\n`{}` — {status}, {:.1} s, preset `{:?}`, seed {}\n\n{}\n\n",
        s.title, s.name, s.seconds, s.preset, s.seed, s.reading
    );
    for (file, caption) in &s.figures {
        let _ = writeln!(m, "![{caption}]({}/{file})\n", s.name);
    }
    for t in &s.tables {
        m += &table_md(t);
        m += "\n";
    }
    let cfg = serde_json::to_string_pretty(&s.config).unwrap_or_default();
    let _ = writeln!(m, "<details><summary>Config</summary>\n\n```json\n{cfg}\n```\n</details>\n");
    m
}

pub fn write(path: &Path, preset: Preset, device: &Device, outcomes: &[Outcome]) -> Result<()> {
    let mut md = format!(
        "# tilt reproduce: report\n\ntilt {} · backend {} · preset `{preset:?}`\n\nEach section is one experiment of docs/theory.md §7; its files are in the folder of the same name.\n\n",
        env!("CARGO_PKG_VERSION"),
        crate::device::describe(device)
    );
    md += "| experiment | status | seconds |\n|---|---|---|\n";
    for o in outcomes {
        let (name, status, secs) = match o {
            Outcome::Done(s) => (s.name.clone(), "done".to_string(), fmt_secs(s.seconds)),
            Outcome::Skipped(s) => {
                (s.name.clone(), "complete, skipped (use --force to re-run)".to_string(), fmt_secs(s.seconds))
            }
            Outcome::Failed(n, _) => (n.clone(), "**FAILED**".to_string(), String::new()),
        };
        let _ = writeln!(md, "| {name} | {status} | {secs} |");
    }
    md += "\n";
    for o in outcomes {
        md += &match o {
            Outcome::Done(s) => stage_md(s, "ran"),
            Outcome::Skipped(s) => stage_md(s, "from a previous run"),
            Outcome::Failed(n, e) => format!("## {n}\n\n**This stage failed:**\n\n```text\n{e}\n```\n\n"),
        };
    }
    crate::output::write_atomic(path, md.as_bytes())
}

fn fmt_secs(s: f64) -> String {
    format!("{s:.1}")
}
