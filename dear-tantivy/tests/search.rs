//! `search_reranked` with the default model (SmolLM2-135M-Instruct) over an in-RAM
//! index: the final order follows the models, failures and deadlines keep BM25's,
//! threads share one reranker.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dear_core::{
    Error, LanguageModel, ListwiseConfig, ListwiseMode, ListwiseOptions, ListwiseRanker,
    LoadOptions, Passage, PointwiseConfig, PointwiseStage, Query, RerankOptions, Reranker,
    Scheduler, Scored, Stage, StageFailure, StageStatus, Stages,
};
use dear_tantivy::tantivy::collector::TopDocs;
use dear_tantivy::tantivy::query::AllQuery;
use dear_tantivy::tantivy::schema::{Schema, STORED, TEXT};
use dear_tantivy::tantivy::{doc, Index, TantivyDocument};
use dear_tantivy::{
    PassageFields, PassageIndex, RerankQuery, SearchOptions, SearchReranked, SearchResults,
};

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

fn pointwise() -> Scheduler {
    Scheduler::new(model(), None, PointwiseConfig::yes_no()).expect("yes/no scorer")
}

fn listwise(mode: ListwiseMode) -> ListwiseRanker {
    let config = ListwiseConfig {
        mode,
        ..ListwiseConfig::default()
    };
    ListwiseRanker::new(model(), None, config).expect("listwise ranker")
}

fn ids(r: &SearchResults) -> Vec<String> {
    r.hits.iter().map(|h| h.id().to_string()).collect()
}

/// Every hit of the reranked order, on one page.
fn all(options: RerankOptions) -> SearchOptions {
    SearchOptions::new(1000).with_rerank(options)
}

/// BM25's own order, straight from tantivy.
fn tantivy_order(index: &PassageIndex, q: &RerankQuery, k: usize) -> Vec<String> {
    let searcher = index.searcher();
    let top = searcher
        .search(q.query(), &TopDocs::with_limit(k).order_by_score())
        .expect("search");
    top.into_iter()
        .map(|(_, a)| {
            let doc: TantivyDocument = searcher.doc(a).expect("doc");
            q.fields().passage(&doc, a).id.unwrap_or_default()
        })
        .collect()
}

#[test]
fn the_final_order_follows_the_models() -> TestResult {
    let index = index()?;
    let query = index.query("What is the capital of France?")?;
    let reranker = Reranker::new()
        .with_pointwise(pointwise())
        .with_listwise(listwise(ListwiseMode::FirstToken));
    let options = RerankOptions::default()
        .with_listwise_depth(4)
        .with_window(4, 2);
    let results = index
        .searcher()
        .search_reranked(&query, &reranker, &all(options.clone()))?;
    assert_eq!(results.report.failures().count(), 0, "{:?}", results.report);
    let n = results.hits.len();
    assert_eq!(n, tantivy_order(&index, &query, 100).len());
    // BM25 fields are tantivy's.
    let mut by_bm25 = results.hits.clone();
    by_bm25.sort_by_key(|h| h.first_rank);
    let bm25: Vec<String> = by_bm25.iter().map(|h| h.id().to_string()).collect();
    assert_eq!(bm25, tantivy_order(&index, &query, 100));

    // Pointwise scores are the scorer's own, and below the listwise depth the order is theirs.
    let passages: Vec<Passage> = by_bm25.iter().map(|h| h.passage.clone()).collect();
    let direct = pointwise()
        .score(&Query::new(query.text()), &passages, None)?
        .scores;
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
    let outcome = listwise(ListwiseMode::FirstToken).rank(
        &Query::new(query.text()),
        &top4,
        &ListwiseOptions::default(),
    )?;
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
        results.hits.iter().any(|h| h.final_rank != h.first_rank),
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
        Err(Error::InvalidArgument("injected failure".into()))
    }
}

#[test]
fn a_failing_reranker_leaves_bm25_order() -> TestResult {
    let index = index()?;
    let query = index.query("capital of France")?;
    let reranker = Reranker::new().with_pointwise(Broken);
    let options = RerankOptions::default().with_stages("bm25,pointwise".parse()?);
    let results = index
        .searcher()
        .search_reranked(&query, &reranker, &all(options.clone()))?;
    assert_eq!(ids(&results), tantivy_order(&index, &query, 100));
    assert!(results.hits.iter().all(|h| h.placed_by == Stage::First));
    let failures: Vec<_> = results.report.failures().collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, Stage::Pointwise);
    assert!(
        matches!(
            failures[0].1.model_error(),
            Some(Error::InvalidArgument(m)) if m == "injected failure"
        ),
        "{failures:?}"
    );
    Ok(())
}

#[test]
fn a_deadline_is_honoured() -> TestResult {
    let index = index()?;
    let query = index.query("capital of France")?;
    let reranker = Reranker::new()
        .with_pointwise(pointwise())
        .with_cache_capacity(0, 0);
    let options = RerankOptions::default().with_stages(Stages {
        pointwise: true,
        listwise: false,
    });
    let full = index
        .searcher()
        .search_reranked(&query, &reranker, &all(options.clone()))?;
    assert_eq!(full.report.failures().count(), 0);
    let rushed = index.searcher().search_reranked(
        &query,
        &reranker,
        &all(options.clone().with_timeout(Duration::from_millis(1))),
    )?;
    let why = rushed
        .report
        .stage(Stage::Pointwise)
        .and_then(|s| s.failure())
        .ok_or("the pointwise stage did not fail")?;
    assert!(
        matches!(why, StageFailure::Deadline { elapsed } if !elapsed.is_zero()),
        "{why:?}"
    );
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
    let serial = Reranker::new()
        .with_pointwise(pointwise())
        .with_cache_capacity(0, 0);
    let mut expected = Vec::new();
    for q in queries {
        let q = index.query(q)?;
        expected.push(index.searcher().search_reranked(
            &q,
            &serial,
            &SearchOptions::new(5).with_rerank(options.clone()),
        )?);
    }
    let shared = Reranker::new()
        .with_pointwise(pointwise())
        .with_cache_capacity(0, 0);
    let options = SearchOptions::new(5).with_rerank(options);
    let got: Vec<SearchResults> = std::thread::scope(|s| {
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
    let reranker = Reranker::new().with_pointwise(pointwise());
    let options = RerankOptions::default().with_stages("bm25,pointwise".parse()?);
    let first = index
        .searcher()
        .search_reranked(&query, &reranker, &all(options.clone()))?;
    let again = index
        .searcher()
        .search_reranked(&query, &reranker, &all(options.clone()))?;
    assert_eq!(first.hits, again.hits);
    let pw = again.report.stage(Stage::Pointwise).ok_or("no report")?;
    assert_eq!((pw.cached, pw.tokens), (first.hits.len(), 0));
    // Page 2 of 3 per page is the same slice of the same list, from the cache.
    let page = index.searcher().search_reranked(
        &query,
        &reranker,
        &SearchOptions::new(3)
            .and_offset(3)
            .with_rerank(options.clone()),
    )?;
    assert_eq!(page.hits, first.hits[3..6]);
    assert_eq!(page.total, first.hits.len());
    let pw = page.report.stage(Stage::Pointwise).ok_or("no report")?;
    assert_eq!(pw.tokens, 0);
    Ok(())
}

#[test]
fn pages_are_slices_of_the_full_order_even_past_the_reranked_candidates() -> TestResult {
    let index = index()?;
    let query = index.query("capital city of France or Japan")?;
    let reranker = Reranker::new().with_pointwise(pointwise());
    // Only the BM25 top 4 are reranked; the rest keep BM25's order after them.
    let options = RerankOptions::default()
        .with_stages("bm25,pointwise".parse()?)
        .with_candidates(4);
    let full = index
        .searcher()
        .search_reranked(&query, &reranker, &all(options.clone()))?;
    let bm25 = tantivy_order(&index, &query, 100);
    assert_eq!(ids(&full).len(), bm25.len());
    assert!(full.hits[4..].iter().all(|h| h.placed_by == Stage::First));
    assert_eq!(ids(&full)[4..], bm25[4..]);
    for offset in 0..full.hits.len() {
        for limit in [1, 2, 5] {
            let page = index.searcher().search_reranked(
                &query,
                &reranker,
                &SearchOptions::new(limit)
                    .and_offset(offset)
                    .with_rerank(options.clone()),
            )?;
            let end = (offset + limit).min(full.hits.len());
            assert_eq!(
                page.hits,
                full.hits[offset..end],
                "offset {offset}, limit {limit}"
            );
        }
    }
    Ok(())
}

/// A schema of the user's own: a u64 id, the body split over two text fields (one of
/// them multi-valued), a language field to filter on.
fn user_index() -> Result<(Index, PassageFields), Box<dyn std::error::Error>> {
    let mut builder = Schema::builder();
    let id = builder.add_u64_field("doc_id", STORED);
    let lead = builder.add_text_field("lead", TEXT | STORED);
    let body = builder.add_text_field("body", TEXT | STORED);
    let lang = builder.add_text_field("lang", TEXT);
    let index = Index::create_in_ram(builder.build());
    let mut w = index.writer(15_000_000)?;
    w.add_document(doc!(
        id => 7u64,
        lead => "Rain and clouds.",
        body => "Rain forms when water droplets in clouds merge and fall.",
        body => "Drizzle is light rain.",
        lang => "en"
    ))?;
    w.add_document(doc!(
        id => 8u64,
        lead => "Snow.",
        body => "Snow forms when water vapour freezes in clouds.",
        lang => "en"
    ))?;
    w.add_document(doc!(
        id => 9u64,
        lead => "Pluie.",
        body => "La pluie tombe des nuages: rain clouds water.",
        lang => "fr"
    ))?;
    w.commit()?;
    let fields =
        PassageFields::from_schema(&index.schema(), Some("doc_id"), None, &["lead", "body"])?;
    Ok((index, fields))
}

#[test]
fn any_schema_with_filters_ids_of_any_type_and_snippets() -> TestResult {
    use dear_tantivy::tantivy::query::{
        BooleanQuery, ConstScoreQuery, Occur, QueryParser, TermQuery,
    };
    use dear_tantivy::tantivy::schema::IndexRecordOption;
    use dear_tantivy::tantivy::Term;
    let (index, fields) = user_index()?;
    let searcher = index.reader()?.searcher();
    let schema = index.schema();
    let parser = QueryParser::for_index(&index, fields.searched());
    let words = parser.parse_query("rain clouds water")?;
    let lang = schema.get_field("lang")?;
    let english = TermQuery::new(Term::from_field_text(lang, "en"), IndexRecordOption::Basic);
    // The user's own query with a filter: English documents only.
    let filtered = BooleanQuery::new(vec![
        (Occur::Must, words),
        (
            Occur::Must,
            Box::new(ConstScoreQuery::new(Box::new(english), 0.0)),
        ),
    ]);
    let query = RerankQuery::new(fields.clone(), Box::new(filtered), "how does rain form?");
    let reranker = Reranker::new().with_pointwise(pointwise());
    let results = searcher.search_reranked(
        &query,
        &reranker,
        &SearchOptions::new(10)
            .with_snippets(60)
            .with_rerank(RerankOptions::default().with_stages("bm25,pointwise".parse()?)),
    )?;
    let mut got = ids(&results);
    got.sort();
    assert_eq!(got, ["7", "8"], "the filter keeps the French document out");
    let rain = results
        .hits
        .iter()
        .find(|h| h.id() == "7")
        .ok_or("no doc 7")?;
    // Both fields and both values of `body`, in order.
    assert_eq!(
        rain.passage.text,
        "Rain and clouds.\n\nRain forms when water droplets in clouds merge and fall.\n\nDrizzle is light rain."
    );
    assert!(rain.pointwise_score.is_some());
    let snippet = rain.snippet.as_deref().ok_or("no snippet")?;
    assert!(snippet.contains("<b>"), "{snippet}");
    assert!(snippet.chars().count() <= 60 + 7 * 6, "{snippet}");
    // No id field: the document address is the id.
    let by_address = PassageFields::from_schema(&schema, None, None, &["body"])?;
    let q = RerankQuery::new(by_address, parser.parse_query("snow")?, "snow");
    let results = searcher.search_reranked(&q, &Reranker::new(), &SearchOptions::new(5))?;
    let hit = results.hits.first().ok_or("no hit")?;
    let address = hit.address();
    assert_eq!(
        hit.id(),
        format!("{}:{}", address.segment_ord, address.doc_id)
    );
    // Fields that cannot make a passage are named.
    let err = PassageFields::from_schema(&schema, Some("doc_id"), None, &["lang"])
        .err()
        .ok_or("lang is not stored")?
        .to_string();
    assert!(err.contains("lang"), "{err}");
    let err = PassageFields::from_schema(&schema, None, None, &["doc_id"])
        .err()
        .ok_or("doc_id is not text")?
        .to_string();
    assert!(err.contains("doc_id") && err.contains("text"), "{err}");
    Ok(())
}

#[test]
fn passages_are_cut_to_the_token_cap() -> TestResult {
    let index = index()?;
    let query = index.query("capital of France")?;
    let reranker = Reranker::new().with_pointwise(pointwise());
    let options = RerankOptions::default()
        .with_stages("bm25,pointwise".parse()?)
        .with_max_passage_tokens(4);
    let results = index
        .searcher()
        .search_reranked(&query, &reranker, &all(options.clone()))?;
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
    let reranker = Reranker::new()
        .with_pointwise(pointwise())
        .with_listwise(listwise(ListwiseMode::FirstToken));
    // Every document, and no text for the models.
    let empty = RerankQuery::new(index.fields().clone(), Box::new(AllQuery), "  ");
    let options = RerankOptions::default()
        .with_listwise_depth(3)
        .with_window(3, 1);
    let results = index
        .searcher()
        .search_reranked(&empty, &reranker, &all(options))?;
    assert_eq!(results.hits.len(), DOCS.len());
    let why = results
        .report
        .stage(Stage::Pointwise)
        .and_then(|s| s.failure())
        .ok_or("no failure")?;
    assert!(
        matches!(why.model_error(), Some(Error::EmptyInput(_))),
        "{why:?}"
    );
    assert!(results.hits.iter().all(|h| h.placed_by == Stage::First));

    // A 1 MB query: first-stage results survive whatever the models make of it.
    let huge = format!("capital of France {}", "word ".repeat(200_000));
    let q = RerankQuery::new(
        index.fields().clone(),
        index.query("capital of France")?.query().box_clone(),
        huge,
    );
    let results = index.searcher().search_reranked(
        &q,
        &reranker,
        &all(RerankOptions::default()
            .with_listwise_depth(2)
            .with_window(2, 1)),
    )?;
    assert_eq!(results.hits.len(), tantivy_order(&index, &q, 100).len());
    for s in &results.report.stages {
        if let StageStatus::Failed(why) = &s.status {
            assert!(!why.to_string().is_empty());
        }
    }
    Ok(())
}
