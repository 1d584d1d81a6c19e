//! Submitting a task from a form: a plugin picker, priority and attempts,
//! and a payload editor that checks the JSON as it is typed (`app.js`)
//! and again here.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;
use taskflow_model::task::{NewTask, PRIORITY_DEFAULT};

use super::layout;
use crate::auth::{FORM_TOKEN, Session, check_form_token, field};
use crate::{PREFIX, UiState};

/// What the form held, to show it again with what was wrong.
#[derive(Debug, Default)]
struct Filled<'a> {
    plugin: &'a str,
    priority: &'a str,
    max_attempts: &'a str,
    payload: &'a str,
}

fn form(
    state: &UiState,
    session: &Session,
    filled: &Filled<'_>,
    problem: Option<&str>,
) -> maud::Markup {
    let plugins = state.service.plugins();
    let priority = if filled.priority.is_empty() {
        PRIORITY_DEFAULT.to_string()
    } else {
        filled.priority.to_owned()
    };
    html! {
        h1 { "Submit a task" }
        @if let Some(problem) = problem { p.problem role="alert" { (problem) } }
        form #submit method="post" action={ (PREFIX) "/submit" } {
            (layout::form_token(session))
            label for="plugin" { "Plugin" }
            select #plugin name="plugin" required {
                @for plugin in &plugins {
                    option value=(plugin.name) selected[plugin.name == filled.plugin] { (plugin.name) }
                }
            }
            label for="priority" { "Priority (1 highest, 10 lowest)" }
            input #priority type="number" name="priority" min="1" max="10" value=(priority);
            label for="max_attempts" { "Attempts at most" }
            input #max_attempts type="number" name="max_attempts" min="1" max="100" value=(filled.max_attempts) placeholder="3";
            label for="payload" { "Payload (JSON)" }
            textarea #payload name="payload" rows="10" spellcheck="false" data-json="payload-problem" { (filled.payload) }
            p #payload-problem.problem role="alert" hidden {}
            button type="submit" { "Submit" }
        }
    }
}

/// `GET /ui/submit`.
pub async fn page(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
) -> Response {
    let filled = Filled {
        payload: "{}",
        ..Filled::default()
    };
    layout::page(
        "Submit",
        Some(&session),
        form(&state, &session, &filled, None),
    )
    .into_response()
}

/// `POST /ui/submit`: submits, then shows the task; shows the form again
/// with what to fix otherwise.
pub async fn post(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Form(posted): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(refused) = check_form_token(&session, field(&posted, FORM_TOKEN)) {
        return refused.into_response();
    }
    let filled = Filled {
        plugin: field(&posted, "plugin").unwrap_or_default(),
        priority: field(&posted, "priority").unwrap_or_default(),
        max_attempts: field(&posted, "max_attempts").unwrap_or_default(),
        payload: field(&posted, "payload").unwrap_or_default(),
    };
    let again = |status: StatusCode, problem: &str| {
        (
            status,
            layout::page(
                "Submit",
                Some(&session),
                form(&state, &session, &filled, Some(problem)),
            ),
        )
            .into_response()
    };
    let payload = match serde_json::from_str(if filled.payload.trim().is_empty() {
        "null"
    } else {
        filled.payload
    }) {
        Ok(payload) => payload,
        Err(e) => {
            return again(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("The payload is not JSON: {e}"),
            );
        }
    };
    let number = |text: &str, name: &str| -> Result<Option<u32>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|_| format!("{name} must be a whole number"))
    };
    let (priority, max_attempts) = match (
        number(filled.priority, "Priority"),
        number(filled.max_attempts, "Attempts"),
    ) {
        (Ok(p), Ok(m)) => (p, m),
        (Err(e), _) | (_, Err(e)) => return again(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let new = NewTask {
        plugin: filled.plugin.to_owned(),
        payload,
        priority: priority.map(|p| u8::try_from(p).unwrap_or(u8::MAX)),
        max_attempts,
        ..NewTask::default()
    };
    match state.service.submit(new).await {
        Ok(task) => Redirect::to(&format!("{PREFIX}/tasks/{}", task.id)).into_response(),
        Err(e) => again(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
            &e.message,
        ),
    }
}
