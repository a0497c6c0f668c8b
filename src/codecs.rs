//! Glue between crates that may not depend on each other (quant and prune never do).

use ndarray::{ArrayD, ArrayViewD};
use pare_prune::file::{SPARSE_ENCODING, decode_i8, encode_i8};
use pare_quant::file::{CodecError, WeightCodec};

/// Stores a pruned model's int8 kernels in pare-prune's sparse encoding (bitmask or gap-coded
/// positions plus the non-zero values) inside a pare-quant model file, wherever that is smaller
/// than the dense tensor.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pare::codecs::SparseCodec;
/// let model = pare::tensor::models::small_cnn(0);
/// let calibration = ndarray::Array4::<f32>::zeros((1, 28, 28, 1));
/// let config = pare::quant::ConvertConfig::default();
/// let q = pare::quant::convert(&model, calibration.view().into_dyn(), &config)?;
/// let bytes = q.to_bytes_with(&SparseCodec)?;
/// let back = pare::quant::QuantizedModel::from_bytes_with(&bytes, &SparseCodec)?;
/// assert_eq!(back.to_bytes_with(&SparseCodec)?, bytes);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SparseCodec;

impl WeightCodec for SparseCodec {
    fn name(&self) -> &str {
        SPARSE_ENCODING
    }
    fn encode(&self, _tensor: &str, weights: ArrayViewD<'_, i8>) -> Option<Vec<u8>> {
        encode_i8(weights)
    }
    fn decode(
        &self,
        _tensor: &str,
        shape: &[usize],
        bytes: &[u8],
    ) -> Result<ArrayD<i8>, CodecError> {
        Ok(decode_i8(shape, bytes)?)
    }
}
