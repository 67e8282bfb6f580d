//! Writing results: CSV samples, JSON summaries and the strength curve.

use crate::commands::sample::{Record, Summary};
use crate::plot::{self, Series};
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

/// A one-line digest of a record for the terminal.
pub fn one_line(r: &Record) -> String {
    let mut s = format!("w = {:<6} {:>6.2} s", crate::commands::sample::w_label(r.w), r.seconds);
    if let Some(m) = &r.mean_reward {
        s += &format!("  E[r] = {:.4} ± {:.4}", m.mean, m.se);
        if let Some(t) = r.target_mean_reward {
            s += &format!(" (E_p_r[r] = {t:.4})");
        }
    }
    if let Some(c) = &r.class {
        s += &format!(
            "  E[1/p(c|Y)] = {:.4} ± {:.4} (1/p(c) = {:.4}), acc = {:.3}",
            c.mean_inv_class_prob.mean, c.mean_inv_class_prob.se, c.inv_class_prior, c.accuracy
        );
    }
    if let (Some(t), Some(m)) = (&r.target, &r.distance_to_target) {
        s += &format!(
            "  to {t}: MMD² = {:.2e} (p = {:.2}), SW = {:.4} (floor {:.4})",
            m.mmd.mmd2, m.mmd.p_value, m.sliced_wasserstein, m.sliced_wasserstein_floor
        );
    }
    if r.non_finite_samples > 0 {
        s += &format!("  NON-FINITE samples: {}", r.non_finite_samples);
    }
    s
}

/// The headline metric against `w`: mean reward when a reward is set, else `E[1/p(c|Y)]`.
pub fn curve_plot(path: &Path, summary: &Summary) -> Result<()> {
    let recs = &summary.records;
    if recs.len() < 2 {
        return Ok(());
    }
    if recs[0].mean_reward.is_some() {
        let pts = recs.iter().map(|r| (r.w, r.mean_reward.unwrap().mean)).collect();
        let mut refs = vec![];
        if let Some(b) = recs[0].base_mean_reward {
            refs.push(("E_p[r] (w = 0, exact)".to_string(), b));
        }
        if let Some(t) = recs[0].target_mean_reward {
            refs.push(("E_p_r[r] (w = 1, exact)".to_string(), t));
        }
        plot::curves(
            path,
            "Mean reward against guidance strength",
            "w",
            "E[r(Y)]",
            &[Series { name: "sampled".into(), points: pts }],
            &refs,
        )
    } else if let Some(c0) = &recs[0].class {
        let pts = recs.iter().filter_map(|r| r.class.as_ref().map(|c| (r.w, c.mean_inv_class_prob.mean))).collect();
        plot::curves(
            path,
            "E[1/p(c|Y)] against guidance strength",
            "w",
            "E[1/p(c|Y)]",
            &[Series { name: "sampled".into(), points: pts }],
            &[("1/p(c) (w = 0, exact)".to_string(), c0.inv_class_prior)],
        )
    } else {
        Ok(())
    }
}
