//! Which tasks a list asks for: the filters every store, the API and the
//! dashboard share, and the rule deciding whether a task matches them.

use chrono::{DateTime, Utc};

use crate::failure::FailureKind;
use crate::task::{Task, TaskStatus};

/// Which tasks to list, and which page. Every filter set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks of this plugin.
    pub plugin: Option<String>,
    /// Only tasks of this priority.
    pub priority: Option<u8>,
    /// Only tasks whose latest attempt ran, or runs, on this host.
    pub host: Option<String>,
    /// Only tasks whose latest attempt failed this way.
    pub error_kind: Option<FailureKind>,
    /// Only tasks submitted at or after this instant.
    pub submitted_after: Option<DateTime<Utc>>,
    /// Only tasks submitted before this instant.
    pub submitted_before: Option<DateTime<Utc>>,
    /// Only the task submitted with this idempotency key.
    pub idempotency_key: Option<String>,
    /// Most tasks on the page; at least 1.
    pub limit: usize,
    /// `next_cursor` of the previous page; `None` for the first page.
    pub cursor: Option<String>,
}

/// What a list filter looks at in a task: a store may keep just these in
/// its index.
#[derive(Debug, Clone, Copy)]
pub struct ListFacts<'a> {
    /// Its status.
    pub status: TaskStatus,
    /// Its plugin.
    pub plugin: &'a str,
    /// Its priority.
    pub priority: u8,
    /// The host of its latest attempt.
    pub host: Option<&'a str>,
    /// How its latest attempt failed.
    pub error_kind: Option<FailureKind>,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
    /// Its idempotency key.
    pub idempotency_key: Option<&'a str>,
}

impl<'a> ListFacts<'a> {
    /// The facts of `task`.
    pub fn of(task: &'a Task) -> Self {
        Self {
            status: task.status,
            plugin: &task.plugin,
            priority: task.priority,
            host: task.host.as_deref(),
            error_kind: task.last_error.as_ref().map(|e| e.kind),
            submitted_at: task.created_at,
            idempotency_key: task.idempotency_key.as_deref(),
        }
    }
}

impl ListQuery {
    /// Whether a task with these facts is on the list.
    pub fn matches(&self, facts: &ListFacts<'_>) -> bool {
        self.status.is_none_or(|wanted| wanted == facts.status)
            && self
                .plugin
                .as_deref()
                .is_none_or(|wanted| wanted == facts.plugin)
            && self.priority.is_none_or(|wanted| wanted == facts.priority)
            && self
                .host
                .as_deref()
                .is_none_or(|wanted| Some(wanted) == facts.host)
            && self
                .error_kind
                .is_none_or(|wanted| Some(wanted) == facts.error_kind)
            && self
                .submitted_after
                .is_none_or(|from| facts.submitted_at >= from)
            && self
                .submitted_before
                .is_none_or(|to| facts.submitted_at < to)
            && self
                .idempotency_key
                .as_deref()
                .is_none_or(|wanted| Some(wanted) == facts.idempotency_key)
    }

    /// Whether `task` is on the list.
    pub fn matches_task(&self, task: &Task) -> bool {
        self.matches(&ListFacts::of(task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{NewTask, TaskError};

    fn task() -> Task {
        let new: NewTask = serde_json::from_value(serde_json::json!({
            "plugin": "echo", "payload": {}, "priority": 3, "idempotency_key": "k-1"
        }))
        .expect("new task");
        let mut task = new.validate(7).expect("valid");
        task.host = Some("host-a".into());
        task.last_error = Some(TaskError {
            kind: FailureKind::Timeout,
            message: "late".into(),
        });
        task
    }

    #[test]
    fn every_filter_must_hold() {
        let task = task();
        let at = task.created_at;
        let hit = [
            ListQuery::default(),
            ListQuery {
                status: Some(TaskStatus::Pending),
                ..Default::default()
            },
            ListQuery {
                plugin: Some("echo".into()),
                ..Default::default()
            },
            ListQuery {
                priority: Some(3),
                ..Default::default()
            },
            ListQuery {
                host: Some("host-a".into()),
                ..Default::default()
            },
            ListQuery {
                error_kind: Some(FailureKind::Timeout),
                ..Default::default()
            },
            ListQuery {
                submitted_after: Some(at),
                submitted_before: Some(at + chrono::Duration::seconds(1)),
                ..Default::default()
            },
            ListQuery {
                idempotency_key: Some("k-1".into()),
                ..Default::default()
            },
        ];
        for query in hit {
            assert!(query.matches_task(&task), "{query:?}");
        }
        let miss = [
            ListQuery {
                status: Some(TaskStatus::Failed),
                ..Default::default()
            },
            ListQuery {
                plugin: Some("other".into()),
                ..Default::default()
            },
            ListQuery {
                priority: Some(4),
                ..Default::default()
            },
            ListQuery {
                host: Some("host-b".into()),
                ..Default::default()
            },
            ListQuery {
                error_kind: Some(FailureKind::Trap),
                ..Default::default()
            },
            ListQuery {
                submitted_after: Some(at + chrono::Duration::seconds(1)),
                ..Default::default()
            },
            ListQuery {
                submitted_before: Some(at),
                ..Default::default()
            },
            ListQuery {
                idempotency_key: Some("k-2".into()),
                ..Default::default()
            },
            ListQuery {
                priority: Some(3),
                host: Some("host-b".into()),
                ..Default::default()
            },
        ];
        for query in miss {
            assert!(!query.matches_task(&task), "{query:?}");
        }
    }
}
