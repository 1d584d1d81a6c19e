//! The overview: tasks by status, the queue by priority, throughput and
//! failure rate as live charts, the hosts of the fleet and their plugins.
//! The page renders the numbers once; `app.js` asks `/ui/api/overview`
//! every two seconds and updates them and the charts.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use maud::{Markup, html};
use serde::Serialize;
use taskflow_model::api::{HostBeat, Stats};
use taskflow_model::task::TaskStatus;

use super::{error_page, layout};
use crate::auth::Session;
use crate::{PREFIX, UiState};

/// A host that has not reported for this long is shown as gone.
const GONE_AFTER_SECONDS: i64 = 30;

/// What `/ui/api/overview` answers.
#[derive(Debug, Serialize)]
pub struct Overview {
    stats: Stats,
    hosts: Vec<HostBeat>,
    /// Server time, for the hosts' heartbeat ages.
    now: chrono::DateTime<Utc>,
}

async fn overview(state: &UiState) -> Result<Overview, crate::UiError> {
    let (stats, hosts) = tokio::join!(state.service.stats(), state.service.hosts());
    Ok(Overview {
        stats: stats?,
        hosts: hosts?,
        now: Utc::now(),
    })
}

/// `GET /ui/api/overview`: the numbers of the overview, as JSON.
pub async fn data(State(state): State<UiState>) -> Response {
    match overview(&state).await {
        Ok(overview) => Json(overview).into_response(),
        Err(e) => error_page(&e),
    }
}

/// `GET /ui`.
pub async fn page(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
) -> Response {
    let overview = match overview(&state).await {
        Ok(overview) => overview,
        Err(e) => return error_page(&e),
    };
    let counts = &overview.stats.system.tasks;
    let queue = &overview.stats.system.queue;
    let body = html! {
        h1 { "Overview" }
        section #overview data-live={ (PREFIX) "/api/overview" } {
            div.cards {
                @for status in TaskStatus::ALL {
                    a.card href={ (PREFIX) "/tasks?status=" (status.as_str()) } {
                        span.count data-count=(status.as_str()) { (counts.get(&status).copied().unwrap_or(0)) }
                        (layout::status(status))
                    }
                }
                div.card {
                    span.count data-field="queued" { (queue.total) }
                    span { "queued (" span data-field="delayed" { (queue.delayed) } " waiting to retry)" }
                }
            }
            div.charts {
                figure {
                    figcaption { "Finished per second" }
                    svg #chart-throughput viewBox="0 0 300 80" preserveAspectRatio="none" role="img" aria-label="tasks finished per second" {}
                }
                figure {
                    figcaption { "Failure rate, % of finished" }
                    svg #chart-failures viewBox="0 0 300 80" preserveAspectRatio="none" role="img" aria-label="failure rate" {}
                }
            }
            h2 { "Queue by priority" }
            table.queue {
                thead { tr { th { "Priority" } @for p in queue.ready.keys() { th { (p) } } } }
                tbody { tr { th { "Ready" } @for (p, n) in &queue.ready { td data-queue=(p) { (n) } } } }
            }
            h2 { "Hosts" }
            (hosts(&overview))
        }
        h2 { "Plugins on this host" }
        table {
            thead { tr { th { "Plugin" } th { "Digest" } th { "Contract" } th { "Loaded" } } }
            tbody {
                @for plugin in &overview.stats.host.plugins {
                    tr {
                        td { a href={ (PREFIX) "/tasks?plugin=" (plugin.name) } { (plugin.name) } }
                        td { (layout::digest(&plugin.digest)) }
                        td { (plugin.contract) }
                        td { (layout::time(plugin.loaded_at)) }
                    }
                }
            }
        }
    };
    layout::page("Overview", Some(&session), body).into_response()
}

fn hosts(overview: &Overview) -> Markup {
    html! {
        table #hosts {
            thead { tr { th { "Host" } th { "Last heartbeat" } th { "Running" } th { "Workers" } th { "Version" } th { "Plugins loaded" } } }
            tbody {
                @for host in &overview.hosts {
                    @let age = (overview.now - host.seen_at).num_seconds().max(0);
                    tr class=@if age > GONE_AFTER_SECONDS { "gone" } @else { "alive" } data-host=(host.name) {
                        td { (host.name) }
                        td { (layout::time(host.seen_at)) " (" (age) " s ago" @if age > GONE_AFTER_SECONDS { ", gone" } ")" }
                        td { (host.running) }
                        td { (host.workers) }
                        td { (host.version) }
                        td {
                            @for plugin in host.plugins.iter().filter(|p| p.load_ms.is_some()) {
                                span.plugin { (plugin.name) " " (layout::digest(&plugin.digest)) } " "
                            }
                        }
                    }
                }
            }
        }
    }
}
