//! The plugins this host has loaded, and where each version runs in the fleet.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use maud::html;
use taskflow_model::api::{DURATION_BOUNDS_US, HostBeat, VersionRuns};
use taskflow_model::plugin::PluginInfo;

use super::{error_page, layout};
use crate::auth::{Session, check_form_token};
use crate::{PREFIX, UiState};

/// One plugin version as the fleet reports it.
#[derive(Default)]
struct VersionRow<'a> {
    /// This host's description of it, when it has it loaded.
    here: Option<&'a PluginInfo>,
    /// Each host that has it loaded, with how long the load took.
    loads: Vec<(&'a str, u64)>,
    /// Its attempts on every host, since each host started.
    runs: VersionRuns,
}

/// Every version loaded on a host of the fleet or run by one since it
/// started, by plugin name and digest.
fn versions<'a>(
    hosts: &'a [HostBeat],
    plugins: &'a [PluginInfo],
) -> BTreeMap<(&'a str, &'a str), VersionRow<'a>> {
    let mut rows: BTreeMap<(&str, &str), VersionRow> = BTreeMap::new();
    for host in hosts {
        for version in &host.plugins {
            let entry = rows
                .entry((version.name.as_str(), version.digest.as_str()))
                .or_default();
            if let Some(ms) = version.load_ms {
                entry.loads.push((host.name.as_str(), ms));
            }
            entry.runs.add(&version.runs);
        }
    }
    for plugin in plugins {
        rows.entry((plugin.name.as_str(), plugin.digest.as_str()))
            .or_default()
            .here = Some(plugin);
    }
    rows
}

/// A duration bucket's bound, for people.
fn bound(micros: u64) -> String {
    match micros {
        u64::MAX => format!(
            "> {} s",
            DURATION_BOUNDS_US[DURATION_BOUNDS_US.len() - 1] / 1_000_000
        ),
        0..1_000 => format!("≤ {micros} µs"),
        1_000..1_000_000 => format!("≤ {} ms", micros as f64 / 1_000.0),
        _ => format!("≤ {} s", micros as f64 / 1_000_000.0),
    }
}

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
    let rows = versions(&hosts, &plugins);
    let body = html! {
        h1 { "Plugins" }
        p.note { "Every version loaded on a host of the fleet, or run by one since it started. Attempts, failures and durations add up every host's counts since that host started; durations are given as the bound of their bucket." }
        table #plugins {
            thead { tr {
                th { "Plugin" } th { "Digest" } th { "Size" } th { "Contract" } th { "Limits" }
                th { "Load time by host" } th { "Attempts" } th { "Failed" }
                th { "p50" } th { "p95" } th { "p99" }
            } }
            tbody {
                @for ((name, digest), row) in &rows {
                    tr data-plugin=(name) data-digest=(digest) {
                        td { a href={ (PREFIX) "/tasks?plugin=" (name) } { (name) } }
                        td { (layout::digest(digest)) }
                        @if let Some(here) = row.here {
                            td { (here.size) " bytes" }
                            td { (here.contract) }
                            td { code { (serde_json::to_string(&here.limits).unwrap_or_default()) } }
                        } @else {
                            td colspan="3" { span.note { "not loaded on this host" } }
                        }
                        td {
                            @if row.loads.is_empty() { span.note { "no longer loaded" } }
                            @for (i, (host, ms)) in row.loads.iter().enumerate() {
                                @if i > 0 { ", " }
                                (host) " " (ms) " ms"
                            }
                        }
                        td.attempts { (row.runs.attempts()) }
                        td.failed {
                            @if let Some(rate) = row.runs.failure_rate() {
                                (row.runs.failed) " (" (format!("{:.1}", rate * 100.0)) "%)"
                            } @else { "–" }
                        }
                        @for q in [0.5, 0.95, 0.99] {
                            td { (row.runs.quantile_us(q).map(bound).unwrap_or_else(|| "–".into())) }
                        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use taskflow_model::api::PluginVersion;

    use super::*;

    fn beat(host: &str, versions: Vec<PluginVersion>) -> HostBeat {
        let now = chrono::Utc::now();
        HostBeat {
            name: host.into(),
            version: "0".into(),
            workers: 1,
            running: 0,
            plugins: versions,
            started_at: now,
            seen_at: now,
        }
    }

    fn version(digest: &str, load_ms: Option<u64>, failed: usize) -> PluginVersion {
        let mut runs = VersionRuns::default();
        runs.record(true, Duration::from_millis(1));
        for _ in 0..failed {
            runs.record(false, Duration::from_secs(1));
        }
        PluginVersion {
            name: "echo".into(),
            digest: digest.into(),
            load_ms,
            runs,
        }
    }

    #[test]
    fn versions_add_up_the_fleet() {
        let hosts = [
            beat(
                "a",
                vec![version("new", Some(12), 1), version("old", None, 0)],
            ),
            beat("b", vec![version("new", Some(3), 0)]),
        ];
        let rows = versions(&hosts, &[]);
        let new = &rows[&("echo", "new")];
        assert_eq!(new.loads, [("a", 12), ("b", 3)]);
        assert_eq!((new.runs.completed, new.runs.failed), (2, 1));
        let old = &rows[&("echo", "old")];
        assert!(old.loads.is_empty() && old.here.is_none());
        assert_eq!(old.runs.attempts(), 1);
    }

    #[test]
    fn bounds_read_as_people_write_them() {
        assert_eq!(bound(250), "≤ 250 µs");
        assert_eq!(bound(2_500), "≤ 2.5 ms");
        assert_eq!(bound(10_000_000), "≤ 10 s");
        assert_eq!(bound(u64::MAX), "> 60 s");
    }
}
