//! Same seed and thread count, same bytes: the library calls the examples make in quick mode
//! (train the small CNN, convert it to int8, prune it on a schedule, save every file), run
//! twice, must agree bit for bit — weights, calibration parameters, masks and every file.
//! Synthetic images (two classes a small CNN separates) stand in for MNIST, so the test needs
//! no data.

use std::collections::HashMap;

use pare::codecs::SparseCodec;
use pare::prune::{PolynomialDecay, PruneCallback};
use pare::quant::{ConvertConfig, convert};
use pare::tensor::gradcheck::toy_halves;
use pare::tensor::models::small_cnn;
use pare::tensor::optim::{Adam, AdamConfig};
use pare::tensor::train::{Fit, FitConfig};

/// Everything one run produces, as bytes.
#[derive(Debug, PartialEq)]
struct Run {
    checkpoint: Vec<u8>,
    int8: Vec<u8>,
    calibration: String,
    masks: Vec<(String, Vec<u32>)>,
    pruned_checkpoint: Vec<u8>,
    pruned_sparse: Vec<u8>,
    pruned_int8: Vec<u8>,
}

fn run(seed: u64, threads: usize) -> Run {
    let dir = std::env::temp_dir().join(format!("pare-repro-{}-{seed}", std::process::id()));
    let (x, y) = toy_halves(192, seed, 0.8, 0.3);
    let fit = |epochs| FitConfig {
        epochs,
        batch_size: 32,
        seed,
        verbose: false,
        threads: Some(threads),
        ..Default::default()
    };
    // Several entries: a HashMap's order changes from run to run, the files must not.
    let meta = || {
        HashMap::from([
            ("seed".to_string(), seed.to_string()),
            ("model".to_string(), "small".to_string()),
            ("data".to_string(), "toy halves".to_string()),
        ])
    };

    // Train, save.
    let mut model = small_cnn(seed);
    let mut adam = Adam::new(AdamConfig::default()).expect("adam");
    Fit::new(fit(2))
        .run(&mut model, &mut adam, x.view(), &y)
        .expect("train");
    let ckpt = dir.join("float.safetensors");
    pare::tensor::checkpoint::save(&model, &ckpt, meta()).expect("save");

    // Convert to int8 with 64 calibration examples, save.
    let calibration = x.slice_axis(ndarray::Axis(0), (0..64).into());
    let q = convert(&model, calibration.view(), &ConvertConfig::default()).expect("convert");
    let int8 = dir.join("int8.pare");
    q.save(&int8).expect("save int8");
    let params = format!("{:?} {:?}", q.input_quant(), q.layers());

    // Prune from the trained model on a polynomial schedule (50 % → 80 % over 12 steps,
    // masks every 2), strip, save dense, sparse and as sparse-coded int8.
    let schedule = PolynomialDecay::new(0.5, 0.8, 0, 12, 3.0, 2).expect("schedule");
    let mut prune = PruneCallback::new(schedule);
    let mut pruned = model.clone();
    let mut adam = Adam::new(AdamConfig::default()).expect("adam");
    Fit::new(fit(2))
        .callback(&mut prune)
        .run(&mut pruned, &mut adam, x.view(), &y)
        .expect("prune");
    let stripped = prune.strip(&pruned).expect("strip");
    let masks = prune
        .masks()
        .iter()
        .map(|(n, m)| (n.clone(), m.iter().map(|v| v.to_bits()).collect()))
        .collect();
    let pruned_ckpt = dir.join("pruned.safetensors");
    pare::tensor::checkpoint::save(&stripped, &pruned_ckpt, meta()).expect("save pruned");
    let sparse = dir.join("pruned.sparse.safetensors");
    pare::prune::save_sparse(&stripped, &sparse, meta()).expect("save sparse");
    let qp = convert(&stripped, calibration, &ConvertConfig::default()).expect("convert");
    let pruned_int8 = dir.join("pruned.int8.pare");
    qp.save_with(&pruned_int8, &SparseCodec)
        .expect("save sparse int8");

    let read = |p: &std::path::Path| std::fs::read(p).expect("read back");
    let out = Run {
        checkpoint: read(&ckpt),
        int8: read(&int8),
        calibration: params,
        masks,
        pruned_checkpoint: read(&pruned_ckpt),
        pruned_sparse: read(&sparse),
        pruned_int8: read(&pruned_int8),
    };
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn same_seed_and_threads_give_the_same_bytes() {
    for threads in [1, 2] {
        let (a, b) = (run(3, threads), run(3, threads));
        assert!(a == b, "two runs with {threads} thread(s) differ");
        // The files hold what was trained, not something constant: another seed differs
        // everywhere.
        if threads == 1 {
            let c = run(4, 1);
            assert_ne!(a.checkpoint, c.checkpoint);
            assert_ne!(a.int8, c.int8);
            assert_ne!(a.masks, c.masks);
            assert_ne!(a.pruned_sparse, c.pruned_sparse);
            assert_ne!(a.pruned_int8, c.pruned_int8);
        }
    }
}
