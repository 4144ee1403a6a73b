//! `dear bench`: the fixed workloads of `benches/data/` (W1 pointwise, W2 listwise) on
//! the default model or on random-weight models in the shapes of DeAR's base models.
//!
//! One invocation measures one model, so the peak memory it reports (the process's
//! high-water mark) belongs to that model alone; `scripts/bench.sh` runs the matrix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use dear::dear_core::{
    Batch, ForwardOptions, KvCache, LanguageModel, Llama, ModelConfig, Outputs, Quantization,
};

use super::ModelArgs;

/// A random-weight model shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Shape {
    /// Llama-3.2-1B.
    #[value(name = "llama-3.2-1b")]
    Llama1b,
    /// Llama-3.2-3B (DeAR's 3B students).
    #[value(name = "llama-3.2-3b")]
    Llama3b,
    /// Llama-3.1-8B (DeAR's 8B students and listwise base).
    #[value(name = "llama-3.1-8b")]
    Llama8b,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    W1,
    W2,
    All,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Random weights in this shape instead of --model.
    #[arg(long, value_enum)]
    synthetic: Option<Shape>,
    /// The weight type of --synthetic models: none or dense (f32/--dtype), q8_0, q4_0, q4_k.
    #[arg(long, default_value = "q4_0")]
    synthetic_quant: Quantization,
    /// The workloads to run.
    #[arg(long, value_enum, default_value_t = Workload::All)]
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

enum Model {
    Lm(LanguageModel),
    Raw(Llama),
}

impl Model {
    fn llama(&self) -> &Llama {
        match self {
            Model::Lm(lm) => lm.llama(),
            Model::Raw(l) => l,
        }
    }
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/data")
}

fn w1_ids() -> anyhow::Result<Vec<Vec<u32>>> {
    let path = data_dir().join("w1_pointwise.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let ids = v["ids"].as_array().context("a W1 line without ids")?;
            Ok(ids
                .iter()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect())
        })
        .collect()
}

fn w2_ids() -> anyhow::Result<Vec<u32>> {
    let path = data_dir().join("w2_listwise.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["ids"]
        .as_array()
        .context("w2_listwise.json has no ids")?
        .iter()
        .filter_map(|x| x.as_u64().map(|x| x as u32))
        .collect())
}

/// The process's peak resident memory, in MiB (Linux), if known.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Multiply-adds of the linear layers per token (no LM head), times two.
fn flops_per_token(c: &ModelConfig) -> f64 {
    let (h, i) = (c.hidden_size as f64, c.intermediate_size as f64);
    let q = (c.num_heads * c.head_dim) as f64;
    let kv = (c.num_kv_heads * c.head_dim) as f64;
    2.0 * c.num_layers as f64 * (h * q + 2.0 * h * kv + q * h + 3.0 * h * i)
}

fn best<F: FnMut() -> anyhow::Result<()>>(runs: usize, mut f: F) -> anyhow::Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn run_w1(llama: &Llama, args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let mut seqs = w1_ids()?;
    let vocab = llama.config().vocab_size as u32;
    if seqs.iter().flatten().any(|&t| t >= vocab) {
        bail!("W1 token ids exceed the model's vocabulary ({vocab})");
    }
    seqs.truncate(args.sequences.max(1));
    let tokens: usize = seqs.iter().map(Vec::len).sum();
    let prefix = 12;
    let budget = args.batch_tokens.max(228);
    let secs = best(args.runs, || {
        let mut start = 0;
        if args.share_prefix {
            let mut cache = KvCache::new();
            llama.forward(
                &Batch::from_sequences(&[&seqs[0][..prefix]])?,
                std::slice::from_mut(&mut cache),
                Outputs::default(),
            )?;
            let caches = [cache];
            while start < seqs.len() {
                let mut batch = Batch::new();
                let (mut used, mut end) = (0, start);
                while end < seqs.len()
                    && (end == start || used + seqs[end].len() - prefix <= budget)
                {
                    batch.push(&seqs[end][prefix..], prefix)?;
                    used += seqs[end].len() - prefix;
                    end += 1;
                }
                let of = vec![0usize; end - start];
                llama.forward_with(
                    &batch,
                    &mut [],
                    Outputs::last_hidden(),
                    ForwardOptions::default().with_prefixes(&caches, &of),
                )?;
                start = end;
            }
        } else {
            while start < seqs.len() {
                let (mut used, mut end) = (0, start);
                while end < seqs.len() && (end == start || used + seqs[end].len() <= budget) {
                    used += seqs[end].len();
                    end += 1;
                }
                llama.forward(
                    &Batch::from_sequences(&seqs[start..end])?,
                    &mut [],
                    Outputs::last_hidden(),
                )?;
                start = end;
            }
        }
        Ok(())
    })?;
    let rate = tokens as f64 / secs;
    Ok(serde_json::json!({
        "sequences": seqs.len(),
        "tokens": tokens,
        "seconds": secs,
        "tokens_per_s": rate,
        "seconds_per_query_100": 22_800.0 / rate,
        "gflops": flops_per_token(llama.config()) * rate / 1e9,
        "shared_prefix": args.share_prefix,
    }))
}

fn run_w2(llama: &Llama, args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let mut prompt = w2_ids()?;
    if let Some(n) = args.prompt_tokens {
        prompt.truncate(n.max(1));
    }
    let vocab = llama.config().vocab_size as u32;
    if prompt.iter().any(|&t| t >= vocab) {
        bail!("W2 token ids exceed the model's vocabulary ({vocab})");
    }
    let (mut prefill_best, mut decode_best) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..args.runs.max(1) {
        let mut cache = KvCache::new();
        let t = Instant::now();
        let out = llama.forward(
            &Batch::from_sequences(&[&prompt])?,
            std::slice::from_mut(&mut cache),
            Outputs::last_logits(),
        )?;
        let mut logits = out.logits.context("no logits")?;
        prefill_best = prefill_best.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..args.decode_tokens {
            let next = logits.get(0)?.argmax(0)?.to_scalar::<u32>()?;
            let mut batch = Batch::new();
            batch.push(&[next], cache.len())?;
            logits = llama
                .forward(
                    &batch,
                    std::slice::from_mut(&mut cache),
                    Outputs::last_logits(),
                )?
                .logits
                .context("no logits")?;
        }
        decode_best = decode_best.min(t.elapsed().as_secs_f64());
    }
    Ok(serde_json::json!({
        "prompt_tokens": prompt.len(),
        "prefill_seconds": prefill_best,
        "prefill_tokens_per_s": prompt.len() as f64 / prefill_best,
        "prefill_gflops": flops_per_token(llama.config()) * prompt.len() as f64 / prefill_best / 1e9,
        "decode_tokens": args.decode_tokens,
        "decode_seconds": decode_best,
        "decode_tokens_per_s": args.decode_tokens as f64 / decode_best,
        "end_to_end_seconds": prefill_best + decode_best,
    }))
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (model, name) = match args.synthetic {
        Some(shape) => {
            let config = match shape {
                Shape::Llama1b => ModelConfig::llama_3_2_1b(),
                Shape::Llama3b => ModelConfig::llama_3_2_3b(),
                Shape::Llama8b => ModelConfig::llama_3_1_8b(),
            };
            let options = args.model.options().with_quantization(args.synthetic_quant);
            let name = format!(
                "{} (random weights, {:?})",
                shape
                    .to_possible_value()
                    .map_or("?".into(), |v| v.get_name().to_string()),
                args.synthetic_quant
            );
            (Model::Raw(Llama::random(config, &options)?), name)
        }
        None => {
            let lm = args.model.load()?;
            let name = lm.source().to_string();
            (Model::Lm(lm), name)
        }
    };
    let llama = model.llama();
    let load_seconds = started.elapsed().as_secs_f64();
    // candle's CPU kernels size their pools from RAYON_NUM_THREADS, else the cores.
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|&t| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let kernel = format!("{:?}", args.model.options().quantized_matmul()).to_lowercase();
    let isa = format!("{:?}", dear::dear_core::kernels::Isa::detect()).to_lowercase();
    let mut report = serde_json::json!({
        "model": name,
        "load_seconds": load_seconds,
        "threads": threads,
        "kernel": kernel,
        "isa": isa,
    });
    if matches!(args.workload, Workload::W1 | Workload::All) {
        report["w1"] = run_w1(llama, args)?;
    }
    if matches!(args.workload, Workload::W2 | Workload::All) {
        report["w2"] = run_w2(llama, args)?;
    }
    report["peak_rss_mib"] = serde_json::json!(peak_rss_mib());
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "model: {name} (loaded in {load_seconds:.1} s, {threads} threads, {kernel} kernels, {isa})"
    )?;
    if let Some(w1) = report.get("w1") {
        writeln!(
            out,
            "W1 {} x 228 tokens{}: {:.1} tokens/s, {:.1} s per 100-passage query, {:.1} GFLOP/s",
            w1["sequences"],
            if args.share_prefix {
                " (shared prefix)"
            } else {
                ""
            },
            w1["tokens_per_s"].as_f64().unwrap_or(0.0),
            w1["seconds_per_query_100"].as_f64().unwrap_or(0.0),
            w1["gflops"].as_f64().unwrap_or(0.0)
        )?;
    }
    if let Some(w2) = report.get("w2") {
        writeln!(
            out,
            "W2 prefill {} tokens: {:.1} tokens/s ({:.1} GFLOP/s); decode {} tokens: {:.1} tokens/s; end to end {:.2} s",
            w2["prompt_tokens"],
            w2["prefill_tokens_per_s"].as_f64().unwrap_or(0.0),
            w2["prefill_gflops"].as_f64().unwrap_or(0.0),
            w2["decode_tokens"],
            w2["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
            w2["end_to_end_seconds"].as_f64().unwrap_or(0.0)
        )?;
    }
    if let Some(mib) = peak_rss_mib() {
        writeln!(out, "peak memory: {mib:.0} MiB")?;
    }
    Ok(())
}
