//! Logs and metrics.
//!
//! Logs are JSON lines (or human-readable on a terminal) through `tracing`;
//! request, task and plugin ids travel as span and event fields. Metrics are
//! kept in a few counters and rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (servers).
    Stdout,
    /// Standard error (commands whose output is their result).
    Stderr,
}

/// Installs the global subscriber. The filter comes from `RUST_LOG`
/// (default: info, with wasmtime and cranelift quieter).
pub fn init_logging(format: LogFormat, target: LogTarget) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,wasmtime=warn,cranelift_codegen=warn,wasmtime_cranelift=warn")
    });
    let terminal = match target {
        LogTarget::Stdout => std::io::stdout().is_terminal(),
        LogTarget::Stderr => std::io::stderr().is_terminal(),
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !terminal,
    };
    let writer = match target {
        LogTarget::Stdout => BoxMakeWriter::new(std::io::stdout),
        LogTarget::Stderr => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}

/// Upper bounds of the task duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Counters rendered by `GET /metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<MetricsInner>,
}

#[derive(Debug, Default)]
struct MetricsInner {
    /// (method, route, status) → count.
    http_requests: BTreeMap<(String, String, u16), u64>,
    /// (plugin, outcome) → count of finished attempts.
    task_outcomes: BTreeMap<(String, &'static str), u64>,
    /// plugin → duration histogram.
    task_durations: BTreeMap<String, Histogram>,
    /// what (a status, `bodies`, `orphaned_bodies`) → deleted by retention.
    retention_deleted: BTreeMap<&'static str, u64>,
    /// cause (`notified`, `polled`) → reads of the fleet's plugin catalog.
    catalog_reads: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, MetricsInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one HTTP request. `route` is the matched route pattern, not the
    /// raw path, so ids do not explode the label set.
    pub fn record_request(&self, method: &str, route: &str, status: u16) {
        *self
            .lock()
            .http_requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }

    /// Counts one finished attempt of a `plugin` task and its duration.
    pub fn record_attempt(&self, plugin: &str, outcome: &'static str, duration: Duration) {
        let mut inner = self.lock();
        *inner
            .task_outcomes
            .entry((plugin.to_owned(), outcome))
            .or_default() += 1;
        let histogram = inner.task_durations.entry(plugin.to_owned()).or_default();
        let seconds = duration.as_secs_f64();
        for (bucket, bound) in histogram.buckets.iter_mut().zip(DURATION_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// Counts what the retention job deleted: tasks of a status, or bodies
    /// in the blob store (`bodies` of those tasks, `orphaned_bodies`).
    pub fn record_retention(&self, what: &'static str, deleted: usize) {
        *self.lock().retention_deleted.entry(what).or_default() += deleted as u64;
    }

    /// Counts one read of the fleet's plugin catalog, by what caused it
    /// (`notified`, `polled`).
    pub fn record_catalog_read(&self, cause: &'static str) {
        *self.lock().catalog_reads.entry(cause).or_default() += 1;
    }

    /// Renders the counters plus the gauges passed in, in the Prometheus text
    /// exposition format.
    pub fn render(&self, gauges: &Gauges) -> String {
        let inner = self.lock();
        let mut out = String::new();
        // Series of this host carry its name, so that a sum() across the
        // hosts of a system is right; the task and queue gauges describe the
        // whole system, alike on every host (take their max()).
        let host = escape(&gauges.host);
        let _ = writeln!(
            out,
            "# HELP taskflow_http_requests_total HTTP requests by method, route and status."
        );
        let _ = writeln!(out, "# TYPE taskflow_http_requests_total counter");
        for ((method, route, status), count) in &inner.http_requests {
            let _ = writeln!(
                out,
                "taskflow_http_requests_total{{host=\"{host}\",method=\"{}\",route=\"{}\",status=\"{status}\"}} {count}",
                escape(method),
                escape(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP taskflow_task_attempts_total Finished task attempts by plugin and outcome."
        );
        let _ = writeln!(out, "# TYPE taskflow_task_attempts_total counter");
        for ((plugin, outcome), count) in &inner.task_outcomes {
            let _ = writeln!(
                out,
                "taskflow_task_attempts_total{{host=\"{host}\",plugin=\"{}\",outcome=\"{outcome}\"}} {count}",
                escape(plugin)
            );
        }
        let _ = writeln!(
            out,
            "# HELP taskflow_task_duration_seconds Duration of task attempts by plugin."
        );
        let _ = writeln!(out, "# TYPE taskflow_task_duration_seconds histogram");
        for (plugin, histogram) in &inner.task_durations {
            let plugin = escape(plugin);
            for (count, bound) in histogram.buckets.iter().zip(DURATION_BUCKETS) {
                let _ = writeln!(
                    out,
                    "taskflow_task_duration_seconds_bucket{{host=\"{host}\",plugin=\"{plugin}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "taskflow_task_duration_seconds_bucket{{host=\"{host}\",plugin=\"{plugin}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "taskflow_task_duration_seconds_sum{{host=\"{host}\",plugin=\"{plugin}\"}} {}",
                histogram.sum
            );
            let _ = writeln!(
                out,
                "taskflow_task_duration_seconds_count{{host=\"{host}\",plugin=\"{plugin}\"}} {}",
                histogram.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP taskflow_retention_deleted_total What this host's retention job deleted: finished tasks by status, their bodies in the blob store, and bodies no task pointed to."
        );
        let _ = writeln!(out, "# TYPE taskflow_retention_deleted_total counter");
        for (what, count) in &inner.retention_deleted {
            let _ = writeln!(
                out,
                "taskflow_retention_deleted_total{{host=\"{host}\",what=\"{what}\"}} {count}"
            );
        }
        if !inner.catalog_reads.is_empty() {
            let _ = writeln!(
                out,
                "# HELP taskflow_catalog_reads_total Reads of the fleet's plugin catalog by this host, by cause: a notification, or the poll (no notification ever means LISTEN does not reach this host, e.g. through a pooler in transaction mode)."
            );
            let _ = writeln!(out, "# TYPE taskflow_catalog_reads_total counter");
            for (cause, count) in &inner.catalog_reads {
                let _ = writeln!(
                    out,
                    "taskflow_catalog_reads_total{{host=\"{host}\",cause=\"{cause}\"}} {count}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP taskflow_tasks Tasks by status, in the whole system."
        );
        let _ = writeln!(out, "# TYPE taskflow_tasks gauge");
        for (status, count) in &gauges.tasks_by_status {
            let _ = writeln!(out, "taskflow_tasks{{status=\"{status}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP taskflow_queue_depth Tasks waiting in the queue by priority, in the whole system."
        );
        let _ = writeln!(out, "# TYPE taskflow_queue_depth gauge");
        for (priority, count) in &gauges.queue_depth {
            let _ = writeln!(
                out,
                "taskflow_queue_depth{{priority=\"{priority}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP taskflow_queue_delayed Tasks waiting for their retry backoff, in the whole system."
        );
        let _ = writeln!(out, "# TYPE taskflow_queue_delayed gauge");
        let _ = writeln!(out, "taskflow_queue_delayed {}", gauges.delayed);
        let _ = writeln!(
            out,
            "# HELP taskflow_tasks_running Tasks running on this host now."
        );
        let _ = writeln!(out, "# TYPE taskflow_tasks_running gauge");
        let _ = writeln!(
            out,
            "taskflow_tasks_running{{host=\"{host}\"}} {}",
            gauges.running
        );
        let _ = writeln!(
            out,
            "# HELP taskflow_plugins_loaded Plugins loaded on this host."
        );
        let _ = writeln!(out, "# TYPE taskflow_plugins_loaded gauge");
        let _ = writeln!(
            out,
            "taskflow_plugins_loaded{{host=\"{host}\"}} {}",
            gauges.plugins
        );
        if let Some(requests) = gauges.queue_requests {
            let _ = writeln!(
                out,
                "# HELP taskflow_queue_requests_total Requests this host made to the queue service (SQS; on the PostgreSQL queue its claim and depth queries), by purpose: moving tasks, or answering stats, metrics and readiness."
            );
            let _ = writeln!(out, "# TYPE taskflow_queue_requests_total counter");
            for (purpose, count) in [("tasks", requests.tasks), ("status", requests.status)] {
                let _ = writeln!(
                    out,
                    "taskflow_queue_requests_total{{host=\"{host}\",purpose=\"{purpose}\"}} {count}"
                );
            }
        }
        out
    }
}

/// Point-in-time values read from the queue, storage and registry at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// This host's name.
    pub host: String,
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
    /// Requests this host made to the queue service, where it counts them.
    pub queue_requests: Option<crate::queue::QueueRequests>,
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let metrics = Metrics::default();
        metrics.record_request("GET", "/tasks/{id}", 200);
        metrics.record_attempt("echo", "completed", Duration::from_millis(3));
        metrics.record_attempt("echo", "completed", Duration::from_millis(200));
        let text = metrics.render(&Gauges {
            host: "h1".into(),
            queue_depth: vec![(1, 4)],
            ..Gauges::default()
        });
        assert!(text.contains(
            "taskflow_http_requests_total{host=\"h1\",method=\"GET\",route=\"/tasks/{id}\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "taskflow_task_attempts_total{host=\"h1\",plugin=\"echo\",outcome=\"completed\"} 2"
        ));
        assert!(text.contains(
            "taskflow_task_duration_seconds_bucket{host=\"h1\",plugin=\"echo\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "taskflow_task_duration_seconds_bucket{host=\"h1\",plugin=\"echo\",le=\"0.25\"} 2"
        ));
        assert!(
            text.contains("taskflow_task_duration_seconds_count{host=\"h1\",plugin=\"echo\"} 2")
        );
        assert!(text.contains("taskflow_queue_depth{priority=\"1\"} 4"));
        assert!(text.contains("taskflow_tasks_running{host=\"h1\"} 0"));
    }
}
