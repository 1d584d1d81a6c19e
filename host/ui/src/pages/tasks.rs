//! The task list: filters, cursor pages, and bulk cancel and retry.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;
use serde::Deserialize;
use taskflow_model::task::{TaskId, TaskStatus};

use super::{error_page, layout};
use crate::auth::{FORM_TOKEN, Session, check_form_token, field};
use crate::port::{TaskFilter, UiError};
use crate::{PREFIX, UiState};

/// Tasks per page.
const PAGE: usize = 50;
/// Most tasks one bulk action takes.
const MAX_BULK: usize = 200;

/// The list's query string.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    plugin: Option<String>,
    cursor: Option<String>,
    /// What the last bulk action did, shown once.
    notice: Option<String>,
}

impl ListParams {
    fn filter(&self) -> Result<TaskFilter, UiError> {
        let status = match self.status.as_deref().filter(|s| !s.is_empty()) {
            Some(status) => Some(status.parse::<TaskStatus>().map_err(UiError::bad_request)?),
            None => None,
        };
        Ok(TaskFilter {
            status,
            plugin: self.plugin.clone().filter(|p| !p.is_empty()),
            limit: PAGE,
            cursor: self.cursor.clone().filter(|c| !c.is_empty()),
        })
    }
}

/// The query string of the list with `filter` and `cursor`.
fn list_url(filter: &TaskFilter, cursor: Option<&str>) -> String {
    let mut pairs = Vec::new();
    if let Some(status) = filter.status {
        pairs.push(format!("status={}", status.as_str()));
    }
    if let Some(plugin) = &filter.plugin {
        pairs.push(format!("plugin={}", encode(plugin)));
    }
    if let Some(cursor) = cursor {
        pairs.push(format!("cursor={}", encode(cursor)));
    }
    format!("{PREFIX}/tasks?{}", pairs.join("&"))
}

/// Percent-encodes all but unreserved characters (RFC 3986).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /ui/tasks`.
pub async fn page(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Query(params): Query<ListParams>,
) -> Response {
    let filter = match params.filter() {
        Ok(filter) => filter,
        Err(e) => return error_page(&e),
    };
    let tasks = match state.service.list(&filter).await {
        Ok(page) => page,
        Err(e) => return error_page(&e),
    };
    let plugins = state.service.plugins();
    let body = html! {
        h1 { "Tasks" }
        @if let Some(notice) = &params.notice { p.notice role="status" { (notice) } }
        form.filters method="get" action={ (PREFIX) "/tasks" } {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for status in TaskStatus::ALL {
                        option value=(status.as_str()) selected[filter.status == Some(status)] { (status.as_str()) }
                    }
                }
            }
            label { "Plugin "
                select name="plugin" {
                    option value="" { "any" }
                    @for plugin in &plugins {
                        option value=(plugin.name) selected[filter.plugin.as_deref() == Some(plugin.name.as_str())] { (plugin.name) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        form #bulk method="post" action={ (PREFIX) "/tasks/bulk" } {
            (layout::form_token(&session))
            div.actions {
                button type="submit" name="action" value="cancel" { "Cancel selected" }
                button type="submit" name="action" value="retry" { "Retry selected" }
            }
            table.tasks {
                thead { tr {
                    th { input type="checkbox" data-select-all="id" aria-label="select all"; }
                    th { "Task" } th { "Plugin" } th { "Priority" } th { "Status" } th { "Attempts" }
                    th { "Submitted" } th { "Host" } th { "Error" }
                } }
                tbody {
                    @for task in &tasks.tasks {
                        tr {
                            td { input type="checkbox" name="id" value=(task.id) aria-label="select"; }
                            td { a href={ (PREFIX) "/tasks/" (task.id) } { code { (task.id) } } }
                            td { (task.plugin) }
                            td { (task.priority) }
                            td { (layout::status(task.status)) }
                            td { (task.attempts) "/" (task.max_attempts) }
                            td { (layout::time(task.created_at)) }
                            td { (task.host.as_deref().unwrap_or("–")) }
                            td { @if let Some(error) = &task.last_error { span.kind { (error.kind) } } }
                        }
                    }
                    @if tasks.tasks.is_empty() { tr { td colspan="9" { "No task matches." } } }
                }
            }
        }
        nav.pages {
            @if filter.cursor.is_some() { a href=(list_url(&filter, None)) { "First page" } }
            @if let Some(next) = &tasks.next_cursor { a rel="next" href=(list_url(&filter, Some(next))) { "Next page" } }
        }
    };
    layout::page("Tasks", Some(&session), body).into_response()
}

/// `POST /ui/tasks/bulk`: cancels or retries every selected task, then
/// shows the list saying how many it did.
pub async fn bulk(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(refused) = check_form_token(&session, field(&form, FORM_TOKEN)) {
        return refused.into_response();
    }
    let action = field(&form, "action").unwrap_or_default();
    if !matches!(action, "cancel" | "retry") {
        return error_page(&UiError::bad_request("choose cancel or retry"));
    }
    let ids: Vec<TaskId> = form
        .iter()
        .filter(|(key, _)| key == "id")
        .filter_map(|(_, value)| value.parse().ok())
        .take(MAX_BULK)
        .collect();
    let (mut done, mut refused) = (0, Vec::new());
    for id in &ids {
        let outcome = match action {
            "cancel" => state.service.cancel(*id).await,
            _ => state.service.retry(*id).await,
        };
        match outcome {
            Ok(_) => done += 1,
            Err(e) => refused.push(e.message),
        }
    }
    let verb = if action == "cancel" {
        "cancelled"
    } else {
        "queued again"
    };
    let mut notice = format!("{done} of {} tasks {verb}", ids.len());
    if let Some(first) = refused.first() {
        notice.push_str(&format!("; {} refused, e.g.: {first}", refused.len()));
    }
    Redirect::to(&format!("{PREFIX}/tasks?notice={}", encode(&notice))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_urls_encode_what_they_carry() {
        let filter = TaskFilter {
            status: Some(TaskStatus::Failed),
            plugin: Some("a&b".into()),
            limit: PAGE,
            cursor: None,
        };
        assert_eq!(
            list_url(&filter, Some("12_x y")),
            "/ui/tasks?status=failed&plugin=a%26b&cursor=12_x%20y"
        );
    }
}
