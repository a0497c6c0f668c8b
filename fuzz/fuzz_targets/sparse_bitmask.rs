//! The bitmask + values sparse format, as int8 and as f32.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pare::prune::sparse::SparseTensor;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = SparseTensor::<i8>::from_bytes(data) {
        let _ = t.decode();
    }
    if let Ok(t) = SparseTensor::<f32>::from_bytes(data) {
        let _ = t.decode();
    }
    let _ = pare::prune::file::decode_i8(&[3, 3, 1, 12], data);
});
