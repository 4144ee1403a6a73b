//! The pipeline: first-stage candidates → pointwise scores → listwise reordering of
//! the top, each stage falling back to the order before it.

use std::sync::Arc;
use std::time::Instant;

use dear_core::{
    LanguageModel, ListwiseConfig, ListwiseReranker, Passage, PointwiseConfig, Query, Reranker,
    Tokenizer,
};
use tantivy::DocAddress;

use crate::cache::{Key, ScoreCache};
use crate::{
    ListwiseStage, PointwiseStage, RerankOptions, RerankedHit, RerankedResults, SearchReport,
    Stage, StageReport, StageStatus,
};

/// A first-stage candidate handed to [`DearReranker::rerank`], best first.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Where it is in a tantivy index, if it comes from one.
    pub address: Option<DocAddress>,
    /// The passage.
    pub passage: Passage,
    /// Its first-stage score.
    pub score: f32,
}

/// The two reranking stages, their score cache, and nothing about any index: one
/// `DearReranker` serves any number of indexes and threads (`Send + Sync`; share it
/// by reference or in an `Arc`).
///
/// # Example
/// ```no_run
/// use std::sync::Arc;
/// use dear_core::{LanguageModel, LoadOptions};
/// use dear_tantivy::DearReranker;
/// let lm = Arc::new(LanguageModel::load(
///     &dear_core::default_model_path().to_string_lossy(),
///     &LoadOptions::default(),
/// )?);
/// // DeAR's classifier head where the model has one, else the yes/no prompt;
/// // the listwise stage on the same model.
/// let reranker = DearReranker::for_model(lm)?;
/// assert!(reranker.pointwise().is_some());
/// # Ok::<(), dear_tantivy::Error>(())
/// ```
pub struct DearReranker {
    pointwise: Option<Arc<dyn PointwiseStage>>,
    listwise: Option<Arc<dyn ListwiseStage>>,
    cache: ScoreCache,
}

impl std::fmt::Debug for DearReranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DearReranker")
            .field("pointwise", &self.pointwise.as_ref().map(|s| s.key()))
            .field("listwise", &self.listwise.as_ref().map(|s| s.key()))
            .field("cache", &self.cache.len())
            .finish()
    }
}

impl Default for DearReranker {
    fn default() -> Self {
        Self::new()
    }
}

/// Default cache sizes: 100,000 pointwise scores (a thousand queries of 100
/// candidates), 1,000 listwise orders.
const POINTWISE_CACHE: usize = 100_000;
const LISTWISE_CACHE: usize = 1_000;

impl DearReranker {
    /// A reranker with no stage yet (searches return the first-stage order).
    pub fn new() -> Self {
        Self {
            pointwise: None,
            listwise: None,
            cache: ScoreCache::new(POINTWISE_CACHE, LISTWISE_CACHE),
        }
    }

    /// Both stages over one model: the pointwise stage uses DeAR's classifier head if
    /// the model has a `score` head and the yes/no prompt otherwise; the listwise
    /// stage (rankllm prompt, free generation) is added if the model has a chat
    /// template.
    ///
    /// # Errors
    /// Errors of [`Reranker::new`] and [`ListwiseReranker::new`].
    pub fn for_model(lm: Arc<LanguageModel>) -> crate::Result<Self> {
        let config = if lm.llama().score_labels(None).is_some() {
            PointwiseConfig::classifier()
        } else {
            PointwiseConfig::yes_no()
        };
        let mut reranker = Self::new().with_pointwise(Reranker::new(lm.clone(), None, config)?);
        if lm.tokenizer().chat_template().is_some() {
            reranker =
                reranker.with_listwise(ListwiseReranker::new(lm, None, ListwiseConfig::default())?);
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

    /// Reranks first-stage `candidates` (best first) for `query`, engine-agnostic
    /// (this is what [`search_reranked`](crate::SearchReranked::search_reranked) runs
    /// on tantivy's hits; use it directly to rerank a given run). Stage failures are
    /// reported, never returned: every candidate comes back.
    ///
    /// # Errors
    /// [`Error::InvalidOption`](crate::Error::InvalidOption) for settings that fail
    /// [`RerankOptions::validate`].
    pub fn rerank(
        &self,
        query: &str,
        candidates: Vec<Candidate>,
        options: &RerankOptions,
    ) -> crate::Result<RerankedResults> {
        self.rerank_from(
            Instant::now(),
            query,
            candidates,
            options,
            StageReport::new(Stage::Bm25),
        )
    }

    pub(crate) fn rerank_from(
        &self,
        start: Instant,
        query: &str,
        candidates: Vec<Candidate>,
        options: &RerankOptions,
        mut first: StageReport,
    ) -> crate::Result<RerankedResults> {
        options.validate()?;
        let deadline = options.deadline_from(start);
        let query_struct = Query::new(query);
        let n = candidates.len();
        first.status = StageStatus::Completed;
        first.passages = n;
        if first.elapsed.is_zero() {
            first.elapsed = start.elapsed();
        }

        // The passages the stages read (cut to the token cap, if any).
        let mut cut_note = None;
        let passages: Vec<Passage> = match options.max_passage_tokens() {
            None => candidates.iter().map(|c| c.passage.clone()).collect(),
            Some(max) => {
                let tokenizer = self
                    .pointwise
                    .as_ref()
                    .and_then(|s| s.tokenizer())
                    .or_else(|| self.listwise.as_ref().and_then(|s| s.tokenizer()));
                candidates
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

        // Pointwise: the whole candidate list.
        let mut order: Vec<usize> = (0..n).collect();
        let mut pointwise_scores: Vec<Option<f32>> = vec![None; n];
        let mut pointwise_ok = false;
        let mut pw = StageReport::new(Stage::Pointwise);
        let t = Instant::now();
        match (&self.pointwise, options.stages().pointwise) {
            (_, false) => pw.status = StageStatus::Skipped("not requested".into()),
            (None, true) => {
                pw.status = StageStatus::Skipped("no pointwise stage configured".into())
            }
            (Some(_), true) if n == 0 => pw.status = StageStatus::Skipped("no candidates".into()),
            (Some(stage), true) => {
                match self.run_pointwise(
                    stage.as_ref(),
                    &query_struct,
                    &passages,
                    deadline,
                    &mut pw,
                ) {
                    Ok(scores) => {
                        for (slot, s) in pointwise_scores.iter_mut().zip(&scores) {
                            *slot = Some(*s);
                        }
                        // Stable: equal scores keep their first-stage order.
                        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
                        pointwise_ok = true;
                        pw.status = StageStatus::Completed;
                    }
                    Err(e) => pw.status = StageStatus::Failed(e.to_string()),
                }
            }
        }
        pw.elapsed = t.elapsed();
        let pointwise_order = order.clone();

        // Listwise: the top of the current order.
        let depth = options.listwise_depth().min(n);
        let mut lw = StageReport::new(Stage::Listwise);
        let mut listwise_ok = false;
        let t = Instant::now();
        match (&self.listwise, options.stages().listwise) {
            (_, false) => lw.status = StageStatus::Skipped("not requested".into()),
            (None, true) => lw.status = StageStatus::Skipped("no listwise stage configured".into()),
            (Some(_), true) if depth < 2 => {
                lw.status = StageStatus::Skipped(format!("{depth} candidate(s) to reorder"))
            }
            (Some(_), true) if deadline.is_some_and(|d| Instant::now() >= d) => {
                lw.status =
                    StageStatus::Failed("the deadline passed before the stage started".into())
            }
            (Some(stage), true) => {
                let top: Vec<Passage> = order[..depth]
                    .iter()
                    .map(|&i| passages[i].clone())
                    .collect();
                lw.passages = depth;
                match self.run_listwise(
                    stage.as_ref(),
                    &query_struct,
                    &top,
                    options,
                    deadline,
                    &mut lw,
                ) {
                    Ok(perm) => {
                        let head: Vec<usize> = perm.iter().map(|&k| order[k]).collect();
                        order[..depth].copy_from_slice(&head);
                        listwise_ok = true;
                        lw.status = StageStatus::Completed;
                    }
                    Err(why) => lw.status = StageStatus::Failed(why),
                }
            }
        }
        lw.elapsed = t.elapsed();

        // Assemble.
        let mut pointwise_rank = vec![None; n];
        if pointwise_ok {
            for (r, &i) in pointwise_order.iter().enumerate() {
                pointwise_rank[i] = Some(r + 1);
            }
        }
        let mut hits: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
        let mut passages: Vec<Option<Passage>> = passages.into_iter().map(Some).collect();
        let out: Vec<RerankedHit> = order
            .iter()
            .enumerate()
            .filter_map(|(r, &i)| {
                let c = hits[i].take()?;
                let in_listwise = listwise_ok && r < depth;
                Some(RerankedHit {
                    address: c.address,
                    passage: passages[i].take().unwrap_or(c.passage),
                    bm25_score: c.score,
                    bm25_rank: i + 1,
                    pointwise_score: pointwise_scores[i],
                    pointwise_rank: pointwise_rank[i],
                    listwise_position: in_listwise.then_some(r + 1),
                    final_rank: r + 1,
                    placed_by: if in_listwise {
                        Stage::Listwise
                    } else if pointwise_ok {
                        Stage::Pointwise
                    } else {
                        Stage::Bm25
                    },
                })
            })
            .collect();
        for report in [&first, &pw, &lw] {
            if let Some(why) = report.failure() {
                tracing::warn!(stage = %report.stage, "stage failed, previous order kept: {why}");
            }
        }
        Ok(RerankedResults {
            hits: out,
            report: SearchReport {
                stages: vec![first, pw, lw],
                total: start.elapsed(),
            },
        })
    }

    fn run_pointwise(
        &self,
        stage: &dyn PointwiseStage,
        query: &Query,
        passages: &[Passage],
        deadline: Option<std::time::Instant>,
        report: &mut StageReport,
    ) -> dear_core::Result<Vec<f32>> {
        let stage_key = stage.key();
        let keys: Vec<Key> = passages
            .iter()
            .map(|p| Key::of(&[&stage_key, &query.text, p]))
            .collect();
        let mut scores: Vec<Option<f32>> = keys.iter().map(|k| self.cache.pointwise(k)).collect();
        let missing: Vec<usize> = (0..passages.len())
            .filter(|&i| scores[i].is_none())
            .collect();
        report.passages = passages.len();
        report.cached = passages.len() - missing.len();
        if !missing.is_empty() {
            // The common case, nothing cached: hand over the passages as they are.
            let todo: std::borrow::Cow<'_, [Passage]> = if missing.len() == passages.len() {
                passages.into()
            } else {
                missing.iter().map(|&i| passages[i].clone()).collect()
            };
            let scored = stage.score(query, &todo, deadline)?;
            if scored.scores.len() != todo.len() {
                return Err(dear_core::Error::InvalidArgument(format!(
                    "the pointwise stage returned {} scores for {} passages",
                    scored.scores.len(),
                    todo.len()
                )));
            }
            if let Some(bad) = scored.scores.iter().find(|s| s.is_nan()) {
                return Err(dear_core::Error::InvalidArgument(format!(
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

    /// The listwise permutation of `top` (positions into it), or why there is none.
    fn run_listwise(
        &self,
        stage: &dyn ListwiseStage,
        query: &Query,
        top: &[Passage],
        options: &RerankOptions,
        deadline: Option<std::time::Instant>,
        report: &mut StageReport,
    ) -> Result<Vec<usize>, String> {
        let window = options.window_config();
        let key = Key::of(&[
            &stage.key(),
            &query.text,
            &format!("{:?}|{window:?}", options.listwise_mode()),
            &top,
        ]);
        if let Some(order) = self.cache.listwise(&key) {
            report.cached = top.len();
            return Ok(order);
        }
        let outcome = stage
            .rerank(query, top, options.listwise_mode(), &window, deadline)
            .map_err(|e| e.to_string())?;
        report.tokens = outcome
            .windows
            .iter()
            .map(|w| w.prompt_tokens + w.generated_tokens)
            .sum();
        for w in &outcome.windows {
            if let Some(f) = &w.failure {
                report
                    .notes
                    .push(format!("window {}..{} kept its order: {f}", w.start, w.end));
            }
        }
        if let Some(why) = outcome.failure {
            return Err(why);
        }
        if !outcome.windows.is_empty() && outcome.windows.iter().all(|w| w.failure.is_some()) {
            report.notes.clear();
            let why = outcome.windows[0].failure.as_deref().unwrap_or("");
            return Err(format!(
                "no window produced a ranking ({} window(s); first: {why})",
                outcome.windows.len()
            ));
        }
        if !is_permutation(&outcome.order, top.len()) {
            return Err(format!(
                "the listwise stage returned {:?}, not a permutation of 0..{}",
                outcome.order,
                top.len()
            ));
        }
        self.cache.put_listwise(key, outcome.order.clone());
        Ok(outcome.order)
    }
}

fn is_permutation(order: &[usize], n: usize) -> bool {
    let mut seen = vec![false; n];
    order.len() == n
        && order
            .iter()
            .all(|&i| i < n && !std::mem::replace(&mut seen[i], true))
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

    use dear_core::{Error as CoreError, ListwiseMode, ListwiseOutcome, WindowConfig};

    use super::*;
    use crate::{ListwiseStage, PointwiseStage, Scored, Stages};

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
        fn score(&self, _: &Query, p: &[Passage], _: Option<Instant>) -> dear_core::Result<Scored> {
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
        fn score(&self, _: &Query, _: &[Passage], _: Option<Instant>) -> dear_core::Result<Scored> {
            Err(CoreError::InvalidArgument("the scorer is broken".into()))
        }
    }

    impl ListwiseStage for Failing {
        fn key(&self) -> String {
            "failing".into()
        }
        fn rerank(
            &self,
            _: &Query,
            _: &[Passage],
            _: Option<ListwiseMode>,
            _: &WindowConfig,
            _: Option<Instant>,
        ) -> dear_core::Result<ListwiseOutcome> {
            Err(CoreError::InvalidArgument(
                "the listwise model is broken".into(),
            ))
        }
    }

    /// Returns a wrong number of scores.
    struct Short;

    impl PointwiseStage for Short {
        fn key(&self) -> String {
            "short".into()
        }
        fn score(&self, _: &Query, _: &[Passage], _: Option<Instant>) -> dear_core::Result<Scored> {
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
        fn rerank(
            &self,
            _: &Query,
            p: &[Passage],
            _: Option<ListwiseMode>,
            window: &WindowConfig,
            deadline: Option<Instant>,
        ) -> dear_core::Result<ListwiseOutcome> {
            assert_eq!(window.rank_end, p.len().max(window.rank_end));
            if self.sleep_past_deadline {
                if let Some(d) = deadline {
                    std::thread::sleep(d.saturating_duration_since(Instant::now()));
                }
                return Ok(ListwiseOutcome {
                    order: (0..p.len()).collect(),
                    windows: Vec::new(),
                    failure: Some("deadline exceeded in window 0..3".into()),
                });
            }
            Ok(ListwiseOutcome {
                order: (0..p.len()).rev().collect(),
                windows: Vec::new(),
                failure: None,
            })
        }
    }

    /// Candidates "d0".."d{n-1}" in BM25 order, with the given texts.
    fn candidates(texts: &[&str]) -> Vec<Candidate> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                address: None,
                passage: Passage::new(*t).with_id(format!("d{i}")),
                score: (texts.len() - i) as f32,
            })
            .collect()
    }

    fn ids(r: &RerankedResults) -> Vec<&str> {
        r.hits.iter().map(|h| h.id()).collect()
    }

    fn leak<T>(t: T) -> &'static T {
        Box::leak(Box::new(t))
    }

    #[test]
    fn listwise_top_then_pointwise_order() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        let r = DearReranker::new()
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
                d3.bm25_rank,
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
            .ok_or(crate::Error::InvalidOption("no report".into()))?;
        assert_eq!((pw.passages, pw.tokens, pw.cached), (5, 15, 0));
        assert_eq!(pw.status, StageStatus::Completed);
        assert_eq!(out.report.failures().count(), 0);
        Ok(())
    }

    #[test]
    fn failing_stages_keep_the_previous_order_and_say_why() -> crate::Result<()> {
        let r = DearReranker::new()
            .with_pointwise(Failing)
            .with_listwise(Failing);
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d0", "d1", "d2"]);
        assert!(out.hits.iter().all(|h| h.placed_by == Stage::Bm25));
        assert!(out.hits.iter().all(|h| h.pointwise_score.is_none()));
        let failures: Vec<(Stage, &str)> = out.report.failures().collect();
        assert_eq!(failures.len(), 2);
        assert!(
            failures[0].1.contains("the scorer is broken"),
            "{failures:?}"
        );
        assert!(
            failures[1].1.contains("the listwise model is broken"),
            "{failures:?}"
        );

        // A failed pointwise stage does not stop a working listwise one.
        let r = DearReranker::new()
            .with_pointwise(Short)
            .with_listwise(Reverse {
                sleep_past_deadline: false,
            });
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d2", "d1", "d0"]);
        let why = out
            .report
            .stage(Stage::Pointwise)
            .and_then(|s| s.failure())
            .unwrap_or("");
        assert!(why.contains("1 scores for 3 passages"), "{why}");
        Ok(())
    }

    /// Writes no ranking in any window.
    struct Mute;

    impl ListwiseStage for Mute {
        fn key(&self) -> String {
            "mute".into()
        }
        fn rerank(
            &self,
            _: &Query,
            p: &[Passage],
            _: Option<ListwiseMode>,
            _: &WindowConfig,
            _: Option<Instant>,
        ) -> dear_core::Result<ListwiseOutcome> {
            Ok(ListwiseOutcome {
                order: (0..p.len()).collect(),
                windows: vec![dear_core::WindowReport {
                    start: 0,
                    end: p.len(),
                    raw: "I cannot rank these.".into(),
                    reasoning: None,
                    parsed_ids: 0,
                    prompt_tokens: 10,
                    generated_tokens: 5,
                    failure: Some("no parseable id in the output".into()),
                }],
                failure: None,
            })
        }
    }

    #[test]
    fn a_listwise_pass_without_any_ranking_is_a_failure() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        let r = DearReranker::new()
            .with_pointwise(scorer)
            .with_listwise(Mute);
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &RerankOptions::default())?;
        assert_eq!(ids(&out), ["d1", "d2", "d0"]);
        assert!(out.hits.iter().all(|h| h.placed_by == Stage::Pointwise));
        let why = out
            .report
            .stage(Stage::Listwise)
            .and_then(|s| s.failure())
            .unwrap_or("");
        assert!(
            why.contains("no window produced a ranking") && why.contains("no parseable id"),
            "{why}"
        );
        Ok(())
    }

    #[test]
    fn a_stage_past_its_deadline_keeps_the_order_before_it() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        let r = DearReranker::new()
            .with_pointwise(scorer)
            .with_listwise(Reverse {
                sleep_past_deadline: true,
            });
        let opts = RerankOptions::default().with_timeout(Duration::from_millis(30));
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &opts)?;
        // Pointwise finished in time; listwise ran out and kept the pointwise order.
        assert_eq!(ids(&out), ["d1", "d2", "d0"]);
        assert!(out.hits.iter().all(|h| h.placed_by == Stage::Pointwise));
        let why = out
            .report
            .stage(Stage::Listwise)
            .and_then(|s| s.failure())
            .unwrap_or("");
        assert!(why.contains("deadline"), "{why}");
        // A deadline already past fails the model stages before they start.
        let opts = RerankOptions::default().with_deadline(Instant::now());
        let out = r.rerank("q", candidates(&["1", "5", "3"]), &opts)?;
        let why = out
            .report
            .stage(Stage::Listwise)
            .and_then(|s| s.failure())
            .unwrap_or("");
        assert!(why.contains("deadline passed before"), "{why}");
        Ok(())
    }

    #[test]
    fn repeated_queries_come_from_the_cache() -> crate::Result<()> {
        let scorer = leak(NumberScorer::new());
        let r = DearReranker::new().with_pointwise(scorer);
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
        let r = DearReranker::new().with_pointwise(scorer);
        let opts = RerankOptions::default().with_stages(Stages::BM25);
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
        let out = r.rerank("q", Vec::new(), &RerankOptions::default())?;
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
}
