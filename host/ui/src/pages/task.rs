//! A task's page: its fields, payload and result, every attempt it keeps
//! with the plugin's log lines, and cancel and retry.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use base64::Engine as _;
use maud::{Markup, html};
use taskflow_model::attempt::Attempt;
use taskflow_model::task::{Task, TaskId, TaskOutput, TaskStatus};

use super::{error_page, layout};
use crate::auth::{FORM_TOKEN, Session, check_form_token, field};
use crate::port::UiError;
use crate::{PREFIX, UiState};

/// Bytes of a pretty-printed body shown on the page; the rest is a download.
const SHOWN_BYTES: usize = 64 * 1024;
/// Bytes of a binary result shown as hex.
const HEX_PREVIEW: usize = 256;

fn parse(id: &str) -> Result<TaskId, UiError> {
    id.parse()
        .map_err(|e: taskflow_model::task::InvalidTaskId| UiError::bad_request(e.to_string()))
}

async fn load(state: &UiState, id: &str) -> Result<Task, UiError> {
    Ok(state.service.task(parse(id)?).await?.task)
}

/// `GET /ui/tasks/{id}`.
pub async fn page(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let view = match parse(&id) {
        Ok(id) => state.service.task(id).await,
        Err(e) => Err(e),
    };
    let view = match view {
        Ok(view) => view,
        Err(e) => return error_page(&e),
    };
    let task = &view.task;
    let live = !task.status.is_terminal();
    let body = html! {
        h1 { "Task " code { (task.id) } }
        div.actions {
            @if matches!(task.status, TaskStatus::Pending | TaskStatus::Running) {
                form method="post" action={ (PREFIX) "/tasks/" (task.id) "/cancel" } {
                    (layout::form_token(&session))
                    button #cancel type="submit" { "Cancel" }
                }
            }
            @if matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
                form method="post" action={ (PREFIX) "/tasks/" (task.id) "/retry" } {
                    (layout::form_token(&session))
                    button #retry type="submit" { "Retry" }
                }
            }
        }
        dl.fields {
            dt { "Status" } dd #status { (layout::status(task.status))
                @if let Some(progress) = view.progress { " " progress max="100" value=(progress) { (progress) "%" } " " (progress) "%" } }
            dt { "Plugin" } dd { (task.plugin) @if let Some(d) = &task.plugin_digest { " " (layout::digest(d)) } }
            dt { "Priority" } dd { (task.priority) }
            dt { "Attempts" } dd { (task.attempts) " of " (task.max_attempts) }
            dt { "Submitted" } dd { (layout::time(task.created_at)) }
            dt { "Started" } dd { (layout::maybe_time(task.started_at)) }
            dt { "Finished" } dd { (layout::maybe_time(task.finished_at)) }
            @if let Some(at) = task.retry_at { dt { "Next attempt" } dd { (layout::time(at)) } }
            dt { "Host" } dd { (task.host.as_deref().unwrap_or("–")) }
            @if let Some(key) = &task.idempotency_key { dt { "Idempotency key" } dd { code { (key) } } }
            @if let Some(timeout) = task.timeout_ms { dt { "Timeout" } dd { (timeout) " ms" } }
        }
        @if let Some(error) = &task.last_error {
            section.error #last-error {
                h2 { "Last error" }
                p { span.kind { (error.kind) } " " span.message { (error.message) } }
            }
        }
        section #payload {
            h2 { "Payload" }
            (json_body(&task.payload, &format!("{PREFIX}/tasks/{}/payload.json", task.id)))
        }
        @if let Some(result) = &task.result {
            section #result {
                h2 { "Result" }
                @match result {
                    TaskOutput::Json(value) => (json_body(value, &format!("{PREFIX}/tasks/{}/result.json", task.id))),
                    TaskOutput::Base64(text) => (binary_body(text, &format!("{PREFIX}/tasks/{}/result.json", task.id))),
                }
            }
        }
        section #attempts {
            h2 { "Attempts" }
            @if task.history.is_empty() { p { "No attempt yet." } }
            @if (task.attempts as usize) > task.history.len() {
                p.note { "The earliest " ((task.attempts as usize) - task.history.len()) " attempts are no longer kept." }
            }
            table {
                thead { tr { th { "#" } th { "Host" } th { "Started" } th { "Ended" } th { "Duration" } th { "Outcome" } th { "Error" } th { "Plugin version" } } }
                tbody {
                    @for attempt in &task.history {
                        tr data-attempt=(attempt.number) {
                            td { (attempt.number) }
                            td { (attempt.host) }
                            td { (layout::time(attempt.started_at)) }
                            td { (layout::maybe_time(attempt.finished_at)) }
                            td { @if let Some(d) = attempt.duration() { (d.num_milliseconds()) " ms" } @else { "–" } }
                            td { span class={ "outcome outcome-" (attempt.outcome) } { (attempt.outcome) } }
                            td { @if let Some(e) = &attempt.error { span.kind { (e.kind) } " " (e.message) } }
                            td { @if let Some(d) = &attempt.plugin_digest { (layout::digest(d)) } @else { "–" } }
                        }
                    }
                }
            }
            @for attempt in task.history.iter().rev() { (logs(task.id, attempt)) }
        }
    };
    layout::page_with(&format!("Task {}", task.id), Some(&session), live, body).into_response()
}

/// An attempt's log lines, newest attempt first, each folded open; a link
/// to the whole log when the blob store keeps it.
fn logs(id: TaskId, attempt: &Attempt) -> Markup {
    let running = attempt.finished_at.is_none();
    html! {
        details.logs open data-logs=(attempt.number) {
            summary {
                "Logs of attempt " (attempt.number) " (" (attempt.logs.len()) " lines"
                @if attempt.logs_skipped > 0 {
                    ", the newest, after " (attempt.logs_skipped) " earlier"
                }
                @if attempt.logs_blob.is_some() {
                    ", " (attempt.logs_dropped) " more in the whole log"
                } @else if attempt.logs_dropped > 0 {
                    ", " (attempt.logs_dropped) " dropped"
                }
                @if running { ", so far" } ")"
            }
            @if attempt.logs_skipped > 0 {
                p.note { "The newest lines are shown while the attempt runs; its whole log keeps the earlier ones when it ends." }
            }
            @if attempt.logs_blob.is_some() {
                p.note {
                    "The first lines are shown. "
                    a href={ (PREFIX) "/tasks/" (id) "/logs.json" } download { "Download the whole log" }
                }
            }
            @if attempt.logs.is_empty() {
                p.note { @if running { "No lines yet: the plugin's log lines show as it logs them, its stdout and stderr when it ends." } @else { "The plugin logged nothing." } }
            } @else {
                table.log {
                    tbody {
                        @for line in &attempt.logs {
                            tr class={ "stream-" (line.stream.as_str()) } {
                                td { (line.at.format("%H:%M:%S%.3f")) }
                                td { (line.level.map_or(line.stream.as_str(), |l| l.as_str())) }
                                td.message { (line.message) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A JSON body, pretty-printed and foldable, cut at [`SHOWN_BYTES`] with a
/// download link for the whole.
fn json_body(value: &serde_json::Value, download: &str) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    let size = text.len();
    let mut shown = text;
    let cut = size > SHOWN_BYTES;
    if cut {
        let mut end = SHOWN_BYTES;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
    }
    html! {
        details.body open {
            summary { (size) " bytes of JSON" @if cut { ", first " (SHOWN_BYTES) " shown" } " · " a href=(download) download { "download" } }
            pre { code { (shown) } }
        }
    }
}

/// A binary body: its size and a hex preview, with a download link.
fn binary_body(base64_text: &str, download: &str) -> Markup {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_text)
        .unwrap_or_default();
    let preview: Vec<String> = bytes
        .iter()
        .take(HEX_PREVIEW)
        .map(|b| format!("{b:02x}"))
        .collect();
    html! {
        p { (bytes.len()) " bytes, not JSON · " a href=(download) download { "download" } }
        pre.hex { (preview.join(" ")) @if bytes.len() > HEX_PREVIEW { " …" } }
    }
}

fn download(name: String, body: serde_json::Value) -> Response {
    (
        [(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        )],
        Json(body),
    )
        .into_response()
}

/// `GET /ui/tasks/{id}/payload.json`: the whole payload.
pub async fn payload(State(state): State<UiState>, Path(id): Path<String>) -> Response {
    match load(&state, &id).await {
        Ok(task) => download(format!("{}-payload.json", task.id), task.payload),
        Err(e) => error_page(&e),
    }
}

/// `GET /ui/tasks/{id}/result.json`: the whole result as the API shows it.
pub async fn result(State(state): State<UiState>, Path(id): Path<String>) -> Response {
    match load(&state, &id).await {
        Ok(task) => download(
            format!("{}-result.json", task.id),
            serde_json::to_value(&task.result).unwrap_or_default(),
        ),
        Err(e) => error_page(&e),
    }
}

/// `GET /ui/tasks/{id}/logs.json`: every attempt's whole log, as the API
/// shows it.
pub async fn whole_logs(State(state): State<UiState>, Path(id): Path<String>) -> Response {
    let logs = match parse(&id) {
        Ok(id) => state.service.logs(id).await,
        Err(e) => Err(e),
    };
    match logs {
        Ok(logs) => download(
            format!("{}-logs.json", logs.id),
            serde_json::to_value(&logs).unwrap_or_default(),
        ),
        Err(e) => error_page(&e),
    }
}

/// `POST /ui/tasks/{id}/cancel`.
pub async fn cancel(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    act(&state, &session, &id, &form, Action::Cancel).await
}

/// `POST /ui/tasks/{id}/retry`.
pub async fn retry(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    act(&state, &session, &id, &form, Action::Retry).await
}

enum Action {
    Cancel,
    Retry,
}

async fn act(
    state: &UiState,
    session: &Session,
    id: &str,
    form: &[(String, String)],
    action: Action,
) -> Response {
    if let Err(refused) = check_form_token(session, field(form, FORM_TOKEN)) {
        return refused.into_response();
    }
    let id = match parse(id) {
        Ok(id) => id,
        Err(e) => return error_page(&e),
    };
    let done = match action {
        Action::Cancel => state.service.cancel(id).await,
        Action::Retry => state.service.retry(id).await,
    };
    match done {
        Ok(_) => Redirect::to(&format!("{PREFIX}/tasks/{id}")).into_response(),
        Err(e) => error_page(&e),
    }
}
