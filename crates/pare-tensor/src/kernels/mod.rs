//! Numeric kernels shared by training and inference: plain functions over ndarray views.

pub mod avgpool;
pub mod buffers;
pub mod conv;
pub mod depthwise;
pub mod elementwise;
pub mod gemm;
pub mod pool;

use std::cell::Cell;
use std::sync::OnceLock;

/// Which implementation runs the hand-vectorised kernels (the direct convolution of
/// [`conv::shallow`], the arg-max max-pool of [`pool`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable Rust; always available, the reference the others are tested against.
    Portable,
    /// AVX-512 (F, BW, VL) intrinsics.
    Avx512,
}

impl Kernel {
    /// True when this kernel can run on this CPU.
    pub fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            Kernel::Avx512 => avx512_available(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_available() -> bool {
    false
}

/// The kernel chosen once for this process: AVX-512 when the CPU has it, unless
/// `PARE_KERNELS=portable` (useful to compare results or to profile without SIMD).
pub fn best_kernel() -> Kernel {
    static BEST: OnceLock<Kernel> = OnceLock::new();
    *BEST.get_or_init(|| {
        if std::env::var("PARE_KERNELS").as_deref() != Ok("portable") && avx512_available() {
            Kernel::Avx512
        } else {
            Kernel::Portable
        }
    })
}

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
