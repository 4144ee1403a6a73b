//! The one error type of dear-tantivy.

use std::path::PathBuf;

/// Everything that can go wrong in dear-tantivy.
///
/// Failures of a reranking *stage* are not errors: they are reported in the
/// [`RerankReport`](dear_core::RerankReport) and the previous order is kept. Errors are
/// what prevents the first stage itself (a bad schema, a broken index, a query that
/// does not parse).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the tantivy index.
    #[error("tantivy: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    /// The query text does not parse.
    #[error("the query does not parse: {0}")]
    QueryParser(#[from] tantivy::query::QueryParserError),
    /// An error of the model runtime.
    #[error(transparent)]
    Model(#[from] dear_core::Error),
    /// A field named in [`PassageFields`](crate::PassageFields) is not in the schema.
    #[error("the field does not exist in the schema: '{0}'")]
    FieldNotFound(String),
    /// A field exists but cannot serve as what it was asked to be.
    #[error("the field '{field}' cannot be used: {reason}")]
    FieldType {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The index is damaged (checksums that do not match, documents that do not
    /// decode); nothing is written on top of it.
    #[error("the index is damaged: {0} (rebuild it with `dear index` into an empty folder)")]
    Corrupt(String),
    /// tantivy panicked under a call (a damaged index can make its readers panic); the
    /// panic was caught.
    #[error("the index reader panicked (is the index damaged? `dear index --check`): {0}")]
    Panicked(String),
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}
