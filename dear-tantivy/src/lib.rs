//! tantivy BM25 first stage + DeAR reranking.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use dear_core;
