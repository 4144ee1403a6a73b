//! `dear eval`: a BEIR dataset or a TREC run through the pipeline, with trec_eval's
//! metrics per stage.

// ---------------------------------------------------------------- eval

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A BEIR dataset folder: corpus.jsonl, queries.jsonl, qrels/test.tsv.
    #[arg(long)]
    dataset: PathBuf,
    /// An index folder to use (built there from the corpus if it has none) [default:
    /// a fresh index in RAM].
    #[arg(long, conflicts_with = "run")]
    index: Option<PathBuf>,
    /// Rerank this first-stage TREC run instead of searching (DeAR's way: its top
    /// --candidates per query, passages from corpus.jsonl).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Evaluate the first N judged queries (queries.jsonl order) [default: all].
    #[arg(long)]
    queries: Option<usize>,
    /// Folder for the TREC run of each stage (<dataset>.<stage>.trec).
    #[arg(long, default_value = "eval-runs")]
    runs_dir: PathBuf,
    /// Print {"stages": {"bm25": {"ndcg@10", "mrr@10", "recall@100"}, ...}, "queries": n}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

/// The order each stage left: hits sorted by the rank that stage gave (stages that did
/// not complete leave the order before them).
fn stage_order(hits: &[RerankedHit], stage: Stage) -> Vec<&RerankedHit> {
    let mut v: Vec<&RerankedHit> = hits.iter().collect();
    match stage {
        Stage::Bm25 => v.sort_by_key(|h| h.bm25_rank),
        Stage::Pointwise => {
            v.sort_by_key(|h| (h.pointwise_rank.unwrap_or(usize::MAX), h.bm25_rank))
        }
        Stage::Listwise => v.sort_by_key(|h| h.final_rank),
    }
    v
}

/// A ranked list with scores trec_eval sorts back into the same order.
fn ranked(hits: &[&RerankedHit]) -> Vec<(String, f64)> {
    let n = hits.len();
    hits.iter()
        .enumerate()
        .map(|(r, h)| (h.id().to_string(), (n - r) as f64))
        .collect()
}

pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let ds = &args.dataset;
    let name = ds.file_name().map_or_else(
        || "dataset".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let qrels = Qrels::from_path(ds.join("qrels/test.tsv"))?;
    let all_queries = corpus::read_beir_queries(&ds.join("queries.jsonl"))?;
    let mut queries: Vec<(String, String)> = all_queries
        .into_iter()
        .filter(|(id, _)| qrels.get(id).is_some())
        .collect();
    if let Some(n) = args.queries {
        queries.truncate(n);
    }
    if queries.is_empty() {
        bail!(
            "{}: no query of queries.jsonl is judged in qrels/test.tsv",
            ds.display()
        );
    }
    let options = args.pipeline.options()?;
    let stages = options.stages();
    let reranker = args.pipeline.reranker()?;

    // The first stage: an index, or a given run with the corpus in memory.
    enum First {
        Index(PassageIndex),
        Run(Run, HashMap<String, Passage>),
    }
    let first = match &args.run {
        Some(path) => {
            let run = Run::from_path(path)?;
            let mut docs = HashMap::new();
            corpus::read_beir_corpus(&ds.join("corpus.jsonl"), |p| {
                if let Some(id) = p.id.clone() {
                    docs.insert(id, p);
                }
            })?;
            First::Run(run, docs)
        }
        None => {
            let index = match &args.index {
                Some(dir) => PassageIndex::open_or_create(dir)?,
                None => PassageIndex::create_in_ram()?,
            };
            if index.num_docs() == 0 {
                let bar = ProgressBar::new_spinner();
                let s = fill_index(&index, Some(&ds.join("corpus.jsonl")), None, &bar)?;
                bar.finish_and_clear();
                eprintln!(
                    "indexed {} passages in {:.1} s",
                    s.total,
                    s.elapsed.as_secs_f64()
                );
            }
            First::Index(index)
        }
    };

    let shown: Vec<Stage> = [
        (Stage::Bm25, true),
        (Stage::Pointwise, stages.pointwise),
        (Stage::Listwise, stages.listwise),
    ]
    .into_iter()
    .filter_map(|(s, on)| on.then_some(s))
    .collect();
    let mut runs: BTreeMap<Stage, Run> = shown.iter().map(|&s| (s, Run::new())).collect();
    let mut time: BTreeMap<Stage, Duration> = BTreeMap::new();
    let mut failures: BTreeMap<Stage, usize> = BTreeMap::new();
    let mut missing_docs = 0usize;
    let bar = progress(queries.len() as u64, "queries");
    for (qid, text) in &queries {
        let results = match &first {
            First::Index(index) => {
                let query = index.query(text)?;
                index
                    .searcher()
                    .search_reranked(&query, &reranker, &options)?
            }
            First::Run(run, docs) => {
                let list = run.get(qid).unwrap_or(&[]);
                let ordered = dear::dear_tantivy::eval::trec_eval_order(list);
                let mut candidates = Vec::new();
                for (doc, score) in ordered.into_iter().take(options.candidates()) {
                    match docs.get(doc) {
                        Some(p) => candidates.push(Candidate {
                            address: None,
                            passage: p.clone(),
                            score: score as f32,
                        }),
                        None => missing_docs += 1,
                    }
                }
                reranker.rerank(text, candidates, &options)?
            }
        };
        for report in &results.report.stages {
            *time.entry(report.stage).or_default() += report.elapsed;
            if matches!(report.status, StageStatus::Failed(_)) {
                *failures.entry(report.stage).or_default() += 1;
                bar.println(format!(
                    "query {qid}: {} failed: {}",
                    report.stage,
                    report.failure().unwrap_or("")
                ));
            }
        }
        for (&stage, run) in runs.iter_mut() {
            run.insert(qid.clone(), ranked(&stage_order(&results.hits, stage)))?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if missing_docs > 0 {
        eprintln!("warning: {missing_docs} documents of the run are not in corpus.jsonl (skipped)");
    }

    std::fs::create_dir_all(&args.runs_dir)
        .with_context(|| format!("creating {}", args.runs_dir.display()))?;
    let n = queries.len();
    let mut metrics: BTreeMap<Stage, QueryMetrics> = BTreeMap::new();
    for (&stage, run) in &runs {
        let path = args.runs_dir.join(format!("{name}.{}.trec", stage.name()));
        run.write_trec_path(&path, &format!("dear-{}", stage.name()))?;
        metrics.insert(stage, evaluate(&qrels, run).mean);
    }
    let per_query = |s: Stage| time.get(&s).copied().unwrap_or_default().as_secs_f64() / n as f64;
    let mut out = std::io::stdout().lock();
    if args.json {
        let stages_json: serde_json::Map<String, serde_json::Value> = metrics
            .iter()
            .map(|(s, m)| {
                (
                    s.name().to_string(),
                    serde_json::json!({
                        "ndcg@10": m.ndcg_at_10,
                        "mrr@10": m.mrr_at_10,
                        "recall@100": m.recall_at_100,
                        "seconds_per_query": per_query(*s),
                        "failures": failures.get(s).copied().unwrap_or(0),
                    }),
                )
            })
            .collect();
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"stages": stages_json, "queries": n}),
        )?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{name}: {n} queries")?;
    writeln!(
        out,
        "{:<9}  {:>7}  {:>7}  {:>10}  {:>9}  {:>8}",
        "stage", "nDCG@10", "MRR@10", "Recall@100", "s/query", "failures"
    )?;
    for (s, m) in &metrics {
        writeln!(
            out,
            "{:<9}  {:>7.4}  {:>7.4}  {:>10.4}  {:>9.2}  {:>8}",
            s.name(),
            m.ndcg_at_10,
            m.mrr_at_10,
            m.recall_at_100,
            per_query(*s),
            failures.get(s).copied().unwrap_or(0)
        )?;
    }
    writeln!(out, "runs written to {}", args.runs_dir.display())?;
    Ok(())
}
