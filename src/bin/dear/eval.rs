//! `dear eval`: a BEIR dataset through a first stage (tantivy BM25, or a given TREC
//! run) and the pipeline, with trec_eval's metrics per stage: flag parsing and
//! printing around [`evaluate_dataset`].

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use dear::dear_core::eval::{evaluate_dataset, Dataset, FirstStage, RunFirstStage};
use dear::dear_core::Fusion;
use dear::dear_tantivy::{corpus_fingerprint, IndexFirstStage, PassageIndex};
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
    /// Evaluate only the query ids listed in this file, one per line (e.g. the
    /// `dev-queries.txt` a `dear train` run held back; a `NAME/` prefix naming the
    /// dataset folder is dropped; ids the split does not judge are ignored).
    #[arg(long)]
    query_ids: Option<PathBuf>,
    /// After the run, print nDCG@10 of the pointwise order fused with BM25 at each
    /// interpolation weight 0, 0.1, ..., 1 and with RRF (k 60): a sweep costs no model
    /// call. Tune the weight on held-back training queries, never on the test split.
    #[arg(long)]
    fusion_sweep: bool,
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
    let name = dataset.name();
    if let Some(path) = &args.query_ids {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading query ids from {}", path.display()))?;
        let prefix = format!("{name}/");
        let ids: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| l.strip_prefix(&prefix).unwrap_or(l))
            .collect();
        dataset = dataset
            .with_query_ids(&ids)
            .with_context(|| format!("query ids from {}", path.display()))?;
    }
    if let Some(n) = args.queries {
        dataset = dataset.with_query_limit(n);
    }
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
    if let Some(index) = &index {
        // Metrics over an index of another corpus would be silently wrong: the index
        // must hold exactly this dataset's corpus (its fingerprint, every passage).
        let fingerprint = corpus_fingerprint(&dataset.corpus_path())?;
        let sources = index.sources()?;
        if index.num_docs() == 0
            || sources
                .corpora
                .iter()
                .any(|c| c.fingerprint == fingerprint && !c.complete)
        {
            let bar = ProgressBar::new_spinner();
            let s = fill_index(index, Some(&dataset.corpus_path()), None, 10_000, &bar)?;
            bar.finish_and_clear();
            eprintln!(
                "indexed {} passages in {:.1} s",
                s.total,
                s.elapsed.as_secs_f64()
            );
        }
        let sources = index.sources()?;
        if !sources.is_exactly(&fingerprint) {
            bail!(
                "the index at {} holds {sources}, not exactly {}'s corpus ({}, {fingerprint}): \
                 give an empty folder (dear eval builds the index there) or leave out --index",
                args.index
                    .as_deref()
                    .map_or_else(|| "RAM".into(), |p| p.display().to_string()),
                dataset.name(),
                dataset.corpus_path().display(),
            );
        }
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
    let sweep = if args.fusion_sweep {
        let mut fusions: Vec<Fusion> = (0..=10)
            .map(|w| Fusion::Interpolate {
                weight: w as f32 / 10.0,
            })
            .collect();
        fusions.push(Fusion::Rrf { k: 60.0 });
        let mut rows = Vec::new();
        for f in fusions {
            let (_, m) = report.with_fusion(dataset.qrels(), f)?;
            rows.push((f, m));
        }
        rows
    } else {
        Vec::new()
    };
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
        let mut json = serde_json::json!({"stages": stages_json, "queries": report.queries});
        if args.fusion_sweep {
            json["fusion_sweep"] = sweep
                .iter()
                .map(|(f, m)| {
                    serde_json::json!({"fusion": f.to_string(), "ndcg@10": m.ndcg_at_10, "mrr@10": m.mrr_at_10})
                })
                .collect();
        }
        serde_json::to_writer(&mut out, &json)?;
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
    if !sweep.is_empty() {
        writeln!(out, "pointwise fused with the first stage:")?;
        writeln!(out, "{:<16}  {:>7}  {:>7}", "fusion", "nDCG@10", "MRR@10")?;
        for (f, m) in &sweep {
            writeln!(
                out,
                "{:<16}  {:>7.4}  {:>7.4}",
                f.to_string(),
                m.ndcg_at_10,
                m.mrr_at_10
            )?;
        }
    }
    writeln!(out, "runs written to {}", args.runs_dir.display())?;
    Ok(())
}
