//! The IDX reader on gzipped bytes (the seeds are .gz files; a mutated stream exercises the
//! decoder's errors and the reader's bound on what a forged header may allocate).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut gz = vec![0x1f, 0x8b];
    let data = if data.starts_with(&gz) {
        data
    } else {
        gz.extend_from_slice(data);
        &gz
    };
    let _ = pare::mnist::read_idx_bytes(data, std::path::Path::new("fuzz"));
});
