//! The Fréchet distance between Gaussians fitted to two sets of features (FID when the features are
//! Inception-v3's; here the independent evaluator's):
//! `|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})`.
//!
//! The symmetric form of the cross term keeps every matrix square root that of a symmetric positive
//! semi-definite matrix, i.e. an eigendecomposition, unlike `sqrtm(S_a S_b)`. The eigendecomposition is a
//! cyclic Jacobi sweep written here rather than nalgebra's: adding nalgebra changed the features of
//! dependencies it shares with Burn and rebuilt all of Burn (about 25 minutes on 2 cores), for 30 lines of
//! numerics on matrices of a few dozen rows.

/// A `d x d` row-major matrix.
type Matrix = Vec<f64>;

/// Mean and covariance (divisor `n - 1`) of `n` rows of `d` features.
pub fn moments(x: &[f32], d: usize) -> (Vec<f64>, Matrix) {
    let n = x.len() / d;
    assert!(n >= 2, "moments need at least 2 rows");
    let mut mean = vec![0.0; d];
    for row in x.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64 / n as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for row in x.chunks_exact(d) {
        for i in 0..d {
            let a = row[i] as f64 - mean[i];
            for j in 0..d {
                cov[i * d + j] += a * (row[j] as f64 - mean[j]) / (n as f64 - 1.0);
            }
        }
    }
    (mean, cov)
}

fn matmul(a: &Matrix, b: &Matrix, d: usize) -> Matrix {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                c[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    c
}

fn trace(a: &Matrix, d: usize) -> f64 {
    (0..d).map(|i| a[i * d + i]).sum()
}

/// Eigenvalues and eigenvectors (columns of the returned matrix) of a symmetric matrix, by cyclic Jacobi
/// rotations until the off-diagonal mass is below 1e-22 of the total (or 100 sweeps).
fn symmetric_eigen(a: &Matrix, d: usize) -> (Vec<f64>, Matrix) {
    let mut a = a.clone();
    let mut v: Matrix = (0..d * d).map(|k| if k / d == k % d { 1.0 } else { 0.0 }).collect();
    let total: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _ in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j].powi(2))
            .sum();
        if off <= 1e-22 * total {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// The symmetric PSD square root (negative eigenvalues from rounding are clipped to 0).
fn sqrt_psd(s: &Matrix, d: usize) -> Matrix {
    let (values, v) = symmetric_eigen(s, d);
    let mut r = vec![0.0; d * d];
    for (k, l) in values.iter().enumerate() {
        let root = l.max(0.0).sqrt();
        for i in 0..d {
            for j in 0..d {
                r[i * d + j] += v[i * d + k] * root * v[j * d + k];
            }
        }
    }
    r
}

/// The Fréchet distance between `N(mu_a, s_a)` and `N(mu_b, s_b)` in dimension `d`.
pub fn frechet_from_moments(mu_a: &[f64], s_a: &Matrix, mu_b: &[f64], s_b: &Matrix, d: usize) -> f64 {
    let root_a = sqrt_psd(s_a, d);
    let middle = matmul(&matmul(&root_a, s_b, d), &root_a, d);
    let symmetric: Matrix = (0..d * d).map(|k| 0.5 * (middle[k] + middle[(k % d) * d + k / d])).collect();
    let cross: f64 = symmetric_eigen(&symmetric, d).0.iter().map(|l| l.max(0.0).sqrt()).sum();
    let mean_gap: f64 = mu_a.iter().zip(mu_b).map(|(a, b)| (a - b).powi(2)).sum();
    mean_gap + trace(s_a, d) + trace(s_b, d) - 2.0 * cross
}

/// The Fréchet distance between the Gaussians fitted to feature rows `a` and `b` (`d` features each).
pub fn frechet_distance(a: &[f32], b: &[f32], d: usize) -> f64 {
    let ((mu_a, s_a), (mu_b, s_b)) = (moments(a, d), moments(b, d));
    frechet_from_moments(&mu_a, &s_a, &mu_b, &s_b, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms() {
        // Commuting (diagonal) covariances: |dmu|^2 + sum (sqrt a_i - sqrt b_i)^2.
        let (mu_a, mu_b) = ([1.0, -2.0, 0.5], [0.0, 1.0, 0.5]);
        let diag = |v: [f64; 3]| (0..9).map(|k| if k / 3 == k % 3 { v[k / 3] } else { 0.0 }).collect::<Matrix>();
        let (s_a, s_b) = (diag([4.0, 1.0, 9.0]), diag([1.0, 1.0, 0.25]));
        let want = 1.0 + 9.0 + (2.0f64 - 1.0).powi(2) + (3.0f64 - 0.5).powi(2);
        assert!((frechet_from_moments(&mu_a, &s_a, &mu_b, &s_b, 3) - want).abs() < 1e-10);
        // Same law: 0. Scaled covariance s_b = k^2 s_a: (1 - k)^2 tr(s_a), whatever the rotation.
        let s = vec![2.0, 0.8, 0.8, 1.0];
        let m = [0.3, -0.1];
        assert!(frechet_from_moments(&m, &s, &m, &s, 2).abs() < 1e-10);
        let k = 3.0;
        let scaled: Matrix = s.iter().map(|v| v * k * k).collect();
        let d = frechet_from_moments(&m, &s, &m, &scaled, 2);
        assert!((d - (1.0 - k).powi(2) * 3.0).abs() < 1e-10, "{d}");
        // A non-commuting 2 x 2 pair, against tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for 2 x 2 PSD M,
        // M = S_a^{1/2} S_b S_a^{1/2}, det M = det S_a det S_b.
        let s_b = vec![1.0, -0.3, -0.3, 0.5];
        let root = sqrt_psd(&s, 2);
        assert!(matmul(&root, &root, 2).iter().zip(&s).all(|(a, b)| (a - b).abs() < 1e-12));
        let mm = matmul(&matmul(&root, &s_b, 2), &root, 2);
        let det = |x: &Matrix| x[0] * x[3] - x[1] * x[2];
        let tr_sqrt = (trace(&mm, 2) + 2.0 * (det(&s) * det(&s_b)).sqrt()).sqrt();
        let want = 3.0 + 1.5 - 2.0 * tr_sqrt;
        assert!((frechet_from_moments(&[0.0, 0.0], &s, &[0.0, 0.0], &s_b, 2) - want).abs() < 1e-10);
    }

    #[test]
    fn sample_moments_and_a_larger_eigenproblem() {
        let x = [1.0f32, 2.0, 3.0, 6.0, 5.0, 10.0];
        let (mean, cov) = moments(&x, 2);
        assert_eq!(mean, vec![3.0, 6.0]);
        assert_eq!(cov, vec![4.0, 8.0, 8.0, 16.0]);
        assert!(frechet_distance(&x, &x, 2).abs() < 1e-9);
        // 12 x 12 symmetric matrix: V diag(l) V^T reproduces it.
        let d = 12;
        let a: Matrix = (0..d * d)
            .map(|k| ((k / d + 1) * (k % d + 1)) as f64 % 7.0 + if k / d == k % d { 5.0 } else { 0.0 })
            .collect();
        let a: Matrix = (0..d * d).map(|k| 0.5 * (a[k] + a[(k % d) * d + k / d])).collect();
        let (l, v) = symmetric_eigen(&a, d);
        for i in 0..d {
            for j in 0..d {
                let back: f64 = (0..d).map(|k| v[i * d + k] * l[k] * v[j * d + k]).sum();
                assert!((back - a[i * d + j]).abs() < 1e-9, "({i}, {j})");
            }
        }
    }
}
