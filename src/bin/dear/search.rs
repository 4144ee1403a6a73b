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

