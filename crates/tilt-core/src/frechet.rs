//! The Fréchet distance between Gaussians fitted to two sets of features (FID when the features are
//! Inception-v3's; here the independent evaluator's):
//! `|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})`.
//!
//! The symmetric form of the cross term keeps every matrix square root that of a symmetric positive
//! semi-definite matrix (an eigendecomposition), unlike `sqrtm(S_a S_b)`. Eigendecompositions come from nalgebra.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Mean and covariance (divisor `n - 1`) of `n` rows of `d` features.
pub fn moments(x: &[f32], d: usize) -> (DVector<f64>, DMatrix<f64>) {
    let n = x.len() / d;
    assert!(n >= 2, "moments need at least 2 rows");
    let m = DMatrix::from_row_iterator(n, d, x.iter().map(|&v| v as f64));
    let mean = m.row_mean().transpose();
    let centred = DMatrix::from_fn(n, d, |i, j| m[(i, j)] - mean[j]);
    let cov = centred.transpose() * &centred / (n as f64 - 1.0);
    (mean, cov)
}

/// The symmetric PSD square root (negative eigenvalues from rounding are clipped to 0).
fn sqrt_psd(s: &DMatrix<f64>) -> DMatrix<f64> {
    let eig = SymmetricEigen::new(s.clone());
    let root = eig.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&root) * eig.eigenvectors.transpose()
}

/// The Fréchet distance between `N(mu_a, s_a)` and `N(mu_b, s_b)`.
pub fn frechet_from_moments(mu_a: &DVector<f64>, s_a: &DMatrix<f64>, mu_b: &DVector<f64>, s_b: &DMatrix<f64>) -> f64 {
    let root_a = sqrt_psd(s_a);
    let middle = &root_a * s_b * &root_a;
    let middle = (&middle + middle.transpose()) / 2.0;
    let cross: f64 = SymmetricEigen::new(middle).eigenvalues.iter().map(|l| l.max(0.0).sqrt()).sum();
    (mu_a - mu_b).norm_squared() + s_a.trace() + s_b.trace() - 2.0 * cross
}

/// The Fréchet distance between the Gaussians fitted to feature rows `a` and `b` (`d` features each).
pub fn frechet_distance(a: &[f32], b: &[f32], d: usize) -> f64 {
    let ((mu_a, s_a), (mu_b, s_b)) = (moments(a, d), moments(b, d));
    frechet_from_moments(&mu_a, &s_a, &mu_b, &s_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms() {
        // Commuting (diagonal) covariances: |dmu|^2 + sum (sqrt a_i - sqrt b_i)^2.
        let (mu_a, mu_b) = (DVector::from_vec(vec![1.0, -2.0, 0.5]), DVector::from_vec(vec![0.0, 1.0, 0.5]));
        let s_a = DMatrix::from_diagonal(&DVector::from_vec(vec![4.0, 1.0, 9.0]));
        let s_b = DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 1.0, 0.25]));
        let want = 1.0 + 9.0 + 0.0 + (2.0f64 - 1.0).powi(2) + 0.0 + (3.0f64 - 0.5).powi(2);
        assert!((frechet_from_moments(&mu_a, &s_a, &mu_b, &s_b) - want).abs() < 1e-10);
        // Same law: 0. Scaled covariance s_b = k^2 s_a: (1 - k)^2 tr(s_a), whatever the rotation.
        let s = DMatrix::from_row_slice(2, 2, &[2.0, 0.8, 0.8, 1.0]);
        assert!(frechet_from_moments(&mu_a.rows(0, 2).into(), &s, &mu_a.rows(0, 2).into(), &s).abs() < 1e-10);
        let k = 3.0;
        let d = frechet_from_moments(&mu_b.rows(0, 2).into(), &s, &mu_b.rows(0, 2).into(), &(&s * (k * k)));
        assert!((d - (1.0 - k).powi(2) * s.trace()).abs() < 1e-10, "{d}");
        // Non-commuting 2 x 2 pair, against the trace of the square root in closed form:
        // tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for a 2 x 2 PSD M, with M = S_a^{1/2} S_b S_a^{1/2}.
        let s_b = DMatrix::from_row_slice(2, 2, &[1.0, -0.3, -0.3, 0.5]);
        let m = sqrt_psd(&s) * &s_b * sqrt_psd(&s);
        let tr_sqrt = (m.trace() + 2.0 * (s.determinant() * s_b.determinant()).sqrt()).sqrt();
        let zero = DVector::zeros(2);
        let want = s.trace() + s_b.trace() - 2.0 * tr_sqrt;
        assert!((frechet_from_moments(&zero, &s, &zero, &s_b) - want).abs() < 1e-10);
    }

    #[test]
    fn sample_moments() {
        let x = [1.0f32, 2.0, 3.0, 6.0, 5.0, 10.0];
        let (mean, cov) = moments(&x, 2);
        assert_eq!(mean.as_slice(), &[3.0, 6.0]);
        assert_eq!(cov.as_slice(), &[4.0, 8.0, 8.0, 16.0]);
        assert!(frechet_distance(&x, &x, 2).abs() < 1e-9);
    }
}
