//! A loaded language model: the network, its tokenizer and its chat template, found
//! from a GGUF file, a Hugging Face directory or a hub id.

use std::path::PathBuf;

use crate::generate::{generate, GenerateOptions, Generation};
use std::sync::Arc;

use crate::loader::{self, AdapterMode, AdapterSpec, LoadOptions, ModelFiles};
use crate::lora::{self, LoraAdapter, MergedSource};
use crate::model::Llama;
use crate::{ChatMessage, Error, Tokenizer};

/// The file name of the default model inside the dear cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The dear cache: `$DEAR_HOME`, defaulting to `~/.cache/dear`.
fn dear_home() -> PathBuf {
    std::env::var_os("DEAR_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache")
                .join("dear")
        })
}

/// Where `scripts/fetch-model.sh` puts the default model (SmolLM2-135M-Instruct,
/// Q4_1 GGUF): `$DEAR_HOME/models/`, with `DEAR_HOME` defaulting to `~/.cache/dear`.
pub fn default_model_path() -> PathBuf {
    dear_home().join("models").join(DEFAULT_MODEL_FILE)
}

/// The folder name of the default pointwise student (a PEFT LoRA adapter with a
/// `score` head, trained by `dear train` on the default model).
pub const DEFAULT_STUDENT: &str = "smollm2-135m-dear-student";

/// Where the default pointwise student is: the `models/` folder of the source tree
/// dear was built from, else `$DEAR_HOME/adapters/` (where `scripts/fetch-model.sh`
/// installs it, for binaries that outlive their source tree).
pub fn default_student_path() -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join(DEFAULT_STUDENT);
    if source.join("adapter_config.json").is_file() {
        return std::fs::canonicalize(&source).unwrap_or(source);
    }
    dear_home().join("adapters").join(DEFAULT_STUDENT)
}

/// A Llama network with its tokenizer.
///
/// # Example
/// ```no_run
/// use dear_core::{GenerateOptions, LanguageModel, LoadOptions};
/// let lm = LanguageModel::load("SmolLM2-135M-Instruct.Q4_1.gguf", &LoadOptions::default())?;
/// let prompt = lm.chat_prompt("What is the capital of France?")?;
/// let out = lm.generate(&prompt, &GenerateOptions::default().with_max_new_tokens(16), &mut |_| true)?;
/// println!("{}", lm.tokenizer().decode(&out.tokens, true)?);
/// # Ok::<(), dear_core::Error>(())
/// ```
#[derive(Debug)]
pub struct LanguageModel {
    llama: Llama,
    tokenizer: Tokenizer,
    source: String,
}

impl LanguageModel {
    /// Loads a model from a `.gguf` file, a Hugging Face directory (`config.json`,
    /// tokenizer files, safetensors) or a hub id (`org/name`, through the HF cache).
    ///
    /// # Errors
    /// Any loading error: missing or corrupt files (named), an unsupported
    /// architecture, tensors whose shapes do not fit the config, a missing tokenizer,
    /// a hub id that is not cached while offline; [`Error::InvalidArgument`] for a
    /// path that is not UTF-8.
    pub fn load(spec: impl AsRef<std::path::Path>, options: &LoadOptions) -> crate::Result<Self> {
        if options.max_context() == 0 {
            return Err(Error::InvalidArgument(
                "max_context must be at least 1 token".into(),
            ));
        }
        let spec = spec.as_ref();
        let spec = spec.to_str().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the model path '{}' is not valid UTF-8",
                spec.display()
            ))
        })?;
        let mut adapters: Vec<AdapterSpec> = options.adapters().to_vec();
        let mut base_spec = spec.to_string();
        // An adapter given as the model: its config names the base (peft's AutoPeftModel).
        let path = loader::resolve_path(spec, options.hub())?;
        if path.join("adapter_config.json").is_file() && !path.join("config.json").is_file() {
            let cfg_path = path.join("adapter_config.json");
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::json(&cfg_path, e))?;
            base_spec = json
                .get("base_model_name_or_path")
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    Error::config(
                        &cfg_path,
                        "base_model_name_or_path",
                        "missing: cannot tell which base model the adapter is for",
                    )
                })?
                .to_string();
            adapters.insert(
                0,
                AdapterSpec {
                    source: path.to_string_lossy().into_owned(),
                    name: None,
                    mode: AdapterMode::Merged,
                },
            );
        }
        let files = loader::locate(&base_spec, options.hub())?;
        let opened = loader::open(&files, options)?;
        let device = options.device().open()?;
        let quantized = matches!(files, ModelFiles::Gguf(_))
            || options.quantization() != loader::Quantization::None;
        // Quantized matmuls take f32 activations.
        let dtype = if quantized {
            candle_core::DType::F32
        } else {
            options.dtype().candle()
        };
        let tokenizer = Tokenizer::from_model_files(&files)?;
        let mut weights = opened.weights;
        let mut unmerged = Vec::new();
        let mut merged_seen = false;
        for a in &adapters {
            let dir = loader::resolve_path(&a.source, options.hub())?;
            let name = a
                .name
                .clone()
                .unwrap_or_else(|| lora::default_name(&dir, &a.source));
            let adapter_dtype = match a.mode {
                AdapterMode::Merged => candle_core::DType::F32,
                AdapterMode::Unmerged => dtype,
            };
            let adapter = LoraAdapter::load(&dir, &name, &opened.config, &device, adapter_dtype)?;
            warn_on_base_mismatch(&adapter, &base_spec);
            match a.mode {
                AdapterMode::Merged => {
                    if merged_seen {
                        return Err(Error::InvalidArgument(
                            "only one adapter can be merged into a model; load the others unmerged"
                                .into(),
                        ));
                    }
                    merged_seen = true;
                    weights = Box::new(MergedSource {
                        inner: weights,
                        adapter: Arc::new(adapter),
                    });
                }
                AdapterMode::Unmerged => {
                    if unmerged.iter().any(|u: &Arc<LoraAdapter>| u.name == name) {
                        return Err(Error::InvalidArgument(format!(
                            "two adapters are named '{name}': give them distinct names"
                        )));
                    }
                    unmerged.push(Arc::new(adapter));
                }
            }
        }
        let mut llama = Llama::load(
            weights.as_ref(),
            opened.config,
            opened.rope_freq_divisors.as_deref(),
            device,
            dtype,
            &unmerged,
            options.quantized_matmul(),
        )?;
        llama.cap_context(options.max_context());
        if tokenizer.vocab_size() > llama.config().vocab_size {
            tracing::warn!(
                tokenizer = tokenizer.vocab_size(),
                model = llama.config().vocab_size,
                "the tokenizer knows more tokens than the model has embeddings"
            );
        }
        Ok(Self {
            llama,
            tokenizer,
            source: spec.to_string(),
        })
    }

    /// The network.
    pub fn llama(&self) -> &Llama {
        &self.llama
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// What the model was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Token ids of `text` as given: special tokens written in it are recognised, and
    /// nothing is added unless the tokenizer's own post-processor adds it.
    ///
    /// # Errors
    /// [`Error::EmptyInput`] when `text` is empty or encodes to no token.
    pub fn plain_prompt(&self, text: &str) -> crate::Result<Vec<u32>> {
        if text.is_empty() {
            return Err(Error::EmptyInput("the prompt is empty".into()));
        }
        let context = self.llama.context_len();
        self.tokenizer.check_fits(text, context, "a prompt")?;
        let ids = self.tokenizer.encode(text, true)?;
        if ids.is_empty() {
            return Err(Error::EmptyInput("the prompt encodes to no token".into()));
        }
        Ok(ids)
    }

    /// Token ids of `text` wrapped as one user message through the model's chat
    /// template, with the generation prompt, as transformers'
    /// `apply_chat_template(..., add_generation_prompt=True)` produces them.
    ///
    /// # Errors
    /// [`Error::EmptyInput`] for an empty text, [`Error::ChatTemplate`] when the model
    /// has no chat template or it fails.
    pub fn chat_prompt(&self, text: &str) -> crate::Result<Vec<u32>> {
        if text.trim().is_empty() {
            return Err(Error::EmptyInput("the prompt is empty".into()));
        }
        self.chat_ids(&[ChatMessage::user(text)], true)
    }

    /// Renders `messages` through the chat template and tokenizes the result without
    /// adding special tokens (the template writes them), as transformers does.
    ///
    /// # Errors
    /// [`Error::ChatTemplate`] when the model has no chat template or it fails.
    pub fn chat_ids(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> crate::Result<Vec<u32>> {
        let template = self.tokenizer.chat_template().ok_or_else(|| {
            Error::ChatTemplate(format!(
                "the model at '{}' has no chat template",
                self.source
            ))
        })?;
        let text = template.render(messages, add_generation_prompt)?;
        let context = self.llama.context_len();
        self.tokenizer
            .check_fits(&text, context, "a rendered chat prompt")?;
        self.tokenizer.encode(&text, false)
    }

    /// Generates a continuation of one prompt, streaming tokens to `on_token`
    /// (return `false` to stop). Stops at the tokenizer's end tokens unless the
    /// options name others.
    ///
    /// # Errors
    /// See [`crate::generate()`].
    pub fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> crate::Result<Generation> {
        let mut cb = |_: usize, t: u32| on_token(t);
        let mut out = generate(
            &self.llama,
            &[prompt.to_vec()],
            options,
            self.tokenizer.end_token_ids(),
            &mut cb,
        )?;
        out.pop()
            .ok_or_else(|| Error::InvalidArgument("generation returned nothing".into()))
    }
}

/// Adapters name the base they were trained on; a different one is worth a warning
/// (paths differ between machines, so it is not an error: shapes are checked instead).
fn warn_on_base_mismatch(adapter: &LoraAdapter, base_spec: &str) {
    if let Some(declared) = adapter.config.base_model_name_or_path.as_deref() {
        if !declared.is_empty() && !same_base(declared, base_spec) {
            tracing::warn!(
                adapter = %adapter.name,
                declared,
                base = base_spec,
                "the adapter declares another base model; its shapes fit, so it is applied"
            );
        }
    }
}

/// Whether a base named `declared` (a hub id or path) is plausibly `base_spec`: the
/// same last path component, or a GGUF file named after it with a quantization
/// suffix (`HuggingFaceTB/SmolLM2-135M-Instruct` ~ `SmolLM2-135M-Instruct.Q4_1.gguf`).
fn same_base(declared: &str, base_spec: &str) -> bool {
    let tail = |s: &str| {
        s.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let (want, have) = (tail(declared), tail(base_spec));
    want == have
        || have.strip_suffix(".gguf").is_some_and(|stem| {
            stem == want
                || stem
                    .strip_prefix(want.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', '-', '_']))
        })
}

#[cfg(test)]
mod tests {
    use super::same_base;

    #[test]
    fn a_gguf_file_is_the_model_it_is_named_after() {
        let hub = "HuggingFaceTB/SmolLM2-135M-Instruct";
        assert!(same_base(
            hub,
            "/cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        ));
        assert!(same_base(hub, "/cache/SmolLM2-135M-Instruct.gguf"));
        assert!(same_base(hub, "other-org/smollm2-135m-instruct/"));
        assert!(!same_base(hub, "/cache/SmolLM2-360M-Instruct.Q4_1.gguf"));
        assert!(!same_base(hub, "meta-llama/Llama-3.2-1B"));
        assert!(!same_base(hub, "/cache/SmolLM2-135M.gguf"));
        // Only a GGUF file name gets the suffix allowance.
        assert!(!same_base(hub, "/cache/SmolLM2-135M-Instruct.Q4_1"));
    }
}
