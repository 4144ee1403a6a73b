//! # Rerank a list of texts, no search engine in sight
//!
//! The texts can come from anywhere: another engine, a vector store, an HTTP request.
//! `Reranker::rank` takes them as plain strings (or passages with titles) and returns
//! them best first, each with its input index, its raw score and a relevance in
//! [0, 1], the way Cohere's, Jina's and TEI's rerank APIs do. Long texts can be split
//! into overlapping windows, scored each, the best kept (MaxP).
//!
//! ```text
//! bash scripts/fetch-model.sh
//! cargo run --release --example rerank_texts -- "How do I share data between threads?"
//! ```

use dear::{Chunking, DearSetup, RerankOptions, Stages};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let query = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "How do I share data between threads?".to_string());
    // Say, the hits of a vector search, in its order.
    let documents: Vec<String> = vec![
        "Cargo builds your code and downloads its dependencies.".into(),
        "Channels send values from one thread to another.".into(),
        "An Arc<Mutex<T>> lets several threads share and mutate one value.".into(),
        "Iterators produce values lazily; map and filter adapt them.".into(),
        "Rc counts references within one thread; it is not Send.".into(),
    ];

    // The pointwise stage of the default model (add `.with_pointwise_adapter(..)` and
    // `.with_listwise_adapter(..)` on a DeAR base for the real thing).
    let reranker = DearSetup::default_model()
        .with_stages(Stages {
            pointwise: true,
            listwise: false,
        })
        .build()?;
    let options = RerankOptions::default()
        .with_top_n(3)
        .with_chunking(Chunking::max_p())
        .with_return_documents(true);
    let ranking = reranker.rank(&query, &documents, &options)?;

    println!("{query}\n");
    for r in &ranking.results {
        println!(
            "#{} relevance {:.3} (score {:+.3}, placed by {}): {}",
            r.index,
            r.relevance_score,
            r.score,
            r.placed_by,
            r.document.as_ref().map_or("", |d| d.text.as_str())
        );
    }
    for (stage, why) in ranking.report.failures() {
        eprintln!(
            "{stage} failed ({}), the order before it was kept: {why}",
            why.kind()
        );
    }
    Ok(())
}
