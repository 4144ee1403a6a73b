//! `Searcher::search_reranked`: tantivy's BM25 top-k, then the reranker.

use std::time::Instant;

use tantivy::collector::TopDocs;
use tantivy::{Searcher, TantivyDocument};

use crate::reranker::Candidate;
use crate::{DearReranker, RerankOptions, RerankQuery, RerankedResults, Stage, StageReport};

/// Reranked search on a tantivy [`Searcher`].
///
/// # Example
/// ```no_run
/// use std::sync::Arc;
/// use dear_core::{LanguageModel, LoadOptions};
/// use dear_tantivy::{DearReranker, PassageIndex, RerankOptions, SearchReranked};
/// let index = PassageIndex::create_in_ram()?;
/// // ... index.writer()? .upsert(..) .commit() ...
/// let lm = Arc::new(LanguageModel::load(
///     &dear_core::default_model_path().to_string_lossy(),
///     &LoadOptions::default(),
/// )?);
/// let reranker = DearReranker::for_model(lm)?;
/// let query = index.query("how do threads share data")?;
/// let results = index
///     .searcher()
///     .search_reranked(&query, &reranker, &RerankOptions::default())?;
/// for hit in results.hits.iter().take(10) {
///     println!("{} {} (bm25 #{})", hit.final_rank, hit.id(), hit.bm25_rank);
/// }
/// # Ok::<(), dear_tantivy::Error>(())
/// ```
pub trait SearchReranked {
    /// Runs `query` through BM25 (tantivy's [`TopDocs`], the top
    /// [`candidates`](RerankOptions::candidates)), reads each hit's passage through the
    /// query's [`PassageFields`](crate::PassageFields), and reranks the list with
    /// `reranker`: the listwise order for the top [`listwise_depth`](RerankOptions::listwise_depth),
    /// then the pointwise order, then BM25's for anything no stage saw. A stage that
    /// fails or runs out of time keeps the order before it and says why in the report.
    ///
    /// # Errors
    /// Only what prevents the first stage: tantivy errors, invalid options.
    fn search_reranked(
        &self,
        query: &RerankQuery,
        reranker: &DearReranker,
        options: &RerankOptions,
    ) -> crate::Result<RerankedResults>;
}

impl SearchReranked for Searcher {
    fn search_reranked(
        &self,
        query: &RerankQuery,
        reranker: &DearReranker,
        options: &RerankOptions,
    ) -> crate::Result<RerankedResults> {
        let start = Instant::now();
        options.validate()?;
        let top = self.search(
            query.query(),
            &TopDocs::with_limit(options.candidates()).order_by_score(),
        )?;
        let fields = query.fields();
        let mut candidates = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = self.doc(address)?;
            candidates.push(Candidate {
                address: Some(address),
                passage: fields.passage(&doc),
                score,
            });
        }
        let mut first = StageReport::new(Stage::Bm25);
        first.elapsed = start.elapsed();
        reranker.rerank_from(start, query.text(), candidates, options, first)
    }
}
