//! The tantivy adapter of dear: any tantivy query over any schema as the first stage,
//! dear-core's DeAR reranking after it, behind one call:
//! [`SearchReranked::search_reranked`] on a tantivy `Searcher`.
//!
//! # Overview
//! - [`PassageFields`] says which stored fields of your schema make the passage a
//!   model reads (an id field of any type or none, an optional title, one or more
//!   text fields); [`RerankQuery`] pairs any tantivy query (with your filters) with
//!   the text the models read.
//! - [`SearchOptions`]: the page (`limit`, `offset`: a slice of the full reranked
//!   order), snippets, and dear-core's [`RerankOptions`].
//! - [`SearchResults`]: the page of [`SearchHit`]s (the pipeline's hit with its
//!   `DocAddress`, and a snippet) and the report of every stage. A failed or late
//!   stage keeps the order before it: first-stage results are never lost.
//! - [`PassageIndex`] is a ready-made index (English analyzer, id upserts).
//!
//! The pipeline itself ([`Reranker`], its stages, options, results and reports) lives
//! in dear-core and knows nothing of tantivy.
//!
//! # Example
//! ```
//! use dear_tantivy::dear_core::{Passage, Reranker, Stage};
//! use dear_tantivy::{PassageIndex, SearchOptions, SearchReranked};
//! let index = PassageIndex::create_in_ram()?;
//! let mut writer = index.writer()?;
//! writer.upsert(&Passage::new("Channels send values between threads.").with_id("a"))?;
//! writer.upsert(&Passage::new("A Mutex guards shared data across threads.").with_id("b"))?;
//! writer.commit()?;
//! // No model stage configured: the BM25 order comes back, and the report says why.
//! let reranker = Reranker::new();
//! let results = index.searcher().search_reranked(
//!     &index.query("shared data between threads")?,
//!     &reranker,
//!     &SearchOptions::new(10),
//! )?;
//! assert_eq!(results.hits[0].id(), "b");
//! assert_eq!(results.hits[0].placed_by, Stage::First);
//! # Ok::<(), dear_tantivy::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod error;
mod eval;
mod fields;
mod index;
mod options;
mod query;
mod search;

pub use dear_core;
pub use dear_core::{RerankOptions, Reranker};
pub use tantivy;

pub use crate::error::Error;
pub use crate::eval::IndexFirstStage;
pub use crate::fields::{register_analyzer, PassageFields, ENGLISH_ANALYZER};
pub use crate::index::{
    corpus_fingerprint, CorpusSource, IndexCheck, IndexSources, PassageIndex, PassageWriter,
};
pub use crate::options::SearchOptions;
pub use crate::query::RerankQuery;
pub use crate::search::{SearchHit, SearchReranked, SearchResults};

/// The result type of this crate.
///
/// Within dear-tantivy, refer to it as `crate::Result<T>`.
pub type Result<T> = std::result::Result<T, Error>;
