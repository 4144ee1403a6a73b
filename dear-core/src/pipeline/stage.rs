//! The two reranking stages as traits, so that any scorer can be plugged into the
//! [`Reranker`](crate::Reranker), and their implementations over dear's models.

use std::time::Instant;

use crate::rerank::{
    ListwiseOptions, ListwiseOutcome, ListwiseRanker, Passage, PointwiseScorer, Query, Scheduler,
    Scored,
};
use crate::{Error, Tokenizer};

/// A pointwise stage: scores each (query, passage) pair on its own.
///
/// Implemented by [`Scheduler`] (batches concurrent calls; DeAR's classifier or the
/// yes/no head) and [`PointwiseScorer`] (the same scores, no scheduler thread);
/// implement it to plug in another scorer.
pub trait PointwiseStage: Send + Sync {
    /// Identifies the model and settings: scores are cached under it, so two stages
    /// that may score differently must not share a key.
    fn key(&self) -> String;

    /// Scores `passages` against `query`, in input order, giving up at `deadline`.
    ///
    /// # Errors
    /// Any error: the pipeline keeps the previous order and reports it
    /// ([`Error::DeadlineExceeded`] is reported as a deadline, [`Error::Cancelled`]
    /// as a cancellation, anything else as a model error).
    fn score(
        &self,
        query: &Query,
        passages: &[Passage],
        deadline: Option<Instant>,
    ) -> crate::Result<Scored>;

    /// The tokenizer passages are measured with (for
    /// [`RerankOptions::with_max_passage_tokens`](crate::RerankOptions::with_max_passage_tokens)
    /// and [`Chunking`](crate::Chunking)).
    fn tokenizer(&self) -> Option<&Tokenizer> {
        None
    }

    /// How many tokens of `passage`'s text the stage reads before it truncates (what
    /// is left of its passage budget after the title and the input format), if it
    /// truncates at all. [`Chunking`](crate::Chunking) cuts chunks of this size.
    fn text_budget(&self, passage: &Passage) -> Option<usize> {
        let _ = passage;
        None
    }

    /// How the stage has batched calls so far, if it batches across calls
    /// ([`Scheduler`] does).
    fn batch_stats(&self) -> Option<crate::BatchStats> {
        None
    }
}

/// A listwise stage: reorders a list of passages as a whole.
///
/// Implemented by [`ListwiseRanker`]; implement it to plug in another.
pub trait ListwiseStage: Send + Sync {
    /// Identifies the model and settings (see [`PointwiseStage::key`]).
    fn key(&self) -> String;

    /// Reorders `passages` (best first) for `query` in the sliding windows, mode and
    /// deadline of `options` (`None` fields: the stage's own).
    ///
    /// # Errors
    /// Any error: the pipeline keeps the previous order and reports it. Failures
    /// inside the pass are reported in [`ListwiseOutcome::failure`] (the pass stopped;
    /// the windows finished before it count) and [`WindowReport::failure`] (a window
    /// kept its order).
    ///
    /// [`WindowReport::failure`]: crate::WindowReport::failure
    fn rank(
        &self,
        query: &Query,
        passages: &[Passage],
        options: &ListwiseOptions,
    ) -> crate::Result<ListwiseOutcome>;

    /// See [`PointwiseStage::tokenizer`].
    fn tokenizer(&self) -> Option<&Tokenizer> {
        None
    }
}

fn scorer_key(scorer: &PointwiseScorer) -> String {
    format!(
        "pointwise|{}|{:?}|{:?}",
        scorer.model().source(),
        scorer.adapter_name(),
        scorer.config()
    )
}

impl PointwiseStage for Scheduler {
    fn key(&self) -> String {
        scorer_key(self.scorer())
    }

    fn score(
        &self,
        query: &Query,
        passages: &[Passage],
        deadline: Option<Instant>,
    ) -> crate::Result<Scored> {
        Scheduler::score(self, query, passages, deadline)
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        Some(self.scorer().model().tokenizer())
    }

    fn text_budget(&self, passage: &Passage) -> Option<usize> {
        self.scorer().text_budget(passage).ok()
    }

    fn batch_stats(&self) -> Option<crate::BatchStats> {
        Some(Scheduler::batch_stats(self))
    }
}

impl PointwiseStage for PointwiseScorer {
    fn key(&self) -> String {
        scorer_key(self)
    }

    fn score(
        &self,
        query: &Query,
        passages: &[Passage],
        deadline: Option<Instant>,
    ) -> crate::Result<Scored> {
        let started = Instant::now();
        if deadline.is_some_and(|d| started >= d) {
            return Err(Error::deadline("pointwise scoring", started));
        }
        let encoded = self.encode(query, passages)?;
        let tokens = encoded.tokens();
        let late = || deadline.is_some_and(|d| Instant::now() >= d);
        let scores = self
            .score_encoded(&[&encoded], &late)
            .map_err(|e| {
                e.cancelled_as_deadline(
                    || format!("pointwise scoring of {} passages", passages.len()),
                    started,
                )
            })?
            .pop()
            .ok_or_else(|| Error::Internal("no scores for the query".into()))?;
        Ok(Scored { scores, tokens })
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        Some(self.model().tokenizer())
    }

    fn text_budget(&self, passage: &Passage) -> Option<usize> {
        PointwiseScorer::text_budget(self, passage).ok()
    }
}

impl ListwiseStage for ListwiseRanker {
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

    fn rank(
        &self,
        query: &Query,
        passages: &[Passage],
        options: &ListwiseOptions,
    ) -> crate::Result<ListwiseOutcome> {
        ListwiseRanker::rank(self, query, passages, options)
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        Some(self.model().tokenizer())
    }
}
