//! Backend selection: cargo features decide which backends are compiled in; `--device` (or `BURN_DEVICE`)
//! picks one of them at run time.

use anyhow::{Result, bail};
use burn::prelude::*;

/// Device names accepted by `--device`, with whether this build has them.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "flex") {
        v.push("flex");
    }
    if cfg!(feature = "ndarray") {
        v.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "vulkan") {
        v.push("vulkan");
    }
    if cfg!(feature = "metal") {
        v.push("metal");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// The device for `name`; `None` means `BURN_DEVICE` if set, else the first compiled backend
/// (flex, ndarray, wgpu). Never calls `Device::default()`, which panics when nothing matches.
pub fn select(name: Option<&str>) -> Result<Device> {
    let env = std::env::var("BURN_DEVICE").ok().filter(|s| !s.is_empty());
    let compiled = compiled_backends();
    let Some(name) = name.map(str::to_owned).or(env).or_else(|| compiled.first().map(|s| s.to_string())) else {
        bail!("no backend compiled in: build with --features flex, ndarray, wgpu or cuda");
    };
    let name = name.to_ascii_lowercase();
    if !compiled.contains(&name.as_str()) {
        let known = ["flex", "ndarray", "wgpu", "vulkan", "metal", "cuda"];
        if known.contains(&name.as_str()) {
            bail!(
                "--device {name}: this build was compiled without the `{name}` backend (compiled in: {}). \
                 Rebuild with `cargo build --features {name}`.",
                compiled.join(", ")
            );
        }
        bail!("--device {name}: unknown backend; expected one of {}", compiled.join(", "));
    }
    Ok(make(&name))
}

#[allow(deprecated, unreachable_code, unused_variables)] // Device::ndarray is deprecated in burn 0.22
fn make(name: &str) -> Device {
    match name {
        #[cfg(feature = "flex")]
        "flex" => Device::flex(),
        #[cfg(feature = "ndarray")]
        "ndarray" => Device::ndarray(),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "vulkan")]
        "vulkan" => Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "metal")]
        "metal" => Device::metal(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(burn::tensor::DeviceIndex::Default),
        _ => unreachable!("checked against compiled_backends"),
    }
}

/// A short human name of the device (backend and adapter), for summaries and reports.
pub fn describe(device: &Device) -> String {
    #[cfg(feature = "wgpu")]
    if let Some(id) = device.identity() {
        return format!("{device:?} ({})", id.name);
    }
    format!("{device:?}")
}
