//! The context-modelled arithmetic-coded int8 format.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pare::prune::EntropyCoded;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = EntropyCoded::from_bytes(data) {
        let _ = t.decode();
    }
    let _ = EntropyCoded::decode_bytes(data);
});
