//! Shared by the measurement examples: a BEIR-layout collection, a plain in-memory
//! BM25 (k1 = 0.9, b = 0.4, lowercase alphanumeric word tokens) to draw candidates,
//! and nDCG@10 with graded gains (2^g − 1).

use std::collections::{HashMap, HashSet};

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

pub struct Doc {
    pub id: String,
    pub title: String,
    pub text: String,
}

pub struct Collection {
    pub docs: Vec<Doc>,
    /// (query id, text) of the judged queries, in file order.
    pub queries: Vec<(String, String)>,
    pub qrels: HashMap<String, HashMap<String, u32>>,
    doc_terms: Vec<HashMap<String, u32>>,
    lens: Vec<f64>,
    avg_len: f64,
    df: HashMap<String, u32>,
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

fn read_jsonl(path: &std::path::Path) -> Res<Vec<serde_json::Value>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

impl Collection {
    pub fn load(dir: &std::path::Path) -> Res<Self> {
        let docs: Vec<Doc> = read_jsonl(&dir.join("corpus.jsonl"))?
            .into_iter()
            .map(|v| Doc {
                id: v["_id"].as_str().unwrap_or_default().to_string(),
                title: v["title"].as_str().unwrap_or_default().to_string(),
                text: v["text"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
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
        let queries = read_jsonl(&dir.join("queries.jsonl"))?
            .into_iter()
            .filter_map(|q| {
                let id = q["_id"].as_str()?.to_string();
                let text = q["text"].as_str()?.to_string();
                qrels.contains_key(&id).then_some((id, text))
            })
            .collect();
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
        let avg_len = lens.iter().sum::<f64>() / lens.len().max(1) as f64;
        let mut df: HashMap<String, u32> = HashMap::new();
        for m in &doc_terms {
            for w in m.keys() {
                *df.entry(w.clone()).or_insert(0) += 1;
            }
        }
        Ok(Self {
            docs,
            queries,
            qrels,
            doc_terms,
            lens,
            avg_len,
            df,
        })
    }

    /// Indices of the `k` best documents for `query` by BM25.
    pub fn bm25(&self, query: &str, k: usize) -> Vec<usize> {
        let n = self.docs.len() as f64;
        let terms: HashSet<String> = words(query).into_iter().collect();
        let mut scored: Vec<(usize, f64)> = self
            .doc_terms
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = terms
                    .iter()
                    .filter_map(|t| {
                        let tf = *m.get(t)? as f64;
                        let d = *self.df.get(t)? as f64;
                        let idf = ((n - d + 0.5) / (d + 0.5) + 1.0).ln();
                        Some(
                            idf * tf * 1.9
                                / (tf + 0.9 * (1.0 - 0.4 + 0.4 * self.lens[i] / self.avg_len)),
                        )
                    })
                    .sum();
                (i, s)
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.into_iter().take(k).map(|(i, _)| i).collect()
    }

    /// nDCG@10 of a ranked list of document indices for a query.
    pub fn ndcg10(&self, qid: &str, ranked: &[usize]) -> f64 {
        let Some(rel) = self.qrels.get(qid) else {
            return 0.0;
        };
        let gain = |g: u32| 2f64.powf(g as f64) - 1.0;
        let dcg: f64 = ranked
            .iter()
            .take(10)
            .enumerate()
            .map(|(i, &d)| gain(*rel.get(&self.docs[d].id).unwrap_or(&0)) / ((i + 2) as f64).log2())
            .sum();
        let mut gains: Vec<u32> = rel.values().copied().filter(|g| *g > 0).collect();
        gains.sort_unstable_by(|a, b| b.cmp(a));
        let idcg: f64 = gains
            .iter()
            .take(10)
            .enumerate()
            .map(|(i, &g)| gain(g) / ((i + 2) as f64).log2())
            .sum();
        if idcg == 0.0 {
            0.0
        } else {
            dcg / idcg
        }
    }

    pub fn passage(&self, i: usize) -> dear_core::Passage {
        dear_core::Passage::new(self.docs[i].text.clone()).with_title(self.docs[i].title.clone())
    }
}
