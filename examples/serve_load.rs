//! A bounded load generator for `dear serve` (and the same requests in process, for the
//! server's overhead): `--concurrency` clients send `--requests` rerank requests of
//! `--docs` documents each (queries and passages of a BEIR collection, every request its
//! own passages so that no cache answers), then it prints one JSON line: throughput,
//! latency percentiles and every status seen. It stops by itself.
//!
//! ```text
//! cargo run --release --example serve_load -- --url http://127.0.0.1:8080 --concurrency 8
//! cargo run --release --example serve_load -- --in-process --concurrency 8
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use dear::{DearSetup, RerankOptions, Stages};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
struct Args {
    /// The server (e.g. http://127.0.0.1:8080); with --in-process, not used.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The endpoint: /v2/rerank, /v1/rerank or /rerank (TEI).
    #[arg(long, default_value = "/v2/rerank")]
    endpoint: String,
    /// Clients sending at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 48)]
    requests: usize,
    /// Documents per request.
    #[arg(long, default_value_t = 25)]
    docs: usize,
    /// A BEIR folder (corpus.jsonl, queries.jsonl) the requests are made of.
    #[arg(long, default_value = "../shared/data/scifact")]
    dataset: PathBuf,
    /// Call the library in this process instead of a server (the default model and
    /// student, the pointwise stage alone: what the server runs for a rerank call).
    #[arg(long)]
    in_process: bool,
    /// Requests skipped at the start of the collection (to make runs use fresh passages).
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

struct Request {
    query: String,
    documents: Vec<String>,
}

fn lines(path: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn requests(args: &Args) -> anyhow::Result<Vec<Request>> {
    let queries = lines(&args.dataset.join("queries.jsonl"))?;
    let corpus = lines(&args.dataset.join("corpus.jsonl"))?;
    let need = (args.skip + args.requests) * args.docs;
    if corpus.len() < need || queries.is_empty() {
        anyhow::bail!(
            "{} has {} passages; {} requests of {} documents (after skipping {}) need {need}",
            args.dataset.display(),
            corpus.len(),
            args.requests,
            args.docs,
            args.skip
        );
    }
    Ok((args.skip..args.skip + args.requests)
        .map(|r| Request {
            query: queries[r % queries.len()]["text"]
                .as_str()
                .unwrap_or("query")
                .to_string(),
            documents: corpus[r * args.docs..(r + 1) * args.docs]
                .iter()
                .map(|d| d["text"].as_str().unwrap_or("").to_string())
                .collect(),
        })
        .collect())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.concurrency >= 1 && args.concurrency <= 1024,
        "--concurrency must be 1..=1024"
    );
    anyhow::ensure!(
        args.requests >= 1 && args.docs >= 1,
        "--requests and --docs must be positive"
    );
    let work = Arc::new(requests(&args)?);
    let reranker = if args.in_process {
        Some(Arc::new(DearSetup::default_model().build()?))
    } else {
        None
    };
    let options = RerankOptions::default().with_stages(Stages {
        pointwise: true,
        listwise: false,
    });
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(args.requests)));
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let started = Instant::now();
    let threads: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (work, next, latencies, statuses) =
                (work.clone(), next.clone(), latencies.clone(), statuses.clone());
            let reranker = reranker.clone();
            let options = options.clone();
            let url = format!("{}{}", args.url.trim_end_matches('/'), args.endpoint);
            let tei = args.endpoint == "/rerank";
            let timeout = Duration::from_secs_f64(args.timeout);
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(timeout)
                    .build()
                    .expect("an HTTP client");
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = work.get(i) else { break };
                    let t = Instant::now();
                    let status = match &reranker {
                        Some(r) => match r.rank(&req.query, &req.documents, &options) {
                            Ok(_) => "ok".to_string(),
                            Err(e) => format!("error: {e}"),
                        },
                        None => {
                            let body = if tei {
                                json!({"query": req.query, "texts": req.documents})
                            } else {
                                json!({"model": "dear", "query": req.query, "documents": req.documents})
                            };
                            match client.post(&url).json(&body).send() {
                                Ok(r) => {
                                    let code = r.status().as_u16();
                                    let _ = r.bytes();
                                    code.to_string()
                                }
                                Err(e) if e.is_timeout() => "timeout".to_string(),
                                Err(e) if e.is_connect() => "connect-error".to_string(),
                                Err(_) => "transport-error".to_string(),
                            }
                        }
                    };
                    let took = t.elapsed().as_secs_f64();
                    if let Ok(mut l) = latencies.lock() {
                        l.push(took);
                    }
                    if let Ok(mut s) = statuses.lock() {
                        *s.entry(status).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut l = latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    l.sort_by(f64::total_cmp);
    let statuses = statuses
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let ok = statuses.get("200").copied().unwrap_or(0) + statuses.get("ok").copied().unwrap_or(0);
    let out = json!({
        "mode": if args.in_process { "in-process" } else { "http" },
        "endpoint": args.endpoint,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "docs_per_request": args.docs,
        "ok": ok,
        "errors": args.requests - ok,
        "statuses": statuses,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "requests_per_s": ((args.requests as f64 / seconds) * 1000.0).round() / 1000.0,
        "docs_per_s": ((args.requests as f64 * args.docs as f64 / seconds) * 10.0).round() / 10.0,
        "p50_ms": (percentile(&l, 50.0) * 1000.0).round(),
        "p95_ms": (percentile(&l, 95.0) * 1000.0).round(),
        "p99_ms": (percentile(&l, 99.0) * 1000.0).round(),
    });
    println!("{out}");
    Ok(())
}
