//! A scheduler thread in front of a [`PointwiseScorer`]: calls from many threads are
//! queued on a crossbeam channel, and the passages of every call waiting at the time a
//! batch is formed are packed together, so N threads calling at once share batches
//! (and finish sooner than N calls in a row). A call can carry a deadline; when it
//! passes, the caller gets [`Error::DeadlineExceeded`] at once and the scheduler drops
//! the call's remaining work before its next batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::rerank::pointwise::{EncodedQuery, PointwiseScorer};
use crate::rerank::types::{Passage, Query};
use crate::Error;

struct Job {
    encoded: EncodedQuery,
    cancelled: Arc<AtomicBool>,
    reply: Sender<crate::Result<Vec<f32>>>,
}

/// Scores passages against queries; shared by any number of threads (`Send + Sync`).
///
/// # Example
/// ```no_run
/// use std::sync::Arc;
/// use dear_core::{LanguageModel, LoadOptions, Passage, PointwiseConfig, Query, Reranker};
/// let lm = Arc::new(LanguageModel::load("model.gguf", &LoadOptions::default())?);
/// let reranker = Reranker::new(lm, None, PointwiseConfig::yes_no())?;
/// let scores = reranker.score(
///     &Query::new("what causes rain"),
///     &[Passage::new("Rain forms when droplets coalesce."), Passage::new("Paris is in France.")],
/// )?;
/// assert_eq!(scores.len(), 2);
/// # Ok::<(), dear_core::Error>(())
/// ```
#[derive(Debug)]
pub struct Reranker {
    scorer: Arc<PointwiseScorer>,
    sender: Option<Sender<Job>>,
    worker: Option<JoinHandle<()>>,
}

impl Reranker {
    /// Starts a scorer thread over `lm` (with the unmerged adapter `adapter`, if any).
    ///
    /// # Errors
    /// As [`PointwiseScorer::new`]; [`Error::InvalidArgument`] if the thread cannot start.
    pub fn new(
        lm: Arc<crate::LanguageModel>,
        adapter: Option<&str>,
        config: crate::PointwiseConfig,
    ) -> crate::Result<Self> {
        Self::from_scorer(PointwiseScorer::new(lm, adapter, config)?)
    }

    /// Starts a scorer thread over an existing scorer.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the thread cannot start.
    pub fn from_scorer(scorer: PointwiseScorer) -> crate::Result<Self> {
        let scorer = Arc::new(scorer);
        let (sender, receiver) = crossbeam_channel::unbounded::<Job>();
        let worker_scorer = scorer.clone();
        let worker = std::thread::Builder::new()
            .name("dear-pointwise".into())
            .spawn(move || run(&worker_scorer, &receiver))
            .map_err(|e| Error::InvalidArgument(format!("cannot start the scorer thread: {e}")))?;
        Ok(Self {
            scorer,
            sender: Some(sender),
            worker: Some(worker),
        })
    }

    /// The scorer behind the thread.
    pub fn scorer(&self) -> &PointwiseScorer {
        &self.scorer
    }

    /// Scores `passages` against `query`, in input order.
    ///
    /// # Errors
    /// [`Error::EmptyInput`] for an empty query; model errors.
    pub fn score(&self, query: &Query, passages: &[Passage]) -> crate::Result<Vec<f32>> {
        self.score_until(query, passages, None)
    }

    /// [`Reranker::score`] with a deadline.
    ///
    /// # Errors
    /// [`Error::DeadlineExceeded`] when the deadline passes first (the remaining work
    /// is dropped), and the errors of [`Reranker::score`].
    pub fn score_until(
        &self,
        query: &Query,
        passages: &[Passage],
        deadline: Option<Instant>,
    ) -> crate::Result<Vec<f32>> {
        if passages.is_empty() {
            if query.text.trim().is_empty() {
                return Err(Error::EmptyInput("the query is empty".into()));
            }
            return Ok(Vec::new());
        }
        let encoded = self.scorer.encode(query, passages)?;
        self.score_encoded_until(encoded, deadline)
    }

    /// Scores an input already built with [`PointwiseScorer::encode`] (of
    /// [`Reranker::scorer`]), so a caller can inspect or count its tokens first.
    ///
    /// # Errors
    /// [`Error::DeadlineExceeded`] when the deadline passes first; model errors.
    pub fn score_encoded_until(
        &self,
        encoded: EncodedQuery,
        deadline: Option<Instant>,
    ) -> crate::Result<Vec<f32>> {
        let started = Instant::now();
        let passages = encoded.suffixes.len();
        if passages == 0 {
            return Ok(Vec::new());
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        let cancelled = Arc::new(AtomicBool::new(false));
        let sender = self.sender.as_ref().ok_or(Error::Cancelled)?;
        sender
            .send(Job {
                encoded,
                cancelled: cancelled.clone(),
                reply,
            })
            .map_err(|_| Error::Cancelled)?;
        let result = match deadline {
            None => answer.recv().map_err(|_| Error::Cancelled)?,
            Some(d) => match answer.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    cancelled.store(true, Ordering::Relaxed);
                    return Err(Error::DeadlineExceeded {
                        what: format!("pointwise scoring of {passages} passages"),
                        elapsed_ms: started.elapsed().as_millis(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Cancelled),
            },
        };
        result
    }
}

impl Drop for Reranker {
    fn drop(&mut self) {
        // Closing the channel ends the worker once the queue is empty.
        self.sender.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The worker: wait for a job, gather everything else already queued, score all of
/// it in shared batches, answer, repeat.
fn run(scorer: &PointwiseScorer, receiver: &Receiver<Job>) {
    while let Ok(first) = receiver.recv() {
        // A short grace period lets calls that arrive together share batches.
        let mut jobs = vec![first];
        let until = Instant::now() + Duration::from_millis(2);
        while let Ok(job) = receiver.recv_deadline(until) {
            jobs.push(job);
        }
        while let Ok(job) = receiver.try_recv() {
            jobs.push(job);
        }
        jobs.retain(|j| !j.cancelled.load(Ordering::Relaxed));
        if jobs.is_empty() {
            continue;
        }
        let encoded: Vec<&EncodedQuery> = jobs.iter().map(|j| &j.encoded).collect();
        let flags: Vec<Arc<AtomicBool>> = jobs.iter().map(|j| j.cancelled.clone()).collect();
        let mut all_cancelled = || flags.iter().all(|f| f.load(Ordering::Relaxed));
        match scorer.score_encoded(&encoded, &mut all_cancelled) {
            Ok(scores) => {
                for (job, s) in jobs.iter().zip(scores) {
                    let _ = job.reply.send(Ok(s));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in &jobs {
                    let _ = job.reply.send(Err(match &e {
                        Error::Cancelled => Error::Cancelled,
                        _ => Error::InvalidArgument(format!("scoring failed: {msg}")),
                    }));
                }
            }
        }
    }
}
