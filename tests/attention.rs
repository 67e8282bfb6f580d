//! The attention perturbations of PAG, SEG and SLG on a loaded diffusers U-Net, each against its defining property:
//! an identity attention map (each pixel outputs its own projected value), a blurred query (an independent
//! reflected-border convolution; the wide limit makes every pixel attend alike), a skipped layer (its input).

mod common;

use burn::prelude::*;
use common::*;
use std::path::Path;
use tilt_core::attention::{AttentionPerturbation, PerturbedAttention, blur_matrix};
use tilt_core::tensor_ext;
use tilt_models::diffusers::blocks::{Attention, blur_tokens};
use tilt_models::diffusers::{DiffusersFiles, UNet2D, load_unet, read_config};

fn fixture_unet() -> UNet2D {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers/tiny-fashion-classcond-pipeline");
    let files = DiffusersFiles::find(&dir).unwrap();
    let config = read_config(&files.config).unwrap();
    load_unet(&config, &files.weights, &device()).unwrap()
}

fn input(n: usize, c: usize, h: usize, w: usize) -> Tensor<4> {
    let v: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0).collect();
    Tensor::<1>::from_data(TensorData::new(v, [n * c * h * w]), &device()).reshape([n, c, h, w])
}

fn flat(t: Tensor<4>) -> Vec<f32> {
    let [a, b, c, d] = t.dims();
    tensor_ext::to_vec(t.reshape([a, b * c * d]))
}

fn mid(unet: &UNet2D) -> &Attention {
    &unet.mid_block.attentions[0]
}

#[test]
fn layers_are_named_as_diffusers_names_them_and_selected_by_prefix() {
    let unet = fixture_unet();
    let names = unet.attention_layers();
    // Up blocks have one residual block (and attention) more than down blocks.
    assert_eq!(names, ["down.block_1.attentions_0", "mid", "up.block_1.attentions_0", "up.block_1.attentions_1"]);
    let p = PerturbedAttention::select(AttentionPerturbation::Skip, &names, &["up".into(), "mid".into()]).unwrap();
    assert_eq!(p.selected, [false, true, true, true]);
    let err = PerturbedAttention::select(AttentionPerturbation::Skip, &names, &["down.block_0".into()]).unwrap_err();
    assert!(err.contains("\"down.block_0\"") && err.contains("mid"), "{err}");
    // "mid" must not select a layer that merely starts with the letters (a prefix ends at a dot).
    let err = PerturbedAttention::select(AttentionPerturbation::Skip, &names, &["mi".into()]).unwrap_err();
    assert!(err.contains("\"mi\""), "{err}");
}

#[test]
fn identity_attention_outputs_each_pixels_projected_value() {
    let unet = fixture_unet();
    let a = mid(&unet);
    let x = input(2, 32, 7, 7);
    let got = flat(a.forward_perturbed(x.clone(), Some(AttentionPerturbation::Identity)));
    // By hand: GroupNorm, the value projection, the output projection, the residual (the middle block's rescale is 1).
    let normed = a.group_norm.as_ref().unwrap().forward(x.clone());
    let tokens = normed.reshape([2, 32, 49]).swap_dims(1, 2);
    let by_hand = a.to_out[0].forward(a.to_v.forward(tokens)).swap_dims(1, 2).reshape([2, 32, 7, 7]) + x.clone();
    assert!(relative_error(&got, &flat(by_hand)) < 1e-6);
    let plain = flat(a.forward(x.clone()));
    assert!(relative_error(&got, &plain) > 1e-3, "the identity map changed nothing");
    // SLG: a skipped layer passes its input through.
    assert_eq!(flat(a.forward_perturbed(x.clone(), Some(AttentionPerturbation::Skip))), flat(x));
}

#[test]
fn the_blurred_query_is_a_reflected_gaussian_blur_and_its_wide_limit_attends_alike() {
    // blur_tokens against a direct convolution with PyTorch's reflect padding, written independently here.
    let (n, h, w, c) = (2, 7, 5, 3);
    let tokens: Vec<f32> = (0..n * h * w * c).map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0).collect();
    let sigma = 0.8;
    let got = tensor_ext::to_vec(
        blur_tokens(
            Tensor::<1>::from_data(TensorData::new(tokens.clone(), [n * h * w * c]), &device()).reshape([n, h * w, c]),
            h,
            w,
            sigma,
        )
        .reshape([n * h * w, c]),
    );
    let size = {
        let s = (6.0 * sigma).ceil() as usize + 1;
        if s.is_multiple_of(2) { s - 1 } else { s }
    };
    let half = size as isize / 2;
    let k: Vec<f64> = (0..size).map(|i| (-0.5 * ((i as isize - half) as f64 / sigma).powi(2)).exp()).collect();
    let total: f64 = k.iter().sum();
    let reflect = |i: isize, m: usize| -> usize {
        let m = m as isize;
        (if i < 0 {
            -i
        } else if i >= m {
            2 * (m - 1) - i
        } else {
            i
        }) as usize
    };
    for b in 0..n {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let mut v = 0.0;
                    for (i, ki) in k.iter().enumerate() {
                        for (j, kj) in k.iter().enumerate() {
                            let (yy, xx) = (
                                reflect(y as isize + i as isize - half, h),
                                reflect(x as isize + j as isize - half, w),
                            );
                            v += ki * kj / (total * total) * tokens[((b * h + yy) * w + xx) * c + ch] as f64;
                        }
                    }
                    let g = got[((b * h + y) * w + x) * c + ch] as f64;
                    assert!((g - v).abs() < 1e-5, "({b}, {y}, {x}, {ch}): {g} vs {v}");
                }
            }
        }
    }
    // Rows of the blur sum to 1; a kernel wider than the grid, or an infinite sigma, has no matrix (the mean is used).
    let m = blur_matrix(1.3, 9).unwrap();
    assert!(m.chunks(9).all(|r| (r.iter().sum::<f64>() - 1.0).abs() < 1e-12));
    assert!(
        blur_matrix(3.0, 7).is_none() && blur_matrix(f64::INFINITY, 7).is_none() && blur_matrix(1e300, 7).is_none()
    );
    // A blur narrower than a pixel is no blur: the layer is unchanged.
    let unet = fixture_unet();
    let a = mid(&unet);
    let x = input(2, 32, 7, 7);
    let plain = flat(a.forward(x.clone()));
    let narrow = flat(a.forward_perturbed(x.clone(), Some(AttentionPerturbation::BlurredQuery { sigma: 0.1 })));
    assert!(relative_error(&narrow, &plain) < 1e-6);
    // The wide limit: one query for every pixel, so every pixel gets the same attention output.
    let wide = a.forward_perturbed(x.clone(), Some(AttentionPerturbation::BlurredQuery { sigma: f64::INFINITY })) - x;
    let per_pixel = flat(wide.clone());
    let mean = flat(wide.mean_dim(3).mean_dim(2).repeat_dim(2, 7).repeat_dim(3, 7));
    assert!(relative_error(&per_pixel, &mean) < 1e-5, "{}", relative_error(&per_pixel, &mean));
}
