//! `Searcher::search_reranked`: any tantivy query as the first stage, then dear-core's
//! [`Reranker`], then the page.

use std::ops::Deref;
use std::time::Instant;

use dear_core::{Candidate, RerankReport, RerankedHit, Reranker};
use serde::Serialize;
use tantivy::collector::TopDocs;
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, Searcher, TantivyDocument};

use crate::{RerankQuery, SearchOptions};

/// One hit of a reranked search: the pipeline's [`RerankedHit`] (its handle is the
/// tantivy [`DocAddress`]) and, when asked for, a snippet.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SearchHit {
    /// What every stage made of the hit.
    #[serde(flatten)]
    pub hit: RerankedHit<DocAddress>,
    /// An HTML snippet of the text fields with the query's terms in `<b>`, when
    /// [`SearchOptions::with_snippets`] asks for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
}

impl SearchHit {
    /// Where the document is in the index.
    pub fn address(&self) -> DocAddress {
        self.hit.handle
    }
}

impl Deref for SearchHit {
    type Target = RerankedHit<DocAddress>;

    fn deref(&self) -> &Self::Target {
        &self.hit
    }
}

/// A page of a reranked search, and the report of every stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SearchResults {
    /// The page, best first (`hits[i].final_rank == offset + i + 1`).
    pub hits: Vec<SearchHit>,
    /// How many hits the full reranked order has (the page is a slice of it).
    pub total: usize,
    /// What each stage did (the first stage is tantivy's query).
    pub report: RerankReport,
}

/// Reranked search on a tantivy [`Searcher`].
///
/// # Example
/// ```no_run
/// use dear_tantivy::dear_core::DearSetup;
/// use dear_tantivy::{PassageIndex, SearchOptions, SearchReranked};
/// let index = PassageIndex::create_in_ram()?;
/// // ... index.writer()? .upsert(..) .commit() ...
/// let reranker = DearSetup::default_model().build()?;
/// let query = index.query("how do threads share data")?;
/// let results = index
///     .searcher()
///     .search_reranked(&query, &reranker, &SearchOptions::new(10))?;
/// for hit in &results.hits {
///     println!("{} {} (bm25 #{})", hit.final_rank, hit.id(), hit.first_rank);
/// }
/// # Ok::<(), dear_tantivy::Error>(())
/// ```
pub trait SearchReranked {
    /// Runs `query` through tantivy ([`TopDocs`] ordered by score: the top
    /// `max(candidates, offset + limit)`), reads each hit's passage through the
    /// query's [`PassageFields`](crate::PassageFields), reranks the list with
    /// `reranker` (the listwise order for the top, then the pointwise order, then
    /// tantivy's for anything no stage saw), and returns the page `offset..offset +
    /// limit` of that order. A stage that fails or runs out of time keeps the order
    /// before it and says why in the report.
    ///
    /// # Errors
    /// Only what prevents the first stage: tantivy errors, invalid options.
    fn search_reranked(
        &self,
        query: &RerankQuery,
        reranker: &Reranker,
        options: &SearchOptions,
    ) -> crate::Result<SearchResults>;
}

impl SearchReranked for Searcher {
    fn search_reranked(
        &self,
        query: &RerankQuery,
        reranker: &Reranker,
        options: &SearchOptions,
    ) -> crate::Result<SearchResults> {
        let start = Instant::now();
        options.validate()?;
        let rerank = options.rerank().clone().with_started_at(start);
        let docs = usize::try_from(self.num_docs()).unwrap_or(usize::MAX);
        let fetch = rerank
            .candidates()
            .max(options.offset() + options.limit())
            .min(docs)
            .max(1);
        let fields = query.fields();
        // tantivy can panic on a damaged index: every call into it is guarded, so the
        // panic becomes an error here instead of crossing the library's API.
        let candidates = guarded(|| {
            let top = self.search(query.query(), &TopDocs::with_limit(fetch).order_by_score())?;
            let mut candidates = Vec::with_capacity(top.len());
            for (score, address) in top {
                let doc: TantivyDocument = self.doc(address)?;
                candidates.push(Candidate::with_handle(
                    address,
                    fields.passage(&doc, address),
                    score,
                ));
            }
            Ok(candidates)
        })?;
        // Stages catch their own panics (the stage fails, the order before it stays).
        let results = guarded(|| Ok(reranker.rerank(query.text(), candidates, &rerank)?))?;
        let total = results.hits.len();
        let page: Vec<RerankedHit<DocAddress>> = results
            .hits
            .into_iter()
            .skip(options.offset())
            .take(options.limit())
            .collect();
        let generators = match options.snippet_chars() {
            None => Vec::new(),
            Some(chars) => fields
                .text()
                .iter()
                .map(|&f| {
                    let mut g = SnippetGenerator::create(self, query.query(), f)?;
                    g.set_max_num_chars(chars);
                    Ok(g)
                })
                .collect::<crate::Result<Vec<_>>>()?,
        };
        let hits = guarded(|| snippets(self, page, &generators))?;
        Ok(SearchResults {
            hits,
            total,
            report: results.report,
        })
    }
}

/// Runs `f`, turning a panic under it into [`Error::Panicked`](crate::Error::Panicked).
fn guarded<T>(f: impl FnOnce() -> crate::Result<T>) -> crate::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(crate::Error::Panicked(crate::error::panic_message(
            payload.as_ref(),
        )))
    })
}

/// The page's hits, each with its snippet when `generators` are given.
fn snippets(
    searcher: &Searcher,
    page: Vec<RerankedHit<DocAddress>>,
    generators: &[SnippetGenerator],
) -> crate::Result<Vec<SearchHit>> {
    let mut hits = Vec::with_capacity(page.len());
    {
        for hit in page {
            let snippet = if generators.is_empty() {
                None
            } else {
                let doc: TantivyDocument = searcher.doc(hit.handle)?;
                // The first text field whose snippet holds a query term, else the first.
                let snippets: Vec<_> = generators
                    .iter()
                    .map(|g| g.snippet_from_doc(&doc))
                    .collect();
                snippets
                    .iter()
                    .find(|s| !s.highlighted().is_empty())
                    .or(snippets.first())
                    .map(|s| s.to_html())
            };
            hits.push(SearchHit { hit, snippet });
        }
    }
    Ok(hits)
}
