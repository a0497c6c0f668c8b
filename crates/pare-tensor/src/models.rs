//! The three reference networks of the MNIST experiments, built with the public API so the
//! examples, tests and benches share one definition.

use crate::graph::Activation;
use crate::kernels::conv::Padding;
use crate::nn::{Conv2d, Dense, Flatten, LeakyReLU, MaxPool2d, Reshape, Sequential};
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

#[cfg(test)]
mod tests {
    use super::*;

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
