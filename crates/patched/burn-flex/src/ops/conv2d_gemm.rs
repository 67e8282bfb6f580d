//! 2-D convolution as im2col + GEMM on NCHW data, forward and both backward passes (f32, f64, f16).
//!
//! The generic path (`conv::conv3d_impl`) converts the input to NHWC with a scalar loop, builds im2col tiles
//! element by element, multiplies, and scatters the product back element by element; the backward passes
//! went through Burn's default rules, where the input gradient is a transposed convolution with a scalar
//! col2im and the weight gradient is a convolution over batch-and-channel-swapped copies of the input and the
//! output gradient (a kernel as large as the image). This module keeps everything in NCHW:
//!
//! - im2col writes, for each (input channel, kernel row, kernel column), one row of the column matrix
//!   `cols[c_in/groups * k_h * k_w, out_h * out_w]` as shifted copies of input rows (contiguous for stride 1),
//!   so the forward product `weight[c_out, rows] @ cols` is the output image in NCHW directly;
//! - the input gradient is `weight^T @ grad` followed by col2im, which adds those shifted rows back;
//! - the weight gradient is `grad @ cols^T` accumulated over images, the bias gradient a sum per channel.
//!
//! Images are processed in chunks large enough that a product has at least [`MIN_COLUMNS`] columns (several
//! small images per product); chunks run in parallel on rayon's pool when it has more than one thread, each
//! worker reusing its scratch buffers. Every sum is taken in an order fixed by the shapes alone (the weight
//! gradient accumulates chunks in order within at most [`WEIGHT_PARTIALS`] fixed partitions, then adds the
//! partitions in order), so results do not depend on the number of threads.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_backend::ops::conv::calculate_conv_output_size;
use burn_std::{Bytes, Shape, f16};
use core::mem::MaybeUninit;
use num_traits::Float;

use crate::{FlexTensor, Layout};

mod winograd;

/// Columns a chunk's product should have at least: below this `gemm`'s per-call cost and its packing of the
/// weight dominate, so several images share one product.
const MIN_COLUMNS: usize = 512;

/// `gemm` reads a column matrix in place, without packing it, when its length along the output pixels is a
/// multiple of the AVX-512 f32 vector width (16); other lengths are copied into a packed buffer first.
const COLUMN_ALIGN: usize = 16;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A batch is split into at least this many chunks where it has the images, so that several threads share the
/// work of small images (the chunking depends on the shapes only, never on the thread count: `gemm`'s blocking,
/// and so its rounding, depends on the product's size).
const MIN_CHUNKS: usize = 4;

/// Upper bound on a chunk's column matrix, in elements.
const MAX_CHUNK_ELEMENTS: usize = 4 << 20;

/// Fixed partitions of the weight gradient's sum over chunks.
const WEIGHT_PARTIALS: usize = 8;

/// An element type `gemm` multiplies natively.
pub(crate) trait ConvElement:
    Float + bytemuck::Pod + burn_backend::Element + core::ops::AddAssign + Send + Sync + 'static
{
}
impl ConvElement for f32 {}
impl ConvElement for f64 {}
impl ConvElement for f16 {}

/// Whether this module handles a convolution of this dtype (`bf16` goes through f32 at the call site).
pub(crate) fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64 | DType::F16)
}

/// The sizes of one 2-D convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    channels_in: usize,
    in_h: usize,
    in_w: usize,
    channels_out: usize,
    groups: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    /// `options` must be symmetric (the callers pad asymmetric inputs first).
    fn new(x_shape: &[usize], weight_shape: &[usize], options: &ConvOptions<2>) -> Self {
        let [batch, channels_in, in_h, in_w] = [x_shape[0], x_shape[1], x_shape[2], x_shape[3]];
        let [channels_out, _, kernel_h, kernel_w] = [
            weight_shape[0],
            weight_shape[1],
            weight_shape[2],
            weight_shape[3],
        ];
        let padding = options.padding_begin();
        let [stride_h, stride_w] = options.stride;
        let [dilation_h, dilation_w] = options.dilation;
        Self {
            batch,
            channels_in,
            in_h,
            in_w,
            channels_out,
            groups: options.groups.max(1),
            kernel_h,
            kernel_w,
            stride: options.stride,
            padding,
            dilation: options.dilation,
            out_h: calculate_conv_output_size(kernel_h, stride_h, padding[0], dilation_h, in_h),
            out_w: calculate_conv_output_size(kernel_w, stride_w, padding[1], dilation_w, in_w),
        }
    }

    fn in_per_group(&self) -> usize {
        self.channels_in / self.groups
    }

    fn out_per_group(&self) -> usize {
        self.channels_out / self.groups
    }

    /// Rows of a group's column matrix: the length of one output pixel's receptive field in that group.
    fn rows(&self) -> usize {
        self.in_per_group() * self.kernel_h * self.kernel_w
    }

    fn out_pixels(&self) -> usize {
        self.out_h * self.out_w
    }

    fn in_pixels(&self) -> usize {
        self.in_h * self.in_w
    }

    fn image_in(&self) -> usize {
        self.channels_in * self.in_pixels()
    }

    fn image_out(&self) -> usize {
        self.channels_out * self.out_pixels()
    }

    /// A 1x1 kernel with stride 1 and no padding: the input image is its own column matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel_h == 1 && self.kernel_w == 1 && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// Images per chunk: enough for [`MIN_COLUMNS`] columns, rounded up so that the column count is a
    /// multiple of [`COLUMN_ALIGN`] where that costs at most twice the columns, within
    /// [`MAX_CHUNK_ELEMENTS`] and leaving at least [`MIN_CHUNKS`] chunks.
    fn images_per_chunk(&self) -> usize {
        let pixels = self.out_pixels().max(1);
        let mut wanted = MIN_COLUMNS.div_ceil(pixels);
        let step = COLUMN_ALIGN / gcd(pixels, COLUMN_ALIGN);
        let aligned = wanted.div_ceil(step) * step;
        if aligned <= 2 * wanted {
            wanted = aligned;
        }
        let affordable = MAX_CHUNK_ELEMENTS / (self.rows().max(self.channels_out).max(1) * pixels);
        wanted
            .min(affordable)
            .min(self.batch.div_ceil(MIN_CHUNKS))
            .clamp(1, self.batch.max(1))
    }

    /// The input gradient's geometry as a forward convolution of the output gradient, when there is one: stride
    /// 1, padding at most the kernel's reach (the full convolution's padding `dilation * (k - 1) - padding` is
    /// then non-negative), and not pointwise (that product needs no column matrix either way).
    fn full_convolution(&self) -> Option<Geometry> {
        let reach = [
            self.dilation[0] * (self.kernel_h - 1),
            self.dilation[1] * (self.kernel_w - 1),
        ];
        let fits =
            self.stride == [1, 1] && self.padding[0] <= reach[0] && self.padding[1] <= reach[1];
        if !fits || self.is_pointwise() {
            return None;
        }
        Some(Geometry {
            channels_in: self.channels_out,
            in_h: self.out_h,
            in_w: self.out_w,
            channels_out: self.channels_in,
            padding: [reach[0] - self.padding[0], reach[1] - self.padding[1]],
            out_h: self.in_h,
            out_w: self.in_w,
            ..*self
        })
    }

    /// Input planes of group `group` of one image.
    fn group_input<'a, T>(&self, image: &'a [T], group: usize) -> &'a [T] {
        let len = self.in_per_group() * self.in_pixels();
        &image[group * len..(group + 1) * len]
    }
}

/// `weight [c_out, c_in / groups, k_h, k_w]` as the kernel of the input gradient's convolution:
/// `[c_in, c_out / groups, k_h, k_w]`, each group's channel axes swapped and the taps reversed.
fn flipped_transposed_kernel<T: ConvElement>(g: &Geometry, weight: &[T]) -> Vec<T> {
    let (ipg, opg, taps) = (g.in_per_group(), g.out_per_group(), g.kernel_h * g.kernel_w);
    let mut flipped = vec![T::zero(); weight.len()];
    for group in 0..g.groups {
        for o in 0..opg {
            for i in 0..ipg {
                let src = &weight[((group * opg + o) * ipg + i) * taps..][..taps];
                let dst = &mut flipped[((group * ipg + i) * opg + o) * taps..][..taps];
                for (d, &s) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = s;
                }
            }
        }
    }
    flipped
}

/// The output positions `o` in `0..out_len` whose input index `o * stride + offset` lies in `0..in_len`.
fn valid_range(out_len: usize, stride: usize, offset: isize, in_len: usize) -> (usize, usize) {
    let stride = stride as isize;
    let lo = if offset >= 0 {
        0
    } else {
        (-offset + stride - 1) / stride
    };
    let end = in_len as isize - offset;
    let hi = if end <= 0 {
        0
    } else {
        (end + stride - 1) / stride
    };
    let hi = (hi as usize).min(out_len);
    ((lo as usize).min(hi), hi)
}

/// Writes the column matrix of one image's group (`input`: its `c_in / groups` planes) into `cols`, row `r`
/// starting at `r * ld + col0`.
fn im2col<T: ConvElement>(g: &Geometry, input: &[T], cols: &mut [T], ld: usize, col0: usize) {
    let [stride_h, stride_w] = g.stride;
    let [dilation_h, dilation_w] = g.dilation;
    let [pad_h, pad_w] = g.padding;
    let (pixels, zero) = (g.out_pixels(), T::zero());
    for channel in 0..g.in_per_group() {
        let plane = &input[channel * g.in_pixels()..(channel + 1) * g.in_pixels()];
        for ki in 0..g.kernel_h {
            let offset_h = (ki * dilation_h) as isize - pad_h as isize;
            let (oh_lo, oh_hi) = valid_range(g.out_h, stride_h, offset_h, g.in_h);
            for kj in 0..g.kernel_w {
                let row = (channel * g.kernel_h + ki) * g.kernel_w + kj;
                let dst = &mut cols[row * ld + col0..row * ld + col0 + pixels];
                let offset_w = (kj * dilation_w) as isize - pad_w as isize;
                let (ow_lo, ow_hi) = valid_range(g.out_w, stride_w, offset_w, g.in_w);
                let first = ((ow_lo * stride_w) as isize + offset_w) as usize;
                dst[..oh_lo * g.out_w].fill(zero);
                dst[oh_hi * g.out_w..].fill(zero);
                if g.stride == [1, 1] && g.out_w == g.in_w && oh_lo < oh_hi && ow_lo < ow_hi {
                    // Same-size output: the tap's rows are one shifted run of the plane. Copy it at once, then
                    // clear the columns that ran over into the neighbouring rows.
                    let (start, end) = (oh_lo * g.out_w + ow_lo, (oh_hi - 1) * g.out_w + ow_hi);
                    let src_start =
                        (((oh_lo as isize + offset_h) * g.in_w as isize) + first as isize) as usize;
                    dst[start..end].copy_from_slice(&plane[src_start..src_start + end - start]);
                    for oh in oh_lo..oh_hi {
                        let out_row = &mut dst[oh * g.out_w..(oh + 1) * g.out_w];
                        clear_edge(&mut out_row[..ow_lo]);
                        clear_edge(&mut out_row[ow_hi..]);
                    }
                    continue;
                }
                for oh in oh_lo..oh_hi {
                    let ih = ((oh * stride_h) as isize + offset_h) as usize;
                    let src = &plane[ih * g.in_w..(ih + 1) * g.in_w];
                    let out_row = &mut dst[oh * g.out_w..(oh + 1) * g.out_w];
                    clear_edge(&mut out_row[..ow_lo]);
                    clear_edge(&mut out_row[ow_hi..]);
                    if stride_w == 1 {
                        out_row[ow_lo..ow_hi].copy_from_slice(&src[first..first + ow_hi - ow_lo]);
                    } else {
                        for (k, value) in out_row[ow_lo..ow_hi].iter_mut().enumerate() {
                            *value = src[first + k * stride_w];
                        }
                    }
                }
            }
        }
    }
}

/// Zeroes the few columns of a row that a tap's padding leaves: one or two with the usual padding, where a `memset`
/// call (what `fill` becomes) costs more than the stores; it ran once per channel, tap and output row.
#[inline]
fn clear_edge<T: ConvElement>(edge: &mut [T]) {
    match edge.len() {
        0 => {}
        1 => edge[0] = T::zero(),
        2 => {
            edge[0] = T::zero();
            edge[1] = T::zero();
        }
        _ => edge.fill(T::zero()),
    }
}

/// Adds the column-matrix gradient of one image's group (`cols`, row `r` at `r * ld + col0`) into that
/// group's input-gradient planes.
fn col2im_add<T: ConvElement>(
    g: &Geometry,
    cols: &[T],
    ld: usize,
    col0: usize,
    input_grad: &mut [T],
) {
    let [stride_h, stride_w] = g.stride;
    let [dilation_h, dilation_w] = g.dilation;
    let [pad_h, pad_w] = g.padding;
    let pixels = g.out_pixels();
    for channel in 0..g.in_per_group() {
        let plane = &mut input_grad[channel * g.in_pixels()..(channel + 1) * g.in_pixels()];
        for ki in 0..g.kernel_h {
            let offset_h = (ki * dilation_h) as isize - pad_h as isize;
            let (oh_lo, oh_hi) = valid_range(g.out_h, stride_h, offset_h, g.in_h);
            for kj in 0..g.kernel_w {
                let row = (channel * g.kernel_h + ki) * g.kernel_w + kj;
                let src = &cols[row * ld + col0..row * ld + col0 + pixels];
                let offset_w = (kj * dilation_w) as isize - pad_w as isize;
                let (ow_lo, ow_hi) = valid_range(g.out_w, stride_w, offset_w, g.in_w);
                let first = ((ow_lo * stride_w) as isize + offset_w) as usize;
                for oh in oh_lo..oh_hi {
                    let ih = ((oh * stride_h) as isize + offset_h) as usize;
                    let dst = &mut plane[ih * g.in_w..(ih + 1) * g.in_w];
                    let grad_row = &src[oh * g.out_w + ow_lo..oh * g.out_w + ow_hi];
                    if stride_w == 1 {
                        for (d, &s) in dst[first..first + grad_row.len()].iter_mut().zip(grad_row) {
                            *d += s;
                        }
                    } else {
                        for (k, &s) in grad_row.iter().enumerate() {
                            dst[first + k * stride_w] += s;
                        }
                    }
                }
            }
        }
    }
}

/// A matrix operand: `at(r, c) = ptr[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
struct Operand<T> {
    ptr: *const T,
    row_stride: isize,
    col_stride: isize,
}

impl<T> Operand<T> {
    /// Row-major with row stride `ld`.
    fn rows(data: &[T], ld: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            row_stride: ld as isize,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with row stride `ld`.
    fn transposed(data: &[T], ld: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            row_stride: 1,
            col_stride: ld as isize,
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]`, `dst` row-major with row stride `ld`.
///
/// # Safety
/// The operands must cover the `m x k` and `k x n` elements their strides address, and `dst` must hold
/// `(m - 1) * ld + n` writable elements.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm<T: ConvElement>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    ld: usize,
    accumulate: bool,
    lhs: Operand<T>,
    rhs: Operand<T>,
    parallelism: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ld as isize,
            accumulate,
            lhs.ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr,
            rhs.col_stride,
            rhs.row_stride,
            if accumulate { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Per-worker buffers, kept by each thread between calls (see [`Lease`]) so that a convolution does not
/// allocate and zero its column matrix again on every call. Stored as `u64` words: any element type fits.
#[derive(Default)]
struct Scratch {
    cols: Vec<u64>,
    product: Vec<u64>,
}

#[cfg(feature = "std")]
std::thread_local! {
    static SPARE: core::cell::RefCell<Option<Scratch>> = const { core::cell::RefCell::new(None) };
}

/// This thread's scratch buffers, returned to it when dropped.
struct Lease(Scratch);

impl Lease {
    fn take() -> Self {
        #[cfg(feature = "std")]
        if let Ok(Some(scratch)) = SPARE.try_with(|spare| spare.borrow_mut().take()) {
            return Self(scratch);
        }
        Self(Scratch::default())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        #[cfg(feature = "std")]
        {
            let scratch = core::mem::take(&mut self.0);
            let _ = SPARE.try_with(|spare| *spare.borrow_mut() = Some(scratch));
        }
    }
}

/// The first `len` elements of `buffer` as `T`, grown (with zeros) if needed; callers overwrite what they read.
fn sized<T: ConvElement>(buffer: &mut Vec<u64>, len: usize) -> &mut [T] {
    let words = (len * core::mem::size_of::<T>()).div_ceil(8);
    if buffer.len() < words {
        buffer.resize(words, 0);
    }
    &mut bytemuck::cast_slice_mut::<u64, T>(&mut buffer[..words])[..len]
}

/// Whether to fan `chunks` out over rayon, and the parallelism each product should then use.
fn plan(chunks: usize) -> (bool, gemm::Parallelism) {
    #[cfg(feature = "rayon")]
    {
        if rayon::current_num_threads() > 1 {
            return if chunks > 1 {
                (true, gemm::Parallelism::None)
            } else {
                (false, gemm::Parallelism::Rayon(0))
            };
        }
    }
    let _ = chunks;
    (false, gemm::Parallelism::None)
}

/// Runs `work(scratch, chunk index, chunk)` over `data` split into chunks of `chunk_len` elements, in
/// parallel when `parallel`.
fn for_each_chunk<E: Send, F>(data: &mut [E], chunk_len: usize, parallel: bool, work: F)
where
    F: Fn(&mut Scratch, usize, &mut [E]) + Sync + Send,
{
    #[cfg(feature = "rayon")]
    if parallel {
        use rayon::prelude::*;
        data.par_chunks_mut(chunk_len)
            .enumerate()
            .for_each_init(Lease::take, |lease, (index, chunk)| {
                work(&mut lease.0, index, chunk)
            });
        return;
    }
    let _ = parallel;
    let mut lease = Lease::take();
    for (index, chunk) in data.chunks_mut(chunk_len).enumerate() {
        work(&mut lease.0, index, chunk);
    }
}

fn tensor<T: ConvElement>(data: Vec<T>, shape: &[usize]) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(Shape::from(shape.to_vec())),
        T::dtype(),
    )
}

/// Images `first..first + images` of `grad [b, c_out, pixels]` as `[c_out, images * pixels]`: the image
/// itself when there is one, else gathered into `buffer`.
fn chunk_grad<'a, T: ConvElement>(
    grad: &'a [T],
    g: &Geometry,
    first: usize,
    images: usize,
    buffer: &'a mut Vec<u64>,
) -> &'a [T] {
    if images == 1 {
        return &grad[first * g.image_out()..(first + 1) * g.image_out()];
    }
    let gathered = sized(buffer, g.channels_out * images * g.out_pixels());
    gather_channels_first(grad, g, first, images, gathered);
    gathered
}

/// Copies images `first..first + images` of `grad [b, c_out, pixels]` into `dst [c_out, images * pixels]`.
fn gather_channels_first<T: ConvElement>(
    grad: &[T],
    g: &Geometry,
    first: usize,
    images: usize,
    dst: &mut [T],
) {
    let (pixels, c_out) = (g.out_pixels(), g.channels_out);
    let ld = images * pixels;
    for i in 0..images {
        for c in 0..c_out {
            dst[c * ld + i * pixels..][..pixels]
                .copy_from_slice(&grad[((first + i) * c_out + c) * pixels..][..pixels]);
        }
    }
}

/// Forward 2-D convolution, `x [b, c_in, h, w]`, `weight [c_out, c_in / groups, k_h, k_w]`, `bias [c_out]`,
/// symmetric `options`.
pub(crate) fn conv2d<T: ConvElement>(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let weight = weight.to_contiguous();
    let g = Geometry::new(x.layout().shape(), weight.layout().shape(), options);
    let out_shape = [g.batch, g.channels_out, g.out_h, g.out_w];
    let mut output = forward(&g, x.storage::<T>(), weight.storage::<T>());
    if let Some(bias) = bias {
        let bias = bias.to_contiguous();
        let bias_data: &[T] = bias.storage();
        let (planes, pixels) = (g.channels_out.max(1), g.out_pixels().max(1));
        // Plane by plane, split over rayon's pool for large outputs (one addition per element: the split cannot
        // change the result).
        super::elementwise_par::for_each_rows(&mut output, pixels, pixels, |first, block| {
            for (k, plane) in block.chunks_mut(pixels).enumerate() {
                let b = bias_data[(first + k) % planes];
                plane.iter_mut().for_each(|v| *v += b);
            }
        });
    }
    tensor(output, &out_shape)
}

/// The convolution of `x_data` (`[b, c_in, in_h, in_w]`) with `w_data` (`[c_out, c_in / groups, k_h, k_w]`).
///
/// The output is not zeroed first: every path writes each of its values (a zeroing pass over a fresh buffer
/// the size of the output was 1.5 % of a U-Net training step on one thread of an AMD EPYC with AVX-512).
fn forward<T: ConvElement>(g: &Geometry, x_data: &[T], w_data: &[T]) -> Vec<T> {
    let len = g.batch * g.image_out();
    let mut output = Vec::with_capacity(len);
    write_forward(g, x_data, w_data, &mut output.spare_capacity_mut()[..len]);
    // SAFETY: `write_forward` wrote every one of the first `len` values (see its paths).
    unsafe { output.set_len(len) };
    output
}

/// Writes every value of [`forward`]'s output into `output`: the Winograd path writes each output pixel of
/// every plane, the GEMM paths (which never read their destination) each group's rows of every image, or copy them.
fn write_forward<T: ConvElement>(
    g: &Geometry,
    x_data: &[T],
    w_data: &[T],
    output: &mut [MaybeUninit<T>],
) {
    let g = *g;
    let (rows, pixels, image_out) = (g.rows(), g.out_pixels(), g.image_out());
    let (out_per_group, image_in) = (g.out_per_group(), g.image_in());
    if output.is_empty() {
        return;
    }
    if winograd::applies::<T>(&g) {
        winograd::forward(&g, x_data, w_data, output);
        return;
    }
    let per_chunk = g.images_per_chunk();
    let (parallel, parallelism) = plan(g.batch.div_ceil(per_chunk));
    let group_weight = |group: usize| Operand::rows(&w_data[group * out_per_group * rows..], rows);

    for_each_chunk(
        output,
        per_chunk * image_out,
        parallel,
        |scratch, index, out| {
            let first = index * per_chunk;
            let images = out.len() / image_out;
            let image = |i: usize| &x_data[(first + i) * image_in..(first + i + 1) * image_in];
            if g.is_pointwise() || images == 1 {
                for i in 0..images {
                    for group in 0..g.groups {
                        let input = g.group_input(image(i), group);
                        let columns = if g.is_pointwise() {
                            input
                        } else {
                            let cols = sized(&mut scratch.cols, rows * pixels);
                            im2col(&g, input, cols, pixels, 0);
                            &*cols
                        };
                        let dst = out[i * image_out + group * out_per_group * pixels..]
                            .as_mut_ptr()
                            .cast::<T>();
                        let rhs = Operand::rows(columns, pixels);
                        unsafe {
                            gemm(
                                out_per_group,
                                pixels,
                                rows,
                                dst,
                                pixels,
                                false,
                                group_weight(group),
                                rhs,
                                parallelism,
                            )
                        };
                    }
                }
                return;
            }
            let ld = images * pixels;
            let Scratch { cols, product } = scratch;
            let product = sized(product, g.channels_out * ld);
            for group in 0..g.groups {
                let cols = sized(cols, rows * ld);
                for i in 0..images {
                    im2col(&g, g.group_input(image(i), group), cols, ld, i * pixels);
                }
                let dst = product[group * out_per_group * ld..].as_mut_ptr();
                let rhs = Operand::rows(cols, ld);
                unsafe {
                    gemm(
                        out_per_group,
                        ld,
                        rows,
                        dst,
                        ld,
                        false,
                        group_weight(group),
                        rhs,
                        parallelism,
                    )
                };
            }
            for i in 0..images {
                for c in 0..g.channels_out {
                    out[i * image_out + c * pixels..][..pixels]
                        .write_copy_of_slice(&product[c * ld + i * pixels..][..pixels]);
                }
            }
        },
    );
}

/// Gradient of a 2-D convolution with respect to its input (of shape `x_shape`), symmetric `options`.
pub(crate) fn conv2d_x_backward<T: ConvElement>(
    x_shape: &[usize],
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let weight = weight.to_contiguous();
    let output_grad = output_grad.to_contiguous();
    let g = Geometry::new(x_shape, weight.layout().shape(), options);
    let w_data: &[T] = weight.storage();
    let grad: &[T] = output_grad.storage();
    if let Some(full) = g.full_convolution() {
        // With stride 1 the input gradient is a convolution of the output gradient with the flipped,
        // transposed kernel: one im2col copy and one product, and no scatter-add.
        let x_grad = forward(&full, grad, &flipped_transposed_kernel(&g, w_data));
        return tensor(x_grad, x_shape);
    }
    let (rows, pixels, image_in) = (g.rows(), g.out_pixels(), g.image_in());
    let (out_per_group, in_group) = (g.out_per_group(), g.in_per_group() * g.in_pixels());
    let mut x_grad = super::elementwise_par::filled(g.batch * image_in, T::zero());
    if x_grad.is_empty() || pixels == 0 {
        return tensor(x_grad, x_shape);
    }
    let per_chunk = g.images_per_chunk();
    let (parallel, parallelism) = plan(g.batch.div_ceil(per_chunk));
    // A group's weight transposed: [rows, out_per_group].
    let group_weight_t =
        |group: usize| Operand::transposed(&w_data[group * out_per_group * rows..], rows);

    for_each_chunk(
        &mut x_grad,
        per_chunk * image_in,
        parallel,
        |scratch, index, dx| {
            let first = index * per_chunk;
            let images = dx.len() / image_in;
            let Scratch { cols, product } = scratch;
            let ld = images * pixels;
            // The chunk's output gradient as [c_out, ld].
            let grad_chunk = chunk_grad(grad, &g, first, images, product);
            for group in 0..g.groups {
                let rhs = Operand::rows(&grad_chunk[group * out_per_group * ld..], ld);
                if g.is_pointwise() && images == 1 {
                    let dst = dx[group * in_group..].as_mut_ptr();
                    unsafe {
                        gemm(
                            rows,
                            pixels,
                            out_per_group,
                            dst,
                            pixels,
                            false,
                            group_weight_t(group),
                            rhs,
                            parallelism,
                        )
                    };
                    continue;
                }
                let cols = sized(cols, rows * ld);
                unsafe {
                    gemm(
                        rows,
                        ld,
                        out_per_group,
                        cols.as_mut_ptr(),
                        ld,
                        false,
                        group_weight_t(group),
                        rhs,
                        parallelism,
                    )
                };
                for i in 0..images {
                    let planes = &mut dx
                        [i * image_in + group * in_group..i * image_in + (group + 1) * in_group];
                    col2im_add(&g, cols, ld, i * pixels, planes);
                }
            }
        },
    );
    tensor(x_grad, x_shape)
}

/// Gradient of a 2-D convolution with respect to its weight (of shape `weight_shape`), symmetric `options`.
pub(crate) fn conv2d_weight_backward<T: ConvElement>(
    x: FlexTensor,
    weight_shape: &[usize],
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let output_grad = output_grad.to_contiguous();
    let g = Geometry::new(x.layout().shape(), weight_shape, options);
    let x_data: &[T] = x.storage();
    let grad: &[T] = output_grad.storage();
    let (rows, pixels, image_in) = (g.rows(), g.out_pixels(), g.image_in());
    let out_per_group = g.out_per_group();
    let weight_len = g.channels_out * rows;
    if weight_len == 0 || g.batch == 0 || pixels == 0 {
        return tensor(vec![T::zero(); weight_len], weight_shape);
    }
    if winograd::applies::<T>(&g) {
        return tensor(winograd::weight_backward(&g, x_data, grad), weight_shape);
    }
    let per_chunk = g.images_per_chunk();
    let chunks = g.batch.div_ceil(per_chunk);
    let chunks_per_partial = chunks.div_ceil(chunks.min(WEIGHT_PARTIALS));
    let partials = chunks.div_ceil(chunks_per_partial);
    let (parallel, parallelism) = plan(partials);

    let mut sums = vec![T::zero(); partials * weight_len];
    for_each_chunk(&mut sums, weight_len, parallel, |scratch, partial, sum| {
        let Scratch { cols, product } = scratch;
        let last = ((partial + 1) * chunks_per_partial).min(chunks);
        for (n, chunk) in (partial * chunks_per_partial..last).enumerate() {
            let first = chunk * per_chunk;
            let images = per_chunk.min(g.batch - first);
            let ld = images * pixels;
            let grad_chunk = chunk_grad(grad, &g, first, images, product);
            for group in 0..g.groups {
                // cols^T [ld, rows]: the image itself when pointwise, else its column matrix.
                let rhs = if g.is_pointwise() && images == 1 {
                    Operand::transposed(
                        g.group_input(&x_data[first * image_in..(first + 1) * image_in], group),
                        pixels,
                    )
                } else {
                    let cols = sized(cols, rows * ld);
                    for i in 0..images {
                        let input = g.group_input(
                            &x_data[(first + i) * image_in..(first + i + 1) * image_in],
                            group,
                        );
                        if g.is_pointwise() {
                            for c in 0..rows {
                                cols[c * ld + i * pixels..][..pixels]
                                    .copy_from_slice(&input[c * pixels..][..pixels]);
                            }
                        } else {
                            im2col(&g, input, cols, ld, i * pixels);
                        }
                    }
                    Operand::transposed(cols, ld)
                };
                let lhs = Operand::rows(&grad_chunk[group * out_per_group * ld..], ld);
                let dst = sum[group * out_per_group * rows..].as_mut_ptr();
                unsafe {
                    gemm(
                        out_per_group,
                        rows,
                        ld,
                        dst,
                        rows,
                        n > 0,
                        lhs,
                        rhs,
                        parallelism,
                    )
                };
            }
        }
    });

    let (total, rest) = sums.split_at_mut(weight_len);
    for partial in rest.chunks(weight_len) {
        total.iter_mut().zip(partial).for_each(|(t, &p)| *t += p);
    }
    sums.truncate(weight_len);
    tensor(sums, weight_shape)
}

/// Gradient of a 2-D convolution with respect to its bias: the output gradient summed per channel.
pub(crate) fn conv2d_bias_backward<T: ConvElement>(output_grad: FlexTensor) -> FlexTensor {
    let output_grad = output_grad.to_contiguous();
    let shape = output_grad.layout().shape();
    let [batch, channels] = [shape[0], shape[1]];
    let pixels: usize = shape[2..].iter().product();
    let grad: &[T] = output_grad.storage();
    let mut sums = vec![T::zero(); channels];
    if pixels == 0 {
        return tensor(sums, &[channels]);
    }
    // Each plane's sum (on rayon's pool for large gradients), then the batch's in order: the same order as one
    // plane at a time, whatever the split.
    let mut plane_sums = vec![T::zero(); batch * channels];
    super::elementwise_par::for_each_rows(&mut plane_sums, 1, pixels, |first, block| {
        for (k, sum) in block.iter_mut().enumerate() {
            *sum = lane_sum(&grad[(first + k) * pixels..][..pixels]);
        }
    });
    for image in plane_sums.chunks(channels.max(1)) {
        for (sum, &plane) in sums.iter_mut().zip(image) {
            *sum += plane;
        }
    }
    tensor(sums, &[channels])
}

/// A sum in eight interleaved lanes (vectorisable; the order is fixed by the length alone).
fn lane_sum<T: ConvElement>(values: &[T]) -> T {
    let mut lanes = [T::zero(); 8];
    let mut blocks = values.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            *lane += v;
        }
    }
    let mut tail = T::zero();
    for &v in blocks.remainder() {
        tail += v;
    }
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
        + tail
}
