//! dear's reranking pipeline as an HTTP service, in the shapes other stacks already
//! call: Cohere v2 (`POST /v2/rerank`), Cohere v1 / Jina / llama.cpp-server
//! (`POST /v1/rerank`), Hugging Face TEI (`POST /rerank`), a reranked search over a
//! tantivy index (`POST /search`), and `GET /health`, `/info`, `/metrics`
//! (Prometheus).
//!
//! The server is a thin layer over [`dear_core::Reranker`]: every request runs the
//! library pipeline on a worker thread, so concurrent requests share the pointwise
//! scheduler's batches. At most [`ServeConfig::workers`] requests run at once and
//! [`ServeConfig::queue`] more wait; beyond that a request gets 429 with
//! `Retry-After`. Per request, the stages to run (`stages`: pointwise only by default
//! for the rerank endpoints) and a deadline (`deadline_ms`, or the
//! `x-dear-deadline-ms` header) can be given; a stage that fails or runs late keeps
//! the order before it, and the response says so (`dear.fallbacks`, and the
//! `x-dear-fallback` header).
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use dear_core::DearSetup;
//! use dear_serve::{ServeConfig, Server};
//!
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! let reranker = Arc::new(DearSetup::default_model().build()?);
//! let server = Server::new(reranker, ServeConfig::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener, dear_serve::shutdown_signal()).await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admission;
mod api;
mod error;
mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use dear_core::{RerankOptions, Reranker, Stages};
use dear_tantivy::PassageIndex;

pub use crate::api::{DEADLINE_HEADER, FALLBACK_HEADER};
pub use crate::error::ApiError;

use crate::admission::Admission;
use crate::metrics::Metrics;

/// The server's limits and defaults.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The base options of every request (candidates, listwise depth and windows,
    /// fusion, chunking, passage caps); a request may choose its stages, `top_n`,
    /// a token cap per document and a deadline. Its stages are `/search`'s default;
    /// the rerank endpoints run the pointwise stage alone unless asked.
    pub options: RerankOptions,
    /// Largest request body, in bytes (413 beyond). Default 8 MiB.
    pub max_body_bytes: usize,
    /// Most documents in one rerank request (413 beyond). Default 1,000.
    pub max_documents: usize,
    /// Longest query, in bytes (413 beyond). Default 16 KiB.
    pub max_query_bytes: usize,
    /// Requests that run the model at once. Default 8: more than the cores, so that
    /// concurrent requests meet in the pointwise scheduler's batches.
    pub workers: usize,
    /// Requests that may wait for a worker (429 beyond). Default 64.
    pub queue: usize,
    /// The deadline of a request that gives none. Default: none.
    pub default_deadline: Option<Duration>,
    /// The longest deadline a request may ask for. Default 10 minutes.
    pub max_deadline: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            options: RerankOptions::default(),
            max_body_bytes: 8 << 20,
            max_documents: 1000,
            max_query_bytes: 16 << 10,
            workers: 8,
            queue: 64,
            default_deadline: None,
            max_deadline: Duration::from_secs(600),
        }
    }
}

impl ServeConfig {
    /// Checks the limits: every one positive, the options valid.
    ///
    /// # Errors
    /// [`dear_core::Error::InvalidArgument`] naming the setting.
    pub fn validate(&self) -> dear_core::Result<()> {
        let bad = |what: &str| Err(dear_core::Error::InvalidArgument(what.to_string()));
        if self.max_body_bytes == 0 {
            return bad("max_body_bytes must be positive");
        }
        if self.max_documents == 0 {
            return bad("max_documents must be positive");
        }
        if self.max_query_bytes == 0 {
            return bad("max_query_bytes must be positive");
        }
        if self.workers == 0 || self.workers > 4096 {
            return bad("workers must be between 1 and 4096");
        }
        if self.queue > 1 << 20 {
            return bad("queue must be at most 1048576");
        }
        if self.max_deadline.is_zero() {
            return bad("max_deadline must be positive");
        }
        if let Some(d) = self.default_deadline {
            if d.is_zero() || d > self.max_deadline {
                return bad("default_deadline must be positive and at most max_deadline");
            }
        }
        self.options.validate()
    }
}

/// What `/info` and the v1 responses say about the model.
#[derive(Clone, Debug, Default)]
pub struct ModelInfo {
    /// The model (path or hub id).
    pub model: String,
    /// The pointwise adapter, if any.
    pub pointwise_adapter: Option<String>,
    /// The listwise adapter, if any.
    pub listwise_adapter: Option<String>,
}

pub(crate) struct AppState {
    reranker: Arc<Reranker>,
    index: Option<PassageIndex>,
    config: ServeConfig,
    info: ModelInfo,
    admission: Arc<Admission>,
    metrics: Metrics,
}

impl AppState {
    /// The rerank endpoints' default: the configured pointwise stage, no listwise.
    fn rerank_stages(&self) -> Stages {
        Stages {
            pointwise: self.config.options.stages().pointwise,
            listwise: false,
        }
    }
}

/// The HTTP server over one [`Reranker`] (and, for `/search`, one index).
pub struct Server {
    state: AppState,
}

impl Server {
    /// A server over `reranker` with `config`'s limits.
    ///
    /// # Errors
    /// [`dear_core::Error::InvalidArgument`] for a config that fails
    /// [`ServeConfig::validate`].
    pub fn new(reranker: Arc<Reranker>, config: ServeConfig) -> dear_core::Result<Self> {
        config.validate()?;
        let admission = Arc::new(Admission::new(config.workers, config.queue));
        let metrics = Metrics::new(admission.clone(), reranker.clone());
        Ok(Self {
            state: AppState {
                reranker,
                index: None,
                config,
                info: ModelInfo::default(),
                admission,
                metrics,
            },
        })
    }

    /// Adds `/search` over `index`.
    #[must_use]
    pub fn with_index(mut self, index: PassageIndex) -> Self {
        self.state.index = Some(index);
        self
    }

    /// Describes the model as `info` in `/info` and the v1 responses.
    #[must_use]
    pub fn with_info(mut self, info: ModelInfo) -> Self {
        self.state.info = info;
        self
    }

    /// The routes, for serving yourself or nesting in a larger axum app.
    pub fn into_router(self) -> Router {
        let limit = self.state.config.max_body_bytes;
        // Backstops: a client that trickles its body, and a request that outlives the
        // longest deadline by a minute (the library honours deadlines on its own).
        let body_timeout = Duration::from_secs(30);
        let request_timeout = self
            .state
            .config
            .max_deadline
            .saturating_add(Duration::from_secs(60));
        Router::new()
            .route("/v2/rerank", post(api::v2_rerank))
            .route("/v1/rerank", post(api::v1_rerank))
            .route("/rerank", post(api::tei_rerank))
            .route("/search", post(api::search))
            .route("/health", get(api::health))
            .route("/info", get(api::info))
            .route("/metrics", get(api::metrics))
            .fallback(api::not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(limit))
            .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
                body_timeout,
            ))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                request_timeout,
            ))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                |_: Box<dyn std::any::Any + Send>| {
                    ApiError::internal("the request hit a bug; the server is still up")
                        .into_response()
                },
            ))
            .with_state(Arc::new(self.state))
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting and
    /// returns once the requests in flight have been answered.
    ///
    /// # Errors
    /// I/O errors of the listener.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.into_router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> axum::response::Response {
    let mut e = ApiError::not_found(format!(
        "{method} is not allowed on {}: see GET /info for the endpoints",
        uri.path()
    ));
    e.status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    e.kind = "method_not_allowed";
    e.into_response()
}

/// Completes on SIGTERM or Ctrl-C (SIGINT): the usual signal for
/// [`Server::serve`]'s graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing the requests in flight");
}
