//! 3x3, stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016): each 2x2 block of outputs is computed from a 4x4 input tile with 16
//! multiplications per (input, output) channel pair instead of 36, as 16 matrix products
//! `M[xi] = U[xi] @ V[xi]` between the transformed kernel `U = G g G^T` and the transformed input tiles
//! `V = B^T d B`, followed by the output transform `Y = A^T M A`.
//!
//! Used for the forward pass (and so for the input gradient of a stride-1 convolution, which is computed as a
//! forward convolution) when both channel counts are at least [`MIN_CHANNELS`]: below that the transforms, not
//! the products, are the work, and im2col is as fast. f32 and f64 only; the transforms add a few rounding steps
//! (the error stays within a few units of f32's precision times the sum's size; tested against ndarray).

use burn_backend::DType;

use super::{
    ConvElement, Geometry, MAX_CHUNK_ELEMENTS, MIN_CHUNKS, MIN_COLUMNS, Operand, for_each_chunk,
    gemm, plan, sized,
};

/// Both channel counts must be at least this for the Winograd path.
const MIN_CHANNELS: usize = 32;

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

/// Writes `V[xi][channel][t0 + tile] = (B^T d B)[xi]` for every tile `d` of one input plane, `V` laid out as
/// `[16][channels][total]`. One tile row at a time, all its tiles together: `B^T d` is elementwise across four
/// zero-padded input rows, and each of the 16 points is then a contiguous run over the row's tiles (loops the
/// compiler vectorises; a tile-by-tile version spent more time here than in the products).
#[allow(clippy::too_many_arguments)]
fn transform_plane<T: ConvElement>(
    g: &Geometry,
    plane: &[T],
    v: &mut [T],
    channel: usize,
    channels: usize,
    total: usize,
    t0: usize,
    rows: &mut [Vec<T>; 4],
) {
    let (tiles_h, tiles_w) = (tiles(g.out_h), tiles(g.out_w));
    let [pad_h, pad_w] = g.padding;
    let width = 2 * tiles_w + 2;
    for row in rows.iter_mut() {
        row.clear();
        row.resize(width, T::zero());
    }
    // Input columns x0 .. x0 + width map to padded positions 0 .. width.
    let (copy_from, copy_to) = (pad_w, (pad_w + g.in_w).min(width));
    for ty in 0..tiles_h {
        let y0 = (2 * ty) as isize - pad_h as isize;
        // Four input rows, zero outside the plane; B^T d in place: rows become
        // [d0 - d2, d1 + d2, d2 - d1, d1 - d3].
        for (r, row) in rows.iter_mut().enumerate() {
            let y = y0 + r as isize;
            if y < 0 || y >= g.in_h as isize {
                row.fill(T::zero());
            } else {
                let src = &plane[y as usize * g.in_w..(y as usize + 1) * g.in_w];
                row[..copy_from].fill(T::zero());
                row[copy_from..copy_to].copy_from_slice(&src[..copy_to - copy_from]);
                row[copy_to..].fill(T::zero());
            }
        }
        let [d0, d1, d2, d3] = rows;
        for x in 0..width {
            let (a, b, c, d) = (d0[x], d1[x], d2[x], d3[x]);
            d0[x] = a - c;
            d1[x] = b + c;
            d2[x] = c - b;
            d3[x] = b - d;
        }
        // (B^T d) B along each row: point (r, col) of tile tx reads columns 2 tx .. 2 tx + 3.
        let start = t0 + ty * tiles_w;
        for (r, b) in [&*d0, &*d1, &*d2, &*d3].into_iter().enumerate() {
            let run = |col: usize| ((r * 4 + col) * channels + channel) * total + start;
            let (e0, e1, e2, e3) = (&b[0..], &b[1..], &b[2..], &b[3..]);
            let out = &mut v[run(0)..run(0) + tiles_w];
            for (tx, o) in out.iter_mut().enumerate() {
                *o = e0[2 * tx] - e2[2 * tx];
            }
            let out = &mut v[run(1)..run(1) + tiles_w];
            for (tx, o) in out.iter_mut().enumerate() {
                *o = e1[2 * tx] + e2[2 * tx];
            }
            let out = &mut v[run(2)..run(2) + tiles_w];
            for (tx, o) in out.iter_mut().enumerate() {
                *o = e2[2 * tx] - e1[2 * tx];
            }
            let out = &mut v[run(3)..run(3) + tiles_w];
            for (tx, o) in out.iter_mut().enumerate() {
                *o = e1[2 * tx] - e3[2 * tx];
            }
        }
    }
}

/// Writes `Y = A^T M A` of every tile of one output plane, `M` laid out as `[16][channels][total]`; one tile
/// row at a time, as [`transform_plane`]: `A^T M` elementwise over the row's tiles into `rows`
/// (`rows[4 r + col]`, r = 0, 1), then `A` along each output row.
#[allow(clippy::too_many_arguments)]
fn untransform_plane<T: ConvElement>(
    g: &Geometry,
    m: &[T],
    channel: usize,
    channels: usize,
    total: usize,
    t0: usize,
    plane: &mut [T],
    rows: &mut [Vec<T>; 8],
) {
    let (tiles_h, tiles_w) = (tiles(g.out_h), tiles(g.out_w));
    for row in rows.iter_mut() {
        row.clear();
        row.resize(tiles_w, T::zero());
    }
    for ty in 0..tiles_h {
        let start = t0 + ty * tiles_w;
        let point = |xi: usize| &m[(xi * channels + channel) * total + start..][..tiles_w];
        for col in 0..4 {
            let (m0, m1, m2, m3) = (point(col), point(4 + col), point(8 + col), point(12 + col));
            let (top, bottom) = rows.split_at_mut(4);
            for tx in 0..tiles_w {
                top[col][tx] = m0[tx] + m1[tx] + m2[tx];
                bottom[col][tx] = m1[tx] - m2[tx] - m3[tx];
            }
        }
        for r in 0..2 {
            let y = 2 * ty + r;
            if y >= g.out_h {
                continue;
            }
            let a = &rows[4 * r..4 * r + 4];
            let out = &mut plane[y * g.out_w..(y + 1) * g.out_w];
            for (x, o) in out.iter_mut().enumerate() {
                let tx = x / 2;
                *o = if x % 2 == 0 {
                    a[0][tx] + a[1][tx] + a[2][tx]
                } else {
                    a[1][tx] - a[2][tx] - a[3][tx]
                };
            }
        }
    }
}

/// The convolution of `x_data` with `w_data` (see [`applies`]) into `output` (`[b, c_out, out_h, out_w]`).
pub(super) fn forward<T: ConvElement>(g: &Geometry, x_data: &[T], w_data: &[T], output: &mut [T]) {
    let g = *g;
    let (c_in, c_out) = (g.channels_in, g.channels_out);
    let (image_in, image_out) = (g.image_in(), g.image_out());
    let per_image = tiles(g.out_h) * tiles(g.out_w);
    let wanted = MIN_COLUMNS.div_ceil(per_image);
    let affordable = MAX_CHUNK_ELEMENTS / (POINTS * c_in.max(c_out) * per_image);
    let per_chunk = wanted
        .min(affordable)
        .min(g.batch.div_ceil(MIN_CHUNKS))
        .clamp(1, g.batch.max(1));
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
            let mut rows: [Vec<T>; 4] = Default::default();
            for i in 0..images {
                let image = &x_data[(first + i) * image_in..(first + i + 1) * image_in];
                for channel in 0..c_in {
                    let plane = &image[channel * g.in_pixels()..(channel + 1) * g.in_pixels()];
                    transform_plane(&g, plane, v, channel, c_in, total, i * per_image, &mut rows);
                }
            }
            let m = sized::<T>(&mut scratch.product, POINTS * c_out * total);
            let mut out_rows: [Vec<T>; 8] = Default::default();
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
                        &mut out_rows,
                    );
                }
            }
        },
    );
}
