//! The engine-free pipeline ([`Reranker`]) with real models: typed stage failures,
//! a listwise pass stopped midway, the Cohere-shaped [`Reranker::rank`] and MaxP
//! chunking.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dear_core::{
    relevance, Candidate, Chunking, DearSetup, Error, LanguageModel, ListwiseConfig, ListwiseMode,
    ListwiseOptions, ListwiseRanker, Passage, PointwiseConfig, PointwiseStage, Query,
    RerankOptions, RerankedResults, Reranker, Scheduler, Scored, Stage, StageFailure, StageStatus,
    Stages, Tokenizer, WindowConfig,
};

use crate::common::{default_model, short_texts, TestResult};

/// The default model, loaded once for the tests of this module.
fn model() -> Arc<LanguageModel> {
    static LM: OnceLock<Arc<LanguageModel>> = OnceLock::new();
    LM.get_or_init(|| Arc::new(default_model())).clone()
}

const POINTWISE: Stages = Stages {
    pointwise: true,
    listwise: false,
};

const LISTWISE: Stages = Stages {
    pointwise: false,
    listwise: true,
};

/// The default model with no adapter: both stages, the yes/no head (it has no `score`
/// head of its own).
fn plain_setup() -> DearSetup {
    DearSetup::new(dear_core::default_model_path())
}

/// The default model's pointwise stage alone (the yes/no head).
fn pointwise_reranker() -> Result<Reranker, Error> {
    plain_setup().with_stages(POINTWISE).build_on(model())
}

/// Candidates `d0`.. in first-stage order (scores descending).
fn candidates(texts: &[String]) -> Vec<Candidate<usize>> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Candidate::with_handle(
                i,
                Passage::new(t.as_str()).with_id(format!("d{i}")),
                (texts.len() - i) as f32,
            )
        })
        .collect()
}

fn handles<H: Copy>(r: &RerankedResults<H>) -> Vec<H> {
    r.hits.iter().map(|h| h.handle).collect()
}

fn failure_of<H>(r: &RerankedResults<H>, stage: Stage) -> Option<&StageFailure> {
    r.report.stage(stage).and_then(|s| s.failure())
}

// --- 2a: typed failures from the real model -------------------------------------

/// A 1 ms budget on the default model: the pointwise stage starts in time and the
/// deadline passes while it scores; the listwise stage never starts. Both report a
/// deadline, and the first-stage order comes back whole.
#[test]
fn a_1ms_deadline_on_the_default_model_keeps_the_first_stage_order() -> TestResult {
    let reranker = plain_setup().build()?;
    assert!(reranker.pointwise().is_some() && reranker.listwise().is_some());
    let texts = short_texts(40);
    let options = RerankOptions::default().with_timeout(Duration::from_millis(1));
    let out = reranker.rerank("capital of France", candidates(&texts), &options)?;
    assert_eq!(handles(&out), (0..40).collect::<Vec<_>>());
    assert!(out.hits.iter().all(|h| h.placed_by == Stage::First));
    assert!(out.hits.iter().all(|h| h.pointwise_score.is_none()));
    let pw = out.report.stage(Stage::Pointwise).ok_or("no report")?;
    match &pw.status {
        StageStatus::Failed(StageFailure::Deadline { elapsed }) => {
            assert!(!elapsed.is_zero(), "the stage ran, so it took time");
            assert_eq!(*elapsed, pw.elapsed);
        }
        other => panic!("pointwise: not a deadline failure: {other:?}"),
    }
    assert_eq!(
        failure_of(&out, Stage::Listwise),
        Some(&StageFailure::Deadline {
            elapsed: Duration::ZERO
        })
    );
    Ok(())
}

/// An empty query: both stages of the default model refuse it with
/// [`Error::EmptyInput`], reported as a model error; the first-stage order stands.
#[test]
fn an_empty_query_is_a_model_error_of_each_stage() -> TestResult {
    let reranker = plain_setup().build_on(model())?;
    let texts = short_texts(3);
    let out = reranker.rerank("   ", candidates(&texts), &RerankOptions::default())?;
    assert_eq!(handles(&out), [0, 1, 2]);
    assert!(out.hits.iter().all(|h| h.placed_by == Stage::First));
    for stage in [Stage::Pointwise, Stage::Listwise] {
        let why = failure_of(&out, stage);
        assert!(
            matches!(
                why,
                Some(StageFailure::Model(e)) if matches!(e.as_ref(), Error::EmptyInput(_))
            ),
            "{stage}: {why:?}"
        );
    }
    Ok(())
}

/// The default setup: the shipped pointwise student (a `score` head) fused with BM25,
/// no listwise stage; its hits are ordered by the fused score, which is their relevance.
#[test]
fn the_default_setup_is_the_student_fused_with_the_first_stage() -> TestResult {
    let setup = DearSetup::default_model();
    assert_eq!(setup.fusion(), dear_core::DEFAULT_STUDENT_FUSION);
    assert_eq!(setup.stages(), POINTWISE);
    let student = dear_core::default_student_path();
    assert_eq!(
        setup.pointwise_adapter(),
        Some(student.to_string_lossy().as_ref())
    );
    let reranker = setup.build()?;
    assert!(reranker.pointwise().is_some() && reranker.listwise().is_none());
    assert_eq!(reranker.fusion(), dear_core::DEFAULT_STUDENT_FUSION);
    let texts = [
        "Cargo is Rust's build system and package manager.",
        "A Mutex lets threads share data safely: one thread at a time holds the lock.",
        "The borrow checker rejects data races at compile time.",
        "Channels send values from one thread to another.",
    ]
    .map(String::from);
    let out = reranker.rerank(
        "how do threads share data safely",
        candidates(&texts),
        &RerankOptions::default(),
    )?;
    assert_eq!(
        out.report.stage(Stage::Pointwise).map(|s| &s.status),
        Some(&StageStatus::Completed)
    );
    let fused: Vec<f32> = out
        .hits
        .iter()
        .map(|h| h.fused_score.unwrap_or(f32::NAN))
        .collect();
    assert!(fused.windows(2).all(|w| w[0] >= w[1]), "{fused:?}");
    assert!(out
        .hits
        .iter()
        .all(|h| h.relevance == h.fused_score.unwrap_or(-1.0)));
    // The same scores through the library's own pieces: the student alone, then the fusion.
    let alone = reranker.rerank(
        "how do threads share data safely",
        candidates(&texts),
        &RerankOptions::default().with_fusion(dear_core::Fusion::Off),
    )?;
    let mut by_first = alone.hits.clone();
    by_first.sort_by_key(|h| h.first_rank);
    let student_scores: Vec<f32> = by_first
        .iter()
        .map(|h| h.pointwise_score.unwrap_or(f32::NAN))
        .collect();
    let first_scores: Vec<f32> = by_first.iter().map(|h| h.first_score).collect();
    let expect = dear_core::DEFAULT_STUDENT_FUSION.fuse(&first_scores, &student_scores);
    for h in &out.hits {
        assert_eq!(h.fused_score, Some(expect[h.index]));
    }
    Ok(())
}

// --- 2b: a listwise pass stopped in its second window ----------------------------

/// A passage the rankllm prompt keeps 300 words of, each word many tokens long: ten
/// of them overflow the default model's context.
fn huge_passage(i: usize) -> String {
    (0..300)
        .map(|w| format!("q{i}x{w}#z%k@v&j~9"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// 30 passages: ranks 0..9 huge, 10..29 short. Under DeAR's windows (10..30, then
/// 0..20) the first window fits and the second overflows the context.
fn overflowing_list() -> Vec<String> {
    let mut texts: Vec<String> = (0..10).map(huge_passage).collect();
    texts.extend(short_texts(20));
    texts
}

fn first_token_ranker() -> Result<ListwiseRanker, Error> {
    ListwiseRanker::new(
        model(),
        None,
        ListwiseConfig {
            mode: ListwiseMode::FirstToken,
            ..ListwiseConfig::default()
        },
    )
}

fn is_context_overflow(f: Option<&StageFailure>) -> bool {
    matches!(
        f,
        Some(StageFailure::Model(e)) if matches!(
            e.as_ref(),
            Error::ContextOverflow { tokens, max, .. } if tokens > max
        )
    )
}

#[test]
fn a_listwise_failure_in_window_k_keeps_the_windows_before_it() -> TestResult {
    let ranker = first_token_ranker()?;
    let query = Query::new("capital of France");
    let texts = overflowing_list();
    let passages: Vec<Passage> = texts.iter().map(|t| Passage::new(t.as_str())).collect();
    // What the first window (ranks 10..30) does on its own.
    let alone = ranker.rank(
        &query,
        &passages[10..],
        &ListwiseOptions::default().with_window(WindowConfig::top(20)),
    )?;
    assert!(alone.failure.is_none(), "{:?}", alone.failure);
    let moved: Vec<usize> = alone.order.iter().map(|&k| 10 + k).collect();
    assert_ne!(
        moved,
        (10..30).collect::<Vec<_>>(),
        "the first window must move something for this test to mean anything"
    );

    let outcome = ranker.rank(
        &query,
        &passages,
        &ListwiseOptions::default().with_window(WindowConfig::dear_eval()),
    )?;
    assert!(
        is_context_overflow(outcome.failure.as_ref()),
        "{:?}",
        outcome.failure
    );
    assert_eq!(outcome.windows.len(), 1, "only the first window finished");
    let w = &outcome.windows[0];
    assert_eq!((w.start, w.end), (10, 30));
    assert_eq!((w.failure.as_ref(), w.parsed_ids), (None, 20));
    // Ranks 0..9 untouched, 10..29 in the first window's order.
    let expected: Vec<usize> = (0..10).chain(moved.iter().copied()).collect();
    assert_eq!(outcome.order, expected);

    // Through the pipeline: the listwise stage failed, yet the hits the finished window
    // placed are the listwise stage's; the ranks above it kept the first-stage order.
    let reranker = Reranker::new().with_listwise(first_token_ranker()?);
    let options = RerankOptions::default()
        .with_stages(LISTWISE)
        .with_listwise_depth(30)
        .with_window(20, 10);
    let out = reranker.rerank(&query.text, candidates(&texts), &options)?;
    assert!(is_context_overflow(failure_of(&out, Stage::Listwise)));
    assert_eq!(handles(&out), expected);
    for (r, hit) in out.hits.iter().enumerate() {
        if r < 10 {
            assert_eq!((hit.placed_by, hit.listwise_position), (Stage::First, None));
        } else {
            assert_eq!(
                (hit.placed_by, hit.listwise_position),
                (Stage::Listwise, Some(r + 1)),
                "rank {r}"
            );
        }
    }
    Ok(())
}

// --- 2c: the Cohere-shaped call ------------------------------------------------------

const RAIN_DOCS: [&str; 6] = [
    "Paris is the capital and most populous city of France.",
    "Rain forms when water droplets in clouds coalesce into drops heavy enough to fall.",
    "Stir the flour and butter together, then whisk in the milk until the sauce thickens.",
    "Weather forecasts are broadcast every evening on the local news.",
    "Deserts receive very little precipitation each year.",
    "Umbrellas have been used for thousands of years to keep off sun and water.",
];

#[test]
fn rank_returns_scheduler_order_with_relevances() -> TestResult {
    let reranker = pointwise_reranker()?;
    let query = "what causes rain";
    let all = reranker.rank(
        query,
        RAIN_DOCS,
        &RerankOptions::default().with_return_documents(true),
    )?;
    let r = &all.results;
    assert_eq!(r.len(), RAIN_DOCS.len());
    assert_eq!(
        all.report.stage(Stage::Pointwise).map(|s| &s.status),
        Some(&StageStatus::Completed)
    );
    // `index` maps back to the input, and `document` is that input.
    let mut seen: Vec<usize> = r.iter().map(|d| d.index).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..RAIN_DOCS.len()).collect::<Vec<_>>());
    for d in r {
        assert_eq!(d.document, Some(Passage::new(RAIN_DOCS[d.index])));
        assert_eq!(d.placed_by, Stage::Pointwise);
        assert!((0.0..=1.0).contains(&d.relevance_score), "{d:?}");
        assert_eq!(d.relevance_score, relevance(d.score));
    }
    // Sorted by relevance; strictly monotone in the raw score.
    for pair in r.windows(2) {
        assert!(pair[0].relevance_score >= pair[1].relevance_score);
    }
    for a in r {
        for b in r {
            assert_eq!(
                a.score > b.score,
                a.relevance_score > b.relevance_score,
                "{a:?} vs {b:?}"
            );
        }
    }

    // The same ranking as the scheduler's scores of the same texts.
    let scheduler = Scheduler::new(model(), None, PointwiseConfig::yes_no())?;
    let passages: Vec<Passage> = RAIN_DOCS.iter().map(|t| Passage::new(*t)).collect();
    let scores = scheduler.score(&Query::new(query), &passages, None)?.scores;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    assert_eq!(r.iter().map(|d| d.index).collect::<Vec<_>>(), order);
    for d in r {
        assert!((d.score - scores[d.index]).abs() < 1e-5, "{d:?}");
    }

    // No documents unless asked for.
    let plain = reranker.rank(query, RAIN_DOCS, &RerankOptions::default())?;
    assert!(plain.results.iter().all(|d| d.document.is_none()));
    assert_eq!(
        plain.results.iter().map(|d| d.index).collect::<Vec<_>>(),
        order
    );
    // `top_n` cuts the list.
    let top = reranker.rank(query, RAIN_DOCS, &RerankOptions::default().with_top_n(2))?;
    assert_eq!(top.results, plain.results[..2]);
    // `min_score` drops what is below it: a threshold between the 3rd and 4th.
    let cut = (r[2].relevance_score + r[3].relevance_score) / 2.0;
    assert!(r[2].relevance_score > cut && cut > r[3].relevance_score);
    let kept = reranker.rank(
        query,
        RAIN_DOCS,
        &RerankOptions::default().with_min_score(cut),
    )?;
    assert_eq!(kept.results, plain.results[..3]);
    let both = reranker.rank(
        query,
        RAIN_DOCS,
        &RerankOptions::default().with_min_score(cut).with_top_n(5),
    )?;
    assert_eq!(both.results.len(), 3);
    Ok(())
}

// --- 2d: MaxP ------------------------------------------------------------------------

/// ~280 tokens that say nothing of rain.
const FILLER: &str = "The printing press was developed in the fifteenth century by Johannes Gutenberg in the city of Mainz. His system combined movable metal type, an oil-based ink and a wooden screw press adapted from those used to make wine and olive oil. Before it, books in Europe were copied by hand in monasteries, a slow and costly process that kept them rare and expensive. Within a few decades, print shops had opened in more than two hundred towns, from Venice and Paris to Cracow and London. Printers produced Bibles, grammars, calendars, legal codes and pamphlets, and the price of a book fell sharply. Scholars could compare identical copies of the same text, which changed how errors were found and corrected. The new trade needed paper mills, type founders, bookbinders and merchants who carried stock to fairs such as the one held each spring in Frankfurt. Guilds argued over who was allowed to print, and rulers soon demanded licences and censors to control what was sold. The spread of cheap pamphlets helped religious reformers reach readers across the German lands within weeks. Typefaces evolved as well: blackletter remained popular in the north, while roman and italic designs spread from Italian workshops. Title pages, page numbers and indexes became common features that readers came to expect. Historians still debate how quickly literacy rose as a result, since many people continued to hear texts read aloud rather than reading them alone.";

const RAIN: &str =
    "Rain forms when water droplets in clouds coalesce into drops heavy enough to fall as rain.";

/// The long passage (filler, then the one relevant sentence), the filler alone, and
/// distractors.
fn maxp_docs() -> Vec<String> {
    vec![
        format!("{FILLER} {RAIN}"),
        FILLER.to_string(),
        "Umbrellas keep off the rain.".to_string(),
        "Paris is the capital and most populous city of France.".to_string(),
    ]
}

/// The default model with MaxP: the long passage's relevant sentence lies past what
/// truncation reads; chunking scores it, and the first chunk is what truncation reads,
/// so MaxP never scores a passage below its truncation.
#[test]
fn maxp_reads_past_the_truncation_on_the_default_model() -> TestResult {
    let reranker = pointwise_reranker()?;
    let stage = reranker.pointwise().ok_or("no pointwise stage")?;
    let tok = reranker.tokenizer().ok_or("no tokenizer")?;
    let docs = maxp_docs();
    let budget = stage
        .text_budget(&Passage::new(docs[0].as_str()))
        .ok_or("no budget")?;
    let sentence_at = docs[0].find(RAIN).ok_or("no sentence")?;
    let before = tok.encode(&docs[0][..sentence_at], false)?.len();
    assert!(before > budget + 50, "{before} tokens before the sentence");

    let query = "what causes rain";
    let truncated = reranker.rank(query, &docs, &RerankOptions::default())?;
    let score = |r: &dear_core::Ranking, i: usize| {
        r.results
            .iter()
            .find(|d| d.index == i)
            .map(|d| (d.score, d.best_chunk))
            .ok_or("missing result")
    };
    let (long_t, chunk_t) = score(&truncated, 0)?;
    let (filler_t, _) = score(&truncated, 1)?;
    assert_eq!(chunk_t, None);
    // Truncation cannot see the sentence: the long passage scores as its filler.
    assert!((long_t - filler_t).abs() < 1e-5, "{long_t} vs {filler_t}");

    let chunked = reranker.rank(
        query,
        &docs,
        &RerankOptions::default().with_chunking(Chunking::max_p()),
    )?;
    let (long_m, chunk_m) = score(&chunked, 0)?;
    let chunk = chunk_m.ok_or("the long passage was not split")?;
    assert!(chunk.of >= 2, "{chunk:?}");
    assert!(
        long_m >= long_t - 1e-5,
        "MaxP {long_m} < truncation {long_t}"
    );
    // The score is the winning chunk's own score.
    let scheduler = Scheduler::new(model(), None, PointwiseConfig::yes_no())?;
    let won = Passage::new(&docs[0][chunk.start..chunk.end]);
    let alone = scheduler.score(&Query::new(query), &[won], None)?.scores;
    assert!((alone[0] - long_m).abs() < 1e-5, "{alone:?} vs {long_m}");
    // Short passages are not split and keep their scores.
    for i in 2..docs.len() {
        let (t, m) = (score(&truncated, i)?, score(&chunked, i)?);
        assert_eq!(m.1, None);
        assert!((t.0 - m.0).abs() < 1e-5, "doc {i}: {t:?} vs {m:?}");
    }
    Ok(())
}

/// Scores a passage by how often the word "rain" occurs in what it reads, reading as
/// much as the default model's pointwise stage (its tokenizer and budget); truncates
/// the rest, as that stage does.
struct RainCounter {
    inner: Scheduler,
}

impl PointwiseStage for RainCounter {
    fn key(&self) -> String {
        "rain-counter".into()
    }

    fn score(
        &self,
        _: &Query,
        passages: &[Passage],
        _: Option<Instant>,
    ) -> dear_core::Result<Scored> {
        let tok = self.inner.scorer().model().tokenizer();
        let mut scores = Vec::with_capacity(passages.len());
        for p in passages {
            let budget = self.inner.scorer().text_budget(p)?;
            let (read, _) = tok.truncate_text(&p.text, budget)?;
            let n = read
                .split(|c: char| !c.is_alphabetic())
                .filter(|w| w.eq_ignore_ascii_case("rain"))
                .count();
            scores.push(n as f32);
        }
        Ok(Scored { scores, tokens: 0 })
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        Some(self.inner.scorer().model().tokenizer())
    }

    fn text_budget(&self, passage: &Passage) -> Option<usize> {
        self.inner.scorer().text_budget(passage).ok()
    }
}

/// MaxP's mechanics, with the default model's tokenizer and budget and a scorer that
/// sees exactly what it reads: the sentence past the budget is found, its chunk wins,
/// and the passage moves up.
#[test]
fn maxp_finds_the_sentence_past_the_budget_and_moves_its_passage_up() -> TestResult {
    let reranker = Reranker::new().with_pointwise(RainCounter {
        inner: Scheduler::new(model(), None, PointwiseConfig::yes_no())?,
    });
    let docs = maxp_docs();
    let query = "what causes rain";
    let truncated = reranker.rank(query, &docs, &RerankOptions::default())?;
    let order = |r: &dear_core::Ranking| r.results.iter().map(|d| d.index).collect::<Vec<_>>();
    // Truncated: the umbrella passage (one "rain") first; the long passage reads as
    // its filler (none) and stays in input order behind it.
    assert_eq!(order(&truncated), [2, 0, 1, 3]);
    assert_eq!(truncated.results[1].score, truncated.results[2].score);
    assert_eq!(truncated.results[1].score, 0.0);

    let chunked = reranker.rank(
        query,
        &docs,
        &RerankOptions::default().with_chunking(Chunking::max_p()),
    )?;
    // The long passage now leads with its sentence's two "rain"s.
    assert_eq!(order(&chunked), [0, 2, 1, 3]);
    let top = &chunked.results[0];
    assert_eq!(top.score, 2.0);
    let chunk = top.best_chunk.ok_or("no chunk")?;
    assert!(chunk.chunk > 0 && chunk.chunk < chunk.of, "{chunk:?}");
    let at = docs[0].find(RAIN).ok_or("no sentence")?;
    assert!(
        chunk.start <= at && at + RAIN.len() <= chunk.end,
        "{chunk:?} does not hold the sentence at {at}"
    );
    // The filler alone is split too, but none of its chunks says "rain".
    let filler = chunked
        .results
        .iter()
        .find(|d| d.index == 1)
        .ok_or("no filler")?;
    assert_eq!(filler.score, 0.0);
    Ok(())
}
