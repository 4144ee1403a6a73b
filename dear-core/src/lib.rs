//! `dear-core`: Llama-family inference on candle and the engine-agnostic pieces of
//! DeAR reranking.
//!
//! # Overview
//! - [`LanguageModel`] loads a model from a GGUF file, a Hugging Face directory or a
//!   hub id ([`LoadOptions`]: device, dtype, quantization at load, hub cache).
//! - [`Llama`] is the network: immutable, shared as `&self`, run over packed
//!   [`Batch`]es of sequences of different lengths with per-request [`KvCache`]s.
//! - [`generate()`] decodes many sequences at once (greedy or seeded top-p).
//! - [`Tokenizer`] and [`ChatTemplate`] reproduce what transformers builds from the same
//!   files, including tokenizers rebuilt from GGUF metadata.
//!
//! # Example
//! ```no_run
//! use dear_core::{GenerateOptions, LanguageModel, LoadOptions};
//! let lm = LanguageModel::load(dear_core::default_model_path(), &LoadOptions::default())?;
//! let prompt = lm.chat_prompt("What is the capital of France?")?;
//! let answer = lm.generate(&prompt, &GenerateOptions::default().with_max_new_tokens(20), &mut |_| true)?;
//! println!("{}", lm.tokenizer().decode(&answer.tokens, true)?);
//! # Ok::<(), dear_core::Error>(())
//! ```
//!
//! # Crate features
//! - `cuda`: candle's CUDA backend. Without it, [`Device::Cuda`] is an error, never a panic.
#![warn(missing_docs)]

mod batch;
pub mod bench;
mod chat_template;
mod config;
pub mod corpus;
mod device;
mod error;
pub mod eval;
// Always compiled (small): the fuzz targets in fuzz/ and tests/props.rs call it.
#[doc(hidden)]
pub mod fuzzing;
mod generate;
#[doc(hidden)]
pub mod kernels;
mod language_model;
mod loader;
mod lora;
pub mod memory;
mod model;
mod pipeline;
mod rerank;
mod tokenizer;
pub mod train;

pub use crate::batch::Batch;
pub use crate::chat_template::{ChatMessage, ChatTemplate};
pub use crate::config::{ModelConfig, RopeConfig, RopeScaling};
pub use crate::device::Device;
pub use crate::error::Error;
pub use crate::generate::{
    generate, generate_with_hook, FinishReason, GenerateOptions, Generation, LogitsHook, NextToken,
    Sampling,
};
pub use crate::language_model::{
    default_model_path, default_student_path, LanguageModel, DEFAULT_MODEL_FILE, DEFAULT_STUDENT,
};
pub use crate::loader::{
    AdapterMode, AdapterSpec, HubOptions, LoadOptions, Quantization, QuantizedMatmul, WeightDType,
    DEFAULT_MAX_CONTEXT,
};
pub use crate::model::{AdapterId, ForwardOptions, ForwardOutput, KvCache, Llama, Outputs, Select};
pub use crate::pipeline::{
    relevance, Candidate, ChunkSpan, Chunking, DearSetup, Fusion, HeadChoice, ListwiseStage,
    PointwiseStage, RankedDocument, Ranking, RerankOptions, RerankReport, RerankedHit,
    RerankedResults, Reranker, Stage, StageFailure, StageReport, StageStatus, Stages,
    DEFAULT_STUDENT_FUSION, MAX_CANDIDATES,
};
pub use crate::rerank::{
    has_ranking, listwise_passage_text, listwise_prompt_ids, parse_ranking, slide, BatchStats,
    EncodedQuery, Head, IdBase, ListwiseConfig, ListwiseMode, ListwiseOptions, ListwiseOutcome,
    ListwisePrompt, ListwiseRanker, ParsedRanking, Passage, PointwiseConfig, PointwiseScorer,
    Query, Recipe, Scheduler, Scored, Stopped, WindowConfig, WindowRecord, WindowReport,
};
pub use crate::tokenizer::Tokenizer;

/// The result type of this crate.
///
/// Within dear-core, refer to it as `crate::Result<T>`.
pub type Result<T> = std::result::Result<T, Error>;
