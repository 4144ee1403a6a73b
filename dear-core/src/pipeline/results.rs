//! What a reranked search returns: hits with every stage's view of them, and a
//! report of what each stage did.

use std::time::Duration;

use serde::Serialize;

use crate::pipeline::failure::StageFailure;
use crate::Passage;

/// A stage of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The first stage: the order the candidates came in (a search engine's, a
    /// vector store's, a given run's).
    First,
    /// Pointwise scoring.
    Pointwise,
    /// Listwise reordering.
    Listwise,
}

impl Stage {
    /// `first`, `pointwise` or `listwise`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::First => "first",
            Stage::Pointwise => "pointwise",
            Stage::Listwise => "listwise",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// One result, with what every stage made of it. Ranks are 1-based.
///
/// `H` is the caller's handle for the candidate (a tantivy `DocAddress`, a row id, an
/// index into the caller's list): carried through untouched.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RerankedHit<H = ()> {
    /// The caller's handle, as given in the [`Candidate`](crate::Candidate).
    #[serde(skip)]
    pub handle: H,
    /// The position of the candidate in the input list (0-based).
    pub index: usize,
    /// The passage as the stages read it.
    pub passage: Passage,
    /// The first-stage score.
    pub first_score: f32,
    /// The first-stage rank (`index + 1`).
    pub first_rank: usize,
    /// The pointwise score, if the pointwise stage scored this hit (with chunking,
    /// the best chunk's).
    pub pointwise_score: Option<f32>,
    /// The rank in the pointwise order, if the pointwise stage set one (by the fused
    /// score when fusion is on).
    pub pointwise_rank: Option<usize>,
    /// The pointwise score fused with the first stage's ([`Fusion`](crate::Fusion)),
    /// when fusion is on: the score the pointwise order sorts by.
    pub fused_score: Option<f32>,
    /// Which chunk of the passage gave its pointwise score, when chunking split it.
    pub best_chunk: Option<ChunkSpan>,
    /// The position the listwise stage gave this hit, if it reordered it.
    pub listwise_position: Option<usize>,
    /// The final rank.
    pub final_rank: usize,
    /// The stage whose order placed this hit.
    pub placed_by: Stage,
    /// A relevance in `[0, 1]`, non-increasing along the final order (see
    /// [`relevance`](crate::relevance)).
    pub relevance: f32,
}

impl<H> RerankedHit<H> {
    /// The passage's id, or the empty string.
    pub fn id(&self) -> &str {
        self.passage.id.as_deref().unwrap_or("")
    }

    /// The score of the stage that ranked this hit by score: the pointwise score when
    /// there is one, else the first-stage score.
    pub fn score(&self) -> f32 {
        self.pointwise_score.unwrap_or(self.first_score)
    }
}

/// Where the winning chunk of a long passage lies (MaxP chunking, see
/// [`Chunking`](crate::Chunking)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ChunkSpan {
    /// 0-based chunk number.
    pub chunk: usize,
    /// How many chunks the passage was split into.
    pub of: usize,
    /// Byte range of the chunk in the passage text.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
}

/// How a stage ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum StageStatus {
    /// It ran and its order was used.
    Completed,
    /// It was not asked for, not configured, or had nothing to do.
    Skipped(String),
    /// It failed or ran out of time; the previous order was kept.
    Failed(StageFailure),
}

/// What one stage did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageReport {
    /// The stage.
    pub stage: Stage,
    /// How it ended.
    #[serde(flatten)]
    pub status: StageStatus,
    /// Wall time spent in it.
    #[serde(serialize_with = "as_secs")]
    pub elapsed: Duration,
    /// Passages it handled (scored, or reordered).
    pub passages: usize,
    /// Passages answered from the cache rather than the model.
    pub cached: usize,
    /// Tokens the model read and wrote.
    pub tokens: usize,
    /// Problems that did not fail the stage (a listwise window that kept its order, a
    /// passage cut by words). Listwise window failures are also in `window_failures`.
    pub notes: Vec<String>,
    /// Listwise windows that kept their order, and why.
    pub window_failures: Vec<StageFailure>,
}

impl StageReport {
    pub(crate) fn new(stage: Stage) -> Self {
        Self {
            stage,
            status: StageStatus::Skipped("not run".into()),
            elapsed: Duration::ZERO,
            passages: 0,
            cached: 0,
            tokens: 0,
            notes: Vec::new(),
            window_failures: Vec::new(),
        }
    }

    /// The failure, if the stage failed.
    pub fn failure(&self) -> Option<&StageFailure> {
        match &self.status {
            StageStatus::Failed(why) => Some(why),
            _ => None,
        }
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What the reranking did, stage by stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RerankReport {
    /// One report per stage, in pipeline order (first, pointwise, listwise).
    pub stages: Vec<StageReport>,
    /// Wall time of the whole call (with the first stage, when an adapter ran it).
    #[serde(serialize_with = "as_secs")]
    pub total: Duration,
}

impl RerankReport {
    /// The report of `stage`.
    pub fn stage(&self, stage: Stage) -> Option<&StageReport> {
        self.stages.iter().find(|r| r.stage == stage)
    }

    /// Every failed stage with its failure.
    pub fn failures(&self) -> impl Iterator<Item = (Stage, &StageFailure)> {
        self.stages
            .iter()
            .filter_map(|r| r.failure().map(|f| (r.stage, f)))
    }
}

/// The result of reranking: the candidates in final order, and the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RerankedResults<H = ()> {
    /// The candidates, best first (`hits[i].final_rank == i + 1`), cut by the
    /// options' `min_score` and `top_n` when set. Asking again for the same query
    /// and candidates (another page) is answered from the reranker's cache.
    pub hits: Vec<RerankedHit<H>>,
    /// What each stage did.
    pub report: RerankReport,
}
