//! The HTTP API: a router factory over the [`TaskService`], with the error
//! type, middleware and OpenAPI description beside it.

pub mod error;
pub mod middleware;
pub mod ops;
pub mod plugins;
pub mod tasks;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::runtime::plugin::MAX_PLUGIN_BYTES;
use crate::service::TaskService;
use error::ApiError;

/// Largest backup document `POST /admin/restore` accepts.
const MAX_RESTORE_BYTES: usize = 1024 * 1024 * 1024;

/// Who may call what.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Required on everything but health, readiness, metrics and the API description.
    pub api_token: Option<String>,
    /// Required for plugin upload/removal and backup/restore.
    pub admin_token: Option<String>,
}

/// What every handler gets.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The task service.
    pub service: Arc<TaskService>,
    /// Tokens.
    pub auth: Arc<AuthConfig>,
}

/// Builds the router.
pub fn router(service: Arc<TaskService>, auth: AuthConfig, max_body_bytes: usize) -> Router {
    let state = AppState { service, auth: Arc::new(auth) };

    let api = Router::new()
        .route("/tasks", post(tasks::submit).get(tasks::list))
        .route("/tasks/batch", post(tasks::submit_batch))
        .route("/tasks/{id}", get(tasks::get))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/stats", get(ops::stats))
        .route("/plugins", get(plugins::list))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), middleware::require_api_token));

    let admin = Router::new()
        .route(
            "/plugins/{name}",
            put(plugins::upload).delete(plugins::remove).layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES)),
        )
        .route("/admin/backup", get(ops::export_backup))
        .route("/admin/restore", post(ops::restore).layer(DefaultBodyLimit::max(MAX_RESTORE_BYTES)))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), middleware::require_admin_token));

    let open = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi_json));

    Router::new()
        .merge(api)
        .merge(admin)
        .merge(open)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::request_context))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; GET /openapi.json lists them")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The OpenAPI description served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "TaskFlow", description = "Priority task processing with sandboxed WebAssembly plugins."),
    paths(
        tasks::submit, tasks::submit_batch, tasks::list, tasks::get, tasks::cancel,
        plugins::list, plugins::upload, plugins::remove,
        ops::health, ops::ready, ops::stats, ops::metrics, ops::export_backup, ops::restore,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "tasks", description = "Submit and follow tasks"),
        (name = "plugins", description = "Manage WebAssembly plugins"),
        (name = "operations", description = "Health, statistics, metrics, backup"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}
