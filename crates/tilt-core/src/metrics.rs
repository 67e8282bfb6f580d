//! Host-side statistics for samples, in f64.
//!
//! Written here rather than taken from a crate: the common statistics crates (statrs, ndarray-stats) have means
//! and quantiles but no kernel two-sample distances, and these few functions are short, exact and
//! dependency-free. Samples are row-major `[n, d]` slices.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Sample mean and its standard error `s / sqrt(n)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct MeanSe {
    /// The sample mean.
    pub mean: f64,
    /// Its standard error, `sd / sqrt(n)`.
    pub se: f64,
}

/// The mean of `values` with its standard error (NaN standard error for fewer than 2 values).
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

/// A kernel two-sample test: the unbiased `MMD^2_u` with the RBF kernel and its permutation p-value.
///
/// `MMD^2_u` is signed: two samples of one law give values scattered around 0, negative about half the time, so
/// it is reported as it is (never clipped to 0). The p-value is the fraction of label permutations of the
/// pooled rows whose statistic reaches the observed one: small means the two laws differ detectably.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct MmdTest {
    /// The unbiased (signed) squared MMD estimate.
    pub mmd2: f64,
    /// The permutation p-value of `mmd2` (no difference detected above 0.05).
    pub p_value: f64,
    /// How many permutations the p-value used.
    pub permutations: usize,
    /// Rows of each sample used (the first ones).
    pub rows: usize,
}

/// [`MmdTest`] of `x` against `y` with `exp(-|a-b|^2 / (2 h))`, `h` a squared bandwidth, on at most `max_rows`
/// rows of each sample and `permutations` random relabellings (seeded).
///
/// Panics when either sample has fewer than 2 rows (the U-statistic is undefined).
pub fn mmd_test(
    x: &[f32],
    y: &[f32],
    d: usize,
    bandwidth_sq: f64,
    max_rows: usize,
    permutations: usize,
    seed: u64,
) -> MmdTest {
    let rows = (x.len() / d).min(y.len() / d).min(max_rows);
    assert!(rows >= 2, "the MMD needs at least 2 rows per sample, got {rows}");
    let pooled: Vec<&[f32]> = x.chunks_exact(d).take(rows).chain(y.chunks_exact(d).take(rows)).collect();
    let m = pooled.len();
    let mut kernel = vec![0.0f64; m * m];
    for i in 0..m {
        for j in 0..i {
            let k = (-sq_dist(pooled[i], pooled[j]) / (2.0 * bandwidth_sq)).exp();
            kernel[i * m + j] = k;
            kernel[j * m + i] = k;
        }
    }
    // MMD^2_u of the split "first `rows` labels vs the rest" under a relabelling `perm` of the pooled rows.
    let statistic = |perm: &[usize]| {
        let (a, b) = perm.split_at(rows);
        let block = |p: &[usize], q: &[usize]| {
            p.iter().map(|&i| q.iter().map(|&j| kernel[i * m + j]).sum::<f64>()).sum::<f64>()
        };
        let pairs = (rows * (rows - 1)) as f64;
        // Diagonal entries are 0, so the within-sample sums are the U-statistic's off-diagonal sums.
        block(a, a) / pairs + block(b, b) / pairs - 2.0 * block(a, b) / (rows * rows) as f64
    };
    let identity: Vec<usize> = (0..m).collect();
    let observed = statistic(&identity);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut perm = identity;
    let reached = (0..permutations)
        .filter(|_| {
            perm.shuffle(&mut rng);
            statistic(&perm) >= observed
        })
        .count();
    MmdTest { mmd2: observed, p_value: (1 + reached) as f64 / (1 + permutations) as f64, permutations, rows }
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

/// How far a sample is from a law known through exact samples, each distance beside its noise floor.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct TargetDistance {
    /// The MMD two-sample test against the reference.
    pub mmd: MmdTest,
    /// The sliced Wasserstein distance to the reference (compare with its floor).
    pub sliced_wasserstein: f64,
    /// The same sliced Wasserstein between an independent exact sample of the sample's size and the reference:
    /// what a perfect sampler scores. A value near it is no evidence of a difference, nor of agreement.
    pub sliced_wasserstein_floor: f64,
}

/// [`TargetDistance`] of `x` to the law of `reference`, with `fresh` an independent exact sample of that law
/// (its rows beyond those of `x` are ignored). RBF bandwidth: the median heuristic on `reference`.
pub fn distance_to_exact(x: &[f32], reference: &[f32], fresh: &[f32], d: usize, seed: u64) -> TargetDistance {
    let h = median_sq_distance(reference, d);
    let n = x.len().min(fresh.len());
    TargetDistance {
        mmd: mmd_test(x, reference, d, h, 1000, 200, seed),
        sliced_wasserstein: sliced_wasserstein(x, reference, d, 64, seed),
        sliced_wasserstein_floor: sliced_wasserstein(&fresh[..n], reference, d, 64, seed),
    }
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
    fn mmd_test_separates_laws_and_keeps_its_sign() {
        let x = gaussian(400, 2, 0.0, 1);
        let h = median_sq_distance(&x, 2);
        // Same law: the p-value is uniform, so over several draws it is rarely small and MMD^2_u takes both signs.
        let same: Vec<MmdTest> =
            (0..8).map(|s| mmd_test(&x, &gaussian(400, 2, 0.0, 10 + s), 2, h, 400, 99, s)).collect();
        assert!(same.iter().any(|t| t.mmd2 < 0.0) && same.iter().any(|t| t.mmd2 > 0.0), "{same:?}");
        assert!(same.iter().filter(|t| t.p_value < 0.05).count() <= 2, "{same:?}");
        // A shift of half a standard deviation: detected.
        let shifted = mmd_test(&x, &gaussian(400, 2, 0.5, 3), 2, h, 400, 99, 0);
        assert!(shifted.mmd2 > 0.0 && shifted.p_value <= 0.01, "{shifted:?}");
    }
}
