//! Element-wise passes split over rayon's pool.
//!
//! An element-wise pass over a large contiguous buffer (an activation of an image network: a batch of 16 images of
//! 32 channels at 32 x 32 is half a million values) is split into fixed blocks of [`BLOCK`] elements handed to
//! rayon; each block runs the same kernel the serial path runs. The result does not depend on the split: every
//! element is computed by the same scalar or SIMD code from the same inputs, so one thread and many give the same
//! bytes. Below [`PARALLEL_MIN`] elements, or on a one-thread pool, the kernel runs once on the whole buffer.

use core::mem::MaybeUninit;

/// Fewest elements for which a pass is split: below, rayon's hand-off (a few microseconds) is a noticeable part of
/// the pass.
pub(crate) const PARALLEL_MIN: usize = 1 << 16;

/// Elements per rayon task (64 KiB of `f32`): a few microseconds of work each, and many tasks per pass for the
/// pool to balance.
pub(crate) const BLOCK: usize = 1 << 14;

/// `work(first row, block)` over `out`, which holds `out_per_row` elements for each row of an input of
/// `in_per_row` elements a row, cut into blocks of whole rows of about [`BLOCK`] input elements; the blocks run on
/// rayon's pool when the input is large enough to be worth it. For row-wise passes (a sum per row, a value added
/// to each plane) whose result for a row does not depend on the block it falls in.
pub(crate) fn for_each_rows<U: Send>(
    out: &mut [U],
    out_per_row: usize,
    in_per_row: usize,
    work: impl Fn(usize, &mut [U]) + Sync + Send,
) {
    let out_per_row = out_per_row.max(1);
    let rows_per_task = (BLOCK / in_per_row.max(1)).max(1);
    let task = |(index, block): (usize, &mut [U])| work(index * rows_per_task, block);
    #[cfg(feature = "rayon")]
    if split(out.len() / out_per_row * in_per_row) {
        use rayon::prelude::*;
        out.par_chunks_mut(rows_per_task * out_per_row)
            .enumerate()
            .for_each(task);
        return;
    }
    out.chunks_mut(rows_per_task * out_per_row)
        .enumerate()
        .for_each(task);
}

/// Whether a pass over `len` elements is worth splitting.
#[inline]
fn split(len: usize) -> bool {
    #[cfg(feature = "rayon")]
    {
        len >= PARALLEL_MIN && rayon::current_num_threads() > 1
    }
    #[cfg(not(feature = "rayon"))]
    {
        let _ = len;
        false
    }
}

/// `len` copies of `value` in a new vector, written in blocks on rayon's pool for large lengths: a fresh output
/// that a convolution then fills chunk by chunk on the pool was zeroed on the calling thread, serial work that
/// kept the second core idle.
pub(crate) fn filled<T: Copy + Send + Sync>(len: usize, value: T) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    #[cfg(feature = "rayon")]
    if split(len) {
        use rayon::prelude::*;
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(BLOCK)
            .for_each(|block| {
                for slot in block {
                    slot.write(value);
                }
            });
        // SAFETY: every one of the first `len` slots was written above.
        unsafe { out.set_len(len) };
        return out;
    }
    out.resize(len, value);
    out
}

/// `f(block)` over `data` in blocks.
pub(crate) fn for_each_mut<T: Send>(data: &mut [T], f: impl Fn(&mut [T]) + Sync + Send) {
    #[cfg(feature = "rayon")]
    if split(data.len()) {
        use rayon::prelude::*;
        data.par_chunks_mut(BLOCK).for_each(f);
        return;
    }
    f(data)
}

/// `f(dst block, src block)` over `dst` and `src` (the same length) in matching blocks.
pub(crate) fn zip_mut<T: Send, U: Sync>(
    dst: &mut [T],
    src: &[U],
    f: impl Fn(&mut [T], &[U]) + Sync + Send,
) {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(feature = "rayon")]
    if split(dst.len()) {
        use rayon::prelude::*;
        dst.par_chunks_mut(BLOCK)
            .zip(src.par_chunks(BLOCK))
            .for_each(|(d, s)| f(d, s));
        return;
    }
    f(dst, src)
}

/// A new vector of `src.len()` elements, `f(src block, out block)` writing every element of its block.
pub(crate) fn map_new<T: Sync, U: Send>(
    src: &[T],
    f: impl Fn(&[T], &mut [MaybeUninit<U>]) + Sync + Send,
) -> Vec<U> {
    let n = src.len();
    let mut out: Vec<U> = Vec::with_capacity(n);
    zip_mut(&mut out.spare_capacity_mut()[..n], src, |o, s| f(s, o));
    // SAFETY: `f` wrote every element of every block, and the blocks cover `0..n`.
    unsafe { out.set_len(n) };
    out
}

/// A new vector with `op(a[i], b[i])` at `i` (`a` and `b` the same length).
pub(crate) fn zip_new<T: Copy + Sync, U: Send>(
    a: &[T],
    b: &[T],
    op: impl Fn(T, T) -> U + Sync + Send,
) -> Vec<U> {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    let mut out: Vec<U> = Vec::with_capacity(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    let fill = |o: &mut [MaybeUninit<U>], a: &[T], b: &[T]| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            o.write(op(a, b));
        }
    };
    #[cfg(feature = "rayon")]
    if split(n) {
        use rayon::prelude::*;
        spare
            .par_chunks_mut(BLOCK)
            .zip(a.par_chunks(BLOCK))
            .zip(b.par_chunks(BLOCK))
            .for_each(|((o, a), b)| fill(o, a, b));
        // SAFETY: every block of `0..n` was written.
        unsafe { out.set_len(n) };
        return out;
    }
    fill(spare, a, b);
    // SAFETY: all `n` elements were written.
    unsafe { out.set_len(n) };
    out
}

/// A new vector with `op(src[i])` at `i`.
pub(crate) fn map_each<T: Copy + Sync, U: Send>(
    src: &[T],
    op: impl Fn(T) -> U + Sync + Send,
) -> Vec<U> {
    map_new(src, |s, o| {
        for (o, &x) in o.iter_mut().zip(s) {
            o.write(op(x));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_is_written_once_at_any_size() {
        for n in [
            0,
            1,
            PARALLEL_MIN - 1,
            PARALLEL_MIN,
            PARALLEL_MIN + 12_345,
            5 * PARALLEL_MIN + 7,
        ] {
            let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let b: Vec<f32> = (0..n).map(|i| 0.5 * i as f32).collect();
            assert_eq!(zip_new(&a, &b, |x, y| x - y), b);
            assert_eq!(map_each(&a, |x| x * 0.5), b);
            let mut c = a.clone();
            zip_mut(&mut c, &b, |c, b| {
                c.iter_mut().zip(b).for_each(|(c, b)| *c -= b)
            });
            assert_eq!(c, b);
            for_each_mut(&mut c, |c| c.iter_mut().for_each(|c| *c *= 2.0));
            assert_eq!(c, a);
            assert_eq!(filled(n, 1.5f32), vec![1.5f32; n]);
        }
    }
}
