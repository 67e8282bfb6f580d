//! The discrete (DDPM) schedule against diffusers' own tables: `../shared/fixtures/diffusers-unet/schedules.safetensors`
//! holds the f32 `betas` and `alphas_cumprod` diffusers 0.42.1 computes for each `beta_schedule`, made independently
//! of tilt. tilt's knots `t = (k + 1) / N` must carry those values.

use tilt_core::Schedule;
use tilt_core::schedule::BetaSchedule;

fn fixture() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/diffusers-unet/schedules.safetensors");
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn table(bytes: &[u8], name: &str) -> Vec<f32> {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("a safetensors file");
    let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

#[test]
fn knots_carry_diffusers_alphas_cumprod() {
    let bytes = fixture();
    for (name, beta_schedule, beta_start, beta_end, tolerance) in [
        // linear and scaled-linear: the same f32 linspace and f64-accumulated cumprod as torch, so off by
        // at most two f32 roundings (torch's vectorised linspace and cumprod round differently in places).
        ("linear", BetaSchedule::Linear, 1e-4, 0.02, 3e-7),
        ("scaled_linear", BetaSchedule::ScaledLinear, 0.00085, 0.012, 3e-7),
        // squaredcos-cap-v2: betas computed in f64 by both; the same f32 storage.
        ("squaredcos_cap_v2", BetaSchedule::SquaredcosCapV2, 1e-4, 0.02, 3e-7),
    ] {
        let reference = table(&bytes, &format!("{name}.alphas_cumprod"));
        let s = Schedule::Discrete { beta_schedule, beta_start, beta_end, num_train_timesteps: reference.len() };
        s.validate().unwrap();
        let n = reference.len() as f64;
        let worst = reference
            .iter()
            .enumerate()
            .map(|(k, &ab)| (s.alpha_sq((k + 1) as f64 / n) / ab as f64 - 1.0).abs())
            .fold(0.0, f64::max);
        assert!(worst < tolerance, "{name}: alpha_bar off diffusers' by {worst:e} (relative)");
        // The network sees the integer timestep at the knots.
        assert!((s.timestep(500.0 / n).unwrap() - 499.0).abs() < 1e-9);
    }
}
