//! What a reranked search returns: hits with every stage's view of them, and a
//! report of what each stage did.

use std::time::Duration;

use dear_core::Passage;
use serde::Serialize;
use tantivy::DocAddress;

/// A stage of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The first stage (tantivy's BM25, or a given run).
    Bm25,
    /// Pointwise scoring.
    Pointwise,
    /// Listwise reordering.
    Listwise,
}

impl Stage {
    /// `bm25`, `pointwise` or `listwise`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Bm25 => "bm25",
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
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RerankedHit {
    /// Where the document is in the index (`None` for candidates not from tantivy).
    #[serde(skip)]
    pub address: Option<DocAddress>,
    /// The passage as the stages read it (the stored id, title and text).
    pub passage: Passage,
    /// The first-stage (BM25) score.
    pub bm25_score: f32,
    /// The first-stage rank.
    pub bm25_rank: usize,
    /// The pointwise score, if the pointwise stage scored this hit.
    pub pointwise_score: Option<f32>,
    /// The rank in the pointwise order, if the pointwise stage set one.
    pub pointwise_rank: Option<usize>,
    /// The position the listwise stage gave this hit, if it reordered it.
    pub listwise_position: Option<usize>,
    /// The final rank.
    pub final_rank: usize,
    /// The stage whose order placed this hit.
    pub placed_by: Stage,
}

impl RerankedHit {
    /// The stored id, or the empty string.
    pub fn id(&self) -> &str {
        self.passage.id.as_deref().unwrap_or("")
    }
}

/// How a stage ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum StageStatus {
    /// It ran and its order was used.
    Completed,
    /// It was not asked for, not configured, or had nothing to do.
    Skipped(String),
    /// It failed or ran out of time; the previous order was kept.
    Failed(String),
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
    /// Problems that did not fail the stage (a listwise window that kept its order).
    pub notes: Vec<String>,
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
        }
    }

    /// The failure, if the stage failed.
    pub fn failure(&self) -> Option<&str> {
        match &self.status {
            StageStatus::Failed(why) => Some(why),
            _ => None,
        }
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What the search did, stage by stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SearchReport {
    /// One report per stage, in pipeline order (BM25, pointwise, listwise).
    pub stages: Vec<StageReport>,
    /// Wall time of the whole search.
    #[serde(serialize_with = "as_secs")]
    pub total: Duration,
}

impl SearchReport {
    /// The report of `stage`.
    pub fn stage(&self, stage: Stage) -> Option<&StageReport> {
        self.stages.iter().find(|r| r.stage == stage)
    }

    /// Every failed stage with its reason.
    pub fn failures(&self) -> impl Iterator<Item = (Stage, &str)> {
        self.stages
            .iter()
            .filter_map(|r| r.failure().map(|f| (r.stage, f)))
    }
}

/// The result of a reranked search: every candidate in final order, and the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RerankedResults {
    /// All candidates, best first (`hits[i].final_rank == i + 1`). Take a page with
    /// `hits.iter().skip(offset).take(n)`; asking again for another page is answered
    /// from the reranker's cache.
    pub hits: Vec<RerankedHit>,
    /// What each stage did.
    pub report: SearchReport,
}
