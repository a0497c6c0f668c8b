//! Numeric kernels shared by training and inference: plain functions over ndarray views.

pub mod buffers;
pub mod conv;
pub mod gemm;
pub mod pool;
