#![warn(missing_docs)]
//! tilt-sampler: backward samplers and guidance terms.
//!
//! - [`samplers`]: Euler-Maruyama, exponential integrator, SDE-DPM-Solver-1, DDPM ancestral, probability-flow Heun
//!   and DDIM, DPM-Solver++ 2M and 2M SDE, each a small [`samplers::Solver`] over one `score(x, t, step)` closure,
//!   driven by one loop;
//! - [`grid`]: time grids (uniform in `t`, uniform in OU time, geometric near 0);
//! - [`smc`]: sequential Monte Carlo steering toward `p r^w` (particles, reward potentials, a base or guided
//!   proposal, resampling, independent groups for the standard error);
//! - [`best_of_n`]: keep the best of `N` candidates by reward;
//! - [`noise`]: seeded Gaussian noise, from a host RNG (same numbers on every backend) or the device RNG;
//! - [`guidance`]: the one rule `s_base + sum_i w_i(t) g_i` and its terms (reward, CFG and its variants,
//!   classifier, the training-free family, autoguidance, negative class, CFG++).

/// Best-of-N selection by reward.
pub mod best_of_n;
/// Checks of the theory along a chain (the improvement identity) and perfect-sampler references.
pub mod diagnostics;
/// Time grids.
pub mod grid;
/// The guided score and its terms.
pub mod guidance;
/// Seeded Gaussian noise.
pub mod noise;
/// The backward samplers and the loop that drives them.
pub mod samplers;
/// Sequential Monte Carlo steering.
pub mod smc;

pub use grid::TimeGrid;
pub use guidance::{GuidanceTerm, GuidedScore, WeightSchedule};
pub use noise::NoiseSource;
pub use samplers::{DEFAULT_T_MAX, DEFAULT_T_MIN, GaussianStep, Sampler, SamplerKind};
pub use smc::{Potential, Proposal, Smc, SmcOutput};
