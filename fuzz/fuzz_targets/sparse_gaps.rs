//! The Rice-coded gap format, as int8 and as f32.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pare::prune::GapCoded;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = GapCoded::<i8>::from_bytes(data) {
        let _ = t.decode();
    }
    if let Ok(t) = GapCoded::<f32>::from_bytes(data) {
        let _ = t.decode();
    }
});
