//! The plugins this host has loaded, and where each version runs in the fleet.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::{error_page, layout};
use crate::auth::Session;
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
        p.note { "Upload a plugin with " code { "taskflow plugins upload" } " and the admin token: every host of the fleet loads it." }
    };
    layout::page("Plugins", Some(&session), body).into_response()
}
