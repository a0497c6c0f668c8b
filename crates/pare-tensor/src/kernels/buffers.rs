//! A process-wide pool of large f32 buffers.
//!
//! A training step allocates and frees the same tens of megabytes of activations every step;
//! allocators hand such blocks back to the kernel and pay page faults (and page zeroing) to get
//! them back, which cost 10–25 % of a step here. Graphs return their buffers to this pool when
//! dropped, and the kernels take them from it. One pool for all threads: gradients are made on
//! the shard threads and dropped on the thread that runs the optimizer.

use std::sync::Mutex;

/// Buffers smaller than this (in floats, 16 KiB) are left to the allocator.
const MIN_POOLED: usize = 1 << 12;
/// At most this many buffers are kept: a ResNet-8 step at batch 128 frees about 120 large ones
/// (activations, BatchNorm's normalised inputs, patch matrices, gradients), and a pool smaller
/// than a step's working set hands the excess back to the allocator every step.
const MAX_BUFFERS: usize = 256;
/// And at most this many floats in all (1 GiB), so a one-off huge batch is not kept forever.
const MAX_POOLED_FLOATS: usize = 1 << 28;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

fn take_raw(len: usize) -> Option<Vec<f32>> {
    if len < MIN_POOLED {
        return None;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    // Best fit: the smallest buffer that holds `len`, preferring one whose first `len` floats
    // are already initialised (a buffer last used for something shorter would be zero-filled
    // up to `len` by `take_any`).
    // A buffer more than twice too big is left for a request it fits: handing a patch matrix's
    // buffer to an activation sent the next patch matrix to the allocator, step after step.
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= len && b.capacity() <= 2 * len)
        .min_by_key(|(_, b)| (b.len() < len, b.capacity()))
        .map(|(i, _)| i)?;
    Some(pool.swap_remove(best))
}

/// A buffer of `len` zeros.
pub fn take_zeroed(len: usize) -> Vec<f32> {
    match take_raw(len) {
        Some(mut v) => {
            v.clear();
            v.resize(len, 0.0);
            v
        }
        None => vec![0.0; len],
    }
}

/// A buffer of `len` initialised floats with unspecified values, for callers that overwrite
/// every element.
pub fn take_any(len: usize) -> Vec<f32> {
    match take_raw(len) {
        Some(mut v) => {
            v.truncate(len);
            v.resize(len, 0.0);
            v
        }
        None => vec![0.0; len],
    }
}

/// Returns a buffer to the pool (or frees it, if small or the pool is full).
pub fn give(v: Vec<f32>) {
    if v.capacity() < MIN_POOLED {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let held: usize = pool.iter().map(|b| b.capacity()).sum();
    if pool.len() < MAX_BUFFERS && held + v.capacity() <= MAX_POOLED_FLOATS {
        pool.push(v);
    } else if let Some((i, _)) = pool
        .iter()
        .enumerate()
        .min_by_key(|(_, b)| b.capacity())
        .filter(|(_, b)| {
            b.capacity() < v.capacity() && held - b.capacity() + v.capacity() <= MAX_POOLED_FLOATS
        })
    {
        pool[i] = v;
    }
}

/// A copy of `a` in a pooled buffer.
pub fn clone_array(a: &ndarray::ArrayD<f32>) -> ndarray::ArrayD<f32> {
    if a.len() < MIN_POOLED {
        return a.clone();
    }
    let mut v = take_any(a.len());
    match a.as_slice() {
        Some(s) => super::elementwise::map_into(&mut v, s, |x| x),
        None => v.iter_mut().zip(a.iter()).for_each(|(d, s)| *d = *s),
    }
    ndarray::ArrayD::from_shape_vec(a.raw_dim(), v).expect("clone_array: shape matches length")
}

/// `f` of each element of `a`, in a pooled buffer of the same shape (standard layout).
pub fn map_array(a: &ndarray::ArrayD<f32>, f: impl Fn(f32) -> f32 + Sync) -> ndarray::ArrayD<f32> {
    let mut v = take_any(a.len());
    match a.as_slice() {
        Some(s) => super::elementwise::map_into(&mut v, s, f),
        None => v.iter_mut().zip(a.iter()).for_each(|(d, &x)| *d = f(x)),
    }
    ndarray::ArrayD::from_shape_vec(a.raw_dim(), v).expect("map_array: shape matches length")
}

/// `f(a, b)` element by element for two arrays of one shape, in a pooled buffer.
///
/// # Panics
/// If the shapes differ.
pub fn zip_map(
    a: &ndarray::ArrayD<f32>,
    b: &ndarray::ArrayD<f32>,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> ndarray::ArrayD<f32> {
    assert_eq!(a.shape(), b.shape(), "zip_map: shapes differ");
    let mut v = take_any(a.len());
    match (a.as_slice(), b.as_slice()) {
        (Some(x), Some(y)) => super::elementwise::zip_into(&mut v, x, y, f),
        _ => v
            .iter_mut()
            .zip(a.iter().zip(b.iter()))
            .for_each(|(d, (&x, &y))| *d = f(x, y)),
    }
    ndarray::ArrayD::from_shape_vec(a.raw_dim(), v).expect("zip_map: shape matches length")
}

/// Returns an array's storage to the pool.
pub fn give_array<D: ndarray::Dimension>(a: ndarray::Array<f32, D>) {
    let (v, _) = a.into_raw_vec_and_offset();
    give(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_buffers_come_back_zeroed_and_sized() {
        let mut v = take_any(MIN_POOLED * 2);
        v.iter_mut().for_each(|x| *x = 7.0);
        give(v);
        let z = take_zeroed(MIN_POOLED + 3);
        assert_eq!(z.len(), MIN_POOLED + 3);
        assert!(z.iter().all(|&x| x == 0.0));
        let a = take_any(10);
        assert_eq!(a.len(), 10);
    }

    #[test]
    fn pooled_maps_match_ndarray() {
        let a = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[3, 2000]), |i| {
            i[0] as f32 - i[1] as f32 * 0.01
        });
        let b = a.mapv(|v| v * 0.5 + 1.0);
        assert_eq!(map_array(&a, |v| v.max(0.0)), a.mapv(|v| v.max(0.0)));
        assert_eq!(zip_map(&a, &b, |x, y| x + y), &a + &b);
        // A transposed (non-standard) input keeps its logical order.
        let t = a.t().to_owned();
        let tv = a.view().reversed_axes().into_owned();
        assert_eq!(map_array(&tv, |v| v * 2.0), t.mapv(|v| v * 2.0));
    }
}
