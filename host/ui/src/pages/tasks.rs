//! The task list: filters, cursor pages, and bulk cancel and retry.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use maud::html;
use serde::Deserialize;
use taskflow_model::FailureKind;
use taskflow_model::query::ListQuery;
use taskflow_model::task::{TaskId, TaskStatus};

use super::{error_page, layout};
use crate::auth::{FORM_TOKEN, Session, check_form_token, field};
use crate::port::UiError;
use crate::{PREFIX, UiState};

/// Tasks per page.
const PAGE: usize = 50;
/// Most tasks one bulk action takes.
const MAX_BULK: usize = 200;

/// The list's query string: every filter as the form sends it (an empty
/// field is no filter).
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    plugin: Option<String>,
    priority: Option<String>,
    host: Option<String>,
    error_kind: Option<String>,
    /// Submitted at or after, UTC (`datetime-local` or RFC 3339).
    from: Option<String>,
    /// Submitted before, UTC.
    to: Option<String>,
    idempotency_key: Option<String>,
    cursor: Option<String>,
    /// What the last bulk action did, shown once.
    notice: Option<String>,
}

/// A form field's value, unless empty.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A time the form sent: RFC 3339, or a `datetime-local` value (minutes or
/// seconds) or a bare date, read as UTC.
fn parse_time(field: &str, text: &str) -> Result<DateTime<Utc>, UiError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(at.and_utc());
        }
    }
    if let Some(at) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|day| day.and_hms_opt(0, 0, 0))
    {
        return Ok(at.and_utc());
    }
    Err(UiError::bad_request(format!(
        "{field}: not a time; write it as 2026-12-03T14:30 (UTC) or in RFC 3339"
    )))
}

impl ListParams {
    fn filter(&self) -> Result<ListQuery, UiError> {
        let status = given(&self.status)
            .map(|s| s.parse::<TaskStatus>().map_err(UiError::bad_request))
            .transpose()?;
        let priority = given(&self.priority)
            .map(|p| {
                p.parse::<u8>()
                    .ok()
                    .filter(|p| (1..=10).contains(p))
                    .ok_or_else(|| UiError::bad_request("priority: 1 (highest) to 10"))
            })
            .transpose()?;
        let error_kind = given(&self.error_kind)
            .map(|kind| {
                serde_json::from_value::<FailureKind>(serde_json::Value::String(kind.into()))
                    .map_err(|_| UiError::bad_request(format!("no error kind {kind:?}")))
            })
            .transpose()?;
        Ok(ListQuery {
            status,
            plugin: given(&self.plugin).map(str::to_owned),
            priority,
            host: given(&self.host).map(str::to_owned),
            error_kind,
            submitted_after: given(&self.from)
                .map(|t| parse_time("from", t))
                .transpose()?,
            submitted_before: given(&self.to).map(|t| parse_time("to", t)).transpose()?,
            idempotency_key: given(&self.idempotency_key).map(str::to_owned),
            limit: PAGE,
            cursor: given(&self.cursor).map(str::to_owned),
        })
    }
}

/// The list's URL with `filter`'s filters and `cursor`.
fn list_url(filter: &ListQuery, cursor: Option<&str>) -> String {
    let time = |at: DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let pairs = [
        ("status", filter.status.map(|s| s.as_str().to_owned())),
        ("plugin", filter.plugin.clone()),
        ("priority", filter.priority.map(|p| p.to_string())),
        ("host", filter.host.clone()),
        ("error_kind", filter.error_kind.map(|k| k.to_string())),
        ("from", filter.submitted_after.map(time)),
        ("to", filter.submitted_before.map(time)),
        ("idempotency_key", filter.idempotency_key.clone()),
        ("cursor", cursor.map(str::to_owned)),
    ];
    let query: Vec<String> = pairs
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={}", encode(&v))))
        .collect();
    format!("{PREFIX}/tasks?{}", query.join("&"))
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

/// A `datetime-local` field's value for `at` (UTC), or empty.
fn local_time(at: Option<DateTime<Utc>>) -> String {
    at.map(|at| at.format("%Y-%m-%dT%H:%M:%S").to_string())
        .unwrap_or_default()
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
            label { "Priority "
                select name="priority" {
                    option value="" { "any" }
                    @for priority in 1..=10u8 {
                        option value=(priority) selected[filter.priority == Some(priority)] { (priority) }
                    }
                }
            }
            label { "Error "
                select name="error_kind" {
                    option value="" { "any" }
                    @for kind in FailureKind::ALL {
                        option value=(kind) selected[filter.error_kind == Some(kind)] { (kind) }
                    }
                }
            }
            label { "Host "
                input type="text" name="host" size="14" value=(filter.host.as_deref().unwrap_or(""));
            }
            label { "Submitted from "
                input type="datetime-local" name="from" value=(local_time(filter.submitted_after));
            }
            label { "to "
                input type="datetime-local" name="to" value=(local_time(filter.submitted_before));
                " UTC"
            }
            label { "Idempotency key "
                input type="text" name="idempotency_key" size="14" value=(filter.idempotency_key.as_deref().unwrap_or(""));
            }
            button type="submit" { "Filter" }
            a href={ (PREFIX) "/tasks" } { "Clear" }
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
                            td { @if let Some(host) = &task.host {
                                a href=(list_url(&ListQuery { host: Some(host.clone()), ..filter.clone() }, None)) { (host) }
                            } @else { "–" } }
                            td { @if let Some(error) = &task.last_error {
                                a.kind href=(list_url(&ListQuery { error_kind: Some(error.kind), ..filter.clone() }, None)) { (error.kind) }
                            } }
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
        let filter = ListQuery {
            status: Some(TaskStatus::Failed),
            plugin: Some("a&b".into()),
            error_kind: Some(FailureKind::Timeout),
            submitted_after: Some(parse_time("from", "2026-12-03T14:30").expect("time")),
            limit: PAGE,
            ..ListQuery::default()
        };
        assert_eq!(
            list_url(&filter, Some("12_x y")),
            "/ui/tasks?status=failed&plugin=a%26b&error_kind=timeout&from=2026-12-03T14%3A30%3A00Z&cursor=12_x%20y"
        );
    }

    #[test]
    fn the_filter_form_reads_back_what_list_urls_write() {
        let params = ListParams {
            status: Some("failed".into()),
            priority: Some("3".into()),
            host: Some(" host-a ".into()),
            error_kind: Some("timeout".into()),
            from: Some("2026-12-03T14:30".into()),
            to: Some("2026-12-04".into()),
            idempotency_key: Some(String::new()),
            ..ListParams::default()
        };
        let filter = params.filter().expect("filter");
        assert_eq!(filter.priority, Some(3));
        assert_eq!(filter.host.as_deref(), Some("host-a"));
        assert_eq!(filter.idempotency_key, None);
        assert_eq!(
            filter.submitted_before.map(|t| t.to_rfc3339()),
            Some("2026-12-04T00:00:00+00:00".into())
        );
        for (params, problem) in [
            (
                ListParams {
                    priority: Some("0".into()),
                    ..ListParams::default()
                },
                "priority",
            ),
            (
                ListParams {
                    error_kind: Some("<b>".into()),
                    ..ListParams::default()
                },
                "error kind",
            ),
            (
                ListParams {
                    from: Some("yesterday".into()),
                    ..ListParams::default()
                },
                "from",
            ),
        ] {
            let refused = params.filter().expect_err("refused");
            assert!(refused.message.contains(problem), "{refused:?}");
        }
    }
}
