//! The crate's one error type.
//!
//! Every variant names the file, field, tensor or value at fault, so that a user who
//! sees the message knows what to fix without reading the source.

use std::path::{Path, PathBuf};

/// Errors returned by `dear-core`.
///
/// Within the crate, refer to the result alias as `crate::Result<T>`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("cannot read '{path}': {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (config, tokenizer config, adapter config, ...) is not valid JSON
    /// or does not have the expected structure.
    #[error("invalid JSON in '{path}': {message}")]
    Json {
        /// The file at fault.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },

    /// A configuration value is missing or out of range.
    #[error("invalid config '{path}': field `{field}`: {message}")]
    Config {
        /// The file (or GGUF) the value comes from.
        path: PathBuf,
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },

    /// The model declares an architecture this crate cannot run.
    #[error("unsupported model architecture '{architecture}' in '{path}': only Llama-family models (model_type \"llama\", GGUF general.architecture \"llama\") are supported")]
    UnsupportedArchitecture {
        /// The architecture string found in the file.
        architecture: String,
        /// The file at fault.
        path: PathBuf,
    },

    /// A weight file (safetensors or GGUF) is truncated or malformed.
    #[error("corrupt model file '{path}': {message}")]
    CorruptFile {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A tensor the model needs is not in the weight files.
    #[error("tensor '{name}' not found in '{path}'")]
    MissingTensor {
        /// The tensor name, as written in the checkpoint.
        name: String,
        /// The file (or directory) searched.
        path: PathBuf,
    },

    /// A tensor exists but has a shape that does not fit the config.
    #[error("tensor '{name}' has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor name, as written in the checkpoint.
        name: String,
        /// The shape implied by the config.
        expected: Vec<usize>,
        /// The shape found in the file.
        actual: Vec<usize>,
    },

    /// No usable model files were found at a location.
    #[error("no model found at '{path}': {message}")]
    ModelNotFound {
        /// The path or id that was searched.
        path: PathBuf,
        /// What was looked for.
        message: String,
    },

    /// The tokenizer is missing, malformed, or failed on an input.
    #[error("tokenizer error ({context}): {message}")]
    Tokenizer {
        /// Where the tokenizer came from, or what was being tokenized.
        context: String,
        /// What went wrong.
        message: String,
    },

    /// The chat template is missing, does not compile, or raised an exception.
    #[error("chat template error: {0}")]
    ChatTemplate(String),

    /// A file on the Hugging Face Hub could not be resolved.
    #[error("hub model '{repo}' (revision '{revision}'): {message}")]
    Hub {
        /// The repository id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// What went wrong (not cached while offline, network error, ...).
        message: String,
    },

    /// An input was empty where content is required.
    #[error("empty input: {0}")]
    EmptyInput(String),

    /// An input does not fit in the model's context window.
    #[error("input of {tokens} tokens does not fit the context window of {max} tokens ({what})")]
    ContextOverflow {
        /// What overflowed (a prompt, a sequence of a batch, ...).
        what: String,
        /// The number of tokens asked for.
        tokens: usize,
        /// The largest number allowed.
        max: usize,
    },

    /// An argument is invalid (a zero window, an unknown option, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Input data (a corpus, queries, a passage file) is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 when the problem is not on one line).
        line: usize,
        /// What is wrong.
        reason: String,
    },

    /// Qrels or a run could not be read or written.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),

    /// A batch shared with other calls failed; every call in it gets this error.
    #[error("{0}")]
    Batch(std::sync::Arc<Error>),

    /// The first stage (a search engine, a run) failed.
    #[error("first stage: {0}")]
    FirstStage(String),

    /// Training cannot go on: no usable data, a diverging loss, an output that would
    /// overwrite another run, a checkpoint that does not match the run resumed.
    #[error("training: {0}")]
    Training(String),
    /// The model computed a NaN or infinite value where a score belongs: its weights or
    /// adapter overflow (an absurd `lora_alpha`, non-finite tensors).
    #[error("the model produced a non-finite score ({0}): check its weights and adapter")]
    NonFinite(String),
    /// An internal invariant does not hold (a bug in dear-core: please report it).
    #[error("internal error: {0}")]
    Internal(String),

    /// A call's deadline passed before it finished.
    #[error("deadline exceeded after {elapsed_ms} ms ({what})")]
    DeadlineExceeded {
        /// What was running.
        what: String,
        /// How long the call had run.
        elapsed_ms: u128,
    },

    /// The call was cancelled (its caller stopped waiting, or the scorer shut down).
    #[error("cancelled")]
    Cancelled,

    /// CUDA was requested, but this build has no CUDA support.
    #[error("CUDA device requested, but dear-core was built without the `cuda` feature")]
    CudaNotCompiled,

    /// An error from the tensor library while running the model.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// [`Error::DeadlineExceeded`] for `what`, started at `started`.
    pub(crate) fn deadline(what: impl Into<String>, started: std::time::Instant) -> Self {
        Error::DeadlineExceeded {
            what: what.into(),
            elapsed_ms: started.elapsed().as_millis(),
        }
    }

    /// A pass stopped by a deadline interrupt ([`Error::Cancelled`]) as
    /// [`Error::DeadlineExceeded`] for `what`; any other error unchanged.
    pub(crate) fn cancelled_as_deadline(
        self,
        what: impl FnOnce() -> String,
        started: std::time::Instant,
    ) -> Self {
        match self {
            Error::Cancelled => Error::deadline(what(), started),
            other => other,
        }
    }

    pub(crate) fn json(path: impl AsRef<Path>, err: impl std::fmt::Display) -> Self {
        Error::Json {
            path: path.as_ref().to_path_buf(),
            message: err.to_string(),
        }
    }

    pub(crate) fn config(
        path: impl AsRef<Path>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            path: path.as_ref().to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn corrupt(path: impl AsRef<Path>, message: impl std::fmt::Display) -> Self {
        Error::CorruptFile {
            path: path.as_ref().to_path_buf(),
            message: message.to_string(),
        }
    }

    pub(crate) fn tokenizer(context: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Tokenizer {
            context: context.into(),
            message: message.to_string(),
        }
    }
}
