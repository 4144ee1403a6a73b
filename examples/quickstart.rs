//! # Reranked search in thirty lines
//!
//! Builds an in-RAM tantivy index of a dozen documents, then runs one query through
//! BM25, the pointwise stage (the default model's yes/no judgement of each hit) and
//! the listwise stage (the model ordering the top 5 in one prompt), and prints where
//! each hit went.
//!
//! ```text
//! bash scripts/fetch-model.sh
//! cargo run --release --example quickstart -- "How do threads share data safely?"
//! ```

use dear::{DearSetup, Passage, PassageIndex, RerankOptions, SearchOptions, SearchReranked};

const DOCS: &[(&str, &str, &str)] = &[
    ("mutex", "Shared state", "A Mutex lets only one thread access data at a time; wrap it in an Arc to share it between threads."),
    ("channels", "Message passing", "Channels send values from one thread to another, so threads communicate by sending data instead of sharing memory."),
    ("send-sync", "Send and Sync", "Types that are Send can move to another thread; Sync types can be referenced from several threads at once."),
    ("spawn", "Creating threads", "thread::spawn runs a closure on a new thread; join waits for it to finish."),
    ("ownership", "Ownership", "Each value has one owner; when the owner goes out of scope the value is dropped."),
    ("borrowing", "References", "You can have either one mutable reference or any number of immutable references to data."),
    ("rc", "Reference counting", "Rc counts references to shared data in a single thread; it is not safe to share across threads."),
    ("box", "Box", "Box puts a value on the heap; use it for recursive types and large values."),
    ("result", "Errors", "Result carries either a value or an error; the ? operator returns the error early."),
    ("cargo", "Cargo", "Cargo builds your code, downloads dependencies and runs tests."),
    ("threads-data-race", "Data races", "A data race happens when threads access the same data at once and one writes; Rust rejects such code at compile time."),
    ("iterators", "Iterators", "Iterators produce a sequence of values lazily; map and filter adapt them."),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "How do threads share data safely?".to_string());

    // 1. An index (dear's schema: id, title, text with an English analyzer).
    let index = PassageIndex::create_in_ram()?;
    let mut writer = index.writer()?;
    for (id, title, text) in DOCS {
        writer.upsert(&Passage::new(*text).with_id(*id).with_title(*title))?;
    }
    writer.commit()?;

    // 2. A reranker: both stages on the default model, shared by any number of searches.
    let reranker = DearSetup::default_model().build()?;

    // 3. Search: BM25 top 12, pointwise over all of them, listwise over the top 5;
    //    the first page of 12.
    let options = SearchOptions::new(12).with_rerank(
        RerankOptions::default()
            .with_candidates(12)
            .with_listwise_depth(5)
            .with_window(5, 5),
    );
    let results =
        index
            .searcher()
            .search_reranked(&index.query(&question)?, &reranker, &options)?;

    println!("{question}\n");
    for hit in &results.hits {
        println!(
            "{:>2}. {:<18} BM25 #{:<2} pointwise {:>7}  placed by {}",
            hit.final_rank,
            hit.id(),
            hit.first_rank,
            hit.pointwise_score
                .map_or("-".into(), |s| format!("{s:.2}")),
            hit.placed_by
        );
    }
    for stage in &results.report.stages {
        println!(
            "{:<9} {:>6.2} s  {:?}",
            stage.stage,
            stage.elapsed.as_secs_f64(),
            stage.status
        );
    }
    Ok(())
}
