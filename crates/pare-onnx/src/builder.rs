//! Building a graph node by node, and the layout bookkeeping every exporter shares: pare's
//! activations are NHWC, ONNX's `Conv` and `MaxPool` take NCHW, so a `Transpose` goes in where
//! the layout changes, and back to NHWC before any reshape, so that a flatten keeps pare's
//! (and Keras') NHWC order and dense kernels need no row permutation.

use std::collections::HashMap;

use crate::proto::{
    AttributeProto, AttributeType, DataType, Dimension, DimensionValue, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TensorTypeProto, TypeProto, ValueInfoProto,
};

/// The IR version written: 8, what ONNX 1.10–1.12 wrote, read by every onnxruntime since 1.10.
pub const IR_VERSION: i64 = 8;
/// The default-domain opset: 13 is the first with per-axis `QuantizeLinear` /
/// `DequantizeLinear`, which per-channel QDQ weights need.
pub const OPSET: i64 = 13;
/// The domain of onnxruntime's contrib operators (`QLinearLeakyRelu`).
pub const MS_DOMAIN: &str = "com.microsoft";

/// Layout of the value being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Layout {
    /// pare's layout: `[n, h, w, c]` for images, `[n, k]` for flat values.
    Nhwc,
    /// ONNX's image layout `[n, c, h, w]`.
    Nchw,
}

/// The current value: its name, layout, and pare's per-example shape (always NHWC order).
#[derive(Debug, Clone)]
pub(crate) struct Cursor {
    pub name: String,
    pub layout: Layout,
    pub shape: Vec<usize>,
}

/// Nodes and initializers of a graph under construction.
#[derive(Debug, Default)]
pub(crate) struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    uses_ms_domain: bool,
    count: usize,
    /// `(value, layout)` → the value transposed to that layout, so that a value several
    /// branches read in the other layout is transposed once.
    transposed: HashMap<(String, Layout), String>,
}

impl GraphBuilder {
    /// Adds a node and returns its (single) output's name, `{stem}` made unique.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        stem: &str,
    ) -> String {
        self.node_in("", op, inputs, attributes, stem)
    }

    /// [`node`](Self::node) in another operator domain.
    pub fn node_in(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        stem: &str,
    ) -> String {
        if domain == MS_DOMAIN {
            self.uses_ms_domain = true;
        }
        self.count += 1;
        let output = format!("{stem}:{}", self.count);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: format!("{op}_{}", self.count),
            op_type: op.to_string(),
            domain: domain.to_string(),
            attribute: attributes,
            doc_string: String::new(),
        });
        output
    }

    /// Adds an initializer and returns its name.
    pub fn initializer(
        &mut self,
        name: String,
        data_type: DataType,
        dims: &[usize],
        raw: Vec<u8>,
    ) -> String {
        debug_assert_eq!(
            raw.len(),
            dims.iter().product::<usize>() * element_size(data_type),
            "initializer {name}: {dims:?} does not match {} bytes",
            raw.len()
        );
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            name: name.clone(),
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    pub fn f32s(&mut self, name: String, dims: &[usize], v: &[f32]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.initializer(name, DataType::Float, dims, raw)
    }

    pub fn i8s(&mut self, name: String, dims: &[usize], v: &[i8]) -> String {
        let raw = v.iter().map(|&x| x as u8).collect();
        self.initializer(name, DataType::Int8, dims, raw)
    }

    pub fn u8s(&mut self, name: String, dims: &[usize], v: &[u8]) -> String {
        self.initializer(name, DataType::Uint8, dims, v.to_vec())
    }

    pub fn i32s(&mut self, name: String, dims: &[usize], v: &[i32]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.initializer(name, DataType::Int32, dims, raw)
    }

    pub fn i64s(&mut self, name: String, dims: &[usize], v: &[i64]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.initializer(name, DataType::Int64, dims, raw)
    }

    /// A scalar f32 scale.
    pub fn scale(&mut self, name: String, s: f32) -> String {
        self.f32s(name, &[], &[s])
    }

    /// A scalar int8 zero point.
    pub fn zero_point(&mut self, name: String, zp: i32) -> String {
        let zp = i8::try_from(zp).expect("zero_point: int8 zero points are checked by pare-quant");
        self.i8s(name, &[], &[zp])
    }

    /// Transposes the cursor to `layout` if it is a 4-D value in the other one.
    pub fn transpose_to(&mut self, cur: &mut Cursor, layout: Layout) {
        if cur.shape.len() != 3 {
            // A flat value has one layout.
            cur.layout = Layout::Nhwc;
            return;
        }
        if cur.layout == layout {
            return;
        }
        if let Some(t) = self.transposed.get(&(cur.name.clone(), layout)) {
            cur.name = t.clone();
            cur.layout = layout;
            return;
        }
        let perm: &[i64] = match layout {
            Layout::Nchw => &[0, 3, 1, 2],
            Layout::Nhwc => &[0, 2, 3, 1],
        };
        let stem = match layout {
            Layout::Nchw => "to_nchw",
            Layout::Nhwc => "to_nhwc",
        };
        let t = self.node("Transpose", &[&cur.name], vec![ints("perm", perm)], stem);
        self.transposed
            .insert((cur.name.clone(), layout), t.clone());
        // Transposing back gives the value itself.
        self.transposed
            .insert((t.clone(), cur.layout), cur.name.clone());
        cur.name = t;
        cur.layout = layout;
    }

    /// Reshapes an NHWC value to the per-example `shape`, the batch axis kept (`0` in ONNX's
    /// `Reshape` copies the input's size).
    pub fn reshape(&mut self, cur: &mut Cursor, layer: &str, shape: &[usize]) {
        self.transpose_to(cur, Layout::Nhwc);
        let target: Vec<i64> = std::iter::once(0)
            .chain(shape.iter().map(|&d| d as i64))
            .collect();
        let s = self.i64s(format!("{layer}/shape"), &[target.len()], &target);
        cur.name = self.node("Reshape", &[&cur.name, &s], vec![], layer);
        cur.shape = shape.to_vec();
    }

    /// The model: graph `name` with one input and one output, both `[batch, shape...]` NHWC;
    /// the value `result` becomes the output.
    pub fn finish(
        mut self,
        name: &str,
        result: &str,
        input: (&str, DataType, &[usize]),
        output: (&str, DataType, &[usize]),
        doc: String,
        metadata: Vec<(String, String)>,
    ) -> ModelProto {
        // Renaming the producer of the result is enough unless another node reads it too (a
        // graph model's output may be an input of an earlier branch's transpose).
        let read = self
            .nodes
            .iter()
            .any(|n| n.input.iter().any(|i| i == result));
        match self.nodes.iter_mut().find(|n| n.output[0] == result) {
            Some(n) if !read => n.output[0] = output.0.to_string(),
            _ => {
                self.node("Identity", &[result], vec![], output.0);
                let last = self
                    .nodes
                    .last_mut()
                    .expect("finish: a node was just added");
                last.output[0] = output.0.to_string();
            }
        }
        let mut opset_import = vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }];
        if self.uses_ms_domain {
            opset_import.push(OperatorSetIdProto {
                domain: MS_DOMAIN.into(),
                version: 1,
            });
        }
        ModelProto {
            ir_version: IR_VERSION,
            opset_import,
            producer_name: "pare".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            domain: String::new(),
            model_version: 1,
            doc_string: doc,
            graph: Some(GraphProto {
                node: self.nodes,
                name: name.into(),
                initializer: self.initializers,
                doc_string: String::new(),
                input: vec![value_info(input.0, input.1, input.2)],
                output: vec![value_info(output.0, output.1, output.2)],
                value_info: Vec::new(),
            }),
            metadata_props: metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
        }
    }
}

fn element_size(t: DataType) -> usize {
    match t {
        DataType::Undefined => 0,
        DataType::Uint8 | DataType::Int8 => 1,
        DataType::Float | DataType::Int32 => 4,
        DataType::Int64 => 8,
    }
}

/// `name: data_type[batch, shape...]`.
fn value_info(name: &str, data_type: DataType, shape: &[usize]) -> ValueInfoProto {
    let dim = std::iter::once(DimensionValue::DimParam("batch".into()))
        .chain(shape.iter().map(|&d| DimensionValue::DimValue(d as i64)))
        .map(|v| Dimension { value: Some(v) })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: data_type as i32,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
        doc_string: String::new(),
    }
}

/// An `INT` attribute.
pub(crate) fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

/// An `INTS` attribute.
pub(crate) fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A `FLOAT` attribute.
pub(crate) fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// The attributes of a 2-D window op (`Conv`, `MaxPool`, `QLinearConv`) on an `[h, w, c]`
/// input: kernel, strides and TensorFlow's padding as explicit `pads`
/// `[top, left, bottom, right]` (the extra row/column after, as TF puts it, which is ONNX's
/// `SAME_UPPER`).
///
/// # Errors
/// When a `valid` window does not fit the input.
pub(crate) fn window_attributes(
    layer: &str,
    input: &[usize],
    window: [usize; 2],
    strides: [usize; 2],
    padding: pare_tensor::Padding,
) -> crate::Result<Vec<AttributeProto>> {
    let mut pads = [0i64; 4];
    for d in 0..2 {
        let size = input[d];
        let (out, before) = padding
            .output_and_pad(size, window[d], strides[d])
            .ok_or_else(|| crate::OnnxError::Unsupported {
                layer: layer.to_string(),
                reason: format!("window {window:?} does not fit input {input:?}"),
            })?;
        let total = ((out.saturating_sub(1)) * strides[d] + window[d]).saturating_sub(size);
        pads[d] = before as i64;
        pads[d + 2] = (total - before) as i64;
    }
    Ok(vec![
        ints("kernel_shape", &[window[0] as i64, window[1] as i64]),
        ints("strides", &[strides[0] as i64, strides[1] as i64]),
        ints("pads", &pads),
    ])
}

/// [`window_attributes`] of a convolution, with its (unit) dilations.
///
/// # Errors
/// As [`window_attributes`].
pub(crate) fn conv_attributes(
    layer: &str,
    input: &[usize],
    kernel: [usize; 2],
    strides: [usize; 2],
    padding: pare_tensor::Padding,
) -> crate::Result<Vec<AttributeProto>> {
    let mut attrs = window_attributes(layer, input, kernel, strides, padding)?;
    attrs.push(ints("dilations", &[1, 1]));
    Ok(attrs)
}

/// A conv kernel `[kh, kw, in, out]` (pare, TensorFlow) as ONNX's `[out, in, kh, kw]`.
pub(crate) fn oihw<T: Copy>(kernel: &ndarray::ArrayD<T>) -> (Vec<usize>, Vec<T>) {
    let k = kernel
        .view()
        .into_dimensionality::<ndarray::Ix4>()
        .expect("oihw: conv kernels are 4-D, checked by the model");
    let (kh, kw, cin, cout) = k.dim();
    let t = k.permuted_axes([3, 2, 0, 1]);
    (vec![cout, cin, kh, kw], t.iter().copied().collect())
}

/// The values a layer of `model` reads, in its wiring's order (in a chain, the layer
/// before's).
///
/// # Errors
/// [`crate::OnnxError::Unsupported`] for a layer whose inputs were never computed, which only
/// a model whose wiring was edited by hand can have.
pub(crate) fn model_inputs(
    model: &pare_tensor::Model,
    layer: &str,
    values: &HashMap<&str, Cursor>,
) -> crate::Result<Vec<Cursor>> {
    let unwired = |reason: String| crate::OnnxError::Unsupported {
        layer: layer.to_string(),
        reason,
    };
    let inputs = model
        .inputs_of(layer)
        .ok_or_else(|| unwired("the model's wiring does not name this layer".into()))?;
    inputs
        .iter()
        .map(|i| {
            values
                .get(i)
                .cloned()
                .ok_or_else(|| unwired(format!("input {i:?} is computed nowhere before it")))
        })
        .collect()
}

/// The inputs brought to one layout, the first's: element-wise ops and a channel concat work
/// in either, so the values stay as their producers left them where they agree.
pub(crate) fn one_layout(g: &mut GraphBuilder, inputs: &mut [Cursor]) -> Layout {
    let layout = inputs[0].layout;
    for c in inputs.iter_mut() {
        g.transpose_to(c, layout);
    }
    inputs[0].layout
}

/// The axis of ONNX's `Concat` that is pare's last (channel) axis, for a value in `layout` of
/// per-example rank `rank`.
pub(crate) fn channel_axis(layout: Layout, rank: usize) -> i64 {
    if layout == Layout::Nchw && rank == 3 {
        1
    } else {
        -1
    }
}

/// A merge node on float values: `Add` (as binary `Add`s, summed left to right as pare does)
/// or `Concatenate` (`Concat` on the channel axis), the result of per-example `shape`.
pub(crate) fn merge(
    g: &mut GraphBuilder,
    layer: &str,
    mut inputs: Vec<Cursor>,
    add: bool,
    shape: &[usize],
) -> Cursor {
    let layout = one_layout(g, &mut inputs);
    let names: Vec<&str> = inputs.iter().map(|c| c.name.as_str()).collect();
    let name = if add {
        let (first, rest) = names
            .split_first()
            .unwrap_or_else(|| panic!("{layer}: a merge of no inputs (checked by the model)"));
        rest.iter().fold(first.to_string(), |acc, x| {
            g.node("Add", &[&acc, x], vec![], layer)
        })
    } else {
        let axis = channel_axis(layout, shape.len());
        g.node("Concat", &names, vec![int("axis", axis)], layer)
    };
    Cursor {
        name,
        layout,
        shape: shape.to_vec(),
    }
}
