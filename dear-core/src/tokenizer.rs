//! The tokenizer of a Llama-family model, built the way `transformers` (5.23) builds it, from
//! a Hugging Face model directory or from the metadata of a GGUF file, together with the
//! special-token facts a runtime needs (BOS/EOS/PAD, the tokens that end a turn) and the
//! model's chat template.
//!
//! From a GGUF file the tokenizer is rebuilt from `tokenizer.ggml.*` metadata as
//! `transformers/integrations/gguf/gguf_tokenizer_mapping.py` does:
//!
//! * `gpt2`: byte-level BPE (`GPT2Tokenizer`): the vocabulary respelled in the byte alphabet
//!   where needed, the file's merges, the GPT-2 pre-tokenizer, or a split regex chosen by
//!   `tokenizer.ggml.pre`;
//! * `llama`: sentencepiece-style BPE (`LlamaTokenizer`): `Metaspace` (prepend on the first
//!   piece only), byte fallback, the file's merges or merges recovered from the scores.
//!
//! In both, CONTROL tokens become special tokens and USER_DEFINED tokens plain added tokens;
//! the default special tokens of the `transformers` class (`<|endoftext|>`; `<s>`, `</s>`,
//! `<unk>`) and the file's named special tokens are added when missing, as `transformers` does,
//! and a BOS (EOS) is added by `encode(.., true)` when `tokenizer.ggml.add_bos_token`
//! (`add_eos_token`) says so (for `llama` files BOS defaults to on).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::chat_template::ChatTemplate;
use crate::error::Error;
use crate::loader::{read_content, GgufMeta, ModelFiles};

/// The named special tokens `transformers` knows, in the order it handles them (and passes
/// them to chat templates).
const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Tokens that end a turn in the chat formats of Llama-family models. One of them counts as an
/// end token when the chat template writes it and the vocabulary has it.
const END_OF_TURN_TOKENS: [&str; 7] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The Llama-3 split regex (`tokenizer.ggml.pre` = `llama-bpe`, `llama3`, ...).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's Tekken split regex.
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The GPT-4o split regex.
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's split regex.
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex `transformers` uses for a GGUF's `tokenizer.ggml.pre`, when it overrides the
/// byte-level default.
fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// A model's tokenizer: a [`tokenizers::Tokenizer`] plus its special tokens, the tokens that
/// end generation, and its chat template.
///
/// Cheap to clone (the tokenizer is shared) and safe to use from many threads.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// Where the tokenizer came from, for error messages.
    origin: String,
    /// The named special tokens that are set (`("bos_token", "<s>")`, ...).
    special_tokens: Vec<(String, String)>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    end_token_ids: Vec<u32>,
    chat_template: Option<ChatTemplate>,
    /// The longest token of the vocabulary (special tokens included), in bytes.
    max_token_bytes: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .field("special_tokens", &self.special_tokens)
            .field("end_token_ids", &self.end_token_ids)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// What a loader found out besides the tokenizer itself.
struct Facts {
    origin: String,
    /// Named special tokens, `transformers`' template variables; unset ones are absent.
    special_tokens: Vec<(String, String)>,
    /// Further ids that end generation (generation config, GGUF end-of-turn ids).
    extra_end_ids: Vec<u32>,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Loads the tokenizer of a Hugging Face model directory.
    ///
    /// Reads `tokenizer.json` (required), `tokenizer_config.json` (special tokens, chat
    /// template), `special_tokens_map.json` (older layout), `chat_template.jinja` (which, as in
    /// `transformers` 5, takes precedence over the config's template), and the
    /// `eos_token_id` of `generation_config.json` and `config.json`, which may be a list, for
    /// the tokens that end generation. As `transformers` does when a `tokenizer.json` is present,
    /// the config's `add_bos_token`/`add_eos_token` are ignored: the `tokenizer.json`
    /// post-processor decides what `encode(.., true)` adds.
    ///
    /// The `tokenizer.json` is used as it is, except for a sentencepiece-style (not byte-level)
    /// BPE tokenizer whose config names `LlamaTokenizer(Fast)` and whose `config.json` (if any)
    /// says `model_type: "llama"` (Llama 2 and its derivatives): `transformers` 5 loads that as
    /// a `LlamaTokenizer`, keeping the vocabulary, merges and post-processor but replacing the
    /// normalizer, pre-tokenizer and decoder (`Metaspace`, prepending `▁` to the first piece, or
    /// to every piece with `legacy: true`, or never with `add_prefix_space: false`), and so does
    /// this loader.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] naming the path when `tokenizer.json` is missing or malformed,
    /// [`Error::Io`]/[`Error::Json`] when another file cannot be read or parsed,
    /// [`Error::Config`] when a field has the wrong type, and [`Error::ChatTemplate`] when the
    /// chat template does not compile.
    pub fn from_hf_dir(dir: &Path) -> crate::Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        let origin = tokenizer_path.display().to_string();
        if !tokenizer_path.is_file() {
            return Err(Error::tokenizer(
                origin,
                "tokenizer.json not found: a Hugging Face model directory must contain one",
            ));
        }
        let text =
            std::fs::read_to_string(&tokenizer_path).map_err(|e| Error::io(&tokenizer_path, e))?;
        let invalid = |e: &dyn std::fmt::Display| {
            Error::tokenizer(origin.clone(), format!("not a valid tokenizer.json: {e}"))
        };
        let tokenizer_json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(&e))?;

        let config_path = dir.join("tokenizer_config.json");
        let config = read_optional_json(&config_path)?;
        let map_path = dir.join("special_tokens_map.json");
        let special_map = read_optional_json(&map_path)?;
        let model_config_path = dir.join("config.json");
        let model_config = read_optional_json(&model_config_path)?;

        // `transformers` loads a `LlamaTokenizer` (rather than the `tokenizer.json` as it is) for
        // a sentencepiece-style Llama tokenizer, rebuilding its normalizer, pre-tokenizer and
        // decoder and re-adding the added tokens.
        let tokenizer_class = config
            .as_ref()
            .and_then(|c| c.get("tokenizer_class"))
            .and_then(serde_json::Value::as_str)
            .map(|name| name.strip_suffix("Fast").unwrap_or(name));
        let model_type = model_config
            .as_ref()
            .and_then(|c| c.get("model_type"))
            .and_then(serde_json::Value::as_str);
        let rebuild_as_llama = tokenizer_class == Some("LlamaTokenizer")
            && matches!(model_type, None | Some("llama"))
            && !text.contains("\"ByteLevel\"")
            && tokenizer_json
                .pointer("/model/type")
                .and_then(serde_json::Value::as_str)
                == Some("BPE");
        let (mut inner, rebuilt) = if rebuild_as_llama {
            let json = llama_tokenizer_json(&tokenizer_json, config.as_ref());
            let inner: tokenizers::Tokenizer =
                serde_json::from_value(json).map_err(|e| invalid(&e))?;
            (inner, true)
        } else {
            let inner =
                tokenizers::Tokenizer::from_bytes(text.as_bytes()).map_err(|e| invalid(&e))?;
            (inner, false)
        };

        let mut special_tokens = Vec::new();
        for name in SPECIAL_TOKEN_NAMES {
            let from_config = match &config {
                Some(config) => token_field(config, name, &config_path)?,
                None => None,
            };
            let value = match (from_config, &special_map) {
                (Some(value), _) => Some(value),
                (None, Some(map)) => token_field(map, name, &map_path)?,
                (None, None) => None,
            };
            if let Some(value) = value {
                special_tokens.push((name.to_owned(), value));
            }
        }
        // Model-specific named tokens (`image_token`, ...) are template variables too.
        if let Some(serde_json::Value::Object(fields)) = &config {
            for (name, value) in fields {
                if name.ends_with("_token") && !SPECIAL_TOKEN_NAMES.contains(&name.as_str()) {
                    if let serde_json::Value::String(value) = value {
                        special_tokens.push((name.clone(), value.clone()));
                    }
                }
            }
        }

        // The added tokens of the config (or, for a rebuilt tokenizer without them there, of
        // tokenizer.json) and the named special tokens are added when the tokenizer does not
        // already have them, as `TokenizersBackend.__init__` does.
        let mut to_add = match config.as_ref().and_then(|c| c.get("added_tokens_decoder")) {
            Some(decoder) => added_tokens_decoder(decoder, &config_path, "added_tokens_decoder")?,
            None if rebuilt => match tokenizer_json.get("added_tokens") {
                Some(serde_json::Value::Array(tokens)) => {
                    let by_id: serde_json::Map<String, serde_json::Value> = tokens
                        .iter()
                        .filter_map(|t| Some((t.get("id")?.as_u64()?.to_string(), t.clone())))
                        .collect();
                    added_tokens_decoder(
                        &serde_json::Value::Object(by_id),
                        &tokenizer_path,
                        "added_tokens",
                    )?
                }
                _ => Vec::new(),
            },
            None => Vec::new(),
        };
        for (name, value) in &special_tokens {
            if SPECIAL_TOKEN_NAMES.contains(&name.as_str()) {
                to_add.push(AddedToken::from(value.clone(), true).normalized(false));
            }
        }
        add_missing_tokens(&mut inner, to_add);

        let template_path = dir.join("chat_template.jinja");
        let chat_template = if template_path.is_file() {
            Some(
                std::fs::read_to_string(&template_path)
                    .map_err(|e| Error::io(&template_path, e))?,
            )
        } else {
            match &config {
                Some(config) => config_chat_template(config, &config_path)?,
                None => None,
            }
        };

        let mut extra_end_ids = Vec::new();
        let generation_path = dir.join("generation_config.json");
        if let Some(json) = read_optional_json(&generation_path)? {
            extra_end_ids.extend(eos_ids_field(&json, &generation_path)?);
        }
        if let Some(json) = &model_config {
            extra_end_ids.extend(eos_ids_field(json, &model_config_path)?);
        }

        Self::assemble(
            inner,
            Facts {
                origin,
                special_tokens,
                extra_end_ids,
                chat_template,
            },
        )
    }

    /// Reads the tokenizer of located model files: `tokenizer.json` and its companions
    /// in a Hugging Face directory, or a GGUF file's metadata.
    pub(crate) fn from_model_files(files: &ModelFiles) -> crate::Result<Self> {
        match files {
            ModelFiles::HfDir { dir, .. } => Self::from_hf_dir(dir),
            ModelFiles::Gguf(path) => Self::from_gguf(&read_content(path)?, path),
        }
    }

    /// Loads the tokenizer stored in the metadata of the GGUF file at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be opened, [`Error::CorruptFile`] when it is not a
    /// readable GGUF file, and the errors of reading its metadata.
    pub fn from_gguf_file(path: &Path) -> crate::Result<Self> {
        // The checked reader: a crafted header ends in an error, never a panic.
        Self::from_gguf(&read_content(path)?, path)
    }

    /// Builds the tokenizer described by a GGUF file's metadata, as `transformers` 5.23 does
    /// for `AutoTokenizer.from_pretrained(dir, gguf_file=...)`. `path` only names the file in
    /// error messages.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] when `tokenizer.ggml.model` is missing or not one of `gpt2` and
    /// `llama` (or a sentencepiece vocabulary of an architecture that needs a different
    /// builder), or when the vocabulary and merges do not make a valid BPE model;
    /// [`Error::Config`] when a metadata value has the wrong type or a token id is out of range;
    /// [`Error::ChatTemplate`] when `tokenizer.chat_template` does not compile.
    pub(crate) fn from_gguf(content: &Content, path: &Path) -> crate::Result<Self> {
        let origin = path.display().to_string();
        let meta = GgufMeta::new(content, path);
        let model = meta.string("tokenizer.ggml.model")?.ok_or_else(|| {
            Error::tokenizer(
                origin.clone(),
                "the GGUF metadata has no tokenizer (tokenizer.ggml.model)",
            )
        })?;
        let architecture = meta.string("general.architecture")?.unwrap_or_default();
        let tokens = meta.strings("tokenizer.ggml.tokens")?.ok_or_else(|| {
            Error::tokenizer(
                origin.clone(),
                "the GGUF metadata has no tokenizer.ggml.tokens",
            )
        })?;
        let token_types = meta.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
        let merges = meta.strings("tokenizer.ggml.merges")?;

        let (mut inner, byte_level) = match model {
            "gpt2" => (byte_level_bpe(&tokens, merges.as_deref(), &origin)?, true),
            "llama" => {
                if matches!(architecture, "gemma" | "gemma2" | "gemma3" | "phi3") {
                    return Err(Error::tokenizer(
                        origin,
                        format!(
                            "the sentencepiece tokenizer of a '{architecture}' GGUF needs a builder of its own, which is not supported"
                        ),
                    ));
                }
                let scores = meta.floats("tokenizer.ggml.scores")?;
                if let Some((i, x)) = scores
                    .iter()
                    .flatten()
                    .enumerate()
                    .find(|(_, x)| !x.is_finite())
                {
                    return Err(Error::tokenizer(
                        origin,
                        format!("tokenizer.ggml.scores[{i}] is {x}: scores must be finite"),
                    ));
                }
                (
                    sentencepiece_bpe(&tokens, merges.as_deref(), scores.as_deref(), &origin)?,
                    false,
                )
            }
            other => {
                return Err(Error::tokenizer(
                    origin,
                    format!("unsupported GGUF tokenizer model '{other}' (tokenizer.ggml.model); supported: gpt2, llama"),
                ))
            }
        };

        add_gguf_added_tokens(&mut inner, &tokens, &token_types, byte_level);

        if let Some(pre) = meta.string("tokenizer.ggml.pre")? {
            if let Some(pattern) = pre_tokenizer_split(pre) {
                let split = Split::new(
                    SplitPattern::Regex(pattern.to_owned()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| {
                    Error::tokenizer(origin.clone(), format!("split regex for '{pre}': {e}"))
                })?;
                let sequence = PreTokenizerSequence::new(vec![
                    PreTokenizerWrapper::Split(split),
                    PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
                ]);
                inner.with_pre_tokenizer(Some(sequence));
            }
        }

        // The file's named special tokens.
        let mut special_tokens = Vec::new();
        for (name, key) in [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        ] {
            if let Some(id) = meta.u32(key)? {
                let token = tokens.get(id as usize).ok_or_else(|| {
                    Error::config(
                        path,
                        key,
                        format!("token id {id} is out of range for {} tokens", tokens.len()),
                    )
                })?;
                special_tokens.push((name.to_owned(), token.clone()));
            }
        }
        let named: Vec<String> = special_tokens
            .iter()
            .map(|(_, value)| value.clone())
            .collect();
        add_missing_special_tokens(&mut inner, &named);

        let add_bos = meta
            .bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(model == "llama");
        let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let lookup = |name: &str| {
            special_tokens
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, v)| v.as_str())
        };
        let processor = bos_eos_processor(
            &inner,
            lookup("bos_token"),
            add_bos,
            lookup("eos_token"),
            add_eos,
            &origin,
        )?;
        inner.with_post_processor(Some(processor));

        let mut extra_end_ids = Vec::new();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = meta.u32(key)? {
                extra_end_ids.push(id);
            }
        }
        let chat_template = meta.string("tokenizer.chat_template")?.map(str::to_owned);

        Self::assemble(
            inner,
            Facts {
                origin,
                special_tokens,
                extra_end_ids,
                chat_template,
            },
        )
    }

    fn assemble(inner: tokenizers::Tokenizer, facts: Facts) -> crate::Result<Self> {
        let id_of = |name: &str| {
            facts
                .special_tokens
                .iter()
                .find(|(key, _)| key == name)
                .and_then(|(_, token)| inner.token_to_id(token))
        };
        let bos_token_id = id_of("bos_token");
        let eos_token_id = id_of("eos_token");
        let pad_token_id = id_of("pad_token");

        let chat_template = match &facts.chat_template {
            Some(source) => Some(ChatTemplate::with_special_tokens(
                source,
                facts.special_tokens.clone(),
            )?),
            None => None,
        };

        let mut end_token_ids = Vec::new();
        let mut push = |id: u32| {
            if !end_token_ids.contains(&id) {
                end_token_ids.push(id);
            }
        };
        if let Some(id) = eos_token_id {
            push(id);
        }
        for &id in &facts.extra_end_ids {
            if inner.id_to_token(id).is_some() {
                push(id);
            }
        }
        if let Some(template) = &chat_template {
            for token in END_OF_TURN_TOKENS {
                if template.source().contains(token) {
                    if let Some(id) = inner.token_to_id(token) {
                        push(id);
                    }
                }
            }
        }

        let max_token_bytes = inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(Self {
            max_token_bytes,
            inner: Arc::new(inner),
            origin: facts.origin,
            special_tokens: facts.special_tokens,
            bos_token_id,
            eos_token_id,
            pad_token_id,
            end_token_ids,
            chat_template,
        })
    }

    /// Encodes `text` into token ids. With `add_special_tokens`, the tokenizer's post-processor
    /// runs (adding a BOS where the model wants one), as `transformers`' `tokenizer(text)` does.
    /// Special tokens written in the text (`"<|im_start|>"`) are recognised as such either way.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] when the tokenizer fails on the input.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> crate::Result<Vec<u32>> {
        let encoding = self.encode_guarded(text, add_special_tokens)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The tokenizers crate's `encode`, with a panic inside it (a crafted tokenizer.json
    /// whose post-processor template names a special token it does not define panics
    /// there) turned into [`Error::Tokenizer`].
    fn encode_guarded(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> crate::Result<tokenizers::Encoding> {
        self.guarded("encoding", || self.inner.encode(text, add_special_tokens))
    }

    /// Runs a call into the tokenizers crate, its error or a panic inside it becoming
    /// [`Error::Tokenizer`] (`what`: "encoding", "decoding").
    fn guarded<T>(
        &self,
        what: &str,
        call: impl FnOnce() -> tokenizers::Result<T>,
    ) -> crate::Result<T> {
        let context = || format!("{what} with {}", self.origin);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
            .map_err(|_| {
                Error::tokenizer(
                    context(),
                    "the tokenizer panicked (is tokenizer.json consistent?)",
                )
            })?
            .map_err(|e| Error::tokenizer(context(), e))
    }

    /// The longest prefix of `text` that encodes to at most `max_tokens` tokens (no
    /// special tokens added), cut at a token boundary of the original string, so the
    /// prefix is the text itself, never a decoded approximation; with the number of
    /// tokens it holds.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] when the tokenizer fails on the input.
    pub fn truncate_text<'t>(
        &self,
        text: &'t str,
        max_tokens: usize,
    ) -> crate::Result<(&'t str, usize)> {
        // No token spans more than 64 characters; cutting first keeps huge texts cheap.
        let cut = match text
            .char_indices()
            .nth(max_tokens.saturating_add(1).saturating_mul(64))
        {
            Some((i, _)) => &text[..i],
            None => text,
        };
        let encoding = self.encode_guarded(cut, false)?;
        if encoding.get_ids().len() <= max_tokens && cut.len() == text.len() {
            return Ok((text, encoding.get_ids().len()));
        }
        if max_tokens == 0 {
            return Ok((&text[..0], 0));
        }
        let offsets = encoding.get_offsets();
        let kept = max_tokens.min(offsets.len());
        let mut end = kept
            .checked_sub(1)
            .and_then(|last| offsets.get(last))
            .map_or(0, |&(_, end)| end)
            .min(cut.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Ok((&text[..end], kept))
    }

    /// Refuses, before tokenizing it, a text that cannot encode to `max_tokens` tokens
    /// or fewer: no token of the vocabulary is longer than the longest vocabulary entry
    /// (margin 4× for normalizers that shorten text), so a longer text is refused
    /// without the time and memory its tokenization would take.
    ///
    /// # Errors
    ///
    /// [`Error::ContextOverflow`] naming `what`, with the least number of tokens the text
    /// can have.
    pub(crate) fn check_fits(
        &self,
        text: &str,
        max_tokens: usize,
        what: &str,
    ) -> crate::Result<()> {
        let per_token = self.max_token_bytes.saturating_mul(4);
        if text.len() > max_tokens.saturating_mul(per_token) {
            return Err(Error::ContextOverflow {
                what: format!("{what}: {} bytes, refused before tokenizing", text.len()),
                tokens: text.len().div_ceil(per_token),
                max: max_tokens,
            });
        }
        Ok(())
    }

    /// Decodes token ids into text; with `skip_special_tokens`, special tokens are left out.
    /// Ids outside the vocabulary are skipped.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] when the decoder fails.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> crate::Result<String> {
        self.guarded("decoding", || self.inner.decode(ids, skip_special_tokens))
    }

    /// The id of a token (including added and special tokens), if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token an id stands for, if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The number of tokens, added tokens included (`len(tokenizer)` in `transformers`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_token(&self) -> Option<&str> {
        self.special_token("bos_token")
    }

    /// The id of the beginning-of-sequence token.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// The end-of-sequence token, if the model has one.
    pub fn eos_token(&self) -> Option<&str> {
        self.special_token("eos_token")
    }

    /// The id of the end-of-sequence token.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// The id of the padding token, if the model has one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    /// A named special token (`"bos_token"`, `"unk_token"`, `"pad_token"`, ...), if set.
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every token id that ends generation: the EOS, the ids of the generation config's
    /// `eos_token_id` (and a GGUF's end-of-turn ids), and the end-of-turn tokens
    /// (`<|im_end|>`, `<|eot_id|>`, `<|eom_id|>`, ...) that the chat template writes and the
    /// vocabulary has. No duplicates; the EOS first.
    pub fn end_token_ids(&self) -> &[u32] {
        &self.end_token_ids
    }

    /// The model's chat template, if it has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Reads a JSON file if it exists.
fn read_optional_json(path: &Path) -> crate::Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::json(path, e))
}

/// A special token field of `tokenizer_config.json`/`special_tokens_map.json`: a string, an
/// `AddedToken` object (`{"content": ...}`) or `null`.
fn token_field(json: &serde_json::Value, name: &str, path: &Path) -> crate::Result<Option<String>> {
    match json.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
        Some(serde_json::Value::Object(fields)) => match fields.get("content") {
            Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
            _ => Err(Error::config(
                path,
                name,
                "a token object needs a string `content`",
            )),
        },
        Some(_) => Err(Error::config(
            path,
            name,
            "expected a string or a token object",
        )),
    }
}

/// The `chat_template` of `tokenizer_config.json`: a string, or a list of named templates of
/// which the one named `default` is used.
fn config_chat_template(config: &serde_json::Value, path: &Path) -> crate::Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
        Some(serde_json::Value::Array(entries)) => {
            for entry in entries {
                let name = entry.get("name").and_then(serde_json::Value::as_str);
                let template = entry.get("template").and_then(serde_json::Value::as_str);
                match (name, template) {
                    (Some("default"), Some(template)) => return Ok(Some(template.to_owned())),
                    (Some(_), Some(_)) => {}
                    _ => return Err(Error::config(
                        path,
                        "chat_template",
                        "each entry of a list of templates needs a string `name` and `template`",
                    )),
                }
            }
            tracing::warn!(
                path = %path.display(),
                "the tokenizer config lists chat templates but none named 'default'; no chat template is used"
            );
            Ok(None)
        }
        Some(_) => Err(Error::config(
            path,
            "chat_template",
            "expected a string or a list of named templates",
        )),
    }
}

/// The `eos_token_id` of a (generation) config: an integer, a list of integers, or absent.
fn eos_ids_field(json: &serde_json::Value, path: &Path) -> crate::Result<Vec<u32>> {
    let as_id = |value: &serde_json::Value| value.as_u64().and_then(|id| u32::try_from(id).ok());
    match json.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|item| {
                as_id(item).ok_or_else(|| {
                    Error::config(
                        path,
                        "eos_token_id",
                        "expected token ids (non-negative integers)",
                    )
                })
            })
            .collect(),
        Some(value) => as_id(value).map(|id| vec![id]).ok_or_else(|| {
            Error::config(
                path,
                "eos_token_id",
                "expected a token id or a list of token ids",
            )
        }),
    }
}

/// Adds each of `tokens` that the tokenizer does not have as an added token yet (compared by
/// content), in order, as `transformers`' `TokenizersBackend.__init__` does.
fn add_missing_tokens(inner: &mut tokenizers::Tokenizer, tokens: Vec<AddedToken>) {
    let mut present: HashSet<String> = inner
        .get_added_tokens_decoder()
        .into_values()
        .map(|token| token.content)
        .collect();
    let missing: Vec<AddedToken> = tokens
        .into_iter()
        .filter(|token| !token.content.is_empty() && present.insert(token.content.clone()))
        .collect();
    if !missing.is_empty() {
        inner.add_tokens(&missing);
    }
}

/// Adds each of `tokens` missing from the added tokens as a special token.
fn add_missing_special_tokens(inner: &mut tokenizers::Tokenizer, tokens: &[String]) {
    let tokens = tokens
        .iter()
        .map(|token| AddedToken::from(token.clone(), true).normalized(false))
        .collect();
    add_missing_tokens(inner, tokens);
}

/// The added tokens of a `{"<id>": {"content": ..., "special": ..., ...}}` map, in id order.
fn added_tokens_decoder(
    json: &serde_json::Value,
    path: &Path,
    field: &str,
) -> crate::Result<Vec<AddedToken>> {
    let serde_json::Value::Object(entries) = json else {
        return Err(Error::config(
            path,
            field,
            "expected a map from token ids to tokens",
        ));
    };
    let mut tokens = Vec::with_capacity(entries.len());
    for (id, entry) in entries {
        let id: u64 = id
            .parse()
            .map_err(|_| Error::config(path, field, format!("'{id}' is not a token id")))?;
        let content = entry
            .get("content")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                Error::config(path, field, format!("token {id} has no string `content`"))
            })?;
        let flag = |name: &str| entry.get(name).and_then(serde_json::Value::as_bool);
        let special = flag("special").unwrap_or(false);
        let token = AddedToken::from(content.to_owned(), special)
            .single_word(flag("single_word").unwrap_or(false))
            .lstrip(flag("lstrip").unwrap_or(false))
            .rstrip(flag("rstrip").unwrap_or(false))
            .normalized(flag("normalized").unwrap_or(!special));
        tokens.push((id, token));
    }
    tokens.sort_by_key(|(id, _)| *id);
    Ok(tokens.into_iter().map(|(_, token)| token).collect())
}

/// The `tokenizer.json` of the `LlamaTokenizer` that `transformers` builds from a
/// sentencepiece-style `tokenizer.json`: its vocabulary, merges and post-processor, no
/// normalizer, a `Metaspace` pre-tokenizer (prepending `▁` always with `legacy`, else to the
/// first piece only, never without `add_prefix_space`) and the matching decoder. Added tokens
/// are re-added by the caller.
fn llama_tokenizer_json(
    tokenizer_json: &serde_json::Value,
    config: Option<&serde_json::Value>,
) -> serde_json::Value {
    let flag = |name: &str| {
        config
            .and_then(|c| c.get(name))
            .and_then(serde_json::Value::as_bool)
    };
    let add_prefix_space = flag("add_prefix_space").unwrap_or(true);
    let legacy = flag("legacy").unwrap_or(false);
    let prepend_scheme = match (add_prefix_space, legacy) {
        (false, _) => "never",
        (true, true) => "always",
        (true, false) => "first",
    };
    let mut decoders = vec![
        serde_json::json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        serde_json::json!({"type": "ByteFallback"}),
        serde_json::json!({"type": "Fuse"}),
    ];
    if add_prefix_space {
        decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let model = tokenizer_json.get("model");
    let field = |name: &str| {
        model
            .and_then(|m| m.get(name))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": prepend_scheme, "split": false},
        "post_processor": tokenizer_json.get("post_processor").cloned().unwrap_or(serde_json::Value::Null),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": field("vocab"),
            "merges": field("merges"),
        },
    })
}

/// The post-processor `transformers`' `update_post_processor` installs: `bos $A eos` with the
/// BOS/EOS only where asked for (and known).
fn bos_eos_processor(
    inner: &tokenizers::Tokenizer,
    bos: Option<&str>,
    add_bos: bool,
    eos: Option<&str>,
    add_eos: bool,
    origin: &str,
) -> crate::Result<PostProcessorWrapper> {
    let bos = bos.filter(|_| add_bos);
    let eos = eos.filter(|_| add_eos);
    let special = |token: &str, type_id: u32| serde_json::json!({"SpecialToken": {"id": token, "type_id": type_id}});
    let sequence =
        |id: &str, type_id: u32| serde_json::json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (id, type_id, pieces) in [("A", 0, &mut single), ("B", 1, &mut pair)] {
        if let Some(bos) = bos {
            pieces.push(special(bos, type_id));
        }
        pieces.push(sequence(id, type_id));
        if let Some(eos) = eos {
            pieces.push(special(eos, type_id));
        }
    }
    let pair: Vec<serde_json::Value> = single.iter().cloned().chain(pair).collect();
    let mut special_tokens = serde_json::Map::new();
    for token in [bos, eos].into_iter().flatten() {
        let id = inner.token_to_id(token).ok_or_else(|| {
            Error::tokenizer(
                origin.to_owned(),
                format!("special token '{token}' is not in the vocabulary"),
            )
        })?;
        special_tokens.insert(
            token.to_owned(),
            serde_json::json!({"id": token, "ids": [id], "tokens": [token]}),
        );
    }
    let json = serde_json::json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": special_tokens,
    });
    let processor: TemplateProcessing = serde_json::from_value(json).map_err(|e| {
        Error::tokenizer(
            origin.to_owned(),
            format!("cannot build the post-processor: {e}"),
        )
    })?;
    Ok(PostProcessorWrapper::Template(processor))
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the others for
/// the characters from U+0100 on.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(byte)
        } else {
            let code = 256 + next;
            next += 1;
            code
        };
        table[byte as usize] = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// Splits a merge rule ("a b") into its two sides.
fn parse_merges(merges: &[String], origin: &str) -> crate::Result<Vec<(String, String)>> {
    merges
        .iter()
        .map(|merge| {
            let mut parts = merge.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(left), Some(right), None) => Ok((left.to_owned(), right.to_owned())),
                _ => Err(Error::tokenizer(
                    origin.to_owned(),
                    format!("merge rule '{merge}' is not two tokens separated by one space"),
                )),
            }
        })
        .collect()
}

/// Byte-level BPE from a GGUF `gpt2` vocabulary: `GPT2Tokenizer`'s model, pre-tokenizer and
/// decoder, with its default special token `<|endoftext|>` added when missing.
fn byte_level_bpe(
    tokens: &[String],
    merges: Option<&[String]>,
    origin: &str,
) -> crate::Result<tokenizers::Tokenizer> {
    let table = bytes_to_unicode();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    let mut vocab = Vocab::default();
    for (index, token) in tokens.iter().enumerate() {
        let key = if token.chars().all(|c| alphabet.contains(&c)) {
            token.clone()
        } else {
            token.bytes().map(|b| table[b as usize]).collect()
        };
        vocab.insert(key, index_u32(index, origin)?);
    }
    let merges = match merges {
        Some(merges) => parse_merges(merges, origin)?,
        None => merges_from_vocab(tokens, None, origin)?,
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| {
            Error::tokenizer(
                origin.to_owned(),
                format!("invalid byte-level BPE vocabulary: {e}"),
            )
        })?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    add_missing_special_tokens(&mut inner, &["<|endoftext|>".to_owned()]);
    Ok(inner)
}

/// Sentencepiece-style BPE from a GGUF `llama` vocabulary: `LlamaTokenizer`'s model (byte
/// fallback), `Metaspace` pre-tokenizer and decoder, with its default special tokens `<s>`,
/// `</s>` and `<unk>` added when missing.
fn sentencepiece_bpe(
    tokens: &[String],
    merges: Option<&[String]>,
    scores: Option<&[f64]>,
    origin: &str,
) -> crate::Result<tokenizers::Tokenizer> {
    let mut vocab = Vocab::default();
    for (index, token) in tokens.iter().enumerate() {
        vocab.insert(token.clone(), index_u32(index, origin)?);
    }
    let merges = match merges {
        Some(merges) => parse_merges(merges, origin)?,
        None => {
            let scores = scores.ok_or_else(|| {
                Error::tokenizer(
                    origin.to_owned(),
                    "the GGUF has neither tokenizer.ggml.merges nor tokenizer.ggml.scores to derive merges from",
                )
            })?;
            merges_from_vocab(tokens, Some(scores), origin)?
        }
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| {
            Error::tokenizer(
                origin.to_owned(),
                format!("invalid sentencepiece BPE vocabulary: {e}"),
            )
        })?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(Metaspace::new(
        '\u{2581}',
        PrependScheme::First,
        false,
    )));
    let replace = Replace::new("\u{2581}", " ").map_err(|e| {
        Error::tokenizer(origin.to_owned(), format!("cannot build the decoder: {e}"))
    })?;
    inner.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(replace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Strip(Strip::new(' ', 1, 0)),
    ])));
    add_missing_special_tokens(
        &mut inner,
        &["<s>".to_owned(), "</s>".to_owned(), "<unk>".to_owned()],
    );
    Ok(inner)
}

fn index_u32(index: usize, origin: &str) -> crate::Result<u32> {
    u32::try_from(index).map_err(|_| {
        Error::tokenizer(
            origin.to_owned(),
            "the vocabulary has more than 2^32 tokens",
        )
    })
}

/// Merges recovered from a vocabulary without any, as `transformers`' `generate_merges` does:
/// every way to cut a token into two tokens of the vocabulary is a merge; merges are ranked by
/// the token's score (best first) when `scores` are given, else by the token's id, then by the
/// lengths of the two sides (longer first), the original order breaking ties.
fn merges_from_vocab(
    tokens: &[String],
    scores: Option<&[f64]>,
    origin: &str,
) -> crate::Result<Vec<(String, String)>> {
    let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    for (index, token) in tokens.iter().enumerate() {
        vocab.insert(token.as_str(), index_u32(index, origin)?);
    }
    // The pieces to cut, each once, in order of first appearance, with their sort key: the
    // (last) score when scores are given, else the id.
    let mut pieces: Vec<(&str, f64)> = Vec::new();
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    match scores {
        Some(scores) => {
            for (token, &score) in tokens.iter().zip(scores) {
                match position.get(token.as_str()) {
                    Some(&at) => pieces[at].1 = score,
                    None => {
                        position.insert(token.as_str(), pieces.len());
                        pieces.push((token.as_str(), score));
                    }
                }
            }
        }
        None => {
            // Iterating `vocab` in Python order: first appearance, last id.
            for token in tokens {
                if !position.contains_key(token.as_str()) {
                    position.insert(token.as_str(), pieces.len());
                    pieces.push((token.as_str(), f64::from(vocab[token.as_str()])));
                }
            }
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for &(piece, score) in &pieces {
        let mut local: Vec<(&str, &str, f64)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| piece.split_at(at))
            .filter(|(left, right)| vocab.contains_key(left) && vocab.contains_key(right))
            .map(|(left, right)| (left, right, score))
            .collect();
        local.sort_by_key(|(left, right, _)| (vocab[left], vocab[right]));
        merges.extend(local);
    }
    let descending = scores.is_some();
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        let ordering =
            ka.0.partial_cmp(&kb.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(ka.1.cmp(&kb.1))
                .then(ka.2.cmp(&kb.2));
        if descending {
            ordering.reverse()
        } else {
            ordering
        }
    });
    Ok(merges
        .into_iter()
        .map(|(left, right, _)| (left.to_owned(), right.to_owned()))
        .collect())
}

/// Adds a GGUF's CONTROL tokens as special tokens and its USER_DEFINED tokens as plain added
/// tokens. In a byte-level vocabulary, a CONTROL token spelled outside the byte alphabet is a
/// mislabel and is skipped; a USER_DEFINED token is only added when the vocabulary has it as
/// written.
fn add_gguf_added_tokens(
    inner: &mut tokenizers::Tokenizer,
    tokens: &[String],
    token_types: &[i64],
    byte_level: bool,
) {
    let alphabet: Option<HashSet<char>> =
        byte_level.then(|| bytes_to_unicode().iter().copied().collect());
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(token_types)
        .filter(|(token, &kind)| {
            kind == TOKEN_TYPE_CONTROL
                && alphabet
                    .as_ref()
                    .is_none_or(|alphabet| token.chars().all(|c| alphabet.contains(&c)))
        })
        .map(|(token, _)| AddedToken::from(token.clone(), true).normalized(false))
        .collect();
    if !control.is_empty() {
        inner.add_special_tokens(&control);
    }
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .zip(token_types)
        .filter(|(token, &kind)| {
            kind == TOKEN_TYPE_USER_DEFINED && inner.token_to_id(token).is_some()
        })
        .map(|(token, _)| AddedToken::from(token.clone(), false).normalized(false))
        .collect();
    if !user_defined.is_empty() {
        inner.add_tokens(&user_defined);
    }
}
