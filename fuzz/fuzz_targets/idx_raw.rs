//! The IDX reader on raw (uncompressed) bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Inputs that start with the gzip magic belong to the idx_gz target.
    if !data.starts_with(&[0x1f, 0x8b]) {
        let _ = pare::mnist::read_idx_bytes(data, std::path::Path::new("fuzz"));
    }
});
