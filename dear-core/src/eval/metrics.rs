//! nDCG, reciprocal rank and recall at cutoffs, computed as trec_eval 9.x computes them.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::qrels::Qrels;
use super::run::Run;

/// The minimum grade of a relevant document: trec_eval's default `-l 1`.
///
/// Used by recall and reciprocal rank. nDCG does not use it: its gains are the grades
/// themselves, and every grade above 0 gains.
pub const RELEVANCE_LEVEL: i32 = 1;

/// Ranks a query's documents as trec_eval does before any measure.
///
/// trec_eval ignores the order and the rank column of a run: `form_res_rels.c` sorts by
/// score, descending, and breaks ties by document id in **descending** byte order
/// (`comp_sim_docno` returns `strcmp(p2->docno, p1->docno)`), so of two documents with
/// the same score, `"b"` is ranked before `"a"`. A document listed more than once (which
/// [`Run`] never holds, and trec_eval refuses) is kept only at its best position.
pub fn trec_eval_order(ranked: &[(String, f64)]) -> Vec<(&str, f64)> {
    let mut order: Vec<(&str, f64)> = ranked.iter().map(|(d, s)| (d.as_str(), *s)).collect();
    order.sort_by(|(doc_a, score_a), (doc_b, score_b)| {
        // NaN (refused by `Run`) ranks last here, so the order stays total (a sort by an
        // inconsistent comparison may panic).
        let key = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
        key(*score_b)
            .partial_cmp(&key(*score_a))
            .unwrap_or(Ordering::Equal)
            .then_with(|| doc_b.as_bytes().cmp(doc_a.as_bytes()))
    });
    let mut seen = HashSet::with_capacity(order.len());
    order.retain(|(doc, _)| seen.insert(*doc));
    order
}

/// The grade of each document in trec_eval order; `None` for a document the judgments
/// do not mention (trec_eval's `RELVALUE_NONPOOL`, non-relevant for every measure here).
fn grades_in_order(
    ranked: &[(String, f64)],
    judgments: &BTreeMap<String, i32>,
) -> Vec<Option<i32>> {
    trec_eval_order(ranked)
        .into_iter()
        .map(|(doc, _)| judgments.get(doc).copied())
        .collect()
}

/// trec_eval's discount for the document at 0-based position `i`: `log2(rank + 1)`.
fn discount(i: usize) -> f64 {
    ((i + 2) as f64).log2()
}

fn ndcg_of(grades: &[Option<i32>], judgments: &BTreeMap<String, i32>, k: usize) -> f64 {
    // m_ndcg_cut.c: gain = the grade, counted only when > 0; discount log2(i + 2).
    let mut dcg = 0.0;
    for (i, grade) in grades.iter().take(k).enumerate() {
        if let Some(grade) = *grade {
            if grade > 0 {
                dcg += f64::from(grade) / discount(i);
            }
        }
    }
    // Ideal: every judged document of the query with a grade > 0 (retrieved or not),
    // best grades first, cut at k.
    let mut ideal: Vec<i32> = judgments.values().copied().filter(|&g| g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let mut ideal_dcg = 0.0;
    for (i, grade) in ideal.iter().take(k).enumerate() {
        ideal_dcg += f64::from(*grade) / discount(i);
    }
    if ideal_dcg > 0.0 {
        dcg / ideal_dcg
    } else {
        // No grade above 0: the DCG is 0 too, and trec_eval leaves it undivided.
        dcg
    }
}

fn recall_of(grades: &[Option<i32>], judgments: &BTreeMap<String, i32>, k: usize) -> f64 {
    // m_recall.c: relevant retrieved in the top k / relevant judged; 0 when none is relevant.
    let num_rel = judgments
        .values()
        .filter(|&&g| g >= RELEVANCE_LEVEL)
        .count();
    if num_rel == 0 {
        return 0.0;
    }
    let rel_so_far = grades
        .iter()
        .take(k)
        .filter(|g| matches!(g, Some(g) if *g >= RELEVANCE_LEVEL))
        .count();
    rel_so_far as f64 / num_rel as f64
}

fn mrr_of(grades: &[Option<i32>], k: usize) -> f64 {
    // m_recip_rank.c, with the search limited to the top k.
    grades
        .iter()
        .take(k)
        .position(|g| matches!(g, Some(g) if *g >= RELEVANCE_LEVEL))
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

/// nDCG at cutoff `k` of one query, as trec_eval's `ndcg_cut.k` (`m_ndcg_cut.c`).
///
/// * The documents are ranked by [`trec_eval_order`] (score, then document id descending).
/// * The gain of a document is its grade in `judgments` when that grade is above 0;
///   documents graded 0 or below, and documents `judgments` does not mention
///   (unjudged), gain nothing. Gains are linear (the grade itself, not `2^grade - 1`).
/// * The document at rank `r` (1-based) is discounted by `log2(r + 1)`.
/// * The ideal DCG ranks **all** documents of `judgments` with a grade above 0, best
///   first, whether the run retrieved them or not (so relevant documents missing from the
///   corpus or the run still count), and is cut at `k` too.
/// * With no grade above 0 the result is 0.
///
/// `k = 0` gives 0.
pub fn ndcg_at(ranked: &[(String, f64)], judgments: &BTreeMap<String, i32>, k: usize) -> f64 {
    ndcg_of(&grades_in_order(ranked, judgments), judgments, k)
}

/// Recall at cutoff `k` of one query, as trec_eval's `recall.k` (`m_recall.c`).
///
/// The number of relevant documents (grade `>=` [`RELEVANCE_LEVEL`]) among the first
/// `k` of [`trec_eval_order`], divided by the number of relevant documents in
/// `judgments` (retrieved or not). A run shorter than `k` is as if padded with
/// non-relevant documents. A query without relevant document gives 0.
pub fn recall_at(ranked: &[(String, f64)], judgments: &BTreeMap<String, i32>, k: usize) -> f64 {
    recall_of(&grades_in_order(ranked, judgments), judgments, k)
}

/// Reciprocal rank at cutoff `k` of one query (MRR@k once averaged; the MS MARCO
/// definition).
///
/// `1 / r` for the rank `r` of the first relevant document (grade `>=`
/// [`RELEVANCE_LEVEL`]) in [`trec_eval_order`] if `r <= k`, else 0. trec_eval's
/// `recip_rank` (`m_recip_rank.c`) is the same measure without the cutoff.
pub fn mrr_at(ranked: &[(String, f64)], judgments: &BTreeMap<String, i32>, k: usize) -> f64 {
    mrr_of(&grades_in_order(ranked, judgments), k)
}

/// The measures dear reports for one query (or their mean over queries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryMetrics {
    /// nDCG@10: trec_eval's `ndcg_cut.10`; see [`ndcg_at`].
    pub ndcg_at_10: f64,
    /// Reciprocal rank of the first relevant document within the top 10, 0 if none;
    /// see [`mrr_at`].
    pub mrr_at_10: f64,
    /// Recall@100: trec_eval's `recall_100`; see [`recall_at`].
    pub recall_at_100: f64,
}

impl QueryMetrics {
    /// Computes the measures of one query from its ranked list and its judgments.
    pub fn compute(ranked: &[(String, f64)], judgments: &BTreeMap<String, i32>) -> Self {
        let grades = grades_in_order(ranked, judgments);
        QueryMetrics {
            ndcg_at_10: ndcg_of(&grades, judgments, 10),
            mrr_at_10: mrr_of(&grades, 10),
            recall_at_100: recall_of(&grades, judgments, 100),
        }
    }
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The measures of every evaluated query (in both the run and the qrels).
    pub per_query: BTreeMap<String, QueryMetrics>,
    /// The arithmetic mean of `per_query` (all 0 when no query was evaluated).
    pub mean: QueryMetrics,
    /// The number of evaluated queries (`per_query.len()`).
    pub queries: usize,
    /// Queries of the run without judgments: ignored, as trec_eval and pytrec_eval do.
    pub run_only: usize,
    /// Judged queries absent from the run: ignored, as trec_eval does without `-c`
    /// (a system that returned nothing for them is not penalised; check this is 0).
    pub qrels_only: usize,
}

/// Evaluates a run against judgments with trec_eval's semantics (as BEIR, through
/// pytrec_eval, does).
///
/// * Evaluated queries are those in **both** the run and the qrels (trec_eval without
///   `-c`; pytrec_eval skips run queries without judgments). The others are counted in
///   [`Evaluation::run_only`] and [`Evaluation::qrels_only`].
/// * Judged queries without any relevant document (all grades 0) **are** evaluated and
///   count in the mean, with nDCG, MRR and recall all 0, as in trec_eval.
/// * Each query's documents are ranked by score (ties: document id descending), not in
///   the order the run holds them; see [`trec_eval_order`]. Unjudged documents are
///   non-relevant.
/// * The mean is the sum over queries in byte order of their ids (trec_eval's order),
///   divided by their number.
///
/// See [`ndcg_at`], [`mrr_at`] and [`recall_at`] for each measure.
///
/// ```rust
/// use dear_core::eval::{evaluate, Qrels, Run};
///
/// let qrels: Qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t1\n".parse()?;
/// let run: Run = "q1 Q0 d3 1 2.0 bm25\nq1 Q0 d1 2 1.0 bm25\n".parse()?;
/// let evaluation = evaluate(&qrels, &run);
/// assert_eq!(evaluation.queries, 1);
/// // d1, relevant, is ranked second.
/// assert_eq!(evaluation.mean.mrr_at_10, 0.5);
/// // 1 of the 2 relevant documents is retrieved.
/// assert_eq!(evaluation.mean.recall_at_100, 0.5);
/// // DCG = 1/log2(3); ideal DCG = 1/log2(2) + 1/log2(3).
/// let expected = (1.0 / 3f64.log2()) / (1.0 + 1.0 / 3f64.log2());
/// assert!((evaluation.mean.ndcg_at_10 - expected).abs() < 1e-12);
/// # Ok::<(), dear_core::eval::EvalError>(())
/// ```
pub fn evaluate(qrels: &Qrels, run: &Run) -> Evaluation {
    let mut evaluation = Evaluation::default();
    for query_id in run.queries() {
        let (Some(judgments), Some(ranked)) = (qrels.get(query_id), run.get(query_id)) else {
            evaluation.run_only += 1;
            continue;
        };
        evaluation.per_query.insert(
            query_id.to_owned(),
            QueryMetrics::compute(ranked, judgments),
        );
    }
    evaluation.qrels_only = qrels.queries().filter(|q| run.get(q).is_none()).count();
    evaluation.queries = evaluation.per_query.len();
    if evaluation.queries > 0 {
        let mut sum = QueryMetrics::default();
        for metrics in evaluation.per_query.values() {
            sum.ndcg_at_10 += metrics.ndcg_at_10;
            sum.mrr_at_10 += metrics.mrr_at_10;
            sum.recall_at_100 += metrics.recall_at_100;
        }
        let n = evaluation.queries as f64;
        evaluation.mean = QueryMetrics {
            ndcg_at_10: sum.ndcg_at_10 / n,
            mrr_at_10: sum.mrr_at_10 / n,
            recall_at_100: sum.recall_at_100 / n,
        };
    }
    evaluation
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    fn judgments(items: &[(&str, i32)]) -> BTreeMap<String, i32> {
        items.iter().map(|&(d, g)| (d.to_owned(), g)).collect()
    }

    fn list(items: &[(&str, f64)]) -> Vec<(String, f64)> {
        items.iter().map(|&(d, s)| (d.to_owned(), s)).collect()
    }

    fn log2(x: f64) -> f64 {
        x.log2()
    }

    fn close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < EPS,
            "actual {actual}, expected {expected}"
        );
    }

    /// Graded judgments; one judged doc (d9, grade 2) is not retrieved; one retrieved
    /// doc (dx) is unjudged; d4 is judged 0.
    fn graded() -> (Vec<(String, f64)>, BTreeMap<String, i32>) {
        let judged = judgments(&[("d1", 3), ("d2", 2), ("d3", 1), ("d4", 0), ("d9", 2)]);
        let ranked = list(&[
            ("d1", 0.9),
            ("d4", 0.8),
            ("d2", 0.7),
            ("dx", 0.6),
            ("d3", 0.5),
        ]);
        (ranked, judged)
    }

    #[test]
    fn graded_gains_and_ideal_with_unretrieved_judged_doc() {
        let (ranked, judged) = graded();
        // Ranks: d1(3) d4(0) d2(2) dx(unjudged) d3(1).
        // DCG   = 3/log2(2) + 0/log2(3) + 2/log2(4) + 0/log2(5) + 1/log2(6)
        //       = 3 + 1 + 0.386853                        = 4.386853...
        // Ideal = grades > 0 of ALL judged docs, d9 included: 3, 2, 2, 1
        //       = 3/log2(2) + 2/log2(3) + 2/log2(4) + 1/log2(5)
        //       = 3 + 1.261860 + 1 + 0.430677             = 5.692536...
        // nDCG  = 4.386853 / 5.692536                     = 0.770632...
        let expected = (3.0 / log2(2.0) + 2.0 / log2(4.0) + 1.0 / log2(6.0))
            / (3.0 / log2(2.0) + 2.0 / log2(3.0) + 2.0 / log2(4.0) + 1.0 / log2(5.0));
        close(ndcg_at(&ranked, &judged, 10), expected);
        assert!((expected - 0.770_632_4).abs() < 1e-7);
        // First relevant (grade >= 1) at rank 1.
        close(mrr_at(&ranked, &judged, 10), 1.0);
        // Relevant: d1, d2, d3, d9 = 4; retrieved relevant: d1, d2, d3 = 3 → 3/4.
        close(recall_at(&ranked, &judged, 100), 0.75);
        // Cutoff 2: DCG = 3; ideal = 3 + 2/log2(3).
        close(ndcg_at(&ranked, &judged, 2), 3.0 / (3.0 + 2.0 / log2(3.0)));
        // Recall@2: only d1 among the first two → 1/4.
        close(recall_at(&ranked, &judged, 2), 0.25);
        let metrics = QueryMetrics::compute(&ranked, &judged);
        assert_eq!(
            metrics,
            QueryMetrics {
                ndcg_at_10: ndcg_at(&ranked, &judged, 10),
                mrr_at_10: 1.0,
                recall_at_100: 0.75,
            }
        );
    }

    #[test]
    fn the_held_order_is_ignored_scores_decide() {
        // Held order d3, d1 but scores rank d1 first.
        let judged = judgments(&[("d1", 1)]);
        let ranked = list(&[("d3", 0.1), ("d1", 0.9)]);
        close(mrr_at(&ranked, &judged, 10), 1.0);
        close(ndcg_at(&ranked, &judged, 10), 1.0);
    }

    #[test]
    fn ties_are_broken_by_doc_id_descending() {
        // All scores equal: trec_eval ranks c, b, a (strcmp(p2, p1): descending ids).
        let ranked = list(&[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
        assert_eq!(
            trec_eval_order(&ranked),
            vec![("c", 1.0), ("b", 1.0), ("a", 1.0)]
        );
        let judged = judgments(&[("a", 1)]);
        // a is at rank 3: RR = 1/3; nDCG = (1/log2(4)) / (1/log2(2)) = 1/2.
        close(mrr_at(&ranked, &judged, 10), 1.0 / 3.0);
        close(ndcg_at(&ranked, &judged, 10), 0.5);
        // Recall@2 = 0 (a is third), recall@3 = 1.
        close(recall_at(&ranked, &judged, 2), 0.0);
        close(recall_at(&ranked, &judged, 3), 1.0);
        // Ties only among equal scores: "a" with a higher score stays first.
        let ranked = list(&[("b", 1.0), ("a", 2.0), ("c", 1.0)]);
        assert_eq!(
            trec_eval_order(&ranked),
            vec![("a", 2.0), ("c", 1.0), ("b", 1.0)]
        );
        // Byte order: "B" (0x42) < "a" (0x61), so "a" comes first among ties.
        let ranked = list(&[("B", 0.0), ("a", 0.0), ("-0", -0.0)]);
        assert_eq!(
            trec_eval_order(&ranked)
                .into_iter()
                .map(|(d, _)| d)
                .collect::<Vec<_>>(),
            ["a", "B", "-0"]
        );
    }

    #[test]
    fn unjudged_and_negative_grades_are_non_relevant() {
        // a: grade -1 (trec_eval: in pool, unjudged), u: not in judgments, b: grade 1.
        let judged = judgments(&[("a", -1), ("b", 1)]);
        let ranked = list(&[("u", 3.0), ("a", 2.0), ("b", 1.0)]);
        // b at rank 3: DCG = 1/log2(4) = 0.5; ideal = 1/log2(2) = 1 (a's -1 not in it).
        close(ndcg_at(&ranked, &judged, 10), 0.5);
        close(mrr_at(&ranked, &judged, 10), 1.0 / 3.0);
        // num_rel = 1 (b only).
        close(recall_at(&ranked, &judged, 100), 1.0);
    }

    #[test]
    fn query_without_relevant_doc_gives_zeros() {
        let judged = judgments(&[("a", 0), ("b", 0)]);
        let ranked = list(&[("a", 2.0), ("b", 1.0)]);
        assert_eq!(
            QueryMetrics::compute(&ranked, &judged),
            QueryMetrics::default()
        );
    }

    #[test]
    fn recall_cutoff() {
        // 101 docs d000..d100 with scores 1000, 999, ...; relevant: d000 (rank 1),
        // d050 (rank 51), d100 (rank 101), plus "zz" never retrieved: num_rel = 4.
        let ranked: Vec<(String, f64)> = (0..=100)
            .map(|i| (format!("d{i:03}"), 1000.0 - i as f64))
            .collect();
        let judged = judgments(&[("d000", 1), ("d050", 2), ("d100", 1), ("zz", 1)]);
        // Top 100 holds d000 and d050: 2/4.
        close(recall_at(&ranked, &judged, 100), 0.5);
        // Top 101 adds d100: 3/4. A cutoff beyond the list stays 3/4.
        close(recall_at(&ranked, &judged, 101), 0.75);
        close(recall_at(&ranked, &judged, 1000), 0.75);
        close(recall_at(&ranked, &judged, 1), 0.25);
        close(recall_at(&ranked, &judged, 0), 0.0);
        close(QueryMetrics::compute(&ranked, &judged).recall_at_100, 0.5);
    }

    #[test]
    fn reciprocal_rank_beyond_the_cutoff_is_zero() {
        // First relevant doc at rank 11.
        let ranked: Vec<(String, f64)> = (0..20)
            .map(|i| (format!("d{i:02}"), 100.0 - i as f64))
            .collect();
        let judged = judgments(&[("d10", 1)]);
        close(mrr_at(&ranked, &judged, 10), 0.0);
        close(mrr_at(&ranked, &judged, 11), 1.0 / 11.0);
        // nDCG@10 ignores rank 11 too; the ideal (1/log2(2)) is not 0 → 0.
        close(ndcg_at(&ranked, &judged, 10), 0.0);
        // nDCG@11 = (1/log2(12)) / 1.
        close(ndcg_at(&ranked, &judged, 11), 1.0 / log2(12.0));
        let metrics = QueryMetrics::compute(&ranked, &judged);
        close(metrics.mrr_at_10, 0.0);
        close(metrics.recall_at_100, 1.0);
    }

    #[test]
    fn ideal_is_cut_at_k() {
        // 12 relevant docs (grade 1), all retrieved first: DCG@10 = ideal DCG@10 → 1,
        // although the full ideal (12 docs) is larger than DCG@10.
        let ranked: Vec<(String, f64)> = (0..12)
            .map(|i| (format!("d{i:02}"), 100.0 - i as f64))
            .collect();
        let judged: BTreeMap<String, i32> = (0..12).map(|i| (format!("d{i:02}"), 1)).collect();
        close(ndcg_at(&ranked, &judged, 10), 1.0);
        // Recall@10 = 10/12.
        close(recall_at(&ranked, &judged, 10), 10.0 / 12.0);
    }

    #[test]
    fn duplicates_count_once() {
        // "a" twice: kept at its best position (score 2), the copy at 0.5 dropped.
        let ranked = list(&[("a", 2.0), ("b", 1.0), ("a", 0.5)]);
        assert_eq!(trec_eval_order(&ranked), vec![("a", 2.0), ("b", 1.0)]);
        let judged = judgments(&[("a", 1)]);
        close(recall_at(&ranked, &judged, 100), 1.0);
        close(ndcg_at(&ranked, &judged, 10), 1.0);
    }

    #[test]
    fn empty_ranked_list() {
        let judged = judgments(&[("a", 1)]);
        assert_eq!(QueryMetrics::compute(&[], &judged), QueryMetrics::default());
    }

    #[test]
    fn evaluate_averages_over_queries_in_both() {
        let (ranked, judged) = graded();
        let mut qrels = Qrels::new();
        for (doc, grade) in &judged {
            qrels.insert("q1", doc.clone(), *grade);
        }
        // q2: judged, no relevant doc → counts with zeros.
        qrels.insert("q2", "a", 0);
        // q3: judged, not in the run → ignored (qrels_only).
        qrels.insert("q3", "a", 1);
        let mut run = Run::new();
        run.insert("q1", ranked.clone()).unwrap();
        run.insert("q2", list(&[("a", 1.0), ("b", 0.5)])).unwrap();
        // q4: in the run, not judged → ignored (run_only).
        run.insert("q4", list(&[("a", 1.0)])).unwrap();

        let evaluation = evaluate(&qrels, &run);
        assert_eq!(evaluation.queries, 2);
        assert_eq!(evaluation.run_only, 1);
        assert_eq!(evaluation.qrels_only, 1);
        assert_eq!(
            evaluation.per_query.keys().collect::<Vec<_>>(),
            ["q1", "q2"]
        );
        assert_eq!(evaluation.per_query["q2"], QueryMetrics::default());
        let q1 = QueryMetrics::compute(&ranked, &judged);
        assert_eq!(evaluation.per_query["q1"], q1);
        // Means over 2 queries: nDCG (0.770632 + 0) / 2, MRR (1 + 0) / 2,
        // recall (0.75 + 0) / 2.
        close(evaluation.mean.ndcg_at_10, q1.ndcg_at_10 / 2.0);
        assert!((evaluation.mean.ndcg_at_10 - 0.385_316_2).abs() < 1e-7);
        close(evaluation.mean.mrr_at_10, 0.5);
        close(evaluation.mean.recall_at_100, 0.375);
    }

    #[test]
    fn evaluate_with_nothing_in_common() {
        let qrels: Qrels = "q1\td1\t1\n".parse().unwrap();
        let run: Run = "q2 Q0 d1 1 1 t\n".parse().unwrap();
        let evaluation = evaluate(&qrels, &run);
        assert_eq!(evaluation.queries, 0);
        assert_eq!(evaluation.mean, QueryMetrics::default());
        assert_eq!((evaluation.run_only, evaluation.qrels_only), (1, 1));
    }

    #[test]
    fn evaluation_serializes() {
        let qrels: Qrels = "q1\td1\t1\n".parse().unwrap();
        let run: Run = "q1 Q0 d1 1 1 t\n".parse().unwrap();
        let json = serde_json::to_value(evaluate(&qrels, &run)).unwrap();
        assert_eq!(json["mean"]["ndcg_at_10"], 1.0);
        assert_eq!(json["per_query"]["q1"]["mrr_at_10"], 1.0);
        assert_eq!(json["queries"], 1);
    }
}
