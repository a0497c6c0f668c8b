//! A safetensors checkpoint: parsed, checksums verified, loaded into the small CNN.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static MODEL: OnceLock<pare::tensor::Sequential> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz");
    let _ = pare::tensor::io::read_f32_tensors(data, path);
    let mut model = MODEL
        .get_or_init(|| pare::tensor::models::small_cnn(0))
        .clone();
    let _ = pare::tensor::checkpoint::load_bytes(&mut model, data, path);
});
