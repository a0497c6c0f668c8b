//! A user's program: its own rand 0.8 and ndarray 0.16 for its own work, pare's re-exported
//! `ndarray` and seeded constructors for everything handed to pare.

use pare::tensor::ndarray as pnd;
use pare::tensor::nn::{Conv2d, Dense, Flatten, MaxPool2d, Sequential};
use pare::tensor::optim::{Adam, AdamConfig};
use pare::tensor::train::{Fit, FitConfig, evaluate};
use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The user's own rand 0.8 (`gen_range` is its API; 0.9 renamed it) and ndarray 0.16.
    let mut own_rng = rand::rngs::StdRng::seed_from_u64(7);
    let own: ndarray::Array2<f32> =
        ndarray::Array2::from_shape_fn((8, 4), |_| own_rng.gen_range(0.0..1.0));

    // Data for pare goes through pare's ndarray; labels are plain integers.
    let mut x = pnd::Array4::<f32>::zeros((8, 8, 8, 1));
    let mut y = Vec::new();
    for i in 0..8 {
        let label = i % 2;
        let rows = if label == 0 { 0..4 } else { 4..8 };
        for r in rows {
            for c in 0..8 {
                x[[i, r, c, 0]] = own[[i, c % 4]] * 0.2 + 0.8;
            }
        }
        y.push(label);
    }
    // Seeded constructors: no rand type crosses into pare.
    let mut model = Sequential::new(&[8, 8, 1])
        .push(Conv2d::seeded("conv2d", 1, 4, [3, 3], 0))
        .push(MaxPool2d::new("max_pooling2d", 2))
        .push(Flatten::new("flatten"))
        .push(Dense::seeded("dense", 3 * 3 * 4, 2, 1));
    // A pare-side generator, for whatever else takes an `Rng`.
    let _rng = pare::tensor::seeded_rng(3);
    let mut adam = Adam::new(AdamConfig {
        learning_rate: 0.02,
        ..Default::default()
    })?;
    let cfg = FitConfig {
        epochs: 30,
        batch_size: 8,
        verbose: false,
        ..Default::default()
    };
    Fit::new(cfg).run(&mut model, &mut adam, x.view().into_dyn(), &y)?;
    let e = evaluate(&model, x.view().into_dyn(), &y, 8)?;
    println!("user crate: accuracy {:.2}, loss {:.4}", e.accuracy, e.loss);
    if e.accuracy < 1.0 {
        return Err("the toy problem should be learnt".into());
    }
    Ok(())
}
