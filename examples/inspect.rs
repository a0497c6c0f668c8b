//! What a pare file holds: kind, layers, tensors (dtype, shape, bytes, how each is stored,
//! sparsity) and whether its checksums verify. Reads checkpoints, int8 model files, pruned
//! model files and IDX arrays (raw or gzipped).
//!
//! ```text
//! cargo run --release --example inspect -- target/pare/quick/small.int8.pare
//! ```
//!
//! A corrupt file, or one that is not a pare file, is one line on stderr (`error: ...`) and
//! exit status 1.

use std::path::PathBuf;

use clap::Parser;

/// Prints what a pare checkpoint, model file or IDX file holds, and checks its checksums.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The file to inspect.
    file: PathBuf,
    /// List at most this many tensors (0: only the summary).
    #[arg(long, default_value_t = 100)]
    max_tensors: usize,
}

fn main() {
    let args = Args::parse();
    match pare::inspect::inspect(&args.file) {
        Ok(mut report) => {
            let hidden = report.tensors.len().saturating_sub(args.max_tensors);
            report.tensors.truncate(args.max_tensors);
            println!("{report}");
            if hidden > 0 {
                println!("({hidden} more tensors; see --max-tensors)");
            }
        }
        Err(e) => {
            // One line, whatever RUST_BACKTRACE says: the message names the file and the fault.
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
