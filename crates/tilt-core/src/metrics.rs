//! Host-side statistics for samples, in f64.
//!
//! Written here rather than taken from a crate: the common statistics crates (statrs, ndarray-stats) have means
//! and quantiles but no kernel two-sample distances, and these few functions are short, exact and
//! dependency-free. Samples are row-major `[n, d]` slices.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Sample mean and its standard error `s / sqrt(n)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct MeanSe {
    pub mean: f64,
    pub se: f64,
}

pub fn mean_se(values: &[f64]) -> MeanSe {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    MeanSe { mean, se: (var / n).sqrt() }
}

/// Empirical quantiles (linear interpolation between order statistics, as numpy's default).
pub fn quantiles(values: &[f64], qs: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    qs.iter()
        .map(|&q| {
            let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        })
        .collect()
}

/// Per-coordinate sample means of `[n, d]` rows.
pub fn column_means(x: &[f32], d: usize) -> Vec<f64> {
    let n = x.len() / d;
    let mut m = vec![0.0; d];
    for row in x.chunks_exact(d) {
        for (a, &b) in m.iter_mut().zip(row) {
            *a += b as f64;
        }
    }
    m.iter().map(|v| v / n as f64).collect()
}

/// Median of pairwise squared distances within `x` (on at most the first 1000 rows): the usual RBF bandwidth.
pub fn median_sq_distance(x: &[f32], d: usize) -> f64 {
    let rows: Vec<&[f32]> = x.chunks_exact(d).take(1000).collect();
    let mut dists = Vec::with_capacity(rows.len() * rows.len() / 2);
    for i in 0..rows.len() {
        for j in 0..i {
            dists.push(sq_dist(rows[i], rows[j]));
        }
    }
    quantiles(&dists, &[0.5])[0].max(1e-12)
}

fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum()
}

/// Maximum mean discrepancy with the RBF kernel `exp(-|x-y|^2 / (2 h))`, `h` a squared bandwidth.
///
/// Returns `sqrt(max(0, MMD^2_u))` from the unbiased U-statistic, so two samples of one law score near 0.
/// Uses at most `max_rows` rows of each sample (the first ones) to bound the O(n m) cost.
pub fn mmd_rbf(x: &[f32], y: &[f32], d: usize, bandwidth_sq: f64, max_rows: usize) -> f64 {
    let xr: Vec<&[f32]> = x.chunks_exact(d).take(max_rows).collect();
    let yr: Vec<&[f32]> = y.chunks_exact(d).take(max_rows).collect();
    let k = |a: &[f32], b: &[f32]| (-sq_dist(a, b) / (2.0 * bandwidth_sq)).exp();
    let within = |r: &[&[f32]]| {
        let mut s = 0.0;
        for i in 0..r.len() {
            for j in 0..i {
                s += k(r[i], r[j]);
            }
        }
        2.0 * s / (r.len() * (r.len() - 1)) as f64
    };
    let mut cross = 0.0;
    for a in &xr {
        for b in &yr {
            cross += k(a, b);
        }
    }
    let mmd2 = within(&xr) + within(&yr) - 2.0 * cross / (xr.len() * yr.len()) as f64;
    mmd2.max(0.0).sqrt()
}

/// Sliced 2-Wasserstein distance: the root mean over `n_proj` random directions of the squared 1-D
/// W2 distance between the projected samples (quantile matching on a common grid of levels).
pub fn sliced_wasserstein(x: &[f32], y: &[f32], d: usize, n_proj: usize, seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let m = (x.len() / d).min(y.len() / d);
    let levels: Vec<f64> = (0..m).map(|i| (i as f64 + 0.5) / m as f64).collect();
    let mut total = 0.0;
    for _ in 0..n_proj {
        let mut dir: Vec<f64> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
        let norm = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
        dir.iter_mut().for_each(|v| *v /= norm);
        let project = |s: &[f32]| -> Vec<f64> {
            s.chunks_exact(d).map(|r| r.iter().zip(&dir).map(|(a, b)| *a as f64 * b).sum()).collect()
        };
        let qx = quantiles(&project(x), &levels);
        let qy = quantiles(&project(y), &levels);
        total += qx.iter().zip(&qy).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / m as f64;
    }
    (total / n_proj as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn gaussian(n: usize, d: usize, shift: f32, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * d).map(|_| rng.sample::<f32, _>(StandardNormal) + shift).collect()
    }

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantiles(&[3.0, 1.0, 2.0, 4.0], &[0.0, 0.5, 1.0]), vec![1.0, 2.5, 4.0]);
    }

    #[test]
    fn sliced_wasserstein_of_a_shift_is_the_shift() {
        // For a shift by c in every coordinate, the projection on a unit direction v shifts by c * sum(v);
        // E[(sum v)^2] = 1 for v uniform on the sphere in d = 2... (E[v1 v2] = 0, E[v1^2 + v2^2] = 1), so SW ≈ c.
        let (x, y) = (gaussian(4000, 2, 0.0, 1), gaussian(4000, 2, 1.0, 2));
        let sw = sliced_wasserstein(&x, &y, 2, 200, 3);
        assert!((sw - 1.0).abs() < 0.1, "sw = {sw}");
        let same = sliced_wasserstein(&x, &gaussian(4000, 2, 0.0, 4), 2, 200, 3);
        assert!(same < 0.08, "same-law sw = {same}");
    }

    #[test]
    fn mmd_separates_laws() {
        let x = gaussian(800, 2, 0.0, 1);
        let h = median_sq_distance(&x, 2);
        let same = mmd_rbf(&x, &gaussian(800, 2, 0.0, 2), 2, h, 800);
        let shifted = mmd_rbf(&x, &gaussian(800, 2, 0.5, 3), 2, h, 800);
        assert!(same < 0.05 && shifted > 0.15, "same {same}, shifted {shifted}");
    }
}
