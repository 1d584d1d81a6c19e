//! The plugins this host has loaded, and where each version runs in the fleet.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use maud::html;

use super::{error_page, layout};
use crate::auth::{Session, check_form_token};
use crate::{PREFIX, UiState};

/// `GET /ui/plugins`.
pub async fn page(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
) -> Response {
    let hosts = match state.service.hosts().await {
        Ok(hosts) => hosts,
        Err(e) => return error_page(&e),
    };
    let plugins = state.service.plugins();
    let body = html! {
        h1 { "Plugins" }
        table #plugins {
            thead { tr {
                th { "Plugin" } th { "Digest" } th { "Size" } th { "Contract" } th { "Limits" } th { "Loaded here" } th { "Hosts running this version" }
            } }
            tbody {
                @for plugin in &plugins {
                    @let running: Vec<&str> = hosts.iter()
                        .filter(|h| h.plugins.iter().any(|p| p.name == plugin.name && p.digest == plugin.digest))
                        .map(|h| h.name.as_str()).collect();
                    tr {
                        td { a href={ (PREFIX) "/tasks?plugin=" (plugin.name) } { (plugin.name) } }
                        td { (layout::digest(&plugin.digest)) }
                        td { (plugin.size) " bytes" }
                        td { (plugin.contract) }
                        td { code { (serde_json::to_string(&plugin.limits).unwrap_or_default()) } }
                        td { (layout::time(plugin.loaded_at)) }
                        td { (running.join(", ")) }
                    }
                }
            }
        }
        h2 { "Upload a plugin" }
        @if session.admin {
            form #upload data-upload={ (PREFIX) "/plugins/" } data-form-token=(session.form_token) {
                label for="upload-name" { "Name" }
                input #upload-name type="text" name="name" required pattern="[a-z0-9][a-z0-9_-]{0,63}" placeholder="my-plugin";
                label for="upload-file" { "Component (.wasm)" }
                input #upload-file type="file" name="wasm" accept=".wasm,application/wasm" required;
                button type="submit" { "Upload" }
            }
            p #upload-result role="status" {}
            p.note { "A new version is checked and compiled first; every host of the fleet then loads it, and running tasks finish on the version they started with." }
        } @else {
            p.note { "Uploading needs the admin token: sign out and sign in with it, or use " code { "taskflow plugins upload" } "." }
        }
    };
    layout::page("Plugins", Some(&session), body).into_response()
}

/// `POST /ui/plugins/{name}`: the body is the component; the form token
/// comes in `X-Form-Token` (the page's script sends the file as is).
pub async fn upload(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    headers: HeaderMap,
    wasm: Bytes,
) -> Response {
    let presented = headers.get("x-form-token").and_then(|v| v.to_str().ok());
    if let Err(refused) = check_form_token(&session, presented) {
        return refused.into_response();
    }
    if !session.admin {
        return answer(
            StatusCode::FORBIDDEN,
            "uploading a plugin needs the admin token: sign in with it",
        );
    }
    match state.service.upload_plugin(&name, wasm.to_vec()).await {
        Ok(info) => Json(info).into_response(),
        Err(e) => answer(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
            &e.message,
        ),
    }
}

fn answer(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "message": message }))).into_response()
}
