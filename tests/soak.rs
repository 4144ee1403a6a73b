//! The soak in small (`scripts/soak.sh` and `examples/soak.rs` run it in full): 16
//! threads searching over ONE shared pipeline (a tantivy index, BM25, the pointwise
//! stage's batching scheduler, the score cache) get exactly the results of the same
//! searches run one by one, with the cache on and off. The tiny test classifier keeps
//! it fast; scores are compared bit for bit.

use std::path::{Path, PathBuf};
use std::sync::{Barrier, Mutex};

use dear::{
    corpus, DearSetup, PassageIndex, PointwiseConfig, RerankOptions, Reranker, SearchOptions,
    SearchReranked, SearchResults, Stage, StageStatus, Stages,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const THREADS: usize = 16;
const SEARCHES: usize = 6;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled Rust book corpus in a RAM index, and its queries.
fn rust_book() -> Result<(PassageIndex, Vec<String>), Box<dyn std::error::Error>> {
    let dir = root().join("data/rust-book");
    let index = PassageIndex::create_in_ram()?;
    let mut writer = index.writer()?;
    let mut passages = Vec::new();
    corpus::read_beir_corpus(&dir.join("corpus.jsonl"), |p| passages.push(p))?;
    for p in &passages {
        writer.upsert(p)?;
    }
    writer.commit()?;
    let queries: Vec<String> = std::fs::read_to_string(dir.join("queries.txt"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    assert!(index.num_docs() > 100 && queries.len() >= 8);
    Ok((index, queries))
}

/// The tiny classifier as the pointwise stage (its context is 128 tokens: passages
/// are cut to 48 by the options).
fn tiny_reranker(model: &Path) -> Result<Reranker, Box<dyn std::error::Error>> {
    let setup = DearSetup::new(model).with_stages(Stages {
        pointwise: true,
        listwise: false,
    });
    let lm = setup.load_model()?;
    let config = PointwiseConfig::for_model(&lm, None)?;
    Ok(setup.with_pointwise_config(config).build_on(lm)?)
}

/// One hit: id, placing stage, first-stage, pointwise, fused scores and relevance, as bits.
type HitBits = (String, Stage, u32, Option<u32>, Option<u32>, u32);

/// Everything a search returned that must not depend on other threads: per hit its
/// id, the stage that placed it and every score (as bits); per stage its status.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    total: usize,
    hits: Vec<HitBits>,
    stages: Vec<(Stage, String)>,
}

impl Outcome {
    fn of(r: &SearchResults) -> Self {
        Outcome {
            total: r.total,
            hits: r
                .hits
                .iter()
                .map(|h| {
                    (
                        h.id().to_string(),
                        h.placed_by,
                        h.first_score.to_bits(),
                        h.pointwise_score.map(f32::to_bits),
                        h.fused_score.map(f32::to_bits),
                        h.relevance.to_bits(),
                    )
                })
                .collect(),
            stages: r
                .report
                .stages
                .iter()
                .map(|s| {
                    let status = match &s.status {
                        StageStatus::Completed => "completed".to_string(),
                        StageStatus::Skipped(why) => format!("skipped: {why}"),
                        StageStatus::Failed(why) => format!("failed: {why}"),
                    };
                    (s.stage, status)
                })
                .collect(),
        }
    }
}

/// Serial reference, then THREADS x SEARCHES searches at once over the same reranker;
/// returns how many threaded results differ from the reference.
fn soak(
    index: &PassageIndex,
    queries: &[String],
    reranker: &Reranker,
) -> Result<usize, Box<dyn std::error::Error>> {
    let rerank = RerankOptions::default()
        .with_candidates(20)
        .with_max_passage_tokens(48)
        .with_stages(Stages {
            pointwise: true,
            listwise: false,
        });
    // Two cases per query: the first page of 20 candidates, and the second page of 10.
    let variants = [
        SearchOptions::new(10).with_rerank(rerank.clone()),
        SearchOptions::new(5)
            .and_offset(5)
            .with_rerank(rerank.with_candidates(10)),
    ];
    let cases: Vec<(usize, usize)> = (0..queries.len())
        .flat_map(|q| (0..variants.len()).map(move |v| (q, v)))
        .collect();
    let search = |(q, v): (usize, usize)| -> Result<SearchResults, String> {
        let query = index.query(&queries[q]).map_err(|e| e.to_string())?;
        index
            .searcher()
            .search_reranked(&query, reranker, &variants[v])
            .map_err(|e| e.to_string())
    };

    let reference: Vec<Outcome> = cases
        .iter()
        .map(|&c| search(c).map(|r| Outcome::of(&r)))
        .collect::<Result<_, _>>()?;
    // The reference is worth comparing with: the model placed the hits, and queries
    // differ in their results.
    for (o, c) in reference.iter().zip(&cases) {
        assert!(
            o.stages
                .iter()
                .any(|(s, status)| *s == Stage::Pointwise && status == "completed"),
            "{c:?}: {:?}",
            o.stages
        );
        assert!(
            !o.hits.is_empty() && o.hits.iter().all(|h| h.1 == Stage::Pointwise),
            "{c:?}"
        );
    }
    assert_ne!(reference[0], reference[2]);

    reranker.clear_cache();
    let before = reranker
        .pointwise()
        .and_then(|p| p.batch_stats())
        .ok_or("the pointwise stage is no scheduler")?;
    let start = Barrier::new(THREADS);
    let mismatches = Mutex::new(Vec::new());
    let cached = Mutex::new(0usize);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (search, cases, reference, start, mismatches, cached) =
                (&search, &cases, &reference, &start, &mismatches, &cached);
            s.spawn(move || {
                start.wait();
                for k in 0..SEARCHES {
                    // Round-robin: at step k the threads take consecutive cases.
                    let i = (k * THREADS + t) % cases.len();
                    let outcome = search(cases[i]).map(|r| {
                        let hits: usize = r.report.stages.iter().map(|s| s.cached).sum();
                        *cached.lock().unwrap_or_else(|e| e.into_inner()) += hits;
                        Outcome::of(&r)
                    });
                    if outcome.as_ref() != Ok(&reference[i]) {
                        mismatches
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!(
                                "thread {t} search {k} case {i}:\n want {:?}\n  got {outcome:?}",
                                reference[i]
                            ));
                    }
                }
            });
        }
    });
    let after = reranker
        .pointwise()
        .and_then(|p| p.batch_stats())
        .ok_or("the pointwise stage is no scheduler")?;
    let (calls, rounds) = (after.calls - before.calls, after.rounds - before.rounds);
    // The threads really did share the scheduler's batches.
    assert!(calls > rounds, "{calls} calls in {rounds} rounds");
    let cached = cached.into_inner().unwrap_or_else(|e| e.into_inner());
    let mismatches = mismatches.into_inner().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "{} threaded searches: {} mismatches, {calls} scoring calls in {rounds} rounds, \
         {cached} passages from the cache",
        THREADS * SEARCHES,
        mismatches.len()
    );
    if let Some(first) = mismatches.first() {
        eprintln!("{first}");
    }
    Ok(mismatches.len())
}

fn tiny_model() -> PathBuf {
    root().join("dear-core/tests/golden/lora/tiny-seqcls")
}

#[test]
fn threads_over_one_pipeline_equal_serial_results_cache_on() -> TestResult {
    let (index, queries) = rust_book()?;
    let reranker = tiny_reranker(&tiny_model())?;
    assert_eq!(soak(&index, &queries, &reranker)?, 0);
    Ok(())
}

#[test]
fn threads_over_one_pipeline_equal_serial_results_cache_off() -> TestResult {
    let (index, queries) = rust_book()?;
    let reranker = tiny_reranker(&tiny_model())?.with_cache_capacity(0, 0);
    assert_eq!(soak(&index, &queries, &reranker)?, 0);
    Ok(())
}

/// The comparison is a real one: the same model with its scores fused with BM25's
/// is told apart, and so is one flipped bit of one score.
#[test]
fn a_diverging_pipeline_is_caught() -> TestResult {
    let (index, queries) = rust_book()?;
    let a = tiny_reranker(&tiny_model())?;
    let b = tiny_reranker(&tiny_model())?
        .with_fusion(dear::dear_core::Fusion::Interpolate { weight: 0.5 })?;
    let options = SearchOptions::new(10).with_rerank(
        RerankOptions::default()
            .with_candidates(20)
            .with_max_passage_tokens(48)
            .with_stages(Stages {
                pointwise: true,
                listwise: false,
            }),
    );
    let query = index.query(&queries[0])?;
    let ra = index.searcher().search_reranked(&query, &a, &options)?;
    let rb = index.searcher().search_reranked(&query, &b, &options)?;
    assert_eq!(Outcome::of(&ra), Outcome::of(&ra.clone()));
    assert_ne!(Outcome::of(&ra), Outcome::of(&rb));
    // One bit of one score is enough.
    let mut flipped = ra.clone();
    let s = flipped.hits[3]
        .hit
        .pointwise_score
        .ok_or("no pointwise score")?;
    flipped.hits[3].hit.pointwise_score = Some(f32::from_bits(s.to_bits() ^ 1));
    assert_ne!(Outcome::of(&ra), Outcome::of(&flipped));
    Ok(())
}
