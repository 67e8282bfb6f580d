//! 3x3, stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016): each 2x2 block of outputs is computed from a 4x4 input tile with 16
//! multiplications per (input, output) channel pair instead of 36, as 16 matrix products
//! `M[xi] = U[xi] @ V[xi]` between the transformed kernel `U = G g G^T` and the transformed input tiles
//! `V = B^T d B`, followed by the output transform `Y = A^T M A`.
//!
//! Used for the forward pass (and so for the input gradient of a stride-1 convolution, which is computed as a
//! forward convolution) and, as its adjoint, for the weight gradient (`dU[xi] = dM[xi] @ V[xi]^T` over all tiles
//! with `dM = A dY A^T`, then `dW = G^T dU G`) when both channel counts are at least [`MIN_CHANNELS`]: below
//! that the transforms, not the products, are the work, and im2col is as fast. f32 and f64 only; the transforms add a few rounding steps
//! (the error stays within a few units of f32's precision times the sum's size; tested against ndarray).

use burn_backend::DType;

use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use super::{
    ConvElement, Geometry, MAX_CHUNK_ELEMENTS, MIN_CHUNKS, MIN_COLUMNS, Operand, WEIGHT_PARTIALS,
    for_each_chunk, gemm, plan, sized,
};

/// Both channel counts must be at least this for the Winograd path.
const MIN_CHANNELS: usize = 16;

/// Transform points per tile (4 x 4).
const POINTS: usize = 16;

/// Whether the Winograd path computes this convolution.
pub(super) fn applies<T: ConvElement>(g: &Geometry) -> bool {
    T::dtype() != DType::F16
        && g.kernel_h == 3
        && g.kernel_w == 3
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.groups == 1
        && g.padding[0] <= 2
        && g.padding[1] <= 2
        && g.channels_in >= MIN_CHANNELS
        && g.channels_out >= MIN_CHANNELS
        && g.out_h > 0
        && g.out_w > 0
}

/// `U[xi][c_out][c_in] = (G g G^T)[xi]` for every kernel `g = weight[c_out][c_in]` (3 x 3).
fn transform_kernels<T: ConvElement>(g: &Geometry, weight: &[T]) -> Vec<T> {
    let (c_in, c_out) = (g.channels_in, g.channels_out);
    let half = T::from(0.5).unwrap();
    let mut u = vec![T::zero(); POINTS * c_out * c_in];
    for o in 0..c_out {
        for i in 0..c_in {
            let k = &weight[(o * c_in + i) * 9..][..9];
            // G g: 4 x 3.
            let mut gg = [[T::zero(); 3]; 4];
            for col in 0..3 {
                let (a, b, c) = (k[col], k[3 + col], k[6 + col]);
                gg[0][col] = a;
                gg[1][col] = (a + b + c) * half;
                gg[2][col] = (a - b + c) * half;
                gg[3][col] = c;
            }
            // (G g) G^T: 4 x 4.
            for (r, row) in gg.iter().enumerate() {
                let (a, b, c) = (row[0], row[1], row[2]);
                let values = [a, (a + b + c) * half, (a - b + c) * half, c];
                for (col, &v) in values.iter().enumerate() {
                    u[((r * 4 + col) * c_out + o) * c_in + i] = v;
                }
            }
        }
    }
    u
}

/// Tiles along one axis: one per two outputs.
fn tiles(out: usize) -> usize {
    out.div_ceil(2)
}

/// Reusable buffers of [`transform_plane`] and [`untransform_plane`], one set per chunk.
struct Rows<T> {
    /// One zero-padded input row, de-interleaved: even padded columns, then odd ones.
    row: Vec<T>,
    /// The padded input plane split by row parity `a`, column parity `b` and a shift `s` of one tile:
    /// `planes[(a * 2 + b) * 2 + s][ry * tiles_w + tx]` is padded pixel `(2 ry + a, 2 (tx + s) + b)`.
    planes: Vec<T>,
    /// The four output parity planes `Y[r * 2 + c][ty * tiles_w + tx]` = output pixel `(2 ty + r, 2 tx + c)`.
    outputs: Vec<T>,
}

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Self {
            row: Vec::new(),
            planes: Vec::new(),
            outputs: Vec::new(),
        }
    }
}

/// Writes `V[xi][channel][t0 + tile] = (B^T d B)[xi]` for every tile `d` of one input plane, `V` laid out as
/// `[16][channels][total]`.
///
/// Tile `(ty, tx)` reads padded pixels `(2 ty + i, 2 tx + j)`, `i, j < 4`: pixel `(i, j)` of every tile is the
/// same parity plane of the padded input (row parity `i % 2`, column parity `j % 2`, shifted by `j / 2` tiles),
/// read from row `ty + i / 2`, so over all tiles it is one contiguous run of that plane. The plane is split into
/// those parity planes once; then each transform point is an element-wise combination of runs as long as the
/// plane's tile count (a loop the compiler vectorises: along one tile row the runs were 4 to 16 tiles, shorter
/// than a vector, and ran scalar). The arithmetic and its order are the textbook transform's, `B^T` first
/// (`[d0 - d2, d1 + d2, d2 - d1, d1 - d3]` down each column) then `B` along each row, so the values do not
/// depend on the layout.
#[allow(clippy::too_many_arguments)]
fn transform_plane<T: ConvElement>(
    g: &Geometry,
    plane: &[T],
    v: &mut [T],
    channel: usize,
    channels: usize,
    total: usize,
    t0: usize,
    rows: &mut Rows<T>,
) {
    let (tiles_h, tiles_w) = (tiles(g.out_h), tiles(g.out_w));
    let [pad_h, pad_w] = g.padding;
    let half = tiles_w + 1;
    let plane_len = (tiles_h + 1) * tiles_w;
    let zero = T::zero();
    rows.row.resize(2 * half, zero);
    rows.planes.resize(8 * plane_len, zero);
    // Columns 2k and 2k + 1 of a padded row are both inside the input for k in inner_lo .. inner_hi.
    let inner_lo = pad_w.div_ceil(2).min(half);
    let inner_hi = ((g.in_w + pad_w) / 2).clamp(inner_lo, half);
    for y in 0..2 * tiles_h + 2 {
        let (even, odd) = rows.row.split_at_mut(half);
        let iy = y as isize - pad_h as isize;
        if iy < 0 || iy >= g.in_h as isize {
            even.fill(zero);
            odd.fill(zero);
        } else {
            let src = &plane[iy as usize * g.in_w..(iy as usize + 1) * g.in_w];
            // Padded column p is input column p - pad_w.
            let at = |p: usize| {
                let x = p as isize - pad_w as isize;
                if x >= 0 && (x as usize) < g.in_w {
                    src[x as usize]
                } else {
                    zero
                }
            };
            for k in (0..inner_lo).chain(inner_hi..half) {
                even[k] = at(2 * k);
                odd[k] = at(2 * k + 1);
            }
            let first = 2 * inner_lo - pad_w;
            let pairs = &src[first..first + 2 * (inner_hi - inner_lo)];
            for ((e, o), pair) in even[inner_lo..inner_hi]
                .iter_mut()
                .zip(&mut odd[inner_lo..inner_hi])
                .zip(pairs.chunks_exact(2))
            {
                *e = pair[0];
                *o = pair[1];
            }
        }
        let (a, ry) = (y % 2, y / 2);
        for b in 0..2 {
            let parity = &rows.row[b * half..(b + 1) * half];
            for s in 0..2 {
                let dst = ((a * 2 + b) * 2 + s) * plane_len + ry * tiles_w;
                rows.planes[dst..dst + tiles_w].copy_from_slice(&parity[s..s + tiles_w]);
            }
        }
    }
    let n = tiles_h * tiles_w;
    // Pixel (i, j) of every tile: parity plane (i % 2, j % 2, shift j / 2) from row i / 2 on.
    let d = |i: usize, j: usize| {
        let start = ((i % 2 * 2 + j % 2) * 2 + j / 2) * plane_len + i / 2 * tiles_w;
        &rows.planes[start..start + n]
    };
    let [d0, d1, d2, d3] = [0, 1, 2, 3].map(|i| [0, 1, 2, 3].map(|j| d(i, j)));
    for i in 0..4 {
        let out = point_row(v, i, channel, channels, total, t0, n);
        // Row i of B^T d is `x op y`, column by column.
        match i {
            0 => transform_row(d0, d2, |a, b| a - b, out),
            1 => transform_row(d1, d2, |a, b| a + b, out),
            2 => transform_row(d2, d1, |a, b| a - b, out),
            _ => transform_row(d1, d3, |a, b| a - b, out),
        }
    }
}

/// Row `row` of the 16 transform points of one channel's tiles `t0..t0 + n`, in a `[16][channels][total]` buffer:
/// the four disjoint runs of points `row * 4 + col`, `col < 4`.
fn point_row<T>(
    buffer: &mut [T],
    row: usize,
    channel: usize,
    channels: usize,
    total: usize,
    t0: usize,
    n: usize,
) -> [&mut [T]; 4] {
    let start = |col: usize| ((row * 4 + col) * channels + channel) * total + t0;
    let (p0, rest) = buffer[start(0)..].split_at_mut(n);
    let (p1, rest) = rest[start(1) - start(0) - n..].split_at_mut(n);
    let (p2, rest) = rest[start(2) - start(1) - n..].split_at_mut(n);
    let p3 = &mut rest[start(3) - start(2) - n..][..n];
    [p0, p1, p2, p3]
}

/// One row of `V = (B^T d) B` over all tiles: with `t_j = op(x_j, y_j)` (row `i` of `B^T d`, column `j`),
/// `out = [t0 - t2, t1 + t2, t2 - t1, t1 - t3]`.
#[inline(always)]
fn transform_row<T: ConvElement>(
    x: [&[T]; 4],
    y: [&[T]; 4],
    op: impl Fn(T, T) -> T,
    out: [&mut [T]; 4],
) {
    let [v0, v1, v2, v3] = out;
    // Every run cut to one length, so the loop carries no bounds checks and vectorises.
    let n = v0.len();
    let (v1, v2, v3) = (&mut v1[..n], &mut v2[..n], &mut v3[..n]);
    let (x, y) = (x.map(|run| &run[..n]), y.map(|run| &run[..n]));
    for q in 0..n {
        let (t0, t1, t2, t3) = (
            op(x[0][q], y[0][q]),
            op(x[1][q], y[1][q]),
            op(x[2][q], y[2][q]),
            op(x[3][q], y[3][q]),
        );
        v0[q] = t0 - t2;
        v1[q] = t1 + t2;
        v2[q] = t2 - t1;
        v3[q] = t1 - t3;
    }
}

/// Writes `Y = A^T M A` of every tile of one output plane, `M` laid out as `[16][channels][total]`: the four
/// output pixels of every tile as four parity planes, each an element-wise combination of the 16 points' runs
/// over all the plane's tiles (vectorised, as in [`transform_plane`]; `A^T` down each column first, then `A`
/// along each row), then interleaved into the output rows.
#[allow(clippy::too_many_arguments)]
fn untransform_plane<T: ConvElement>(
    g: &Geometry,
    m: &[T],
    channel: usize,
    channels: usize,
    total: usize,
    t0: usize,
    plane: &mut [MaybeUninit<T>],
    rows: &mut Rows<T>,
) {
    let (tiles_h, tiles_w) = (tiles(g.out_h), tiles(g.out_w));
    let n = tiles_h * tiles_w;
    rows.outputs.resize(4 * n, T::zero());
    let point = |xi: usize| &m[(xi * channels + channel) * total + t0..][..n];
    let p: [&[T]; 16] = core::array::from_fn(point);
    let (y00, rest) = rows.outputs.split_at_mut(n);
    let (y01, rest) = rest.split_at_mut(n);
    let (y10, y11) = rest.split_at_mut(n);
    let y11 = &mut y11[..n];
    for q in 0..n {
        // A^T M: column `col`'s top (output row 0) and bottom (output row 1).
        let top = |col: usize| p[col][q] + p[4 + col][q] + p[8 + col][q];
        let bottom = |col: usize| p[4 + col][q] - p[8 + col][q] - p[12 + col][q];
        let (a0, a1, a2, a3) = (top(0), top(1), top(2), top(3));
        y00[q] = a0 + a1 + a2;
        y01[q] = a1 - a2 - a3;
        let (b0, b1, b2, b3) = (bottom(0), bottom(1), bottom(2), bottom(3));
        y10[q] = b0 + b1 + b2;
        y11[q] = b1 - b2 - b3;
    }
    let pairs = g.out_w / 2;
    for y in 0..g.out_h {
        let (ty, r) = (y / 2, y % 2);
        let base = 2 * r * n + ty * tiles_w;
        let even = &rows.outputs[base..base + tiles_w];
        let odd = &rows.outputs[base + n..base + n + tiles_w];
        let out = &mut plane[y * g.out_w..(y + 1) * g.out_w];
        for ((pair, &e), &o) in out.chunks_exact_mut(2).zip(even).zip(odd).take(pairs) {
            pair[0].write(e);
            pair[1].write(o);
        }
        if g.out_w % 2 == 1 {
            out[2 * pairs].write(even[pairs]);
        }
    }
}

/// Images per chunk: enough for [`MIN_COLUMNS`] tiles, within [`MAX_CHUNK_ELEMENTS`] transformed values and
/// leaving at least [`MIN_CHUNKS`] chunks (the shapes alone decide, never the thread count).
fn images_per_chunk(g: &Geometry) -> usize {
    let per_image = tiles(g.out_h) * tiles(g.out_w);
    let wanted = MIN_COLUMNS.div_ceil(per_image);
    let affordable = MAX_CHUNK_ELEMENTS / (POINTS * g.channels_in.max(g.channels_out) * per_image);
    wanted
        .min(affordable)
        .min(g.batch.div_ceil(MIN_CHUNKS))
        .clamp(1, g.batch.max(1))
}

/// The convolution of `x_data` with `w_data` (see [`applies`]) into `output` (`[b, c_out, out_h, out_w]`).
pub(super) fn forward<T: ConvElement>(
    g: &Geometry,
    x_data: &[T],
    w_data: &[T],
    output: &mut [MaybeUninit<T>],
) {
    let g = *g;
    let (c_in, c_out) = (g.channels_in, g.channels_out);
    let (image_in, image_out) = (g.image_in(), g.image_out());
    let per_image = tiles(g.out_h) * tiles(g.out_w);
    let per_chunk = images_per_chunk(&g);
    let (parallel, parallelism) = plan(g.batch.div_ceil(per_chunk));
    let u = transform_kernels(&g, w_data);

    for_each_chunk(
        output,
        per_chunk * image_out,
        parallel,
        |scratch, index, out| {
            let first = index * per_chunk;
            let images = out.len() / image_out;
            let total = images * per_image;
            let v = sized::<T>(&mut scratch.cols, POINTS * c_in * total);
            let mut rows = Rows::default();
            for i in 0..images {
                let image = &x_data[(first + i) * image_in..(first + i + 1) * image_in];
                for channel in 0..c_in {
                    let plane = &image[channel * g.in_pixels()..(channel + 1) * g.in_pixels()];
                    transform_plane(&g, plane, v, channel, c_in, total, i * per_image, &mut rows);
                }
            }
            let m = sized::<T>(&mut scratch.product, POINTS * c_out * total);
            for xi in 0..POINTS {
                let lhs = Operand::rows(&u[xi * c_out * c_in..], c_in);
                let rhs = Operand::rows(&v[xi * c_in * total..], total);
                let dst = m[xi * c_out * total..].as_mut_ptr();
                unsafe { gemm(c_out, total, c_in, dst, total, false, lhs, rhs, parallelism) };
            }
            for i in 0..images {
                for channel in 0..c_out {
                    let plane =
                        &mut out[i * image_out + channel * g.out_pixels()..][..g.out_pixels()];
                    untransform_plane(
                        &g,
                        m,
                        channel,
                        c_out,
                        total,
                        i * per_image,
                        plane,
                        &mut rows,
                    );
                }
            }
        },
    );
}

/// Writes `dM[xi][channel][t0 + tile] = (A dY A^T)[xi]` for every 2 x 2 block `dY` of one output-gradient
/// plane (zero past an odd edge: those outputs do not exist), `dM` laid out as `[16][channels][total]`: the
/// adjoint of [`untransform_plane`]'s `Y = A^T M A`. The plane is split into its four parity planes first, so
/// each point is an element-wise combination of runs over all tiles, as in [`transform_plane`].
#[allow(clippy::too_many_arguments)]
fn transform_gradient_plane<T: ConvElement>(
    g: &Geometry,
    plane: &[T],
    dm: &mut [T],
    channel: usize,
    channels: usize,
    total: usize,
    t0: usize,
    rows: &mut Rows<T>,
) {
    let (tiles_h, tiles_w) = (tiles(g.out_h), tiles(g.out_w));
    let n = tiles_h * tiles_w;
    let zero = T::zero();
    rows.outputs.resize(4 * n, zero);
    // outputs[(r * 2 + c) * n + ty * tiles_w + tx] = dY(2 ty + r, 2 tx + c).
    let pairs = g.out_w / 2;
    for y in 0..2 * tiles_h {
        let (ty, r) = (y / 2, y % 2);
        let base = 2 * r * n + ty * tiles_w;
        let (even, odd) = rows.outputs[base..].split_at_mut(n);
        let (even, odd) = (&mut even[..tiles_w], &mut odd[..tiles_w]);
        if y >= g.out_h {
            even.fill(zero);
            odd.fill(zero);
            continue;
        }
        let src = &plane[y * g.out_w..(y + 1) * g.out_w];
        for ((pair, e), o) in src.chunks_exact(2).zip(even.iter_mut()).zip(odd.iter_mut()) {
            *e = pair[0];
            *o = pair[1];
        }
        if g.out_w % 2 == 1 {
            even[pairs] = src[2 * pairs];
            odd[pairs] = zero;
        }
    }
    let (y00, rest) = rows.outputs.split_at(n);
    let (y01, rest) = rest.split_at(n);
    let (y10, y11) = rest.split_at(n);
    let y11 = &y11[..n];
    for r in 0..4 {
        let [m0, m1, m2, m3] = point_row(dm, r, channel, channels, total, t0, n);
        let (m1, m2, m3) = (&mut m1[..n], &mut m2[..n], &mut m3[..n]);
        // Row r of A dY: A's rows are (1, 0), (1, 1), (1, -1), (0, -1); then A^T along the row alike.
        let combine = |top: T, bottom: T| match r {
            0 => top,
            1 => top + bottom,
            2 => top - bottom,
            _ => -bottom,
        };
        for q in 0..n {
            let (z0, z1) = (combine(y00[q], y10[q]), combine(y01[q], y11[q]));
            m0[q] = z0;
            m1[q] = z0 + z1;
            m2[q] = z0 - z1;
            m3[q] = -z1;
        }
    }
}

/// The gradient of the convolution (see [`applies`]) with respect to its weight, from its input `x_data` and
/// output gradient `grad`: with `V = B^T d B` of every input tile and `dM = A dY A^T` of every output-gradient
/// block, `dU[xi] = dM[xi] @ V[xi]^T` summed over tiles (16 products of `c_out x c_in` over the tiles: 4 / 9 of
/// im2col's multiplications), then `dW = G^T dU G`, the adjoint of the kernel transform. Chunks of images are
/// summed in order within at most [`WEIGHT_PARTIALS`] fixed partitions, then the partitions in order, as on the
/// im2col path: the result does not depend on the thread count.
pub(super) fn weight_backward<T: ConvElement>(g: &Geometry, x_data: &[T], grad: &[T]) -> Vec<T> {
    let g = *g;
    let (c_in, c_out) = (g.channels_in, g.channels_out);
    let (image_in, image_out) = (g.image_in(), g.image_out());
    let per_image = tiles(g.out_h) * tiles(g.out_w);
    let per_chunk = images_per_chunk(&g);
    let chunks = g.batch.div_ceil(per_chunk);
    let chunks_per_partial = chunks.div_ceil(chunks.min(WEIGHT_PARTIALS));
    let partials = chunks.div_ceil(chunks_per_partial);
    let (parallel, parallelism) = plan(partials);
    let transformed_len = POINTS * c_out * c_in;

    let mut sums = vec![T::zero(); partials * transformed_len];
    for_each_chunk(
        &mut sums,
        transformed_len,
        parallel,
        |scratch, partial, sum| {
            let mut rows = Rows::default();
            let last = ((partial + 1) * chunks_per_partial).min(chunks);
            for (n, chunk) in (partial * chunks_per_partial..last).enumerate() {
                let first = chunk * per_chunk;
                let images = per_chunk.min(g.batch - first);
                let total = images * per_image;
                let v = sized::<T>(&mut scratch.cols, POINTS * c_in * total);
                let dm = sized::<T>(&mut scratch.product, POINTS * c_out * total);
                for i in 0..images {
                    let image = &x_data[(first + i) * image_in..][..image_in];
                    for channel in 0..c_in {
                        let plane = &image[channel * g.in_pixels()..][..g.in_pixels()];
                        transform_plane(
                            &g,
                            plane,
                            v,
                            channel,
                            c_in,
                            total,
                            i * per_image,
                            &mut rows,
                        );
                    }
                    let image_grad = &grad[(first + i) * image_out..][..image_out];
                    for channel in 0..c_out {
                        let plane = &image_grad[channel * g.out_pixels()..][..g.out_pixels()];
                        transform_gradient_plane(
                            &g,
                            plane,
                            dm,
                            channel,
                            c_out,
                            total,
                            i * per_image,
                            &mut rows,
                        );
                    }
                }
                for xi in 0..POINTS {
                    let lhs = Operand::rows(&dm[xi * c_out * total..], total);
                    let rhs = Operand::transposed(&v[xi * c_in * total..], total);
                    let dst = sum[xi * c_out * c_in..].as_mut_ptr();
                    unsafe { gemm(c_out, c_in, total, dst, c_in, n > 0, lhs, rhs, parallelism) };
                }
            }
        },
    );
    let (du, rest) = sums.split_at_mut(transformed_len);
    for partial in rest.chunks(transformed_len) {
        du.iter_mut().zip(partial).for_each(|(t, &p)| *t += p);
    }
    untransform_kernels(&g, du)
}

/// `dW[c_out][c_in] = G^T dU[.][c_out][c_in] G` (3 x 3 from 4 x 4), the adjoint of [`transform_kernels`].
fn untransform_kernels<T: ConvElement>(g: &Geometry, du: &[T]) -> Vec<T> {
    let (c_in, c_out) = (g.channels_in, g.channels_out);
    let half = T::from(0.5).unwrap();
    // G's columns applied to a run of four: (1, 1/2, 1/2, 0), (0, 1/2, -1/2, 0), (0, 1/2, 1/2, 1).
    let adjoint = |a: T, b: T, c: T, d: T| [a + (b + c) * half, (b - c) * half, (b + c) * half + d];
    let mut weight = vec![T::zero(); c_out * c_in * 9];
    for o in 0..c_out {
        for i in 0..c_in {
            let at = |xi: usize| du[(xi * c_out + o) * c_in + i];
            // G^T dU: 3 x 4, column by column.
            let columns: [[T; 3]; 4] = core::array::from_fn(|col| {
                adjoint(at(col), at(4 + col), at(8 + col), at(12 + col))
            });
            // (G^T dU) G: 3 x 3, row by row.
            let k = &mut weight[(o * c_in + i) * 9..][..9];
            for (row, out) in k.chunks_exact_mut(3).enumerate() {
                let [a, b, c, d] = columns.map(|column| column[row]);
                out.copy_from_slice(&adjoint(a, b, c, d));
            }
        }
    }
    weight
}
