//! The `dear` command line: parse flags, call the library, print.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use dear::dear_core::corpus::read_passages;
use dear::dear_core::{
    default_model_path, AdapterMode, Device, GenerateOptions, HeadChoice, HubOptions,
    LanguageModel, ListwiseConfig, ListwiseMode, ListwiseOptions, ListwisePrompt, ListwiseRanker,
    LoadOptions, PointwiseConfig, PointwiseScorer, Quantization, QuantizedMatmul, Query, Recipe,
    Sampling, WeightDType, WindowConfig, WindowReport,
};

mod bench;
mod eval;
mod pipeline;
mod search;
mod serve;
mod train;

/// DeAR reranking for Rust search: Llama inference, pointwise and listwise reranking.
#[derive(Parser, Debug)]
#[command(name = "dear", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text with a model (greedy by default).
    Generate(GenerateArgs),
    /// Score passages against a query with a pointwise reranker.
    Score(ScoreArgs),
    /// Rerank passages for a query with a listwise model (sliding windows).
    Listwise(ListwiseArgs),
    /// List the built-in reranker recipes.
    Recipes(RecipesArgs),
    /// Build or update a tantivy index from a BEIR corpus or a folder of text files.
    Index(search::IndexArgs),
    /// Search an index: BM25, then pointwise and listwise reranking.
    Search(search::SearchArgs),
    /// Evaluate the stages on a BEIR dataset (nDCG@10, MRR@10, Recall@100).
    Eval(eval::EvalArgs),
    /// Measure the fixed workloads (W1 pointwise, W2 listwise) on a model.
    Bench(bench::BenchArgs),
    /// Train a DeAR adapter: the pointwise student (LoRA + score head, distilled) or,
    /// with --stage listwise, the listwise ranker (a CAUSAL_LM LoRA).
    Train(Box<train::TrainArgs>),
    /// Serve the pipeline over HTTP: Cohere v2/v1, Jina, TEI rerank endpoints, reranked
    /// search over an index, health, info and Prometheus metrics.
    Serve(Box<serve::ServeArgs>),
}

/// Which model to load and how.
#[derive(Args, Debug, Clone)]
struct ModelArgs {
    /// A .gguf file, a Hugging Face directory or a hub id (org/name).
    /// Default: the SmolLM2-135M-Instruct GGUF fetched by scripts/fetch-model.sh
    /// (for `score --recipe`, the recipe's base model).
    #[arg(long)]
    model: Option<String>,
    /// A PEFT LoRA adapter (directory or hub id), merged into the model's weights at load.
    #[arg(long)]
    adapter: Option<String>,
    /// Convert the weight matrices at load: none (as stored), dense (dequantized, in
    /// --dtype), q8_0, q4_0 or q4_k (GGUF blocks are re-quantized from their values).
    #[arg(long, default_value = "none")]
    quant: Quantization,
    /// Dtype of dense weights and activations: f32, f16 or bf16. Default: f32 on the
    /// CPU, bf16 on CUDA (as DeAR's reference runs its models on a GPU).
    #[arg(long)]
    dtype: Option<WeightDType>,
    /// CPU products with quantized weights: int16 (activations rounded to ~15 bits per
    /// block of 32; within ~1e-4 of f32), int8 (8 bits, as llama.cpp; fastest) or
    /// dequantize (weights expanded to f32 per product; the slow reference).
    #[arg(long, default_value = "int16")]
    kernel: QuantizedMatmul,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Hub revision (branch, tag or commit) for hub ids.
    #[arg(long)]
    revision: Option<String>,
    /// The most tokens one sequence may hold (prompt and generated tokens); a model
    /// that declares fewer keeps its own. Memory grows with it.
    #[arg(long, default_value_t = dear::dear_core::DEFAULT_MAX_CONTEXT,
          value_parser = clap::value_parser!(u32).range(1..=1 << 24).map(|v| v as usize))]
    max_context: usize,
}

impl ModelArgs {
    /// Device, dtype, quantization and hub settings (no adapter).
    fn options(&self) -> LoadOptions {
        let mut hub = HubOptions::default();
        if let Some(rev) = &self.revision {
            hub = hub.with_revision(rev.clone());
        }
        LoadOptions::default()
            .with_device(self.device)
            .with_dtype(self.dtype.unwrap_or(WeightDType::default_for(self.device)))
            .with_quantization(self.quant)
            .with_quantized_matmul(self.kernel)
            .with_max_context(self.max_context)
            .with_hub(hub)
    }

    /// `--model`, or the default model when it is present.
    fn spec(&self) -> anyhow::Result<PathBuf> {
        match &self.model {
            Some(m) => Ok(PathBuf::from(m)),
            None => {
                let path = default_model_path();
                if !path.is_file() {
                    bail!(
                        "no --model given and the default model is missing at {}: run `bash scripts/fetch-model.sh`",
                        path.display()
                    );
                }
                Ok(path)
            }
        }
    }

    /// Loads `--model` with `--adapter` merged in.
    fn load(&self) -> anyhow::Result<LanguageModel> {
        let spec = self.spec()?;
        let mut options = self.options();
        if let Some(adapter) = &self.adapter {
            options = options.with_adapter(adapter.clone(), AdapterMode::Merged);
        }
        let what = match &self.adapter {
            Some(a) => format!("loading model {} with adapter {a}", spec.display()),
            None => format!("loading model {}", spec.display()),
        };
        LanguageModel::load(&spec, &options).context(what)
    }
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(
        long,
        conflicts_with = "prompt_file",
        required_unless_present = "prompt_file"
    )]
    prompt: Option<String>,
    /// A file holding the prompt (UTF-8).
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Wrap the prompt as one user message through the model's chat template.
    #[arg(long)]
    chat: bool,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sample at this temperature (with --top-p) instead of greedy decoding.
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus sampling threshold, used with --temperature.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 299792458)]
    seed: u64,
    /// Print {"text": ..., "token_ids": [...]} (generated tokens only) instead of streaming text.
    #[arg(long)]
    json: bool,
}

fn read_prompt(args: &GenerateArgs) -> anyhow::Result<String> {
    match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(path)) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not valid UTF-8 (invalid byte at offset {})",
                    path.display(),
                    e.utf8_error().valid_up_to()
                )
            })
        }
        (None, None) => bail!("give --prompt or --prompt-file"),
    }
}

fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let prompt = read_prompt(args)?;
    let lm = args.model.load()?;
    let ids = if args.chat {
        lm.chat_prompt(&prompt)?
    } else {
        lm.plain_prompt(&prompt)?
    };
    let sampling = match args.temperature {
        Some(t) if t > 0.0 => Sampling::TopP {
            temperature: t,
            top_p: args.top_p,
            seed: args.seed,
        },
        _ => Sampling::Greedy,
    };
    let options = GenerateOptions::default()
        .with_max_new_tokens(args.max_new_tokens)
        .with_sampling(sampling);
    let tokenizer = lm.tokenizer();
    let mut so_far: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout().lock();
    let out = lm.generate(&ids, &options, &mut |token| {
        if !args.json {
            so_far.push(token);
            // Decode everything so far and print the new suffix, so multi-token
            // characters come out whole.
            if let Ok(text) = tokenizer.decode(&so_far, true) {
                if text.len() > printed && text.is_char_boundary(printed) {
                    let _ = write!(stdout, "{}", &text[printed..]);
                    let _ = stdout.flush();
                    printed = text.len();
                }
            }
        }
        true
    })?;
    let text = tokenizer.decode(&out.tokens, true)?;
    if args.json {
        let json = serde_json::json!({ "text": text, "token_ids": out.tokens });
        writeln!(stdout, "{json}")?;
    } else {
        if text.len() > printed {
            write!(stdout, "{}", text.get(printed..).unwrap_or(""))?;
        }
        writeln!(stdout)?;
    }
    Ok(())
}

#[derive(Args, Debug)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A built-in recipe (see `dear recipes`) or a recipe JSON file; --model and
    /// --adapter override its base and adapter.
    #[arg(long)]
    recipe: Option<String>,
    /// The query.
    #[arg(long, required_unless_present = "query_file")]
    query: Option<String>,
    /// Read the query from a file (`-`: standard input; at most 1 MiB of UTF-8), for
    /// queries too long for the command line.
    #[arg(long, value_name = "FILE", conflicts_with = "query")]
    query_file: Option<PathBuf>,
    /// A JSON Lines file, one passage per line: {"id"?, "title"?, "text"} (BEIR's
    /// "_id" is accepted for "id"). Blank lines are skipped.
    #[arg(long)]
    docs: PathBuf,
    /// Print [{"index", "id", "score"}] in input order instead of a ranked table.
    #[arg(long)]
    json: bool,
    /// How scores are read: auto, classifier or yes-no.
    #[arg(long, default_value = "auto", value_parser = head_choices())]
    head: HeadChoice,
    /// Query tokens kept [default: 32, or the recipe's].
    #[arg(long)]
    q_max_len: Option<usize>,
    /// Passage token budget [default: 196, or the recipe's].
    #[arg(long)]
    p_max_len: Option<usize>,
}

/// Loads the scorer `args` describe: a recipe (with overrides), or a model whose
/// head is chosen by `--head`.
fn load_scorer(args: &ScoreArgs) -> anyhow::Result<PointwiseScorer> {
    let lengths = |mut config: PointwiseConfig| {
        if let Some(q) = args.q_max_len {
            config.q_max_len = q;
        }
        if let Some(p) = args.p_max_len {
            config.p_max_len = p;
        }
        config
    };
    if let Some(name) = &args.recipe {
        let mut recipe = Recipe::find(name)?;
        if let Some(model) = &args.model.model {
            recipe.base = model.clone();
        }
        if let Some(adapter) = &args.model.adapter {
            recipe.adapter = Some(adapter.clone());
        }
        if let Some(head) = args.head.explicit() {
            recipe.pointwise.head = head;
        }
        recipe.pointwise = lengths(recipe.pointwise);
        let what = match &recipe.adapter {
            Some(a) => format!(
                "loading recipe {} ({} with adapter {a})",
                recipe.name, recipe.base
            ),
            None => format!("loading recipe {} ({})", recipe.name, recipe.base),
        };
        return recipe.load(&args.model.options()).context(what);
    }
    let lm = args.model.load()?;
    let config = lengths(PointwiseConfig {
        head: args.head.resolve(&lm, None)?,
        ..PointwiseConfig::classifier()
    });
    Ok(PointwiseScorer::new(Arc::new(lm), None, config)?)
}

#[derive(serde::Serialize)]
struct ScoreRow<'a> {
    index: usize,
    id: Option<&'a str>,
    score: f32,
}

fn score(args: &ScoreArgs) -> anyhow::Result<()> {
    let passages = read_passages(&args.docs)?;
    let started = Instant::now();
    let scorer = load_scorer(args)?;
    let loaded = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let scores = scorer.score(
        &Query::new(search::query_text(
            args.query.as_deref(),
            args.query_file.as_deref(),
        )?),
        &passages,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let rate = if seconds > 0.0 {
        passages.len() as f64 / seconds
    } else {
        0.0
    };
    eprintln!(
        "loaded in {loaded:.2} s; scored {} passages in {seconds:.3} s ({rate:.1} passages/s)",
        passages.len()
    );
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let rows: Vec<ScoreRow> = passages
            .iter()
            .zip(&scores)
            .enumerate()
            .map(|(index, (p, &score))| ScoreRow {
                index,
                id: p.id.as_deref(),
                score,
            })
            .collect();
        writeln!(stdout, "{}", serde_json::to_string(&rows)?)?;
        return Ok(());
    }
    if passages.is_empty() {
        return Ok(());
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let id_width = id_column_width(passages.iter().map(|p| p.id.as_deref()), 32);
    writeln!(
        stdout,
        "{:>4}  {:>10}  {:<id_width$}  passage",
        "rank", "score", "id"
    )?;
    for (rank, &i) in order.iter().enumerate() {
        let p = &passages[i];
        writeln!(
            stdout,
            "{:>4}  {:>10.4}  {:<id_width$}  {}",
            rank + 1,
            scores[i],
            id_cell(p.id.as_deref(), id_width),
            p.one_line(60)
        )?;
    }
    Ok(())
}

#[derive(Args, Debug)]
struct ListwiseArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The query.
    #[arg(long, required_unless_present = "query_file")]
    query: Option<String>,
    /// Read the query from a file (`-`: standard input; at most 1 MiB of UTF-8), for
    /// queries too long for the command line.
    #[arg(long, value_name = "FILE", conflicts_with = "query")]
    query_file: Option<PathBuf>,
    /// A JSON Lines file, one passage per line: {"id"?, "title"?, "text"} (BEIR's
    /// "_id" is accepted for "id"), in their incoming order, best first. Blank lines
    /// are skipped.
    #[arg(long)]
    docs: PathBuf,
    /// The prompt format.
    #[arg(long, default_value = "rankllm", value_parser = choices::<ListwisePrompt>([
        PossibleValue::new("rankllm").help("DeAR's RankLLM conversation; passages numbered from 1"),
        PossibleValue::new("plain").help("DeAR's README single prompt; passages numbered from 0"),
    ]))]
    prompt: ListwisePrompt,
    /// How each window's ranking is obtained.
    #[arg(long, default_value = "generate", value_parser = mode_choices())]
    mode: ListwiseMode,
    /// Passages per window.
    #[arg(long, default_value_t = 20)]
    window: usize,
    /// How far each window moves up from the previous one [default: 10, or the
    /// window when it is smaller].
    #[arg(long)]
    step: Option<usize>,
    /// Rerank the top N passages only [default: all of them]; the rest keep their
    /// place. Windows slide from rank N up to the top.
    #[arg(long)]
    rank_end: Option<usize>,
    /// Most tokens generated per window.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// In constrained mode, tokens a reasoning section (<think>...</think>) may take
    /// before the ranking is forced.
    #[arg(long, default_value_t = 0)]
    max_reasoning_tokens: usize,
    /// Print one line {"permutation": [...], "raw": "...", "windows": [...],
    /// "failure": ...} instead of a table.
    #[arg(long)]
    json: bool,
}

/// The window settings for `n` passages; errors name the flag at fault.
fn window_config(args: &ListwiseArgs, n: usize) -> anyhow::Result<WindowConfig> {
    let step = args.step.unwrap_or_else(|| args.window.min(10));
    // The flags as given (zero passages still need sensible flags).
    let given = WindowConfig {
        rank_start: 0,
        rank_end: args.rank_end.unwrap_or(n.max(1)),
        window: args.window,
        step,
    };
    given.validate().map_err(|e| {
        let note = |given: bool| if given { "" } else { " (default)" };
        let (step_note, end_note) = (note(args.step.is_some()), note(args.rank_end.is_some()));
        anyhow!(
            "{e} (from --window {}, --step {step}{step_note}, --rank-end {}{end_note})",
            given.window,
            given.rank_end
        )
    })?;
    // Windows are placed over the passages there are.
    Ok(WindowConfig {
        rank_end: given.rank_end.min(n),
        ..given
    })
}

#[derive(serde::Serialize)]
struct ListwiseJson<'a> {
    permutation: &'a [usize],
    raw: String,
    windows: &'a [WindowReport],
    failure: Option<&'a dear::dear_core::StageFailure>,
}

fn listwise(args: &ListwiseArgs) -> anyhow::Result<()> {
    let passages = read_passages(&args.docs)?;
    let window = window_config(args, passages.len())?;
    let config = ListwiseConfig {
        prompt: args.prompt,
        mode: args.mode,
        window,
        max_new_tokens: args.max_new_tokens,
        max_reasoning_tokens: args.max_reasoning_tokens,
    };
    let started = Instant::now();
    let lm = args.model.load()?;
    let reranker = ListwiseRanker::new(Arc::new(lm), None, config)?;
    let loaded = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let outcome = reranker.rank(
        &Query::new(search::query_text(
            args.query.as_deref(),
            args.query_file.as_deref(),
        )?),
        &passages,
        &ListwiseOptions::default(),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let generated: usize = outcome.windows.iter().map(|w| w.generated_tokens).sum();
    let windows = outcome.windows.len();
    eprintln!(
        "loaded in {loaded:.2} s; reranked {} passages in {windows} window{} in {seconds:.3} s ({generated} tokens generated)",
        passages.len(),
        if windows == 1 { "" } else { "s" }
    );
    if let Some(reason) = &outcome.failure {
        eprintln!("warning: the listwise pass stopped early, keeping the order reached: {reason}");
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let json = ListwiseJson {
            permutation: &outcome.order,
            raw: outcome.raw(),
            windows: &outcome.windows,
            failure: outcome.failure.as_ref(),
        };
        writeln!(stdout, "{}", serde_json::to_string(&json)?)?;
        return Ok(());
    }
    if passages.is_empty() {
        return Ok(());
    }
    let id_width = id_column_width(passages.iter().map(|p| p.id.as_deref()), 32);
    writeln!(
        stdout,
        "{:>4}  {:>5}  {:<id_width$}  passage",
        "rank", "index", "id"
    )?;
    for (rank, &i) in outcome.order.iter().enumerate() {
        let p = &passages[i];
        writeln!(
            stdout,
            "{:>4}  {:>5}  {:<id_width$}  {}",
            rank + 1,
            i,
            id_cell(p.id.as_deref(), id_width),
            p.one_line(60)
        )?;
    }
    for (k, w) in outcome.windows.iter().enumerate() {
        writeln!(
            stdout,
            "\nwindow {} (ranks {}-{}, {} ids parsed, {} prompt tokens, {} generated):",
            k + 1,
            w.start + 1,
            w.end,
            w.parsed_ids,
            w.prompt_tokens,
            w.generated_tokens
        )?;
        if !w.raw.is_empty() {
            writeln!(stdout, "{}", w.raw)?;
        }
        if let Some(reason) = &w.failure {
            writeln!(stdout, "failure: {reason}")?;
        }
    }
    if let Some(reason) = &outcome.failure {
        writeln!(stdout, "\nstopped early: {reason}")?;
    }
    Ok(())
}

#[derive(Args, Debug)]
struct RecipesArgs {
    /// Print the recipes as JSON (the format `score --recipe FILE.json` reads).
    #[arg(long)]
    json: bool,
}

fn recipes(args: &RecipesArgs) -> anyhow::Result<()> {
    let all = Recipe::builtins();
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(());
    }
    let name_width = all.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let adapter_width = all
        .iter()
        .filter_map(|r| r.adapter.as_ref().map(String::len))
        .max()
        .unwrap_or(7)
        .max(7);
    writeln!(
        stdout,
        "{:<name_width$}  {:<10}  {:<adapter_width$}  base",
        "name", "head", "adapter"
    )?;
    for r in &all {
        let head = r.pointwise.head.kind();
        writeln!(
            stdout,
            "{:<name_width$}  {head:<10}  {:<adapter_width$}  {}",
            r.name,
            r.adapter.as_deref().unwrap_or("-"),
            r.base
        )?;
    }
    Ok(())
}

/// A parser of a library type by its `FromStr`, offering exactly `values` (with their
/// help and aliases) as clap's `ValueEnum` would.
pub(crate) fn choices<T>(
    values: impl IntoIterator<Item = PossibleValue>,
) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    PossibleValuesParser::new(values).try_map(|s| s.parse::<T>())
}

/// `--head`'s values.
pub(crate) fn head_choices() -> impl TypedValueParser<Value = HeadChoice> {
    choices([
        PossibleValue::new("auto").help(
            "The recipe's head; without a recipe, the classifier when the model has a `score` head, else yes/no",
        ),
        PossibleValue::new("classifier")
            .help("DeAR's `score` head (sequence-classification checkpoints and adapters)"),
        PossibleValue::new("yes-no")
            .alias("yes_no")
            .help("logit(yes) - logit(no) after a chat prompt (instruction-tuned causal LMs)"),
    ])
}

/// `--mode`'s values.
pub(crate) fn mode_choices() -> impl TypedValueParser<Value = ListwiseMode> {
    choices([
        PossibleValue::new("generate").help("Free greedy generation, then parsing"),
        PossibleValue::new("constrained")
            .help("Greedy generation constrained to a well-formed permutation"),
        PossibleValue::new("first-token")
            .help("One forward pass; ids ordered by their probability as the first output (FIRST)"),
    ])
}

/// glibc malloc arenas for this process (see `dear_core::memory`): with glibc's default
/// of 8 per core, the threads of a long `dear serve` or `dear eval` each keep freed
/// activations in an arena of their own and the resident set climbs for an hour.
const MALLOC_ARENAS: usize = 2;

fn main() -> ExitCode {
    // Before any thread starts; MALLOC_ARENA_MAX in the environment wins.
    dear::dear_core::memory::limit_malloc_arenas(MALLOC_ARENAS);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The libraries catch panics at their boundaries (a damaged index, a kernel bug) and
    // turn them into errors, which this program prints; the panic itself is logged as
    // one warning line (with RUST_BACKTRACE set, the standard report is printed instead).
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
            tracing::warn!("caught a panic{location} (see the error that follows)");
        }));
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Generate(args) => generate(args),
        Command::Score(args) => score(args),
        Command::Listwise(args) => listwise(args),
        Command::Recipes(args) => recipes(args),
        Command::Index(args) => search::index(args),
        Command::Search(args) => search::search(args),
        Command::Eval(args) => eval::eval(args),
        Command::Bench(args) => bench::bench(args),
        Command::Train(args) => train::train(args),
        Command::Serve(args) => serve::serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The width of the id column of a table: the longest id, between 2 and `max` characters.
/// A passage id as a table cell of `width` characters: escaped for the terminal, `-`
/// when there is none, cut with an ellipsis when longer (JSON output keeps ids whole).
fn id_cell(id: Option<&str>, width: usize) -> String {
    let safe = dear::dear_core::corpus::terminal_safe(id.unwrap_or("-"));
    if safe.chars().count() <= width {
        return safe.into_owned();
    }
    let mut cut: String = safe.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn id_column_width<'a>(ids: impl IntoIterator<Item = Option<&'a str>>, max: usize) -> usize {
    ids.into_iter()
        .map(|id| {
            id.map_or(1, |id| {
                dear::dear_core::corpus::terminal_safe(id).chars().count()
            })
        })
        .max()
        .unwrap_or(2)
        .clamp(2, max)
}
