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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::queue::LocalQueue;
    use crate::runtime::{PluginRegistry, Runtime, RuntimeConfig};
    use crate::service::ServiceConfig;
    use crate::storage::FileStore;
    use crate::telemetry::Metrics;

    /// A router over real (empty) backends in a scratch directory.
    async fn app(auth: AuthConfig) -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = Runtime::new(RuntimeConfig { pooling: false, ..RuntimeConfig::default() }).expect("runtime");
        let registry = PluginRegistry::open(runtime, dir.path().join("plugins"), None).await.expect("registry");
        let store = FileStore::open(dir.path().join("tasks"), false).await.expect("store");
        let service = Arc::new(TaskService::new(
            Arc::new(LocalQueue::new()),
            Arc::new(store),
            registry,
            Arc::new(Metrics::default()),
            ServiceConfig { workers: 1, retry_base: std::time::Duration::from_millis(10) },
        ));
        (router(service, auth, 1024 * 1024), dir)
    }

    async fn json_body(response: axum::response::Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&bytes).expect("JSON body")
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_answer_json_errors() {
        let (app, _dir) = app(AuthConfig::default()).await;
        let response = app.clone().oneshot(Request::get("/nope").body(Body::empty()).expect("request")).await.expect("call");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(json_body(response).await["error"], "not_found");

        let response = app.oneshot(Request::delete("/tasks").body(Body::empty()).expect("request")).await.expect("call");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(json_body(response).await["error"], "method_not_allowed");
    }

    #[tokio::test]
    async fn request_ids_are_kept_or_made() {
        let (app, _dir) = app(AuthConfig::default()).await;
        let request = Request::get("/health").header("x-request-id", "abc-123").body(Body::empty()).expect("request");
        let response = app.clone().oneshot(request).await.expect("call");
        assert_eq!(response.headers()["x-request-id"], "abc-123");
        // An id with control characters or a huge one is replaced, not echoed.
        let request = Request::get("/health").header("x-request-id", "x".repeat(500)).body(Body::empty()).expect("request");
        let response = app.oneshot(request).await.expect("call");
        assert_eq!(response.headers()["x-request-id"].len(), 36);
    }

    #[tokio::test]
    async fn the_api_token_is_required_where_configured() {
        let auth = AuthConfig { api_token: Some("token-0123456789abcdef".into()), admin_token: None };
        let (app, _dir) = app(auth).await;
        let response = app.clone().oneshot(Request::get("/stats").body(Body::empty()).expect("request")).await.expect("call");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let request = Request::get("/stats")
            .header(header::AUTHORIZATION, "Bearer token-0123456789abcdef")
            .body(Body::empty())
            .expect("request");
        assert_eq!(app.clone().oneshot(request).await.expect("call").status(), StatusCode::OK);
        // Without an admin token, plugin administration takes the API token.
        let request = Request::delete("/plugins/echo").body(Body::empty()).expect("request");
        assert_eq!(app.oneshot(request).await.expect("call").status(), StatusCode::UNAUTHORIZED);
    }
}
