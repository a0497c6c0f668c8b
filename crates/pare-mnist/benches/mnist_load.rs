//! `mnist_load`: the whole MNIST data set (train + test) from the gzipped files in
//! `MNIST_DIR` (default `/work/shared/data/mnist`) to `f32` tensors.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use pare_mnist::Mnist;

fn mnist_load(c: &mut Criterion) {
    let dir = std::env::var_os("MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/data/mnist"));
    if let Err(e) = Mnist::load(&dir) {
        eprintln!("skipping mnist_load: {e}");
        return;
    }
    c.bench_function("mnist_load", |b| {
        b.iter(|| black_box(Mnist::load(&dir).unwrap()))
    });
}

criterion_group!(benches, mnist_load);
criterion_main!(benches);
