//! The pipeline: first-stage candidates → pointwise scores → listwise reordering of
//! the top, each stage falling back to the order before it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::pipeline::cache::{Key, ScoreCache};
use crate::pipeline::chunk::chunk_of;
use crate::pipeline::fusion::Fusion;
use crate::rerank::is_permutation;
use crate::{
    ChunkSpan, LanguageModel, ListwiseConfig, ListwiseOptions, ListwiseRanker, ListwiseStage,
    Passage, PointwiseConfig, PointwiseStage, Query, RerankOptions, RerankReport, RerankedHit,
    RerankedResults, Scheduler, Stage, StageFailure, StageReport, StageStatus, Tokenizer,
};

/// A first-stage candidate handed to [`Reranker::rerank`], best first.
///
/// `H` is the caller's handle for it (a tantivy `DocAddress`, a database key, an
/// index into the caller's list, or `()`), given back untouched on the hit.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate<H = ()> {
    /// The caller's handle.
    pub handle: H,
    /// The passage the stages read.
    pub passage: Passage,
    /// Its first-stage score.
    pub score: f32,
}

impl Candidate {
    /// A candidate with no handle.
    pub fn new(passage: impl Into<Passage>, score: f32) -> Self {
        Self::with_handle((), passage, score)
    }
}

impl<H> Candidate<H> {
    /// A candidate carrying the caller's `handle`.
    pub fn with_handle(handle: H, passage: impl Into<Passage>, score: f32) -> Self {
        Self {
            handle,
            passage: passage.into(),
            score,
        }
    }
}

/// One result of [`Reranker::rank`], in the shape of Cohere's, Jina's and TEI's
/// rerank APIs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankedDocument {
    /// The document's position in the input.
    pub index: usize,
    /// The raw score of the stage that ranked it by score (see
    /// [`RerankedHit::score`]).
    pub score: f32,
    /// A relevance in `[0, 1]`, non-increasing along the results (see
    /// [`relevance`]).
    pub relevance_score: f32,
    /// The stage whose order placed it.
    pub placed_by: Stage,
    /// Which chunk of the document won, when chunking split it.
    pub best_chunk: Option<ChunkSpan>,
    /// The document, when [`RerankOptions::with_return_documents`] asks for it.
    pub document: Option<Passage>,
}

/// What [`Reranker::rank`] returns: the documents best first, and the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ranking {
    /// The documents, best first, cut by `min_score` and `top_n`.
    pub results: Vec<RankedDocument>,
    /// What each stage did.
    pub report: RerankReport,
}

/// The relevance in `[0, 1]` dear gives a raw score: the logistic sigmoid,
/// `1 / (1 + e^-score)`, a strictly increasing map.
///
/// For DeAR's classifier head, it is the probability of relevance the logit stands
/// for; for the yes/no head (whose score is `logit(yes) - logit(no)`), it is
/// P(yes | yes or no). For first-stage scores (BM25, cosine) it is only a monotone
/// squash. Hits the listwise stage placed take the relevances of the hits they
/// displaced, in listwise order, so relevance never increases down a result list.
///
/// ```
/// assert_eq!(dear_core::relevance(0.0), 0.5);
/// assert!(dear_core::relevance(3.0) > dear_core::relevance(2.0));
/// ```
pub fn relevance(score: f32) -> f32 {
    if score.is_nan() {
        return 0.0;
    }
    1.0 / (1.0 + (-score).exp())
}

/// The reranking pipeline: a pointwise stage, a listwise stage and their score cache,
/// knowing nothing of any search engine. One `Reranker` serves any number of
/// indexes, engines and threads (`Send + Sync`; share it by reference or in an `Arc`).
///
/// # Example
/// ```
/// use dear_core::{Candidate, Reranker, RerankOptions, Stage};
/// // No model stage configured: the first-stage order comes back, and the report says
/// // why. `Reranker::for_model` or `DearSetup` adds DeAR's stages.
/// let reranker = Reranker::new();
/// let candidates = vec![
///     Candidate::new("A Mutex guards shared data across threads.", 12.5),
///     Candidate::new("Channels send values between threads.", 9.0),
/// ];
/// let results = reranker.rerank("shared data between threads", candidates, &RerankOptions::default())?;
/// assert_eq!(results.hits[0].index, 0);
/// assert_eq!(results.hits[0].placed_by, Stage::First);
/// # Ok::<(), dear_core::Error>(())
/// ```
pub struct Reranker {
    pointwise: Option<Arc<dyn PointwiseStage>>,
    listwise: Option<Arc<dyn ListwiseStage>>,
    fusion: Fusion,
    cache: ScoreCache,
}

impl std::fmt::Debug for Reranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reranker")
            .field("pointwise", &self.pointwise.as_ref().map(|s| s.key()))
            .field("listwise", &self.listwise.as_ref().map(|s| s.key()))
            .field("fusion", &self.fusion)
            .field("cache", &self.cache.len())
            .finish()
    }
}

impl Default for Reranker {
    fn default() -> Self {
        Self::new()
    }
}

/// Default cache sizes: 100,000 pointwise scores (a thousand queries of 100
/// candidates), 1,000 listwise orders.
const POINTWISE_CACHE: usize = 100_000;
const LISTWISE_CACHE: usize = 1_000;

impl Reranker {
    /// A reranker with no stage yet (calls return the first-stage order).
    pub fn new() -> Self {
        Self {
            pointwise: None,
            listwise: None,
            fusion: Fusion::Off,
            cache: ScoreCache::new(POINTWISE_CACHE, LISTWISE_CACHE),
        }
    }

    /// Both stages over one model: the pointwise stage reads DeAR's classifier head
    /// if the model has a `score` head and the yes/no prompt otherwise
    /// ([`PointwiseConfig::for_model`]); the listwise stage (rankllm prompt, free
    /// generation) is added if the model has a chat template.
    ///
    /// # Errors
    /// Errors of [`Scheduler::new`] and [`ListwiseRanker::new`].
    pub fn for_model(lm: Arc<LanguageModel>) -> crate::Result<Self> {
        let config = PointwiseConfig::for_model(&lm, None)?;
        let mut reranker = Self::new().with_pointwise(Scheduler::new(lm.clone(), None, config)?);
        if lm.tokenizer().chat_template().is_some() {
            reranker =
                reranker.with_listwise(ListwiseRanker::new(lm, None, ListwiseConfig::default())?);
        }
        Ok(reranker)
    }

    /// Sets the pointwise stage.
    #[must_use]
    pub fn with_pointwise(mut self, stage: impl PointwiseStage + 'static) -> Self {
        self.pointwise = Some(Arc::new(stage));
        self
    }

    /// Sets the listwise stage.
    #[must_use]
    pub fn with_listwise(mut self, stage: impl ListwiseStage + 'static) -> Self {
        self.listwise = Some(Arc::new(stage));
        self
    }

    /// How the pointwise order fuses the model's scores with the first stage's when a
    /// request does not say ([`RerankOptions::with_fusion`]). Default: [`Fusion::Off`]
    /// (DeAR's: the model's scores alone).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a weight out of
    /// range.
    pub fn with_fusion(mut self, fusion: Fusion) -> crate::Result<Self> {
        fusion.validate()?;
        self.fusion = fusion;
        Ok(self)
    }

    /// The fusion used when a request does not ask for one.
    pub fn fusion(&self) -> Fusion {
        self.fusion
    }

    /// Sets the cache sizes (pointwise scores, listwise orders); 0 disables a cache.
    /// Default: 100,000 and 1,000.
    #[must_use]
    pub fn with_cache_capacity(mut self, pointwise: usize, listwise: usize) -> Self {
        self.cache = ScoreCache::new(pointwise, listwise);
        self
    }

    /// Empties the caches.
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    /// The pointwise stage, if any.
    pub fn pointwise(&self) -> Option<&dyn PointwiseStage> {
        self.pointwise.as_deref()
    }

    /// The listwise stage, if any.
    pub fn listwise(&self) -> Option<&dyn ListwiseStage> {
        self.listwise.as_deref()
    }

    /// The tokenizer of the stages (the pointwise stage's first).
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.pointwise
            .as_ref()
            .and_then(|s| s.tokenizer())
            .or_else(|| self.listwise.as_ref().and_then(|s| s.tokenizer()))
    }

    /// Reranks `documents` for `query`, in the shape of Cohere's, Jina's and TEI's
    /// rerank APIs (sentence-transformers' `CrossEncoder.rank`): the documents come in
    /// as plain texts (or [`Passage`]s, or `(title, text)` pairs) in no particular
    /// order; the results come back best first with their input `index`, raw score and
    /// a relevance in `[0, 1]`, cut to the options' `top_n` and `min_score`.
    ///
    /// The input order is the first stage: with no model stage (or when every stage
    /// fails) the documents come back in it. The documents have no first-stage
    /// scores, so the reranker's default [`Fusion`] does not apply here: the model's
    /// scores alone order them, unless the options set a fusion.
    ///
    /// # Example
    /// ```
    /// use dear_core::{Reranker, RerankOptions};
    /// let reranker = Reranker::new(); // add stages with `Reranker::for_model` or `DearSetup`
    /// let ranking = reranker.rank(
    ///     "what causes rain",
    ///     ["Rain forms when droplets coalesce.", "Paris is in France."],
    ///     &RerankOptions::default().with_top_n(1).with_return_documents(true),
    /// )?;
    /// assert_eq!(ranking.results.len(), 1);
    /// assert_eq!(ranking.results[0].index, 0);
    /// assert!((0.0..=1.0).contains(&ranking.results[0].relevance_score));
    /// # Ok::<(), dear_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for options that fail
    /// [`RerankOptions::validate`]. Stage failures are reported, never returned.
    pub fn rank<D: Into<Passage>>(
        &self,
        query: &str,
        documents: impl IntoIterator<Item = D>,
        options: &RerankOptions,
    ) -> crate::Result<Ranking> {
        let candidates: Vec<Candidate> = documents
            .into_iter()
            .map(|d| Candidate::new(d, 0.0))
            .collect();
        let n = candidates.len();
        // Every document is reranked: they all came from the caller on purpose. They
        // carry no first-stage scores, so there is nothing to fuse the model's scores
        // with unless the options ask for it (rank fusion with the input order).
        let mut options = options.clone().with_candidates(n.max(1));
        if options.fusion().is_none() {
            options = options.with_fusion(Fusion::Off);
        }
        let results = self.rerank(query, candidates, &options)?;
        let return_documents = options.return_documents();
        Ok(Ranking {
            results: results
                .hits
                .into_iter()
                .map(|h| RankedDocument {
                    index: h.index,
                    score: h.score(),
                    relevance_score: h.relevance,
                    placed_by: h.placed_by,
                    best_chunk: h.best_chunk,
                    document: return_documents.then_some(h.passage),
                })
                .collect(),
            report: results.report,
        })
    }

    /// Reranks first-stage `candidates` (best first) for `query`: the first
    /// [`candidates`](RerankOptions::candidates) pointwise, then the top
    /// [`listwise_depth`](RerankOptions::listwise_depth) of that order listwise; any
    /// further candidates follow in their first-stage order. Stage failures are
    /// reported, never returned: every candidate comes back (unless `min_score` or
    /// `top_n` cut the list).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for options that fail
    /// [`RerankOptions::validate`].
    pub fn rerank<H>(
        &self,
        query: &str,
        candidates: Vec<Candidate<H>>,
        options: &RerankOptions,
    ) -> crate::Result<RerankedResults<H>> {
        options.validate()?;
        let start = options.started_at().unwrap_or_else(Instant::now);
        let deadline = options.deadline_from(start);
        let query_struct = Query::new(query);
        let total = candidates.len();
        let n = total.min(options.candidates());
        let mut first = StageReport::new(Stage::First);
        first.status = StageStatus::Completed;
        first.passages = total;
        first.elapsed = start.elapsed();

        // The passages the stages read (cut to the token cap, if any).
        let mut cut_note = None;
        let passages: Vec<Passage> = match options.max_passage_tokens() {
            None => candidates[..n].iter().map(|c| c.passage.clone()).collect(),
            Some(max) => {
                let tokenizer = self.tokenizer();
                candidates[..n]
                    .iter()
                    .map(|c| {
                        let (p, note) = cut_passage(&c.passage, max, tokenizer);
                        cut_note = cut_note.take().or(note);
                        p
                    })
                    .collect()
            }
        };
        if let Some(note) = cut_note {
            first.notes.push(note);
        }

        // Pointwise: the reranked candidates.
        let mut order: Vec<usize> = (0..n).collect();
        let mut pointwise_scores: Vec<Option<f32>> = vec![None; n];
        let mut best_chunks: Vec<Option<ChunkSpan>> = vec![None; n];
        let mut fused_scores: Option<Vec<f32>> = None;
        let mut pointwise_ok = false;
        let mut pw = StageReport::new(Stage::Pointwise);
        let mut pw_ran = false;
        let t = Instant::now();
        match (&self.pointwise, options.stages().pointwise) {
            (_, false) => pw.status = StageStatus::Skipped("not requested".into()),
            (None, true) => {
                pw.status = StageStatus::Skipped("no pointwise stage configured".into())
            }
            (Some(_), true) if n == 0 => pw.status = StageStatus::Skipped("no candidates".into()),
            (Some(_), true) if deadline.is_some_and(|d| Instant::now() >= d) => {
                pw.status = StageStatus::Failed(StageFailure::Deadline {
                    elapsed: Duration::ZERO,
                })
            }
            (Some(stage), true) => {
                pw_ran = true;
                // A panic under the stage (a kernel, a plugged-in stage) is caught here:
                // it fails the stage, never the call, and the first-stage order stays.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.run_pointwise(
                        stage.as_ref(),
                        &query_struct,
                        &passages,
                        options,
                        deadline,
                        &mut pw,
                    )
                }))
                .unwrap_or_else(|payload| Err(StageFailure::from_panic(payload.as_ref())));
                match run {
                    Ok((scores, chunks)) => {
                        for (slot, s) in pointwise_scores.iter_mut().zip(&scores) {
                            *slot = Some(*s);
                        }
                        best_chunks = chunks;
                        let fusion = options.fusion().unwrap_or(self.fusion);
                        let keys = if fusion.is_off() {
                            scores
                        } else {
                            let first: Vec<f32> = candidates[..n].iter().map(|c| c.score).collect();
                            let fused = fusion.fuse(&first, &scores);
                            pw.notes
                                .push(format!("fused with the first stage ({fusion})"));
                            fused_scores = Some(fused.clone());
                            fused
                        };
                        // Stable: equal scores keep their first-stage order.
                        order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]));
                        pointwise_ok = true;
                        pw.status = StageStatus::Completed;
                    }
                    Err(failure) => pw.status = StageStatus::Failed(failure),
                }
            }
        }
        pw.elapsed = t.elapsed();
        // A stage the deadline stopped ran for the stage's whole time; one it kept from
        // starting keeps its zero.
        if let StageStatus::Failed(StageFailure::Deadline { elapsed }) = &mut pw.status {
            if pw_ran {
                *elapsed = pw.elapsed;
            }
        }
        let pointwise_order = order.clone();

        // Listwise: the top of the current order.
        let depth = options.listwise_depth().min(n);
        let mut lw = StageReport::new(Stage::Listwise);
        let mut lw_ran = false;
        // The listwise order stands over ranks `listwise_from..listwise_to`.
        let (mut listwise_from, mut listwise_to) = (0, 0);
        let t = Instant::now();
        match (&self.listwise, options.stages().listwise) {
            (_, false) => lw.status = StageStatus::Skipped("not requested".into()),
            (None, true) => lw.status = StageStatus::Skipped("no listwise stage configured".into()),
            (Some(_), true) if depth < 2 => {
                lw.status = StageStatus::Skipped(format!("{depth} candidate(s) to reorder"))
            }
            (Some(_), true) if deadline.is_some_and(|d| Instant::now() >= d) => {
                lw.status = StageStatus::Failed(StageFailure::Deadline {
                    elapsed: Duration::ZERO,
                })
            }
            (Some(stage), true) => {
                lw_ran = true;
                let top: Vec<Passage> = order[..depth]
                    .iter()
                    .map(|&i| passages[i].clone())
                    .collect();
                lw.passages = depth;
                let (perm, failure) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.run_listwise(
                            stage.as_ref(),
                            &query_struct,
                            &top,
                            options,
                            deadline,
                            &mut lw,
                        )
                    }))
                    .unwrap_or_else(|payload| {
                        (None, Some(StageFailure::from_panic(payload.as_ref())))
                    });
                if let Some((perm, from)) = perm {
                    let head: Vec<usize> = perm.iter().map(|&k| order[k]).collect();
                    order[..depth].copy_from_slice(&head);
                    (listwise_from, listwise_to) = (from.min(depth), depth);
                }
                lw.status = match failure {
                    None => StageStatus::Completed,
                    Some(f) => StageStatus::Failed(f),
                };
            }
        }
        lw.elapsed = t.elapsed();
        if let StageStatus::Failed(StageFailure::Deadline { elapsed }) = &mut lw.status {
            if lw_ran {
                *elapsed = lw.elapsed;
            }
        }
        // A listwise pass that stopped early still placed the windows it finished (the
        // ranks above them kept the order before it).
        let listwise_ranks = listwise_from..listwise_to;

        // Assemble: the reranked candidates, then the rest in first-stage order.
        let mut pointwise_rank = vec![None; n];
        if pointwise_ok {
            for (r, &i) in pointwise_order.iter().enumerate() {
                pointwise_rank[i] = Some(r + 1);
            }
        }
        order.extend(n..total);
        // Relevance: the raw score's, then the listwise top takes the best relevances
        // of the hits it reordered, in its order.
        let relevance_of = |i: usize| -> f32 {
            // Fused scores are relevances already (in [0, 1]).
            if let Some(f) = fused_scores.as_ref().and_then(|f| f.get(i)) {
                return f.clamp(0.0, 1.0);
            }
            relevance(match pointwise_scores.get(i).copied().flatten() {
                Some(s) => s,
                None => candidates[i].score,
            })
        };
        let mut relevances: Vec<f32> = order.iter().map(|&i| relevance_of(i)).collect();
        relevances[listwise_ranks.clone()].sort_by(|a, b| b.total_cmp(a));
        let mut passages: Vec<Option<Passage>> = passages.into_iter().map(Some).collect();
        let mut slots: Vec<Option<Candidate<H>>> = candidates.into_iter().map(Some).collect();
        let mut hits = Vec::with_capacity(total);
        for (r, &i) in order.iter().enumerate() {
            let Some(c) = slots[i].take() else { continue };
            let in_listwise = listwise_ranks.contains(&r);
            let in_pointwise = pointwise_ok && i < n;
            hits.push(RerankedHit {
                handle: c.handle,
                index: i,
                passage: passages
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or(c.passage),
                first_score: c.score,
                first_rank: i + 1,
                pointwise_score: pointwise_scores.get(i).copied().flatten(),
                pointwise_rank: pointwise_rank.get(i).copied().flatten(),
                fused_score: fused_scores.as_ref().and_then(|f| f.get(i).copied()),
                best_chunk: best_chunks.get(i).copied().flatten(),
                listwise_position: in_listwise.then_some(r + 1),
                final_rank: r + 1,
                placed_by: if in_listwise {
                    Stage::Listwise
                } else if in_pointwise {
                    Stage::Pointwise
                } else {
                    Stage::First
                },
                relevance: relevances[r],
            });
        }
        if let Some(min) = options.min_score() {
            hits.retain(|h| h.relevance >= min);
        }
        if let Some(top) = options.top_n() {
            hits.truncate(top);
        }
        for report in [&first, &pw, &lw] {
            if let Some(why) = report.failure() {
                tracing::warn!(stage = %report.stage, "stage failed, previous order kept: {why}");
            }
        }
        Ok(RerankedResults {
            hits,
            report: RerankReport {
                stages: vec![first, pw, lw],
                total: start.elapsed(),
            },
        })
    }

    /// The pointwise score of each passage (the best chunk's, with chunking), and the
    /// winning chunk of the passages that were split.
    fn run_pointwise(
        &self,
        stage: &dyn PointwiseStage,
        query: &Query,
        passages: &[Passage],
        options: &RerankOptions,
        deadline: Option<Instant>,
        report: &mut StageReport,
    ) -> Result<(Vec<f32>, Vec<Option<ChunkSpan>>), StageFailure> {
        let started = Instant::now();
        // With chunking, the inputs are the chunks; `owner[k]` is chunk k's passage.
        let mut chunk_spans: Vec<Vec<(usize, usize)>> = Vec::new();
        let chunked: Option<Vec<Passage>> = match (options.chunking(), stage.tokenizer()) {
            (None, _) => None,
            (Some(_), None) => {
                report.notes.push(
                    "chunking needs a tokenizer and the stage has none: passages truncated".into(),
                );
                None
            }
            (Some(chunking), Some(tok)) => {
                let mut inputs = Vec::new();
                for p in passages {
                    let size = stage.text_budget(p).unwrap_or(usize::MAX);
                    let spans = chunking
                        .spans(&p.text, size, tok)
                        .map_err(|e| StageFailure::from_error(e, started.elapsed()))?;
                    if spans.len() > 1 {
                        inputs.extend(spans.iter().map(|&s| chunk_of(p, s)));
                    } else {
                        inputs.push(p.clone());
                    }
                    chunk_spans.push(spans);
                }
                Some(inputs)
            }
        };
        let inputs: &[Passage] = chunked.as_deref().unwrap_or(passages);
        let scores = self.score_cached(stage, query, inputs, deadline, report, started)?;
        report.passages = passages.len();
        if chunked.is_none() {
            return Ok((scores, vec![None; passages.len()]));
        }
        let mut out = Vec::with_capacity(passages.len());
        let mut best = Vec::with_capacity(passages.len());
        let mut k = 0;
        for spans in &chunk_spans {
            let count = spans.len().max(1);
            let mine = &scores[k..k + count];
            let (win, score) =
                mine.iter()
                    .copied()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |acc, (j, s)| {
                            if s > acc.1 {
                                (j, s)
                            } else {
                                acc
                            }
                        },
                    );
            out.push(score);
            best.push((count > 1).then(|| ChunkSpan {
                chunk: win,
                of: count,
                start: spans[win].0,
                end: spans[win].1,
            }));
            k += count;
        }
        if k > 0 && chunk_spans.iter().any(|s| s.len() > 1) {
            report.notes.push(format!(
                "{} passage(s) split into {k} chunks (MaxP)",
                chunk_spans.iter().filter(|s| s.len() > 1).count()
            ));
        }
        Ok((out, best))
    }

    /// Scores `passages`, answering what it can from the cache.
    fn score_cached(
        &self,
        stage: &dyn PointwiseStage,
        query: &Query,
        passages: &[Passage],
        deadline: Option<Instant>,
        report: &mut StageReport,
        started: Instant,
    ) -> Result<Vec<f32>, StageFailure> {
        let stage_key = stage.key();
        let keys: Vec<Key> = passages
            .iter()
            .map(|p| Key::of(&[&stage_key, &query.text, p]))
            .collect();
        let mut scores: Vec<Option<f32>> = keys.iter().map(|k| self.cache.pointwise(k)).collect();
        let missing: Vec<usize> = (0..passages.len())
            .filter(|&i| scores[i].is_none())
            .collect();
        report.cached = passages.len() - missing.len();
        if !missing.is_empty() {
            // The common case, nothing cached: hand over the passages as they are.
            let todo: std::borrow::Cow<'_, [Passage]> = if missing.len() == passages.len() {
                passages.into()
            } else {
                missing.iter().map(|&i| passages[i].clone()).collect()
            };
            let scored = stage
                .score(query, &todo, deadline)
                .map_err(|e| StageFailure::from_error(e, started.elapsed()))?;
            if scored.scores.len() != todo.len() {
                return Err(StageFailure::InvalidOutput(format!(
                    "the pointwise stage returned {} scores for {} passages",
                    scored.scores.len(),
                    todo.len()
                )));
            }
            if let Some(bad) = scored.scores.iter().find(|s| s.is_nan()) {
                return Err(StageFailure::InvalidOutput(format!(
                    "the pointwise stage returned a {bad} score"
                )));
            }
            report.tokens = scored.tokens;
            self.cache.put_pointwise(
                missing
                    .iter()
                    .map(|&i| keys[i])
                    .zip(scored.scores.iter().copied()),
            );
            for (&i, s) in missing.iter().zip(scored.scores) {
                scores[i] = Some(s);
            }
        }
        Ok(scores
            .into_iter()
            .map(|s| s.unwrap_or(f32::NEG_INFINITY))
            .collect())
    }

    /// The listwise permutation of `top` (positions into it) and the first rank its
    /// order placed, if the stage gave one (also when it stopped early: the work of the
    /// windows it finished, which placed the ranks from the highest of them down), and
    /// why it failed.
    fn run_listwise(
        &self,
        stage: &dyn ListwiseStage,
        query: &Query,
        top: &[Passage],
        options: &RerankOptions,
        deadline: Option<Instant>,
        report: &mut StageReport,
    ) -> (Option<(Vec<usize>, usize)>, Option<StageFailure>) {
        let started = Instant::now();
        let window = options.window_config();
        let key = Key::of(&[
            &stage.key(),
            &query.text,
            &format!("{:?}|{window:?}", options.listwise_mode()),
            &top,
        ]);
        if let Some(order) = self.cache.listwise(&key) {
            report.cached = top.len();
            return (Some((order, 0)), None);
        }
        let call = ListwiseOptions {
            mode: options.listwise_mode(),
            window: Some(window),
            deadline,
        };
        let outcome = match stage.rank(query, top, &call) {
            Ok(o) => o,
            Err(e) => return (None, Some(StageFailure::from_error(e, started.elapsed()))),
        };
        report.tokens = outcome
            .windows
            .iter()
            .map(|w| w.prompt_tokens + w.generated_tokens)
            .sum();
        for w in &outcome.windows {
            if let Some(f) = &w.failure {
                report.window_failures.push(f.clone());
                report
                    .notes
                    .push(format!("window {}..{} kept its order: {f}", w.start, w.end));
            }
        }
        if !is_permutation(&outcome.order, top.len()) {
            return (
                None,
                Some(StageFailure::InvalidOutput(format!(
                    "the listwise stage returned {:?}, not a permutation of 0..{}",
                    outcome.order,
                    top.len()
                ))),
            );
        }
        if let Some(why) = outcome.failure {
            // Stopped early: the order of the windows that gave a ranking stands over
            // the ranks they reached (and anything the stage moved), uncached.
            let moved = outcome.order.iter().enumerate().position(|(i, &k)| i != k);
            let from = outcome
                .windows
                .iter()
                .filter(|w| w.failure.is_none())
                .map(|w| w.start)
                .chain(moved)
                .min();
            return (from.map(|from| (outcome.order, from)), Some(why));
        }
        if !outcome.windows.is_empty() && outcome.windows.iter().all(|w| w.failure.is_some()) {
            report.notes.clear();
            let first = outcome.windows[0]
                .failure
                .clone()
                .unwrap_or(StageFailure::Cancelled);
            return (
                None,
                Some(StageFailure::NoRanking {
                    windows: outcome.windows.len(),
                    first: Box::new(first),
                }),
            );
        }
        self.cache.put_listwise(key, outcome.order.clone());
        (Some((outcome.order, 0)), None)
    }
}

/// `passage` with title and text cut to `max` tokens together (title first), with a
/// note when no tokenizer is available and words are counted instead.
fn cut_passage(
    passage: &Passage,
    max: usize,
    tokenizer: Option<&Tokenizer>,
) -> (Passage, Option<String>) {
    let mut budget = max;
    let mut note = None;
    let mut cut = |text: &str| -> String {
        if let Some(tok) = tokenizer {
            match tok.truncate_text(text, budget) {
                Ok((prefix, used)) => {
                    budget = budget.saturating_sub(used);
                    return prefix.to_string();
                }
                Err(e) => note = Some(format!("passages cut by words: the tokenizer failed ({e})")),
            }
        } else {
            note = Some("passages cut by words: no stage has a tokenizer".into());
        }
        // No token spans more than 64 characters (as in `Tokenizer::truncate_text`), so
        // a text without spaces is cut by characters too.
        let max_chars = budget.saturating_mul(64);
        let text = match text.char_indices().nth(max_chars) {
            Some((i, _)) => &text[..i],
            None => text,
        };
        let words: Vec<&str> = text.split_whitespace().take(budget).collect();
        budget = budget.saturating_sub(words.len());
        words.join(" ")
    };
    let title = passage.title.as_deref().map(&mut cut);
    let text = cut(&passage.text);
    (
        Passage {
            id: passage.id.clone(),
            title,
            text,
        },
        note,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crate::{Error as CoreError, ListwiseOutcome, Scored, Stages, WindowReport};

    use super::*;

    /// Scores each passage by the number in its text; counts its calls.
    struct NumberScorer {
        calls: AtomicUsize,
        passages: AtomicUsize,
    }

    impl NumberScorer {
        fn new() -> Self {
            Self {
                calls: AtomicUsize::new(0),
                passages: AtomicUsize::new(0),
            }
        }
    }

    impl PointwiseStage for &'static NumberScorer {
        fn key(&self) -> String {
            "numbers".into()
        }
        fn score(&self, _: &Query, p: &[Passage], _: Option<Instant>) -> crate::Result<Scored> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.passages.fetch_add(p.len(), Ordering::SeqCst);
            Ok(Scored {
                scores: p
                    .iter()
                    .map(|p| p.text.parse::<f32>().unwrap_or(0.0))
                    .collect(),
                tokens: p.len() * 3,
            })
        }
    }

    struct Failing;

    impl PointwiseStage for Failing {
        fn key(&self) -> String {
            "failing".into()
        }
        fn score(&self, _: &Query, _: &[Passage], _: Option<Instant>) -> crate::Result<Scored> {
            Err(CoreError::InvalidArgument("the scorer is broken".into()))
        }
    }

    impl ListwiseStage for Failing {
        fn key(&self) -> String {
            "failing".into()
        }
        fn rank(
            &self,
            _: &Query,
            _: &[Passage],
            _: &ListwiseOptions,
        ) -> crate::Result<ListwiseOutcome> {
            Err(CoreError::InvalidArgument(
                "the listwise model is broken".into(),
            ))
        }
    }

    /// Panics, as a kernel bug or a plugged-in stage might.
    struct Panicking;

    impl PointwiseStage for Panicking {
        fn key(&self) -> String {
            "panicking".into()
        }
        fn score(&self, _: &Query, _: &[Passage], _: Option<Instant>) -> crate::Result<Scored> {
            panic!("index out of bounds in a kernel")
        }
    }

    impl ListwiseStage for Panicking {
        fn key(&self) -> String {
            "panicking".into()
        }
        fn rank(
            &self,
            _: &Query,
            _: &[Passage],
            _: &ListwiseOptions,
        ) -> crate::Result<ListwiseOutcome> {
            panic!("{}", String::from("the listwise stage panicked"))
        }
    }

    /// A panic under a stage fails that stage, never the call: the previous order stays.
    #[test]
    fn a_panicking_stage_fails_and_keeps_the_previous_order() -> crate::Result<()> {
        let r = Reranker::new()
            .with_pointwise(Panicking)
            .with_listwise(Panicking);
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d0", "d1", "d2"]);
        let failures: Vec<(Stage, &StageFailure)> = out.report.failures().collect();
        assert_eq!(
            failures,
            [
                (
                    Stage::Pointwise,
                    &StageFailure::Panicked("index out of bounds in a kernel".into())
                ),
                (
                    Stage::Listwise,
                    &StageFailure::Panicked("the listwise stage panicked".into())
                ),
            ]
        );
        // The listwise stage still runs after a pointwise panic, and reorders.
        let r = Reranker::new()
            .with_pointwise(Panicking)
            .with_listwise(Reverse {
                sleep_past_deadline: false,
            });
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d2", "d1", "d0"]);
        Ok(())
    }

    /// Returns a wrong number of scores.
    struct Short;

    impl PointwiseStage for Short {
        fn key(&self) -> String {
            "short".into()
        }
        fn score(&self, _: &Query, _: &[Passage], _: Option<Instant>) -> crate::Result<Scored> {
            Ok(Scored {
                scores: vec![1.0],
                tokens: 0,
            })
        }
    }

    /// Reverses the list; or sleeps until the deadline and reports it.
    struct Reverse {
        sleep_past_deadline: bool,
    }

    impl ListwiseStage for Reverse {
        fn key(&self) -> String {
            "reverse".into()
        }
        fn rank(
            &self,
            _: &Query,
            p: &[Passage],
            options: &ListwiseOptions,
        ) -> crate::Result<ListwiseOutcome> {
            let window = options.window.unwrap_or_default();
            assert_eq!(window.rank_end, p.len().max(window.rank_end));
            if self.sleep_past_deadline {
                let started = Instant::now();
                if let Some(d) = options.deadline {
                    std::thread::sleep(d.saturating_duration_since(Instant::now()));
                }
                return Ok(ListwiseOutcome {
                    order: (0..p.len()).collect(),
                    windows: Vec::new(),
                    failure: Some(StageFailure::Deadline {
                        elapsed: started.elapsed(),
                    }),
                });
            }
            Ok(ListwiseOutcome {
                order: (0..p.len()).rev().collect(),
                windows: Vec::new(),
                failure: None,
            })
        }
    }

    /// Candidates "d0".."d{n-1}" in first-stage order, with the given texts.
    fn candidates(texts: &[&str]) -> Vec<Candidate> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                handle: (),
                passage: Passage::new(*t).with_id(format!("d{i}")),
                score: (texts.len() - i) as f32,
            })
            .collect()
    }

    fn ids<H>(r: &RerankedResults<H>) -> Vec<&str> {
        r.hits.iter().map(|h| h.id()).collect()
    }

    fn leak<T>(t: T) -> &'static T {
        Box::leak(Box::new(t))
    }

    /// The failure of `stage`, if it failed.
    fn failure_of<H>(r: &RerankedResults<H>, stage: Stage) -> Option<&StageFailure> {
        r.report.stage(stage).and_then(StageReport::failure)
    }

    #[test]
    fn listwise_top_then_pointwise_order() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        let r = Reranker::new()
            .with_pointwise(scorer)
            .with_listwise(Reverse {
                sleep_past_deadline: false,
            });
        let opts = RerankOptions::default().with_listwise_depth(2);
        let out = r.rerank("q", candidates(&["1", "5", "3", "4", "2"]), &opts)?;
        // Pointwise: d1 (5), d3 (4), d2 (3), d4 (2), d0 (1); listwise reverses the top 2.
        assert_eq!(ids(&out), ["d3", "d1", "d2", "d4", "d0"]);
        let stages: Vec<Stage> = out.hits.iter().map(|h| h.placed_by).collect();
        use Stage::*;
        assert_eq!(
            stages,
            [Listwise, Listwise, Pointwise, Pointwise, Pointwise]
        );
        let d3 = &out.hits[0];
        assert_eq!(
            (
                d3.first_rank,
                d3.pointwise_rank,
                d3.listwise_position,
                d3.final_rank
            ),
            (4, Some(2), Some(1), 1)
        );
        assert_eq!(d3.pointwise_score, Some(4.0));
        assert_eq!(out.hits[4].listwise_position, None);
        let pw = out
            .report
            .stage(Pointwise)
            .ok_or(CoreError::Internal("no report".into()))?;
        assert_eq!((pw.passages, pw.tokens, pw.cached), (5, 15, 0));
        assert_eq!(pw.status, StageStatus::Completed);
        assert_eq!(out.report.failures().count(), 0);
        Ok(())
    }

    #[test]
    fn fusion_blends_the_first_stage_into_the_pointwise_order() -> crate::Result<()> {
        // First-stage scores 5, 4, 3, 2, 1 (normalised 1, .75, .5, .25, 0); model scores
        // 0, 10, 9, 1, 2 (normalised 0, 1, .9, .1, .2).
        let texts = ["0", "10", "9", "1", "2"];
        let scorer = leak(NumberScorer::new());
        let r = Reranker::new().with_pointwise(scorer);
        let opts = RerankOptions::default().with_stages(Stages {
            pointwise: true,
            listwise: false,
        });
        // Off (the default): the model alone.
        let out = r.rerank("q", candidates(&texts), &opts)?;
        assert_eq!(ids(&out), ["d1", "d2", "d4", "d3", "d0"]);
        assert!(out.hits.iter().all(|h| h.fused_score.is_none()));
        // Interpolation at 0.5: d1 .875, d2 .7, d0 .5, d3 .175, d4 .1.
        let fused = opts
            .clone()
            .with_fusion(Fusion::Interpolate { weight: 0.5 });
        let out = r.rerank("q", candidates(&texts), &fused)?;
        assert_eq!(ids(&out), ["d1", "d2", "d0", "d3", "d4"]);
        let d0 = &out.hits[2];
        assert_eq!((d0.pointwise_score, d0.fused_score), (Some(0.0), Some(0.5)));
        assert_eq!((d0.pointwise_rank, d0.relevance), (Some(3), 0.5));
        let pw = out.report.stage(Stage::Pointwise);
        assert!(pw.is_some_and(|p| p.notes.iter().any(|n| n.contains("interpolate:0.5"))));
        // The reranker's own setting applies when the request does not say; a request
        // overrides it.
        let r = r.with_fusion(Fusion::Interpolate { weight: 0.0 })?;
        assert_eq!(
            ids(&r.rerank("q", candidates(&texts), &opts)?),
            ["d0", "d1", "d2", "d3", "d4"]
        );
        let off = opts.with_fusion(Fusion::Off);
        assert_eq!(
            ids(&r.rerank("q", candidates(&texts), &off)?),
            ["d1", "d2", "d4", "d3", "d0"]
        );
        // `rank` takes plain texts with no first-stage scores: the reranker's fusion
        // does not apply (the model alone, relevance from its raw scores) unless the
        // options ask for one.
        let plain = RerankOptions::default().with_stages(Stages {
            pointwise: true,
            listwise: false,
        });
        let ranking = r.rank("q", texts, &plain)?;
        let order: Vec<usize> = ranking.results.iter().map(|d| d.index).collect();
        assert_eq!(order, [1, 2, 4, 3, 0]);
        assert_eq!(ranking.results[0].relevance_score, relevance(10.0));
        let fused = plain.with_fusion(Fusion::Interpolate { weight: 0.0 });
        let ranking = r.rank("q", texts, &fused)?;
        assert_eq!(
            ranking.results[0].index, 0,
            "input order when asked to fuse with it"
        );
        let err = Reranker::new()
            .with_fusion(Fusion::Interpolate { weight: 2.0 })
            .unwrap_err();
        assert!(err.to_string().contains("fusion weight"), "{err}");
        Ok(())
    }

    #[test]
    fn failing_stages_keep_the_previous_order_and_say_why() -> crate::Result<()> {
        let r = Reranker::new()
            .with_pointwise(Failing)
            .with_listwise(Failing);
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d0", "d1", "d2"]);
        assert!(out.hits.iter().all(|h| h.placed_by == Stage::First));
        assert!(out.hits.iter().all(|h| h.pointwise_score.is_none()));
        let failures: Vec<(Stage, &StageFailure)> = out.report.failures().collect();
        assert_eq!(failures.len(), 2);
        assert!(
            matches!(
                failures[0],
                (Stage::Pointwise, StageFailure::Model(e))
                    if matches!(e.as_ref(), CoreError::InvalidArgument(m) if m == "the scorer is broken")
            ),
            "{failures:?}"
        );
        assert!(
            matches!(
                failures[1],
                (Stage::Listwise, StageFailure::Model(e))
                    if matches!(e.as_ref(), CoreError::InvalidArgument(m) if m == "the listwise model is broken")
            ),
            "{failures:?}"
        );

        // A failed pointwise stage does not stop a working listwise one.
        let r = Reranker::new()
            .with_pointwise(Short)
            .with_listwise(Reverse {
                sleep_past_deadline: false,
            });
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d2", "d1", "d0"]);
        let why = failure_of(&out, Stage::Pointwise);
        assert!(
            matches!(
                why,
                Some(StageFailure::InvalidOutput(m))
                    if m == "the pointwise stage returned 1 scores for 3 passages"
            ),
            "{why:?}"
        );
        Ok(())
    }

    /// Writes no ranking in any window: `windows` windows over the list, all
    /// unparseable.
    struct Mute {
        windows: usize,
    }

    impl ListwiseStage for Mute {
        fn key(&self) -> String {
            "mute".into()
        }
        fn rank(
            &self,
            _: &Query,
            p: &[Passage],
            _: &ListwiseOptions,
        ) -> crate::Result<ListwiseOutcome> {
            let report = |start: usize, end: usize| WindowReport {
                start,
                end,
                raw: "I cannot rank these.".into(),
                reasoning: None,
                parsed_ids: 0,
                prompt_tokens: 10,
                generated_tokens: 5,
                failure: Some(StageFailure::Unparseable {
                    start,
                    end,
                    output: "I cannot rank these.".into(),
                }),
            };
            Ok(ListwiseOutcome {
                order: (0..p.len()).collect(),
                windows: (0..self.windows)
                    .map(|k| report(self.windows - 1 - k, p.len()))
                    .collect(),
                failure: None,
            })
        }
    }

    #[test]
    fn a_listwise_pass_without_any_ranking_is_a_failure() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        let r = Reranker::new()
            .with_pointwise(scorer)
            .with_listwise(Mute { windows: 1 });
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d1", "d2", "d0"]);
        assert!(out.hits.iter().all(|h| h.placed_by == Stage::Pointwise));
        let why = failure_of(&out, Stage::Listwise);
        let Some(StageFailure::NoRanking { windows, first }) = why else {
            panic!("not a NoRanking failure: {why:?}");
        };
        assert_eq!(*windows, 1);
        assert_eq!(
            **first,
            StageFailure::Unparseable {
                start: 0,
                end: 3,
                output: "I cannot rank these.".into()
            }
        );
        Ok(())
    }

    #[test]
    fn every_window_unparseable_is_no_ranking_with_the_first_failure() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        let r = Reranker::new()
            .with_pointwise(scorer)
            .with_listwise(Mute { windows: 2 });
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        // The pointwise order stands.
        assert_eq!(ids(&out), ["d1", "d2", "d0"]);
        assert!(out.hits.iter().all(|h| h.placed_by == Stage::Pointwise));
        let lw = out
            .report
            .stage(Stage::Listwise)
            .ok_or(CoreError::Internal("no report".into()))?;
        // The first window that ran (1..3) is the one kept.
        match lw.failure() {
            Some(StageFailure::NoRanking { windows: 2, first }) => assert!(
                matches!(
                    first.as_ref(),
                    StageFailure::Unparseable { start: 1, end: 3, output } if output == "I cannot rank these."
                ),
                "{first:?}"
            ),
            other => panic!("not a NoRanking failure over 2 windows: {other:?}"),
        }
        // Each window's own failure is in the report too.
        assert_eq!(lw.window_failures.len(), 2);
        assert!(lw
            .window_failures
            .iter()
            .all(|f| matches!(f, StageFailure::Unparseable { .. })));
        Ok(())
    }

    #[test]
    fn a_stage_past_its_deadline_keeps_the_order_before_it() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        let r = Reranker::new()
            .with_pointwise(scorer)
            .with_listwise(Reverse {
                sleep_past_deadline: true,
            });
        let opts = RerankOptions::default().with_timeout(Duration::from_millis(30));
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &opts)?;
        // Pointwise finished in time; listwise ran out and kept the pointwise order.
        assert_eq!(ids(&out), ["d1", "d2", "d0"]);
        assert!(out.hits.iter().all(|h| h.placed_by == Stage::Pointwise));
        let why = failure_of(&out, Stage::Listwise);
        assert!(
            matches!(why, Some(StageFailure::Deadline { elapsed }) if !elapsed.is_zero()),
            "{why:?}"
        );
        // A deadline already past fails the model stages before they start.
        let opts = RerankOptions::default().with_deadline(Instant::now());
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &opts)?;
        assert_eq!(ids(&out), ["d0", "d1", "d2"]);
        for stage in [Stage::Pointwise, Stage::Listwise] {
            assert_eq!(
                failure_of(&out, stage),
                Some(&StageFailure::Deadline {
                    elapsed: Duration::ZERO
                }),
                "{stage}"
            );
        }
        Ok(())
    }

    #[test]
    fn repeated_queries_come_from_the_cache() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        let r = Reranker::new().with_pointwise(scorer);
        let opts = RerankOptions::default();
        let first = r.rerank("q", candidates(&["1", "5", "3"]), &opts)?;
        let again = r.rerank("q", candidates(&["1", "5", "3"]), &opts)?;
        assert_eq!(first.hits, again.hits);
        assert_eq!(scorer.calls.load(Ordering::SeqCst), 1);
        let pw = again
            .report
            .stage(Stage::Pointwise)
            .map(|s| (s.cached, s.tokens));
        assert_eq!(pw, Some((3, 0)));
        // A new candidate is scored alone; another query is scored afresh.
        r.rerank("q", candidates(&["1", "5", "3", "9"]), &opts)?;
        assert_eq!(scorer.passages.load(Ordering::SeqCst), 4);
        r.rerank("other", candidates(&["1"]), &opts)?;
        assert_eq!(scorer.passages.load(Ordering::SeqCst), 5);
        r.clear_cache();
        r.rerank("q", candidates(&["1"]), &opts)?;
        assert_eq!(scorer.passages.load(Ordering::SeqCst), 6);
        Ok(())
    }

    #[test]
    fn stages_can_be_switched_off_or_absent() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        let r = Reranker::new().with_pointwise(scorer);
        let opts = RerankOptions::default().with_stages(Stages::FIRST);
        let out = r.rerank("q", candidates(&["1", "5"]), &opts)?;
        assert_eq!(ids(&out), ["d0", "d1"]);
        assert_eq!(scorer.calls.load(Ordering::SeqCst), 0);
        let out = r.rerank("q", candidates(&["1", "5"]), &RerankOptions::default())?;
        let lw = out.report.stage(Stage::Listwise).map(|s| s.status.clone());
        assert_eq!(
            lw,
            Some(StageStatus::Skipped("no listwise stage configured".into()))
        );
        // Nothing to rerank is not an error.
        let out = r.rerank("q", Vec::<Candidate>::new(), &RerankOptions::default())?;
        assert!(out.hits.is_empty());
        Ok(())
    }

    #[test]
    fn passages_are_cut_by_words_without_a_tokenizer() {
        let p = Passage::new("one two three four").with_title("a title");
        let (cut, note) = cut_passage(&p, 3, None);
        assert_eq!(cut.title.as_deref(), Some("a title"));
        assert_eq!(cut.text, "one");
        assert!(note.is_some_and(|n| n.contains("by words")));
    }

    // --- Typed failures, one per kind, each keeping the previous order. ---

    /// A pointwise stage that works for `work`, then gives up like a real one when
    /// the deadline has passed (and scores by number otherwise).
    struct Slow {
        work: Duration,
    }

    impl PointwiseStage for Slow {
        fn key(&self) -> String {
            "slow".into()
        }
        fn score(
            &self,
            _: &Query,
            p: &[Passage],
            deadline: Option<Instant>,
        ) -> crate::Result<Scored> {
            let started = Instant::now();
            std::thread::sleep(self.work);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(CoreError::DeadlineExceeded {
                    what: "slow scoring".into(),
                    elapsed_ms: started.elapsed().as_millis(),
                });
            }
            Ok(Scored {
                scores: p
                    .iter()
                    .map(|p| p.text.parse::<f32>().unwrap_or(0.0))
                    .collect(),
                tokens: 0,
            })
        }
    }

    #[test]
    fn a_deadline_mid_stage_is_a_deadline_failure_with_the_time_spent() -> crate::Result<()> {
        let r = Reranker::new()
            .with_pointwise(Slow {
                work: Duration::from_millis(60),
            })
            .with_listwise(Reverse {
                sleep_past_deadline: false,
            });
        let opts = RerankOptions::default().with_timeout(Duration::from_millis(20));
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &opts)?;
        // Neither stage placed anything: the first-stage order stands.
        assert_eq!(ids(&out), ["d0", "d1", "d2"]);
        assert!(out.hits.iter().all(|h| h.placed_by == Stage::First));
        assert!(out.hits.iter().all(|h| h.pointwise_score.is_none()));
        // The pointwise stage ran for its whole 60 ms before it gave up.
        match failure_of(&out, Stage::Pointwise) {
            Some(StageFailure::Deadline { elapsed }) => {
                assert!(*elapsed >= Duration::from_millis(60), "{elapsed:?}")
            }
            other => panic!("not a deadline failure: {other:?}"),
        }
        // The listwise stage never started: its deadline failure took no time.
        assert_eq!(
            failure_of(&out, Stage::Listwise),
            Some(&StageFailure::Deadline {
                elapsed: Duration::ZERO
            })
        );
        // With time enough, the same stage scores.
        let opts = RerankOptions::default()
            .with_timeout(Duration::from_secs(30))
            .with_stages("pointwise".parse()?);
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &opts)?;
        assert_eq!(ids(&out), ["d1", "d2", "d0"]);
        assert_eq!(out.report.failures().count(), 0);
        Ok(())
    }

    /// A pointwise stage that returns the error `make` gives.
    struct Erring(fn() -> CoreError);

    impl PointwiseStage for Erring {
        fn key(&self) -> String {
            "erring".into()
        }
        fn score(&self, _: &Query, _: &[Passage], _: Option<Instant>) -> crate::Result<Scored> {
            Err((self.0)())
        }
    }

    #[test]
    fn model_errors_keep_their_error_variant() -> crate::Result<()> {
        let r = Reranker::new().with_pointwise(Erring(|| {
            CoreError::EmptyInput("the query is empty".into())
        }));
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d0", "d1", "d2"]);
        assert!(out.hits.iter().all(|h| h.placed_by == Stage::First));
        let why = failure_of(&out, Stage::Pointwise);
        assert!(
            matches!(
                why.and_then(StageFailure::model_error),
                Some(CoreError::EmptyInput(m)) if m == "the query is empty"
            ),
            "{why:?}"
        );
        // A batch error (the scheduler shares one error among the calls of a batch)
        // is reported as the error inside it.
        let r = Reranker::new().with_pointwise(Erring(|| {
            CoreError::Batch(Arc::new(CoreError::ContextOverflow {
                what: "a sequence".into(),
                tokens: 9000,
                max: 8192,
            }))
        }));
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d0", "d1", "d2"]);
        let why = failure_of(&out, Stage::Pointwise);
        assert!(
            matches!(
                why.and_then(StageFailure::model_error),
                Some(CoreError::ContextOverflow {
                    tokens: 9000,
                    max: 8192,
                    ..
                })
            ),
            "{why:?}"
        );
        Ok(())
    }

    /// A listwise stage that gives `outcome` (or the error `make` gives).
    struct Canned(fn(usize) -> crate::Result<ListwiseOutcome>);

    impl ListwiseStage for Canned {
        fn key(&self) -> String {
            "canned".into()
        }
        fn rank(
            &self,
            _: &Query,
            p: &[Passage],
            _: &ListwiseOptions,
        ) -> crate::Result<ListwiseOutcome> {
            (self.0)(p.len())
        }
    }

    #[test]
    fn cancellation_is_its_own_failure() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        // The pointwise stage cancelled: the first-stage order stands.
        let r = Reranker::new().with_pointwise(Erring(|| CoreError::Cancelled));
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d0", "d1", "d2"]);
        assert_eq!(
            failure_of(&out, Stage::Pointwise),
            Some(&StageFailure::Cancelled)
        );
        // The listwise call cancelled (as an error, or as the pass's stop reason with
        // nothing done): the pointwise order stands.
        for stage in [
            Canned(|_| Err(CoreError::Cancelled)),
            Canned(|n| {
                Ok(ListwiseOutcome {
                    order: (0..n).collect(),
                    windows: Vec::new(),
                    failure: Some(StageFailure::Cancelled),
                })
            }),
        ] {
            let r = Reranker::new().with_pointwise(scorer).with_listwise(stage);
            let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
            assert_eq!(ids(&out), ["d1", "d2", "d0"]);
            assert!(out.hits.iter().all(|h| h.placed_by == Stage::Pointwise));
            assert_eq!(
                failure_of(&out, Stage::Listwise),
                Some(&StageFailure::Cancelled)
            );
            assert_eq!(failure_of(&out, Stage::Pointwise), None);
        }
        Ok(())
    }

    #[test]
    fn unusable_stage_output_is_invalid_output() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        // A NaN score.
        struct NanScorer;
        impl PointwiseStage for NanScorer {
            fn key(&self) -> String {
                "nan".into()
            }
            fn score(&self, _: &Query, p: &[Passage], _: Option<Instant>) -> crate::Result<Scored> {
                Ok(Scored {
                    scores: vec![f32::NAN; p.len()],
                    tokens: 0,
                })
            }
        }
        let r = Reranker::new().with_pointwise(NanScorer);
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d0", "d1", "d2"]);
        let why = failure_of(&out, Stage::Pointwise);
        assert!(
            matches!(why, Some(StageFailure::InvalidOutput(_))),
            "{why:?}"
        );
        // A listwise order that is not a permutation (a duplicate), also with a stop
        // reason: the pointwise order stands, nothing of it is used.
        for stage in [
            Canned(|n| {
                Ok(ListwiseOutcome {
                    order: vec![0; n],
                    windows: Vec::new(),
                    failure: None,
                })
            }),
            Canned(|n| {
                Ok(ListwiseOutcome {
                    order: (0..n + 1).rev().collect(),
                    windows: Vec::new(),
                    failure: Some(StageFailure::Cancelled),
                })
            }),
        ] {
            let r = Reranker::new().with_pointwise(scorer).with_listwise(stage);
            let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
            assert_eq!(ids(&out), ["d1", "d2", "d0"]);
            assert!(out.hits.iter().all(|h| h.placed_by == Stage::Pointwise));
            let why = failure_of(&out, Stage::Listwise);
            assert!(
                matches!(why, Some(StageFailure::InvalidOutput(_))),
                "{why:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_listwise_pass_stopped_midway_keeps_the_windows_it_finished() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        // Over the pointwise order d1 d2 d0 (positions 0 1 2), a first window swapped
        // positions 1 and 2, then the second window hit a model error.
        let r = Reranker::new()
            .with_pointwise(scorer)
            .with_listwise(Canned(|n| {
                assert_eq!(n, 3);
                Ok(ListwiseOutcome {
                    order: vec![0, 2, 1],
                    windows: vec![WindowReport {
                        start: 1,
                        end: 3,
                        raw: "[2] > [1]".into(),
                        reasoning: None,
                        parsed_ids: 2,
                        prompt_tokens: 10,
                        generated_tokens: 5,
                        failure: None,
                    }],
                    failure: Some(StageFailure::Model(Arc::new(CoreError::ContextOverflow {
                        what: "a listwise prompt".into(),
                        tokens: 9000,
                        max: 8192,
                    }))),
                })
            }));
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d1", "d0", "d2"]);
        // The finished window placed ranks 1 and 2; rank 0 kept the pointwise order.
        let placed: Vec<(Stage, Option<usize>)> = out
            .hits
            .iter()
            .map(|h| (h.placed_by, h.listwise_position))
            .collect();
        assert_eq!(
            placed,
            [
                (Stage::Pointwise, None),
                (Stage::Listwise, Some(2)),
                (Stage::Listwise, Some(3))
            ]
        );
        let why = failure_of(&out, Stage::Listwise);
        assert!(
            matches!(
                why.and_then(StageFailure::model_error),
                Some(CoreError::ContextOverflow { .. })
            ),
            "{why:?}"
        );
        // Relevance still never increases down the list.
        assert!(out
            .hits
            .windows(2)
            .all(|w| w[0].relevance >= w[1].relevance));
        // A partial order is not cached: asking again calls the stage again and
        // reports the failure again.
        let again = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert!(failure_of(&again, Stage::Listwise).is_some());
        Ok(())
    }

    #[test]
    fn handles_come_back_on_their_hits() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        let r = Reranker::new().with_pointwise(scorer);
        #[derive(Clone, Debug, PartialEq)]
        struct Row(u64);
        let cands: Vec<Candidate<Row>> = ["1", "5", "3"]
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate::with_handle(Row(100 + i as u64), *t, 0.0))
            .collect();
        let out = r.rerank("q", cands, &RerankOptions::default())?;
        let handles: Vec<(&Row, usize)> = out.hits.iter().map(|h| (&h.handle, h.index)).collect();
        assert_eq!(handles, [(&Row(101), 1), (&Row(102), 2), (&Row(100), 0)]);
        Ok(())
    }
}
