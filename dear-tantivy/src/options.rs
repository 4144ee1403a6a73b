//! What is tantivy's in a reranked search: the page, and snippets. Everything about
//! reranking itself is [`RerankOptions`], in dear-core.

use dear_core::RerankOptions;

/// Settings of one reranked search: the page of the reranked order to return
/// (tantivy's `TopDocs::with_limit(..).and_offset(..)`), snippets, and the
/// [`RerankOptions`] of the pipeline.
///
/// The first stage fetches `max(candidates, offset + limit)` hits; the top
/// [`RerankOptions::candidates`] are reranked and the rest keep BM25's order, so a
/// page is exactly the slice `offset..offset + limit` of the full reranked order, and
/// the next page is answered from the reranker's cache.
///
/// # Example
/// ```
/// use dear_tantivy::{RerankOptions, SearchOptions};
/// let options = SearchOptions::new(10)
///     .and_offset(20)
///     .with_snippets(150)
///     .with_rerank(RerankOptions::default().with_candidates(50));
/// assert_eq!((options.limit(), options.offset()), (10, 20));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SearchOptions {
    limit: usize,
    offset: usize,
    snippet_chars: Option<usize>,
    rerank: RerankOptions,
}

impl Default for SearchOptions {
    /// The top 10 of DeAR's setting ([`RerankOptions::default`]), no snippets.
    fn default() -> Self {
        Self::new(10)
    }
}

impl SearchOptions {
    /// The first `limit` hits of the reranked order.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            offset: 0,
            snippet_chars: None,
            rerank: RerankOptions::default(),
        }
    }

    /// Skips the first `offset` hits of the reranked order. Default: 0.
    #[must_use]
    pub fn and_offset(mut self, offset: usize) -> Self {
        self.offset = offset;
        self
    }

    /// Adds to each hit a snippet of at most `max_chars` characters from its text
    /// fields, with the query's terms in `<b>` (tantivy's `SnippetGenerator`).
    /// Default: none.
    #[must_use]
    pub fn with_snippets(mut self, max_chars: usize) -> Self {
        self.snippet_chars = Some(max_chars);
        self
    }

    /// The reranking settings. Default: [`RerankOptions::default`].
    #[must_use]
    pub fn with_rerank(mut self, rerank: RerankOptions) -> Self {
        self.rerank = rerank;
        self
    }

    /// The page size.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The page start.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The snippet length, if snippets are asked for.
    pub fn snippet_chars(&self) -> Option<usize> {
        self.snippet_chars
    }

    /// The reranking settings.
    pub fn rerank(&self) -> &RerankOptions {
        &self.rerank
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidOption`](crate::Error::InvalidOption) naming the setting at
    /// fault, and the errors of [`RerankOptions::validate`].
    pub fn validate(&self) -> crate::Result<()> {
        if self.limit == 0 {
            return Err(crate::Error::InvalidOption(
                "limit must be at least 1".into(),
            ));
        }
        let max = dear_core::MAX_CANDIDATES;
        if self
            .offset
            .checked_add(self.limit)
            .is_none_or(|end| end > max)
        {
            return Err(crate::Error::InvalidOption(format!(
                "offset + limit must be at most {max} (offset {}, limit {})",
                self.offset, self.limit
            )));
        }
        if self.snippet_chars == Some(0) {
            return Err(crate::Error::InvalidOption(
                "snippets need at least 1 character".into(),
            ));
        }
        self.rerank.validate()?;
        Ok(())
    }
}
