//! Per-search settings.

use std::str::FromStr;
use std::time::{Duration, Instant};

use dear_core::{ListwiseMode, WindowConfig};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The reranking stages a search runs after BM25 (which always runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stages {
    /// Score the candidates one by one.
    pub pointwise: bool,
    /// Reorder the top of the list as a whole.
    pub listwise: bool,
}

impl Stages {
    /// BM25, pointwise and listwise.
    pub const ALL: Stages = Stages {
        pointwise: true,
        listwise: true,
    };
    /// BM25 alone.
    pub const BM25: Stages = Stages {
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

    /// Parses a comma-separated list of `bm25`, `pointwise`, `listwise` (`bm25` is
    /// implied), e.g. `bm25,pointwise`.
    fn from_str(s: &str) -> crate::Result<Self> {
        let mut stages = Stages::BM25;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "bm25" => {}
                "pointwise" => stages.pointwise = true,
                "listwise" => stages.listwise = true,
                other => {
                    return Err(Error::InvalidOption(format!(
                        "unknown stage '{other}' (use bm25, pointwise, listwise)"
                    )))
                }
            }
        }
        Ok(stages)
    }
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bm25")?;
        if self.pointwise {
            f.write_str(",pointwise")?;
        }
        if self.listwise {
            f.write_str(",listwise")?;
        }
        Ok(())
    }
}

/// Settings of one reranked search. Build with [`RerankOptions::default`] and the
/// `with_*` setters.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use dear_tantivy::RerankOptions;
/// let options = RerankOptions::default()
///     .with_candidates(50)
///     .with_listwise_depth(10)
///     .with_stages("bm25,pointwise".parse()?)
///     .with_timeout(Duration::from_secs(5));
/// assert_eq!(options.candidates(), 50);
/// assert!(!options.stages().listwise);
/// # Ok::<(), dear_tantivy::Error>(())
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
}

impl Default for RerankOptions {
    /// DeAR's setting: BM25 top 100, pointwise over all of them, listwise over the top
    /// 20 in one window (window 20, step 10), no deadline, the listwise stage's own
    /// mode, the stages' own passage limits.
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
        }
    }
}

impl RerankOptions {
    /// BM25 candidates fetched and reranked pointwise. Default: 100.
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

    /// A time budget counted from the start of each search. When it runs out, the
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

    /// BM25 candidates.
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
        let from_timeout = self.timeout.map(|t| start + t);
        match (from_timeout, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the setting at fault.
    pub fn validate(&self) -> crate::Result<()> {
        if self.candidates == 0 {
            return Err(Error::InvalidOption("candidates must be at least 1".into()));
        }
        if self.stages.listwise && self.listwise_depth >= 2 {
            self.window_config()
                .validate()
                .map_err(|e| Error::InvalidOption(e.to_string()))?;
        }
        if self.max_passage_tokens == Some(0) {
            return Err(Error::InvalidOption(
                "max passage tokens must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_and_print() -> crate::Result<()> {
        assert_eq!("bm25".parse::<Stages>()?, Stages::BM25);
        assert_eq!("bm25,pointwise,listwise".parse::<Stages>()?, Stages::ALL);
        let s: Stages = "listwise".parse()?;
        assert!(s.listwise && !s.pointwise);
        assert_eq!(s.to_string(), "bm25,listwise");
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
