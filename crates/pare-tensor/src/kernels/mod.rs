//! Numeric kernels shared by training and inference: plain functions over ndarray views.

pub mod buffers;
pub mod conv;
pub mod gemm;
pub mod pool;

use std::cell::Cell;

thread_local! {
    static SEQUENTIAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the kernels' own multi-threading turned off on this thread. `Fit` runs each
/// data-parallel shard this way: the shards already keep every core busy, and nested parallel
/// kernels would only add wake-ups and synchronisation.
pub fn with_sequential_kernels<R>(f: impl FnOnce() -> R) -> R {
    let before = SEQUENTIAL.with(|s| s.replace(true));
    let out = f();
    SEQUENTIAL.with(|s| s.set(before));
    out
}

/// True unless the calling thread is inside [`with_sequential_kernels`].
pub fn parallel_allowed() -> bool {
    !SEQUENTIAL.with(|s| s.get())
}
