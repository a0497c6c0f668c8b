//! Graph models, as Keras' functional API builds them: named layers wired as a directed
//! acyclic graph, one input (called [`INPUT`]) and one output, with [`Add`] and
//! [`Concatenate`] to merge branches.
//!
//! A [`Model`] keeps its layers in an order that computes every node after its inputs, and
//! its [`Model::wiring`]: node → the names of its inputs. A model with empty wiring is a chain
//! (a [`crate::Sequential`], which is the same type); everything that takes a model — `fit`,
//! `evaluate`, `predict`, checkpoints, BatchNorm folding, distillation — takes either.
//!
//! ```
//! use pare_tensor::nn::{BatchNorm, Conv2d, Dense, GlobalAveragePool2d, Model, ReLU};
//! use pare_tensor::{Add, Padding, train::predict};
//!
//! let model = Model::functional(&[8, 8, 3])
//!     .node(Conv2d::seeded("conv", 3, 4, [3, 3], 0).padding(Padding::Same), &["input"])
//!     .node(BatchNorm::new("bn", 4), &["conv"])
//!     .node(ReLU::new("relu"), &["bn"])
//!     .node(Conv2d::seeded("skip", 3, 4, [1, 1], 1), &["input"])
//!     .node(Add::new("add"), &["relu", "skip"])
//!     .node(GlobalAveragePool2d::new("gap"), &["add"])
//!     .node(Dense::seeded("head", 4, 2, 2), &["gap"])
//!     .build()?;
//! assert_eq!(model.output_shape()?, [2]);
//! assert_eq!(model.inputs_of("add"), Some(vec!["relu", "skip"]));
//! let y = predict(&model, ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 8, 8, 3])).view(), 2)?;
//! assert_eq!(y.shape(), [2, 2]);
//! # Ok::<(), pare_tensor::TensorError>(())
//! ```

use crate::error::{Result, TensorError, WiringError};
use crate::graph::{Activation, Graph, Op, Var};
use crate::nn::{Layer, Model, Module};
use ndarray::{ArrayD, IxDyn};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The name of a graph model's input in its wiring.
pub const INPUT: &str = "input";

/// Element-wise sum of two or more inputs of one shape (Keras' `Add`), e.g. a residual
/// connection.
#[derive(Debug, Clone)]
pub struct Add {
    /// Layer name.
    pub name: String,
}

impl Add {
    /// An add layer.
    pub fn new(name: &str) -> Add {
        Add { name: name.into() }
    }
}

impl Module for Add {
    fn name(&self) -> &str {
        &self.name
    }
    /// The sum of one input is that input.
    fn forward(&self, _: &mut Graph, x: Var) -> Var {
        x
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn forward_many(&self, g: &mut Graph, xs: &[Var]) -> Var {
        let (&first, rest) = xs
            .split_first()
            .unwrap_or_else(|| panic!("{}: Add of no inputs", self.name));
        rest.iter().fold(first, |acc, &x| g.add(acc, x))
    }
    fn output_shape_many(&self, inputs: &[Vec<usize>]) -> Result<Vec<usize>> {
        if inputs.len() < 2 {
            return Err(arity(&self.name, "two or more inputs", inputs.len()));
        }
        if inputs.iter().any(|s| s != &inputs[0]) {
            return Err(mismatch(
                &self.name,
                inputs,
                "cannot be added: they must be equal",
            ));
        }
        Ok(inputs[0].clone())
    }
}

/// Two or more inputs joined along the last (channel) axis (Keras' `Concatenate` with its
/// default `axis=-1`).
#[derive(Debug, Clone)]
pub struct Concatenate {
    /// Layer name.
    pub name: String,
}

impl Concatenate {
    /// A concatenate layer.
    pub fn new(name: &str) -> Concatenate {
        Concatenate { name: name.into() }
    }
}

impl Module for Concatenate {
    fn name(&self) -> &str {
        &self.name
    }
    /// One input joined with nothing is that input.
    fn forward(&self, _: &mut Graph, x: Var) -> Var {
        x
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn forward_many(&self, g: &mut Graph, xs: &[Var]) -> Var {
        g.concat(xs)
    }
    fn output_shape_many(&self, inputs: &[Vec<usize>]) -> Result<Vec<usize>> {
        if inputs.len() < 2 {
            return Err(arity(&self.name, "two or more inputs", inputs.len()));
        }
        let first = &inputs[0];
        let fits = !first.is_empty()
            && inputs
                .iter()
                .all(|s| s.len() == first.len() && s[..s.len() - 1] == first[..first.len() - 1]);
        if !fits {
            return Err(mismatch(
                &self.name,
                inputs,
                "cannot be joined on the last axis: all other axes must be equal",
            ));
        }
        let mut out = first.clone();
        *out.last_mut().expect("non-empty") = inputs.iter().map(|s| s[s.len() - 1]).sum();
        Ok(out)
    }
}

fn arity(node: &str, expected: &'static str, found: usize) -> TensorError {
    WiringError::Arity {
        node: node.into(),
        expected,
        found,
    }
    .into()
}

fn mismatch(node: &str, shapes: &[Vec<usize>], reason: &str) -> TensorError {
    WiringError::ShapeMismatch {
        node: node.into(),
        shapes: shapes.to_vec(),
        reason: reason.into(),
    }
    .into()
}

impl Graph {
    /// The inputs joined along their last axis; all other axes must be equal.
    ///
    /// # Panics
    /// With no inputs, or inputs whose other axes differ (a model's wiring checks this
    /// before any graph is built).
    pub fn concat(&mut self, xs: &[Var]) -> Var {
        assert!(!xs.is_empty(), "concat: no inputs");
        let shapes: Vec<Vec<usize>> = xs.iter().map(|&x| self.shape(x).to_vec()).collect();
        let lead = &shapes[0][..shapes[0].len().saturating_sub(1)];
        assert!(
            shapes
                .iter()
                .all(|s| !s.is_empty() && &s[..s.len() - 1] == lead),
            "concat: shapes {shapes:?} differ off the last axis"
        );
        let widths: Vec<usize> = shapes.iter().map(|s| s[s.len() - 1]).collect();
        let total: usize = widths.iter().sum();
        let rows: usize = lead.iter().product();
        let mut out = Vec::with_capacity(rows * total);
        let parts: Vec<&[f32]> = xs
            .iter()
            .map(|&x| {
                self.value(x)
                    .as_slice()
                    .expect("graph values are contiguous")
            })
            .collect();
        for r in 0..rows {
            for (p, &w) in parts.iter().zip(&widths) {
                out.extend_from_slice(&p[r * w..(r + 1) * w]);
            }
        }
        let mut shape = lead.to_vec();
        shape.push(total);
        let value = ArrayD::from_shape_vec(IxDyn(&shape), out).expect("concat: sizes agree");
        self.push(Op::Concat(xs.to_vec()), value, xs)
    }
}

/// The gradient of a concatenation split back into its inputs' parts (`widths` along the last
/// axis).
pub(crate) fn split_last_axis(g: &ArrayD<f32>, widths: &[usize]) -> Vec<ArrayD<f32>> {
    let g = g.as_standard_layout();
    let s = g.as_slice().expect("standard layout");
    let total: usize = widths.iter().sum();
    let lead = &g.shape()[..g.ndim() - 1];
    let rows = s.len() / total.max(1);
    let mut parts: Vec<Vec<f32>> = widths
        .iter()
        .map(|w| Vec::with_capacity(rows * w))
        .collect();
    for row in s.chunks_exact(total.max(1)) {
        let mut at = 0;
        for (p, &w) in parts.iter_mut().zip(widths) {
            p.extend_from_slice(&row[at..at + w]);
            at += w;
        }
    }
    parts
        .into_iter()
        .zip(widths)
        .map(|(p, &w)| {
            let mut shape = lead.to_vec();
            shape.push(w);
            ArrayD::from_shape_vec(IxDyn(&shape), p).expect("split: sizes agree")
        })
        .collect()
}

/// Builds a graph [`Model`] node by node (see the [module documentation](self)); from
/// [`Model::functional`]. Nodes may be added in any order; [`FunctionalBuilder::build`] sorts
/// them and checks the wiring.
pub struct FunctionalBuilder {
    input_shape: Vec<usize>,
    nodes: Vec<(Layer, Vec<String>)>,
}

impl std::fmt::Debug for FunctionalBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionalBuilder")
            .field("input_shape", &self.input_shape)
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl FunctionalBuilder {
    /// Adds `layer` as a node (named as the layer) taking the outputs of `inputs`, each the
    /// name of another node or [`INPUT`].
    pub fn node(mut self, layer: impl Into<Layer>, inputs: &[&str]) -> FunctionalBuilder {
        self.nodes
            .push((layer.into(), inputs.iter().map(|s| s.to_string()).collect()));
        self
    }

    /// Adds a user-defined module as a node.
    pub fn module(self, m: Box<dyn Module>, inputs: &[&str]) -> FunctionalBuilder {
        self.node(Layer::Custom(m), inputs)
    }

    /// The model: nodes sorted so each comes after its inputs (otherwise in the order added),
    /// every shape checked.
    ///
    /// # Errors
    /// [`WiringError`] (inside [`TensorError::Wiring`]) for no nodes, a duplicate name, an
    /// unknown input, a cycle, not exactly one output, a wrong number of inputs or merge
    /// inputs that do not fit; a layer's own shape error for an input it cannot take.
    pub fn build(self) -> Result<Model> {
        if self.nodes.is_empty() {
            return Err(WiringError::NoNodes.into());
        }
        let names: Vec<String> = self
            .nodes
            .iter()
            .map(|(l, _)| l.module().name().to_string())
            .collect();
        let mut seen = HashSet::from([INPUT.to_string()]);
        for n in &names {
            if !seen.insert(n.clone()) {
                return Err(WiringError::DuplicateName(n.clone()).into());
            }
        }
        for (n, (_, inputs)) in names.iter().zip(&self.nodes) {
            if let Some(bad) = inputs.iter().find(|i| !seen.contains(*i)) {
                return Err(WiringError::UnknownInput {
                    node: n.clone(),
                    input: bad.clone(),
                }
                .into());
            }
        }
        let order = topological_order(&names, &self.nodes)?;
        let consumed: HashSet<&str> = self
            .nodes
            .iter()
            .flat_map(|(_, i)| i.iter().map(String::as_str))
            .collect();
        let sinks: Vec<String> = names
            .iter()
            .filter(|n| !consumed.contains(n.as_str()))
            .cloned()
            .collect();
        if sinks.len() != 1 {
            return Err(WiringError::Outputs(sinks).into());
        }
        let mut slots: Vec<Option<(Layer, Vec<String>)>> =
            self.nodes.into_iter().map(Some).collect();
        let mut model = Model::new(&self.input_shape);
        for i in order {
            let (layer, inputs) = slots[i].take().expect("each node placed once");
            model.wiring.insert(names[i].clone(), inputs);
            model.layers.push(layer);
        }
        // With one sink, every node leads to it, so it is sorted last: the output.
        model.node_shapes()?;
        Ok(model)
    }
}

/// Kahn's algorithm, taking the earliest-added ready node first; a cycle is reported by the
/// names along it.
fn topological_order(names: &[String], nodes: &[(Layer, Vec<String>)]) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut placed = vec![false; names.len()];
    let mut order = Vec::with_capacity(names.len());
    while order.len() < names.len() {
        let ready = (0..names.len()).find(|&i| {
            !placed[i]
                && nodes[i]
                    .1
                    .iter()
                    .all(|inp| inp == INPUT || placed[index[inp.as_str()]])
        });
        match ready {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                // Every unplaced node waits on another unplaced one: walk back until a repeat.
                let mut at = (0..names.len()).find(|&i| !placed[i]).expect("unplaced");
                let mut path = Vec::new();
                while !path.contains(&at) {
                    path.push(at);
                    at = nodes[at]
                        .1
                        .iter()
                        .filter(|inp| *inp != INPUT)
                        .map(|inp| index[inp.as_str()])
                        .find(|&j| !placed[j])
                        .expect("an unplaced node waits on an unplaced input");
                }
                let start = path.iter().position(|&p| p == at).expect("repeat");
                let mut cycle: Vec<String> = path[start..]
                    .iter()
                    .rev()
                    .map(|&i| names[i].clone())
                    .collect();
                cycle.push(cycle[0].clone());
                return Err(WiringError::Cycle(cycle).into());
            }
        }
    }
    Ok(order)
}

impl Model {
    /// A builder for a graph model taking examples of `input_shape` (batch dimension
    /// excluded); see the [module documentation](crate::functional).
    pub fn functional(input_shape: &[usize]) -> FunctionalBuilder {
        FunctionalBuilder {
            input_shape: input_shape.to_vec(),
            nodes: Vec::new(),
        }
    }

    /// True for a chain of layers (no wiring): what the converters that walk layers in order
    /// take.
    pub fn is_sequential(&self) -> bool {
        self.wiring.is_empty()
    }

    /// `Ok` for a chain of layers.
    ///
    /// # Errors
    /// [`WiringError::NotSequential`] naming `what` for a graph model.
    pub fn require_sequential(&self, what: &str) -> Result<()> {
        if self.is_sequential() {
            return Ok(());
        }
        Err(WiringError::NotSequential { what: what.into() }.into())
    }

    /// The names of the nodes (or [`INPUT`]) whose outputs the layer `name` takes; `None` for
    /// no such layer. In a chain that is the layer before.
    pub fn inputs_of(&self, name: &str) -> Option<Vec<&str>> {
        if let Some(inputs) = self.wiring.get(name) {
            return Some(inputs.iter().map(String::as_str).collect());
        }
        if !self.is_sequential() {
            return None;
        }
        let i = self.layers.iter().position(|l| l.module().name() == name)?;
        Some(vec![match i {
            0 => INPUT,
            _ => self.layers[i - 1].module().name(),
        }])
    }

    /// The names of the layers that take the output of `name` (a layer or [`INPUT`]), in
    /// layer order; empty for the model's output.
    pub fn consumers_of(&self, name: &str) -> Vec<&str> {
        self.layers
            .iter()
            .map(|l| l.module().name())
            .filter(|n| self.inputs_of(n).is_some_and(|i| i.contains(&name)))
            .collect()
    }

    /// The wiring spelled out for every layer: a chain's implicit one too.
    pub fn full_wiring(&self) -> BTreeMap<String, Vec<String>> {
        self.layers
            .iter()
            .map(|l| {
                let n = l.module().name();
                let inputs = self.inputs_of(n).unwrap_or_default();
                (
                    n.to_string(),
                    inputs.into_iter().map(String::from).collect(),
                )
            })
            .collect()
    }

    /// Each layer's per-example output shape, in layer order (the last is the model's).
    ///
    /// # Errors
    /// A layer's shape error, or a [`WiringError`] for wiring that names an unknown or later
    /// node (a model whose fields were edited by hand).
    pub fn node_shapes(&self) -> Result<Vec<Vec<usize>>> {
        let mut shapes: HashMap<&str, Vec<usize>> =
            HashMap::from([(INPUT, self.input_shape.clone())]);
        let mut out = Vec::with_capacity(self.layers.len());
        let mut prev = self.input_shape.clone();
        for l in &self.layers {
            let m = l.module();
            let s = if self.is_sequential() {
                m.output_shape(&prev)?
            } else {
                let inputs = self
                    .wiring
                    .get(m.name())
                    .ok_or_else(|| unknown(m.name(), ""))?;
                let ins = inputs
                    .iter()
                    .map(|i| {
                        shapes
                            .get(i.as_str())
                            .cloned()
                            .ok_or_else(|| unknown(m.name(), i))
                    })
                    .collect::<Result<Vec<_>>>()?;
                m.output_shape_many(&ins)?
            };
            if !self.is_sequential() && shapes.insert(m.name(), s.clone()).is_some() {
                return Err(WiringError::DuplicateName(m.name().into()).into());
            }
            prev = s.clone();
            out.push(s);
        }
        Ok(out)
    }

    /// The forward pass of a graph model, with the outputs of the layers named in `taps`.
    pub(crate) fn forward_graph(
        &self,
        g: &mut Graph,
        x: Var,
        taps: &[&str],
    ) -> (Var, Vec<Option<Var>>) {
        let mut found = vec![None; taps.len()];
        let mut vals: HashMap<&str, Var> = HashMap::from([(INPUT, x)]);
        // How many layers read each node: an activation layer whose input feeds nothing else
        // (and is not tapped) is applied in place on that input's node where the op allows
        // it (see `Graph::fuse_activation`), saving a node, a buffer and a pass each way.
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for inputs in self.wiring.values() {
            for i in inputs {
                *readers.entry(i.as_str()).or_default() += 1;
            }
        }
        let mut y = x;
        for l in &self.layers {
            let m = l.module();
            let name = m.name();
            let inputs: Vec<Var> = self.wiring[name]
                .iter()
                .map(|i| {
                    *vals.get(i.as_str()).unwrap_or_else(|| {
                        panic!("forward: node {name:?} takes {i:?}, computed nowhere before it")
                    })
                })
                .collect();
            let act = match l {
                Layer::ReLU(_) => Some(Activation::Relu),
                Layer::LeakyReLU(r) => Some(Activation::LeakyRelu(r.alpha)),
                _ => None,
            };
            let sole =
                |i: &String| readers.get(i.as_str()) == Some(&1) && !taps.contains(&i.as_str());
            let fused = match (act, self.wiring[name].as_slice()) {
                (Some(act), [only]) if sole(only) && *only != INPUT => {
                    g.fuse_activation(inputs[0], act)
                }
                _ => None,
            };
            y = fused.unwrap_or_else(|| m.forward_many(g, &inputs));
            vals.insert(name, y);
            if let Some(t) = taps.iter().position(|t| *t == name) {
                found[t] = Some(y);
            }
        }
        (y, found)
    }
}

fn unknown(node: &str, input: &str) -> TensorError {
    WiringError::UnknownInput {
        node: node.into(),
        input: input.into(),
    }
    .into()
}
