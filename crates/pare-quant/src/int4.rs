//! Lower-bit weights: int4 codes per output channel, kept as int8 in memory and packed two per
//! byte in the file.
//!
//! The convention is TFMOT's 4-bit weight quantizer (`LastValueQuantizer(num_bits=4,
//! per_axis=True, symmetric=True, narrow_range=True)`): symmetric, zero point 0, codes in the
//! narrow range [−7, 7], `scale = max|w| / 7` per output channel. The narrow range keeps the
//! grid symmetric (−8 would have no positive partner), as int8 weights drop −128.
//!
//! The engine runs int4 weights through the int8 kernels unchanged: a code in [−7, 7] is a
//! valid int8 code, and the accumulation, bias and requantization do not depend on the bit
//! width. So the only place the width shows is the weight grid (here and in the fake-quant of
//! the simulation and of quantization-aware training) and the file, where [`pack_int4`] stores
//! two codes per byte.

use ndarray::{ArrayD, ArrayViewD, Axis, Zip};

use crate::error::{QuantError, Result};
use crate::params::{Granularity, QuantParams, QuantScheme, Range, check_finite};

/// The bit width of a model's weight codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WeightBits {
    /// Symmetric int8 in [−127, 127] (TFLite's int8 spec; the default).
    #[default]
    Int8,
    /// Symmetric int4 in [−7, 7] (TFMOT's 4-bit narrow-range weights), packed two per byte in
    /// the file.
    Int4,
}

impl WeightBits {
    /// Bits per weight code.
    pub fn bits(self) -> u32 {
        match self {
            WeightBits::Int8 => 8,
            WeightBits::Int4 => 4,
        }
    }

    /// Largest code; the smallest is its negation.
    pub fn qmax(self) -> i32 {
        match self {
            WeightBits::Int8 => 127,
            WeightBits::Int4 => 7,
        }
    }

    /// Smallest code (`-qmax`: the narrow, symmetric range).
    pub fn qmin(self) -> i32 {
        -self.qmax()
    }

    /// The width for a bit count (8 or 4).
    ///
    /// # Errors
    /// [`QuantError::InvalidParameter`] for any other count.
    pub fn from_bits(bits: u32) -> Result<WeightBits> {
        match bits {
            8 => Ok(WeightBits::Int8),
            4 => Ok(WeightBits::Int4),
            _ => Err(QuantError::InvalidParameter {
                name: "weight bits",
                value: bits.to_string(),
                reason: "weights are 8 or 4 bits",
            }),
        }
    }
}

impl std::fmt::Display for WeightBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "int{}", self.bits())
    }
}

/// Symmetric scale of one range for `bits`: `max(|min|, |max|) / qmax`, with TFLite's
/// substitution of 1 for a zero range (an all-zero channel, e.g. a pruned one).
pub(crate) fn symmetric_scale_bits(range: Range, bits: WeightBits) -> (f32, f32) {
    let half = range.min.abs().max(range.max.abs());
    let qmax = bits.qmax() as f32;
    let scale = half / qmax;
    if scale < f32::MIN_POSITIVE {
        (
            crate::params::DEGENERATE_SCALE,
            1.0 / crate::params::DEGENERATE_SCALE,
        )
    } else {
        (scale, qmax / half)
    }
}

/// Quantizes weights symmetrically at `bits`, per channel along the granularity's axis or per
/// tensor: [`quantize_weights`](crate::quantize_weights) for any width. Codes are int8 values in
/// `[-qmax, qmax]`; the parameters' `qmin`/`qmax` say the width.
///
/// # Errors
/// As [`quantize_weights`](crate::quantize_weights): an axis out of range, an empty tensor, a
/// non-finite weight.
pub fn quantize_weights_bits(
    w: ArrayViewD<'_, f32>,
    granularity: Granularity,
    bits: WeightBits,
) -> Result<(ArrayD<i8>, QuantParams)> {
    if bits == WeightBits::Int8 {
        return crate::params::quantize_weights(w, granularity);
    }
    if let Some(axis) = granularity.axis()
        && axis >= w.ndim()
    {
        return Err(QuantError::AxisOutOfRange {
            axis,
            ndim: w.ndim(),
        });
    }
    if w.is_empty() {
        return Err(QuantError::ShapeMismatch {
            op: "quantize_weights_bits",
            expected: vec![],
            found: w.shape().to_vec(),
        });
    }
    check_finite(&w, "weights")?;
    let range = |c: ArrayViewD<'_, f32>| {
        let (lo, hi) = c
            .iter()
            .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        Range { min: lo, max: hi }
    };
    let ranges: Vec<Range> = match granularity.axis() {
        None => vec![range(w.view())],
        Some(axis) => w.axis_iter(Axis(axis)).map(range).collect(),
    };
    let scales: Vec<(f32, f32)> = ranges
        .iter()
        .map(|r| symmetric_scale_bits(*r, bits))
        .collect();
    let mut params = QuantParams::from_ranges(&ranges, granularity.axis(), QuantScheme::Symmetric)?;
    params.scale = scales.iter().map(|s| s.0).collect();
    params.qmin = bits.qmin();
    params.qmax = bits.qmax();
    params.validate()?;
    let (qmin, qmax) = (bits.qmin() as i64, bits.qmax() as i64);
    let code = |v: f32, inv: f32| ((v * inv).round() as i64).clamp(qmin, qmax) as i8;
    let mut out = ArrayD::<i8>::zeros(w.raw_dim());
    match granularity.axis() {
        None => Zip::from(&mut out)
            .and(&w)
            .for_each(|o, &v| *o = code(v, scales[0].1)),
        Some(axis) => {
            for (c, (wc, mut oc)) in w
                .axis_iter(Axis(axis))
                .zip(out.axis_iter_mut(Axis(axis)))
                .enumerate()
            {
                let inv = scales[c].1;
                Zip::from(&mut oc)
                    .and(&wc)
                    .for_each(|o, &v| *o = code(v, inv));
            }
        }
    }
    Ok((out, params))
}

/// Packs int4 codes two per byte in row-major order: the first code in the low nibble, the
/// second in the high one, both two's complement (ONNX's `INT4` and PyTorch's packing order);
/// an odd count leaves the last high nibble zero.
///
/// # Errors
/// [`QuantError::InvalidParameter`] for a code outside [−8, 7].
pub fn pack_int4(codes: impl IntoIterator<Item = i8>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut pending: Option<u8> = None;
    for q in codes {
        if !(-8..=7).contains(&q) {
            return Err(QuantError::InvalidParameter {
                name: "int4 code",
                value: q.to_string(),
                reason: "int4 codes are in [-8, 7]",
            });
        }
        let nibble = (q as u8) & 0x0f;
        match pending.take() {
            None => pending = Some(nibble),
            Some(lo) => out.push(lo | (nibble << 4)),
        }
    }
    if let Some(lo) = pending {
        out.push(lo);
    }
    Ok(out)
}

/// Unpacks `n` int4 codes from [`pack_int4`]'s bytes, sign-extending each nibble.
///
/// # Errors
/// [`QuantError::BadModelFile`] if `bytes` is not exactly `ceil(n / 2)` long or an odd count's
/// unused high nibble is not zero (so every file has one reading).
pub fn unpack_int4(bytes: &[u8], n: usize) -> Result<Vec<i8>> {
    if bytes.len() != n.div_ceil(2) {
        return Err(QuantError::BadModelFile {
            reason: format!(
                "{} packed int4 bytes for {n} codes, expected {}",
                bytes.len(),
                n.div_ceil(2)
            ),
        });
    }
    if n % 2 == 1 && bytes[n / 2] >> 4 != 0 {
        return Err(QuantError::BadModelFile {
            reason: "the unused high nibble of the last int4 byte is not zero".into(),
        });
    }
    // Shifting the nibble to the top and back sign-extends it.
    let nibble = |b: u8| ((b << 4) as i8) >> 4;
    Ok(bytes
        .iter()
        .flat_map(|&b| [nibble(b), nibble(b >> 4)])
        .take(n)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn pack_unpack_round_trip_every_code_and_odd_length() {
        let codes: Vec<i8> = (-8..=7).chain([3, -5, 0]).collect();
        let bytes = pack_int4(codes.iter().copied()).unwrap();
        assert_eq!(bytes.len(), codes.len().div_ceil(2));
        assert_eq!(unpack_int4(&bytes, codes.len()).unwrap(), codes);
        // Worked by hand: -8 = 0b1000 low, -7 = 0b1001 high.
        assert_eq!(bytes[0], 0x98);
        // 0 then 7 -> 0x70; a lone -1 -> 0x0f.
        assert_eq!(pack_int4([0, 7]).unwrap(), [0x70]);
        assert_eq!(pack_int4([-1]).unwrap(), [0x0f]);
    }

    #[test]
    fn pack_and_unpack_reject_bad_input() {
        assert!(pack_int4([8]).is_err());
        assert!(pack_int4([-9]).is_err());
        assert!(unpack_int4(&[0x00], 3).is_err());
        assert!(unpack_int4(&[0x00, 0x10], 3).is_err());
        assert_eq!(unpack_int4(&[0x21, 0x03], 3).unwrap(), [1, 2, 3]);
    }

    #[test]
    fn int4_weights_per_channel_by_hand() {
        // Channel 0: max |w| 0.7 -> scale 0.1; channel 1: all zero -> degenerate scale 1.
        let w =
            ArrayD::from_shape_vec(IxDyn(&[3, 2]), vec![0.7, 0.0, -0.34, 0.0, 0.05, 0.0]).unwrap();
        let (q, p) = quantize_weights_bits(
            w.view(),
            Granularity::PerChannel { axis: 1 },
            WeightBits::Int4,
        )
        .unwrap();
        assert!((p.scale[0] - 0.1).abs() < 1e-7);
        assert_eq!(p.scale[1], 1.0);
        assert_eq!((p.qmin, p.qmax), (-7, 7));
        // 0.05 / 0.1 = 0.5 rounds away from zero to 1, as TFLite rounds.
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), [7, 0, -3, 0, 1, 0]);
    }

    #[test]
    fn int8_width_is_the_int8_quantizer() {
        let w = ArrayD::from_shape_fn(IxDyn(&[5, 3]), |i| {
            (i[0] as f32 - 2.1) * (i[1] as f32 + 0.3)
        });
        let g = Granularity::PerChannel { axis: 1 };
        assert_eq!(
            quantize_weights_bits(w.view(), g, WeightBits::Int8).unwrap(),
            crate::params::quantize_weights(w.view(), g).unwrap()
        );
    }

    #[test]
    fn bits_parse() {
        assert_eq!(WeightBits::from_bits(4).unwrap(), WeightBits::Int4);
        assert!(WeightBits::from_bits(2).is_err());
        assert_eq!(WeightBits::Int4.to_string(), "int4");
    }
}
