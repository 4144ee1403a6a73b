//! # Choosing the yes/no prompt
//!
//! Measures how well candidate yes/no prompts rank passages with a causal LM that has
//! no classification head (by default SmolLM2-135M-Instruct), on a judged BEIR-layout
//! collection. For each query, the candidates are the top 20 of a plain BM25 over the
//! collection (k1 = 0.9, b = 0.4, lowercase word tokens); the example prints nDCG@10 of
//! the BM25 order and of each prompt's order over those candidates, and the time taken.
//!
//! ```text
//! cargo run --release -p dear-core --example yes_no_prompts -- ../shared/data/scifact 30
//! ```

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{Collection, Res};
use dear_core::{Head, LanguageModel, LoadOptions, PointwiseConfig, PointwiseScorer, Query};

fn main() -> Res<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("../shared/data/scifact".into()),
    );
    let n_queries: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    let c = Collection::load(&dir)?;
    let lm = Arc::new(LanguageModel::load(
        dear_core::default_model_path(),
        &LoadOptions::default(),
    )?);
    let prompts: Vec<(&str, Head)> = vec![
        ("A: answer?", Head::default_yes_no()),
        (
            "B: relevant?",
            Head::YesNo {
                prompt: "Is the passage relevant to the search query?\nQuery: {query}\nPassage:\n{passage}\n\nAnswer yes or no.".into(),
                system: None,
                yes: "yes".into(),
                no: "no".into(),
            },
        ),
        (
            "C: judge system",
            Head::YesNo {
                prompt: "Query: {query}\nPassage:\n{passage}\n\nDoes the passage answer the query? Answer yes or no.".into(),
                system: Some("You are a search engine's relevance judge. You answer yes when a passage is relevant to a query and no otherwise.".into()),
                yes: "yes".into(),
                no: "no".into(),
            },
        ),
        (
            "D: Yes/No capitalised",
            Head::YesNo {
                prompt: "Query: {query}\nPassage:\n{passage}\n\nDoes the passage answer the query? Answer Yes or No.".into(),
                system: None,
                yes: "Yes".into(),
                no: "No".into(),
            },
        ),
    ];
    let judged: Vec<&(String, String)> = c.queries.iter().take(n_queries).collect();
    let pools: Vec<Vec<usize>> = judged.iter().map(|(_, t)| c.bm25(t, 20)).collect();
    let bm25_sum: f64 = judged
        .iter()
        .zip(&pools)
        .map(|((q, _), p)| c.ndcg10(q, p))
        .sum();
    println!(
        "{} queries of {}, 20 BM25 candidates each",
        judged.len(),
        dir.display()
    );
    println!(
        "{:<24} nDCG@10 {:.4}",
        "BM25",
        bm25_sum / judged.len() as f64
    );
    for (name, head) in prompts {
        let scorer = PointwiseScorer::new(
            lm.clone(),
            None,
            PointwiseConfig {
                head,
                ..PointwiseConfig::yes_no()
            },
        )?;
        let started = Instant::now();
        let mut sum = 0.0;
        let mut passages_scored = 0;
        for ((qid, text), pool) in judged.iter().zip(&pools) {
            let passages: Vec<_> = pool.iter().map(|&i| c.passage(i)).collect();
            let scores = scorer.score(&Query::new(text.clone()), &passages)?;
            passages_scored += passages.len();
            let mut order: Vec<usize> = (0..pool.len()).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
            let ranked: Vec<usize> = order.iter().map(|&k| pool[k]).collect();
            sum += c.ndcg10(qid, &ranked);
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{name:<24} nDCG@10 {:.4}   {:.1} s ({:.1} passages/s)",
            sum / judged.len() as f64,
            secs,
            passages_scored as f64 / secs
        );
    }
    Ok(())
}
