//! One call that evaluates the pipeline on a BEIR dataset: every judged query through
//! a first stage (a search engine, or a TREC run over the corpus) and the reranker,
//! with a TREC run and trec_eval's metrics for each stage.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::corpus::{read_beir_corpus, read_beir_queries};
use crate::eval::{evaluate, trec_eval_order, Qrels, QueryMetrics, Run};
use crate::{
    Candidate, Error, Fusion, Passage, RerankOptions, RerankedHit, RerankedResults, Reranker,
    Stage, StageFailure,
};

/// A BEIR dataset folder: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`.
#[derive(Clone, Debug)]
pub struct Dataset {
    dir: PathBuf,
    split: String,
    queries: Vec<(String, String)>,
    qrels: Qrels,
}

impl Dataset {
    /// Opens the dataset in `dir` with the judgments of `split` (`test`, `dev`,
    /// `train`); its queries are those of `queries.jsonl` judged in the split, in file
    /// order.
    ///
    /// # Errors
    /// [`Error::Eval`] or [`Error::Input`] naming the file and line at fault;
    /// [`Error::InvalidArgument`] when no query is judged.
    pub fn open(dir: impl AsRef<Path>, split: &str) -> crate::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let qrels = Qrels::from_path(dir.join("qrels").join(format!("{split}.tsv")))?;
        let queries: Vec<(String, String)> = read_beir_queries(&dir.join("queries.jsonl"))?
            .into_iter()
            .filter(|(id, _)| qrels.get(id).is_some())
            .collect();
        if queries.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: no query of queries.jsonl is judged in qrels/{split}.tsv",
                dir.display()
            )));
        }
        Ok(Self {
            dir,
            split: split.to_string(),
            queries,
            qrels,
        })
    }

    /// Keeps the queries whose ids are in `ids` (a held-back validation slice, say).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when none of them is a judged query of the split.
    pub fn with_query_ids<S: AsRef<str>>(mut self, ids: &[S]) -> crate::Result<Self> {
        let keep: std::collections::HashSet<&str> = ids.iter().map(AsRef::as_ref).collect();
        self.queries.retain(|(id, _)| keep.contains(id.as_str()));
        if self.queries.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: none of the {} query ids given is judged in qrels/{}.tsv",
                self.dir.display(),
                keep.len(),
                self.split
            )));
        }
        Ok(self)
    }

    /// Keeps the first `n` queries.
    #[must_use]
    pub fn with_query_limit(mut self, n: usize) -> Self {
        self.queries.truncate(n);
        self
    }

    /// The folder's name (`scifact`).
    pub fn name(&self) -> String {
        self.dir.file_name().map_or_else(
            || "dataset".to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The split the judgments come from.
    pub fn split(&self) -> &str {
        &self.split
    }

    /// The judged queries, `(id, text)`.
    pub fn queries(&self) -> &[(String, String)] {
        &self.queries
    }

    /// The judgments.
    pub fn qrels(&self) -> &Qrels {
        &self.qrels
    }

    /// `corpus.jsonl`.
    pub fn corpus_path(&self) -> PathBuf {
        self.dir.join("corpus.jsonl")
    }

    /// Calls `each` with every passage of the corpus.
    ///
    /// # Errors
    /// As [`read_beir_corpus`].
    pub fn read_corpus(&self, each: impl FnMut(Passage)) -> crate::Result<()> {
        read_beir_corpus(&self.corpus_path(), each)
    }
}

/// Where a query's candidates come from: a search engine (dear-tantivy implements it
/// for its index), a vector store, or a given run ([`RunFirstStage`]).
pub trait FirstStage {
    /// The top `k` candidates of a query, best first.
    ///
    /// # Errors
    /// Whatever prevents the first stage; the evaluation stops with it.
    fn candidates(&self, query_id: &str, query: &str, k: usize) -> crate::Result<Vec<Candidate>>;
}

/// A TREC run as the first stage (DeAR's way: rerank a given BM25 run), with the
/// passages from the dataset's corpus.
#[derive(Debug)]
pub struct RunFirstStage {
    run: Run,
    docs: HashMap<String, Passage>,
    missing: AtomicUsize,
}

impl RunFirstStage {
    /// The run in `path` over `dataset`'s corpus.
    ///
    /// # Errors
    /// Errors reading the run or the corpus, naming the file and line.
    /// A run with no line, or with no query of the dataset, is refused: its metrics
    /// would be silently zero.
    pub fn new(path: impl AsRef<Path>, dataset: &Dataset) -> crate::Result<Self> {
        let path = path.as_ref();
        let run = Run::from_path(path)?;
        if run.is_empty() {
            return Err(crate::Error::InvalidArgument(format!(
                "the run {} is empty: no ranking to rerank",
                path.display()
            )));
        }
        if !dataset
            .queries()
            .iter()
            .any(|(id, _)| run.get(id).is_some())
        {
            return Err(crate::Error::InvalidArgument(format!(
                "the run {} ranks none of the {} queries evaluated (is it a run of another dataset?)",
                path.display(),
                dataset.queries().len()
            )));
        }
        let mut docs = HashMap::new();
        dataset.read_corpus(|p| {
            if let Some(id) = p.id.clone() {
                docs.insert(id, p);
            }
        })?;
        Ok(Self {
            run,
            docs,
            missing: AtomicUsize::new(0),
        })
    }

    /// Documents of the run not found in the corpus so far (skipped).
    pub fn missing_docs(&self) -> usize {
        self.missing.load(Ordering::Relaxed)
    }
}

impl FirstStage for RunFirstStage {
    fn candidates(&self, query_id: &str, _: &str, k: usize) -> crate::Result<Vec<Candidate>> {
        let list = self.run.get(query_id).unwrap_or(&[]);
        let mut out = Vec::new();
        for (doc, score) in trec_eval_order(list).into_iter().take(k) {
            match self.docs.get(doc) {
                Some(p) => out.push(Candidate::new(p.clone(), score as f32)),
                None => {
                    self.missing.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(out)
    }
}

/// One stage's figures over a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct StageEvaluation {
    /// The mean metrics.
    pub metrics: QueryMetrics,
    /// The order the stage left for every query (stages that did not complete leave
    /// the order before them), scored so trec_eval sorts it back.
    pub run: Run,
    /// Wall time per query spent in the stage.
    pub seconds_per_query: f64,
    /// Queries on which the stage failed, with the failure.
    pub failures: Vec<(String, StageFailure)>,
}

/// What [`evaluate_dataset`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetEvaluation {
    /// Queries evaluated.
    pub queries: usize,
    /// The first stage and every stage the options ran.
    pub stages: BTreeMap<Stage, StageEvaluation>,
    /// Per query, in first-stage order: each candidate's id, first-stage score and
    /// pointwise score (queries the pointwise stage scored).
    scores: BTreeMap<String, Vec<(String, f32, f32)>>,
}

impl DatasetEvaluation {
    /// The pointwise order the queries would have had under `fusion` (with the
    /// unscored candidates after, in first-stage order; queries the pointwise stage did
    /// not score keep the first-stage order), and its mean metrics against `qrels`: a
    /// sweep over fusion settings costs no model call.
    ///
    /// # Errors
    /// An invalid fusion setting.
    pub fn with_fusion(&self, qrels: &Qrels, fusion: Fusion) -> crate::Result<(Run, QueryMetrics)> {
        fusion.validate()?;
        let mut run = Run::new();
        let empty = Run::new();
        let first = self.stages.get(&Stage::First).map_or(&empty, |e| &e.run);
        for qid in first.queries() {
            let list = first.get(qid).unwrap_or(&[]);
            let ranked: Vec<(String, f64)> = match self.scores.get(qid) {
                Some(scored) => {
                    let f: Vec<f32> = scored.iter().map(|c| c.1).collect();
                    let m: Vec<f32> = scored.iter().map(|c| c.2).collect();
                    let keys = fusion.fuse(&f, &m);
                    let mut order: Vec<usize> = (0..scored.len()).collect();
                    order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]));
                    let mut ids: Vec<&str> = order.iter().map(|&i| scored[i].0.as_str()).collect();
                    let seen: std::collections::HashSet<&str> = ids.iter().copied().collect();
                    ids.extend(
                        trec_eval_order(list)
                            .into_iter()
                            .map(|(d, _)| d)
                            .filter(|d| !seen.contains(d)),
                    );
                    let n = ids.len();
                    ids.iter()
                        .enumerate()
                        .map(|(r, d)| (d.to_string(), (n - r) as f64))
                        .collect()
                }
                None => list.to_vec(),
            };
            run.insert(qid.to_string(), ranked)?;
        }
        let metrics = evaluate(qrels, &run).mean;
        Ok((run, metrics))
    }
}

/// Progress of [`evaluate_dataset`], reported after each query.
#[derive(Debug)]
pub struct QueryDone<'a> {
    /// The query.
    pub query_id: &'a str,
    /// Its results.
    pub results: &'a RerankedResults,
}

/// Evaluates `reranker` on `dataset`: for every judged query, the first stage's top
/// [`candidates`](RerankOptions::candidates), reranked with `options`; then a run
/// and trec_eval's nDCG@10, MRR@10 and Recall@100 for the first stage and each model
/// stage that was asked for. `progress` is called after each query.
///
/// # Example
/// ```no_run
/// use dear_core::eval::{evaluate_dataset, Dataset, RunFirstStage};
/// use dear_core::{DearSetup, RerankOptions};
/// let dataset = Dataset::open("data/scifact", "test")?;
/// let first = RunFirstStage::new("bm25.trec", &dataset)?;
/// let reranker = DearSetup::default_model().build()?;
/// let report = evaluate_dataset(&dataset, &first, &reranker, &RerankOptions::default(), &mut |_| {})?;
/// for (stage, e) in &report.stages {
///     println!("{stage}: nDCG@10 {:.4}", e.metrics.ndcg_at_10);
/// }
/// # Ok::<(), dear_core::Error>(())
/// ```
///
/// # Errors
/// Errors of the first stage, invalid options, and a run that cannot be built
/// (duplicate documents from the first stage).
pub fn evaluate_dataset(
    dataset: &Dataset,
    first: &dyn FirstStage,
    reranker: &Reranker,
    options: &RerankOptions,
    progress: &mut dyn FnMut(QueryDone<'_>),
) -> crate::Result<DatasetEvaluation> {
    options.validate()?;
    let asked = options.stages();
    let shown: Vec<Stage> = [
        (Stage::First, true),
        (Stage::Pointwise, asked.pointwise),
        (Stage::Listwise, asked.listwise),
    ]
    .into_iter()
    .filter_map(|(s, on)| on.then_some(s))
    .collect();
    let mut runs: BTreeMap<Stage, Run> = shown.iter().map(|&s| (s, Run::new())).collect();
    let mut time: BTreeMap<Stage, Duration> = BTreeMap::new();
    let mut failures: BTreeMap<Stage, Vec<(String, StageFailure)>> = BTreeMap::new();
    let mut scores = BTreeMap::new();
    for (qid, text) in dataset.queries() {
        let start = Instant::now();
        let candidates = first.candidates(qid, text, options.candidates())?;
        let results = reranker.rerank(text, candidates, &options.clone().with_started_at(start))?;
        for report in &results.report.stages {
            *time.entry(report.stage).or_default() += report.elapsed;
            if let Some(f) = report.failure() {
                failures
                    .entry(report.stage)
                    .or_default()
                    .push((qid.clone(), f.clone()));
            }
        }
        for (&stage, run) in runs.iter_mut() {
            run.insert(qid.clone(), ranked(&stage_order(&results.hits, stage)))?;
        }
        let mut by_first: Vec<&RerankedHit> = results.hits.iter().collect();
        by_first.sort_by_key(|h| h.first_rank);
        let scored: Vec<(String, f32, f32)> = by_first
            .iter()
            .filter_map(|h| {
                h.pointwise_score
                    .map(|s| (h.id().to_string(), h.first_score, s))
            })
            .collect();
        if !scored.is_empty() {
            scores.insert(qid.clone(), scored);
        }
        progress(QueryDone {
            query_id: qid,
            results: &results,
        });
    }
    let n = dataset.queries().len().max(1);
    let stages = runs
        .into_iter()
        .map(|(stage, run)| {
            let metrics = evaluate(dataset.qrels(), &run).mean;
            let seconds = time.get(&stage).copied().unwrap_or_default().as_secs_f64() / n as f64;
            (
                stage,
                StageEvaluation {
                    metrics,
                    run,
                    seconds_per_query: seconds,
                    failures: failures.remove(&stage).unwrap_or_default(),
                },
            )
        })
        .collect();
    Ok(DatasetEvaluation {
        queries: dataset.queries().len(),
        stages,
        scores,
    })
}

/// The order a stage left: hits sorted by the rank that stage gave.
fn stage_order<H>(hits: &[RerankedHit<H>], stage: Stage) -> Vec<&RerankedHit<H>> {
    let mut v: Vec<&RerankedHit<H>> = hits.iter().collect();
    match stage {
        Stage::First => v.sort_by_key(|h| h.first_rank),
        Stage::Pointwise => {
            v.sort_by_key(|h| (h.pointwise_rank.unwrap_or(usize::MAX), h.first_rank))
        }
        Stage::Listwise => v.sort_by_key(|h| h.final_rank),
    }
    v
}

/// A ranked list with scores trec_eval sorts back into the same order.
fn ranked<H>(hits: &[&RerankedHit<H>]) -> Vec<(String, f64)> {
    let n = hits.len();
    hits.iter()
        .enumerate()
        .map(|(r, h)| (h.id().to_string(), (n - r) as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stages;

    /// A first stage that returns its documents for every query, in a fixed order.
    struct Fixed(Vec<Passage>);

    impl FirstStage for Fixed {
        fn candidates(&self, _: &str, _: &str, k: usize) -> crate::Result<Vec<Candidate>> {
            Ok(self
                .0
                .iter()
                .take(k)
                .enumerate()
                .map(|(i, p)| Candidate::new(p.clone(), (10 - i) as f32))
                .collect())
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> crate::Result<()> {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    }

    /// Scores passages by the number in their text.
    struct Numbers;

    impl crate::PointwiseStage for Numbers {
        fn key(&self) -> String {
            "numbers".into()
        }
        fn score(
            &self,
            _: &crate::Query,
            p: &[Passage],
            _: Option<Instant>,
        ) -> crate::Result<crate::Scored> {
            Ok(crate::Scored {
                scores: p.iter().map(|p| p.text.parse().unwrap_or(0.0)).collect(),
                tokens: 0,
            })
        }
    }

    #[test]
    fn fusion_settings_are_swept_without_the_model() -> crate::Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let dir = tmp.path().join("tiny");
        write(
            &dir,
            "queries.jsonl",
            "{\"_id\": \"q1\", \"text\": \"rain\"}\n",
        )?;
        write(&dir, "qrels/test.tsv", "q1\tc\t1\n")?;
        let dataset = Dataset::open(&dir, "test")?;
        // First-stage scores 10, 9, 8 for a, b, c; the model's 0, 5, 4. The relevant c is
        // 3rd for BM25, 2nd for the model; interpolation at 0.5 gives a 0.5, b 0.75,
        // c 0.4: 3rd. RRF (k 60): a 1/61+1/63, b 1/62+1/61, c 1/63+1/62: 3rd.
        let first = Fixed(vec![
            Passage::new("0").with_id("a"),
            Passage::new("5").with_id("b"),
            Passage::new("4").with_id("c"),
        ]);
        let reranker = Reranker::new().with_pointwise(Numbers);
        let options = RerankOptions::default().with_stages(crate::Stages {
            pointwise: true,
            listwise: false,
        });
        let report = evaluate_dataset(&dataset, &first, &reranker, &options, &mut |_| {})?;
        let pointwise = report.stages[&Stage::Pointwise].metrics.ndcg_at_10;
        let at = |f: Fusion| -> crate::Result<f64> {
            Ok(report.with_fusion(dataset.qrels(), f)?.1.ndcg_at_10)
        };
        let second = 1.0 / 3f64.log2();
        let third = 0.5;
        assert!((pointwise - second).abs() < 1e-12);
        assert!((at(Fusion::Off)? - second).abs() < 1e-12);
        assert!((at(Fusion::Interpolate { weight: 1.0 })? - second).abs() < 1e-12);
        assert!((at(Fusion::Interpolate { weight: 0.0 })? - third).abs() < 1e-12);
        assert!((at(Fusion::Interpolate { weight: 0.5 })? - third).abs() < 1e-12);
        assert!((at(Fusion::Interpolate { weight: 0.9 })? - second).abs() < 1e-12);
        assert!(report
            .with_fusion(dataset.qrels(), Fusion::Interpolate { weight: -1.0 })
            .is_err());
        // The sweep's order matches what the reranker does with the same setting.
        let fused = options.with_fusion(Fusion::Interpolate { weight: 0.9 });
        let live = evaluate_dataset(&dataset, &first, &reranker, &fused, &mut |_| {})?;
        let (run, _) = report.with_fusion(dataset.qrels(), Fusion::Interpolate { weight: 0.9 })?;
        assert_eq!(
            trec_eval_order(run.get("q1").unwrap_or(&[])),
            trec_eval_order(live.stages[&Stage::Pointwise].run.get("q1").unwrap_or(&[]))
        );
        Ok(())
    }

    #[test]
    fn a_dataset_is_evaluated_per_stage() -> crate::Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let dir = tmp.path().join("tiny");
        write(
            &dir,
            "queries.jsonl",
            "{\"_id\": \"q1\", \"text\": \"rain\"}\n{\"_id\": \"q2\", \"text\": \"snow\"}\n{\"_id\": \"q3\", \"text\": \"unjudged\"}\n",
        )?;
        write(
            &dir,
            "qrels/test.tsv",
            "query-id\tcorpus-id\tscore\nq1\tb\t1\nq2\ta\t1\n",
        )?;
        let dataset = Dataset::open(&dir, "test")?;
        assert_eq!(dataset.queries().len(), 2);
        assert_eq!(dataset.name(), "tiny");
        let first = Fixed(vec![
            Passage::new("x").with_id("a"),
            Passage::new("y").with_id("b"),
        ]);
        let mut seen = Vec::new();
        let options = RerankOptions::default().with_stages(Stages::FIRST);
        let report = evaluate_dataset(&dataset, &first, &Reranker::new(), &options, &mut |d| {
            seen.push(d.query_id.to_string())
        })?;
        assert_eq!(seen, ["q1", "q2"]);
        assert_eq!(report.queries, 2);
        assert_eq!(report.stages.len(), 1);
        let e = &report.stages[&Stage::First];
        // q1: the relevant doc at rank 2 (RR 0.5, nDCG 1/log2(3)); q2: rank 1.
        let ndcg_q1 = 1.0 / 3f64.log2();
        assert!((e.metrics.ndcg_at_10 - (ndcg_q1 + 1.0) / 2.0).abs() < 1e-12);
        assert!((e.metrics.mrr_at_10 - 0.75).abs() < 1e-12);
        assert_eq!(e.run.get("q1").map(|l| l.len()), Some(2));
        assert!(e.failures.is_empty());
        // Only the ids asked for; none judged is an error naming the split.
        let q2 = Dataset::open(&dir, "test")?.with_query_ids(&["q2", "q9"])?;
        assert_eq!(q2.queries().len(), 1);
        let err = Dataset::open(&dir, "test")?
            .with_query_ids(&["q9"])
            .unwrap_err();
        assert!(err.to_string().contains("qrels/test.tsv"), "{err}");
        // No judged query is an error naming the split.
        write(&dir, "qrels/dev.tsv", "q9\ta\t1\n")?;
        let err = Dataset::open(&dir, "dev").unwrap_err().to_string();
        assert!(err.contains("qrels/dev.tsv"), "{err}");
        Ok(())
    }
}
