//! The error type of the evaluation module.

use std::path::PathBuf;

/// What can go wrong while reading qrels or runs, or while building a [`Run`](super::Run).
///
/// Parse errors name the file (or `<string>` for text parsed from memory) and the
/// 1-based line number, in the `file:line: reason` form compilers use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line of a qrels or run file is malformed (wrong number of columns, a grade
    /// that is not an integer, a score that is not a number, a duplicate document).
    #[error("{}:{line}: {reason}", path.display())]
    Parse {
        /// The file (`<string>` for text parsed from memory).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A ranked list given to [`Run::insert`](super::Run::insert) names the same
    /// document twice. trec_eval refuses such runs (`form_res_rels.c`: "duplicate docs").
    #[error("query '{query_id}': document '{doc_id}' appears more than once in the ranked list")]
    DuplicateDoc {
        /// The query.
        query_id: String,
        /// The repeated document.
        doc_id: String,
    },
    /// A ranked list given to [`Run::insert`](super::Run::insert) has a NaN score, which
    /// cannot be ordered.
    #[error("query '{query_id}': document '{doc_id}' has a NaN score")]
    NanScore {
        /// The query.
        query_id: String,
        /// The document.
        doc_id: String,
    },
}

impl EvalError {
    pub(crate) fn parse(path: impl Into<PathBuf>, line: usize, reason: impl Into<String>) -> Self {
        EvalError::Parse {
            path: path.into(),
            line,
            reason: reason.into(),
        }
    }

    /// The error of reading line `line` of `path`: a parse error for bytes that are not
    /// UTF-8, an I/O error otherwise.
    pub(crate) fn reading(path: &std::path::Path, line: usize, e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::InvalidData => {
                Self::parse(path, line, "the line is not valid UTF-8")
            }
            _ => Self::io(path, e),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
}
