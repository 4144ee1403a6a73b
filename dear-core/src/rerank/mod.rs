//! Reranking that knows nothing about search engines: queries and passages in,
//! scores and orders out.

mod constrained;
mod listwise;
mod permutation;
pub(crate) mod pointwise;
mod prompt;
mod recipe;
mod scheduler;
mod types;
mod window;

pub use self::listwise::{
    ListwiseConfig, ListwiseMode, ListwiseOptions, ListwiseOutcome, ListwiseRanker, WindowReport,
};
pub(crate) use self::permutation::is_permutation;
pub use self::permutation::{has_ranking, parse_ranking, IdBase, ParsedRanking};
pub use self::pointwise::{EncodedQuery, Head, PointwiseConfig, PointwiseScorer, Scored};
pub use self::prompt::{listwise_passage_text, listwise_prompt_ids, ListwisePrompt};
pub use self::recipe::Recipe;
pub use self::scheduler::{BatchStats, Scheduler};
pub use self::types::{Passage, Query};
pub use self::window::{slide, Stopped, WindowConfig, WindowRecord};
