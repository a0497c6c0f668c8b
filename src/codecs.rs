//! Glue between crates that may not depend on each other (quant and prune never do).

use ndarray::{ArrayD, ArrayViewD};
use pare_prune::file::{SPARSE_ENCODING, decode_i8, encode_i8};
use pare_quant::file::{CodecError, WeightCodec};

/// Stores a model's int8 kernels in pare-prune's sparse encoding inside a pare-quant model file,
/// wherever that is smaller than the dense tensor: per kernel the smallest of a bitmask plus the
/// non-zero values, Rice-coded gaps plus the values, or the entropy-coded form (context-modelled
/// arithmetic coding, which also shrinks an unpruned kernel's skewed int8 codes). See
/// [`pare_prune::file::encode_i8`].
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

#[cfg(test)]
mod tests {
    use ndarray::Array4;
    use pare_quant::{ConvertConfig, QuantError, QuantizedModel, convert};
    use pare_tensor::models::small_cnn;

    use super::SparseCodec;

    #[test]
    fn pruned_int8_model_round_trips_sparse() {
        // Magnitude pruning to 80 %: all but the largest fifth of each kernel set to zero.
        let mut model = small_cnn(0);
        for p in model.params_mut() {
            if p.name.ends_with(".kernel") {
                let mut m: Vec<f32> = p.value.iter().map(|v| v.abs()).collect();
                m.sort_by(f32::total_cmp);
                let cut = m[m.len() * 4 / 5];
                p.value
                    .mapv_inplace(|v| if v.abs() < cut { 0.0 } else { v });
            }
        }
        let x = Array4::<f32>::from_shape_fn((8, 28, 28, 1), |(n, y, x, _)| {
            ((n * 7 + y * x) % 13) as f32 / 12.0
        })
        .into_dyn();
        let q = convert(&model, x.view(), &ConvertConfig::default()).unwrap();
        let dense = q.to_bytes().unwrap();
        let sparse = q.to_bytes_with(&SparseCodec).unwrap();
        assert!(
            sparse.len() < dense.len() / 2,
            "{} vs {}",
            sparse.len(),
            dense.len()
        );
        let back = QuantizedModel::from_bytes_with(&sparse, &SparseCodec).unwrap();
        assert_eq!(back.layers(), q.layers());
        let codes = q.quantize_input(x.view()).unwrap();
        assert_eq!(
            back.predict_i8(codes.view()).unwrap(),
            q.predict_i8(codes.view()).unwrap()
        );
        assert_eq!(back.to_bytes_with(&SparseCodec).unwrap(), sparse);
        assert!(matches!(
            QuantizedModel::from_bytes(&sparse),
            Err(QuantError::UnknownEncoding { .. })
        ));
        // Corrupt sparse bytes (the end of the last kernel's stream overwritten): the
        // checksum names the kernel before the codec sees them ...
        let n = sparse.len();
        let mut cut = sparse.clone();
        cut[n - 40..].fill(0xff);
        assert!(matches!(
            QuantizedModel::from_bytes_with(&cut, &SparseCodec),
            Err(QuantError::Tensor(pare_tensor::TensorError::ChecksumMismatch {
                tensor: Some(t),
                ..
            })) if t == "dense.kernel"
        ));
        // ... and in a file without checksums they are the codec's typed error.
        let st = safetensors::SafeTensors::deserialize(&cut).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&cut).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        meta.retain(|k, _| !pare_tensor::io::is_checksum_key(k));
        let unchecked = safetensors::serialize(st.tensors(), Some(meta)).unwrap();
        assert!(matches!(
            QuantizedModel::from_bytes_with(&unchecked, &SparseCodec),
            Err(QuantError::Codec { .. })
        ));
    }
}
