//! `/plugins`: list, upload (hot swap) and remove plugins.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;

pub use taskflow_model::plugin::PluginList;
use taskflow_runtime::plugin::{MAX_PLUGIN_BYTES, PluginInfo};

use super::AppState;
use super::error::{ApiError, ErrorBody};

/// List loaded plugins with their versions (digest, size, load time).
#[utoipa::path(get, path = "/plugins", tag = "plugins",
    responses((status = 200, description = "Loaded plugins", body = PluginList)),
    security(("api_token" = []), ("admin_token" = []))
)]
pub async fn list(State(state): State<AppState>) -> Json<PluginList> {
    Json(PluginList {
        plugins: state.service.plugins(),
    })
}

/// Upload a plugin (a `wasm32-wasip2` component) under `name`.
///
/// The component is compiled and checked against the `taskflow:plugin/processor`
/// world before it replaces the running version; a rejected upload changes
/// nothing. Tasks already running finish on the old version.
#[utoipa::path(put, path = "/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name: 1 to 64 of a-z, 0-9, '-', '_'", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The component"),
    responses(
        (status = 201, description = "Loaded", body = PluginInfo),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 422, description = "Not a valid TaskFlow component", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn upload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PluginInfo>), ApiError> {
    taskflow_runtime::plugin::validate_name(&name)?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the plugin is larger than {MAX_PLUGIN_BYTES} bytes"),
        ),
        _ => ApiError::bad_request("the plugin upload could not be read"),
    })?;
    let loaded = state.service.install_plugin(&name, body.to_vec()).await?;
    Ok((StatusCode::CREATED, Json(loaded.info())))
}

/// Unload a plugin and delete its file. Queued tasks naming it fail when
/// they come up.
#[utoipa::path(delete, path = "/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 404, description = "No such plugin", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.remove_plugin(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
