//! Why a stage (or one listwise window) did not give its order: a typed failure that
//! callers match on, never a string to search.

use std::sync::Arc;
use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::Error;

/// Why a reranking stage, or one listwise window, kept the order it was given.
///
/// A failed stage never loses results: the pipeline keeps the order before it and
/// puts this in the stage's [`StageReport`](crate::StageReport).
///
/// # Example
/// ```
/// use std::time::Duration;
/// use dear_core::StageFailure;
/// let f = StageFailure::Deadline { elapsed: Duration::from_millis(1500) };
/// assert!(f.is_deadline());
/// assert_eq!(f.to_string(), "the deadline passed after 1500 ms");
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageFailure {
    /// The deadline passed while the stage ran (or before it started).
    #[error("the deadline passed after {} ms", elapsed.as_millis())]
    Deadline {
        /// How long the stage had run when it gave up.
        elapsed: Duration,
    },
    /// The model (or a plugged-in stage) returned an error.
    #[error("model error: {0}")]
    Model(Arc<Error>),
    /// The listwise model wrote no parseable ranking for a window (`start..end`: ranks
    /// in the list as it stood when the window ran).
    #[error("no parseable ranking in window {start}..{end}")]
    Unparseable {
        /// First rank of the window.
        start: usize,
        /// One past its last rank.
        end: usize,
        /// What the model wrote.
        output: String,
    },
    /// Every listwise window failed; the first failure is kept.
    #[error("no window produced a ranking ({windows} window(s); first: {first})")]
    NoRanking {
        /// How many windows ran.
        windows: usize,
        /// The first window's failure.
        first: Box<StageFailure>,
    },
    /// The call was cancelled (its caller went away, or the scheduler shut down).
    #[error("cancelled")]
    Cancelled,
    /// A plugged-in stage returned something the pipeline cannot use (a wrong number
    /// of scores, a NaN score, an order that is not a permutation).
    #[error("invalid stage output: {0}")]
    InvalidOutput(String),
    /// The stage panicked (a bug in a kernel or a plugged-in stage); the panic was
    /// caught at the pipeline's boundary and the order before the stage kept.
    #[error("the stage panicked: {0}")]
    Panicked(String),
}

impl StageFailure {
    /// Whether this is [`StageFailure::Deadline`].
    pub fn is_deadline(&self) -> bool {
        matches!(self, StageFailure::Deadline { .. })
    }

    /// A short machine-readable name: `deadline`, `model`, `unparseable`,
    /// `no-ranking`, `cancelled` or `invalid-output`.
    pub fn kind(&self) -> &'static str {
        match self {
            StageFailure::Deadline { .. } => "deadline",
            StageFailure::Model(_) => "model",
            StageFailure::Unparseable { .. } => "unparseable",
            StageFailure::NoRanking { .. } => "no-ranking",
            StageFailure::Cancelled => "cancelled",
            StageFailure::InvalidOutput(_) => "invalid-output",
            StageFailure::Panicked(_) => "panicked",
        }
    }

    /// The model error, for [`StageFailure::Model`].
    pub fn model_error(&self) -> Option<&Error> {
        match self {
            StageFailure::Model(e) => Some(e),
            _ => None,
        }
    }

    /// The failure an error of a stage call stands for; `elapsed` is how long the
    /// stage had run (deadline errors carry it).
    pub(crate) fn from_error(error: Error, elapsed: Duration) -> Self {
        match error {
            Error::DeadlineExceeded { .. } => StageFailure::Deadline { elapsed },
            Error::Cancelled => StageFailure::Cancelled,
            Error::Batch(shared) => StageFailure::Model(shared),
            other => StageFailure::Model(Arc::new(other)),
        }
    }
}

impl StageFailure {
    /// The failure for a panic caught while a stage ran, with the panic's message.
    pub(crate) fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        StageFailure::Panicked(message)
    }
}

impl PartialEq for StageFailure {
    fn eq(&self, other: &Self) -> bool {
        use StageFailure::*;
        match (self, other) {
            (Deadline { elapsed: a }, Deadline { elapsed: b }) => a == b,
            (Model(a), Model(b)) => Arc::ptr_eq(a, b) || a.to_string() == b.to_string(),
            (
                Unparseable {
                    start: s1,
                    end: e1,
                    output: o1,
                },
                Unparseable {
                    start: s2,
                    end: e2,
                    output: o2,
                },
            ) => (s1, e1, o1) == (s2, e2, o2),
            (
                NoRanking {
                    windows: w1,
                    first: f1,
                },
                NoRanking {
                    windows: w2,
                    first: f2,
                },
            ) => w1 == w2 && f1 == f2,
            (Cancelled, Cancelled) => true,
            (InvalidOutput(a), InvalidOutput(b)) => a == b,
            (Panicked(a), Panicked(b)) => a == b,
            _ => false,
        }
    }
}

impl Serialize for StageFailure {
    /// `{"kind": "deadline", "message": "the deadline passed after 12 ms"}`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("StageFailure", 2)?;
        st.serialize_field("kind", self.kind())?;
        st.serialize_field("message", &self.to_string())?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_failure() {
        let d = Duration::from_millis(7);
        let f = StageFailure::from_error(
            Error::DeadlineExceeded {
                what: "x".into(),
                elapsed_ms: 0,
            },
            d,
        );
        assert_eq!(f, StageFailure::Deadline { elapsed: d });
        assert_eq!(
            StageFailure::from_error(Error::Cancelled, d),
            StageFailure::Cancelled
        );
        let f = StageFailure::from_error(Error::EmptyInput("the query is empty".into()), d);
        assert!(matches!(
            f.model_error(),
            Some(Error::EmptyInput(m)) if m == "the query is empty"
        ));
        assert_eq!(f.kind(), "model");
        let json = serde_json::to_value(&f).map(|v| v["kind"].clone()).ok();
        assert_eq!(json, Some(serde_json::json!("model")));
    }
}
