//! Per-search settings.

use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::pipeline::chunk::Chunking;
use crate::pipeline::fusion::Fusion;
use crate::{Error, ListwiseMode, WindowConfig};

/// The reranking stages that run after the first stage (which always counts: it is
/// the order the candidates come in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stages {
    /// Score the candidates one by one.
    pub pointwise: bool,
    /// Reorder the top of the list as a whole.
    pub listwise: bool,
}

impl Stages {
    /// First stage, pointwise and listwise.
    pub const ALL: Stages = Stages {
        pointwise: true,
        listwise: true,
    };
    /// The first stage alone.
    pub const FIRST: Stages = Stages {
        pointwise: false,
        listwise: false,
    };
}

impl Default for Stages {
    /// [`Stages::ALL`].
    fn default() -> Self {
        Stages::ALL
    }
}

impl FromStr for Stages {
    type Err = Error;

    /// Parses a comma-separated list of `first` (or `bm25`), `pointwise`, `listwise`
    /// (the first stage is implied), e.g. `bm25,pointwise`.
    fn from_str(s: &str) -> crate::Result<Self> {
        let mut stages = Stages::FIRST;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "first" | "bm25" => {}
                "pointwise" => stages.pointwise = true,
                "listwise" => stages.listwise = true,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown stage '{other}' (use first, pointwise, listwise)"
                    )))
                }
            }
        }
        Ok(stages)
    }
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("first")?;
        if self.pointwise {
            f.write_str(",pointwise")?;
        }
        if self.listwise {
            f.write_str(",listwise")?;
        }
        Ok(())
    }
}

/// The most candidates one call reranks (a bound on the buffers sized from it).
pub const MAX_CANDIDATES: usize = 100_000;

/// Settings of one reranking call (or one reranked search). Build with [`RerankOptions::default`] and the
/// `with_*` setters.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use dear_core::RerankOptions;
/// let options = RerankOptions::default()
///     .with_candidates(50)
///     .with_listwise_depth(10)
///     .with_stages("first,pointwise".parse()?)
///     .with_top_n(10)
///     .with_timeout(Duration::from_secs(5));
/// assert_eq!(options.candidates(), 50);
/// assert!(!options.stages().listwise);
/// # Ok::<(), dear_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RerankOptions {
    candidates: usize,
    listwise_depth: usize,
    window: usize,
    step: usize,
    stages: Stages,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    listwise_mode: Option<ListwiseMode>,
    max_passage_tokens: Option<usize>,
    chunking: Option<Chunking>,
    fusion: Option<Fusion>,
    top_n: Option<usize>,
    min_score: Option<f32>,
    return_documents: bool,
    started_at: Option<Instant>,
}

impl Default for RerankOptions {
    /// DeAR's setting: the first stage's top 100, pointwise over all of them,
    /// listwise over the top 20 in one window (window 20, step 10), no deadline, the
    /// listwise stage's own mode, the stages' own passage limits (DeAR's truncation,
    /// no chunking), every candidate returned.
    fn default() -> Self {
        Self {
            candidates: 100,
            listwise_depth: 20,
            window: 20,
            step: 10,
            stages: Stages::ALL,
            timeout: None,
            deadline: None,
            listwise_mode: None,
            max_passage_tokens: None,
            chunking: None,
            fusion: None,
            top_n: None,
            min_score: None,
            return_documents: false,
            started_at: None,
        }
    }
}

impl RerankOptions {
    /// First-stage candidates reranked pointwise (Elasticsearch's
    /// `rank_window_size`): search adapters fetch this many; [`Reranker::rerank`]
    /// takes the first this many of the candidates it is given. Default: 100.
    ///
    /// [`Reranker::rerank`]: crate::Reranker::rerank
    #[must_use]
    pub fn with_candidates(mut self, n: usize) -> Self {
        self.candidates = n;
        self
    }

    /// How many of the top candidates the listwise stage reorders. Default: 20.
    #[must_use]
    pub fn with_listwise_depth(mut self, n: usize) -> Self {
        self.listwise_depth = n;
        self
    }

    /// Listwise sliding window size and step (windows move from the bottom of the
    /// listwise depth to the top). Default: 20 and 10.
    #[must_use]
    pub fn with_window(mut self, window: usize, step: usize) -> Self {
        self.window = window;
        self.step = step;
        self
    }

    /// Which stages run after BM25. Default: [`Stages::ALL`].
    #[must_use]
    pub fn with_stages(mut self, stages: Stages) -> Self {
        self.stages = stages;
        self
    }

    /// A time budget counted from the start of each search (see
    /// [`with_started_at`](Self::with_started_at)). When it runs out, the
    /// running stage stops and the order reached before it is kept. Default: none.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A fixed deadline (as [`with_timeout`](Self::with_timeout); the earlier wins).
    /// Default: none.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The listwise mode for these searches. Default: the listwise stage's own.
    #[must_use]
    pub fn with_listwise_mode(mut self, mode: ListwiseMode) -> Self {
        self.listwise_mode = Some(mode);
        self
    }

    /// Cuts every passage to this many tokens (of the stages' tokenizer) before either
    /// stage reads it. Default: none (the stages' own limits: 193 passage tokens for
    /// DeAR's pointwise input, 300 words per passage in the listwise prompt).
    #[must_use]
    pub fn with_max_passage_tokens(mut self, n: usize) -> Self {
        self.max_passage_tokens = Some(n);
        self
    }

    /// Long passages split into overlapping chunks for the pointwise stage, each
    /// scored, the best kept (MaxP). Default: none (DeAR's truncation).
    #[must_use]
    pub fn with_chunking(mut self, chunking: Chunking) -> Self {
        self.chunking = Some(chunking);
        self
    }

    /// Return at most `n` hits (after `min_score`). Default: all.
    #[must_use]
    pub fn with_top_n(mut self, n: usize) -> Self {
        self.top_n = Some(n);
        self
    }

    /// Drop hits whose relevance (in `[0, 1]`, see [`relevance`](crate::relevance))
    /// is below `score`. Default: none.
    #[must_use]
    pub fn with_min_score(mut self, score: f32) -> Self {
        self.min_score = Some(score);
        self
    }

    /// Put each document in the results of [`Reranker::rank`](crate::Reranker::rank).
    /// Default: false (Cohere's default).
    #[must_use]
    pub fn with_return_documents(mut self, yes: bool) -> Self {
        self.return_documents = yes;
        self
    }

    /// When the search started, if before the reranking call (a search adapter sets
    /// it before its first stage): [`with_timeout`](Self::with_timeout) counts from
    /// it, and the first stage's report takes the time until reranking began.
    /// Default: the call's own start.
    #[must_use]
    pub fn with_started_at(mut self, start: Instant) -> Self {
        self.started_at = Some(start);
        self
    }

    /// Whether [`Reranker::rank`](crate::Reranker::rank) returns the documents.
    pub fn return_documents(&self) -> bool {
        self.return_documents
    }

    /// The search's start, if set.
    pub fn started_at(&self) -> Option<Instant> {
        self.started_at
    }

    /// The chunking, if any.
    pub fn chunking(&self) -> Option<&Chunking> {
        self.chunking.as_ref()
    }

    /// The most hits returned.
    pub fn top_n(&self) -> Option<usize> {
        self.top_n
    }

    /// The least relevance returned.
    pub fn min_score(&self) -> Option<f32> {
        self.min_score
    }

    /// First-stage candidates.
    pub fn candidates(&self) -> usize {
        self.candidates
    }

    /// Listwise depth.
    pub fn listwise_depth(&self) -> usize {
        self.listwise_depth
    }

    /// The stages.
    pub fn stages(&self) -> Stages {
        self.stages
    }

    /// The listwise mode override.
    pub fn listwise_mode(&self) -> Option<ListwiseMode> {
        self.listwise_mode
    }

    /// The passage token cap.
    pub fn max_passage_tokens(&self) -> Option<usize> {
        self.max_passage_tokens
    }

    /// The listwise windows these options give.
    pub fn window_config(&self) -> WindowConfig {
        WindowConfig {
            rank_start: 0,
            rank_end: self.listwise_depth,
            window: self.window,
            step: self.step,
        }
    }

    /// The deadline of a search started at `start`.
    pub(crate) fn deadline_from(&self, start: Instant) -> Option<Instant> {
        // A timeout too long to represent as an instant is no deadline at all.
        let from_timeout = self.timeout.and_then(|t| start.checked_add(t));
        match (from_timeout, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How the pointwise order fuses the model's scores with the first stage's,
    /// overriding the reranker's own setting ([`Reranker::with_fusion`]; the default
    /// student's setup turns fusion on). Default: the reranker's.
    ///
    /// [`Reranker::with_fusion`]: crate::Reranker::with_fusion
    #[must_use]
    pub fn with_fusion(mut self, fusion: Fusion) -> Self {
        self.fusion = Some(fusion);
        self
    }

    /// The fusion asked for, if any (else the reranker's own).
    pub fn fusion(&self) -> Option<Fusion> {
        self.fusion
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the setting at fault.
    pub fn validate(&self) -> crate::Result<()> {
        if self.candidates == 0 || self.candidates > MAX_CANDIDATES {
            return Err(Error::InvalidArgument(format!(
                "candidates must be between 1 and {MAX_CANDIDATES}, not {}",
                self.candidates
            )));
        }
        if self.listwise_depth > MAX_CANDIDATES {
            return Err(Error::InvalidArgument(format!(
                "the listwise depth must be at most {MAX_CANDIDATES}, not {}",
                self.listwise_depth
            )));
        }
        if self.stages.listwise && self.listwise_depth >= 2 {
            self.window_config().validate()?;
        }
        if let Some(n) = self.max_passage_tokens {
            if n == 0 || n > 1 << 20 {
                return Err(Error::InvalidArgument(format!(
                    "max passage tokens must be between 1 and {}, not {n}",
                    1 << 20
                )));
            }
        }
        if let Some(c) = &self.chunking {
            c.validate()?;
        }
        if let Some(f) = &self.fusion {
            f.validate()?;
        }
        if self.top_n == Some(0) {
            return Err(Error::InvalidArgument("top_n must be at least 1".into()));
        }
        if let Some(m) = self.min_score {
            if !(0.0..=1.0).contains(&m) {
                return Err(Error::InvalidArgument(format!(
                    "min_score must be a relevance in [0, 1], not {m}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_are_refused() {
        let bad = [
            RerankOptions::default().with_candidates(1_000_000_000),
            RerankOptions::default().with_candidates(0),
            RerankOptions::default().with_listwise_depth(usize::MAX),
            RerankOptions::default().with_max_passage_tokens(usize::MAX),
        ];
        for o in bad {
            assert!(
                matches!(o.validate(), Err(Error::InvalidArgument(_))),
                "{o:?}"
            );
        }
        assert!(RerankOptions::default()
            .with_candidates(MAX_CANDIDATES)
            .validate()
            .is_ok());
    }

    #[test]
    fn a_timeout_past_the_end_of_time_is_no_deadline() {
        let start = Instant::now();
        let o = RerankOptions::default().with_timeout(Duration::MAX);
        assert_eq!(o.deadline_from(start), None);
        let o = RerankOptions::default().with_timeout(Duration::from_secs(2));
        assert_eq!(o.deadline_from(start), Some(start + Duration::from_secs(2)));
    }

    #[test]
    fn stages_parse_and_print() -> crate::Result<()> {
        assert_eq!("bm25".parse::<Stages>()?, Stages::FIRST);
        assert_eq!("first".parse::<Stages>()?, Stages::FIRST);
        assert_eq!("bm25,pointwise,listwise".parse::<Stages>()?, Stages::ALL);
        let s: Stages = "listwise".parse()?;
        assert!(s.listwise && !s.pointwise);
        assert_eq!(s.to_string(), "first,listwise");
        let err = "bm25,dense".parse::<Stages>().unwrap_err().to_string();
        assert!(err.contains("dense"), "{err}");
        Ok(())
    }

    #[test]
    fn bad_options_are_named() {
        let err = RerankOptions::default()
            .with_candidates(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("candidates"), "{err}");
        let err = RerankOptions::default()
            .with_window(10, 20)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("step"), "{err}");
        let err = RerankOptions::default()
            .with_max_passage_tokens(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("max passage tokens"), "{err}");
        for bad in [-0.1, 1.5, f32::NAN] {
            let err = RerankOptions::default()
                .with_min_score(bad)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains("min_score"), "{err}");
        }
        let err = RerankOptions::default()
            .with_top_n(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("top_n"), "{err}");
        assert!(RerankOptions::default().validate().is_ok());
    }

    #[test]
    fn the_earlier_deadline_wins() {
        let start = Instant::now();
        let o = RerankOptions::default()
            .with_timeout(Duration::from_secs(10))
            .with_deadline(start + Duration::from_secs(1));
        assert_eq!(o.deadline_from(start), Some(start + Duration::from_secs(1)));
        assert_eq!(RerankOptions::default().deadline_from(start), None);
    }
}
