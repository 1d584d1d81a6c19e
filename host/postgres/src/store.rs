//! Task metadata in PostgreSQL, for hosts that share their state.
//!
//! One row per task: the whole task as JSON text (`doc`, the same document a
//! task file of the embedded store holds) beside the columns that queries
//! filter and sort by. The schema is created and upgraded by the migrations in
//! `host/postgres/migrations/`, run at connect.

mod completer;
pub mod connect;
mod due;
pub mod fleet_settings;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use taskflow_backend::storage::lease::{
    Change, ChangeFn, Claim, Held, LeaseState, Published, Renewed, Saved, Updated,
};
use taskflow_backend::storage::{
    Cursor, Expired, HostBeat, ListQuery, StatusCounts, StorageError, Submitted, TaskPage,
    TaskStore,
};
use taskflow_model::task::{Task, TaskId, TaskStatus};

/// Connections a host keeps open by default.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// PostgreSQL task store. Cheap to clone (a connection pool). Any number of
/// hosts may share one database: who runs a task is decided by its lease.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Writes the outcomes of this host's tasks in batches.
    completer: completer::Completer,
    /// Claims of the tasks-table queue not yet asked for.
    due: std::sync::Arc<due::Due>,
}

impl PgStore {
    /// Connects to `options` with up to `pool_size` connections and brings
    /// the schema up to date.
    pub async fn connect(options: PgConnectOptions, pool_size: u32) -> Result<Self, StorageError> {
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(2))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|e| StorageError::Unavailable(connect::explain(&e, &options)))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| {
                StorageError::Unavailable(format!(
                    "cannot bring the database schema up to date: {e}"
                ))
            })?;
        let completer = completer::Completer::start(pool.clone());
        Ok(Self {
            pool,
            completer,
            due: std::sync::Arc::default(),
        })
    }

    /// The connection pool (the PostgreSQL queue shares it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Wakes whoever keeps the database's credentials when PostgreSQL refuses
/// them (a rotated password): one database per process, so one signal.
pub static CREDENTIALS_REFUSED: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn unavailable(error: sqlx::Error) -> StorageError {
    if connect::refused_credentials(&error) {
        CREDENTIALS_REFUSED.notify_one();
    }
    StorageError::Unavailable(format!("PostgreSQL: {error}"))
}

/// A failed `COMMIT`: refused by the server (rolled back), or unanswered
/// (the connection broke after it was sent: it may have been applied).
fn commit_unknown(error: sqlx::Error) -> StorageError {
    match error {
        sqlx::Error::Database(_) => unavailable(error),
        error => StorageError::OutcomeUnknown(format!("PostgreSQL: {error}")),
    }
}

fn task_of(id: TaskId, doc: &str) -> Result<Task, StorageError> {
    serde_json::from_str(doc).map_err(|source| StorageError::Corrupt {
        path: format!("postgres:tasks/{id}").into(),
        source,
    })
}

fn sequence_of(task: &Task) -> i64 {
    // Sequences start at 0 and grow by one per submission: far from i64::MAX.
    i64::try_from(task.sequence).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl TaskStore for PgStore {
    async fn save(&self, task: &Task) -> Result<(), StorageError> {
        let mut connection = self.pool.acquire().await.map_err(unavailable)?;
        upsert(&mut connection, task).await
    }

    async fn insert(&self, tasks: Vec<Task>) -> Result<Vec<Submitted>, StorageError> {
        let mut transaction = self.pool.begin().await.map_err(unavailable)?;
        let count = i64::try_from(tasks.len()).unwrap_or(i64::MAX);
        let sequences: Vec<i64> =
            sqlx::query_scalar("SELECT nextval('tasks_sequence') FROM generate_series(1, $1)")
                .bind(count)
                .fetch_all(&mut *transaction)
                .await
                .map_err(unavailable)?;
        let mut tasks = tasks;
        for (task, sequence) in tasks.iter_mut().zip(sequences) {
            task.sequence = u64::try_from(sequence).unwrap_or_default();
        }
        // One statement for the batch. A row whose key a racing insert
        // holds waits for that commit, then is skipped: the stored task is
        // read instead.
        let docs = tasks.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let inserted: Vec<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO tasks (id, sequence, plugin, priority, status, idempotency_key, doc, visible_at, updated_at)
             SELECT id, sequence, plugin, priority, status, idempotency_key, doc, visible_at, now()
             FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::smallint[], $5::text[], $6::text[], $7::text[], $8::timestamptz[])
                 AS n(id, sequence, plugin, priority, status, idempotency_key, doc, visible_at)
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
        )
        .bind(tasks.iter().map(|t| *t.id.as_uuid()).collect::<Vec<_>>())
        .bind(tasks.iter().map(sequence_of).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.plugin.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| i16::from(t.priority)).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.status.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.idempotency_key.as_deref()).collect::<Vec<_>>())
        .bind(docs)
        .bind(tasks.iter().map(visible_at).collect::<Vec<_>>())
        .fetch_all(&mut *transaction)
        .await
        .map_err(unavailable)?;
        let inserted: std::collections::HashSet<uuid::Uuid> = inserted.into_iter().collect();
        let taken: Vec<&str> = tasks
            .iter()
            .filter(|t| !inserted.contains(t.id.as_uuid()))
            .filter_map(|t| t.idempotency_key.as_deref())
            .collect();
        let mut earlier = std::collections::HashMap::new();
        if !taken.is_empty() {
            let rows: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
                "SELECT id, idempotency_key, doc FROM tasks WHERE idempotency_key = ANY($1)",
            )
            .bind(&taken)
            .fetch_all(&mut *transaction)
            .await
            .map_err(unavailable)?;
            for (id, key, doc) in rows {
                earlier.insert(key, task_of(TaskId::from(id), &doc)?);
            }
        }
        let mut submitted = Vec::with_capacity(tasks.len());
        for task in tasks {
            if inserted.contains(task.id.as_uuid()) {
                submitted.push(Submitted {
                    task,
                    created: true,
                });
                continue;
            }
            let existing = task
                .idempotency_key
                .as_deref()
                .and_then(|key| earlier.remove(key))
                .ok_or_else(|| {
                    StorageError::Unavailable(format!("task {} was not stored", task.id))
                })?;
            submitted.push(Submitted {
                task: existing,
                created: false,
            });
        }
        transaction.commit().await.map_err(commit_unknown)?;
        Ok(submitted)
    }

    async fn restore(&self, task: &Task) -> Result<(), StorageError> {
        let mut transaction = self.pool.begin().await.map_err(unavailable)?;
        upsert(&mut transaction, task).await?;
        sqlx::query("SELECT setval('tasks_sequence', GREATEST($1 + 1, (SELECT last_value FROM tasks_sequence)))")
            .bind(sequence_of(task))
            .execute(&mut *transaction)
            .await
            .map_err(unavailable)?;
        transaction.commit().await.map_err(unavailable)
    }

    async fn load(&self, id: TaskId) -> Result<Option<Task>, StorageError> {
        let doc: Option<String> = sqlx::query_scalar("SELECT doc FROM tasks WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        doc.map(|doc| task_of(id, &doc)).transpose()
    }

    async fn delete(&self, id: TaskId) -> Result<bool, StorageError> {
        let deleted = sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn list(&self, query: &ListQuery) -> Result<TaskPage, StorageError> {
        if query.limit == 0 {
            return Err(StorageError::InvalidLimit);
        }
        let after = query.cursor.as_deref().map(Cursor::decode).transpose()?;
        let limit = i64::try_from(query.limit)
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT id, doc FROM tasks
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::text IS NULL OR plugin = $2)
               AND ($3::bigint IS NULL OR (sequence, id) > ($3, $4))
               AND ($6::smallint IS NULL OR priority = $6)
               AND ($7::text IS NULL OR host = $7)
               AND ($8::text IS NULL OR error_kind = $8)
               AND ($9::timestamptz IS NULL OR submitted_at >= $9)
               AND ($10::timestamptz IS NULL OR submitted_at < $10)
               AND ($11::text IS NULL OR idempotency_key = $11)
             ORDER BY sequence, id
             LIMIT $5",
        )
        .bind(query.status.map(TaskStatus::as_str))
        .bind(query.plugin.as_deref())
        .bind(after.map(|c| i64::try_from(c.sequence).unwrap_or(i64::MAX)))
        .bind(after.map(|c| *c.id.as_uuid()))
        .bind(limit)
        .bind(query.priority.map(i16::from))
        .bind(query.host.as_deref())
        .bind(query.error_kind.map(|kind| kind.to_string()))
        .bind(query.submitted_after)
        .bind(query.submitted_before)
        .bind(query.idempotency_key.as_deref())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut tasks = tasks_of(rows)?;
        let next_cursor = if tasks.len() > query.limit {
            tasks.truncate(query.limit);
            tasks.last().map(|task| Cursor::after(task).encode())
        } else {
            None
        };
        Ok(TaskPage { tasks, next_cursor })
    }

    async fn all(&self) -> Result<Vec<Task>, StorageError> {
        let rows: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, doc FROM tasks ORDER BY sequence, id")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        rows.into_iter()
            .map(|(id, doc)| task_of(TaskId::from(id), &doc))
            .collect()
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<Task>, StorageError> {
        let row: Option<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, doc FROM tasks WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        row.map(|(id, doc)| task_of(TaskId::from(id), &doc))
            .transpose()
    }

    async fn counts(&self) -> Result<StatusCounts, StorageError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, sum(n)::bigint FROM (
                     SELECT status, n FROM task_counts
                     UNION ALL
                     SELECT status, n FROM task_count_changes
                 ) counted GROUP BY status",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let found: BTreeMap<String, i64> = rows.into_iter().collect();
        Ok(TaskStatus::ALL
            .into_iter()
            .map(|status| {
                (
                    status,
                    found
                        .get(status.as_str())
                        .map_or(0, |n| u64::try_from(*n).unwrap_or(0)),
                )
            })
            .collect())
    }

    async fn check(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn update(&self, id: TaskId, change: ChangeFn) -> Result<Option<Updated>, StorageError> {
        let mut transaction = self.pool.begin().await.map_err(unavailable)?;
        let row: Option<(String, Option<String>, i64, bool, bool)> = sqlx::query_as(
            "SELECT doc, owner, lease_token,
                    status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at <= now()),
                    cancel_requested
             FROM tasks WHERE id = $1 FOR UPDATE",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *transaction)
        .await
        .map_err(unavailable)?;
        let Some((doc, owner, token, expired, cancel_requested)) = row else {
            return Ok(None);
        };
        let mut task = task_of(id, &doc)?;
        let state = LeaseState {
            owner,
            token: token_of(token),
            expired,
            cancel_requested,
        };
        let change = change(&mut task, &state);
        let token = match &change {
            Change::Keep => {
                return Ok(Some(Updated {
                    task,
                    token: state.token,
                    change,
                }));
            }
            Change::Save => {
                write_changed(&mut transaction, &task).await?;
                state.token
            }
            Change::Claim { owner, ttl } => claim_row(&mut transaction, &task, owner, *ttl).await?,
            Change::RequestCancel => {
                sqlx::query("UPDATE tasks SET cancel_requested = true WHERE id = $1")
                    .bind(id.as_uuid())
                    .execute(&mut *transaction)
                    .await
                    .map_err(unavailable)?;
                state.token
            }
        };
        transaction.commit().await.map_err(unavailable)?;
        Ok(Some(Updated {
            task,
            token,
            change,
        }))
    }

    /// A task [`claim_due`](Self::claim_due) claimed for `owner` is handed
    /// over as claimed; any other is claimed by [`update`](TaskStore::update).
    async fn claim(
        &self,
        id: TaskId,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<Claim, StorageError> {
        match self.claimed_due(id, owner) {
            Some(claim) => Ok(claim),
            None => taskflow_backend::storage::lease::claim_by_update(self, id, owner, ttl).await,
        }
    }

    async fn save_leased(&self, task: &Task, token: u64) -> Result<Saved, StorageError> {
        self.completer.save(task, token).await
    }

    async fn renew(
        &self,
        owner: &str,
        held: &[Held],
        ttl: std::time::Duration,
    ) -> Result<Vec<Renewed>, StorageError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<uuid::Uuid> = held.iter().map(|h| *h.id.as_uuid()).collect();
        let tokens: Vec<i64> = held
            .iter()
            .map(|h| i64::try_from(h.token).unwrap_or(i64::MAX))
            .collect();
        let progress: Vec<i16> = held.iter().map(|h| i16::from(h.progress)).collect();
        // Unchanged lines are not sent again (NULL keeps what is there).
        let logs: Vec<Option<String>> = held
            .iter()
            .map(|h| {
                h.logs
                    .as_ref()
                    .map(|logs| {
                        serde_json::to_string(logs).map_err(|source| StorageError::Encode {
                            what: format!("the log lines of task {}", h.id),
                            source,
                        })
                    })
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let rows: Vec<(uuid::Uuid, bool)> = sqlx::query_as(
            // Rows locked in id order, as the batch completer locks them.
            "WITH locked AS MATERIALIZED (
                 SELECT id FROM tasks WHERE id = ANY($3) ORDER BY id FOR UPDATE
             )
             UPDATE tasks t SET lease_expires_at = now() + $2 * interval '1 millisecond',
                 progress = u.progress, live_logs = COALESCE(u.logs, t.live_logs)
             FROM unnest($3::uuid[], $4::bigint[], $5::smallint[], $6::text[]) AS u(id, token, progress, logs)
             WHERE t.id = u.id AND t.id IN (SELECT id FROM locked)
               AND t.lease_token = u.token AND t.status = 'running' AND t.owner = $1
             RETURNING t.id, t.cancel_requested",
        )
        .bind(owner)
        .bind(millis(ttl))
        .bind(ids)
        .bind(tokens)
        .bind(progress)
        .bind(logs)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(id, cancel_requested)| Renewed {
                id: TaskId::from(id),
                cancel_requested,
            })
            .collect())
    }

    async fn expired(&self, limit: usize) -> Result<Vec<TaskId>, StorageError> {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM tasks
             WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at <= now())
             ORDER BY lease_expires_at NULLS FIRST LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(ids.into_iter().map(TaskId::from).collect())
    }

    async fn published(&self, id: TaskId) -> Result<Option<Published>, StorageError> {
        let row: Option<(Option<i16>, Option<String>)> = sqlx::query_as(
            "SELECT progress, live_logs FROM tasks WHERE id = $1 AND status = 'running'",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some((progress, logs)) = row else {
            return Ok(None);
        };
        // Lines a host published are shown, never needed: unreadable ones
        // (a newer host's, say) are left out.
        let logs = logs
            .and_then(|text| {
                serde_json::from_str(&text)
                    .inspect_err(|e| tracing::warn!(task_id = %id, error = %e, "cannot read the published log lines of a running task"))
                    .ok()
            })
            .unwrap_or_default();
        Ok(Some(Published {
            progress: progress.and_then(|p| u8::try_from(p).ok()).unwrap_or(0),
            logs,
        }))
    }

    async fn mark_enqueued(&self, ids: &[TaskId]) -> Result<(), StorageError> {
        let ids: Vec<uuid::Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
        sqlx::query("UPDATE tasks SET enqueued = true WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn claim_unsent(
        &self,
        age: std::time::Duration,
        hold: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<Task>, StorageError> {
        let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
            "UPDATE tasks SET sweep_after = now() + $2 * interval '1 millisecond'
             WHERE id IN (
                 SELECT id FROM tasks
                 WHERE status = 'pending' AND NOT enqueued
                   AND updated_at < now() - $1 * interval '1 millisecond'
                   AND (sweep_after IS NULL OR sweep_after < now())
                 ORDER BY updated_at LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, doc",
        )
        .bind(millis(age))
        .bind(millis(hold))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut tasks = tasks_of(rows)?;
        tasks.sort_by_key(|t| (t.priority, t.sequence));
        Ok(tasks)
    }

    async fn expire(
        &self,
        status: TaskStatus,
        finished_before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<Expired>, StorageError> {
        if !status.is_terminal() {
            return Ok(Vec::new());
        }
        // Only the keys of bodies are read back, not whole documents.
        let rows: Vec<(uuid::Uuid, Option<String>, Option<String>, Vec<String>)> = sqlx::query_as(
            "DELETE FROM tasks WHERE id IN (
                 SELECT id FROM tasks WHERE status = $1 AND updated_at < $2
                 ORDER BY updated_at LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, doc::json -> 'payload_blob' ->> 'key', doc::json -> 'result_blob' ->> 'key',
                 ARRAY(SELECT attempt -> 'logs_blob' ->> 'key'
                       FROM json_array_elements(doc::json -> 'history') AS attempt
                       WHERE attempt -> 'logs_blob' ->> 'key' IS NOT NULL)",
        )
        .bind(status.as_str())
        .bind(finished_before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(id, payload, result, logs)| Expired {
                id: TaskId::from(id),
                blobs: payload.into_iter().chain(result).chain(logs).collect(),
            })
            .collect())
    }

    async fn lead(
        &self,
        job: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StorageError> {
        let held: Option<String> = sqlx::query_scalar(
            "INSERT INTO fleet_jobs (name, owner, held_until)
             VALUES ($1, $2, now() + $3 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, held_until = excluded.held_until
             WHERE fleet_jobs.owner = excluded.owner OR fleet_jobs.held_until < now()
             RETURNING owner",
        )
        .bind(job)
        .bind(owner)
        .bind(millis(ttl))
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(held.is_some())
    }

    async fn beat(
        &self,
        beat: &HostBeat,
        forget_before: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let doc = serde_json::to_string(beat).map_err(|source| StorageError::Encode {
            what: format!("the heartbeat of host {}", beat.name),
            source,
        })?;
        sqlx::query(
            "INSERT INTO hosts (name, beat, seen_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET beat = excluded.beat, seen_at = excluded.seen_at",
        )
        .bind(&beat.name)
        .bind(doc)
        .bind(beat.seen_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        sqlx::query("DELETE FROM hosts WHERE seen_at < $1")
            .bind(forget_before)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn hosts(&self, since: DateTime<Utc>) -> Result<Vec<HostBeat>, StorageError> {
        let docs: Vec<String> =
            sqlx::query_scalar("SELECT beat FROM hosts WHERE seen_at >= $1 ORDER BY name")
                .bind(since)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        // A row no host of this version can read is left out, not fatal.
        Ok(docs
            .iter()
            .filter_map(|doc| serde_json::from_str(doc).ok())
            .collect())
    }

    async fn compact_counts(&self) -> Result<(), StorageError> {
        sqlx::query(
            "WITH folded AS (DELETE FROM task_count_changes RETURNING status, n)
             INSERT INTO task_counts (status, n)
             SELECT status, sum(n) FROM folded GROUP BY status
             ON CONFLICT (status) DO UPDATE SET n = task_counts.n + excluded.n",
        )
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

/// The tasks of `(id, doc)` rows, in their order.
fn tasks_of(rows: Vec<(uuid::Uuid, String)>) -> Result<Vec<Task>, StorageError> {
    rows.into_iter()
        .map(|(id, doc)| task_of(TaskId::from(id), &doc))
        .collect()
}

fn token_of(token: i64) -> u64 {
    u64::try_from(token).unwrap_or_default()
}

fn millis(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// When a pending task may be claimed from the tasks-table queue.
fn visible_at(task: &Task) -> Option<chrono::DateTime<chrono::Utc>> {
    (task.status == TaskStatus::Pending)
        .then_some(task.retry_at)
        .flatten()
}

/// Writes the changed state of an existing task (its lease holder's writes
/// go through the batch completer). A task no longer running drops its lease.
async fn write_changed(connection: &mut PgConnection, task: &Task) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE tasks SET status = $2, doc = $3, visible_at = $4, updated_at = now(),
                lease_expires_at = CASE WHEN $2 = 'running' THEN lease_expires_at END,
                cancel_requested = $2 = 'running' AND cancel_requested,
                progress = CASE WHEN $2 = 'running' THEN progress END,
                live_logs = CASE WHEN $2 = 'running' THEN live_logs END
         WHERE id = $1",
    )
    .bind(task.id.as_uuid())
    .bind(task.status.as_str())
    .bind(encode(task)?)
    .bind(visible_at(task))
    .execute(connection)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Writes a claimed task with its new lease; the new token.
pub(crate) async fn claim_row(
    connection: &mut PgConnection,
    task: &Task,
    owner: &str,
    ttl: std::time::Duration,
) -> Result<u64, StorageError> {
    let token: i64 = sqlx::query_scalar(
        "UPDATE tasks SET status = $2, doc = $3, visible_at = NULL, updated_at = now(), owner = $4,
                lease_token = lease_token + 1, lease_expires_at = now() + $5 * interval '1 millisecond',
                cancel_requested = false, progress = 0, live_logs = NULL
         WHERE id = $1 RETURNING lease_token",
    )
    .bind(task.id.as_uuid())
    .bind(task.status.as_str())
    .bind(encode(task)?)
    .bind(owner)
    .bind(millis(ttl))
    .fetch_one(connection)
    .await
    .map_err(unavailable)?;
    Ok(token_of(token))
}

fn encode(task: &Task) -> Result<String, StorageError> {
    serde_json::to_string(task).map_err(|source| StorageError::Encode {
        what: format!("task {}", task.id),
        source,
    })
}

/// Inserts or replaces one task's row.
async fn upsert(connection: &mut PgConnection, task: &Task) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO tasks (id, sequence, plugin, priority, status, idempotency_key, doc, visible_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, COALESCE($9, now()))
         ON CONFLICT (id) DO UPDATE SET sequence = $2, plugin = $3, priority = $4, status = $5,
                idempotency_key = $6, doc = $7, visible_at = $8, updated_at = COALESCE($9, now()),
                lease_expires_at = NULL, cancel_requested = false, progress = NULL, live_logs = NULL,
                enqueued = false,
                sweep_after = NULL",
    )
    .bind(task.id.as_uuid())
    .bind(sequence_of(task))
    .bind(&task.plugin)
    .bind(i16::from(task.priority))
    .bind(task.status.as_str())
    .bind(&task.idempotency_key)
    .bind(encode(task)?)
    .bind(visible_at(task))
    // A finished task (restored, say) ages from when it finished.
    .bind(task.finished_at.filter(|_| task.status.is_terminal()))
    .execute(connection)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Pending tasks of the tasks-table queue: (priority, due now, waiting out a backoff).
pub async fn pending_depth(pool: &PgPool) -> Result<Vec<(i16, i64, i64)>, StorageError> {
    sqlx::query_as(
        "SELECT priority,
                count(*) FILTER (WHERE visible_at IS NULL OR visible_at <= now()),
                count(*) FILTER (WHERE visible_at > now())
         FROM tasks WHERE status = 'pending' GROUP BY priority",
    )
    .fetch_all(pool)
    .await
    .map_err(unavailable)
}

/// Whether the task `id` is pending.
pub async fn is_pending(pool: &PgPool, id: TaskId) -> Result<bool, StorageError> {
    let pending: Option<bool> =
        sqlx::query_scalar("SELECT status = 'pending' FROM tasks WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(pool)
            .await
            .map_err(unavailable)?;
    Ok(pending.unwrap_or(false))
}
