//! Quantization parameters and float <-> int conversion, following TFLite's int8 spec.
//!
//! `real = scale · (q − zero_point)`. The rules, each as TFLite's converter applies it
//! (`tensorflow/lite/tools/optimize/quantization_utils.cc`):
//!
//! - **Every range includes 0** (`min = min(min, 0)`, `max = max(max, 0)`), so real 0 — zero
//!   padding, ReLU's floor — is exactly representable.
//! - **Activations**: int8 asymmetric per tensor, `scale = (max − min) / 255`,
//!   `zero_point = round(−128 − min / scale)` clamped to [−128, 127]
//!   ([`QuantParams::asymmetric`]).
//! - **Weights**: int8 symmetric in [−127, 127] (zero point 0), per output channel — the last
//!   axis of our conv `[kh, kw, in, out]` and dense `[in, out]` kernels — with
//!   `scale = max(|min|, |max|) / 127` ([`QuantParams::symmetric`], [`quantize_weights`]).
//! - **Bias**: int32, `scale = s_in · s_w[c]`, zero point 0 ([`quantize_bias`]).
//! - **Rounding** is `std::round`: half away from zero.
//!
//! Degenerate ranges: where TFLite would produce a zero scale (an all-zero weight channel, an
//! activation that was always exactly 0) we use [`DEGENERATE_SCALE`] = 1.0 instead, so no scale
//! is ever zero and nothing divides by zero; the values concerned are all 0 and quantize to the
//! zero point whatever the scale. TFLite instead writes scale 0 and, for a zero weight channel,
//! then drops that channel's bias (its bias scale is 0 too); with scale 1.0 the bias keeps scale
//! `s_in`. The same substitution applies when the computed scale underflows below
//! `f32::MIN_POSITIVE`.

use ndarray::{Array1, ArrayD, ArrayView1, ArrayViewD, Axis, Zip};

use crate::error::{QuantError, Result};

/// Smallest int8 value.
pub const QMIN_I8: i32 = -128;
/// Largest int8 value.
pub const QMAX_I8: i32 = 127;
/// Smallest symmetric weight value: TFLite keeps weights in [−127, 127] so the range is
/// symmetric and `−q` never overflows.
pub const QMIN_WEIGHT: i32 = -127;
/// Bound of the int32 bias range, `[−(2^31 − 1), 2^31 − 1]` as TFLite's `kScale`.
pub const QMAX_BIAS: i32 = i32::MAX;
/// Scale used where the range is degenerate (all zero) or its scale would underflow.
pub const DEGENERATE_SCALE: f32 = 1.0;

/// Which quantization rule turns a float range into parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantScheme {
    /// int8 asymmetric in [−128, 127] with a zero point: TFLite's rule for activations.
    #[default]
    Asymmetric,
    /// int8 symmetric in [−127, 127], zero point 0: TFLite's rule for weights.
    Symmetric,
}

/// Whether a tensor gets one set of parameters or one per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Granularity {
    /// One scale and zero point for the whole tensor.
    #[default]
    PerTensor,
    /// One scale and zero point per index along `axis`. For our conv `[kh, kw, in, out]` and
    /// dense `[in, out]` kernels the output channel is the last axis.
    PerChannel {
        /// The channel axis.
        axis: usize,
    },
}

impl Granularity {
    /// The channel axis, if per channel.
    pub fn axis(self) -> Option<usize> {
        match self {
            Granularity::PerTensor => None,
            Granularity::PerChannel { axis } => Some(axis),
        }
    }
}

/// A closed float range `[min, max]` as observed or chosen for quantization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// Lower end.
    pub min: f32,
    /// Upper end.
    pub max: f32,
}

impl Range {
    /// A range, checked: both ends finite and `min <= max`.
    ///
    /// # Errors
    /// [`QuantError::NonFinite`] or [`QuantError::InvalidRange`].
    pub fn new(min: f32, max: f32) -> Result<Self> {
        let r = Range { min, max };
        r.validate()?;
        Ok(r)
    }

    /// Checks that both ends are finite and `min <= max`.
    ///
    /// # Errors
    /// [`QuantError::NonFinite`] or [`QuantError::InvalidRange`].
    pub fn validate(&self) -> Result<()> {
        for (index, value) in [self.min, self.max].into_iter().enumerate() {
            if !value.is_finite() {
                return Err(QuantError::NonFinite {
                    what: "range",
                    index,
                    value,
                });
            }
        }
        if self.min > self.max {
            return Err(QuantError::InvalidRange {
                min: self.min,
                max: self.max,
            });
        }
        Ok(())
    }

    /// The range widened to include 0, as TFLite does before computing parameters.
    pub fn with_zero(self) -> Range {
        Range {
            min: self.min.min(0.0),
            max: self.max.max(0.0),
        }
    }
}

/// Quantization parameters of one tensor: `real = scale[c] · (q − zero_point[c])`.
///
/// Per tensor: `scale` and `zero_point` have one entry and `axis` is `None`. Per channel: one
/// entry per index along `axis`. `[qmin, qmax]` is the integer range values are clamped to
/// ([−128, 127] for activations, [−127, 127] for symmetric weights, ±(2^31 − 1) for biases).
/// The fields are public; [`validate`](Self::validate) checks them, and every function taking
/// parameters calls it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantParams {
    /// Scales, finite and positive.
    pub scale: Vec<f32>,
    /// Zero points, within `[qmin, qmax]`.
    pub zero_point: Vec<i32>,
    /// Channel axis for per-channel parameters.
    pub axis: Option<usize>,
    /// Smallest quantized value.
    pub qmin: i32,
    /// Largest quantized value.
    pub qmax: i32,
}

impl QuantParams {
    /// Per-tensor int8 parameters with range [−128, 127].
    ///
    /// # Errors
    /// If the scale is not finite and positive or the zero point is outside [−128, 127].
    pub fn per_tensor(scale: f32, zero_point: i32) -> Result<Self> {
        let p = QuantParams {
            scale: vec![scale],
            zero_point: vec![zero_point],
            axis: None,
            qmin: QMIN_I8,
            qmax: QMAX_I8,
        };
        p.validate()?;
        Ok(p)
    }

    /// Per-channel int8 parameters with range [−128, 127] along `axis`.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn per_channel(scale: Vec<f32>, zero_point: Vec<i32>, axis: usize) -> Result<Self> {
        let p = QuantParams {
            scale,
            zero_point,
            axis: Some(axis),
            qmin: QMIN_I8,
            qmax: QMAX_I8,
        };
        p.validate()?;
        Ok(p)
    }

    /// TFLite's asymmetric int8 rule for activations (`GetAsymmetricQuantizationParams`): the
    /// range is widened to include 0, `scale = (max − min) / 255`,
    /// `zero_point = round(−128 − min / scale)` clamped to [−128, 127]. A zero range gets
    /// [`DEGENERATE_SCALE`] and zero point −128.
    ///
    /// # Errors
    /// If the range is not finite or has `min > max`, or if `max − min` overflows f32.
    pub fn asymmetric(range: Range) -> Result<Self> {
        let (scale, zero_point) = asymmetric_params(range)?;
        Self::per_tensor(scale, zero_point)
    }

    /// TFLite's symmetric int8 rule for weights, per tensor: `scale = max(|min|, |max|) / 127`,
    /// zero point 0, values in [−127, 127]. A zero range gets [`DEGENERATE_SCALE`].
    ///
    /// # Errors
    /// If the range is not finite or has `min > max`.
    pub fn symmetric(range: Range) -> Result<Self> {
        Self::from_ranges(&[range], None, QuantScheme::Symmetric)
    }

    /// Parameters for per-tensor (`axis = None`, one range) or per-channel (one range per
    /// channel) quantization under `scheme`.
    ///
    /// # Errors
    /// If a range is invalid, `ranges` is empty, or `axis` is `None` with more than one range.
    pub fn from_ranges(ranges: &[Range], axis: Option<usize>, scheme: QuantScheme) -> Result<Self> {
        if ranges.is_empty() || (axis.is_none() && ranges.len() != 1) {
            return Err(QuantError::ChannelMismatch {
                what: "ranges for per-tensor parameters",
                expected: 1,
                found: ranges.len(),
            });
        }
        let mut scale = Vec::with_capacity(ranges.len());
        let mut zero_point = Vec::with_capacity(ranges.len());
        for r in ranges {
            let (s, z) = match scheme {
                QuantScheme::Asymmetric => asymmetric_params(*r)?,
                QuantScheme::Symmetric => (symmetric_scale(*r)?.0, 0),
            };
            scale.push(s);
            zero_point.push(z);
        }
        let qmin = match scheme {
            QuantScheme::Asymmetric => QMIN_I8,
            QuantScheme::Symmetric => QMIN_WEIGHT,
        };
        let p = QuantParams {
            scale,
            zero_point,
            axis,
            qmin,
            qmax: QMAX_I8,
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the invariants: at least one channel, as many zero points as scales, exactly one
    /// per tensor, scales finite and positive, `qmin <= qmax`, zero points in `[qmin, qmax]`.
    ///
    /// # Errors
    /// The first violated invariant.
    pub fn validate(&self) -> Result<()> {
        if self.qmin > self.qmax {
            return Err(QuantError::InvalidIntRange {
                qmin: self.qmin,
                qmax: self.qmax,
                target: "any integer type",
            });
        }
        let expected = if self.axis.is_none() {
            1
        } else {
            self.scale.len().max(1)
        };
        if self.scale.len() != expected {
            return Err(QuantError::ChannelMismatch {
                what: "scales",
                expected,
                found: self.scale.len(),
            });
        }
        if self.zero_point.len() != self.scale.len() {
            return Err(QuantError::ChannelMismatch {
                what: "zero points vs scales",
                expected: self.scale.len(),
                found: self.zero_point.len(),
            });
        }
        for (channel, (&scale, &zero_point)) in self.scale.iter().zip(&self.zero_point).enumerate()
        {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(QuantError::InvalidScale { channel, scale });
            }
            if zero_point < self.qmin || zero_point > self.qmax {
                return Err(QuantError::InvalidZeroPoint {
                    channel,
                    zero_point,
                    qmin: self.qmin,
                    qmax: self.qmax,
                });
            }
        }
        Ok(())
    }

    /// Number of channels (1 per tensor).
    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    /// Whether the parameters are per channel.
    pub fn is_per_channel(&self) -> bool {
        self.axis.is_some()
    }

    /// Checks that the parameters fit a tensor of `shape` and that `[qmin, qmax]` fits
    /// `[lo, hi]` of the storage type.
    fn check_for(&self, shape: &[usize], lo: i32, hi: i32, target: &'static str) -> Result<()> {
        self.validate()?;
        if self.qmin < lo || self.qmax > hi {
            return Err(QuantError::InvalidIntRange {
                qmin: self.qmin,
                qmax: self.qmax,
                target,
            });
        }
        if let Some(axis) = self.axis {
            if axis >= shape.len() {
                return Err(QuantError::AxisOutOfRange {
                    axis,
                    ndim: shape.len(),
                });
            }
            if shape[axis] != self.channels() {
                return Err(QuantError::ChannelMismatch {
                    what: "tensor channel dimension vs quantization parameters",
                    expected: self.channels(),
                    found: shape[axis],
                });
            }
        }
        Ok(())
    }
}

/// `(scale, zero_point)` by TFLite's asymmetric rule, with the degenerate-scale substitution.
fn asymmetric_params(range: Range) -> Result<(f32, i32)> {
    range.validate()?;
    let Range { min, max } = range.with_zero();
    let (qmin, qmax) = (QMIN_I8 as f32, QMAX_I8 as f32);
    let mut scale = (max - min) / (qmax - qmin);
    if !scale.is_finite() {
        return Err(QuantError::InvalidScale { channel: 0, scale });
    }
    if scale < f32::MIN_POSITIVE {
        scale = DEGENERATE_SCALE;
    }
    let zero_point_from_min = qmin - min / scale;
    let zero_point = if zero_point_from_min < qmin {
        QMIN_I8
    } else if zero_point_from_min > qmax {
        QMAX_I8
    } else {
        zero_point_from_min.round() as i32
    };
    Ok((scale, zero_point))
}

/// `(scale, 1 / scale)` by TFLite's symmetric rule: `half_range / 127` and `127 / half_range`
/// (TFLite multiplies weights by the latter rather than dividing by the former).
fn symmetric_scale(range: Range) -> Result<(f32, f32)> {
    range.validate()?;
    let half_range = range.min.abs().max(range.max.abs());
    let scale = half_range / QMAX_I8 as f32;
    if scale < f32::MIN_POSITIVE {
        return Ok((DEGENERATE_SCALE, 1.0 / DEGENERATE_SCALE));
    }
    Ok((scale, QMAX_I8 as f32 / half_range))
}

/// Error for the first non-finite element of `x` (row-major index), if any.
pub(crate) fn check_finite(x: &ArrayViewD<'_, f32>, what: &'static str) -> Result<()> {
    match x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((index, &value)) => Err(QuantError::NonFinite { what, index, value }),
        None => Ok(()),
    }
}

/// Rounds half away from zero (`std::round`) and clamps into `[qmin, qmax]`; saturates first
/// so huge values cannot overflow the zero-point addition.
#[inline]
fn round_clamp(v: f32, zero_point: i32, qmin: i32, qmax: i32) -> i32 {
    let r = v.round() as i64 + zero_point as i64;
    r.clamp(qmin as i64, qmax as i64) as i32
}

/// Applies `f(channel_params_index, input_view, output_view)` per channel, or once per tensor.
fn per_channel_zip<A, B>(
    x: &ArrayViewD<'_, A>,
    out: &mut ArrayD<B>,
    axis: Option<usize>,
    mut f: impl FnMut(usize, ArrayViewD<'_, A>, ndarray::ArrayViewMutD<'_, B>),
) {
    match axis {
        None => f(0, x.view(), out.view_mut()),
        Some(axis) => {
            for (c, (xc, oc)) in x
                .axis_iter(Axis(axis))
                .zip(out.axis_iter_mut(Axis(axis)))
                .enumerate()
            {
                f(c, xc, oc);
            }
        }
    }
}

/// Quantizes `x` to int8 as TFLite's `AffineQuantize`: `q = round(x / scale) + zero_point`,
/// clamped to `[qmin, qmax]` (per channel along `params.axis` if set).
///
/// # Errors
/// If `params` is invalid or does not fit int8 or `x`'s shape, or if `x` holds a non-finite
/// value.
pub fn quantize(x: ArrayViewD<'_, f32>, params: &QuantParams) -> Result<ArrayD<i8>> {
    params.check_for(x.shape(), QMIN_I8, QMAX_I8, "i8")?;
    check_finite(&x, "quantize input")?;
    let mut out = ArrayD::<i8>::zeros(x.raw_dim());
    per_channel_zip(&x, &mut out, params.axis, |c, xc, mut oc| {
        let (s, z) = (params.scale[c], params.zero_point[c]);
        Zip::from(&mut oc)
            .and(&xc)
            .for_each(|o, &v| *o = round_clamp(v / s, z, params.qmin, params.qmax) as i8);
    });
    Ok(out)
}

/// Dequantizes int8 values: `real = scale · (q − zero_point)`, computed in f64 and rounded to
/// f32 as TFLite's reference `Dequantize`.
///
/// # Errors
/// If `params` is invalid or does not fit `q`'s shape.
pub fn dequantize(q: ArrayViewD<'_, i8>, params: &QuantParams) -> Result<ArrayD<f32>> {
    params.check_for(q.shape(), QMIN_I8, QMAX_I8, "i8")?;
    Ok(dequantize_any(&q, params))
}

fn dequantize_any(q: &ArrayViewD<'_, i8>, params: &QuantParams) -> ArrayD<f32> {
    let mut out = ArrayD::<f32>::zeros(q.raw_dim());
    per_channel_zip(q, &mut out, params.axis, |c, qc, mut oc| {
        let (s, z) = (params.scale[c] as f64, params.zero_point[c] as i64);
        Zip::from(&mut oc)
            .and(&qc)
            .for_each(|o, &v| *o = (s * (v as i64 - z) as f64) as f32);
    });
    out
}

/// Quantizes a weight tensor by TFLite's symmetric rule: per tensor, or per channel along the
/// given axis (the last axis for our conv and dense kernels). Returns the int8 weights in
/// [−127, 127] and their parameters.
///
/// As TFLite's `SymmetricPerChannelQuantizeValues`: `q = round(w · (127 / half_range))`,
/// clamped to [−127, 127], with `half_range = max(|min|, |max|)` of the channel.
///
/// # Errors
/// If the axis is out of range, a dimension is empty, or a weight is not finite.
pub fn quantize_weights(
    w: ArrayViewD<'_, f32>,
    granularity: Granularity,
) -> Result<(ArrayD<i8>, QuantParams)> {
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
            op: "quantize_weights",
            expected: vec![],
            found: w.shape().to_vec(),
        });
    }
    check_finite(&w, "weights")?;
    let ranges: Vec<Range> = match granularity.axis() {
        None => vec![tensor_range(&w)],
        Some(axis) => w.axis_iter(Axis(axis)).map(|c| tensor_range(&c)).collect(),
    };
    let inv: Vec<f32> = ranges
        .iter()
        .map(|r| symmetric_scale(*r).map(|(_, inv)| inv))
        .collect::<Result<_>>()?;
    let params = QuantParams::from_ranges(&ranges, granularity.axis(), QuantScheme::Symmetric)?;
    let mut out = ArrayD::<i8>::zeros(w.raw_dim());
    per_channel_zip(&w, &mut out, params.axis, |c, wc, mut oc| {
        let inv = inv[c];
        Zip::from(&mut oc)
            .and(&wc)
            .for_each(|o, &v| *o = round_clamp(v * inv, 0, QMIN_WEIGHT, QMAX_I8) as i8);
    });
    Ok((out, params))
}

/// Min and max of a non-empty, all-finite view.
fn tensor_range(x: &ArrayViewD<'_, f32>) -> Range {
    let (min, max) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    Range { min, max }
}

/// Quantizes a bias to int32 as TFLite's `SymmetricPerChannelBiasQuantize`: channel `c` gets
/// scale `input_scale · weight_scale[c]` (f32 product), zero point 0, and
/// `q = round(b · (1 / scale))`. Per-tensor weight parameters give one bias scale.
///
/// TFLite clamps an out-of-range bias to ±(2^31 − 1); here that is an error, since it would
/// silently change the layer.
///
/// # Errors
/// If `input_scale` is not finite and positive, `weights` is invalid, the bias length does not
/// match per-channel weight parameters, a bias value is not finite, or one overflows int32
/// ([`QuantError::BiasOverflow`]).
pub fn quantize_bias(
    bias: ArrayView1<'_, f32>,
    input_scale: f32,
    weights: &QuantParams,
) -> Result<(Array1<i32>, QuantParams)> {
    weights.validate()?;
    if !(input_scale.is_finite() && input_scale > 0.0) {
        return Err(QuantError::InvalidScale {
            channel: 0,
            scale: input_scale,
        });
    }
    if weights.is_per_channel() && bias.len() != weights.channels() {
        return Err(QuantError::ChannelMismatch {
            what: "bias length vs weight channels",
            expected: weights.channels(),
            found: bias.len(),
        });
    }
    check_finite(&bias.view().into_dyn(), "bias")?;
    let scale: Vec<f32> = weights.scale.iter().map(|&s| input_scale * s).collect();
    for (channel, &s) in scale.iter().enumerate() {
        if !(s.is_finite() && s > 0.0) {
            return Err(QuantError::InvalidScale { channel, scale: s });
        }
    }
    let mut q = Array1::<i32>::zeros(bias.len());
    for (c, (qc, &b)) in q.iter_mut().zip(bias.iter()).enumerate() {
        let s = if weights.is_per_channel() {
            scale[c]
        } else {
            scale[0]
        };
        let inv = (1.0 / s as f64) as f32;
        let r = (b * inv).round();
        // `r` is integral; below 2^31 in magnitude it fits in ±(2^31 − 1).
        if r.is_nan() || r.abs() >= 2_147_483_648.0 {
            return Err(QuantError::BiasOverflow {
                channel: c,
                value: b,
                scale: s,
            });
        }
        *qc = r as i32;
    }
    let params = QuantParams {
        zero_point: vec![0; scale.len()],
        scale,
        axis: weights.axis.map(|_| 0),
        qmin: -QMAX_BIAS,
        qmax: QMAX_BIAS,
    };
    params.validate()?;
    Ok((q, params))
}

/// Dequantizes an int32 bias: `real = scale · (q − zero_point)` (per channel along axis 0 if
/// set), in f64 rounded to f32.
///
/// # Errors
/// If `params` is invalid or does not fit the bias length.
pub fn dequantize_bias(q: ArrayView1<'_, i32>, params: &QuantParams) -> Result<Array1<f32>> {
    params.check_for(&[q.len()], i32::MIN, i32::MAX, "i32")?;
    Ok(q.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = if params.is_per_channel() { i } else { 0 };
            (params.scale[c] as f64 * (v as i64 - params.zero_point[c] as i64) as f64) as f32
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{ArrayD, IxDyn, array};

    fn dyn1(v: &[f32]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap()
    }

    #[test]
    fn asymmetric_hand_worked() {
        // [-1, 3]: scale 4/255; zero point round(-128 + 1 / (4/255)) = round(-64.25) = -64.
        let p = QuantParams::asymmetric(Range::new(-1.0, 3.0).unwrap()).unwrap();
        assert_eq!(p.scale, vec![4.0 / 255.0]);
        assert_eq!(p.zero_point, vec![-64]);
        assert_eq!((p.qmin, p.qmax), (-128, 127));
        // All positive: the range is widened to [0, 6], zero point -128.
        let p = QuantParams::asymmetric(Range::new(2.0, 6.0).unwrap()).unwrap();
        assert_eq!(p.scale, vec![6.0 / 255.0]);
        assert_eq!(p.zero_point, vec![-128]);
        // All negative: [-6, 0], zero point 127.
        let p = QuantParams::asymmetric(Range::new(-6.0, -2.0).unwrap()).unwrap();
        assert_eq!(p.zero_point, vec![127]);
        // Constant tensor 3.0: [0, 3].
        let p = QuantParams::asymmetric(Range::new(3.0, 3.0).unwrap()).unwrap();
        assert_eq!(p.scale, vec![3.0 / 255.0]);
        assert_eq!(p.zero_point, vec![-128]);
    }

    #[test]
    fn degenerate_ranges_get_a_positive_scale() {
        let p = QuantParams::asymmetric(Range::new(0.0, 0.0).unwrap()).unwrap();
        assert_eq!((p.scale[0], p.zero_point[0]), (DEGENERATE_SCALE, -128));
        let p = QuantParams::asymmetric(Range::new(0.0, 1e-44).unwrap()).unwrap();
        assert_eq!(p.scale[0], DEGENERATE_SCALE);
        let p = QuantParams::symmetric(Range::new(0.0, 0.0).unwrap()).unwrap();
        assert_eq!((p.scale[0], p.zero_point[0]), (DEGENERATE_SCALE, 0));
        // An all-zero weight channel next to a normal one.
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.0, 0.5, 0.0, -1.0]).unwrap();
        let (q, p) = quantize_weights(w.view(), Granularity::PerChannel { axis: 1 }).unwrap();
        assert_eq!(p.scale, vec![DEGENERATE_SCALE, 1.0 / 127.0]);
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), vec![0, 64, 0, -127]);
        // Subnormal weights would give an infinite inverse scale; they quantize to 0 instead.
        let w = dyn1(&[1e-40, -1e-41]);
        let (q, p) = quantize_weights(w.view(), Granularity::PerTensor).unwrap();
        assert_eq!(p.scale, vec![DEGENERATE_SCALE]);
        assert!(q.iter().all(|&v| v == 0));
        let deq = dequantize(q.view(), &p).unwrap();
        assert!(deq.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn symmetric_per_channel_on_the_last_axis() {
        // Dense kernel [in = 3, out = 2]: channel 0 = [1, -2, 0.5], channel 1 = [0.1, 0.2, -0.3].
        let w = array![[1.0f32, 0.1], [-2.0, 0.2], [0.5, -0.3]].into_dyn();
        let (q, p) = quantize_weights(w.view(), Granularity::PerChannel { axis: 1 }).unwrap();
        assert_eq!(p.axis, Some(1));
        assert_eq!((p.qmin, p.qmax), (-127, 127));
        assert_eq!(p.zero_point, vec![0, 0]);
        assert_abs_diff_eq!(p.scale[0], 2.0 / 127.0, epsilon = 1e-9);
        assert_abs_diff_eq!(p.scale[1], 0.3 / 127.0, epsilon = 1e-9);
        // 1 · 63.5 = 63.5 -> 64 (half away from zero); -2 -> -127; 0.5 · 63.5 = 31.75 -> 32.
        // 0.1 · 423.33 = 42.33 -> 42; 0.2 -> 84.67 -> 85; -0.3 -> -127.
        let want = array![[64i8, 42], [-127, 85], [32, -127]].into_dyn();
        assert_eq!(q, want);
        let back = dequantize(q.view(), &p).unwrap();
        for c in 0..2 {
            for i in 0..3 {
                assert_abs_diff_eq!(back[[i, c]], w[[i, c]], epsilon = p.scale[c] / 2.0 + 1e-7);
            }
        }
        // Per tensor on the same kernel: one scale 2/127.
        let (_, p) = quantize_weights(w.view(), Granularity::PerTensor).unwrap();
        assert_eq!(p.scale.len(), 1);
        assert_abs_diff_eq!(p.scale[0], 2.0 / 127.0, epsilon = 1e-9);
    }

    #[test]
    fn conv_kernel_channels_are_the_last_axis() {
        let w = ArrayD::from_shape_fn(IxDyn(&[3, 3, 2, 4]), |ix| {
            (ix[3] as f32 + 1.0) * ((ix[0] * 6 + ix[1] * 2 + ix[2]) as f32 - 8.0)
        });
        let (q, p) = quantize_weights(w.view(), Granularity::PerChannel { axis: 3 }).unwrap();
        for c in 0..4 {
            let half = (c as f32 + 1.0) * 9.0;
            assert_abs_diff_eq!(p.scale[c], half / 127.0, epsilon = 1e-6);
        }
        // Every channel has the same pattern scaled, so the same int8 values.
        for ix in ndarray::indices(&[3, 3, 2][..]) {
            let vals: Vec<i8> = (0..4).map(|c| q[[ix[0], ix[1], ix[2], c]]).collect();
            assert!(vals.iter().all(|&v| v == vals[0]), "{vals:?}");
        }
    }

    #[test]
    fn quantize_rounds_half_away_from_zero_and_clamps() {
        let p = QuantParams::per_tensor(1.0, 0).unwrap();
        let x = dyn1(&[2.5, -2.5, 0.5, -0.5, 1.49, 1000.0, -1000.0, 3e38]);
        let q = quantize(x.view(), &p).unwrap();
        assert_eq!(
            q.iter().copied().collect::<Vec<_>>(),
            vec![3, -3, 1, -1, 1, 127, -128, 127]
        );
        // With a zero point, clamping happens after adding it.
        let p = QuantParams::per_tensor(0.5, 100).unwrap();
        let q = quantize(dyn1(&[10.0, -10.0]).view(), &p).unwrap();
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), vec![120, 80]);
        let q = quantize(dyn1(&[20.0]).view(), &p).unwrap();
        assert_eq!(q[[0]], 127);
    }

    #[test]
    fn quantize_dequantize_round_trip_within_half_a_step() {
        let x = ArrayD::from_shape_fn(IxDyn(&[5, 7]), |ix| {
            (ix[0] as f32 - 2.0) * 0.37 + ix[1] as f32 * 0.11
        });
        let (lo, hi) = x
            .iter()
            .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
        let p = QuantParams::asymmetric(Range::new(lo, hi).unwrap()).unwrap();
        let q = quantize(x.view(), &p).unwrap();
        let back = dequantize(q.view(), &p).unwrap();
        for (a, b) in x.iter().zip(back.iter()) {
            assert_abs_diff_eq!(a, b, epsilon = p.scale[0] * 0.5 + 1e-6);
        }
        // Real zero maps exactly to the zero point and back to 0.
        let z = quantize(dyn1(&[0.0]).view(), &p).unwrap();
        assert_eq!(z[[0]] as i32, p.zero_point[0]);
        assert_eq!(dequantize(z.view(), &p).unwrap()[[0]], 0.0);
    }

    #[test]
    fn per_channel_activation_params_apply_along_the_axis() {
        let p = QuantParams::per_channel(vec![1.0, 0.5], vec![0, 10], 0).unwrap();
        let x = array![[1.0f32, 2.0], [1.0, 2.0]].into_dyn();
        let q = quantize(x.view(), &p).unwrap();
        assert_eq!(q, array![[1i8, 2], [12, 14]].into_dyn());
        let back = dequantize(q.view(), &p).unwrap();
        assert_eq!(back, x);
    }

    #[test]
    fn non_finite_inputs_are_errors() {
        let p = QuantParams::per_tensor(1.0, 0).unwrap();
        let err = quantize(dyn1(&[0.0, f32::NAN]).view(), &p).unwrap_err();
        assert!(
            matches!(err, QuantError::NonFinite { index: 1, .. }),
            "{err}"
        );
        let err = quantize_weights(dyn1(&[f32::INFINITY]).view(), Granularity::PerTensor);
        assert!(matches!(err, Err(QuantError::NonFinite { index: 0, .. })));
        assert!(matches!(
            Range::new(f32::NAN, 1.0),
            Err(QuantError::NonFinite { .. })
        ));
        assert!(matches!(
            Range::new(2.0, 1.0),
            Err(QuantError::InvalidRange { .. })
        ));
        let wp = QuantParams::symmetric(Range::new(-1.0, 1.0).unwrap()).unwrap();
        let err = quantize_bias(array![f32::NAN].view(), 1.0, &wp);
        assert!(matches!(err, Err(QuantError::NonFinite { .. })));
        assert!(matches!(
            QuantParams::asymmetric(Range {
                min: -3e38,
                max: 3e38
            }),
            Err(QuantError::InvalidScale { .. })
        ));
    }

    #[test]
    fn validate_rejects_bad_parameters() {
        assert!(matches!(
            QuantParams::per_tensor(0.0, 0),
            Err(QuantError::InvalidScale { .. })
        ));
        assert!(matches!(
            QuantParams::per_tensor(-1.0, 0),
            Err(QuantError::InvalidScale { .. })
        ));
        assert!(matches!(
            QuantParams::per_tensor(f32::NAN, 0),
            Err(QuantError::InvalidScale { .. })
        ));
        assert!(matches!(
            QuantParams::per_tensor(1.0, 128),
            Err(QuantError::InvalidZeroPoint {
                zero_point: 128,
                ..
            })
        ));
        assert!(matches!(
            QuantParams::per_channel(vec![1.0, 2.0], vec![0], 0),
            Err(QuantError::ChannelMismatch { .. })
        ));
        assert!(matches!(
            QuantParams::per_channel(vec![], vec![], 0),
            Err(QuantError::ChannelMismatch { .. })
        ));
        let mut p = QuantParams::per_tensor(1.0, 0).unwrap();
        p.qmin = 5;
        p.qmax = 4;
        assert!(matches!(
            p.validate(),
            Err(QuantError::InvalidIntRange { .. })
        ));
        // Parameters that do not fit the tensor.
        let p = QuantParams::per_channel(vec![1.0; 3], vec![0; 3], 1).unwrap();
        let x = ArrayD::<f32>::zeros(IxDyn(&[2, 2]));
        assert!(matches!(
            quantize(x.view(), &p),
            Err(QuantError::ChannelMismatch { .. })
        ));
        let p = QuantParams::per_channel(vec![1.0; 2], vec![0; 2], 2).unwrap();
        assert!(matches!(
            quantize(x.view(), &p),
            Err(QuantError::AxisOutOfRange { .. })
        ));
        // Bias-range parameters cannot quantize to int8.
        let wp = QuantParams::symmetric(Range::new(-1.0, 1.0).unwrap()).unwrap();
        let (_, bp) = quantize_bias(array![1.0f32].view(), 1.0, &wp).unwrap();
        assert!(matches!(
            quantize(x.view(), &bp),
            Err(QuantError::InvalidIntRange { .. })
        ));
        assert!(matches!(
            quantize_weights(x.view(), Granularity::PerChannel { axis: 2 }),
            Err(QuantError::AxisOutOfRange { .. })
        ));
    }

    #[test]
    fn bias_is_quantized_at_input_times_weight_scale() {
        let wp = QuantParams {
            scale: vec![0.25, 0.1],
            zero_point: vec![0, 0],
            axis: Some(1),
            qmin: -127,
            qmax: 127,
        };
        // Scales 0.125 and 0.05: 1.0 / 0.125 = 8; -0.33 / 0.05 = -6.6 -> -7.
        let (q, bp) = quantize_bias(array![1.0f32, -0.33].view(), 0.5, &wp).unwrap();
        assert_eq!(q, array![8, -7]);
        assert_eq!(bp.scale, vec![0.125, 0.05]);
        assert_eq!(bp.zero_point, vec![0, 0]);
        assert_eq!(bp.axis, Some(0));
        let back = dequantize_bias(q.view(), &bp).unwrap();
        assert_abs_diff_eq!(back[0], 1.0, epsilon = 1e-6);
        assert_abs_diff_eq!(back[1], -0.35, epsilon = 1e-6);
        // Per-tensor weights: one bias scale for every element.
        let wp = QuantParams::symmetric(Range::new(-1.27, 1.27).unwrap()).unwrap();
        // Bias scale 2 · 0.01 = 0.02: 0.02 -> 1, -0.061 -> -3.05 -> -3.
        let (q, bp) = quantize_bias(array![0.02f32, -0.061, 0.0].view(), 2.0, &wp).unwrap();
        assert_eq!(bp.scale.len(), 1);
        assert_eq!(bp.axis, None);
        assert_eq!(q, array![1, -3, 0]);
    }

    #[test]
    fn bias_errors() {
        let wp = QuantParams {
            scale: vec![1e-20],
            zero_point: vec![0],
            axis: None,
            qmin: -127,
            qmax: 127,
        };
        assert!(matches!(
            quantize_bias(array![1.0f32].view(), 1e-10, &wp),
            Err(QuantError::BiasOverflow { channel: 0, .. })
        ));
        let wp = QuantParams::per_channel(vec![1.0, 1.0], vec![0, 0], 1).unwrap();
        assert!(matches!(
            quantize_bias(array![1.0f32].view(), 1.0, &wp),
            Err(QuantError::ChannelMismatch { .. })
        ));
        assert!(matches!(
            quantize_bias(array![1.0f32, 1.0].view(), 0.0, &wp),
            Err(QuantError::InvalidScale { .. })
        ));
    }
}
