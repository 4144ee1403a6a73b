//! The endpoints: request shapes in, library calls, response shapes out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dear_core::{Passage, Ranking, RerankOptions, RerankReport, Stages};
use dear_tantivy::{SearchOptions, SearchReranked};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::parse_json;
use crate::{ApiError, AppState};

/// The header a client may set instead of the `deadline_ms` field.
pub const DEADLINE_HEADER: &str = "x-dear-deadline-ms";
/// The response header that lists the stages that fell back (`stage=reason`, comma
/// separated), present only when one did.
pub const FALLBACK_HEADER: &str = "x-dear-fallback";

// ------------------------------------------------------------------ requests

/// Cohere v2 (`/v2/rerank`) and Cohere v1 / Jina / llama.cpp (`/v1/rerank`).
#[derive(Deserialize)]
struct RerankRequest {
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    query: String,
    documents: Vec<Value>,
    #[serde(default)]
    top_n: Option<i64>,
    #[serde(default)]
    max_tokens_per_doc: Option<i64>,
    #[serde(default)]
    return_documents: Option<bool>,
    #[serde(default)]
    stages: Option<Value>,
    #[serde(default)]
    deadline_ms: Option<Value>,
}

/// TEI (`/rerank`).
#[derive(Deserialize)]
struct TeiRequest {
    query: String,
    texts: Vec<Value>,
    #[serde(default)]
    raw_scores: Option<bool>,
    #[serde(default)]
    return_text: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    truncate: Option<bool>,
    #[serde(default)]
    stages: Option<Value>,
    #[serde(default)]
    deadline_ms: Option<Value>,
}

/// `/search`.
#[derive(Deserialize)]
struct SearchRequest {
    query: String,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    snippets: Option<i64>,
    #[serde(default)]
    stages: Option<Value>,
    #[serde(default)]
    deadline_ms: Option<Value>,
}

/// One validated reranking call.
struct Call {
    query: String,
    documents: Vec<Passage>,
    options: RerankOptions,
}

// ------------------------------------------------------------------ responses

#[derive(Serialize)]
struct V2Result {
    index: usize,
    relevance_score: f32,
}

#[derive(Serialize)]
struct V1Result {
    index: usize,
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<DocumentText>,
}

#[derive(Serialize)]
struct DocumentText {
    text: String,
}

#[derive(Serialize)]
struct TeiResult {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// What dear adds to the object-shaped responses: the stage report, and the stages
/// that fell back.
#[derive(Serialize)]
struct DearMeta<'a> {
    stages: &'a RerankReport,
    fallbacks: Vec<Fallback>,
}

#[derive(Serialize)]
struct Fallback {
    stage: &'static str,
    reason: &'static str,
    message: String,
}

impl<'a> DearMeta<'a> {
    fn of(report: &'a RerankReport) -> Self {
        Self {
            stages: report,
            fallbacks: fallbacks(report),
        }
    }
}

fn fallbacks(report: &RerankReport) -> Vec<Fallback> {
    report
        .failures()
        .map(|(stage, f)| Fallback {
            stage: stage.name(),
            reason: f.kind(),
            message: f.to_string(),
        })
        .collect()
}

/// The JSON `value` with the fallback header when a stage fell back.
fn respond(value: &impl Serialize, report: &RerankReport) -> Response {
    let mut response = Json(value).into_response();
    let header: Vec<String> = report
        .failures()
        .map(|(stage, f)| format!("{}={}", stage.name(), f.kind()))
        .collect();
    if !header.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&header.join(",")) {
            response.headers_mut().insert(FALLBACK_HEADER, v);
        }
    }
    response
}

fn input_tokens(report: &RerankReport) -> usize {
    report.stages.iter().map(|s| s.tokens).sum()
}

// ------------------------------------------------------------------ validation

fn int_in(field: &str, v: Option<i64>, min: i64, max: i64) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(n) if n < min || n > max => Err(ApiError::invalid(
            field,
            format!("{field} must be between {min} and {max}, not {n}"),
        )),
        Some(n) => Ok(Some(n as usize)),
    }
}

/// A document: a string, or an object with a `text` string (and an optional
/// `title` string), as Cohere v1 and Jina accept.
fn document(field: &str, v: &Value) -> Result<Passage, ApiError> {
    let (text, title) = match v {
        Value::String(s) => (s.as_str(), None),
        Value::Object(map) => {
            let text = match map.get("text") {
                Some(Value::String(s)) => s.as_str(),
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!("{field}.text"),
                        format!("{field}.text must be a string"),
                    ))
                }
                None => {
                    return Err(ApiError::invalid(
                        format!("{field}.text"),
                        format!("{field} is an object without a \"text\" string"),
                    ))
                }
            };
            let title = match map.get("title") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!("{field}.title"),
                        format!("{field}.title must be a string"),
                    ))
                }
            };
            (text, title)
        }
        other => {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{field} must be a string or an object with a \"text\" string, not {}",
                    kind_of(other)
                ),
            ))
        }
    };
    if text.trim().is_empty() && title.is_none_or(|t| t.trim().is_empty()) {
        return Err(ApiError::invalid(field, format!("{field} is empty")));
    }
    let mut p = Passage::new(text);
    if let Some(t) = title.filter(|t| !t.trim().is_empty()) {
        p = p.with_title(t);
    }
    Ok(p)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `stages`: `"pointwise,listwise"` or `["pointwise", "listwise"]`.
fn stages(v: Option<&Value>, default: Stages) -> Result<Stages, ApiError> {
    let text = match v {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            let mut parts = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => parts.push(s.as_str()),
                    other => {
                        return Err(ApiError::invalid(
                            format!("stages[{i}]"),
                            format!("stages[{i}] must be a string, not {}", kind_of(other)),
                        ))
                    }
                }
            }
            parts.join(",")
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "stages",
                format!(
                    "stages must be a string or an array of strings, not {}",
                    kind_of(other)
                ),
            ))
        }
    };
    text.parse()
        .map_err(|e: dear_core::Error| ApiError::invalid("stages", e.to_string()))
}

/// The request's deadline: the `deadline_ms` field, else the header, else the
/// server's default; at most the server's maximum.
fn deadline(
    state: &AppState,
    field: Option<&Value>,
    headers: &HeaderMap,
) -> Result<Option<Duration>, ApiError> {
    let max_ms = state.config.max_deadline.as_millis() as f64;
    let check = |name: &str, ms: f64| {
        if ms.is_finite() && ms > 0.0 && ms <= max_ms {
            Ok(Some(Duration::from_secs_f64(ms / 1000.0)))
        } else {
            Err(ApiError::invalid(
                name,
                format!("{name} must be a number of milliseconds in (0, {max_ms}], not {ms}"),
            ))
        }
    };
    match field {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => return check("deadline_ms", n.as_f64().unwrap_or(f64::NAN)),
        Some(other) => {
            return Err(ApiError::invalid(
                "deadline_ms",
                format!("deadline_ms must be a number, not {}", kind_of(other)),
            ))
        }
    }
    if let Some(h) = headers.get(DEADLINE_HEADER) {
        let ms = h
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .ok_or_else(|| {
                ApiError::invalid(
                    DEADLINE_HEADER,
                    format!("the {DEADLINE_HEADER} header must be a number of milliseconds"),
                )
            })?;
        return check(DEADLINE_HEADER, ms);
    }
    Ok(state.config.default_deadline)
}

fn query(field: &str, q: String, state: &AppState) -> Result<String, ApiError> {
    if q.trim().is_empty() {
        return Err(ApiError::invalid(field, format!("{field} is empty")));
    }
    if q.len() > state.config.max_query_bytes {
        return Err(ApiError::too_large(
            Some(field),
            format!(
                "{field} has {} bytes; at most {} are accepted",
                q.len(),
                state.config.max_query_bytes
            ),
        ));
    }
    Ok(q)
}

fn documents(field: &str, items: &[Value], state: &AppState) -> Result<Vec<Passage>, ApiError> {
    if items.is_empty() {
        return Err(ApiError::invalid(field, format!("{field} is empty")));
    }
    if items.len() > state.config.max_documents {
        return Err(ApiError::too_large(
            Some(field),
            format!(
                "{field} has {} documents; at most {} are accepted per request",
                items.len(),
                state.config.max_documents
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| document(&format!("{field}[{i}]"), v))
        .collect()
}

fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(None, "the request body is over the server's limit")
        } else {
            ApiError::malformed(format!("cannot read the request body: {rejection}"))
        }
    })
}

/// The server's base options with the request's stages (or `default`), its start and
/// its deadline (field, header or the server's default).
fn request_options(
    state: &AppState,
    stages_field: Option<&Value>,
    default: Stages,
    deadline_field: Option<&Value>,
    headers: &HeaderMap,
    received: Instant,
) -> Result<RerankOptions, ApiError> {
    let mut options = state
        .config
        .options
        .clone()
        .with_stages(stages(stages_field, default)?)
        .with_started_at(received);
    if let Some(d) = deadline(state, deadline_field, headers)? {
        options = options.with_timeout(d);
    }
    Ok(options)
}

impl RerankRequest {
    fn call(
        self,
        state: &AppState,
        headers: &HeaderMap,
        received: Instant,
    ) -> Result<Call, ApiError> {
        let query = query("query", self.query, state)?;
        let documents = documents("documents", &self.documents, state)?;
        let mut options = request_options(
            state,
            self.stages.as_ref(),
            state.rerank_stages(),
            self.deadline_ms.as_ref(),
            headers,
            received,
        )?
        .with_return_documents(self.return_documents.unwrap_or(false));
        if let Some(n) = int_in("top_n", self.top_n, 1, i64::MAX)? {
            options = options.with_top_n(n);
        }
        if let Some(n) = int_in("max_tokens_per_doc", self.max_tokens_per_doc, 1, 1 << 20)? {
            options = options.with_max_passage_tokens(n);
        }
        Ok(Call {
            query,
            documents,
            options,
        })
    }
}

// ------------------------------------------------------------------ running

/// Runs `work` on a worker thread once admitted, and records its metrics.
async fn run<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let ticket = state.admission.admit()?;
    let slot = state.admission.slot(&ticket).await?;
    let shared = state.clone();
    let started = Instant::now();
    let joined = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let _ticket = ticket;
        work(&shared)
    })
    .await;
    state.admission.record_service(started.elapsed());
    match joined {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("a request's worker failed: {e}");
            Err(ApiError::internal(
                "the request's worker failed; the server is still up",
            ))
        }
    }
}

async fn rank(state: &Arc<AppState>, call: Call) -> Result<Ranking, ApiError> {
    let ranking = run(state, move |s| {
        s.reranker
            .rank(&call.query, call.documents, &call.options)
            .map_err(|e| ApiError::invalid("body", e.to_string()))
    })
    .await?;
    state.metrics.report(&ranking.report);
    Ok(ranking)
}

/// The Cohere / Jina request in `raw`, validated and ranked.
async fn rerank_request(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
    received: Instant,
) -> Result<Ranking, ApiError> {
    let req: RerankRequest = parse_json(&body(raw)?)?;
    let call = req.call(state, headers, received)?;
    rank(state, call).await
}

/// Counts the response under `endpoint`.
fn finish(
    state: &AppState,
    endpoint: &str,
    received: Instant,
    r: Result<Response, ApiError>,
) -> Response {
    let response = r.unwrap_or_else(|e| {
        if e.status.is_server_error() {
            tracing::warn!("{endpoint}: {e}");
        }
        e.into_response()
    });
    state
        .metrics
        .request(endpoint, response.status().as_u16(), received.elapsed());
    response
}

// ------------------------------------------------------------------ handlers

pub(crate) async fn v2_rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    let result = async {
        let ranking = rerank_request(&state, &headers, raw, received).await?;
        let value = serde_json::json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "results": ranking.results.iter().map(|r| V2Result {
                index: r.index,
                relevance_score: r.relevance_score,
            }).collect::<Vec<_>>(),
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"search_units": 1},
                "tokens": {"input_tokens": input_tokens(&ranking.report), "output_tokens": 0},
            },
            "dear": DearMeta::of(&ranking.report),
        });
        Ok(respond(&value, &ranking.report))
    }
    .await;
    finish(&state, "/v2/rerank", received, result)
}

pub(crate) async fn v1_rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    let result = async {
        let ranking = rerank_request(&state, &headers, raw, received).await?;
        let tokens = input_tokens(&ranking.report);
        let value = serde_json::json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "model": state.info.model,
            "object": "list",
            "results": ranking.results.iter().map(|r| V1Result {
                index: r.index,
                relevance_score: r.relevance_score,
                document: r.document.as_ref().map(|p| DocumentText { text: p.text.clone() }),
            }).collect::<Vec<_>>(),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "meta": {
                "api_version": {"version": "1"},
                "billed_units": {"search_units": 1},
            },
            "dear": DearMeta::of(&ranking.report),
        });
        Ok(respond(&value, &ranking.report))
    }
    .await;
    finish(&state, "/v1/rerank", received, result)
}

pub(crate) async fn tei_rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    let result = async {
        let req: TeiRequest = parse_json(&body(raw)?)?;
        let query = query("query", req.query, &state)?;
        let documents = documents("texts", &req.texts, &state)?;
        let options = request_options(
            &state,
            req.stages.as_ref(),
            state.rerank_stages(),
            req.deadline_ms.as_ref(),
            &headers,
            received,
        )?
        .with_return_documents(req.return_text.unwrap_or(false));
        let raw_scores = req.raw_scores.unwrap_or(false);
        let ranking = rank(
            &state,
            Call {
                query,
                documents,
                options,
            },
        )
        .await?;
        let results: Vec<TeiResult> = ranking
            .results
            .iter()
            .map(|r| TeiResult {
                index: r.index,
                score: if raw_scores {
                    r.score
                } else {
                    r.relevance_score
                },
                text: r.document.as_ref().map(|p| p.text.clone()),
            })
            .collect();
        Ok(respond(&results, &ranking.report))
    }
    .await;
    finish(&state, "/rerank", received, result)
}

pub(crate) async fn search(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    let result = async {
        if state.index.is_none() {
            return Err(ApiError::not_found(
                "/search needs an index: start the server with --index DIR",
            ));
        }
        let req: SearchRequest = parse_json(&body(raw)?)?;
        let text = query("query", req.query, &state)?;
        let top_k = int_in("top_k", req.top_k, 1, state.config.max_documents as i64)?.unwrap_or(10);
        let offset =
            int_in("offset", req.offset, 0, state.config.max_documents as i64)?.unwrap_or(0);
        let rerank = request_options(
            &state,
            req.stages.as_ref(),
            state.config.options.stages(),
            req.deadline_ms.as_ref(),
            &headers,
            received,
        )?;
        let mut options = SearchOptions::new(top_k)
            .and_offset(offset)
            .with_rerank(rerank);
        if let Some(n) = int_in("snippets", req.snippets, 1, 100_000)? {
            options = options.with_snippets(n);
        }
        options
            .validate()
            .map_err(|e| ApiError::invalid("body", e.to_string()))?;
        let results = run(&state, move |s| {
            let Some(index) = s.index.as_ref() else {
                return Err(ApiError::not_found("no index"));
            };
            let query = index
                .query(&text)
                .map_err(|e| ApiError::invalid("query", e.to_string()))?;
            index
                .searcher()
                .search_reranked(&query, &s.reranker, &options)
                .map_err(|e| ApiError::internal(format!("the search failed: {e}")))
        })
        .await?;
        state.metrics.report(&results.report);
        Ok(respond(&results, &results.report))
    }
    .await;
    finish(&state, "/search", received, result)
}

pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Response {
    let response = Json(serde_json::json!({"status": "ok"})).into_response();
    state.metrics.request("/health", 200, Duration::ZERO);
    response
}

pub(crate) async fn info(State(state): State<Arc<AppState>>) -> Response {
    let c = &state.config;
    let value = serde_json::json!({
        "name": "dear",
        "version": env!("CARGO_PKG_VERSION"),
        "model": state.info.model,
        "pointwise_adapter": state.info.pointwise_adapter,
        "listwise_adapter": state.info.listwise_adapter,
        "fusion": state.reranker.fusion().to_string(),
        "stages": {
            "configured": {
                "pointwise": state.reranker.pointwise().is_some(),
                "listwise": state.reranker.listwise().is_some(),
            },
            "rerank_default": state.rerank_stages().to_string(),
            "search_default": c.options.stages().to_string(),
        },
        "index": state.index.as_ref().map(|i| serde_json::json!({"documents": i.num_docs()})),
        "limits": {
            "max_body_bytes": c.max_body_bytes,
            "max_documents": c.max_documents,
            "max_query_bytes": c.max_query_bytes,
            "workers": c.workers,
            "queue": c.queue,
            "default_deadline_ms": c.default_deadline.map(|d| d.as_millis() as u64),
            "max_deadline_ms": c.max_deadline.as_millis() as u64,
        },
        "endpoints": ["/v2/rerank", "/v1/rerank", "/rerank", "/search", "/health", "/info", "/metrics"],
    });
    state.metrics.request("/info", 200, Duration::ZERO);
    Json(value).into_response()
}

pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.request("/metrics", 200, Duration::ZERO);
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => ApiError::internal("cannot encode the metrics").into_response(),
    }
}

pub(crate) async fn not_found(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
) -> Response {
    state.metrics.request("other", 404, Duration::ZERO);
    ApiError::not_found(format!(
        "no endpoint at {}: see GET /info for the endpoints",
        uri.path()
    ))
    .into_response()
}
