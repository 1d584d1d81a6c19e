//! Request spans and logs (for tower-http's trace layer), request metrics,
//! and bearer-token auth.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use taskflow_http::REQUEST_ID;

use super::AppState;
use super::error::ApiError;

/// The span of a request: its id (set by tower-http's `SetRequestId`
/// before this runs), method and path, so every log line of the request
/// carries them.
pub fn request_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        request_id,
        method = %request.method(),
        path = request.uri().path(),
    )
}

/// Logs a response inside its request's span: server errors as errors,
/// the rest at debug.
pub fn log_response(response: &Response, latency: Duration, _span: &tracing::Span) {
    let status = response.status();
    let duration_ms = latency.as_secs_f64() * 1000.0;
    if status.is_server_error() {
        tracing::error!(status = status.as_u16(), duration_ms, "request failed");
    } else {
        tracing::debug!(status = status.as_u16(), duration_ms, "request served");
    }
}

/// Counts the request in `/metrics` by method, route and status.
pub async fn count_request(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    // Only standard methods become labels: arbitrary ones would grow the
    // metric set without bound.
    let method_label = match method.as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS") => m,
        _ => "OTHER",
    };
    state
        .service
        .metrics()
        .record_request(method_label, &route, response.status().as_u16());
    response
}

/// Requires the API token (or the admin token) when one is configured.
pub async fn require_api_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let tokens = [
        state.auth.api_token.as_deref(),
        state.auth.admin_token.as_deref(),
    ];
    if state.auth.api_token.is_none()
        || presented(&request).is_some_and(|t| {
            tokens
                .into_iter()
                .flatten()
                .any(|k| taskflow_http::tokens_match(t, k))
        })
    {
        return next.run(request).await;
    }
    unauthorized("this endpoint needs `Authorization: Bearer <TASKFLOW_API_TOKEN>`")
}

/// Requires the admin token for plugin and backup administration when one is
/// configured (otherwise the API token, if that is configured).
pub async fn require_admin_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let required = state
        .auth
        .admin_token
        .as_deref()
        .or(state.auth.api_token.as_deref());
    match required {
        None => next.run(request).await,
        Some(token)
            if presented(&request).is_some_and(|t| taskflow_http::tokens_match(t, token)) =>
        {
            next.run(request).await
        }
        Some(_) => {
            unauthorized("this endpoint needs `Authorization: Bearer <TASKFLOW_ADMIN_TOKEN>`")
        }
    }
}

fn presented(request: &Request) -> Option<&str> {
    bearer_token(
        request
            .headers()
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?,
    )
}

/// The token of an `Authorization` value in the `Bearer` scheme, else `None`.
///
/// `credentials = auth-scheme [ 1*SP token68 ]` (RFC 7235 §2.1, RFC 6750
/// §2.1): the scheme is matched case-insensitively (`bearer`, `BEARER`, …)
/// and any number of spaces may separate it from the token. Other schemes
/// (`Basic`, …) and a scheme without a token give `None`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_matches([' ', '\t']).split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares in time independent of where the strings differ.
fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_other_schemes_are_refused() {
        for value in [
            "Bearer secret-token-123",
            "bearer secret-token-123",
            "BEARER secret-token-123",
            "bEaReR secret-token-123",
            "Bearer    secret-token-123",
            " Bearer secret-token-123 ",
        ] {
            assert_eq!(bearer_token(value), Some("secret-token-123"), "{value:?}");
        }
        for value in [
            "Basic c2VjcmV0LXRva2VuLTEyMw==",
            "Basic secret-token-123",
            "Token secret-token-123",
            "Bearersecret-token-123",
            "Bearer",
            "Bearer ",
            "Bearer\tsecret-token-123",
            "secret-token-123",
            "",
        ] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
