//! `dear eval`: a BEIR dataset through a first stage (tantivy BM25, or a given TREC
//! run) and the pipeline, with trec_eval's metrics per stage: flag parsing and
//! printing around [`evaluate_dataset`].

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use dear::dear_core::eval::{evaluate_dataset, Dataset, FirstStage, RunFirstStage};
use dear::dear_tantivy::{IndexFirstStage, PassageIndex};
use indicatif::ProgressBar;

use crate::pipeline::{progress, PipelineArgs};
use crate::search::fill_index;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A BEIR dataset folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.
    #[arg(long)]
    dataset: PathBuf,
    /// The judgments evaluated against (qrels/<split>.tsv).
    #[arg(long, default_value = "test")]
    split: String,
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
    /// Print {"stages": {"first": {"ndcg@10", "mrr@10", "recall@100", "seconds_per_query",
    /// "failures"}, "pointwise": …}, "queries": n}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let mut dataset = Dataset::open(&args.dataset, &args.split)?;
    if let Some(n) = args.queries {
        dataset = dataset.with_query_limit(n);
    }
    let name = dataset.name();
    let options = args.pipeline.options()?;
    let reranker = args.pipeline.reranker()?;

    // The first stage: a given run with the corpus in memory, or an index.
    let run_stage = match &args.run {
        Some(path) => Some(RunFirstStage::new(path, &dataset)?),
        None => None,
    };
    let index = match (&run_stage, &args.index) {
        (Some(_), _) => None,
        (None, Some(dir)) => Some(PassageIndex::open_or_create(dir)?),
        (None, None) => Some(PassageIndex::create_in_ram()?),
    };
    if let Some(index) = index.as_ref().filter(|i| i.num_docs() == 0) {
        let bar = ProgressBar::new_spinner();
        let s = fill_index(index, Some(&dataset.corpus_path()), None, &bar)?;
        bar.finish_and_clear();
        eprintln!(
            "indexed {} passages in {:.1} s",
            s.total,
            s.elapsed.as_secs_f64()
        );
    }
    let index_stage = index.as_ref().map(IndexFirstStage);
    let first: &dyn FirstStage = match (&run_stage, &index_stage) {
        (Some(run), _) => run,
        (None, Some(index)) => index,
        (None, None) => bail!("no first stage"),
    };

    let bar = progress(dataset.queries().len() as u64, "queries");
    let report = evaluate_dataset(&dataset, first, &reranker, &options, &mut |done| {
        for s in &done.results.report.stages {
            if let Some(f) = s.failure() {
                bar.println(format!("query {}: {} failed: {f}", done.query_id, s.stage));
            }
        }
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    if let Some(missing) = run_stage
        .as_ref()
        .map(|r| r.missing_docs())
        .filter(|&m| m > 0)
    {
        eprintln!("warning: {missing} documents of the run are not in corpus.jsonl (skipped)");
    }

    std::fs::create_dir_all(&args.runs_dir)
        .with_context(|| format!("creating {}", args.runs_dir.display()))?;
    for (stage, e) in &report.stages {
        let path = args.runs_dir.join(format!("{name}.{}.trec", stage.name()));
        e.run
            .write_trec_path(&path, &format!("dear-{}", stage.name()))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let stages_json: serde_json::Map<String, serde_json::Value> = report
            .stages
            .iter()
            .map(|(s, e)| {
                (
                    s.name().to_string(),
                    serde_json::json!({
                        "ndcg@10": e.metrics.ndcg_at_10,
                        "mrr@10": e.metrics.mrr_at_10,
                        "recall@100": e.metrics.recall_at_100,
                        "seconds_per_query": e.seconds_per_query,
                        "failures": e.failures.len(),
                    }),
                )
            })
            .collect();
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"stages": stages_json, "queries": report.queries}),
        )?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{name}: {} queries", report.queries)?;
    writeln!(
        out,
        "{:<9}  {:>7}  {:>7}  {:>10}  {:>9}  {:>8}",
        "stage", "nDCG@10", "MRR@10", "Recall@100", "s/query", "failures"
    )?;
    for (s, e) in &report.stages {
        writeln!(
            out,
            "{:<9}  {:>7.4}  {:>7.4}  {:>10.4}  {:>9.2}  {:>8}",
            s.name(),
            e.metrics.ndcg_at_10,
            e.metrics.mrr_at_10,
            e.metrics.recall_at_100,
            e.seconds_per_query,
            e.failures.len()
        )?;
    }
    writeln!(out, "runs written to {}", args.runs_dir.display())?;
    Ok(())
}
