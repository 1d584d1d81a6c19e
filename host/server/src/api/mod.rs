//! The HTTP API: a router factory over the [`TaskService`], with the error
//! type, middleware and OpenAPI description beside it.

pub mod error;
pub mod middleware;
pub mod ops;
pub mod plugins;
pub mod schema;
pub mod tasks;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use taskflow_http::REQUEST_ID;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

use error::ApiError;
use taskflow_runtime::plugin::MAX_PLUGIN_BYTES;

use crate::service::TaskService;

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
    let state = AppState {
        service,
        auth: Arc::new(auth),
    };

    let api = Router::new()
        .route("/tasks", post(tasks::submit).get(tasks::list))
        .route("/tasks/batch", post(tasks::submit_batch))
        .route("/tasks/{id}", get(tasks::get))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/tasks/{id}/retry", post(tasks::retry))
        .route("/tasks/{id}/logs", get(tasks::logs))
        .route("/stats", get(ops::stats))
        .route("/plugins", get(plugins::list))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_api_token,
        ));

    let admin = Router::new()
        .route(
            "/plugins/{name}",
            put(plugins::upload)
                .delete(plugins::remove)
                .layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES)),
        )
        .route("/admin/backup", get(ops::export_backup))
        .route(
            "/admin/restore",
            post(ops::restore).layer(DefaultBodyLimit::max(MAX_RESTORE_BYTES)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_admin_token,
        ));

    let open = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi_json));

    let dashboard = taskflow_ui::router(
        Arc::new(crate::ui::Dashboard(state.service.clone())),
        taskflow_ui::UiAuth {
            api_token: state.auth.api_token.clone(),
            admin_token: state.auth.admin_token.clone(),
        },
    );

    Router::new()
        .merge(api)
        .merge(admin)
        .merge(open)
        .nest_service(taskflow_ui::PREFIX, dashboard)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::count_request,
        ))
        // Outermost first: a request gets a sane id (the client's, or a new
        // one), is served inside a span that carries it, and its response
        // takes the id back and is logged.
        .layer(
            ServiceBuilder::new()
                .map_request(taskflow_http::drop_insane_request_id)
                .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(middleware::request_span)
                        .on_request(())
                        .on_response(middleware::log_response)
                        .on_failure(()),
                ),
        )
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; GET /openapi.json lists them")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

async fn openapi_json(State(state): State<AppState>) -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::for_auth(&state.auth))
}

/// Security scheme of the API token (`TASKFLOW_API_TOKEN`) in the OpenAPI description.
pub const API_TOKEN_SCHEME: &str = "api_token";
/// Security scheme of the admin token (`TASKFLOW_ADMIN_TOKEN`) in the OpenAPI description.
pub const ADMIN_TOKEN_SCHEME: &str = "admin_token";

/// The OpenAPI description served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "TaskFlow", description = "Priority task processing with sandboxed WebAssembly plugins."),
    paths(
        tasks::submit, tasks::submit_batch, tasks::list, tasks::get, tasks::cancel, tasks::retry, tasks::logs,
        plugins::list, plugins::upload, plugins::remove,
        ops::health, ops::ready, ops::stats, ops::metrics, ops::export_backup, ops::restore,
    ),
    modifiers(&Security),
    tags(
        (name = "tasks", description = "Submit and follow tasks"),
        (name = "plugins", description = "Manage WebAssembly plugins"),
        (name = "operations", description = "Health, statistics, metrics, backup"),
    )
)]
pub struct ApiDoc;

impl ApiDoc {
    /// The description as a host with these tokens serves it: an operation
    /// declares a security requirement exactly when the host enforces one,
    /// naming the tokens it takes (see [`middleware::require_api_token`] and
    /// [`middleware::require_admin_token`]).
    ///
    /// [`ApiDoc::openapi`] is the description with both tokens configured.
    pub fn for_auth(auth: &AuthConfig) -> utoipa::openapi::OpenApi {
        let mut doc = Self::openapi();
        let (api, admin) = (auth.api_token.is_some(), auth.admin_token.is_some());
        let api_token = requirement(API_TOKEN_SCHEME);
        let admin_token = requirement(ADMIN_TOKEN_SCHEME);
        // The API endpoints are open without an API token and then take either token.
        let api_endpoints: Vec<SecurityRequirement> = if api {
            [Some(api_token.clone()), admin.then(|| admin_token.clone())]
                .into_iter()
                .flatten()
                .collect()
        } else {
            Vec::new()
        };
        // The admin endpoints take the admin token, else the API token, else are open.
        let admin_endpoints = match (admin, api) {
            (true, _) => vec![admin_token],
            (false, true) => vec![api_token.clone()],
            (false, false) => Vec::new(),
        };
        for item in doc.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                let Some(declared) = &operation.security else {
                    continue;
                };
                let required = if declared.contains(&api_token) {
                    &api_endpoints
                } else {
                    &admin_endpoints
                };
                if required.is_empty() {
                    operation.security = None;
                    operation.responses.responses.remove("401");
                } else {
                    operation.security = Some(required.clone());
                }
            }
        }
        if let Some(components) = &mut doc.components {
            for (scheme, configured) in [(API_TOKEN_SCHEME, api), (ADMIN_TOKEN_SCHEME, admin)] {
                if !configured {
                    components.security_schemes.remove(scheme);
                }
            }
        }
        doc
    }
}

fn requirement(scheme: &str) -> SecurityRequirement {
    SecurityRequirement::new(scheme, Vec::<String>::new())
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Declares the two bearer tokens and the 401 answer of every operation
/// that requires one.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            (
                API_TOKEN_SCHEME,
                "`TASKFLOW_API_TOKEN`, as `Authorization: Bearer <token>`; the admin token is accepted too",
            ),
            (
                ADMIN_TOKEN_SCHEME,
                "`TASKFLOW_ADMIN_TOKEN`, as `Authorization: Bearer <token>`",
            ),
        ] {
            let scheme = HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(description))
                .build();
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
        let unauthorized = ResponseBuilder::new()
            .description("A token is required and was missing or wrong")
            .header(
                "WWW-Authenticate",
                utoipa::openapi::header::Header::new(
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::Type::String),
                ),
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                if operation.security.is_some() {
                    operation
                        .responses
                        .responses
                        .insert("401".to_owned(), unauthorized.clone().into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use taskflow_files::FileStore;
    use taskflow_files::LocalQueue;
    use taskflow_runtime::{PluginRegistry, Runtime, RuntimeConfig};

    use super::*;
    use crate::metrics::Metrics;
    use crate::service::ServiceConfig;

    /// A router over real (empty) backends in a scratch directory.
    async fn app(auth: AuthConfig) -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = Runtime::new(RuntimeConfig {
            pooling: false,
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        let registry = PluginRegistry::open(runtime, dir.path().join("plugins"), None)
            .await
            .expect("registry");
        let store = FileStore::open(dir.path().join("tasks"), false)
            .await
            .expect("store");
        let service = Arc::new(TaskService::new(
            Arc::new(LocalQueue::new()),
            Arc::new(store),
            registry,
            Arc::new(Metrics::new("test")),
            ServiceConfig::new(
                1,
                std::time::Duration::from_millis(10),
                std::time::Duration::from_secs(30),
            ),
        ));
        (router(service, auth, 1024 * 1024), dir)
    }

    async fn json_body(response: axum::response::Response) -> serde_json::Value {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("JSON body")
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_answer_json_errors() {
        let (app, _dir) = app(AuthConfig::default()).await;
        let response = app
            .clone()
            .oneshot(Request::get("/nope").body(Body::empty()).expect("request"))
            .await
            .expect("call");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(json_body(response).await["error"], "not_found");

        let response = app
            .oneshot(
                Request::delete("/tasks")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("call");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(json_body(response).await["error"], "method_not_allowed");
    }

    #[tokio::test]
    async fn request_ids_are_kept_or_made() {
        let (app, _dir) = app(AuthConfig::default()).await;
        let request = Request::get("/health")
            .header("x-request-id", "abc-123")
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("call");
        assert_eq!(response.headers()["x-request-id"], "abc-123");
        // An id with control characters or a huge one is replaced, not echoed.
        let request = Request::get("/health")
            .header("x-request-id", "x".repeat(500))
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(request).await.expect("call");
        assert_eq!(response.headers()["x-request-id"].len(), 36);
    }

    #[tokio::test]
    async fn the_api_token_is_required_where_configured() {
        let auth = AuthConfig {
            api_token: Some("token-0123456789abcdef".into()),
            admin_token: None,
        };
        let (app, _dir) = app(auth).await;
        let response = app
            .clone()
            .oneshot(Request::get("/stats").body(Body::empty()).expect("request"))
            .await
            .expect("call");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let request = Request::get("/stats")
            .header(header::AUTHORIZATION, "Bearer token-0123456789abcdef")
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            app.clone().oneshot(request).await.expect("call").status(),
            StatusCode::OK
        );
        // Without an admin token, plugin administration takes the API token.
        let request = Request::delete("/plugins/echo")
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            app.oneshot(request).await.expect("call").status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn any_casing_of_the_bearer_scheme_is_accepted_and_other_schemes_are_not() {
        let auth = AuthConfig {
            api_token: Some("token-0123456789abcdef".into()),
            admin_token: None,
        };
        let (app, _dir) = app(auth).await;
        for (authorization, status) in [
            ("bearer token-0123456789abcdef", StatusCode::OK),
            ("BEARER   token-0123456789abcdef", StatusCode::OK),
            ("Basic token-0123456789abcdef", StatusCode::UNAUTHORIZED),
        ] {
            let request = Request::get("/stats")
                .header(header::AUTHORIZATION, authorization)
                .body(Body::empty())
                .expect("request");
            assert_eq!(
                app.clone().oneshot(request).await.expect("call").status(),
                status,
                "{authorization}"
            );
        }
    }

    #[tokio::test]
    async fn only_cursors_as_the_host_writes_them_are_taken() {
        let (app, _dir) = app(AuthConfig::default()).await;
        let id = "3f2b8c1e-8d4a-4c7e-9f1a-2b3c4d5e6f70";
        for (cursor, status) in [
            (format!("0_{id}"), StatusCode::OK),
            (format!("18446744073709551615_{id}"), StatusCode::OK),
            (format!("%2B1_{id}"), StatusCode::BAD_REQUEST),
            (format!("01_{id}"), StatusCode::BAD_REQUEST),
            (format!("1_{}", id.to_uppercase()), StatusCode::BAD_REQUEST),
            (
                format!("18446744073709551616_{id}"),
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let request = Request::get(format!("/tasks?cursor={cursor}"))
                .body(Body::empty())
                .expect("request");
            assert_eq!(
                app.clone().oneshot(request).await.expect("call").status(),
                status,
                "{cursor}"
            );
        }
    }

    /// The patterns the description states are the rules the host applies.
    #[test]
    fn patterns_state_the_rules_exactly() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("description");
        for schema in ["NewTask", "Task"] {
            let key = &doc["components"]["schemas"][schema]["properties"]["idempotency_key"];
            assert_eq!(
                key["pattern"],
                taskflow_model::task::IDEMPOTENCY_KEY_PATTERN,
                "{schema}"
            );
            assert_eq!(
                key["maxLength"],
                taskflow_model::task::IDEMPOTENCY_KEY_LIMIT,
                "{schema}"
            );
        }
        // Decimals with as many digits as `max` and at most `max`.
        fn at_most(max: &str) -> String {
            let (first, rest) = (max.as_bytes()[0] - b'0', &max[1..]);
            if rest.is_empty() {
                return if first == 0 {
                    "0".into()
                } else {
                    format!("[0-{first}]")
                };
            }
            let same_first = format!("{first}{}", at_most(rest));
            match first {
                0 => same_first,
                1 => format!("(?:0[0-9]{{{}}}|{same_first})", rest.len()),
                _ => format!("(?:[0-{}][0-9]{{{}}}|{same_first})", first - 1, rest.len()),
            }
        }
        let max = u64::MAX.to_string();
        let sequence = format!(
            "(?:0|[1-9][0-9]{{0,{}}}|1{})",
            max.len() - 2,
            at_most(&max[1..])
        );
        let cursor = format!(
            "^{sequence}_[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$"
        );
        let parameters = doc["paths"]["/tasks"]["get"]["parameters"]
            .as_array()
            .expect("parameters");
        let served = parameters
            .iter()
            .find(|p| p["name"] == "cursor")
            .expect("cursor parameter");
        assert_eq!(served["schema"]["pattern"], cursor);
    }
}
