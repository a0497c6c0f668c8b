//! Rebuilds `docs/results.md` and its plots (`docs/img/*.svg`) from the JSON the examples wrote,
//! so the page shows what a real run measured.
//!
//! ```text
//! cargo run --release --example report              # target/pare, else docs/data
//! cargo run --release --example report -- --from target/pare/quick --out /tmp/quick.md
//! cargo run --release --example report -- --check   # fails if docs/results.md is stale
//! ```
//!
//! For each result file (`quantization.json`, `pruning.json`, `pruning-sweep.json`,
//! `distillation.json`, `train-*.json`) the first directory holding it wins; a section whose
//! file is in none says which command makes it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use pare::report::{Inputs, build};

/// Rebuild docs/results.md and docs/img/*.svg from the examples' JSON results.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Read the JSON from this directory only [default: target/pare, then docs/data]
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,

    /// Where to write the page
    #[arg(long, value_name = "FILE", default_value = "docs/results.md")]
    out: PathBuf,

    /// Where to write the plots (the page links them as img/NAME.svg)
    #[arg(long, value_name = "DIR", default_value = "docs/img")]
    img_dir: PathBuf,

    /// Write nothing; fail if the page on disk differs from the one the JSON gives [default: off]
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // Paths are taken from the workspace root, where the page and the results live.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = match &args.from {
        Some(d) => vec![d.clone()],
        None => vec![root.join("target/pare"), root.join("docs/data")],
    };
    let inputs = Inputs::find(&dirs)?;
    for (name, file) in &inputs.files {
        let quick = if file.is_quick() { " (quick run)" } else { "" };
        eprintln!("read {name} from {}{quick}", file.path.display());
    }
    let report = build(&inputs)?;
    if !report.missing.is_empty() {
        eprintln!(
            "not found: {} (their sections say what to run)",
            report.missing.join(", ")
        );
    }
    let (out, img_dir) = (root.join(&args.out), root.join(&args.img_dir));
    if args.check {
        let on_disk =
            std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        if on_disk != report.markdown {
            return Err(format!(
                "{} is not what the results give: rerun `cargo run --release --example report`",
                out.display()
            )
            .into());
        }
        println!("{} is up to date", out.display());
        return Ok(());
    }
    report.write(&out, &img_dir)?;
    println!(
        "wrote {} and {} plots in {}",
        out.display(),
        report.plots.len(),
        img_dir.display()
    );
    Ok(())
}
