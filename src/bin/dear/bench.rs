//! `dear bench`: the fixed workloads of `benches/data/` (W1 pointwise, W2 listwise,
//! run by [`dear::dear_core::bench`]) on the default model or on random-weight models in
//! the shapes of DeAR's base models.
//!
//! One invocation measures one model, so the peak memory it reports (the process's
//! high-water mark) belongs to that model alone; `scripts/bench.sh` runs the matrix.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use clap::builder::PossibleValue;
use clap::Args;
use dear::dear_core::bench::{self, BenchOptions, BenchReport, Shape, Workload, Workloads};
use dear::dear_core::{Llama, Quantization};

use super::{choices, ModelArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Random weights in this shape instead of --model.
    #[arg(long, value_parser = choices::<Shape>([
        PossibleValue::new("llama-3.2-1b").help("Llama-3.2-1B"),
        PossibleValue::new("llama-3.2-3b").help("Llama-3.2-3B (DeAR's 3B students)"),
        PossibleValue::new("llama-3.1-8b").help("Llama-3.1-8B (DeAR's 8B students and listwise base)"),
    ]))]
    synthetic: Option<Shape>,
    /// The weight type of --synthetic models: none or dense (f32/--dtype), q8_0, q4_0, q4_k.
    #[arg(long, default_value = "q4_0")]
    synthetic_quant: Quantization,
    /// The workloads to run.
    #[arg(long, default_value = "all", value_parser = choices::<Workload>(["w1", "w2", "all"].map(PossibleValue::new)))]
    workload: Workload,
    /// W1 sequences to run (of 100; the rate is per token, the seconds per query are
    /// scaled to 100).
    #[arg(long, default_value_t = 100)]
    sequences: usize,
    /// W1 with the 12-token query prefix computed once and shared.
    #[arg(long)]
    share_prefix: bool,
    /// W2 prompt tokens to keep (the first N of 2,052) [default: all].
    #[arg(long)]
    prompt_tokens: Option<usize>,
    /// Greedy tokens decoded in W2.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Most tokens in one packed W1 batch.
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    /// Runs of each workload; the best is reported.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let options = args.model.options();
    let (lm, raw);
    let (llama, name) = match args.synthetic {
        Some(shape) => {
            let options = options.clone().with_quantization(args.synthetic_quant);
            raw = Llama::random(shape.config(), &options)?;
            let quant = args.synthetic_quant;
            (
                &raw,
                format!("{} (random weights, {quant:?})", shape.name()),
            )
        }
        None => {
            lm = args.model.load()?;
            (lm.llama(), lm.source().to_string())
        }
    };
    let load_seconds = started.elapsed().as_secs_f64();
    let workloads = Workloads::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/data"))?;
    let results = bench::run(
        llama,
        &workloads,
        &BenchOptions {
            workload: args.workload,
            sequences: args.sequences,
            share_prefix: args.share_prefix,
            prompt_tokens: args.prompt_tokens,
            decode_tokens: args.decode_tokens,
            batch_tokens: args.batch_tokens,
            runs: args.runs,
        },
    )?;
    let report = BenchReport::new(name, load_seconds, options.quantized_matmul(), results);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{report}")?;
    }
    Ok(())
}
