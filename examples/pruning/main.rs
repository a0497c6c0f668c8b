//! The TFMOT "pruning in Keras" experiment on MNIST: train the small CNN, prune it to 80 % while
//! fine-tuning, strip it, cut out the channels pruning killed, store it sparse, convert it to
//! int8, and compare sizes, accuracies and inference times. Also: the dense kernel alone pruned
//! to 85 and 90 %, half the conv filters pruned whole, and (`--sweep`) a sweep of the final
//! sparsity.
//!
//! Run: `cargo run --release --example pruning` (`--help` lists every flag; `--quick` is the
//! CI-sized run, 3000 training images and a three-point sweep). Why these learning rates and
//! schedules, and the figures they give: `docs/pruning.md`.
//!
//! Writes `target/pare/pruning.json` (`pruning-sweep.json` for the sweep) and every model it
//! measures under `target/pare/models/` (all under `target/pare/quick/` with `--quick`).

// serde_json's `json!` recurses once per token: pruning.json's one literal needs more than 128.
#![recursion_limit = "256"]

#[path = "../common/mod.rs"]
mod common;
mod report;
mod steps;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use common::LrSchedule;
use ndarray::Axis;
use pare::breakdown::FileBreakdown;
use pare::measure::FileSize;
use pare::prune::{LayerSparsity, sparsity_report};
use pare::quant::Mode;
use pare::sweep::{
    EVAL_BATCH, Int8File, PruneRecipe, Pruned, Splits, Structured, SweepPoint, save_int8,
    save_sparse_checked, sparsity_sweep,
};
use pare::tensor::models::small_cnn;
use pare::tensor::train::{History, evaluate};

const SWEEP: [f32; 6] = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95];
const QUICK_SWEEP: [f32; 3] = [0.5, 0.8, 0.95];
/// The dense-kernel-only variants: final sparsities, and the kernel pruned.
const DENSE_ONLY: [f32; 2] = [0.85, 0.9];
const DENSE_KERNEL: &str = "dense.kernel";

/// Magnitude pruning of the small MNIST CNN, after TFMOT's tutorial.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Baseline training epochs [default: 4; 1 with --quick].
    #[arg(long, value_parser = common::positive)]
    epochs: Option<usize>,
    /// Pruning fine-tune epochs [default: 2; 1 with --quick].
    #[arg(long, value_parser = common::positive)]
    prune_epochs: Option<usize>,
    /// Seed of the initial weights and of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The baseline's initial Adam rate.
    #[arg(long, default_value_t = 5e-3, value_parser = common::rate)]
    lr: f32,
    /// The baseline's rate schedule.
    #[arg(long, value_enum, default_value_t = LrSchedule::Cosine)]
    lr_schedule: LrSchedule,
    /// The pruning fine-tune's initial Adam rate.
    #[arg(long, default_value_t = 2e-3, value_parser = common::rate)]
    prune_lr: f32,
    /// The fine-tune's rate schedule.
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    prune_lr_schedule: LrSchedule,
    /// Prune only these kernels, comma-separated (dense.kernel, conv2d.kernel) [default: all].
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    prune_only: Option<Vec<String>>,
    /// Epochs of quantization-aware training (Adam 1e-4, masks fixed) of the pruned model
    /// before a second int8 conversion at the learned ranges (0: off).
    #[arg(long, default_value_t = 0)]
    qat: usize,
    /// Also sweep the final sparsity (50 to 95 %).
    #[arg(long)]
    sweep: bool,
    /// CI-sized run: 3000 training images, 1 + 1 epochs, masks every step, three sweep points;
    /// results under target/pare/quick/.
    #[arg(long)]
    quick: bool,
    /// Also write the final models as ONNX (float, QDQ and QOperator) into this directory.
    #[arg(long, value_name = "DIR")]
    onnx: Option<PathBuf>,
    /// Directory of the MNIST IDX files [default: $MNIST_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = common::parse();
    common::run(|| {
        let results = common::results(args.quick);
        let o = prune(args, &results)?;
        report::print(&o, &results)?;
        if let Some(sweep) = report::sweep_json(&o) {
            let path = results.write_json("pruning-sweep.json", sweep)?;
            println!("wrote {}", path.display());
        }
        let mut json = report::json(&o)?;
        if let Some((acc, size)) = o.qat {
            println!(
                "pruned int8 after {} of QAT: {} test, {} bytes gzipped",
                common::count(o.args.qat, "epoch"),
                common::pct(acc),
                size.gzip_bytes
            );
            json["qat"] = serde_json::json!({
                "epochs": o.args.qat, "int8_accuracy": acc, "int8_model": size.to_json(),
            });
        }
        let path = results.write_json("pruning.json", json)?;
        println!("wrote {}", path.display());
        Ok(())
    })
}

/// Everything the experiment measured, for the report.
struct Outcome {
    args: Args,
    train_images: usize,
    test_images: usize,
    recipe: PruneRecipe,
    base_acc: f32,
    base_size: FileSize,
    base_history: History,
    base_int8: Int8File,
    main: Pruned,
    layers: Vec<LayerSparsity>,
    pruned_dense_size: FileSize,
    pruned_size: FileSize,
    pruned_int8: Int8File,
    pruned_int8_dense: FileSize,
    all_channels_int8: Int8File,
    dynamic_range: Int8File,
    breakdown: FileBreakdown,
    dense_only: Vec<SweepPoint>,
    structured: Structured,
    structured_size: FileSize,
    structured_int8: Int8File,
    seconds: Vec<f64>,
    sparse_layers: Vec<String>,
    sparse_acc: f32,
    sparse_runtime: serde_json::Value,
    sweep: Option<Vec<SweepPoint>>,
    qat: Option<(f32, FileSize)>,
}

fn prune(a: Args, results: &pare::results::Results) -> Result<Outcome> {
    let epochs = a.epochs.unwrap_or(if a.quick { 1 } else { 4 });
    let prune_epochs = a.prune_epochs.unwrap_or(if a.quick { 1 } else { 2 });
    let file = |name: &str| results.model_path(&format!("{name}.safetensors"));
    let data = common::load_data(a.data_dir.as_deref())?;
    let train = data.train().take(if a.quick { 3000 } else { usize::MAX });
    let (x, y) = common::xy(&train);
    let (tx, ty) = common::xy(data.test());
    let calibration = x.slice_axis(Axis(0), (0..100.min(y.len())).into());
    let s = Splits {
        x: x.view(),
        y: &y,
        test_x: tx.view(),
        test_y: &ty,
        calibration,
    };
    println!(
        "{} training images (10 % held out for validation), {} test images, seed {}",
        y.len(),
        ty.len(),
        a.seed
    );
    let mut baseline = small_cnn(a.seed);
    let only = a.prune_only.as_deref();
    steps::check_prunable(&baseline, only)?;
    // TFMOT's mask frequency, 100 steps; every step in quick mode, too short for 100.
    let frequency = if a.quick { 1 } else { 100 };
    let recipe = PruneRecipe {
        epochs: prune_epochs,
        learning_rate: a.prune_lr,
        cosine: a.prune_lr_schedule.cosine(),
        frequency,
        seed: a.seed,
        ..Default::default()
    };
    let meta = |stage: &str| steps::metadata(a.seed, stage);

    // 1. Baseline: the float model, batch 32, 10 % held out.
    let (lr, cosine) = (a.lr, a.lr_schedule.cosine());
    let base_recipe = PruneRecipe {
        epochs,
        batch_size: 32,
        learning_rate: lr,
        cosine,
        ..recipe.clone()
    };
    let schedule = a.lr_schedule.name();
    println!(
        "\n== baseline: small CNN, {}, batch 32, Adam {lr} {schedule}",
        common::count(epochs, "epoch")
    );
    let base_history = base_recipe.train(&mut baseline, None, &s)?;
    let base_acc = evaluate(&baseline, tx.view(), &ty, EVAL_BATCH)?.accuracy;
    let base_path = file("baseline-f32")?;
    pare::tensor::checkpoint::save(&baseline, &base_path, meta("baseline"))?;
    println!("baseline test accuracy {}", common::pct(base_acc));

    // 2. Pruned to 80 % with the tutorial's schedule, stripped, dead channels cut out.
    println!(
        "\n== pruning: PolynomialDecay 0.50 -> 0.80 over steps 0..{} (masks every {})\n   {}, \
         batch 128, Adam {} {}",
        recipe.end_step(y.len()),
        common::count(frequency as usize, "step"),
        common::count(prune_epochs, "epoch"),
        a.prune_lr,
        a.prune_lr_schedule.name()
    );
    let main = recipe.prune(&baseline, 0.8, only, &s)?;
    println!("pruned test accuracy {}", common::pct(main.accuracy));
    // TFMOT's per-layer figures: of the stripped model, before channels are cut.
    let layers = sparsity_report(&main.stripped);
    report::print_layers(&layers);
    println!("{}", main.dead);
    // As TFMOT measures it (the stripped model saved dense, then gzipped) and sparse-encoded.
    let pruned_dense_path = file("pruned-f32-dense")?;
    pare::tensor::checkpoint::save(&main.stripped, &pruned_dense_path, meta("pruned"))?;
    let pruned_size = save_sparse_checked(&main.model, &file("pruned-f32")?, meta("pruned"))?;

    // 3. int8, kernels stored in pare-prune's sparse formats where smaller.
    println!("\n== int8 conversion (pare-quant), weights stored sparse where smaller");
    let pruned_int8 = save_int8(&main.model, Mode::FullInteger, &s, &file("pruned-int8")?)?;
    let pruned = (Some(&main.model), Some(&pruned_int8.model));
    common::write_onnx(a.onnx.as_deref(), "pruned", pruned.0, pruned.1)?;
    // The same, keeping every channel (the architecture TFMOT's strip leaves).
    let all_channels = file("pruned-int8-all-channels")?;
    let all_channels_int8 = save_int8(&main.stripped, Mode::FullInteger, &s, &all_channels)?;
    let dr_path = file("pruned-int8-dynamic-range")?;
    let dynamic_range = save_int8(&main.model, Mode::DynamicRange, &s, &dr_path)?;
    let base_int8 = save_int8(&baseline, Mode::FullInteger, &s, &file("baseline-int8")?)?;
    let pruned_int8_dense = FileSize::of(&pruned_int8.model.to_bytes()?);
    let bytes = std::fs::read(file("pruned-int8")?)?;
    let breakdown = FileBreakdown::of(&pruned_int8.model, &bytes)?;

    // 3b. The pruned model fine-tuned through int8 fake-quant (masks fixed), if asked.
    let qat = if a.qat > 0 {
        Some(steps::qat(
            &main.model,
            a.qat,
            &recipe,
            &s,
            &file("pruned-int8-qat")?,
        )?)
    } else {
        None
    };

    // 4. Only the dense kernel pruned, harder; the conv kernel (108 weights) left dense.
    let dense_only = steps::dense_only(&recipe, &baseline, &s, &file, &meta("pruned"))?;

    // 5. Structured: half of the conv filters pruned whole (L1), then cut out.
    let (structured, structured_size, structured_int8) =
        steps::structured(&recipe, &baseline, &s, &file, &meta("structured"))?;

    // 6. Inference over the test set: median of 5 rounds, each running every model in turn.
    let models = [&baseline, &main.model, &structured.model];
    let (seconds, sparse_layers, sparse_acc, sparse_runtime) =
        steps::time_models(models, [&base_int8.model, &pruned_int8.model], &s)?;

    // 7. The sweep of the final sparsity, if asked.
    let sweep = if a.sweep {
        let sparsities: &[f32] = if a.quick { &QUICK_SWEEP } else { &SWEEP };
        let files = |sp: f32| {
            let tag = format!("{:.0}", sp * 100.0);
            Ok((
                file(&format!("sweep-{tag}-f32"))?,
                file(&format!("sweep-{tag}-int8"))?,
            ))
        };
        let starting = |sp: f32| println!("\n== sweep: final sparsity {:.0} %", sp * 100.0);
        Some(sparsity_sweep(
            &recipe, &baseline, sparsities, only, &s, files, starting,
        )?)
    } else {
        None
    };

    Ok(Outcome {
        train_images: y.len(),
        test_images: ty.len(),
        base_acc,
        base_size: FileSize::read(&base_path)?,
        base_history,
        base_int8,
        layers,
        pruned_dense_size: FileSize::read(&pruned_dense_path)?,
        pruned_size,
        pruned_int8,
        pruned_int8_dense,
        all_channels_int8,
        dynamic_range,
        breakdown,
        dense_only,
        structured_size,
        structured,
        structured_int8,
        seconds,
        sparse_layers,
        sparse_acc,
        sparse_runtime,
        sweep,
        qat,
        main,
        recipe,
        args: a,
    })
}
