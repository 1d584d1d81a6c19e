//! Operations endpoints: health, readiness, statistics, metrics, backup and
//! restore.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::schema::BackupDocument;
use crate::backup;
use crate::service::{RestoreSummary, Stats};

/// Health or readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` with `reason`.
    pub status: &'static str,
    /// Why the host is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Readiness: each backend, `ok` or `unavailable`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub backends: std::collections::BTreeMap<&'static str, &'static str>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        reason: None,
        backends: std::collections::BTreeMap::new(),
    })
}

/// Readiness: the queue, storage and blob backends answer.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "A backend is unreachable", body = Health),
    ))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let mut backends = std::collections::BTreeMap::new();
    let mut down = Vec::new();
    for (name, outcome) in state.service.readiness().await {
        let status = match outcome {
            Ok(()) => "ok",
            Err(reason) => {
                tracing::warn!(backend = name, %reason, "not ready");
                down.push(name);
                "unavailable"
            }
        };
        backends.insert(name, status);
    }
    if down.is_empty() {
        return (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                reason: None,
                backends,
            }),
        );
    }
    let reason = format!("unreachable: {}", down.join(", "));
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health {
            status: "unavailable",
            reason: Some(reason),
            backends,
        }),
    )
}

/// Queue depth per priority, running tasks, counts per status, workers,
/// plugins with versions, uptime.
#[utoipa::path(get, path = "/stats", tag = "operations",
    responses((status = 200, description = "Statistics", body = Stats)),
    security(("api_token" = []), ("admin_token" = [])))]
pub async fn stats(State(state): State<AppState>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(state.service.stats().await?))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text format", body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = state.service.render_metrics().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

/// Every task as one backup document (the format of backup files).
#[utoipa::path(get, path = "/admin/backup", tag = "operations",
    responses((status = 200, description = "Backup document", body = BackupDocument, content_type = "application/json")),
    security(("admin_token" = [])))]
pub async fn export_backup(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let tasks = state.service.export().await?;
    let bytes = backup::encode_backup(&tasks, Utc::now()).map_err(|e| ApiError::internal(&e))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes))
}

/// Restore tasks from a backup document: each task is saved (replacing one
/// with the same id) and pending ones are queued.
#[utoipa::path(post, path = "/admin/restore", tag = "operations",
    request_body(content = BackupDocument, content_type = "application/json", description = "A backup document"),
    responses(
        (status = 200, description = "Restored", body = RestoreSummary),
        (status = 400, description = "The upload could not be read", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 422, description = "Not a valid backup", body = ErrorBody),
    ),
    security(("admin_token" = [])))]
pub async fn restore(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RestoreSummary>, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the backup is too large to upload",
        ),
        _ => ApiError::bad_request("the backup upload could not be read"),
    })?;
    // `16.0` is an integer to the schema (JSON Schema), not to serde: retry
    // with such numbers written as integers.
    let tasks = backup::parse_backup(&body)
        .or_else(|reason| {
            super::schema::backup_with_integers(&body)
                .map_or(Err(reason), |fixed| backup::parse_backup(&fixed))
        })
        .map_err(|reason| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_backup",
                format!("not a valid backup: {reason}"),
            )
        })?;
    Ok(Json(state.service.restore(tasks).await?))
}
