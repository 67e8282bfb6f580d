//! Vectorised `exp` and `sigmoid` for f32 (Cephes-style range reduction and polynomial).
//!
//! The scalar paths call libm once per element (`f32::exp`), which the compiler cannot vectorise; SiLU
//! (`x * sigmoid(x)`) then spends most of its time there. These kernels evaluate 4 to 16 lanes at once through
//! macerator and stay within 2 ULP of libm's `expf` over the whole f32 range, including gradual underflow to
//! subnormals, overflow to infinity and NaN propagation (see the tests at the end).

use core::mem::MaybeUninit;
use macerator::{Scalar, Simd, Vector, vload_unaligned, vstore_unaligned};

#[cfg(feature = "rayon")]
use rayon::prelude::*;

/// Above this many elements the work is split over the rayon pool (when it has more than one thread: with one,
/// handing the work to the pool only adds a hand-off): `exp` costs ~20 flops per element, so parallelism pays
/// long before the memory-bound ops' threshold.
#[cfg(feature = "rayon")]
const PARALLEL_THRESHOLD: usize = 64 * 1024;

#[cfg(feature = "rayon")]
const CHUNK_SIZE: usize = 16 * 1024;

/// `exp(x)` for every lane.
///
/// `x = n ln2 + r` with `n = round(x / ln2)` and `|r| <= ln2 / 2` (ln2 split in two parts so `r` is exact);
/// `exp(r)` by Cephes' degree-7 polynomial; `2^n` built in the exponent bits as `2^(n/2) * 2^(n - n/2)`, so
/// results between `f32::MIN_POSITIVE` and `2^-149` underflow gradually and `n = 128` overflows to infinity.
#[inline(always)]
fn exp_lanes<S: Simd>(x: Vector<S, f32>) -> Vector<S, f32> {
    // Below -104 the result rounds to 0; above 88.73 it overflows (exp(88.7228) is f32::MAX).
    let xc = x.max((-104.0f32).splat::<S>()).min(88.73f32.splat::<S>());
    let n = (xc * core::f32::consts::LOG2_E.splat::<S>()).round_to_int();
    let nf = n.to_float();
    // Cody-Waite: ln2 = 0.693359375 - 2.12194440e-4, the first part exact in 9 bits.
    let r = nf.mul_add((-0.693_359_4f32).splat::<S>(), xc);
    let r = nf.mul_add(2.121_944_4e-4f32.splat::<S>(), r);
    let mut p = 1.987_569_1e-4f32.splat::<S>();
    for c in [
        1.398_199_9e-3f32,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = p.mul_add(r, c.splat::<S>());
    }
    let p = p.mul_add(r * r, r + 1.0f32.splat::<S>());
    let half = n >> 1;
    let bias = 127i32.splat::<S>();
    let scale1 = ((half + bias) << 23).reinterpret::<f32>();
    let scale2 = ((n - half + bias) << 23).reinterpret::<f32>();
    let y = p * scale1 * scale2;
    // min/max may drop a NaN operand (x86 returns the second one): pass NaN lanes through untouched.
    x.eq(x).select(y, x)
}

/// `sigmoid(x)` for every lane, in the scalar path's stable form: with `e = exp(-|x|)`, `1 / (1 + e)` for
/// `x >= 0` and `e / (1 + e)` for `x < 0`.
#[inline(always)]
fn sigmoid_lanes<S: Simd>(x: Vector<S, f32>) -> Vector<S, f32> {
    let e = exp_lanes::<S>(0.0f32.splat::<S>() - x.abs());
    let d = e + 1.0f32.splat::<S>();
    // One division for both branches (the numerator is chosen first): the divide is the kernel's slowest
    // instruction.
    let y = x.ge(0.0f32.splat::<S>()).select(1.0f32.splat::<S>(), e) / d;
    x.eq(x).select(y, x)
}

/// A vectorised f32 map: `$pub_fn` in place, `$into_fn` from a source slice into a destination of the same
/// length (one pass instead of a copy and an in-place pass, for inputs that are still shared).
macro_rules! define_map_f32 {
    ($(#[$doc:meta])* $pub_fn:ident, $into_fn:ident, $seq_fn:ident, $lanes_fn:ident, $scalar:expr) => {
        $(#[$doc])*
        #[inline]
        pub fn $pub_fn(a: &mut [f32]) {
            #[cfg(feature = "rayon")]
            if a.len() >= PARALLEL_THRESHOLD && rayon::current_num_threads() > 1 {
                a.par_chunks_mut(CHUNK_SIZE).for_each(|chunk| {
                    // SAFETY: source and destination are the same valid chunk; the kernel reads each vector
                    // before it writes it.
                    unsafe { $seq_fn(chunk.as_ptr(), chunk.as_mut_ptr(), chunk.len()) }
                });
                return;
            }
            // SAFETY: as above, over the whole slice.
            unsafe { $seq_fn(a.as_ptr(), a.as_mut_ptr(), a.len()) }
        }

        $(#[$doc])*
        /// Out of place: `dst[i] = f(src[i])` into a destination that need not be initialised (every element
        /// is written); the slices must have the same length.
        #[inline]
        pub fn $into_fn(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
            assert_eq!(src.len(), dst.len(), "{}: length mismatch", stringify!($into_fn));
            #[cfg(feature = "rayon")]
            if src.len() >= PARALLEL_THRESHOLD && rayon::current_num_threads() > 1 {
                src.par_chunks(CHUNK_SIZE)
                    .zip(dst.par_chunks_mut(CHUNK_SIZE))
                    // SAFETY: two valid chunks of equal length that do not overlap.
                    .for_each(|(s, d)| unsafe { $seq_fn(s.as_ptr(), d.as_mut_ptr().cast(), s.len()) });
                return;
            }
            // SAFETY: two valid slices of equal length that do not overlap.
            unsafe { $seq_fn(src.as_ptr(), dst.as_mut_ptr().cast(), src.len()) }
        }

        /// # Safety
        /// `src` and `dst` are valid for `len` elements and either equal or not overlapping.
        #[macerator::with_simd]
        unsafe fn $seq_fn<S: Simd>(src: *const f32, dst: *mut f32, len: usize) {
            let lanes = S::lanes32();
            let simd_len = len / lanes * lanes;
            let mut i = 0;
            while i < simd_len {
                unsafe {
                    let v = vload_unaligned::<S, _>(src.add(i));
                    vstore_unaligned::<S, _>(dst.add(i), $lanes_fn::<S>(v));
                }
                i += lanes;
            }
            let scalar: fn(f32) -> f32 = $scalar;
            for i in simd_len..len {
                unsafe { *dst.add(i) = scalar(*src.add(i)) };
            }
        }
    };
}

define_map_f32!(
    /// `a[i] = exp(a[i])`.
    exp_inplace_f32, exp_into_f32, exp_f32_seq, exp_lanes, |x| x.exp()
);
define_map_f32!(
    /// `a[i] = sigmoid(a[i])`.
    sigmoid_inplace_f32,
    sigmoid_into_f32,
    sigmoid_f32_seq,
    sigmoid_lanes,
    |x| if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place, counting across zero and into the subnormals.
    fn ulps(a: f32, b: f32) -> u32 {
        let key = |v: f32| {
            let i = v.to_bits() as i32;
            if i < 0 { i32::MIN - i } else { i }
        };
        (key(a) as i64 - key(b) as i64)
            .unsigned_abs()
            .min(u32::MAX as u64) as u32
    }

    /// Every 97th f32 bit pattern in [-104, 89] (about 22 million values) plus the edges.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (0..u32::MAX / 97)
            .map(|k| f32::from_bits(k * 97))
            .flat_map(|x| [x, -x])
            .filter(|x| x.is_finite() && (-104.0..=89.0).contains(x))
            .collect();
        v.extend([
            0.0, -0.0, 88.72, 88.7228, 88.723, 88.73, 89.0, -87.3, -87.34, -100.0, -103.97,
            -103.98, -104.0,
        ]);
        v.extend([
            -110.0,
            1000.0,
            -1000.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            1e-30,
            -1e-30,
        ]);
        v
    }

    #[test]
    fn exp_is_within_2_ulp_of_libm_everywhere() {
        let x = inputs();
        let mut y = x.clone();
        exp_inplace_f32(&mut y);
        let worst = x
            .iter()
            .zip(&y)
            .map(|(x, y)| (ulps(*y, x.exp()), *x))
            .max_by_key(|p| p.0)
            .unwrap();
        assert!(
            worst.0 <= 2,
            "exp({}) is {} ULP from libm",
            worst.1,
            worst.0
        );
        let mut specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 89.0, -200.0];
        exp_inplace_f32(&mut specials);
        assert!(specials[0].is_nan());
        assert_eq!(&specials[1..], &[f32::INFINITY, 0.0, f32::INFINITY, 0.0]);
    }

    #[test]
    fn sigmoid_is_within_2_ulp_of_the_scalar_form() {
        let x = inputs();
        let mut y = x.clone();
        sigmoid_inplace_f32(&mut y);
        let scalar = |x: f32| {
            if x >= 0.0 {
                1.0 / (1.0 + (-x).exp())
            } else {
                x.exp() / (1.0 + x.exp())
            }
        };
        let worst = x
            .iter()
            .zip(&y)
            .map(|(x, y)| (ulps(*y, scalar(*x)), *x))
            .max_by_key(|p| p.0)
            .unwrap();
        assert!(
            worst.0 <= 2,
            "sigmoid({}) is {} ULP from the scalar form",
            worst.1,
            worst.0
        );
        let mut specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0];
        sigmoid_inplace_f32(&mut specials);
        assert!(specials[0].is_nan());
        assert_eq!(&specials[1..], &[1.0, 0.0, 0.5]);
    }

    /// The out-of-place kernels give the in-place kernels' bits, on a length with a scalar tail.
    #[test]
    fn into_matches_in_place() {
        let x: Vec<f32> = inputs().into_iter().take(200_003).collect();
        for (in_place, into) in [
            (
                exp_inplace_f32 as fn(&mut [f32]),
                exp_into_f32 as fn(&[f32], &mut [MaybeUninit<f32>]),
            ),
            (sigmoid_inplace_f32, sigmoid_into_f32),
        ] {
            let mut a = x.clone();
            in_place(&mut a);
            let mut b = vec![MaybeUninit::new(f32::NAN); x.len()];
            into(&x, &mut b);
            let b: Vec<u32> = b
                .iter()
                .map(|v| unsafe { v.assume_init() }.to_bits())
                .collect();
            assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b);
        }
    }
}
