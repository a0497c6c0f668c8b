//! The reference networks of the experiments, built with the public API so the examples,
//! tests and benches share one definition: the three chains of the MNIST experiments and the
//! graph models [`resnet8`] and [`tiny_residual`].

use crate::functional::{Add, INPUT};
use crate::graph::Activation;
use crate::kernels::conv::Padding;
use crate::nn::{
    BatchNorm, Conv2d, Dense, Flatten, GlobalAveragePool2d, LeakyReLU, MaxPool2d, Model, ReLU,
    Reshape, Sequential,
};
use rand::{SeedableRng, rngs::StdRng};

/// Which reference network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// The quantization/pruning tutorials' CNN (20,410 parameters).
    Small,
    /// The Keras distillation example's teacher (256/512 filters).
    Teacher,
    /// The Keras distillation example's student (16/32 filters).
    Student,
}

impl std::str::FromStr for Reference {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "small" => Ok(Reference::Small),
            "teacher" => Ok(Reference::Teacher),
            "student" => Ok(Reference::Student),
            other => Err(format!(
                "unknown model {other:?}: expected small, teacher or student"
            )),
        }
    }
}

impl Reference {
    /// Builds the network with Keras' initialisation from `seed`.
    pub fn build(self, seed: u64) -> Sequential {
        match self {
            Reference::Small => small_cnn(seed),
            Reference::Teacher => teacher_cnn(256, 512, seed),
            Reference::Student => teacher_cnn(16, 32, seed),
        }
    }
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Reference::Small => "small",
            Reference::Teacher => "teacher",
            Reference::Student => "student",
        }
    }
}

/// Reshape(28,28,1) → Conv2D(12, 3x3, relu, valid) → MaxPool(2x2) → Flatten → Dense(10), the
/// TensorFlow post-training-quantization and pruning tutorials' model.
pub fn small_cnn(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new(&[28, 28, 1])
        .push(Reshape::new("reshape", &[28, 28, 1]))
        .push(Conv2d::new("conv2d", 1, 12, [3, 3], &mut rng).activation(Activation::Relu))
        .push(MaxPool2d::new("max_pooling2d", 2))
        .push(Flatten::new("flatten"))
        .push(Dense::new("dense", 13 * 13 * 12, 10, &mut rng))
}

/// Conv2D(f1, 3x3, s2, same) → LeakyReLU(0.2) → MaxPool(2x2, s1, same) → Conv2D(f2, 3x3, s2,
/// same) → Flatten → Dense(10): the Keras distillation example's teacher (256/512) and student
/// (16/32).
pub fn teacher_cnn(f1: usize, f2: usize, seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new(&[28, 28, 1])
        .push(
            Conv2d::new("conv2d", 1, f1, [3, 3], &mut rng)
                .strides(2)
                .padding(Padding::Same),
        )
        .push(LeakyReLU::new("leaky_re_lu", 0.2))
        .push(
            MaxPool2d::new("max_pooling2d", 2)
                .strides(1)
                .padding(Padding::Same),
        )
        .push(
            Conv2d::new("conv2d_1", f1, f2, [3, 3], &mut rng)
                .strides(2)
                .padding(Padding::Same),
        )
        .push(Flatten::new("flatten"))
        .push(Dense::new("dense", 7 * 7 * f2, 10, &mut rng))
}

/// A ResNet-8 for 28×28×1 images (issue 17; Keras counts 78,426 parameters, 672 of them
/// non-trainable): conv 3×3 16 (no bias) + BatchNorm + ReLU; three residual blocks of 16, 32
/// and 64 filters, the last two with stride 2 and a 1×1 projection + BatchNorm on the
/// shortcut, each conv-BN-ReLU-conv-BN, add, ReLU; global average pool; Dense 10.
///
/// Layer names: `stem_conv`, `stem_bn`, `stem_relu`, then per block `b{1,2,3}_conv1`,
/// `_bn1`, `_relu1`, `_conv2`, `_bn2`, (`_proj`, `_proj_bn`), `_add`, `_relu2`; `gap`, `dense`.
pub fn resnet8(seed: u64) -> Model {
    let mut rng = StdRng::seed_from_u64(seed);
    let conv = |name: &str, cin: usize, cout: usize, k: usize, stride: usize, rng: &mut StdRng| {
        Conv2d::new(name, cin, cout, [k, k], rng)
            .strides(stride)
            .padding(Padding::Same)
            .use_bias(false)
    };
    let mut b = Model::functional(&[28, 28, 1])
        .node(conv("stem_conv", 1, 16, 3, 1, &mut rng), &[INPUT])
        .node(BatchNorm::new("stem_bn", 16), &["stem_conv"])
        .node(ReLU::new("stem_relu"), &["stem_bn"]);
    let mut x = "stem_relu".to_string();
    let mut cin = 16;
    for (i, filters) in [16usize, 32, 64].into_iter().enumerate() {
        let p = format!("b{}", i + 1);
        let n = |s: &str| format!("{p}_{s}");
        let stride = if i == 0 { 1 } else { 2 };
        b = b
            .node(conv(&n("conv1"), cin, filters, 3, stride, &mut rng), &[&x])
            .node(BatchNorm::new(&n("bn1"), filters), &[&n("conv1")])
            .node(ReLU::new(&n("relu1")), &[&n("bn1")])
            .node(
                conv(&n("conv2"), filters, filters, 3, 1, &mut rng),
                &[&n("relu1")],
            )
            .node(BatchNorm::new(&n("bn2"), filters), &[&n("conv2")]);
        let shortcut = if stride == 1 && cin == filters {
            x.clone()
        } else {
            b = b
                .node(conv(&n("proj"), cin, filters, 1, stride, &mut rng), &[&x])
                .node(BatchNorm::new(&n("proj_bn"), filters), &[&n("proj")]);
            n("proj_bn")
        };
        b = b
            .node(Add::new(&n("add")), &[&n("bn2"), &shortcut])
            .node(ReLU::new(&n("relu2")), &[&n("add")]);
        x = n("relu2");
        cin = filters;
    }
    b.node(GlobalAveragePool2d::new("gap"), &[&x])
        .node(Dense::new("dense", 64, 10, &mut rng), &["gap"])
        .build()
        .expect("resnet8: the wiring is fixed and valid")
}

/// A residual network small enough for tests, for `classes` classes of 28×28×1 images:
/// conv 3×3 4 stride 2 (no bias) + BatchNorm + ReLU; one block conv-BN-ReLU-conv-BN added to
/// its input, ReLU; global average pool; Dense.
pub fn tiny_residual(classes: usize, seed: u64) -> Model {
    let mut rng = StdRng::seed_from_u64(seed);
    let conv = |name: &str, cin: usize, stride: usize, rng: &mut StdRng| {
        Conv2d::new(name, cin, 4, [3, 3], rng)
            .strides(stride)
            .padding(Padding::Same)
            .use_bias(false)
    };
    Model::functional(&[28, 28, 1])
        .node(conv("conv", 1, 2, &mut rng), &[INPUT])
        .node(BatchNorm::new("bn", 4), &["conv"])
        .node(ReLU::new("relu"), &["bn"])
        .node(conv("b_conv1", 4, 1, &mut rng), &["relu"])
        .node(BatchNorm::new("b_bn1", 4), &["b_conv1"])
        .node(ReLU::new("b_relu1"), &["b_bn1"])
        .node(conv("b_conv2", 4, 1, &mut rng), &["b_relu1"])
        .node(BatchNorm::new("b_bn2", 4), &["b_conv2"])
        .node(Add::new("b_add"), &["b_bn2", "relu"])
        .node(ReLU::new("b_relu2"), &["b_add"])
        .node(GlobalAveragePool2d::new("gap"), &["b_relu2"])
        .node(Dense::new("dense", 4, classes, &mut rng), &["gap"])
        .build()
        .expect("tiny_residual: the wiring is fixed and valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet8_has_the_keras_parameter_counts() {
        let m = resnet8(0);
        let s = m.summary();
        assert_eq!(
            (s.total_params, s.trainable_params, s.non_trainable_params),
            (78_426, 77_754, 672)
        );
        assert_eq!(m.output_shape().unwrap(), [10]);
        assert_eq!(m.inputs_of("b2_add"), Some(vec!["b2_bn2", "b2_proj_bn"]));
        assert_eq!(m.inputs_of("b1_add"), Some(vec!["b1_bn2", "stem_relu"]));
        assert_eq!(m.consumers_of("b1_relu2"), ["b2_conv1", "b2_proj"]);
        assert_eq!(resnet8(3).params(), resnet8(3).params());
        assert_eq!(tiny_residual(2, 0).output_shape().unwrap(), [2]);
    }

    #[test]
    fn parameter_counts_match_keras_summaries() {
        // Keras model.summary(): small 20,410; teacher 2,640,250 (conv 2,560 + conv_1 1,180,160
        // + dense 250,890 ... ) computed from the layer shapes.
        assert_eq!(small_cnn(0).num_params(), 120 + 20_290);
        let t = teacher_cnn(256, 512, 0);
        assert_eq!(
            t.num_params(),
            (9 * 256 + 256) + (9 * 256 * 512 + 512) + (7 * 7 * 512 * 10 + 10)
        );
        assert_eq!(t.output_shape().unwrap(), vec![10]);
        let s = teacher_cnn(16, 32, 0);
        assert_eq!(
            s.num_params(),
            (9 * 16 + 16) + (9 * 16 * 32 + 32) + (7 * 7 * 32 * 10 + 10)
        );
    }

    #[test]
    fn same_seed_same_weights() {
        let (a, b) = (small_cnn(3), small_cnn(3));
        assert_eq!(a.params(), b.params());
        assert_ne!(small_cnn(4).params(), a.params());
    }
}
