//! A bounded soak driver for the reranked-search pipeline: one `PassageIndex` (a BEIR
//! corpus in RAM) and ONE shared `Reranker` (BM25, then the pointwise stage through its
//! batching scheduler, its score cache on or off), hammered from many threads.
//!
//! - `--mode equal`: every (query, options) case is searched once serially (the
//!   reference), the cache is emptied, then `--threads` threads run `--searches`
//!   searches each over the same pipeline, cases drawn round-robin; every result is
//!   compared with the reference: the hit ids in order, the stage that placed each
//!   hit, and every score (first-stage, pointwise, fused, relevance) bit for bit
//!   (`--tolerance` to allow a difference). Prints the mismatch counts; exits 1 on any.
//! - `--mode rss`: a mixed workload for `--minutes` (pointwise searches of several
//!   candidate counts, pointwise + listwise searches, `Reranker::rank` calls, the cache
//!   on and off, tiny deadlines, and bad inputs that must be refused), sampling VmRSS
//!   and the C heap in use and held (glibc's `mallinfo2`) every `--sample-secs` as CSV,
//!   with glibc's arenas capped at `--malloc-arenas` (2), as the `dear` binary does.
//!   It starts with a warm-up pass (every thread runs each kind of operation at its
//!   largest size, all at once), then runs the mix.
//!   Every `--idle-every` seconds the workers finish their operation and wait while
//!   one idle sample is taken: the same state each time, with no operation's buffers
//!   alive. The verdict compares the first idle samples after warm-up (the later of
//!   the pass's end and 10 % of the run) with the last ones; the busy samples' floors
//!   and medians in a window after warm-up and the last window (each 10 % of the run),
//!   and the peak, are printed too. Exits 1 if the idle RSS grew 5 % or more (the
//!   busy floor when there are fewer than 4 idle samples), or if any call misbehaved.
//!
//! ```text
//! bash scripts/fetch-model.sh
//! cargo run --profile fast --example soak -- --mode equal --threads 16 --searches 50
//! cargo run --profile fast --example soak -- --mode rss --minutes 5
//! ```
//! `scripts/soak.sh` runs the full soak (16 × 1,000 searches, cache on and off, and
//! a 30-minute RSS run) and writes its logs to `target/soak/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::{Parser, ValueEnum};
use dear::dear_core::{default_student_path, Fusion};
use dear::{
    corpus, DearSetup, LanguageModel, ListwiseMode, PassageIndex, PointwiseConfig, RerankOptions,
    Reranker, SearchOptions, SearchReranked, SearchResults, Stage, StageStatus, Stages,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Threaded results equal the serial ones.
    Equal,
    /// RSS stays flat under a mixed workload.
    Rss,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Parser, Debug)]
struct Args {
    /// equal (threads vs serial) or rss (memory over time).
    #[arg(long, value_enum, default_value = "equal")]
    mode: Mode,
    /// The model: `default` (the default model with its pointwise student, fused with
    /// BM25), or a model path (a .gguf file or a Hugging Face folder; the pointwise
    /// stage reads its `score` head if it has one, else the yes/no prompt).
    #[arg(long, default_value = "default")]
    model: String,
    /// A BEIR folder (corpus.jsonl, and queries.jsonl or queries.txt)
    /// [default: ../shared/data/scifact when present, else data/rust-book].
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Threads sharing the pipeline.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Searches per thread (equal mode).
    #[arg(long, default_value_t = 1000)]
    searches: usize,
    /// The score cache of the shared reranker (equal mode; rss mode uses both).
    #[arg(long, value_enum, default_value = "on")]
    cache: Switch,
    /// Distinct queries used (the first of the query file).
    #[arg(long, default_value_t = 64)]
    queries: usize,
    /// BM25 candidates reranked pointwise (equal mode; the second case of each query
    /// uses half of them and a page further down).
    #[arg(long, default_value_t = 20)]
    candidates: usize,
    /// Cut passages to this many tokens before the stages read them (needed for tiny
    /// test models with a short context).
    #[arg(long)]
    max_passage_tokens: Option<usize>,
    /// Largest score difference counted as equal (0: bit for bit).
    #[arg(long, default_value_t = 0.0)]
    tolerance: f32,
    /// Length of the rss run.
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Seconds between RSS samples.
    #[arg(long, default_value_t = 10.0)]
    sample_secs: f64,
    /// The sample the growth is measured from, in minutes [default: 10 % of the run,
    /// at least 2 minutes when the run is 20 minutes or longer], and not before the
    /// warm-up pass (every thread running each kind of operation once, at once) ends.
    #[arg(long)]
    warmup_minutes: Option<f64>,
    /// Largest RSS growth after warm-up that passes, in percent.
    #[arg(long, default_value_t = 5.0)]
    max_growth: f64,
    /// Also write the RSS samples to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Every this many seconds (rss mode; 0: never) the workers finish their current
    /// operation and wait while one idle sample is taken: the RSS with no operation's
    /// buffers alive, the same state each time, which decides the verdict.
    #[arg(long, default_value_t = 120.0)]
    idle_every: f64,
    /// glibc malloc arenas, set at startup as the `dear` binary does (0: glibc's
    /// default of 8 per core; the MALLOC_ARENA_MAX environment variable wins).
    #[arg(long, default_value_t = 2)]
    malloc_arenas: usize,
}

fn default_dataset() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let scifact = root.join("../shared/data/scifact");
    if scifact.join("corpus.jsonl").is_file() {
        scifact
    } else {
        root.join("data/rust-book")
    }
}

/// The queries of a BEIR folder: queries.jsonl, else queries.txt (one a line).
fn read_queries(dir: &Path) -> anyhow::Result<Vec<String>> {
    let jsonl = dir.join("queries.jsonl");
    if jsonl.is_file() {
        return Ok(corpus::read_beir_queries(&jsonl)?
            .into_iter()
            .map(|(_, text)| text)
            .collect());
    }
    let txt = dir.join("queries.txt");
    let text =
        std::fs::read_to_string(&txt).with_context(|| format!("reading {}", txt.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// The corpus in a RAM index, and its passage texts (for `Reranker::rank` calls).
fn build_index(dir: &Path) -> anyhow::Result<(PassageIndex, Vec<String>)> {
    let index = PassageIndex::create_in_ram()?;
    let mut writer = index.writer()?;
    let mut texts = Vec::new();
    let mut failed = None;
    corpus::read_beir_corpus(&dir.join("corpus.jsonl"), |p| {
        if failed.is_none() {
            texts.push(p.text.clone());
            if let Err(e) = writer.upsert(&p) {
                failed = Some(e);
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    writer.commit()?;
    Ok((index, texts))
}

/// The pipeline's setup and its model, loaded once: the default setup, or a model
/// path with its own head.
fn load(args: &Args, stages: Stages) -> anyhow::Result<(DearSetup, Arc<LanguageModel>)> {
    let started = Instant::now();
    let setup = if args.model == "default" {
        let model = dear::default_model_path();
        ensure!(
            model.is_file(),
            "the default model is missing at {}: run `bash scripts/fetch-model.sh`",
            model.display()
        );
        DearSetup::default_model().with_stages(stages)
    } else {
        DearSetup::new(&args.model).with_stages(stages)
    };
    let lm = setup.load_model()?;
    let setup = if args.model == "default" {
        setup
    } else {
        let config = PointwiseConfig::for_model(&lm, None)?;
        setup.with_pointwise_config(config)
    };
    eprintln!(
        "model: {} (pointwise adapter: {}, fusion: {}) loaded in {:.1} s",
        setup.model().display(),
        setup.pointwise_adapter().unwrap_or("none"),
        setup.fusion(),
        started.elapsed().as_secs_f64()
    );
    Ok((setup, lm))
}

/// The C heap in use and held by the allocator, in KiB (`(0, 0)` off glibc). RSS
/// minus the second is outside the C heap; a leak raises the first.
fn heap_kib() -> (u64, u64) {
    dear::dear_core::memory::heap_stats()
        .map_or((0, 0), |h| (h.in_use_bytes / 1024, h.held_bytes / 1024))
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// splitmix64: a deterministic stream per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

// ------------------------------------------------------------------------- equal

/// One hit: id, placing stage, first-stage, pointwise, fused scores, relevance.
type HitRow = (String, Stage, f32, Option<f32>, Option<f32>, f32);

/// What a search returned, in full: compared between the serial and threaded runs.
#[derive(Clone, Debug, PartialEq)]
struct Outcome {
    total: usize,
    /// Per hit.
    hits: Vec<HitRow>,
    /// Per stage: name and status kind (a failure under load is a mismatch).
    stages: Vec<(Stage, &'static str)>,
}

impl Outcome {
    fn of(results: &SearchResults) -> Self {
        Outcome {
            total: results.total,
            hits: results
                .hits
                .iter()
                .map(|h| {
                    (
                        h.id().to_string(),
                        h.placed_by,
                        h.first_score,
                        h.pointwise_score,
                        h.fused_score,
                        h.relevance,
                    )
                })
                .collect(),
            stages: results
                .report
                .stages
                .iter()
                .map(|s| {
                    let kind = match s.status {
                        StageStatus::Completed => "completed",
                        StageStatus::Skipped(_) => "skipped",
                        StageStatus::Failed(_) => "failed",
                    };
                    (s.stage, kind)
                })
                .collect(),
        }
    }
}

/// How `got` differs from `want`: None when equal (scores within `tol`), else
/// whether the order differs and the largest score difference.
fn compare(want: &Outcome, got: &Outcome, tol: f32) -> (Option<bool>, f32) {
    let ids = |o: &Outcome| {
        o.hits
            .iter()
            .map(|h| (h.0.clone(), h.1, h.3.is_some(), h.4.is_some()))
            .collect::<Vec<_>>()
    };
    if want.total != got.total || want.stages != got.stages || ids(want) != ids(got) {
        return (Some(true), f32::NAN);
    }
    let mut max = 0.0f32;
    let mut differs = false;
    let mut diff = |a: f32, b: f32| {
        if a.to_bits() != b.to_bits() {
            let d = (a - b).abs();
            max = max.max(if d.is_nan() { f32::INFINITY } else { d });
            differs |= d.is_nan() || d > tol;
        }
    };
    for (w, g) in want.hits.iter().zip(&got.hits) {
        diff(w.2, g.2);
        for (a, b) in [(w.3, g.3), (w.4, g.4)] {
            if let (Some(a), Some(b)) = (a, b) {
                diff(a, b);
            }
        }
        diff(w.5, g.5);
    }
    (differs.then_some(false), max)
}

fn equal_mode(args: &Args, dataset: &Path) -> anyhow::Result<bool> {
    ensure!(
        (1..=1024).contains(&args.threads),
        "--threads must be 1..=1024"
    );
    ensure!(args.searches >= 1, "--searches must be at least 1");
    ensure!(args.candidates >= 2, "--candidates must be at least 2");
    let (index, _) = build_index(dataset)?;
    let queries: Vec<String> = read_queries(dataset)?
        .into_iter()
        .take(args.queries.max(1))
        .collect();
    ensure!(!queries.is_empty(), "{} has no queries", dataset.display());
    let (setup, lm) = load(
        args,
        Stages {
            pointwise: true,
            listwise: false,
        },
    )?;
    let reranker = setup.build_on(lm)?;
    let reranker = match args.cache {
        Switch::On => reranker,
        Switch::Off => reranker.with_cache_capacity(0, 0),
    };
    // Two cases per query: the first page of `candidates`, and the second page of
    // half as many (a different candidate list, cached scores reused when on).
    let base = {
        let o = RerankOptions::default()
            .with_candidates(args.candidates)
            .with_stages(Stages {
                pointwise: true,
                listwise: false,
            });
        match args.max_passage_tokens {
            Some(n) => o.with_max_passage_tokens(n),
            None => o,
        }
    };
    let half = (args.candidates / 2).max(1);
    let variants = [
        SearchOptions::new(10).with_rerank(base.clone()),
        SearchOptions::new(5)
            .and_offset(5)
            .with_rerank(base.with_candidates(half)),
    ];
    let cases: Vec<(usize, usize)> = (0..queries.len())
        .flat_map(|q| (0..variants.len()).map(move |v| (q, v)))
        .collect();
    let search = |(q, v): (usize, usize)| -> anyhow::Result<Outcome> {
        let query = index.query(&queries[q])?;
        let results = index
            .searcher()
            .search_reranked(&query, &reranker, &variants[v])?;
        Ok(Outcome::of(&results))
    };
    println!(
        "equal: {} threads x {} searches, cache {:?}, {} queries x {} cases, {} candidates \
         (then {half}), max passage tokens {:?}, tolerance {}, {} passages",
        args.threads,
        args.searches,
        args.cache,
        queries.len(),
        variants.len(),
        args.candidates,
        args.max_passage_tokens,
        args.tolerance,
        index.num_docs()
    );

    let started = Instant::now();
    let reference: Vec<Outcome> = cases
        .iter()
        .map(|&c| search(c))
        .collect::<anyhow::Result<_>>()?;
    let serial_s = started.elapsed().as_secs_f64();
    let failed_ref = reference
        .iter()
        .filter(|o| o.stages.iter().any(|s| s.1 == "failed"))
        .count();
    ensure!(
        failed_ref == 0,
        "{failed_ref} reference searches had a failed stage"
    );
    ensure!(
        reference
            .iter()
            .any(|o| o.hits.iter().any(|h| h.1 == Stage::Pointwise)),
        "no reference hit was placed by the pointwise stage: nothing is being checked"
    );
    println!(
        "serial reference: {} searches in {serial_s:.1} s ({:.1} ms each)",
        cases.len(),
        1000.0 * serial_s / cases.len() as f64
    );
    // The threads start from an empty cache: the first search of each case runs the
    // model (in batches shared with other threads), the later ones hit the cache.
    reranker.clear_cache();

    let order_mismatches = AtomicUsize::new(0);
    let score_mismatches = AtomicUsize::new(0);
    let errors = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let max_diff = Mutex::new(0.0f32);
    let first_bad = Mutex::new(None::<String>);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..args.threads {
            let (search, cases, reference) = (&search, &cases, &reference);
            let (order_mismatches, score_mismatches, errors, done, max_diff, first_bad) = (
                &order_mismatches,
                &score_mismatches,
                &errors,
                &done,
                &max_diff,
                &first_bad,
            );
            s.spawn(move || {
                for k in 0..args.searches {
                    // Round-robin: at step k the threads take consecutive cases.
                    let i = (k * args.threads + t) % cases.len();
                    match search(cases[i]) {
                        Ok(got) => {
                            let (bad, d) = compare(&reference[i], &got, args.tolerance);
                            if d > 0.0 || d.is_nan() {
                                let mut m = max_diff.lock().unwrap_or_else(|e| e.into_inner());
                                *m = if d.is_nan() { f32::NAN } else { m.max(d) };
                            }
                            if let Some(order) = bad {
                                if order {
                                    order_mismatches.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    score_mismatches.fetch_add(1, Ordering::Relaxed);
                                }
                                let mut f = first_bad.lock().unwrap_or_else(|e| e.into_inner());
                                f.get_or_insert_with(|| {
                                    format!(
                                        "thread {t} search {k} (case {i}): want {:?}\n got {:?}",
                                        reference[i], got
                                    )
                                });
                            }
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut f = first_bad.lock().unwrap_or_else(|e| e.into_inner());
                            f.get_or_insert_with(|| format!("thread {t} search {k}: {e}"));
                        }
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % 1000 == 0 {
                        eprintln!("  {n} searches, {:.0} s", started.elapsed().as_secs_f64());
                    }
                }
            });
        }
    });
    let threaded_s = started.elapsed().as_secs_f64();
    let (order, score, errors) = (
        order_mismatches.into_inner(),
        score_mismatches.into_inner(),
        errors.into_inner(),
    );
    let searches = done.into_inner();
    let max_diff = max_diff.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(bad) = first_bad.into_inner().unwrap_or_else(|e| e.into_inner()) {
        eprintln!("first mismatch: {bad}");
    }
    println!(
        "threaded: {searches} searches in {threaded_s:.1} s ({:.1} searches/s); \
         mismatches: {order} in order, {score} in scores, {errors} errors; \
         largest score difference {max_diff:e} (tolerance {})",
        searches as f64 / threaded_s,
        args.tolerance
    );
    let ok = order == 0 && score == 0 && errors == 0 && searches == args.threads * args.searches;
    println!("equal: {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

// --------------------------------------------------------------------------- rss

#[derive(Default)]
struct Tally {
    searches: AtomicU64,
    ranks: AtomicU64,
    listwise: AtomicU64,
    cached: AtomicU64,
    uncached: AtomicU64,
    deadlines: AtomicU64,
    refused: AtomicU64,
    unexpected: AtomicU64,
}

impl Tally {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{},{},{},{},{},{},{},{}",
            g(&self.searches),
            g(&self.ranks),
            g(&self.listwise),
            g(&self.cached),
            g(&self.uncached),
            g(&self.deadlines),
            g(&self.refused),
            g(&self.unexpected)
        )
    }
}

/// One roll of each kind of operation in [`Workload::step`]'s mix: the warm-up pass
/// runs each on every thread at once.
const KINDS: [usize; 6] = [0, 45, 60, 64, 78, 86];

/// Passage tokens in the listwise searches of the mix (and their pointwise stage).
const LISTWISE_PASSAGE_TOKENS: usize = 160;

const TALLY_HEADER: &str =
    "searches,ranks,listwise,cache_on,cache_off,deadlines,refused,unexpected";

struct Workload<'a> {
    index: &'a PassageIndex,
    texts: &'a [String],
    queries: &'a [String],
    cached: &'a Reranker,
    uncached: &'a Reranker,
    tally: &'a Tally,
    unexpected: &'a Mutex<Vec<String>>,
    max_passage_tokens: Option<usize>,
}

impl Workload<'_> {
    fn note(&self, what: String) {
        Tally::bump(&self.tally.unexpected);
        let mut u = self.unexpected.lock().unwrap_or_else(|e| e.into_inner());
        if u.len() < 20 {
            eprintln!("unexpected: {what}");
            u.push(what);
        }
    }

    fn rerank(&self, stages: Stages, candidates: usize) -> RerankOptions {
        let o = RerankOptions::default()
            .with_candidates(candidates)
            .with_stages(stages);
        match self.max_passage_tokens {
            Some(n) => o.with_max_passage_tokens(n),
            None => o,
        }
    }

    /// The passage cut of the listwise searches: [`LISTWISE_PASSAGE_TOKENS`], or the
    /// run's own cut if smaller.
    fn listwise_passage_tokens(&self) -> usize {
        self.max_passage_tokens
            .map_or(LISTWISE_PASSAGE_TOKENS, |n| n.min(LISTWISE_PASSAGE_TOKENS))
    }

    /// A search that must succeed (an error is noted, and `None` returned).
    fn search(
        &self,
        q: &str,
        reranker: &Reranker,
        options: &SearchOptions,
    ) -> Option<SearchResults> {
        match self.index.query(q).and_then(|query| {
            self.index
                .searcher()
                .search_reranked(&query, reranker, options)
        }) {
            Ok(r) => Some(r),
            Err(e) => {
                self.note(format!("search {q:?} failed: {e}"));
                None
            }
        }
    }

    fn failed(results: &Option<SearchResults>, stage: Stage) -> bool {
        results.as_ref().is_some_and(|r| {
            r.report
                .stages
                .iter()
                .any(|s| s.stage == stage && matches!(s.status, StageStatus::Failed(_)))
        })
    }

    /// One operation of the mix, drawn from `rng`; or, in the warm-up pass, the kind
    /// `forced` names (a roll of the mix and the cache switch) at its largest size.
    fn step(&self, rng: &mut Rng, forced: Option<(usize, bool)>) {
        let q = &self.queries[rng.below(self.queries.len())];
        let on = forced.map_or(rng.below(2) == 0, |f| f.1);
        let reranker = if on { self.cached } else { self.uncached };
        Tally::bump(if on {
            &self.tally.cached
        } else {
            &self.tally.uncached
        });
        let pointwise = Stages {
            pointwise: true,
            listwise: false,
        };
        match forced.map_or_else(|| rng.below(100), |f| f.0) {
            // Pointwise searches of several sizes and pages.
            0..=44 => {
                let candidates = match forced {
                    Some(_) => 100,
                    None => [10, 20, 30, 50, 100][rng.below(5)],
                };
                let offset = [0, 0, 10][rng.below(3)];
                let options = SearchOptions::new(10)
                    .and_offset(offset)
                    .with_rerank(self.rerank(pointwise, candidates));
                let r = self.search(q, reranker, &options);
                Tally::bump(&self.tally.searches);
                if Self::failed(&r, Stage::Pointwise) {
                    self.note(format!(
                        "pointwise failed for {q:?}: {:?}",
                        r.map(|r| r.report)
                    ));
                }
            }
            // Pointwise, then listwise over the top (first-token mode: one forward).
            45..=59 => {
                // Listwise prompts hold every passage: cut them to 160 tokens.
                let options = SearchOptions::new(10).with_rerank(
                    self.rerank(Stages::ALL, 20)
                        .with_max_passage_tokens(self.listwise_passage_tokens())
                        .with_listwise_depth(10)
                        .with_window(10, 5)
                        .with_listwise_mode(ListwiseMode::FirstToken),
                );
                let r = self.search(q, reranker, &options);
                Tally::bump(&self.tally.searches);
                Tally::bump(&self.tally.listwise);
                if Self::failed(&r, Stage::Pointwise) {
                    self.note(format!(
                        "pointwise failed for {q:?}: {:?}",
                        r.map(|r| r.report)
                    ));
                }
            }
            // Listwise by generation over a small window (may fail to parse: that is
            // reported, not an error).
            60..=63 => {
                let options = SearchOptions::new(10).with_rerank(
                    self.rerank(Stages::ALL, 10)
                        .with_max_passage_tokens(self.listwise_passage_tokens())
                        .with_listwise_depth(5)
                        .with_window(5, 5)
                        .with_listwise_mode(ListwiseMode::Generate),
                );
                self.search(q, reranker, &options);
                Tally::bump(&self.tally.searches);
                Tally::bump(&self.tally.listwise);
            }
            // The text API: documents drawn from the corpus.
            64..=77 => {
                let n = 5 + rng.below(20);
                let start = rng.below(self.texts.len().saturating_sub(n).max(1));
                let docs = &self.texts[start..(start + n).min(self.texts.len())];
                let options = self.rerank(pointwise, n).with_top_n(5);
                match reranker.rank(q, docs, &options) {
                    Ok(r) if r.results.len() == 5.min(docs.len()) => {}
                    Ok(r) => self.note(format!("rank gave {} results", r.results.len())),
                    Err(e) => self.note(format!("rank failed: {e}")),
                }
                Tally::bump(&self.tally.ranks);
            }
            // A deadline that has passed: the first-stage order stands.
            78..=85 => {
                let options = SearchOptions::new(10).with_rerank(
                    self.rerank(pointwise, 50)
                        .with_timeout(Duration::from_micros(1 + rng.below(2000) as u64)),
                );
                let r = self.search(q, reranker, &options);
                Tally::bump(&self.tally.searches);
                if Self::failed(&r, Stage::Pointwise) {
                    Tally::bump(&self.tally.deadlines);
                }
            }
            // Bad inputs: absurd options must be refused; blank queries must not
            // reach the model's order.
            _ => {
                let bad = match rng.below(8) {
                    0 => SearchOptions::new(0),
                    1 => SearchOptions::new(10).with_rerank(self.rerank(pointwise, 0)),
                    2 => SearchOptions::new(10).with_rerank(self.rerank(pointwise, 1 << 40)),
                    3 => SearchOptions::new(10).and_offset(usize::MAX),
                    4 => SearchOptions::new(10)
                        .with_rerank(self.rerank(Stages::ALL, 20).with_window(5, 10)),
                    5 => SearchOptions::new(10)
                        .with_rerank(self.rerank(pointwise, 20).with_min_score(2.0)),
                    6 => SearchOptions::new(10).with_rerank(
                        self.rerank(pointwise, 20)
                            .with_fusion(Fusion::Interpolate { weight: 7.0 }),
                    ),
                    _ => SearchOptions::new(10).with_snippets(0),
                };
                match self
                    .index
                    .query(q)
                    .map_err(anyhow::Error::from)
                    .and_then(|query| {
                        Ok(self
                            .index
                            .searcher()
                            .search_reranked(&query, reranker, &bad)?)
                    }) {
                    Err(_) => Tally::bump(&self.tally.refused),
                    Ok(_) => self.note(format!("absurd options accepted: {bad:?}")),
                }
                // Blank and empty queries: no hits from BM25, or a failed model stage.
                let blank = ["", "   ", "\u{0}\u{7}"][rng.below(3)];
                let r = self.search(
                    blank,
                    reranker,
                    &SearchOptions::new(10).with_rerank(self.rerank(pointwise, 10)),
                );
                if r.is_some_and(|r| r.hits.iter().any(|h| h.placed_by == Stage::Pointwise)) {
                    self.note(format!("a blank query {blank:?} was scored"));
                }
                match reranker.rank("  ", &self.texts[..3], &self.rerank(pointwise, 3)) {
                    Ok(r) if r.results.iter().all(|h| h.placed_by == Stage::First) => {
                        Tally::bump(&self.tally.refused);
                    }
                    Ok(_) => self.note("a blank query was scored by rank".into()),
                    Err(_) => Tally::bump(&self.tally.refused),
                }
                // A very long query is cut to the query budget, not refused.
                let long = q.repeat(200);
                let r = self.search(
                    &long,
                    reranker,
                    &SearchOptions::new(5).with_rerank(self.rerank(pointwise, 10)),
                );
                if Self::failed(&r, Stage::Pointwise) {
                    self.note(format!("a long query failed: {:?}", r.map(|r| r.report)));
                }
                Tally::bump(&self.tally.searches);
            }
        }
    }
}

fn rss_mode(args: &Args, dataset: &Path) -> anyhow::Result<bool> {
    ensure!(
        (1..=1024).contains(&args.threads),
        "--threads must be 1..=1024"
    );
    ensure!(
        args.minutes > 0.0 && args.minutes <= 24.0 * 60.0,
        "--minutes must be in (0, 1440]"
    );
    ensure!(
        args.sample_secs >= 0.1,
        "--sample-secs must be at least 0.1"
    );
    let run = Duration::from_secs_f64(args.minutes * 60.0);
    let warmup = Duration::from_secs_f64(
        60.0 * args.warmup_minutes.unwrap_or(if args.minutes >= 20.0 {
            (args.minutes * 0.1).max(2.0)
        } else {
            args.minutes * 0.1
        }),
    );
    ensure!(warmup < run, "the warm-up must end before the run does");
    let rss_start = vm_rss_kib();
    let (index, texts) = build_index(dataset)?;
    let queries: Vec<String> = read_queries(dataset)?
        .into_iter()
        .take(args.queries.max(1))
        .collect();
    ensure!(!queries.is_empty(), "{} has no queries", dataset.display());
    // Both stages on one model: the listwise stage is zero-shot (the model's chat
    // template); searches choose their stages. Two rerankers share the model: one
    // with the default caches, one with none.
    let (setup, lm) = load(args, Stages::ALL)?;
    let cached = setup.build_on(lm.clone())?;
    let uncached = setup.build_on(lm)?.with_cache_capacity(0, 0);
    ensure!(
        cached.listwise().is_some(),
        "the model has no listwise stage (no chat template)"
    );
    let rss_loaded = vm_rss_kib();
    println!(
        "rss: {} threads, {:.1} minutes, warm-up {:.1} minutes, {} queries, {} passages, \
         RSS {} KiB at start, {} KiB with the index and models loaded",
        args.threads,
        args.minutes,
        warmup.as_secs_f64() / 60.0,
        queries.len(),
        index.num_docs(),
        rss_start,
        rss_loaded
    );

    let mut csv = match &args.csv {
        Some(p) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    };
    let header = format!("elapsed_s,rss_kib,{TALLY_HEADER},idle,heap_in_use_kib,heap_held_kib");
    println!("{header}");
    if let Some(f) = &mut csv {
        writeln!(f, "{header}")?;
    }

    let tally = Tally::default();
    let unexpected = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let work = Workload {
        index: &index,
        texts: &texts,
        queries: &queries,
        cached: &cached,
        uncached: &uncached,
        tally: &tally,
        unexpected: &unexpected,
        max_passage_tokens: args.max_passage_tokens,
    };
    let started = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    // Idle samples: every worker between two operations, waiting.
    // (seconds, RSS, C heap in use), both in KiB.
    let mut idle_samples: Vec<(f64, u64, u64)> = Vec::new();
    let pause = AtomicBool::new(false);
    let idle = std::sync::atomic::AtomicUsize::new(0);
    // The warm-up pass: every thread runs each kind of operation at its largest size
    // at the same time (half of them on the cached reranker), so the memory the mix
    // can need at once is reached before the growth is measured from.
    let barrier = std::sync::Barrier::new(args.threads);
    let warm_done_ms = AtomicU64::new(u64::MAX);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..args.threads)
            .map(|t| {
                let (work, stop, barrier, warm_done_ms) = (&work, &stop, &barrier, &warm_done_ms);
                let (pause, idle) = (&pause, &idle);
                s.spawn(move || {
                    let mut rng = Rng(0x50a4 + t as u64);
                    for kind in KINDS {
                        work.step(&mut rng, Some((kind, t % 2 == 0)));
                        barrier.wait();
                    }
                    if t == 0 {
                        let ms = started.elapsed().as_millis();
                        warm_done_ms.store(ms.try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        if pause.load(Ordering::Acquire) {
                            idle.fetch_add(1, Ordering::AcqRel);
                            while pause.load(Ordering::Acquire) && !stop.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            idle.fetch_sub(1, Ordering::AcqRel);
                            continue;
                        }
                        work.step(&mut rng, None);
                    }
                })
            })
            .collect();
        let every = Duration::from_secs_f64(args.sample_secs);
        let mut next = every;
        let mut pass_noted = false;
        loop {
            let now = started.elapsed();
            if now >= run {
                break;
            }
            std::thread::sleep(next.min(run).saturating_sub(now));
            let at = started.elapsed();
            if at < next.min(run) {
                continue;
            }
            let rss = vm_rss_kib();
            let done = warm_done_ms.load(Ordering::Relaxed);
            if done != u64::MAX && !pass_noted {
                pass_noted = true;
                eprintln!("warm-up pass ended at {:.1} s", done as f64 / 1000.0);
            }
            samples.push((at.as_secs_f64(), rss));
            let (in_use, held) = heap_kib();
            let line = format!(
                "{:.1},{rss},{},0,{in_use},{held}",
                at.as_secs_f64(),
                tally.line()
            );
            println!("{line}");
            if let Some(f) = &mut csv {
                writeln!(f, "{line}")?;
                f.flush()?;
            }
            // The first idle sample follows the warm-up pass; the next ones come
            // `--idle-every` seconds after the previous one ended (not on a fixed grid, so
            // a late pass or a slow wait never makes several in a row).
            let next_idle = idle_samples
                .last()
                .map_or(done as f64 / 1000.0, |s: &(f64, u64, u64)| {
                    s.0 + args.idle_every
                });
            if args.idle_every > 0.0 && done != u64::MAX && at.as_secs_f64() >= next_idle {
                // Let every worker finish its operation, then sample the idle process.
                pause.store(true, Ordering::Release);
                while idle.load(Ordering::Acquire) < args.threads
                    && !workers.iter().any(|w| w.is_finished())
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                std::thread::sleep(Duration::from_millis(500));
                let at = started.elapsed().as_secs_f64();
                let rss = vm_rss_kib();
                let (in_use, held) = heap_kib();
                pause.store(false, Ordering::Release);
                idle_samples.push((at, rss, in_use));
                let line = format!("{at:.1},{rss},{},1,{in_use},{held}", tally.line());
                println!("{line}");
                if let Some(f) = &mut csv {
                    writeln!(f, "{line}")?;
                    f.flush()?;
                }
            }
            if workers.iter().any(|w| w.is_finished()) {
                stop.store(true, Ordering::Relaxed);
                bail!("a worker thread ended early (panicked?)");
            }
            next += every;
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            if w.join().is_err() {
                bail!("a worker thread panicked");
            }
        }
        Ok(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let pass = warm_done_ms.into_inner() as f64 / 1000.0;
    let pass_rss = samples.iter().find(|s| s.0 >= pass).map_or(0, |s| s.1);
    println!(
        "rss: the warm-up pass ({} kinds x {} threads) ended at {pass:.0} s (RSS {pass_rss} KiB \
         at the next sample)",
        KINDS.len(),
        args.threads
    );
    // RSS swings with the large transient buffers of whatever runs at the moment (a
    // 100-candidate batch, a listwise prompt): single samples are noise. Compare a
    // window after the warm-up with the last window of the run (each 10 % of the run,
    // at least 3 samples): their floors (what stays resident: a leak raises it) decide,
    // their medians and the peak are reported too.
    let from = warmup.as_secs_f64().max(pass);
    let span = (0.1 * run.as_secs_f64()).max(3.0 * args.sample_secs);
    let end = samples.last().map_or(0.0, |s| s.0);
    let window = |lo: f64, hi: f64| -> Vec<u64> {
        let mut w: Vec<u64> = samples
            .iter()
            .filter(|s| s.0 >= lo && s.0 <= hi)
            .map(|s| s.1)
            .collect();
        w.sort_unstable();
        w
    };
    let (warm, last) = (window(from, from + span), window(end - span, end));
    if warm.is_empty() || last.is_empty() || from + span > end - span {
        bail!(
            "the run is too short to measure: warm-up until {from:.0} s, windows of \
             {span:.0} s, last sample at {end:.0} s"
        );
    }
    let stats = |w: &[u64]| (w[0], w[w.len() / 2], w[w.len() - 1]);
    let ((warm_min, warm_med, warm_max), (last_min, last_med, last_max)) =
        (stats(&warm), stats(&last));
    let pct = |a: u64, b: u64| 100.0 * (b as f64 - a as f64) / a as f64;
    let growth = pct(warm_min, last_min);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(last_max);
    let bad = tally.unexpected.load(Ordering::Relaxed);
    println!(
        "rss: {elapsed:.0} s, {} operations ({TALLY_HEADER}: {})",
        tally.searches.load(Ordering::Relaxed) + tally.ranks.load(Ordering::Relaxed),
        tally.line()
    );
    println!(
        "rss: after warm-up ({from:.0}..{:.0} s, {} samples) min {warm_min} / median \
         {warm_med} / max {warm_max} KiB; final ({:.0}..{end:.0} s, {} samples) min \
         {last_min} / median {last_med} / max {last_max} KiB; peak {peak} KiB",
        from + span,
        warm.len(),
        end - span,
        last.len()
    );
    println!(
        "rss: growth after warm-up: floor {growth:+.2} % (limit {} %), median {:+.2} %",
        args.max_growth,
        pct(warm_med, last_med)
    );
    // Idle samples are the same state each time (no operation running, every
    // transient buffer freed): a leak, or an allocator that keeps more and more, raises
    // them. The verdict compares the first idle samples after the warm-up with the last
    // ones (the median of up to three each); without idle samples, the floors decide.
    let after: Vec<&(f64, u64, u64)> = idle_samples.iter().filter(|s| s.0 >= from).collect();
    // The samples, and the growth from the median of the first (up to) three to the
    // median of the last three.
    let trend = |values: &[u64]| {
        let k = (values.len() / 2).min(3);
        let median = |w: &[u64]| {
            let mut w = w.to_vec();
            w.sort_unstable();
            w[w.len() / 2]
        };
        let (first, last) = (median(&values[..k]), median(&values[values.len() - k..]));
        let listed = values
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        (listed, first, last, pct(first, last))
    };
    let decided = if after.len() >= 4 {
        let rss: Vec<u64> = after.iter().map(|s| s.1).collect();
        let (listed, first, last, idle_growth) = trend(&rss);
        println!(
            "rss: idle samples after warm-up ({} from {from:.0} s, every {:.0} s): {listed}; \
             first {first} KiB, last {last} KiB: growth {idle_growth:+.2} % (limit {} %)",
            after.len(),
            args.idle_every,
            args.max_growth
        );
        // The same comparison for the heap in use (glibc): flat while RSS grows means
        // the allocator keeps freed memory; growing with it means live allocations.
        let heap: Vec<u64> = after.iter().map(|s| s.2).collect();
        if heap.iter().any(|&h| h > 0) {
            let (listed, _, _, heap_growth) = trend(&heap);
            println!(
                "rss: heap in use at the idle samples (KiB): {listed}; growth {heap_growth:+.2} %"
            );
        }
        idle_growth
    } else {
        growth
    };
    let ok = decided < args.max_growth && bad == 0;
    println!("rss: {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let arenas = if dear::dear_core::memory::limit_malloc_arenas(args.malloc_arenas) {
        args.malloc_arenas.to_string()
    } else {
        std::env::var(dear::dear_core::memory::MALLOC_ARENA_MAX_ENV)
            .map_or_else(|_| "glibc default".into(), |v| format!("{v} (environment)"))
    };
    println!("malloc arenas: {arenas}");
    let dataset = args.dataset.clone().unwrap_or_else(default_dataset);
    if args.model == "default" && !default_student_path().is_dir() {
        eprintln!("note: the default student is not installed; the yes/no prompt is used");
    }
    let ok = match args.mode {
        Mode::Equal => equal_mode(&args, &dataset)?,
        Mode::Rss => rss_mode(&args, &dataset)?,
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
