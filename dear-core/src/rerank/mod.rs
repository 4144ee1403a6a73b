//! Reranking that knows nothing about search engines: queries and passages in,
//! scores and orders out.

mod pointwise;
mod recipe;
mod scheduler;
mod types;

pub use self::pointwise::{EncodedQuery, Head, PointwiseConfig, PointwiseScorer};
pub use self::recipe::Recipe;
pub use self::scheduler::Reranker;
pub use self::types::{Passage, Query};
