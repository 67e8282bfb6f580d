//! Where tilt's work runs: on a worker thread of rayon's global pool, the pool whose threads the CPU backend's
//! parallel operations use.
//!
//! Flex splits each large operation (a GEMM, a convolution, an element-wise pass) with rayon. Called from a thread
//! outside the pool, every such operation is handed to a sleeping worker while the caller blocks on a lock until it
//! is done: two thread wake-ups per operation, and a training step of the 2-D network makes hundreds of operations
//! of a few microseconds each. Called from a worker, the operation starts on the calling thread and only its other
//! halves go to the pool's other threads, as OpenMP's calling thread joins its own team in PyTorch.
//! `perf` put a quarter of the 2-thread 2-D training step in the scheduler (`sched_yield`, futex waits); run on a
//! worker, that step took 3.03–3.05 ms instead of 4.08–4.13 (three interleaved pairs on 2 cores of an AMD EPYC with
//! AVX-512; docs/benchmarks.md, "work on a pool worker").
//!
//! Results do not change: the pool and its size are the same, and the backend's partition of each operation depends
//! only on the pool's size (`tests/backends.rs` checks the bits of a training step on and off a worker).

/// Stack of each worker thread. The work of a whole command runs on one of them, so it gets the 8 MiB a main
/// thread has on Linux rather than rayon's default of 2 MiB.
pub const WORKER_STACK_BYTES: usize = 8 << 20;

/// Sets up rayon's global pool with [`WORKER_STACK_BYTES`] of stack per worker; the number of threads is rayon's
/// default (`RAYON_NUM_THREADS`, else one per logical CPU). Call before anything else uses rayon: the pool is built
/// once, and an error here means it already exists (built by an earlier call or by a first parallel operation,
/// with rayon's default stack) or its threads could not be started.
pub fn init_pool() -> Result<(), rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new().stack_size(WORKER_STACK_BYTES).build_global()
}

/// Runs `work` on a worker of rayon's global pool and returns its result; runs it in place when the calling thread
/// already is a worker of a rayon pool (the global one or one a caller installed).
pub fn run_on_worker<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() { work() } else { rayon::scope(|_| work()) }
}
