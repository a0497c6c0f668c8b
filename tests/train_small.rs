//! The small CNN learns MNIST: 6,000 training images, one epoch with Keras' defaults (Adam 1e-3,
//! batch 32, 188 steps).
//!
//! Measured: 88.4 / 90.0 / 89.2 / 89.0 % test accuracy for seeds 0–3, the same learning curve as
//! Keras (after a full epoch both show ~92 % running train accuracy and ~96–97 % held out), so
//! the bar is 87 %: far above chance and above any broken gradient, without being a coin flip.

mod common;

use pare::tensor::train::evaluate;

#[test]
fn small_cnn_learns_mnist_in_one_epoch_on_6000_images() {
    let Some(data) = common::mnist() else { return };
    let (_, model, h) = common::small_cnn_one_epoch(&data);
    let test = data.test();
    let eval = evaluate(
        &model,
        test.images().view().into_dyn(),
        &test.labels_usize(),
        256,
    )
    .unwrap();
    assert!(
        eval.accuracy > 0.87,
        "test accuracy {} after {:?}",
        eval.accuracy,
        h.epochs[0]
    );
}
