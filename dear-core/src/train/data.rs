//! Training data for stage 1: per query its relevant passages and its first-stage
//! candidates that are not relevant (hard negatives), from judged collections
//! (a BEIR folder and a split) or self-supervised from a corpus alone (a passage's
//! title as the query of its own text).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use crate::eval::{Dataset, FirstStage, Run};
use crate::{Error, Passage};

/// One training query.
#[derive(Clone, Debug)]
pub struct TrainingQuery {
    /// Its id (the dataset's, or the passage id for self-supervised queries).
    pub id: String,
    /// The query text.
    pub text: String,
    /// Relevant passages (at least one).
    pub positives: Vec<Passage>,
    /// Non-relevant first-stage candidates, best first.
    pub negatives: Vec<Passage>,
    /// The first stage's candidates as it ranked them, relevant ones included
    /// (validation reranks these).
    pub candidates: Vec<Passage>,
}

/// Queries left out, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// No relevant passage found in the corpus (or none the teacher run scores).
    pub no_positive: usize,
    /// Fewer non-relevant candidates than a group needs.
    pub few_negatives: usize,
    /// Stage 2: no relevant passage among the window's candidates.
    pub no_positive_in_window: usize,
    /// Stage 2: the window's prompt and answer are longer than the cutoff.
    pub over_cutoff: usize,
    /// Stage 2: the permutation file has no ranking for the query.
    pub no_permutation: usize,
}

/// The queries a stage-1 run trains on.
#[derive(Clone, Debug, Default)]
pub struct TrainingSet {
    /// Usable queries.
    pub queries: Vec<TrainingQuery>,
    /// What was left out.
    pub skipped: Skipped,
}

impl TrainingSet {
    /// Queries of `dataset`'s split with a relevant passage (grade > 0), negatives
    /// from `first_stage`'s top `depth` minus the judged-relevant ones; a query needs
    /// `negatives` of them (else it is skipped and counted).
    ///
    /// # Errors
    /// [`Error::Training`] when the split judges no passage relevant; corpus and
    /// first-stage errors.
    pub fn from_dataset(
        dataset: &Dataset,
        first_stage: &dyn FirstStage,
        depth: usize,
        negatives: usize,
    ) -> crate::Result<Self> {
        let qrels = dataset.qrels();
        let judged: Vec<&(String, String)> = dataset
            .queries()
            .iter()
            .filter(|(id, _)| qrels.get(id).is_some_and(|j| j.values().any(|&g| g > 0)))
            .collect();
        if judged.is_empty() {
            return Err(Error::Training(format!(
                "split '{}' of {} judges no passage relevant: nothing to train on",
                dataset.split(),
                dataset.dir().display()
            )));
        }
        let wanted: HashSet<&str> = judged
            .iter()
            .filter_map(|(id, _)| qrels.get(id))
            .flat_map(|j| j.iter().filter(|(_, &g)| g > 0).map(|(d, _)| d.as_str()))
            .collect();
        let mut docs: HashMap<String, Passage> = HashMap::new();
        dataset.read_corpus(|p| {
            if let Some(id) = &p.id {
                if wanted.contains(id.as_str()) {
                    docs.insert(id.clone(), p);
                }
            }
        })?;
        let mut set = TrainingSet::default();
        for (id, text) in judged {
            let judgments = qrels.get(id).cloned().unwrap_or_default();
            let positives: Vec<Passage> = judgments
                .iter()
                .filter(|(_, &g)| g > 0)
                .filter_map(|(d, _)| docs.get(d).cloned())
                .collect();
            if positives.is_empty() {
                set.skipped.no_positive += 1;
                continue;
            }
            let candidates: Vec<Passage> = first_stage
                .candidates(id, text, depth)?
                .into_iter()
                .map(|c| c.passage)
                .collect();
            let negs: Vec<Passage> = candidates
                .iter()
                .filter(|p| {
                    p.id.as_deref()
                        .is_none_or(|d| judgments.get(d).is_none_or(|&g| g <= 0))
                })
                .cloned()
                .collect();
            if negs.len() < negatives {
                set.skipped.few_negatives += 1;
                continue;
            }
            set.queries.push(TrainingQuery {
                id: id.clone(),
                text: text.clone(),
                positives,
                negatives: negs,
                candidates,
            });
        }
        Ok(set)
    }

    /// Self-supervised queries: each titled passage's title is the query of its own
    /// text; negatives are `first_stage`'s candidates for the title that carry another
    /// title. Titles are dropped from every passage of such a group (the student must
    /// match the query to the text, not to a copy of itself). Titles shorter than
    /// `min_words` words are skipped (counted as `no_positive`).
    ///
    /// # Errors
    /// First-stage errors.
    pub fn self_supervised(
        passages: &[Passage],
        first_stage: &dyn FirstStage,
        depth: usize,
        negatives: usize,
        min_words: usize,
    ) -> crate::Result<Self> {
        let untitled = |p: &Passage| Passage {
            title: None,
            ..p.clone()
        };
        let mut set = TrainingSet::default();
        let mut seen = HashSet::new();
        for (i, p) in passages.iter().enumerate() {
            let title = p.title.as_deref().unwrap_or("").trim();
            if title.split_whitespace().count() < min_words || p.text.trim().is_empty() {
                set.skipped.no_positive += 1;
                continue;
            }
            let id = p.id.clone().unwrap_or_else(|| format!("passage-{i}"));
            if !seen.insert((title.to_string(), p.text.clone())) {
                continue;
            }
            let found: Vec<Passage> = first_stage
                .candidates(&id, title, depth)?
                .into_iter()
                .map(|c| c.passage)
                .collect();
            let same = |c: &Passage| c.title.as_deref().map(str::trim) == Some(title);
            let negs: Vec<Passage> = found.iter().filter(|c| !same(c)).map(untitled).collect();
            // Validation reads the candidates with the same titles as relevant ones.
            let candidates: Vec<Passage> = found
                .iter()
                .map(|c| {
                    let mut u = untitled(c);
                    if same(c) {
                        u.id = Some(id.clone());
                    }
                    u
                })
                .collect();
            if negs.len() < negatives {
                set.skipped.few_negatives += 1;
                continue;
            }
            set.queries.push(TrainingQuery {
                id: id.clone(),
                text: title.to_string(),
                positives: vec![Passage {
                    id: Some(id.clone()),
                    ..untitled(p)
                }],
                negatives: negs,
                candidates,
            });
        }
        Ok(set)
    }

    /// Adds another set's queries, their ids prefixed with `tag/` to keep sources
    /// apart (unless `tag` is empty).
    pub fn extend(&mut self, tag: &str, other: TrainingSet) {
        self.skipped.no_positive += other.skipped.no_positive;
        self.skipped.few_negatives += other.skipped.few_negatives;
        self.queries.extend(other.queries.into_iter().map(|mut q| {
            if !tag.is_empty() {
                q.id = format!("{tag}/{}", q.id);
            }
            q
        }));
    }
}

/// A teacher's scores read from a TREC run: `(query id, doc id) → score`.
#[derive(Clone, Debug, Default)]
pub struct TeacherRun {
    scores: HashMap<String, HashMap<String, f32>>,
}

impl TeacherRun {
    /// Reads a run and checks it against the training queries: a run that names a
    /// query the training set does not have is refused (it is for other data).
    ///
    /// # Errors
    /// Run parse errors; [`Error::Training`] naming the unknown query ids.
    pub fn read(path: &Path, set: &TrainingSet) -> crate::Result<Self> {
        let run = Run::from_path(path)?;
        let known: HashSet<&str> = set.queries.iter().map(|q| q.id.as_str()).collect();
        let mut scores = HashMap::new();
        let mut unknown = Vec::new();
        for qid in run.queries() {
            if !known.contains(qid) {
                unknown.push(qid.to_string());
                continue;
            }
            let list = run.get(qid).unwrap_or(&[]);
            scores.insert(
                qid.to_string(),
                list.iter().map(|(d, s)| (d.clone(), *s as f32)).collect(),
            );
        }
        if !unknown.is_empty() {
            unknown.sort();
            let shown: Vec<&str> = unknown.iter().take(5).map(String::as_str).collect();
            return Err(Error::Training(format!(
                "{}: the teacher run scores {} queries the training set does not have (e.g. {})",
                path.display(),
                unknown.len(),
                shown.join(", ")
            )));
        }
        if scores.is_empty() {
            return Err(Error::Training(format!(
                "{}: the teacher run is empty",
                path.display()
            )));
        }
        Ok(Self { scores })
    }

    /// The teacher's score of a passage for a query.
    pub fn score(&self, query_id: &str, doc_id: &str) -> Option<f32> {
        self.scores.get(query_id)?.get(doc_id).copied()
    }

    /// Keeps, per query, only the passages the run scores (a teacher loss needs a
    /// score for every member of a group); queries left with no positive or too few
    /// negatives are dropped and counted.
    pub fn restrict(&self, set: &mut TrainingSet, negatives: usize) {
        let scored =
            |q: &str, p: &Passage| p.id.as_deref().is_some_and(|d| self.score(q, d).is_some());
        let mut kept = Vec::new();
        for mut q in std::mem::take(&mut set.queries) {
            q.positives.retain(|p| scored(&q.id, p));
            q.negatives.retain(|p| scored(&q.id, p));
            if q.positives.is_empty() {
                set.skipped.no_positive += 1;
            } else if q.negatives.len() < negatives {
                set.skipped.few_negatives += 1;
            } else {
                kept.push(q);
            }
        }
        set.queries = kept;
    }

    /// Per query, its scores as a map (for reports).
    pub fn queries(&self) -> BTreeMap<&str, usize> {
        self.scores
            .iter()
            .map(|(q, m)| (q.as_str(), m.len()))
            .collect()
    }
}
