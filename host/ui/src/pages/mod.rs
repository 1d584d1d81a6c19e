//! The pages, one module each, over a shared [`layout`].

pub mod layout;
pub mod overview;
pub mod plugins;
pub mod submit;
pub mod task;
pub mod tasks;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use crate::port::UiError;

/// A failure of the service as a page saying what happened.
pub fn error_page(error: &UiError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = html! {
        section.problem-page {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
            p.problem role="alert" { (error.message) }
            p { a href={ (crate::PREFIX) } { "Back to the overview" } }
        }
    };
    (status, layout::page("Error", None, body)).into_response()
}

/// Any other path under `/ui`.
pub async fn not_found() -> Response {
    error_page(&UiError::not_found(
        "There is no such page in the dashboard.",
    ))
}
