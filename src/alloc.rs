//! A global allocator wrapper that tracks live and peak heap bytes, for the per-step memory figures of
//! `tilt reproduce` and the benchmarks. Written here (a few lines over `System`) rather than taken from a crate:
//! only the peak between two points is needed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct PeakAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

/// Live heap bytes now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Restart peak tracking from the current live size; returns that size.
pub fn reset_peak() -> usize {
    let now = live();
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// Peak live heap bytes since the last [`reset_peak`] (0 when the allocator is not installed).
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Keep freed heap memory in the process instead of handing it back to the kernel after every tensor.
///
/// A sampling step allocates and frees tensors of a few MiB dozens of times. With glibc's defaults such blocks are
/// returned to the kernel and page-faulted in again by the next operation: `perf` put 20 % of a sampling run's CPU
/// time in the kernel's page-fault path (docs/theory.md §8). Here blocks below 32 MiB come from the heap and up to
/// 256 MiB of freed memory stays mapped for reuse; the peak of live memory is unchanged. A no-op except on glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes two tuning parameters of the allocator; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
