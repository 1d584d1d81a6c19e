//! The dashboard: what an operator opens in a browser at `/ui` of any host
//! (or of the load balancer in front of a fleet). Server-rendered pages,
//! written with maud, whose every interpolation is HTML-escaped; two
//! embedded assets (a stylesheet and a small script that polls for live
//! numbers and checks JSON as it is typed); nothing loaded from elsewhere.
//!
//! The host hands the router a [`UiService`]: the dashboard reads and acts
//! through it only, in the model's types, and links no engine or backend.
//!
//! Security, in one place each:
//! - `auth`: with `TASKFLOW_API_TOKEN` set, a login form puts the token in
//!   an `HttpOnly`, `SameSite=Strict` cookie scoped to `/ui`; every page,
//!   data endpoint and action refuses a request without it.
//! - `auth::check_same_origin`: every action is a POST that must come from
//!   a page of this origin (`Sec-Fetch-Site`, else `Origin`) and carry the
//!   form token derived from the session.
//! - `headers`: a strict Content-Security-Policy (scripts and styles from
//!   this origin only, no inline script), no framing, no sniffing, no caching.

mod auth;
mod headers;
mod pages;
mod port;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use auth::{COOKIE, FORM_TOKEN, form_token};
pub use port::{UiError, UiService};
pub use taskflow_model::query::ListQuery;

/// Largest plugin the upload form takes (the runtime's own limit).
const MAX_UPLOAD_BYTES: usize = 100 * 1024 * 1024;

/// Where the dashboard is mounted on a host.
pub const PREFIX: &str = "/ui";

/// Tokens the host takes (`TASKFLOW_API_TOKEN`, `TASKFLOW_ADMIN_TOKEN`).
#[derive(Debug, Clone, Default)]
pub struct UiAuth {
    /// With it set, the dashboard needs a login.
    pub api_token: Option<String>,
    /// Accepted at login too.
    pub admin_token: Option<String>,
}

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct UiState {
    pub(crate) service: Arc<dyn UiService>,
    pub(crate) auth: Arc<UiAuth>,
}

/// The dashboard's router, to be nested at [`PREFIX`].
pub fn router(service: Arc<dyn UiService>, auth: UiAuth) -> Router {
    let state = UiState {
        service,
        auth: Arc::new(auth),
    };
    let signed_in = Router::new()
        .route("/", get(pages::overview::page))
        .route("/api/overview", get(pages::overview::data))
        .route("/tasks", get(pages::tasks::page))
        .route("/tasks/bulk", post(pages::tasks::bulk))
        .route("/tasks/{id}", get(pages::task::page))
        .route("/tasks/{id}/payload.json", get(pages::task::payload))
        .route("/tasks/{id}/result.json", get(pages::task::result))
        .route("/tasks/{id}/logs.json", get(pages::task::whole_logs))
        .route("/tasks/{id}/cancel", post(pages::task::cancel))
        .route("/tasks/{id}/retry", post(pages::task::retry))
        .route(
            "/submit",
            get(pages::submit::page).post(pages::submit::post),
        )
        .route("/plugins", get(pages::plugins::page))
        .route(
            "/plugins/{name}",
            post(pages::plugins::upload).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route("/logout", post(auth::logout))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_session,
        ));
    Router::new()
        .merge(signed_in)
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/assets/style.css", get(headers::style))
        .route("/assets/app.js", get(headers::script))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn(headers::secure))
        .with_state(state)
}
