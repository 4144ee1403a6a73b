//! `search_reranked` with the default model (SmolLM2-135M-Instruct) over an in-RAM
//! index: the final order follows the models, failures and deadlines keep BM25's,
//! threads share one reranker.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dear_core::{
    LanguageModel, ListwiseConfig, ListwiseMode, ListwiseReranker, LoadOptions, Passage,
    PointwiseConfig, Query, Reranker,
};
use dear_tantivy::{
    DearReranker, PassageIndex, PointwiseStage, RerankOptions, RerankQuery, RerankedResults,
    Scored, SearchReranked, Stage, StageStatus, Stages,
};
use tantivy::collector::TopDocs;
use tantivy::query::AllQuery;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn model() -> Arc<LanguageModel> {
    static LM: OnceLock<Arc<LanguageModel>> = OnceLock::new();
    LM.get_or_init(|| {
        let path = dear_core::default_model_path();
        assert!(
            path.is_file(),
            "the default model is missing at {}: run `bash scripts/fetch-model.sh` first",
            path.display()
        );
        Arc::new(
            LanguageModel::load(path, &LoadOptions::default())
                .unwrap_or_else(|e| panic!("cannot load the default model: {e}")),
        )
    })
    .clone()
}

const DOCS: &[(&str, &str)] = &[
    ("paris", "Paris is the capital and largest city of France."),
    ("capital-letters", "Capital letters in France: capital letter rules for French capital words, capital capital."),
    ("berlin", "Berlin is the capital of Germany and its largest city."),
    ("france-wine", "France produces wine in Bordeaux, Burgundy and Champagne."),
    ("rain", "Rain forms when water droplets in clouds merge and fall."),
    ("rust", "Rust is a systems programming language focused on safety."),
    ("eiffel", "The Eiffel Tower stands in Paris, France, on the Champ de Mars."),
    ("capital-gains", "Capital gains tax in France applies to the sale of shares."),
    ("tokyo", "Tokyo is the capital of Japan."),
    ("photosynthesis", "Plants turn light into sugar through photosynthesis."),
    ("threads", "Threads share memory; a mutex guards data from data races."),
    ("ocean", "The Pacific is the largest and deepest ocean on Earth."),
];

fn index() -> Result<PassageIndex, dear_tantivy::Error> {
    let index = PassageIndex::create_in_ram()?;
    let mut w = index.writer()?;
    for (id, text) in DOCS {
        w.upsert(&Passage::new(*text).with_id(*id))?;
    }
    w.commit()?;
    Ok(index)
}

fn pointwise() -> Reranker {
    Reranker::new(model(), None, PointwiseConfig::yes_no()).expect("yes/no scorer")
}

fn listwise(mode: ListwiseMode) -> ListwiseReranker {
    let config = ListwiseConfig {
        mode,
        ..ListwiseConfig::default()
    };
    ListwiseReranker::new(model(), None, config).expect("listwise reranker")
}

fn ids(r: &RerankedResults) -> Vec<String> {
    r.hits.iter().map(|h| h.id().to_string()).collect()
}

/// BM25's own order, straight from tantivy.
fn tantivy_order(index: &PassageIndex, q: &RerankQuery, k: usize) -> Vec<String> {
    let searcher = index.searcher();
    let top = searcher
        .search(q.query(), &TopDocs::with_limit(k).order_by_score())
        .expect("search");
    top.into_iter()
        .map(|(_, a)| {
            let doc: tantivy::TantivyDocument = searcher.doc(a).expect("doc");
            q.fields().passage(&doc).id.unwrap_or_default()
        })
        .collect()
}

#[test]
fn the_final_order_follows_the_models() -> TestResult {
    let index = index()?;
    let query = index.query("What is the capital of France?")?;
    let reranker = DearReranker::new()
        .with_pointwise(pointwise())
        .with_listwise(listwise(ListwiseMode::FirstToken));
    let options = RerankOptions::default()
        .with_listwise_depth(4)
        .with_window(4, 2);
    let results = index
        .searcher()
        .search_reranked(&query, &reranker, &options)?;
    assert_eq!(results.report.failures().count(), 0, "{:?}", results.report);
    let n = results.hits.len();
    assert_eq!(n, tantivy_order(&index, &query, 100).len());
    // BM25 fields are tantivy's.
    let mut by_bm25 = results.hits.clone();
    by_bm25.sort_by_key(|h| h.bm25_rank);
    let bm25: Vec<String> = by_bm25.iter().map(|h| h.id().to_string()).collect();
    assert_eq!(bm25, tantivy_order(&index, &query, 100));

    // Pointwise scores are the scorer's own, and below the listwise depth the order is theirs.
    let passages: Vec<Passage> = by_bm25.iter().map(|h| h.passage.clone()).collect();
    let direct = pointwise().score(&Query::new(query.text()), &passages)?;
    for (h, s) in by_bm25.iter().zip(&direct) {
        let got = h.pointwise_score.ok_or("no pointwise score")?;
        assert!((got - s).abs() < 1e-4, "{}: {got} vs {s}", h.id());
    }
    for pair in results.hits[4..].windows(2) {
        assert!(pair[0].pointwise_score >= pair[1].pointwise_score);
        assert_eq!(pair[1].placed_by, Stage::Pointwise);
    }
    // The top 4 are the listwise stage's permutation of the pointwise top 4.
    let mut by_pointwise = results.hits.clone();
    by_pointwise.sort_by_key(|h| h.pointwise_rank);
    let top4: Vec<Passage> = by_pointwise[..4]
        .iter()
        .map(|h| h.passage.clone())
        .collect();
    let outcome = listwise(ListwiseMode::FirstToken).rerank(&Query::new(query.text()), &top4)?;
    let expected: Vec<String> = outcome
        .order
        .iter()
        .map(|&i| top4[i].id.clone().unwrap_or_default())
        .collect();
    assert_eq!(ids(&results)[..4], expected[..]);
    assert!(results.hits[..4]
        .iter()
        .all(|h| h.placed_by == Stage::Listwise));
    // And the model does disagree with BM25 here.
    assert!(
        results.hits.iter().any(|h| h.final_rank != h.bm25_rank),
        "the models kept BM25's order: {:?}",
        ids(&results)
    );
    let pw = results.report.stage(Stage::Pointwise).ok_or("no report")?;
    assert_eq!(pw.passages, n);
    assert!(pw.tokens > 0);
    Ok(())
}

/// A pointwise stage that always fails.
struct Broken;

impl PointwiseStage for Broken {
    fn key(&self) -> String {
        "broken".into()
    }
    fn score(&self, _: &Query, _: &[Passage], _: Option<Instant>) -> dear_core::Result<Scored> {
        Err(dear_core::Error::InvalidArgument("injected failure".into()))
    }
}

#[test]
fn a_failing_reranker_leaves_bm25_order() -> TestResult {
    let index = index()?;
    let query = index.query("capital of France")?;
    let reranker = DearReranker::new().with_pointwise(Broken);
    let options = RerankOptions::default().with_stages("bm25,pointwise".parse()?);
    let results = index
        .searcher()
        .search_reranked(&query, &reranker, &options)?;
    assert_eq!(ids(&results), tantivy_order(&index, &query, 100));
    assert!(results.hits.iter().all(|h| h.placed_by == Stage::Bm25));
    let failures: Vec<_> = results.report.failures().collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, Stage::Pointwise);
    assert!(failures[0].1.contains("injected failure"), "{failures:?}");
    Ok(())
}

#[test]
fn a_deadline_is_honoured() -> TestResult {
    let index = index()?;
    let query = index.query("capital of France")?;
    let reranker = DearReranker::new()
        .with_pointwise(pointwise())
        .with_cache_capacity(0, 0);
    let options = RerankOptions::default().with_stages(Stages {
        pointwise: true,
        listwise: false,
    });
    let full = index
        .searcher()
        .search_reranked(&query, &reranker, &options)?;
    assert_eq!(full.report.failures().count(), 0);
    let rushed = index.searcher().search_reranked(
        &query,
        &reranker,
        &options.clone().with_timeout(Duration::from_millis(1)),
    )?;
    let why = rushed
        .report
        .stage(Stage::Pointwise)
        .and_then(|s| s.failure())
        .ok_or("the pointwise stage did not fail")?;
    assert!(why.contains("deadline"), "{why}");
    assert_eq!(ids(&rushed), tantivy_order(&index, &query, 100));
    assert!(
        rushed.report.total < full.report.total,
        "{:?} vs {:?}",
        rushed.report.total,
        full.report.total
    );
    Ok(())
}

#[test]
fn eight_threads_get_what_one_thread_gets() -> TestResult {
    let index = index()?;
    let queries = [
        "capital of France",
        "largest city",
        "capital of Japan",
        "programming language safety",
        "how does rain form",
        "deepest ocean",
        "wine regions of France",
        "data races between threads",
    ];
    let options = RerankOptions::default()
        .with_candidates(5)
        .with_stages("bm25,pointwise".parse()?);
    let serial = DearReranker::new()
        .with_pointwise(pointwise())
        .with_cache_capacity(0, 0);
    let mut expected = Vec::new();
    for q in queries {
        let q = index.query(q)?;
        expected.push(index.searcher().search_reranked(&q, &serial, &options)?);
    }
    let shared = DearReranker::new()
        .with_pointwise(pointwise())
        .with_cache_capacity(0, 0);
    let got: Vec<RerankedResults> = std::thread::scope(|s| {
        let handles: Vec<_> = queries
            .iter()
            .map(|q| {
                let (index, shared, options) = (&index, &shared, &options);
                s.spawn(move || {
                    let q = index.query(q)?;
                    index.searcher().search_reranked(&q, shared, options)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread panicked"))
            .collect::<Result<_, _>>()
    })?;
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(g.report.failures().count(), 0);
        assert_eq!(e.hits.len(), g.hits.len());
        for (a, b) in e.hits.iter().zip(&g.hits) {
            let (sa, sb) = (
                a.pointwise_score.unwrap_or(f32::NAN),
                b.pointwise_score.unwrap_or(f32::NAN),
            );
            assert!(
                (sa - sb).abs() < 1e-3,
                "{}: {sa} vs {}: {sb}",
                a.id(),
                b.id()
            );
        }
        // Same order, up to scores closer than the tolerance.
        for (a, b) in e.hits.iter().zip(&g.hits) {
            if a.id() != b.id() {
                let (sa, sb) = (
                    a.pointwise_score.unwrap_or(0.0),
                    b.pointwise_score.unwrap_or(0.0),
                );
                assert!(
                    (sa - sb).abs() < 1e-3,
                    "order differs at {} vs {}",
                    a.id(),
                    b.id()
                );
            }
        }
    }
    Ok(())
}

#[test]
fn repeated_searches_and_pages_are_served_from_the_cache() -> TestResult {
    let index = index()?;
    let query = index.query("capital of France")?;
    let reranker = DearReranker::new().with_pointwise(pointwise());
    let options = RerankOptions::default().with_stages("bm25,pointwise".parse()?);
    let first = index
        .searcher()
        .search_reranked(&query, &reranker, &options)?;
    let again = index
        .searcher()
        .search_reranked(&query, &reranker, &options)?;
    assert_eq!(first.hits, again.hits);
    let pw = again.report.stage(Stage::Pointwise).ok_or("no report")?;
    assert_eq!((pw.cached, pw.tokens), (first.hits.len(), 0));
    // Page 2 of 3 per page is the same slice of the same list.
    let page: Vec<&str> = again.hits.iter().skip(3).take(3).map(|h| h.id()).collect();
    let want: Vec<&str> = first.hits[3..6].iter().map(|h| h.id()).collect();
    assert_eq!(page, want);
    Ok(())
}

#[test]
fn passages_are_cut_to_the_token_cap() -> TestResult {
    let index = index()?;
    let query = index.query("capital of France")?;
    let reranker = DearReranker::new().with_pointwise(pointwise());
    let options = RerankOptions::default()
        .with_stages("bm25,pointwise".parse()?)
        .with_max_passage_tokens(4);
    let results = index
        .searcher()
        .search_reranked(&query, &reranker, &options)?;
    let tok = model();
    for h in &results.hits {
        let n = tok.tokenizer().encode(&h.passage.text, false)?.len();
        assert!(n <= 4, "{}: {n} tokens in {:?}", h.id(), h.passage.text);
        let full = DOCS
            .iter()
            .find(|(id, _)| *id == h.id())
            .ok_or("unknown id")?
            .1;
        assert!(full.starts_with(&h.passage.text), "{:?}", h.passage.text);
    }
    Ok(())
}

#[test]
fn bad_queries_are_reported_and_bm25_results_kept() -> TestResult {
    let index = index()?;
    let reranker = DearReranker::new()
        .with_pointwise(pointwise())
        .with_listwise(listwise(ListwiseMode::FirstToken));
    // Every document, and no text for the models.
    let empty = RerankQuery::new(index.fields(), Box::new(AllQuery), "  ");
    let options = RerankOptions::default()
        .with_listwise_depth(3)
        .with_window(3, 1);
    let results = index
        .searcher()
        .search_reranked(&empty, &reranker, &options)?;
    assert_eq!(results.hits.len(), DOCS.len());
    let why = results
        .report
        .stage(Stage::Pointwise)
        .and_then(|s| s.failure())
        .ok_or("no failure")?;
    assert!(why.contains("empty"), "{why}");
    assert!(results.hits.iter().all(|h| h.placed_by == Stage::Bm25));

    // A 1 MB query: first-stage results survive whatever the models make of it.
    let huge = format!("capital of France {}", "word ".repeat(200_000));
    let q = RerankQuery::new(
        index.fields(),
        index.query("capital of France")?.query().box_clone(),
        huge,
    );
    let results = index.searcher().search_reranked(
        &q,
        &reranker,
        &RerankOptions::default()
            .with_listwise_depth(2)
            .with_window(2, 1),
    )?;
    assert_eq!(results.hits.len(), tantivy_order(&index, &q, 100).len());
    for s in &results.report.stages {
        if let StageStatus::Failed(why) = &s.status {
            assert!(!why.is_empty());
        }
    }
    Ok(())
}
