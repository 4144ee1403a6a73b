//! `dear`: DeAR two-stage LLM reranking (a pointwise scorer over the first stage's
//! top 100, then a listwise pass over the top 20) as an embeddable library for Rust
//! search, on Llama-family models run by candle.
//!
//! This facade re-exports the public API; the crates behind it are
//! [`dear_core`] (models, the engine-free reranking pipeline, evaluation) and
//! [`dear_tantivy`] (tantivy as the first stage).
//!
//! # Rerank any list of texts
//! ```no_run
//! use dear::{DearSetup, RerankOptions};
//! let reranker = DearSetup::default_model().build()?;
//! let ranking = reranker.rank(
//!     "how do threads share data safely?",
//!     ["Channels send values between threads.", "A Mutex guards shared data.", "Cargo builds code."],
//!     &RerankOptions::default().with_top_n(2),
//! )?;
//! for r in &ranking.results {
//!     println!("#{} relevance {:.3} (placed by {})", r.index, r.relevance_score, r.placed_by);
//! }
//! # Ok::<(), dear::Error>(())
//! ```
//!
//! # Reranked tantivy search
//! ```no_run
//! use dear::{DearSetup, Passage, PassageIndex, SearchOptions, SearchReranked};
//! let index = PassageIndex::create_in_ram()?;
//! let mut writer = index.writer()?;
//! writer.upsert(&Passage::new("A Mutex guards shared data.").with_id("mutex"))?;
//! writer.commit()?;
//! let reranker = DearSetup::default_model().build()?;
//! let results = index.searcher().search_reranked(
//!     &index.query("shared data between threads")?,
//!     &reranker,
//!     &SearchOptions::new(10),
//! )?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub use dear_core;
pub use dear_tantivy;

pub use dear_core::eval;
pub use dear_core::{
    corpus, default_model_path, relevance, Candidate, ChunkSpan, Chunking, DearSetup, Device,
    Error, HeadChoice, HubOptions, LanguageModel, ListwiseConfig, ListwiseMode, ListwiseRanker,
    ListwiseStage, LoadOptions, Passage, PointwiseConfig, PointwiseScorer, PointwiseStage, Query,
    RankedDocument, Ranking, Recipe, RerankOptions, RerankReport, RerankedHit, RerankedResults,
    Reranker, Result, Scheduler, Scored, Stage, StageFailure, StageReport, StageStatus, Stages,
};
pub use dear_tantivy::{
    tantivy, IndexFirstStage, PassageFields, PassageIndex, RerankQuery, SearchHit, SearchOptions,
    SearchReranked, SearchResults,
};
