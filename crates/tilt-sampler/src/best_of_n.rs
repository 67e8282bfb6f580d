//! Best-of-N: draw `N` candidates per sample and keep the one with the highest reward (the search baseline reward
//! papers compare against). For a reward `r` continuous under `p`, the kept sample has density
//! `N F(r(y))^{N-1} p(y)`, `F` the law of `r(X)`: a tilt toward high reward whose strength grows like `ln N`, at `N`
//! times the cost of one sample.

use burn::prelude::*;

/// From `groups * candidates` rows, each consecutive block of `candidates` rows one group, the index of the row with
/// the largest log reward in every group (the first on ties; a NaN reward is never preferred to a number).
pub fn best_of_n_indices(log_rewards: &[f64], candidates: usize) -> Vec<usize> {
    assert!(candidates >= 1 && log_rewards.len().is_multiple_of(candidates), "whole groups of candidates");
    log_rewards
        .chunks_exact(candidates)
        .enumerate()
        .map(|(g, block)| {
            let best = block.iter().enumerate().fold(0, |best, (j, v)| {
                let b = block[best];
                if v > &b || (b.is_nan() && !v.is_nan()) { j } else { best }
            });
            g * candidates + best
        })
        .collect()
}

/// The rows of `x` (`[groups * candidates, d]`) that [`best_of_n_indices`] keeps, `[groups, d]`.
pub fn best_of_n(x: Tensor<2>, log_rewards: &[f64], candidates: usize) -> Tensor<2> {
    let idx: Vec<i64> = best_of_n_indices(log_rewards, candidates).into_iter().map(|i| i as i64).collect();
    let len = idx.len();
    let device = x.device();
    x.select(0, Tensor::<1, Int>::from_data(TensorData::new(idx, [len]), &device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_of_each_group() {
        let r = [0.1, 3.0, -1.0, f64::NAN, 2.0, 2.0, f64::NAN, f64::NAN, f64::NAN];
        assert_eq!(best_of_n_indices(&r, 3), vec![1, 4, 6]);
        assert_eq!(best_of_n_indices(&r, 1), (0..9).collect::<Vec<_>>());
    }
}
