//! Metrics, kept and rendered by `prometheus-client` for `GET /metrics`
//! (OpenMetrics text, which Prometheus reads).
//!
//! Series of this host carry its name (`host`), so that a `sum()` across the
//! hosts of a system is right; the task and queue gauges describe the whole
//! system, alike on every host (take their `max()`), and carry none.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the task duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    plugin: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabels {
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurposeLabels {
    purpose: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabels {
    priority: u8,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The metrics of one host, rendered by `GET /metrics`.
pub struct Metrics {
    /// Every metric; rendering reads it under the lock that the scrape-time
    /// gauges are set under, so one scrape sees one set of them.
    registry: Mutex<Registry>,
    http_requests: Family<RequestLabels, Counter>,
    task_attempts: Family<AttemptLabels, Counter>,
    task_durations: Family<PluginLabels, Histogram, fn() -> Histogram>,
    retention_deleted: Family<WhatLabels, Counter>,
    catalog_reads: Family<CauseLabels, Counter>,
    queue_requests: Family<PurposeLabels, Counter>,
    running: Gauge,
    plugins_loaded: Gauge,
    tasks: Family<StatusLabels, Gauge>,
    queue_depth: Family<PriorityLabels, Gauge>,
    queue_delayed: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of the host named `host`.
    pub fn new(host: &str) -> Self {
        let metrics = Self {
            registry: Mutex::new(Registry::default()),
            http_requests: Family::default(),
            task_attempts: Family::default(),
            task_durations: Family::new_with_constructor(duration_histogram),
            retention_deleted: Family::default(),
            catalog_reads: Family::default(),
            queue_requests: Family::default(),
            running: Gauge::default(),
            plugins_loaded: Gauge::default(),
            tasks: Family::default(),
            queue_depth: Family::default(),
            queue_delayed: Gauge::default(),
        };
        {
            let mut registry = metrics.lock();
            let this_host =
                registry.sub_registry_with_label(("host".into(), host.to_owned().into()));
            this_host.register(
                "taskflow_http_requests",
                "HTTP requests by method, route and status",
                metrics.http_requests.clone(),
            );
            this_host.register(
                "taskflow_task_attempts",
                "Finished task attempts by plugin and outcome",
                metrics.task_attempts.clone(),
            );
            this_host.register(
                "taskflow_task_duration_seconds",
                "Duration of task attempts by plugin",
                metrics.task_durations.clone(),
            );
            this_host.register(
                "taskflow_retention_deleted",
                "What this host's retention job deleted: finished tasks by status, their bodies in the blob store, and bodies no task pointed to",
                metrics.retention_deleted.clone(),
            );
            this_host.register(
                "taskflow_catalog_reads",
                "Reads of the fleet's plugin catalog by this host, by cause: a notification, or the poll (no notification ever means LISTEN does not reach this host, e.g. through a pooler in transaction mode)",
                metrics.catalog_reads.clone(),
            );
            this_host.register(
                "taskflow_queue_requests",
                "Requests this host made to the queue service (SQS; on the PostgreSQL queue its claim and depth queries), by purpose: moving tasks, or answering stats, metrics and readiness",
                metrics.queue_requests.clone(),
            );
            this_host.register(
                "taskflow_tasks_running",
                "Tasks running on this host now",
                metrics.running.clone(),
            );
            this_host.register(
                "taskflow_plugins_loaded",
                "Plugins loaded on this host",
                metrics.plugins_loaded.clone(),
            );
            registry.register(
                "taskflow_tasks",
                "Tasks by status, in the whole system",
                metrics.tasks.clone(),
            );
            registry.register(
                "taskflow_queue_depth",
                "Tasks waiting in the queue by priority, in the whole system",
                metrics.queue_depth.clone(),
            );
            registry.register(
                "taskflow_queue_delayed",
                "Tasks waiting for their retry backoff, in the whole system",
                metrics.queue_delayed.clone(),
            );
        }
        metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one HTTP request. `route` is the matched route pattern, not the
    /// raw path, so ids do not explode the label set.
    pub fn record_request(&self, method: &str, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// Counts one finished attempt of a `plugin` task and its duration.
    pub fn record_attempt(&self, plugin: &str, outcome: &'static str, duration: Duration) {
        self.task_attempts
            .get_or_create(&AttemptLabels {
                plugin: plugin.to_owned(),
                outcome,
            })
            .inc();
        self.task_durations
            .get_or_create(&PluginLabels {
                plugin: plugin.to_owned(),
            })
            .observe(duration.as_secs_f64());
    }

    /// Counts what the retention job deleted: tasks of a status, or bodies
    /// in the blob store (`bodies` of those tasks, `orphaned_bodies`).
    pub fn record_retention(&self, what: &'static str, deleted: usize) {
        self.retention_deleted
            .get_or_create(&WhatLabels { what })
            .inc_by(deleted as u64);
    }

    /// Counts one read of the fleet's plugin catalog, by what caused it
    /// (`notified`, `polled`).
    pub fn record_catalog_read(&self, cause: &'static str) {
        self.catalog_reads
            .get_or_create(&CauseLabels { cause })
            .inc();
    }

    /// Renders every metric, with the gauges read at this scrape, in the
    /// OpenMetrics text format.
    pub fn render(&self, gauges: &Gauges) -> String {
        let registry = self.lock();
        for (status, count) in &gauges.tasks_by_status {
            self.tasks
                .get_or_create(&StatusLabels {
                    status: status.clone(),
                })
                .set(saturating(*count));
        }
        for (priority, count) in &gauges.queue_depth {
            self.queue_depth
                .get_or_create(&PriorityLabels {
                    priority: *priority,
                })
                .set(saturating(*count));
        }
        self.queue_delayed.set(saturating(gauges.delayed));
        self.running.set(saturating(gauges.running as u64));
        self.plugins_loaded.set(saturating(gauges.plugins as u64));
        if let Some((tasks, status)) = gauges.queue_requests {
            // Totals the queue keeps itself: set, not counted here.
            for (purpose, total) in [("tasks", tasks), ("status", status)] {
                self.queue_requests
                    .get_or_create(&PurposeLabels { purpose })
                    .inner()
                    .store(total, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "cannot render the metrics");
        }
        out
    }
}

fn saturating(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Point-in-time values read from the queue, storage and registry at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// status → count.
    pub tasks_by_status: Vec<(String, u64)>,
    /// priority → ready tasks.
    pub queue_depth: Vec<(u8, u64)>,
    /// Tasks in retry backoff.
    pub delayed: u64,
    /// Tasks running.
    pub running: usize,
    /// Plugins loaded.
    pub plugins: usize,
    /// Requests this host made to the queue service where it counts them:
    /// (moving tasks, answering status).
    pub queue_requests: Option<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let metrics = Metrics::new("h1");
        metrics.record_request("GET", "/tasks/{id}", 200);
        metrics.record_attempt("echo", "completed", Duration::from_millis(3));
        metrics.record_attempt("echo", "completed", Duration::from_millis(200));
        let text = metrics.render(&Gauges {
            queue_depth: vec![(1, 4)],
            ..Gauges::default()
        });
        for line in [
            "taskflow_http_requests_total{host=\"h1\",method=\"GET\",route=\"/tasks/{id}\",status=\"200\"} 1",
            "taskflow_task_attempts_total{host=\"h1\",plugin=\"echo\",outcome=\"completed\"} 2",
            "taskflow_task_duration_seconds_bucket{host=\"h1\",le=\"0.005\",plugin=\"echo\"} 1",
            "taskflow_task_duration_seconds_bucket{host=\"h1\",le=\"0.25\",plugin=\"echo\"} 2",
            "taskflow_task_duration_seconds_count{host=\"h1\",plugin=\"echo\"} 2",
            "taskflow_queue_depth{priority=\"1\"} 4",
            "taskflow_tasks_running{host=\"h1\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
