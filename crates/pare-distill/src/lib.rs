//! pare-distill: knowledge distillation for pare's models, in the Keras convention.
//!
//! - [`kd_loss`]: `alpha · CE(y, student) + (1 − alpha) · T² · KL(softmax(teacher / T) ‖
//!   softmax(student / T))` (Hinton et al. 2015; the Keras `Distiller` example's loss), built
//!   from graph ops so it has a gradient, computed through log-softmax so it stays finite.
//!   [`KdConfig`] holds `alpha` and `T` (default 0.1 and 10, as in the Keras example).
//! - [`Distiller`]: a [`pare_tensor::train::Objective`], so distillation is an ordinary
//!   [`pare_tensor::train::Fit`] run on the student. The teacher only runs forward, on an
//!   inference graph; its logits enter the student's graph as constants.
//! - [`TeacherCache`]: the teacher's logits for the whole training set, computed once and
//!   looked up by `batch.indices` every epoch (no augmentation, so they never change).
//! - [`Hint`] / [`hint_loss`]: FitNets' feature distillation, an MSE between a teacher
//!   activation and a student activation through a learned 1x1 projection that the
//!   optimizer trains along with the student.
//!
//! ```
//! use ndarray::Array4;
//! use pare_distill::{Distiller, KdConfig, TeacherCache};
//! use pare_tensor::models::teacher_cnn;
//! use pare_tensor::optim::{Adam, AdamConfig};
//! use pare_tensor::train::{Fit, FitConfig};
//!
//! // Four tiny "images": bright top half = class 0, bright bottom half = class 1.
//! let x = Array4::from_shape_fn((4, 28, 28, 1), |(i, r, _, _)| ((r < 14) == (i % 2 == 0)) as u8 as f32)
//!     .into_dyn();
//! let y = [0, 1, 0, 1];
//! let fit = FitConfig { epochs: 10, batch_size: 4, verbose: false, ..Default::default() };
//! let adam = || Adam::new(AdamConfig { learning_rate: 0.01, ..Default::default() });
//!
//! let mut teacher = teacher_cnn(4, 8, 0);
//! Fit::new(fit.clone()).run(&mut teacher, &mut adam()?, x.view(), &y)?;
//!
//! // Teacher logits once, then the student learns from them and from the labels.
//! let cache = TeacherCache::compute(&teacher, x.view(), 4)?;
//! let mut distiller = Distiller::new(&teacher, KdConfig::default())?.with_cache(&cache)?;
//! let mut student = teacher_cnn(2, 4, 1);
//! let history = Fit::new(fit).objective(&mut distiller).run(&mut student, &mut adam()?, x.view(), &y)?;
//! assert!(history.epochs.last().unwrap().loss < history.epochs[0].loss);
//! let eval = distiller.evaluate(&student, x.view(), &y, 4)?;
//! assert_eq!(eval.accuracy, 1.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod distiller;
mod error;
mod hint;
mod loss;

pub use cache::TeacherCache;
pub use distiller::Distiller;
pub use error::{DistillError, Result};
pub use hint::{Hint, HintConfig, PROJECTION_NAME, hint_loss};
pub use loss::{KdConfig, KdLoss, kd_loss, kd_loss_parts};
