//! # Reranked passages as an LLM's context, under a token budget
//!
//! Indexes the bundled corpus (passages of *The Rust Programming Language*, see
//! `data/rust-book/README.md`), reranks the BM25 hits for a question with the
//! pointwise stage, packs the best passages into a prompt until a token budget is
//! spent (counted with the model's own tokenizer, never cutting a passage in half),
//! and lets the default model answer from that context.
//!
//! ```text
//! bash scripts/fetch-model.sh
//! cargo run --release --example rag_context -- "What does the question mark operator do?" 600
//! ```

use std::path::Path;

use dear::dear_core::GenerateOptions;
use dear::{corpus, DearSetup, PassageIndex, RerankOptions, SearchOptions, SearchReranked, Stages};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let question = args
        .next()
        .unwrap_or_else(|| "What does the question mark operator do?".to_string());
    let budget: usize = args.next().map(|b| b.parse()).transpose()?.unwrap_or(600);

    let index = PassageIndex::create_in_ram()?;
    let mut writer = index.writer()?;
    let corpus_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/rust-book/corpus.jsonl");
    let mut failure = None;
    corpus::read_beir_corpus(&corpus_file, |p| {
        if let Err(e) = writer.upsert(&p) {
            failure.get_or_insert(e);
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    writer.commit()?;

    // One model for both jobs: the pointwise stage and the answer.
    let setup = DearSetup::default_model().with_stages(Stages {
        pointwise: true,
        listwise: false,
    });
    let lm = setup.load_model()?;
    let reranker = setup.build_on(lm.clone())?;
    let options = SearchOptions::new(20).with_rerank(RerankOptions::default().with_candidates(20));
    let results =
        index
            .searcher()
            .search_reranked(&index.query(&question)?, &reranker, &options)?;
    for (stage, why) in results.report.failures() {
        eprintln!("{stage} failed, earlier order kept: {why}");
    }

    // Pack whole passages, best first, while they fit.
    let tokenizer = lm.tokenizer();
    let mut context = String::new();
    let mut used = 0;
    let mut sources = Vec::new();
    for hit in &results.hits {
        let block = format!(
            "[{}] {}\n{}\n\n",
            sources.len() + 1,
            hit.passage.title.as_deref().unwrap_or(""),
            hit.passage.text
        );
        let cost = tokenizer.encode(&block, false)?.len();
        if used + cost > budget {
            continue;
        }
        used += cost;
        context.push_str(&block);
        sources.push(hit.id().to_string());
    }
    println!(
        "context: {} passages, {used} of {budget} tokens: {sources:?}\n",
        sources.len()
    );

    let prompt = lm.chat_prompt(&format!(
        "Answer the question using only the context.\n\nContext:\n{context}Question: {question}"
    ))?;
    let answer = lm.generate(
        &prompt,
        &GenerateOptions::default().with_max_new_tokens(96),
        &mut |_| true,
    )?;
    println!("{}", tokenizer.decode(&answer.tokens, true)?.trim());
    Ok(())
}
