//! Errors as HTTP responses: a status and a JSON body naming the problem (and the
//! field, where one is at fault), readable by Cohere's, Jina's and TEI's clients
//! (`message` for the first two, `error` + `error_type` for TEI).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A request that cannot be served, as the response the client gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short machine-readable kind: `malformed_json`, `invalid_field`,
    /// `too_large`, `overloaded`, `not_found`, `internal`.
    pub kind: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// The request field at fault (`query`, `documents[3]`, `top_n`), if one is.
    pub field: Option<String>,
    /// Seconds to wait before retrying (with 429 and 503).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    error: &'a str,
    error_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 400: the body is not JSON.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    /// 422: `field` is missing, of the wrong type or out of range.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message);
        e.field = Some(field.into());
        e
    }

    /// 413: the body or `field` is over a limit.
    pub fn too_large(field: Option<&str>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message);
        e.field = field.map(str::to_string);
        e
    }

    /// 429: the queue is full.
    pub fn overloaded(retry_after: u64, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message);
        e.retry_after = Some(retry_after);
        e
    }

    /// 503: the server is shutting down or a worker went away.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after = Some(1);
        e
    }

    /// 404: no such endpoint (or `/search` without an index).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500: a bug; the message says what failed, never a backtrace.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            message: &self.message,
            error: &self.message,
            error_type: self.kind,
            field: self.field.as_deref(),
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Parses a JSON body into `T`, naming the field at fault: 400 for text that is not
/// JSON, 422 for a missing, mistyped or out-of-range field.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::malformed(
            "the request body is empty: send a JSON object",
        ));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::malformed(format!(
            "the body is not UTF-8 (invalid byte at offset {}): JSON must be UTF-8",
            e.valid_up_to()
        )));
    }
    // Syntax first (cheap: nothing is kept), so that any text that is not JSON is a
    // 400 whatever its content, and only then the fields.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Err(ApiError::malformed(format!(
            "the body is not valid JSON: {e}"
        )));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::invalid("body", "the body must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let field = field_of(&path, &message);
        ApiError::invalid(field.clone(), format!("{field}: {message}"))
    })
}

/// The field a serde data error is about: the path, or for a missing field (whose
/// path is its parent) the parent plus the name serde quotes.
fn field_of(path: &str, message: &str) -> String {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(name)) => name.to_string(),
        (p, Some(name)) => format!("{p}.{name}"),
        (".", None) => "body".to_string(),
        (p, None) => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Req {
        query: String,
        documents: Vec<String>,
        top_n: Option<u32>,
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<Req>(b"{\"query\": 1, \"documents\": []}").unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.field.as_deref(), Some("query"));
        let e = parse_json::<Req>(b"{\"query\": \"q\", \"documents\": [\"a\", 5]}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("documents[1]"));
        let e = parse_json::<Req>(b"{\"documents\": []}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("query"));
        assert!(e.message.contains("missing field"), "{}", e.message);
        let e =
            parse_json::<Req>(b"{\"query\": \"q\", \"documents\": [], \"top_n\": -3}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("top_n"));
        let e = parse_json::<Req>(b"[1, 2]").unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.field.as_deref(), Some("body"));
    }

    #[test]
    fn text_that_is_not_json_is_a_400() {
        for body in [
            &b"{\"query\": "[..],
            b"not json",
            b"",
            b"{} {}",
            b"{\"query\": \"\xff\"}",
        ] {
            let e = parse_json::<Req>(body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body:?}: {e}");
            assert_eq!(e.kind, "malformed_json");
        }
    }

    #[test]
    fn the_error_body_carries_every_client_s_fields() {
        let response = ApiError::overloaded(3, "full").into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
