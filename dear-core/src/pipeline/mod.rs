//! The reranking pipeline, free of any search engine: candidates from any first stage
//! (tantivy, Elasticsearch, a vector store, a TREC run, an HTTP request) go through
//! the pointwise stage, then the listwise stage over the top; each stage that fails or
//! runs late keeps the order before it and says why in a typed [`StageFailure`].
//!
//! - [`Reranker`]: the pipeline (stages + score cache). [`Reranker::rerank`] takes
//!   [`Candidate`]s carrying the caller's own handle and returns [`RerankedResults`];
//!   [`Reranker::rank`] is the Cohere-shaped call over plain texts.
//! - [`PointwiseStage`], [`ListwiseStage`]: the stage traits, implemented by
//!   [`Scheduler`](crate::Scheduler), [`PointwiseScorer`](crate::PointwiseScorer) and
//!   [`ListwiseRanker`](crate::ListwiseRanker), or by your own.
//! - [`RerankOptions`]: candidates, listwise depth and windows, stages, deadline,
//!   passage length, [`Chunking`] (MaxP), [`Fusion`] with the first stage, `top_n`,
//!   `min_score`.
//! - [`DearSetup`]: DeAR's real setup (one base, a pointwise and a listwise adapter)
//!   built by the library.

mod cache;
mod chunk;
mod failure;
mod fusion;
mod options;
mod reranker;
mod results;
mod setup;
mod stage;

pub use self::chunk::Chunking;
pub use self::failure::StageFailure;
pub use self::fusion::Fusion;
pub use self::options::{RerankOptions, Stages, MAX_CANDIDATES};
pub use self::reranker::{relevance, Candidate, RankedDocument, Ranking, Reranker};
pub use self::results::{
    ChunkSpan, RerankReport, RerankedHit, RerankedResults, Stage, StageReport, StageStatus,
};
pub use self::setup::{DearSetup, HeadChoice, DEFAULT_STUDENT_FUSION};
pub use self::stage::{ListwiseStage, PointwiseStage};
