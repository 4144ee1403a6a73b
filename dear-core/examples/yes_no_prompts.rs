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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use dear_core::{
    Head, LanguageModel, LoadOptions, Passage, PointwiseConfig, PointwiseScorer, Query,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

struct Doc {
    id: String,
    title: String,
    text: String,
}

fn read_jsonl(path: &std::path::Path) -> Res<Vec<serde_json::Value>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// nDCG@10 with graded gains (2^g - 1) over a ranked list of doc ids.
fn ndcg10(ranked: &[&str], rel: &HashMap<String, u32>) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, d)| {
            let g = *rel.get(*d).unwrap_or(&0) as f64;
            (2f64.powf(g) - 1.0) / ((i + 2) as f64).log2()
        })
        .sum();
    let mut gains: Vec<u32> = rel.values().copied().filter(|g| *g > 0).collect();
    gains.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = gains
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, g)| (2f64.powf(*g as f64) - 1.0) / ((i + 2) as f64).log2())
        .sum();
    if idcg == 0.0 {
        0.0
    } else {
        dcg / idcg
    }
}

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
    let docs: Vec<Doc> = read_jsonl(&dir.join("corpus.jsonl"))?
        .into_iter()
        .map(|v| Doc {
            id: v["_id"].as_str().unwrap_or_default().to_string(),
            title: v["title"].as_str().unwrap_or_default().to_string(),
            text: v["text"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    let queries = read_jsonl(&dir.join("queries.jsonl"))?;
    let mut qrels: HashMap<String, HashMap<String, u32>> = HashMap::new();
    for line in std::fs::read_to_string(dir.join("qrels/test.tsv"))?
        .lines()
        .skip(1)
    {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() == 3 {
            qrels
                .entry(f[0].to_string())
                .or_default()
                .insert(f[1].to_string(), f[2].trim().parse().unwrap_or(0));
        }
    }
    // BM25 index.
    let doc_terms: Vec<HashMap<String, u32>> = docs
        .iter()
        .map(|d| {
            let mut m = HashMap::new();
            for w in words(&format!("{} {}", d.title, d.text)) {
                *m.entry(w).or_insert(0) += 1;
            }
            m
        })
        .collect();
    let lens: Vec<f64> = doc_terms
        .iter()
        .map(|m| m.values().sum::<u32>() as f64)
        .collect();
    let avg = lens.iter().sum::<f64>() / lens.len() as f64;
    let mut df: HashMap<&str, u32> = HashMap::new();
    for m in &doc_terms {
        for w in m.keys() {
            *df.entry(w.as_str()).or_insert(0) += 1;
        }
    }
    let n = docs.len() as f64;
    let bm25 = |q: &str| -> Vec<usize> {
        let terms: HashSet<String> = words(q).into_iter().collect();
        let mut scored: Vec<(usize, f64)> = doc_terms
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = terms
                    .iter()
                    .filter_map(|t| {
                        let tf = *m.get(t)? as f64;
                        let d = *df.get(t.as_str())? as f64;
                        let idf = ((n - d + 0.5) / (d + 0.5) + 1.0).ln();
                        Some(idf * tf * 1.9 / (tf + 0.9 * (1.0 - 0.4 + 0.4 * lens[i] / avg)))
                    })
                    .sum();
                (i, s)
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.into_iter().take(20).map(|(i, _)| i).collect()
    };

    let lm = Arc::new(LanguageModel::load(
        &dear_core::default_model_path().to_string_lossy(),
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
    let judged: Vec<(String, String)> = queries
        .iter()
        .filter_map(|q| {
            let id = q["_id"].as_str()?.to_string();
            qrels
                .contains_key(&id)
                .then(|| (id, q["text"].as_str().unwrap_or_default().to_string()))
        })
        .take(n_queries)
        .collect();
    let mut bm25_sum = 0.0;
    let pools: Vec<Vec<usize>> = judged.iter().map(|(_, t)| bm25(t)).collect();
    for ((qid, _), pool) in judged.iter().zip(&pools) {
        let ids: Vec<&str> = pool.iter().map(|&i| docs[i].id.as_str()).collect();
        bm25_sum += ndcg10(&ids, &qrels[qid]);
    }
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
            let passages: Vec<Passage> = pool
                .iter()
                .map(|&i| Passage::new(docs[i].text.clone()).with_title(docs[i].title.clone()))
                .collect();
            let scores = scorer.score(&Query::new(text.clone()), &passages)?;
            passages_scored += passages.len();
            let mut order: Vec<usize> = (0..pool.len()).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
            let ids: Vec<&str> = order.iter().map(|&k| docs[pool[k]].id.as_str()).collect();
            sum += ndcg10(&ids, &qrels[qid]);
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
