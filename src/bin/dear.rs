//! The `dear` command line: parse flags, call the library, print.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use dear::dear_core::{
    default_model_path, Device, GenerateOptions, LanguageModel, LoadOptions, Quantization,
    Sampling, WeightDType,
};

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
}

/// Which model to load and how.
#[derive(Args, Debug)]
struct ModelArgs {
    /// A .gguf file, a Hugging Face directory or a hub id (org/name).
    /// Default: the SmolLM2-135M-Instruct GGUF fetched by scripts/fetch-model.sh.
    #[arg(long)]
    model: Option<String>,
    /// A PEFT LoRA adapter (directory or hub id) applied on top of the model.
    #[arg(long)]
    adapter: Option<String>,
    /// Quantize dense weights at load: none, q8_0, q4_0 or q4_k (GGUF weights keep their type).
    #[arg(long, default_value = "none")]
    quant: Quantization,
    /// Dtype of dense weights and activations: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: WeightDType,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Hub revision (branch, tag or commit) for hub ids.
    #[arg(long)]
    revision: Option<String>,
}

impl ModelArgs {
    fn load(&self) -> anyhow::Result<LanguageModel> {
        if self.adapter.is_some() {
            bail!("--adapter: LoRA adapters are not supported by this build yet");
        }
        let spec = match &self.model {
            Some(m) => m.clone(),
            None => {
                let path = default_model_path();
                if !path.is_file() {
                    bail!(
                        "no --model given and the default model is missing at {}: run `bash scripts/fetch-model.sh`",
                        path.display()
                    );
                }
                path.to_string_lossy().into_owned()
            }
        };
        let mut hub = dear::dear_core::HubOptions::default();
        if let Some(rev) = &self.revision {
            hub = hub.with_revision(rev.clone());
        }
        let options = LoadOptions::default()
            .with_device(self.device)
            .with_dtype(self.dtype)
            .with_quantization(self.quant)
            .with_hub(hub);
        LanguageModel::load(&spec, &options).with_context(|| format!("loading model {spec}"))
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Generate(args) => generate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
