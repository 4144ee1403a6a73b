//! `dear index`, `dear search` and `dear eval`: the tantivy pipeline from the shell.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use dear::dear_core::{
    AdapterMode, Head, LanguageModel, ListwiseConfig, ListwiseReranker, Passage, PointwiseConfig,
    Reranker,
};
use dear::dear_tantivy::eval::{evaluate, Qrels, QueryMetrics, Run};
use dear::dear_tantivy::{
    corpus, Candidate, DearReranker, PassageIndex, RerankOptions, RerankedHit, RerankedResults,
    SearchReranked, Stage, StageStatus, Stages,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::{id_column_width, one_line, HeadChoice, ModeChoice, ModelArgs};

/// The model and reranking flags `search` and `eval` share.
#[derive(Args, Debug)]
pub struct PipelineArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A pointwise LoRA adapter (SEQ_CLS, e.g. DeAR's `dear-8b-reranker-ranknet-lora-v1`),
    /// loaded unmerged next to --listwise-adapter on the same base.
    #[arg(long)]
    pointwise_adapter: Option<String>,
    /// A listwise LoRA adapter (CAUSAL_LM), loaded unmerged on the same base.
    #[arg(long)]
    listwise_adapter: Option<String>,
    /// How pointwise scores are read: auto (the classifier when there is a `score`
    /// head, else yes/no), classifier or yes-no.
    #[arg(long, value_enum, default_value_t = HeadChoice::Auto)]
    head: HeadChoice,
    /// The stages to run: bm25 plus any of pointwise, listwise (comma-separated).
    #[arg(long, default_value = "bm25,pointwise,listwise")]
    stages: Stages,
    /// BM25 candidates, all scored pointwise.
    #[arg(long, default_value_t = 100)]
    candidates: usize,
    /// How many of the top candidates the listwise stage reorders.
    #[arg(long, default_value_t = 20)]
    listwise_top: usize,
    /// Listwise window size.
    #[arg(long, default_value_t = 20)]
    window: usize,
    /// Listwise window step.
    #[arg(long, default_value_t = 10)]
    step: usize,
    /// How listwise windows are ranked.
    #[arg(long, value_enum, default_value_t = ModeChoice::Generate)]
    mode: ModeChoice,
    /// Cut every passage to this many tokens before the model stages read it.
    #[arg(long)]
    max_passage_tokens: Option<usize>,
    /// Time budget per query in seconds; a stage still running then keeps the order
    /// before it.
    #[arg(long)]
    timeout: Option<f64>,
}

impl PipelineArgs {
    fn options(&self) -> anyhow::Result<RerankOptions> {
        let mut o = RerankOptions::default()
            .with_candidates(self.candidates)
            .with_listwise_depth(self.listwise_top)
            .with_window(self.window, self.step)
            .with_stages(self.stages)
            .with_listwise_mode(self.mode.into());
        if let Some(n) = self.max_passage_tokens {
            o = o.with_max_passage_tokens(n);
        }
        if let Some(t) = self.timeout {
            if !(t.is_finite() && t > 0.0) {
                bail!("--timeout must be a positive number of seconds, not {t}");
            }
            o = o.with_timeout(Duration::from_secs_f64(t));
        }
        o.validate()?;
        Ok(o)
    }

    /// The reranker the flags describe; no model is loaded for BM25 alone.
    fn reranker(&self) -> anyhow::Result<DearReranker> {
        let stages = self.stages;
        if !stages.pointwise && !stages.listwise {
            return Ok(DearReranker::new());
        }
        let spec = self.model.spec()?;
        let mut load = self.model.options();
        if let Some(a) = &self.model.adapter {
            load = load.with_adapter(a.clone(), AdapterMode::Merged);
        }
        if let Some(a) = &self.pointwise_adapter {
            load = load.with_named_adapter("pointwise", a.clone(), AdapterMode::Unmerged);
        }
        if let Some(a) = &self.listwise_adapter {
            load = load.with_named_adapter("listwise", a.clone(), AdapterMode::Unmerged);
        }
        let started = Instant::now();
        let lm = Arc::new(
            LanguageModel::load(&spec, &load).with_context(|| format!("loading model {spec}"))?,
        );
        eprintln!(
            "model: {} ({:.1} s to load)",
            lm.source(),
            started.elapsed().as_secs_f64()
        );
        let mut reranker = DearReranker::new();
        if stages.pointwise {
            let adapter = self.pointwise_adapter.as_ref().map(|_| "pointwise");
            let has_head = lm
                .llama()
                .score_labels(lm.llama().adapter_named(adapter)?)
                .is_some();
            let head = match self.head {
                HeadChoice::Classifier => Head::Classifier,
                HeadChoice::YesNo => Head::default_yes_no(),
                HeadChoice::Auto if has_head => Head::Classifier,
                HeadChoice::Auto => Head::default_yes_no(),
            };
            let config = PointwiseConfig {
                head,
                ..PointwiseConfig::classifier()
            };
            reranker = reranker.with_pointwise(Reranker::new(lm.clone(), adapter, config)?);
        }
        if stages.listwise {
            let adapter = self.listwise_adapter.as_ref().map(|_| "listwise");
            let config = ListwiseConfig {
                mode: self.mode.into(),
                ..ListwiseConfig::default()
            };
            reranker = reranker.with_listwise(ListwiseReranker::new(lm, adapter, config)?);
        }
        Ok(reranker)
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}} < {{eta_precise}}] {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

// ---------------------------------------------------------------- index

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// A BEIR corpus: one {"_id", "title"?, "text"} object per line.
    #[arg(long, conflicts_with = "dir", required_unless_present = "dir")]
    corpus: Option<PathBuf>,
    /// A folder: every .txt and .md file under it, split into passages of paragraphs.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The index folder (created if missing; documents with an id already there are
    /// replaced).
    #[arg(long)]
    index: PathBuf,
}

struct IndexSummary {
    added: usize,
    replaced: usize,
    total: u64,
    elapsed: Duration,
}

/// Adds the documents of `corpus`/`dir` to `index`.
fn fill_index(
    index: &PassageIndex,
    corpus_file: Option<&Path>,
    dir: Option<&Path>,
    bar: &ProgressBar,
) -> anyhow::Result<IndexSummary> {
    let started = Instant::now();
    let mut writer = index.writer()?;
    let (mut added, mut replaced) = (0, 0);
    let mut failure: Option<anyhow::Error> = None;
    let mut add = |p: Passage| {
        if failure.is_some() {
            return;
        }
        match writer.upsert(&p) {
            Ok(true) => replaced += 1,
            Ok(false) => added += 1,
            Err(e) => failure = Some(e.into()),
        }
        bar.inc(1);
    };
    match (corpus_file, dir) {
        (Some(file), _) => corpus::read_beir_corpus(file, &mut add)?,
        (None, Some(dir)) => corpus::read_text_folder(dir, &mut add)?,
        (None, None) => bail!("give --corpus FILE.jsonl or --dir FOLDER"),
    }
    if let Some(e) = failure {
        return Err(e);
    }
    writer.commit()?;
    Ok(IndexSummary {
        added,
        replaced,
        total: index.num_docs(),
        elapsed: started.elapsed(),
    })
}

pub fn index(args: &IndexArgs) -> anyhow::Result<()> {
    let index = PassageIndex::open_or_create(&args.index)
        .with_context(|| format!("opening the index at {}", args.index.display()))?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("indexing {spinner} {pos} passages [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let s = fill_index(&index, args.corpus.as_deref(), args.dir.as_deref(), &bar)?;
    bar.finish_and_clear();
    println!(
        "indexed {} passages ({} new, {} replaced) in {:.1} s; {} documents in {}",
        s.added + s.replaced,
        s.added,
        s.replaced,
        s.elapsed.as_secs_f64(),
        s.total,
        args.index.display()
    );
    Ok(())
}

// ---------------------------------------------------------------- search

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// The index folder (see `dear index`).
    #[arg(long)]
    index: PathBuf,
    /// Results shown.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Print {"hits": [...], "report": {...}} instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The query (plain words; no query syntax).
    query: String,
}

pub fn search(args: &SearchArgs) -> anyhow::Result<()> {
    let index = PassageIndex::open(&args.index)?;
    let options = args.pipeline.options()?;
    let reranker = args.pipeline.reranker()?;
    let query = index.query(&args.query)?;
    let results = index
        .searcher()
        .search_reranked(&query, &reranker, &options)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let shown = RerankedResults {
            hits: results.hits.iter().take(args.top_k).cloned().collect(),
            report: results.report.clone(),
        };
        serde_json::to_writer(&mut out, &shown)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut bm25: Vec<&RerankedHit> = results.hits.iter().collect();
    bm25.sort_by_key(|h| h.bm25_rank);
    writeln!(out, "BM25 top {}:", args.top_k.min(bm25.len()))?;
    for h in bm25.iter().take(args.top_k) {
        writeln!(
            out,
            "{:>4}  {:<46}  {}",
            h.bm25_rank,
            h.id(),
            one_line(&h.passage.text, 70)
        )?;
    }
    writeln!(out, "\nreranked ({}):", args.pipeline.stages)?;
    print_table(
        &mut out,
        &results.hits[..results.hits.len().min(args.top_k)],
    )?;
    writeln!(out)?;
    print_report(&mut out, &results)?;
    Ok(())
}

pub(crate) fn print_table(out: &mut impl Write, hits: &[RerankedHit]) -> anyhow::Result<()> {
    if hits.is_empty() {
        writeln!(out, "no results")?;
        return Ok(());
    }
    let idw = id_column_width(hits.iter().map(|h| h.passage.id.as_deref()), 40);
    writeln!(
        out,
        "{:>4}  {:<idw$}  {:>11}  {:>7}  {:>9}  {:<9}  {:<40}  text",
        "rank", "id", "bm25→final", "bm25", "pointwise", "placed by", "title"
    )?;
    for h in hits {
        let pw = h
            .pointwise_score
            .map_or_else(|| "-".to_string(), |s| format!("{s:.3}"));
        let moved = format!("{:>4} → {:<4}", h.bm25_rank, h.final_rank);
        writeln!(
            out,
            "{:>4}  {:<idw$}  {moved:>11}  {:>7.3}  {pw:>9}  {:<9}  {:<40}  {}",
            h.final_rank,
            h.id(),
            h.bm25_score,
            h.placed_by.name(),
            one_line(h.passage.title.as_deref().unwrap_or("-"), 40),
            one_line(&h.passage.text, 50)
        )?;
    }
    Ok(())
}

pub(crate) fn print_report(out: &mut impl Write, results: &RerankedResults) -> anyhow::Result<()> {
    for s in &results.report.stages {
        let status = match &s.status {
            StageStatus::Completed => "ok".to_string(),
            StageStatus::Skipped(why) => format!("skipped ({why})"),
            StageStatus::Failed(why) => format!("FAILED, previous order kept: {why}"),
        };
        let mut line = format!(
            "{:<9} {:>7.2} s  {:>3} passages",
            s.stage.name(),
            s.elapsed.as_secs_f64(),
            s.passages
        );
        if s.tokens > 0 {
            line.push_str(&format!(
                "  {:>6} tokens ({:.0} tokens/s)",
                s.tokens,
                s.tokens as f64 / s.elapsed.as_secs_f64().max(1e-9)
            ));
        }
        if s.cached > 0 {
            line.push_str(&format!("  {} cached", s.cached));
        }
        writeln!(out, "{line}  {status}")?;
        for note in &s.notes {
            writeln!(out, "          note: {note}")?;
        }
    }
    writeln!(
        out,
        "total     {:>7.2} s",
        results.report.total.as_secs_f64()
    )?;
    Ok(())
}

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
