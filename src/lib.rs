//! `dear`: DeAR reranking for Rust search.
pub use dear_core;
pub use dear_tantivy;
