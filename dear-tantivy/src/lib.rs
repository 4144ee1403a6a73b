//! tantivy BM25 as the first stage, DeAR's pointwise and listwise LLM reranking after
//! it, behind one call: [`SearchReranked::search_reranked`] on a tantivy `Searcher`.
//!
//! # Overview
//! - [`PassageFields`] says which stored fields make the passage a model reads (id,
//!   optional title, text); [`RerankQuery`] pairs any tantivy query with the text the
//!   models read.
//! - [`DearReranker`] holds the stages ([`PointwiseStage`], [`ListwiseStage`]:
//!   dear-core's [`Reranker`](dear_core::Reranker) and
//!   [`ListwiseReranker`](dear_core::ListwiseReranker), or your own) and a score cache.
//! - [`RerankOptions`] sets candidates, listwise depth and windows, stages, deadline,
//!   listwise mode and passage length per search.
//! - [`RerankedResults`]: every candidate with its BM25, pointwise and listwise view
//!   and final rank, and a [`SearchReport`] of each stage's time, tokens and failures.
//!   A failed or timed-out stage keeps the order before it: first-stage results are
//!   never lost.
//! - [`PassageIndex`] is a ready-made index (English analyzer, id upserts);
//!   [`eval`] computes trec_eval's metrics; [`corpus`] reads BEIR files and folders.
//!
//! # Example
//! ```
//! use dear_core::Passage;
//! use dear_tantivy::{DearReranker, PassageIndex, RerankOptions, SearchReranked, Stage};
//! let index = PassageIndex::create_in_ram()?;
//! let mut writer = index.writer()?;
//! writer.upsert(&Passage::new("Channels send values between threads.").with_id("a"))?;
//! writer.upsert(&Passage::new("A Mutex guards shared data across threads.").with_id("b"))?;
//! writer.commit()?;
//! // No model stage configured: the BM25 order comes back, and the report says why.
//! let reranker = DearReranker::new();
//! let results = index.searcher().search_reranked(
//!     &index.query("shared data between threads")?,
//!     &reranker,
//!     &RerankOptions::default(),
//! )?;
//! assert_eq!(results.hits[0].id(), "b");
//! assert_eq!(results.hits[0].placed_by, Stage::Bm25);
//! # Ok::<(), dear_tantivy::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod cache;
pub mod corpus;
mod error;
pub mod eval;
mod fields;
mod index;
mod options;
mod query;
mod reranker;
mod results;
mod search;
mod stage;

pub use dear_core;

pub use crate::error::Error;
pub use crate::fields::{register_analyzer, PassageFields, ENGLISH_ANALYZER};
pub use crate::index::{PassageIndex, PassageWriter};
pub use crate::options::{RerankOptions, Stages};
pub use crate::query::RerankQuery;
pub use crate::reranker::{Candidate, DearReranker};
pub use crate::results::{
    RerankedHit, RerankedResults, SearchReport, Stage, StageReport, StageStatus,
};
pub use crate::search::SearchReranked;
pub use crate::stage::{ListwiseStage, PointwiseStage, Scored};

/// The result type of this crate.
///
/// Within dear-tantivy, refer to it as `crate::Result<T>`.
pub type Result<T> = std::result::Result<T, Error>;
