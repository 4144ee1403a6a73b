//! # Comparing listwise modes
//!
//! Speed and quality of free generation, constrained decoding and first-token
//! (FIRST) ranking with a causal LM (by default SmolLM2-135M-Instruct) on a judged
//! BEIR-layout collection: for each query, one rankllm window over the BM25 top 20
//! (the in-memory BM25 of `common/`); prints nDCG@10 of BM25 and of each mode, the
//! seconds per window, and how many windows gave no parseable id.
//!
//! ```text
//! cargo run --release -p dear-core --example listwise_modes -- ../shared/data/scifact 8
//! ```

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{Collection, Res};
use dear_core::{
    LanguageModel, ListwiseConfig, ListwiseMode, ListwiseOptions, ListwiseRanker, LoadOptions,
    Query,
};

fn main() -> Res<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("../shared/data/scifact".into()),
    );
    let n: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(8);
    let c = Collection::load(&dir)?;
    let lm = Arc::new(LanguageModel::load(
        dear_core::default_model_path(),
        &LoadOptions::default(),
    )?);
    let queries: Vec<_> = c.queries.iter().take(n).collect();
    let pools: Vec<Vec<usize>> = queries.iter().map(|(_, t)| c.bm25(t, 20)).collect();
    let bm25: f64 = queries
        .iter()
        .zip(&pools)
        .map(|((q, _), p)| c.ndcg10(q, p))
        .sum::<f64>();
    println!(
        "{} queries of {}, one window over the BM25 top 20",
        queries.len(),
        dir.display()
    );
    println!("{:<12} nDCG@10 {:.4}", "BM25", bm25 / queries.len() as f64);
    for mode in [
        ListwiseMode::FirstToken,
        ListwiseMode::Constrained,
        ListwiseMode::Generate,
    ] {
        let cfg = ListwiseConfig {
            mode,
            max_new_tokens: 128,
            ..ListwiseConfig::default()
        };
        let r = ListwiseRanker::new(lm.clone(), None, cfg)?;
        let (mut sum, mut unparsed, mut generated) = (0.0, 0, 0);
        let started = Instant::now();
        for ((qid, text), pool) in queries.iter().zip(&pools) {
            let passages: Vec<_> = pool.iter().map(|&i| c.passage(i)).collect();
            let out = r.rank(
                &Query::new(text.clone()),
                &passages,
                &ListwiseOptions::default(),
            )?;
            unparsed += out.windows.iter().filter(|w| w.parsed_ids == 0).count();
            generated += out
                .windows
                .iter()
                .map(|w| w.generated_tokens)
                .sum::<usize>();
            let ranked: Vec<usize> = out.order.iter().map(|&k| pool[k]).collect();
            sum += c.ndcg10(qid, &ranked);
        }
        let secs = started.elapsed().as_secs_f64() / queries.len() as f64;
        println!(
            "{:<12} nDCG@10 {:.4}   {secs:.1} s per window, {:.0} tokens generated per window, {unparsed} windows without a parseable id",
            format!("{mode:?}"),
            sum / queries.len() as f64,
            generated as f64 / queries.len() as f64
        );
    }
    Ok(())
}
