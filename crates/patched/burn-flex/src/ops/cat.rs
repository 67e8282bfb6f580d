//! Concatenation operations for FlexTensor.

use alloc::vec::Vec;
use burn_backend::{DType, Element};
use burn_std::{Bytes, Shape, bf16, f16};

use crate::{FlexTensor, Layout};

/// Concatenate tensors along the given dimension.
pub fn cat(tensors: Vec<FlexTensor>, dim: usize) -> FlexTensor {
    assert!(!tensors.is_empty(), "cat: cannot concatenate empty list");
    if tensors.len() == 1 {
        return tensors.into_iter().next().unwrap();
    }

    let dtype = tensors[0].dtype();
    match dtype {
        DType::F32 => cat_impl::<f32>(tensors, dim),
        DType::F64 => cat_impl::<f64>(tensors, dim),
        DType::F16 => cat_impl::<f16>(tensors, dim),
        DType::BF16 => cat_impl::<bf16>(tensors, dim),
        DType::I64 => cat_impl::<i64>(tensors, dim),
        DType::I32 => cat_impl::<i32>(tensors, dim),
        DType::I16 => cat_impl::<i16>(tensors, dim),
        DType::I8 => cat_impl::<i8>(tensors, dim),
        DType::U64 => cat_impl::<u64>(tensors, dim),
        DType::U32 => cat_impl::<u32>(tensors, dim),
        DType::U16 => cat_impl::<u16>(tensors, dim),
        DType::U8 | DType::Bool(_) => cat_impl::<u8>(tensors, dim),
        _ => panic!("cat: unsupported dtype {:?}", dtype),
    }
}

fn cat_impl<E: Element + bytemuck::Pod>(tensors: Vec<FlexTensor>, dim: usize) -> FlexTensor {
    let dtype = tensors[0].dtype();
    let first_shape = tensors[0].layout().shape();
    let ndims = first_shape.num_dims();

    assert!(
        dim < ndims,
        "cat: dim {} out of bounds for {} dimensions",
        dim,
        ndims
    );

    // Compute output shape: sum along cat dim, others must match
    let mut out_dims = first_shape.to_vec();
    out_dims[dim] = 0;
    for t in &tensors {
        assert_eq!(
            t.dtype(),
            dtype,
            "cat: dtype mismatch: expected {:?}, got {:?}",
            dtype,
            t.dtype()
        );
        let s = t.layout().shape();
        assert_eq!(s.num_dims(), ndims, "cat: dimension count mismatch");
        for (d, out_d) in out_dims.iter_mut().enumerate() {
            if d == dim {
                *out_d += s[d];
            } else {
                assert_eq!(
                    s[d], first_shape[d],
                    "cat: shape mismatch at dim {d}: expected {}, got {}",
                    first_shape[d], s[d]
                );
            }
        }
    }

    let out_shape = Shape::from(out_dims.clone());
    let total_elements: usize = out_shape.num_elements();

    if total_elements == 0 {
        let bytes = Bytes::from_elems::<E>(Vec::new());
        return FlexTensor::new(bytes, Layout::contiguous(out_shape), dtype);
    }

    let mut output: Vec<E> = Vec::with_capacity(total_elements);

    // Fast path: dim 0, all contiguous
    if dim == 0
        && tensors
            .iter()
            .all(|t| t.layout().contiguous_offsets().is_some())
    {
        for t in &tensors {
            let (start, end) = t.layout().contiguous_offsets().unwrap();
            let data: &[E] = t.storage();
            output.extend_from_slice(&data[start..end]);
        }
    } else {
        // General path: iterate over outer/inner chunks
        // outer_size = product of dims before `dim`
        // inner_size = product of dims after `dim`
        let outer_size: usize = out_dims[..dim].iter().product();
        let inner_size: usize = out_dims[dim + 1..].iter().product();

        // Make all tensors contiguous for simple indexing
        let contiguous: Vec<FlexTensor> = tensors.into_iter().map(|t| t.to_contiguous()).collect();
        // Each tensor's storage from its start, and its part of one output row (one outer index).
        let parts: Vec<(&[E], usize)> = contiguous
            .iter()
            .map(|t| {
                let data: &[E] = t.storage();
                (
                    &data[t.layout().start_offset()..],
                    t.layout().shape()[dim] * inner_size,
                )
            })
            .collect();
        let row_len = out_dims[dim] * inner_size;
        // Output rows written in blocks of whole rows, on rayon's pool for large outputs (a copy: the split cannot
        // change the result). The autodiff graph of a U-Net concatenates every skip connection this way.
        let rows = &mut output.spare_capacity_mut()[..total_elements];
        super::elementwise_par::for_each_rows(rows, row_len, row_len, |first, block| {
            for (k, row) in block.chunks_mut(row_len).enumerate() {
                let outer = first + k;
                let mut at = 0;
                for &(data, len) in &parts {
                    let src = &data[outer * len..][..len];
                    let dst = &mut row[at..at + len];
                    // SAFETY: `MaybeUninit<E>` has `E`'s layout, `dst` holds `len` elements, and the two do
                    // not overlap (`dst` is the new output).
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            src.as_ptr(),
                            dst.as_mut_ptr().cast::<E>(),
                            len,
                        )
                    };
                    at += len;
                }
            }
        });
        debug_assert_eq!(outer_size * row_len, total_elements);
        // SAFETY: every row of the output was written above (`outer_size` rows of `row_len` elements).
        unsafe { output.set_len(total_elements) };
    }

    let bytes = Bytes::from_elems(output);
    FlexTensor::new(bytes, Layout::contiguous(out_shape), dtype)
}
