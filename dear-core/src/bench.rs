//! The fixed benchmark workloads (W1 pointwise, W2 listwise) and their runner, so that
//! `dear bench`, the criterion benches and any application measure the same thing.
//!
//! - **W1** (`w1_pointwise.jsonl`): 100 sequences of 228 token ids (a 12-token query
//!   prefix shared by all, then 216 passage tokens), packed into batches of at most
//!   [`BenchOptions::batch_tokens`] tokens; only the last hidden state is computed.
//!   With [`BenchOptions::share_prefix`], the prefix is computed once and every
//!   sequence attends to its cache.
//! - **W2** (`w2_listwise.json`): one 2,052-token listwise prompt, prefilled, then
//!   [`BenchOptions::decode_tokens`] greedy tokens decoded one by one.
//!
//! Each workload runs [`BenchOptions::runs`] times and the best time is kept. Rates
//! come with GFLOP/s counted from the linear layers alone ([`flops_per_token`]).
//!
//! The data lives in the repository's `benches/data/`; [`Workloads::load`] takes that
//! directory, so nothing here assumes a checkout layout.
//!
//! # Example
//! ```no_run
//! use dear_core::bench::{self, BenchOptions, BenchReport, Workloads};
//! use dear_core::{LanguageModel, LoadOptions};
//! let options = LoadOptions::default();
//! let lm = LanguageModel::load(&dear_core::default_model_path(), &options)?;
//! let workloads = Workloads::load("benches/data")?;
//! let results = bench::run(lm.llama(), &workloads, &BenchOptions::default().with_runs(3))?;
//! let report = BenchReport::new(lm.source().to_string(), 0.0, options.quantized_matmul(), results);
//! println!("{report}");
//! # Ok::<(), dear_core::Error>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde::Serialize;

use crate::{
    Batch, Error, ForwardOptions, KvCache, Llama, ModelConfig, Outputs, QuantizedMatmul, Result,
};

/// The W1 file in the data directory.
pub const W1_FILE: &str = "w1_pointwise.jsonl";
/// The W2 file in the data directory.
pub const W2_FILE: &str = "w2_listwise.json";
/// W1's query prefix, shared by every sequence, in tokens.
pub const W1_PREFIX_TOKENS: usize = 12;
/// W1's tokens per sequence, which scale a rate to seconds per query.
pub const W1_SEQUENCE_TOKENS: usize = 228;
/// The sequences of one W1 query (100 passages).
pub const W1_QUERY_SEQUENCES: usize = 100;

/// Which workloads to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workload {
    /// W1, pointwise.
    W1,
    /// W2, listwise.
    W2,
    /// W1, then W2.
    #[default]
    All,
}

impl Workload {
    fn w1(self) -> bool {
        matches!(self, Workload::W1 | Workload::All)
    }

    fn w2(self) -> bool {
        matches!(self, Workload::W2 | Workload::All)
    }
}

impl FromStr for Workload {
    type Err = Error;

    /// `w1`, `w2` or `all`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "w1" => Ok(Workload::W1),
            "w2" => Ok(Workload::W2),
            "all" => Ok(Workload::All),
            _ => Err(Error::InvalidArgument(format!(
                "unknown workload {s:?} (use w1, w2 or all)"
            ))),
        }
    }
}

/// A random-weight model shape: one of DeAR's base models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Llama-3.2-1B.
    Llama1b,
    /// Llama-3.2-3B (DeAR's 3B students).
    Llama3b,
    /// Llama-3.1-8B (DeAR's 8B students and listwise base).
    Llama8b,
}

impl Shape {
    /// The name it is asked for by: `llama-3.2-1b`, `llama-3.2-3b` or `llama-3.1-8b`.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Llama1b => "llama-3.2-1b",
            Shape::Llama3b => "llama-3.2-3b",
            Shape::Llama8b => "llama-3.1-8b",
        }
    }

    /// The model's configuration, for [`Llama::random`].
    pub fn config(self) -> ModelConfig {
        match self {
            Shape::Llama1b => ModelConfig::llama_3_2_1b(),
            Shape::Llama3b => ModelConfig::llama_3_2_3b(),
            Shape::Llama8b => ModelConfig::llama_3_1_8b(),
        }
    }
}

impl FromStr for Shape {
    type Err = Error;

    /// `llama-3.2-1b`, `llama-3.2-3b` or `llama-3.1-8b`.
    fn from_str(s: &str) -> Result<Self> {
        [Shape::Llama1b, Shape::Llama3b, Shape::Llama8b]
            .into_iter()
            .find(|shape| shape.name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown shape {s:?} (use llama-3.2-1b, llama-3.2-3b or llama-3.1-8b)"
                ))
            })
    }
}

/// The token ids of both workloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workloads {
    /// W1's sequences (100 x 228 ids in the shipped data).
    pub w1: Vec<Vec<u32>>,
    /// W2's prompt (2,052 ids in the shipped data).
    pub w2: Vec<u32>,
}

impl Workloads {
    /// Reads [`W1_FILE`] (JSON Lines, each `{"ids": [...]}`) and [`W2_FILE`]
    /// (`{"ids": [...]}`) from `dir`, the repository's `benches/data/`.
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be read, [`Error::Input`] (with the line) for a
    /// W1 line that is not such an object, [`Error::Json`] when W2 is not.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let w1_path = dir.join(W1_FILE);
        let w1 = read(&w1_path)?
            .lines()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str::<serde_json::Value>(line)
                    .map_err(|e| e.to_string())
                    .and_then(|v| ids(&v).ok_or_else(|| "a W1 line without ids".to_string()))
                    .map_err(|reason| Error::Input {
                        path: w1_path.clone(),
                        line: i + 1,
                        reason,
                    })
            })
            .collect::<Result<_>>()?;
        let w2_path = dir.join(W2_FILE);
        let json_error = |message: String| Error::Json {
            path: w2_path.clone(),
            message,
        };
        let v: serde_json::Value =
            serde_json::from_str(&read(&w2_path)?).map_err(|e| json_error(e.to_string()))?;
        let w2 = ids(&v).ok_or_else(|| json_error("no ids".into()))?;
        Ok(Workloads { w1, w2 })
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: PathBuf::from(path),
        source,
    })
}

/// The `ids` array of a JSON object.
fn ids(v: &serde_json::Value) -> Option<Vec<u32>> {
    Some(
        v["ids"]
            .as_array()?
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
    )
}

/// How the workloads are run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// The workloads to run. Default: all.
    pub workload: Workload,
    /// W1 sequences to run (the first N; at least 1). Default: 100.
    pub sequences: usize,
    /// W1 with the query prefix computed once and shared. Default: false.
    pub share_prefix: bool,
    /// W2 prompt tokens to keep (the first N; at least 1). Default: all.
    pub prompt_tokens: Option<usize>,
    /// Greedy tokens decoded in W2. Default: 64.
    pub decode_tokens: usize,
    /// Most tokens in one packed W1 batch (at least one sequence). Default: 4,096.
    pub batch_tokens: usize,
    /// Runs of each workload; the best is reported (at least 1). Default: 1.
    pub runs: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            workload: Workload::All,
            sequences: 100,
            share_prefix: false,
            prompt_tokens: None,
            decode_tokens: 64,
            batch_tokens: 4096,
            runs: 1,
        }
    }
}

impl BenchOptions {
    /// Sets [`BenchOptions::workload`].
    pub fn with_workload(mut self, workload: Workload) -> Self {
        self.workload = workload;
        self
    }

    /// Sets [`BenchOptions::runs`].
    pub fn with_runs(mut self, runs: usize) -> Self {
        self.runs = runs;
        self
    }
}

/// W1's measurements.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct W1Report {
    /// Sequences run.
    pub sequences: usize,
    /// Their tokens.
    pub tokens: usize,
    /// The best run's seconds.
    pub seconds: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
    /// Seconds for one 100-passage query at that rate.
    pub seconds_per_query_100: f64,
    /// GFLOP/s of the linear layers.
    pub gflops: f64,
    /// Whether the query prefix was shared.
    pub shared_prefix: bool,
}

/// W2's measurements (prefill and decode each the best of the runs).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct W2Report {
    /// Prompt tokens prefilled.
    pub prompt_tokens: usize,
    /// Prefill seconds.
    pub prefill_seconds: f64,
    /// Prefill tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Prefill GFLOP/s of the linear layers.
    pub prefill_gflops: f64,
    /// Tokens decoded.
    pub decode_tokens: usize,
    /// Decode seconds.
    pub decode_seconds: f64,
    /// Decoded tokens per second.
    pub decode_tokens_per_s: f64,
    /// Prefill plus decode seconds.
    pub end_to_end_seconds: f64,
}

/// What [`run`] measured: the workloads that ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BenchResults {
    /// W1, if it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w1: Option<W1Report>,
    /// W2, if it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w2: Option<W2Report>,
}

/// One model's report, as `dear bench --json` prints it; its [`Display`](fmt::Display)
/// is the text `dear bench` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    /// The model measured.
    pub model: String,
    /// Seconds it took to load.
    pub load_seconds: f64,
    /// CPU threads the kernels use ([`threads`]).
    pub threads: usize,
    /// The quantized products' kernel, lowercase (`int16`, `int8`, `dequantize`).
    pub kernel: String,
    /// The instruction set the CPU kernels use, lowercase.
    pub isa: String,
    /// The measurements.
    #[serde(flatten)]
    pub results: BenchResults,
    /// The process's peak resident memory in MiB ([`peak_rss_mib`]).
    pub peak_rss_mib: Option<f64>,
}

impl BenchReport {
    /// The report of `results` on `model`, loaded in `load_seconds`, with quantized
    /// products by `kernel`; threads, instruction set and peak memory are read now.
    pub fn new(
        model: String,
        load_seconds: f64,
        kernel: QuantizedMatmul,
        results: BenchResults,
    ) -> Self {
        Self {
            model,
            load_seconds,
            threads: threads(),
            kernel: format!("{kernel:?}").to_lowercase(),
            isa: format!("{:?}", crate::kernels::Isa::detect()).to_lowercase(),
            results,
            peak_rss_mib: peak_rss_mib(),
        }
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "model: {} (loaded in {:.1} s, {} threads, {} kernels, {})",
            self.model, self.load_seconds, self.threads, self.kernel, self.isa
        )?;
        if let Some(w1) = &self.results.w1 {
            writeln!(
                f,
                "W1 {} x {W1_SEQUENCE_TOKENS} tokens{}: {:.1} tokens/s, {:.1} s per 100-passage query, {:.1} GFLOP/s",
                w1.sequences,
                if w1.shared_prefix { " (shared prefix)" } else { "" },
                w1.tokens_per_s,
                w1.seconds_per_query_100,
                w1.gflops
            )?;
        }
        if let Some(w2) = &self.results.w2 {
            writeln!(
                f,
                "W2 prefill {} tokens: {:.1} tokens/s ({:.1} GFLOP/s); decode {} tokens: {:.1} tokens/s; end to end {:.2} s",
                w2.prompt_tokens,
                w2.prefill_tokens_per_s,
                w2.prefill_gflops,
                w2.decode_tokens,
                w2.decode_tokens_per_s,
                w2.end_to_end_seconds
            )?;
        }
        if let Some(mib) = self.peak_rss_mib {
            writeln!(f, "peak memory: {mib:.0} MiB")?;
        }
        Ok(())
    }
}

/// The threads candle's CPU kernels use: `RAYON_NUM_THREADS` when set to a positive
/// number, else the available cores.
pub fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|&t| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The process's peak resident memory in MiB (`VmHWM`, Linux only), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Floating-point operations per token of the linear layers (attention projections and
/// MLP, no LM head): two per multiply-add.
pub fn flops_per_token(c: &ModelConfig) -> f64 {
    let (h, i) = (c.hidden_size as f64, c.intermediate_size as f64);
    let q = (c.num_heads * c.head_dim) as f64;
    let kv = (c.num_kv_heads * c.head_dim) as f64;
    2.0 * c.num_layers as f64 * (h * q + 2.0 * h * kv + q * h + 3.0 * h * i)
}

/// The best of `runs` (at least one) timings of `f`, in seconds.
///
/// # Errors
/// The first error of `f`.
pub fn best_of<F: FnMut() -> Result<()>>(runs: usize, mut f: F) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Runs the workloads `options` selects on `llama`.
///
/// # Errors
/// [`Error::InvalidArgument`] when a token id is outside the model's vocabulary (the
/// shipped data are SmolLM2 ids); any error of the forward passes.
pub fn run(llama: &Llama, workloads: &Workloads, options: &BenchOptions) -> Result<BenchResults> {
    let w1 = match options.workload.w1() {
        true => Some(run_w1(llama, &workloads.w1, options)?),
        false => None,
    };
    let w2 = match options.workload.w2() {
        true => Some(run_w2(llama, &workloads.w2, options)?),
        false => None,
    };
    Ok(BenchResults { w1, w2 })
}

fn check_vocab<'a>(
    llama: &Llama,
    what: &str,
    ids: impl IntoIterator<Item = &'a u32>,
) -> Result<()> {
    let vocab = llama.config().vocab_size as u32;
    if ids.into_iter().any(|&t| t >= vocab) {
        return Err(Error::InvalidArgument(format!(
            "{what} token ids exceed the model's vocabulary ({vocab})"
        )));
    }
    Ok(())
}

/// Runs W1 over the first [`BenchOptions::sequences`] of `sequences`.
///
/// # Errors
/// As [`run`]; [`Error::InvalidArgument`] as well when sharing the prefix with a
/// sequence no longer than [`W1_PREFIX_TOKENS`].
pub fn run_w1(llama: &Llama, sequences: &[Vec<u32>], options: &BenchOptions) -> Result<W1Report> {
    check_vocab(llama, "W1", sequences.iter().flatten())?;
    let seqs = &sequences[..sequences.len().min(options.sequences.max(1))];
    let tokens: usize = seqs.iter().map(Vec::len).sum();
    let prefix = W1_PREFIX_TOKENS;
    if options.share_prefix && seqs.iter().any(|s| s.len() <= prefix) {
        return Err(Error::InvalidArgument(format!(
            "W1 sequences must be longer than the {prefix}-token prefix to share it"
        )));
    }
    let budget = options.batch_tokens.max(W1_SEQUENCE_TOKENS);
    let secs = best_of(options.runs, || {
        let mut start = 0;
        if options.share_prefix {
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
    Ok(W1Report {
        sequences: seqs.len(),
        tokens,
        seconds: secs,
        tokens_per_s: rate,
        seconds_per_query_100: (W1_QUERY_SEQUENCES * W1_SEQUENCE_TOKENS) as f64 / rate,
        gflops: flops_per_token(llama.config()) * rate / 1e9,
        shared_prefix: options.share_prefix,
    })
}

/// Runs W2 over the first [`BenchOptions::prompt_tokens`] of `prompt`.
///
/// # Errors
/// As [`run`]; [`Error::EmptyInput`] for an empty prompt.
pub fn run_w2(llama: &Llama, prompt: &[u32], options: &BenchOptions) -> Result<W2Report> {
    let keep = options.prompt_tokens.map_or(prompt.len(), |n| n.max(1));
    let prompt = &prompt[..prompt.len().min(keep)];
    check_vocab(llama, "W2", prompt)?;
    if prompt.is_empty() {
        return Err(Error::EmptyInput("the W2 prompt has no tokens".into()));
    }
    let no_logits = || Error::Internal("a forward pass asked for logits returned none".into());
    let (mut prefill_best, mut decode_best) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..options.runs.max(1) {
        let mut cache = KvCache::new();
        let t = Instant::now();
        let out = llama.forward(
            &Batch::from_sequences(&[prompt])?,
            std::slice::from_mut(&mut cache),
            Outputs::last_logits(),
        )?;
        let mut logits = out.logits.ok_or_else(no_logits)?;
        prefill_best = prefill_best.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..options.decode_tokens {
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
                .ok_or_else(no_logits)?;
        }
        decode_best = decode_best.min(t.elapsed().as_secs_f64());
    }
    let n = prompt.len() as f64;
    Ok(W2Report {
        prompt_tokens: prompt.len(),
        prefill_seconds: prefill_best,
        prefill_tokens_per_s: n / prefill_best,
        prefill_gflops: flops_per_token(llama.config()) * n / prefill_best / 1e9,
        decode_tokens: options.decode_tokens,
        decode_seconds: decode_best,
        decode_tokens_per_s: options.decode_tokens as f64 / decode_best,
        end_to_end_seconds: prefill_best + decode_best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/data")
    }

    #[test]
    fn loads_the_shipped_workloads() -> Result<()> {
        let w = Workloads::load(data_dir())?;
        assert_eq!(w.w1.len(), W1_QUERY_SEQUENCES);
        assert!(w.w1.iter().all(|s| s.len() == W1_SEQUENCE_TOKENS));
        assert!(w
            .w1
            .iter()
            .all(|s| s[..W1_PREFIX_TOKENS] == w.w1[0][..W1_PREFIX_TOKENS]));
        assert_eq!(w.w2.len(), 2052);
        Ok(())
    }

    #[test]
    fn a_missing_directory_is_named() {
        let err = Workloads::load("/no/such/dir").unwrap_err().to_string();
        assert!(err.contains("/no/such/dir/w1_pointwise.jsonl"), "{err}");
    }

    #[test]
    fn names_parse_back() -> Result<()> {
        for shape in [Shape::Llama1b, Shape::Llama3b, Shape::Llama8b] {
            assert_eq!(shape.name().parse::<Shape>()?, shape);
        }
        assert_eq!("w2".parse::<Workload>()?, Workload::W2);
        assert!("w3"
            .parse::<Workload>()
            .unwrap_err()
            .to_string()
            .contains("w3"));
        Ok(())
    }

    #[test]
    fn runs_both_workloads_on_a_tiny_model() -> Result<()> {
        let mut config = ModelConfig::llama_3_2_1b();
        (
            config.hidden_size,
            config.intermediate_size,
            config.num_layers,
        ) = (64, 128, 1);
        (config.num_heads, config.num_kv_heads, config.head_dim) = (4, 2, 16);
        let llama = Llama::random(config, &crate::LoadOptions::default())?;
        let workloads = Workloads::load(data_dir())?;
        let options = BenchOptions {
            sequences: 3,
            share_prefix: true,
            prompt_tokens: Some(20),
            decode_tokens: 2,
            batch_tokens: 300,
            ..BenchOptions::default()
        };
        let results = run(&llama, &workloads, &options)?;
        let (w1, w2) = (results.w1.as_ref().unwrap(), results.w2.as_ref().unwrap());
        assert_eq!((w1.sequences, w1.tokens), (3, 3 * W1_SEQUENCE_TOKENS));
        assert_eq!((w2.prompt_tokens, w2.decode_tokens), (20, 2));
        let report = BenchReport::new("tiny".into(), 0.5, QuantizedMatmul::Int16, results);
        let json = serde_json::to_string(&report).map_err(|e| Error::Internal(e.to_string()))?;
        let keys = [
            "\"model\"",
            "\"load_seconds\"",
            "\"threads\"",
            "\"kernel\":\"int16\"",
            "\"isa\"",
            "\"w1\"",
            "\"w2\"",
            "\"peak_rss_mib\"",
        ];
        let at: Vec<usize> = keys
            .iter()
            .map(|k| json.find(k).unwrap_or(usize::MAX))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert!(report
            .to_string()
            .contains("W1 3 x 228 tokens (shared prefix)"));
        Ok(())
    }
}
