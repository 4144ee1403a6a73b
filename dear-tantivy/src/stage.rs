//! The two reranking stages as traits, so that any scorer can be plugged in, and
//! their implementations over dear-core's models.

use std::time::Instant;

use dear_core::{
    ListwiseMode, ListwiseOutcome, ListwiseReranker, Passage, Query, Reranker, Tokenizer,
    WindowConfig,
};

/// Scores from a pointwise stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// One score per passage, in input order; higher is better.
    pub scores: Vec<f32>,
    /// Tokens the model read.
    pub tokens: usize,
}

/// A pointwise stage: scores each (query, passage) pair on its own.
///
/// Implemented by dear-core's [`Reranker`] (DeAR's classifier or the yes/no head);
/// implement it to plug in another scorer.
pub trait PointwiseStage: Send + Sync {
    /// Identifies the model and settings: scores are cached under it, so two stages
    /// that may score differently must not share a key.
    fn key(&self) -> String;

    /// Scores `passages` against `query`, giving up at `deadline`.
    ///
    /// # Errors
    /// Any error: the search keeps the previous order and reports it.
    fn score(
        &self,
        query: &Query,
        passages: &[Passage],
        deadline: Option<Instant>,
    ) -> dear_core::Result<Scored>;

    /// The tokenizer passages are measured with for
    /// [`RerankOptions::with_max_passage_tokens`](crate::RerankOptions::with_max_passage_tokens).
    fn tokenizer(&self) -> Option<&Tokenizer> {
        None
    }
}

/// A listwise stage: reorders a list of passages as a whole.
///
/// Implemented by dear-core's [`ListwiseReranker`]; implement it to plug in another.
pub trait ListwiseStage: Send + Sync {
    /// Identifies the model and settings (see [`PointwiseStage::key`]).
    fn key(&self) -> String;

    /// Reranks `passages` (best first) for `query` in sliding `window`s; `mode` `None`
    /// means the stage's own.
    ///
    /// # Errors
    /// Any error: the search keeps the previous order and reports it. Failures inside
    /// the pass may also be reported in [`ListwiseOutcome::failure`].
    fn rerank(
        &self,
        query: &Query,
        passages: &[Passage],
        mode: Option<ListwiseMode>,
        window: &WindowConfig,
        deadline: Option<Instant>,
    ) -> dear_core::Result<ListwiseOutcome>;

    /// See [`PointwiseStage::tokenizer`].
    fn tokenizer(&self) -> Option<&Tokenizer> {
        None
    }
}

impl PointwiseStage for Reranker {
    fn key(&self) -> String {
        let scorer = self.scorer();
        format!(
            "pointwise|{}|{:?}|{:?}",
            scorer.model().source(),
            scorer.adapter_name(),
            scorer.config()
        )
    }

    fn score(
        &self,
        query: &Query,
        passages: &[Passage],
        deadline: Option<Instant>,
    ) -> dear_core::Result<Scored> {
        let encoded = self.scorer().encode(query, passages)?;
        let tokens = encoded.prefix.len() + encoded.suffixes.iter().map(Vec::len).sum::<usize>();
        let scores = self.score_encoded_until(encoded, deadline)?;
        Ok(Scored { scores, tokens })
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        Some(self.scorer().model().tokenizer())
    }
}

impl ListwiseStage for ListwiseReranker {
    fn key(&self) -> String {
        let c = self.config();
        format!(
            "listwise|{}|{:?}|{:?}|{}|{}",
            self.model().source(),
            self.adapter_name(),
            c.prompt,
            c.max_new_tokens,
            c.max_reasoning_tokens
        )
    }

    fn rerank(
        &self,
        query: &Query,
        passages: &[Passage],
        mode: Option<ListwiseMode>,
        window: &WindowConfig,
        deadline: Option<Instant>,
    ) -> dear_core::Result<ListwiseOutcome> {
        let mode = mode.unwrap_or(self.config().mode);
        self.rerank_with(query, passages, mode, window, deadline)
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        Some(self.model().tokenizer())
    }
}
