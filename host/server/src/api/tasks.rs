//! `/tasks`: submit, read, list, cancel and retry; a task's plugin logs.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use taskflow_backend::storage::{Cursor, ListQuery, StorageError, TaskPage};
use taskflow_model::FailureKind;
pub use taskflow_model::api::{BatchRequest, BatchResponse, TaskLogs};
use taskflow_model::task::{
    IDEMPOTENCY_KEY_LIMIT, MAX_HOST_CHARS, NewTask, Task, TaskId, TaskStatus, is_idempotency_key,
};

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::service::{ServiceError, TaskView};

/// Most tasks one batch may hold.
pub const MAX_BATCH: usize = 1000;
/// Page size when the client names none, and the largest allowed. A page
/// carries whole tasks (payload and result up to 1 MiB each), so it is kept
/// small enough to hold in memory.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// Submit a task.
///
/// Answers 202 with the task and a `Location` to poll; 200 with the earlier
/// task when `idempotency_key` was used before.
#[utoipa::path(post, path = "/tasks", tag = "tasks", request_body = NewTask,
    responses(
        (status = 202, description = "Task accepted", body = Task, headers(("Location" = String, description = "URL of the task"))),
        (status = 200, description = "A task with this idempotency key exists", body = Task),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid field or unknown plugin", body = ErrorBody),
    ),
    security(("api_token" = []), ("admin_token" = []))
)]
pub async fn submit(
    State(state): State<AppState>,
    ApiJson(new): ApiJson<NewTask>,
) -> Result<Response, ApiError> {
    let submitted = state.service.submit(new).await?;
    let status = if submitted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(with_location(status, &submitted.task))
}

fn with_location(status: StatusCode, task: &Task) -> Response {
    let mut response = (status, Json(task)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/tasks/{}", task.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Submit up to 1000 tasks at once.
///
/// Every task is checked before any is accepted: one bad task rejects the
/// batch (the message names its index) and nothing is written.
#[utoipa::path(post, path = "/tasks/batch", tag = "tasks", request_body = BatchRequest,
    responses(
        (status = 202, description = "All tasks accepted", body = BatchResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A task is invalid", body = ErrorBody),
    ),
    security(("api_token" = []), ("admin_token" = []))
)]
pub async fn submit_batch(
    State(state): State<AppState>,
    ApiJson(batch): ApiJson<BatchRequest>,
) -> Result<(StatusCode, Json<BatchResponse>), ApiError> {
    if batch.tasks.is_empty() || batch.tasks.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!(
                "a batch holds 1 to {MAX_BATCH} tasks, got {}",
                batch.tasks.len()
            ),
        ));
    }
    let accepted = state
        .service
        .submit_batch(batch.tasks)
        .await
        .map_err(|(index, error)| {
            let error = ApiError::from(error);
            ApiError::new(
                error.status(),
                error.code(),
                format!("task {index}: {}", error.message()),
            )
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchResponse {
            tasks: accepted.into_iter().map(|s| s.task).collect(),
        }),
    ))
}

/// A task id in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdPath {
    /// Task id (a UUID).
    #[param(format = Uuid, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub id: String,
}

fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    id.parse()
        .map_err(|e: taskflow_model::task::InvalidTaskId| ApiError::bad_request(e.to_string()))
}

/// Read a task: status, attempts, result or last error.
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(IdPath),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 400, description = "Not a task id", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
    ),
    security(("api_token" = []), ("admin_token" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(state.service.get(parse_id(&id)?).await?))
}

/// Cancel a task: a pending task is cancelled at once, a running one is
/// interrupted.
#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "tasks", params(IdPath),
    responses(
        (status = 200, description = "Cancelled (or cancelling, if it was running)", body = TaskView),
        (status = 400, description = "Not a task id", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task already finished", body = ErrorBody),
    ),
    security(("api_token" = []), ("admin_token" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(state.service.cancel(parse_id(&id)?).await?))
}

/// Retry a failed or cancelled task: one more attempt with the same
/// payload (`max_attempts` is raised to allow it), its earlier attempts kept
/// in its history.
#[utoipa::path(post, path = "/tasks/{id}/retry", tag = "tasks", params(IdPath),
    responses(
        (status = 200, description = "Queued again", body = TaskView),
        (status = 400, description = "Not a task id", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is not failed or cancelled, or has had 100 attempts", body = ErrorBody),
    ),
    security(("api_token" = []), ("admin_token" = []))
)]
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(state.service.retry(parse_id(&id)?).await?))
}

/// What the task's plugin logged and wrote to stdout and stderr, attempt by
/// attempt (the latest 20 attempts). A running attempt shows the newest 200
/// lines of the `log` import so far, after `logs_skipped` earlier ones (its
/// stdout and stderr come when it ends, the earlier lines in its whole log).
/// An attempt keeps up to 200 lines and 32 KiB in the task's record; a longer
/// log is kept whole (up to 10,000 lines and 1 MiB) in the blob store (S3,
/// else the PostgreSQL blob table, else the data directory), and comes back
/// whole here.
/// `logs_dropped` counts the lines left out.
#[utoipa::path(get, path = "/tasks/{id}/logs", tag = "tasks", params(IdPath),
    responses(
        (status = 200, description = "The task's attempts with their log lines", body = TaskLogs),
        (status = 400, description = "Not a task id", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
    ),
    security(("api_token" = []), ("admin_token" = []))
)]
pub async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskLogs>, ApiError> {
    Ok(Json(state.service.logs(parse_id(&id)?).await?))
}

/// Filters and page of `GET /tasks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks of this plugin.
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub plugin: Option<String>,
    /// Only tasks of this priority.
    #[param(minimum = 1, maximum = 10)]
    pub priority: Option<u8>,
    /// Only tasks whose latest attempt ran, or runs, on this host (its
    /// `TASKFLOW_HOST_ID`).
    #[param(min_length = 1, max_length = 200)]
    pub host: Option<String>,
    /// Only tasks whose latest attempt failed this way.
    pub error_kind: Option<FailureKind>,
    /// Only tasks submitted at or after this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    pub submitted_after: Option<String>,
    /// Only tasks submitted before this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    pub submitted_before: Option<String>,
    /// Only the task submitted with this idempotency key.
    #[param(min_length = 1, max_length = 256, pattern = r"^[\x20-\x7E]{1,256}$")]
    pub idempotency_key: Option<String>,
    /// Tasks per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// `next_cursor` from the previous page: `<sequence>_<task id>`, the
    /// sequence a decimal `u64` (the pattern spells 0 to 18446744073709551615).
    #[param(
        pattern = r"^(?:0|[1-9][0-9]{0,18}|1(?:[0-7][0-9]{18}|8(?:[0-3][0-9]{17}|4(?:[0-3][0-9]{16}|4(?:[0-5][0-9]{15}|6(?:[0-6][0-9]{14}|7(?:[0-3][0-9]{13}|4(?:[0-3][0-9]{12}|40(?:[0-6][0-9]{10}|7(?:[0-2][0-9]{9}|3(?:[0-6][0-9]{8}|70(?:[0-8][0-9]{6}|9(?:[0-4][0-9]{5}|5(?:[0-4][0-9]{4}|5(?:0[0-9]{3}|1(?:[0-5][0-9]{2}|6(?:0[0-9]{1}|1[0-5])))))))))))))))))_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    )]
    pub cursor: Option<String>,
}

/// A time filter of the list, read as serde reads a `DateTime<Utc>`, with
/// a refusal that says what to write.
fn time_param(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|text| {
            text.parse::<DateTime<Utc>>().map_err(|_| {
                ApiError::bad_request(format!(
                    "{name} must be an RFC 3339 time, e.g. 2026-12-03T14:30:00Z"
                ))
            })
        })
        .transpose()
}

/// List tasks in submission order, filtered, a page at a time.
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(ListParams),
    responses(
        (status = 200, description = "A page of tasks", body = TaskPage),
        (status = 400, description = "Bad filter, limit or cursor", body = ErrorBody),
    ),
    security(("api_token" = []), ("admin_token" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<TaskPage>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}, got {limit}"
        )));
    }
    if let Some(plugin) = &params.plugin {
        taskflow_runtime::plugin::validate_name(plugin)?;
    }
    if let Some(priority) = params.priority
        && !(1..=10).contains(&priority)
    {
        return Err(ApiError::bad_request(format!(
            "priority must be 1 (highest) to 10, got {priority}"
        )));
    }
    if let Some(host) = &params.host
        && !(1..=MAX_HOST_CHARS).contains(&host.chars().count())
    {
        return Err(ApiError::bad_request(format!(
            "host must be a host id of 1 to {MAX_HOST_CHARS} characters"
        )));
    }
    if let Some(key) = &params.idempotency_key
        && !is_idempotency_key(key)
    {
        return Err(ApiError::bad_request(format!(
            "idempotency_key must be 1 to {IDEMPOTENCY_KEY_LIMIT} printable ASCII characters (space to `~`)"
        )));
    }
    let submitted_after = time_param("submitted_after", params.submitted_after.as_deref())?;
    let submitted_before = time_param("submitted_before", params.submitted_before.as_deref())?;
    // Only cursors as the host writes them (no sign, leading zeros or upper
    // case): what the schema's pattern describes.
    if let Some(cursor) = &params.cursor
        && Cursor::decode(cursor).map(|c| c.encode()).ok().as_deref() != Some(cursor.as_str())
    {
        return Err(ServiceError::from(StorageError::InvalidCursor(
            cursor.chars().take(100).collect(),
        ))
        .into());
    }
    let query = ListQuery {
        status: params.status,
        plugin: params.plugin,
        priority: params.priority,
        host: params.host,
        error_kind: params.error_kind,
        submitted_after,
        submitted_before,
        idempotency_key: params.idempotency_key,
        limit,
        cursor: params.cursor,
    };
    state
        .service
        .list(&query)
        .await
        .map(Json)
        .map_err(|e: ServiceError| e.into())
}
