//! A tantivy index as the first stage of dear-core's dataset evaluation.

use dear_core::eval::FirstStage;
use dear_core::Candidate;
use tantivy::collector::TopDocs;
use tantivy::TantivyDocument;

use crate::PassageIndex;

/// BM25 over a [`PassageIndex`] (bag-of-words queries) as the first stage of
/// [`evaluate_dataset`](dear_core::eval::evaluate_dataset).
///
/// # Example
/// ```no_run
/// use dear_tantivy::dear_core::eval::{evaluate_dataset, Dataset};
/// use dear_tantivy::dear_core::{Reranker, RerankOptions, Stages};
/// use dear_tantivy::{IndexFirstStage, PassageIndex};
/// let dataset = Dataset::open("data/scifact", "test")?;
/// let index = PassageIndex::create_in_ram()?;
/// let mut writer = index.writer()?;
/// let mut failed = None;
/// dataset.read_corpus(|p| if let Err(e) = writer.upsert(&p) { failed = Some(e) })?;
/// writer.commit()?;
/// let options = RerankOptions::default().with_stages(Stages::FIRST);
/// let report = evaluate_dataset(&dataset, &IndexFirstStage(&index), &Reranker::new(), &options, &mut |_| {})?;
/// println!("{:?}", report.stages);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct IndexFirstStage<'a>(pub &'a PassageIndex);

impl FirstStage for IndexFirstStage<'_> {
    fn candidates(&self, _: &str, query: &str, k: usize) -> dear_core::Result<Vec<Candidate>> {
        let wrap = |e: crate::Error| dear_core::Error::FirstStage(format!("BM25: {e}"));
        let q = self.0.query(query).map_err(wrap)?;
        let searcher = self.0.searcher();
        let top = searcher
            .search(q.query(), &TopDocs::with_limit(k.max(1)).order_by_score())
            .map_err(|e| wrap(e.into()))?;
        let mut out = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address).map_err(|e| wrap(e.into()))?;
            out.push(Candidate::new(q.fields().passage(&doc, address), score));
        }
        Ok(out)
    }
}
