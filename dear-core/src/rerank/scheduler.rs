//! A scheduler thread in front of a [`PointwiseScorer`]: calls from many threads are
//! queued on a crossbeam channel, and the passages of every call waiting at the time a
//! batch is formed are packed together, so N threads calling at once share batches
//! (and finish sooner than N calls in a row). A call can carry a deadline; when it
//! passes, the caller gets [`Error::DeadlineExceeded`] at once and the scheduler drops
//! the call's remaining work before its next batch, while the other calls of its
//! round go on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::rerank::pointwise::{EncodedQuery, PointwiseScorer, Scored};
use crate::rerank::types::{Passage, Query};
use crate::Error;

struct Job {
    encoded: EncodedQuery,
    cancelled: Arc<AtomicBool>,
    reply: Sender<crate::Result<Vec<f32>>>,
}

/// Scores passages against queries through one scheduler thread; shared by any
/// number of threads (`Send + Sync`). It is the pointwise stage the
/// [`Reranker`](crate::Reranker) uses by default.
///
/// # Example
/// ```no_run
/// use std::sync::Arc;
/// use dear_core::{LanguageModel, LoadOptions, Passage, PointwiseConfig, Query, Scheduler};
/// let lm = Arc::new(LanguageModel::load("model.gguf", &LoadOptions::default())?);
/// let scheduler = Scheduler::new(lm, None, PointwiseConfig::yes_no())?;
/// let scored = scheduler.score(
///     &Query::new("what causes rain"),
///     &[Passage::new("Rain forms when droplets coalesce."), Passage::new("Paris is in France.")],
///     None,
/// )?;
/// assert_eq!(scored.scores.len(), 2);
/// # Ok::<(), dear_core::Error>(())
/// ```
#[derive(Debug)]
pub struct Scheduler {
    scorer: Arc<PointwiseScorer>,
    counters: Arc<Counters>,
    sender: Option<Sender<Job>>,
    worker: Option<JoinHandle<()>>,
}

/// What a [`Scheduler`] has done since it started: how many rounds it ran and how
/// many calls and passages they packed. `calls / rounds` is how many callers shared
/// a round on average (1.0: no sharing); `passages / rounds` the mean round size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchStats {
    /// Scoring rounds run (each one scores every call waiting when it formed).
    pub rounds: u64,
    /// Calls scored.
    pub calls: u64,
    /// Passages scored.
    pub passages: u64,
}

#[derive(Debug, Default)]
struct Counters {
    rounds: AtomicU64,
    calls: AtomicU64,
    passages: AtomicU64,
}

impl Scheduler {
    /// Starts a scheduler thread over `lm` (with the unmerged adapter `adapter`, if
    /// any).
    ///
    /// # Errors
    /// As [`PointwiseScorer::new`]; [`Error::Internal`] if the thread cannot start.
    pub fn new(
        lm: Arc<crate::LanguageModel>,
        adapter: Option<&str>,
        config: crate::PointwiseConfig,
    ) -> crate::Result<Self> {
        Self::from_scorer(PointwiseScorer::new(lm, adapter, config)?)
    }

    /// Starts a scheduler thread over an existing scorer.
    ///
    /// # Errors
    /// [`Error::Internal`] if the thread cannot start.
    pub fn from_scorer(scorer: PointwiseScorer) -> crate::Result<Self> {
        let scorer = Arc::new(scorer);
        let (sender, receiver) = crossbeam_channel::unbounded::<Job>();
        let worker_scorer = scorer.clone();
        let counters = Arc::new(Counters::default());
        let worker_counters = counters.clone();
        let worker = std::thread::Builder::new()
            .name("dear-pointwise".into())
            .spawn(move || run(&worker_scorer, &receiver, &worker_counters))
            .map_err(|e| Error::Internal(format!("cannot start the scorer thread: {e}")))?;
        Ok(Self {
            scorer,
            counters,
            sender: Some(sender),
            worker: Some(worker),
        })
    }

    /// The scorer behind the thread.
    pub fn scorer(&self) -> &PointwiseScorer {
        &self.scorer
    }

    /// The rounds run so far and the calls and passages they packed.
    pub fn batch_stats(&self) -> BatchStats {
        BatchStats {
            rounds: self.counters.rounds.load(Ordering::Relaxed),
            calls: self.counters.calls.load(Ordering::Relaxed),
            passages: self.counters.passages.load(Ordering::Relaxed),
        }
    }

    /// Scores `passages` against `query`, in input order, with the tokens the model
    /// read; gives up at `deadline` (the call's remaining work is dropped).
    ///
    /// # Errors
    /// [`Error::EmptyInput`] for an empty query; [`Error::DeadlineExceeded`] (with the
    /// real time waited) when the deadline passes first; model errors.
    pub fn score(
        &self,
        query: &Query,
        passages: &[Passage],
        deadline: Option<Instant>,
    ) -> crate::Result<Scored> {
        let started = Instant::now();
        if passages.is_empty() {
            if query.text.trim().is_empty() {
                return Err(Error::EmptyInput("the query is empty".into()));
            }
            return Ok(Scored {
                scores: Vec::new(),
                tokens: 0,
            });
        }
        let encoded = self.scorer.encode(query, passages)?;
        let tokens = encoded.tokens();
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
        let scores = match deadline {
            None => answer.recv().map_err(|_| Error::Cancelled)?,
            Some(d) => match answer.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    cancelled.store(true, Ordering::Relaxed);
                    return Err(Error::deadline(
                        format!("pointwise scoring of {} passages", passages.len()),
                        started,
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Cancelled),
            },
        }?;
        Ok(Scored { scores, tokens })
    }
}

impl Drop for Scheduler {
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
fn run(scorer: &PointwiseScorer, receiver: &Receiver<Job>, counters: &Counters) {
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
        counters.rounds.fetch_add(1, Ordering::Relaxed);
        counters
            .calls
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        let passages: usize = encoded.iter().map(|e| e.suffixes.len()).sum();
        counters
            .passages
            .fetch_add(passages as u64, Ordering::Relaxed);
        let flags: Vec<Arc<AtomicBool>> = jobs.iter().map(|j| j.cancelled.clone()).collect();
        let gave_up = |qi: usize| flags[qi].load(Ordering::Relaxed);
        // Each call is answered as soon as its own passages are scored; the work left
        // for a call that gave up is dropped, and the others go on.
        let mut answered = vec![false; jobs.len()];
        let result = scorer.score_encoded_each(&encoded, &gave_up, &mut |qi, s| {
            answered[qi] = true;
            let _ = jobs[qi].reply.send(Ok(s));
        });
        if let Err(e) = result {
            // Every call of the round still waiting gets the same error.
            let shared = std::sync::Arc::new(e);
            for (job, _) in jobs.iter().zip(&answered).filter(|(_, &a)| !a) {
                let _ = job.reply.send(Err(match shared.as_ref() {
                    Error::Cancelled => Error::Cancelled,
                    _ => Error::Batch(shared.clone()),
                }));
            }
        }
    }
}
