//! Evaluation with trec_eval's semantics: qrels, runs and the metrics dear reports.
//!
//! * [`Qrels`]: relevance judgments, read from BEIR `qrels/test.tsv` or TREC qrels files.
//! * [`Run`]: ranked lists per query, read and written in TREC run format.
//! * [`evaluate`]: nDCG@10, MRR@10 and Recall@100 per query and averaged, computed as
//!   trec_eval 9.x (`ndcg_cut.10`, `recall_100`, and `recip_rank` cut at 10) and
//!   pytrec_eval, which BEIR uses, compute them. [`ndcg_at`], [`mrr_at`] and
//!   [`recall_at`] give other cutoffs for one query.
//!
//! The points where evaluators differ, settled here as trec_eval does:
//!
//! * a run is ranked by score, descending, ties broken by document id **descending**;
//!   its order and rank column are ignored ([`trec_eval_order`]);
//! * nDCG gains are the grades themselves (linear), the discount is `log2(rank + 1)`,
//!   and the ideal ranking uses every judged document with a grade above 0, retrieved
//!   or not;
//! * relevant means grade `>=` [`RELEVANCE_LEVEL`] (1); unjudged documents are
//!   non-relevant;
//! * the mean is over the queries in both the run and the qrels; judged queries with no
//!   relevant document count, with every measure 0.
//!
//! ```rust
//! use dear_core::eval::{evaluate, Qrels, Run};
//!
//! let qrels: Qrels = "q1\td1\t2\n".parse()?;
//! let mut run = Run::new();
//! run.insert("q1", vec![("d1".to_owned(), 3.0), ("d2".to_owned(), 1.0)])?;
//! assert_eq!(evaluate(&qrels, &run).mean.ndcg_at_10, 1.0);
//! # Ok::<(), dear_core::eval::EvalError>(())
//! ```

mod error;
mod metrics;
mod qrels;
mod run;

pub use error::EvalError;
pub use metrics::{
    evaluate, mrr_at, ndcg_at, recall_at, trec_eval_order, Evaluation, QueryMetrics,
    RELEVANCE_LEVEL,
};
pub use qrels::Qrels;
pub use run::Run;
