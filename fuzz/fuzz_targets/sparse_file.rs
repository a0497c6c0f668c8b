//! A pruned f32 model file (dense and bitmask-coded tensors), loaded into the small CNN.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static MODEL: OnceLock<pare::tensor::Sequential> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let mut model = MODEL
        .get_or_init(|| pare::tensor::models::small_cnn(0))
        .clone();
    let _ = pare::prune::file::load_sparse_bytes(&mut model, data);
});
