//! `dear index`, `dear search` and `dear eval`: the tantivy pipeline from the shell.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use dear::dear_core::{corpus, Passage, RerankReport, StageStatus};
use dear::dear_tantivy::tantivy::collector::TopDocs;
use dear::dear_tantivy::tantivy::TantivyDocument;
use dear::dear_tantivy::{
    corpus_fingerprint, PassageIndex, SearchHit, SearchOptions, SearchReranked, SearchResults,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::{id_cell, id_column_width};
use crate::pipeline::PipelineArgs;
use dear::dear_core::corpus::one_line;

// ---------------------------------------------------------------- index

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// A BEIR corpus: one {"_id", "title"?, "text"} object per line.
    #[arg(long, conflicts_with = "dir", required_unless_present_any = ["dir", "check"])]
    corpus: Option<PathBuf>,
    /// A folder: every .txt and .md file under it, split into passages of paragraphs.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The index folder (created if missing; documents with an id already there are
    /// replaced, so a rerun after an interruption completes the index).
    #[arg(long)]
    index: PathBuf,
    /// Commit every N passages: an interruption loses at most the last N, and the
    /// writer's memory stays bounded however large the corpus.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    commit_every: usize,
    /// Check the index instead of writing: every file's checksum and every stored
    /// document (exit 1 if anything is damaged).
    #[arg(long, conflicts_with_all = ["corpus", "dir"])]
    check: bool,
}

/// The most passages between two commits `--commit-every` accepts.
const MAX_COMMIT_EVERY: usize = 10_000_000;

pub(crate) struct IndexSummary {
    added: usize,
    replaced: usize,
    pub(crate) total: u64,
    pub(crate) elapsed: Duration,
}

/// Adds the documents of `corpus`/`dir` to `index`, committing every `commit_every`
/// passages; a corpus file is recorded in the index by its fingerprint (complete once
/// every passage is committed).
pub(crate) fn fill_index(
    index: &PassageIndex,
    corpus_file: Option<&Path>,
    dir: Option<&Path>,
    commit_every: usize,
    bar: &ProgressBar,
) -> anyhow::Result<IndexSummary> {
    if !(1..=MAX_COMMIT_EVERY).contains(&commit_every) {
        bail!("--commit-every must be between 1 and {MAX_COMMIT_EVERY}, got {commit_every}");
    }
    let started = Instant::now();
    let mut writer = index.writer()?;
    if let Some(file) = corpus_file {
        let fingerprint = corpus_fingerprint(file)?;
        let name = file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        writer.begin_source(&name, &fingerprint);
    }
    let (mut added, mut replaced) = (0usize, 0usize);
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
        if (added + replaced) % commit_every == 0 && failure.is_none() {
            if let Err(e) = writer.commit() {
                failure = Some(anyhow::Error::from(e).context("committing a batch"));
            }
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
    writer.finish_source()?;
    Ok(IndexSummary {
        added,
        replaced,
        total: index.num_docs(),
        elapsed: started.elapsed(),
    })
}

pub fn index(args: &IndexArgs) -> anyhow::Result<()> {
    if args.check {
        let check = PassageIndex::check_folder(&args.index)
            .with_context(|| format!("checking the index at {}", args.index.display()))?;
        if !check.is_ok() {
            return Err(anyhow::Error::from(check.into_error()))
                .with_context(|| format!("checking the index at {}", args.index.display()));
        }
        let index = PassageIndex::open(&args.index)?;
        println!(
            "ok: {} documents in {} segments, every checksum matches and every document reads back; built from {}",
            check.documents,
            check.segments,
            index.sources()?
        );
        return Ok(());
    }
    let index = PassageIndex::open_or_create(&args.index)
        .with_context(|| format!("opening the index at {}", args.index.display()))?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("indexing {spinner} {pos} passages [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let s = fill_index(
        &index,
        args.corpus.as_deref(),
        args.dir.as_deref(),
        args.commit_every,
        &bar,
    )
    .with_context(|| format!("writing the index at {}", args.index.display()))?;
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
    /// Results shown (the page size).
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Results skipped before the page (a page is a slice of the full reranked order).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Print {"hits": [...], "total", "report": {...}} instead of a table.
    #[arg(long)]
    json: bool,
    /// Add a snippet of at most this many characters, query terms in <b>, to each hit.
    #[arg(long)]
    snippets: Option<usize>,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The query (plain words; no query syntax); or give it with --query.
    #[arg(long = "query", value_name = "QUERY", conflicts_with = "query_arg")]
    query: Option<String>,
    /// The query, as a positional argument.
    #[arg(value_name = "QUERY_TEXT")]
    query_arg: Option<String>,
    /// Read the query from a file (`-`: standard input), for queries too long for the
    /// command line (at most 1 MiB of UTF-8).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["query", "query_arg"])]
    query_file: Option<PathBuf>,
}

/// The query of `--query` or `--query-file`.
pub(crate) fn query_text(query: Option<&str>, file: Option<&Path>) -> anyhow::Result<String> {
    match (query, file) {
        (_, Some(path)) => read_query_file(path),
        (Some(q), None) => Ok(q.to_string()),
        (None, None) => bail!("give --query QUERY or --query-file FILE"),
    }
}

/// The longest query `--query-file` reads.
const MAX_QUERY_FILE_BYTES: u64 = 1 << 20;

/// The query of `--query-file` (`-`: stdin), bounded and checked for UTF-8.
fn read_query_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let what = if path.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(MAX_QUERY_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .context("reading the query from standard input")?;
        "standard input".to_string()
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("opening the query file {}", path.display()))?
            .take(MAX_QUERY_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading the query file {}", path.display()))?;
        path.display().to_string()
    };
    if bytes.len() as u64 > MAX_QUERY_FILE_BYTES {
        bail!("the query in {what} is over {MAX_QUERY_FILE_BYTES} bytes");
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "the query in {what} is not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        bail!("the query in {what} is empty");
    }
    Ok(text)
}

pub fn search(args: &SearchArgs) -> anyhow::Result<()> {
    let from_file = match &args.query_file {
        Some(path) => Some(read_query_file(path)?),
        None => None,
    };
    let Some(text) = from_file
        .as_ref()
        .or(args.query.as_ref())
        .or(args.query_arg.as_ref())
    else {
        bail!("give the query as an argument, with --query or with --query-file");
    };
    let mut options = SearchOptions::new(args.top_k)
        .and_offset(args.offset)
        .with_rerank(args.pipeline.options()?);
    if let Some(n) = args.snippets {
        options = options.with_snippets(n);
    }
    options.validate()?;
    let index = PassageIndex::open(&args.index)?;
    let reranker = args.pipeline.reranker()?;
    let query = index.query(text)?;
    let results = index
        .searcher()
        .search_reranked(&query, &reranker, &options)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &results)?;
        writeln!(out)?;
        return Ok(());
    }
    // BM25's own page, for comparison.
    let searcher = index.searcher();
    let bm25 = searcher.search(
        query.query(),
        &TopDocs::with_limit(args.top_k.max(1))
            .and_offset(args.offset)
            .order_by_score(),
    )?;
    writeln!(out, "BM25 top {}:", bm25.len())?;
    for (rank, (_, address)) in bm25.iter().enumerate() {
        let doc: TantivyDocument = searcher.doc(*address)?;
        let p = query.fields().passage(&doc, *address);
        writeln!(
            out,
            "{:>4}  {:<46}  {}",
            args.offset + rank + 1,
            id_cell(p.id.as_deref(), 46),
            one_line(&p.text, 70)
        )?;
    }
    writeln!(
        out,
        "\nreranked ({}), {} of {}:",
        args.pipeline.stages(),
        results.hits.len(),
        results.total
    )?;
    print_table(&mut out, &results.hits)?;
    writeln!(out)?;
    print_report(&mut out, &results)?;
    Ok(())
}

pub(crate) fn print_table(out: &mut impl Write, hits: &[SearchHit]) -> anyhow::Result<()> {
    if hits.is_empty() {
        writeln!(out, "no results")?;
        return Ok(());
    }
    let idw = id_column_width(hits.iter().map(|h| h.passage.id.as_deref()), 40);
    // With fusion on, the pointwise order follows the fused score: show it.
    let fused = hits.iter().any(|h| h.fused_score.is_some());
    let score = |s: Option<f32>| s.map_or_else(|| "-".to_string(), |s| format!("{s:.3}"));
    writeln!(
        out,
        "{:>4}  {:<idw$}  {:>11}  {:>7}  {:>9}  {}{:<9}  {:<40}  text",
        "rank",
        "id",
        "bm25→final",
        "bm25",
        "pointwise",
        if fused { "    fused  " } else { "" },
        "placed by",
        "title"
    )?;
    for h in hits {
        let pw = score(h.pointwise_score);
        let fused_column = if fused {
            format!("{:>9}  ", score(h.fused_score))
        } else {
            String::new()
        };
        let moved = format!("{:>4} → {:<4}", h.first_rank, h.final_rank);
        writeln!(
            out,
            "{:>4}  {:<idw$}  {moved:>11}  {:>7.3}  {pw:>9}  {fused_column}{:<9}  {:<40}  {}",
            h.final_rank,
            id_cell(h.passage.id.as_deref(), idw),
            h.first_score,
            h.placed_by.name(),
            one_line(h.passage.title.as_deref().unwrap_or("-"), 40),
            one_line(&h.passage.text, 50)
        )?;
        if let Some(snippet) = &h.snippet {
            writeln!(out, "      {}", one_line(snippet, 200))?;
        }
    }
    Ok(())
}

pub(crate) fn print_report(out: &mut impl Write, results: &SearchResults) -> anyhow::Result<()> {
    print_stage_report(out, &results.report)
}

pub(crate) fn print_stage_report(
    out: &mut impl Write,
    report: &RerankReport,
) -> anyhow::Result<()> {
    for s in &report.stages {
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
    writeln!(out, "total     {:>7.2} s", report.total.as_secs_f64())?;
    Ok(())
}
