//! An int8 model file (dense or sparse-coded kernels); a model that loads is run once.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let codec = pare::codecs::SparseCodec;
    let Ok((model, _)) = pare::quant::QuantizedModel::from_bytes_verified(data, Some(&codec))
    else {
        return;
    };
    // A loaded model must run (or refuse the input) without panicking; keep the work small.
    let per_example: usize = model.input_shape().iter().product();
    if per_example <= 1 << 12 {
        let mut shape = vec![1];
        shape.extend_from_slice(model.input_shape());
        let x = ndarray::ArrayD::<f32>::from_elem(ndarray::IxDyn(&shape), 0.5);
        let _ = model.predict(x.view());
    }
});
