//! Task metadata in PostgreSQL, for hosts that share their state.
//!
//! One row per task: the whole task as JSON text (`doc`, the same document a
//! task file of the embedded store holds) beside the columns that queries
//! filter and sort by. The schema is created and upgraded by the migrations in
//! `host/migrations/`, run at connect.

use std::collections::BTreeMap;

use std::sync::{Arc, Mutex};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use super::{Cursor, ListQuery, StatusCounts, StorageError, Submitted, TaskPage, TaskStore};
use crate::task::{Task, TaskId, TaskStatus};

/// Most connections a host keeps open.
const MAX_CONNECTIONS: u32 = 16;

/// Longest a starting host waits for the previous one's claim on the
/// database to go (a host that just stopped).
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// PostgreSQL task store. Cheap to clone (a connection pool).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The connection holding this host's claim on the schema (a session
    /// advisory lock): one host per database until the queue is shared too,
    /// since a starting host re-runs every unfinished task it finds.
    _claim: Arc<Mutex<PgConnection>>,
}

impl PgStore {
    /// Connects to `options` and brings the schema up to date.
    pub async fn connect(options: PgConnectOptions) -> Result<Self, StorageError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| {
                StorageError::Unavailable(format!(
                    "cannot bring the database schema up to date: {e}"
                ))
            })?;
        let claim = claim(&pool).await?;
        Ok(Self {
            pool,
            _claim: Arc::new(Mutex::new(claim)),
        })
    }
}

/// Takes the schema's advisory lock on a connection of its own, held until
/// the store is dropped.
async fn claim(pool: &PgPool) -> Result<PgConnection, StorageError> {
    let mut connection = pool.acquire().await.map_err(unavailable)?.detach();
    let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
    loop {
        let claimed: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtext('taskflow:' || current_schema())::bigint)",
        )
        .fetch_one(&mut connection)
        .await
        .map_err(unavailable)?;
        if claimed {
            return Ok(connection);
        }
        if tokio::time::Instant::now() >= deadline {
            let schema: String = sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(&mut connection)
                .await
                .map_err(unavailable)?;
            return Err(StorageError::InUse(format!(
                "the PostgreSQL schema {schema:?}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn unavailable(error: sqlx::Error) -> StorageError {
    StorageError::Unavailable(format!("PostgreSQL: {error}"))
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
        let mut submitted = Vec::with_capacity(tasks.len());
        for (mut task, sequence) in tasks.into_iter().zip(sequences) {
            task.sequence = u64::try_from(sequence).unwrap_or_default();
            // A racing insert of the same key makes this one wait for its
            // commit, then do nothing; the stored task is read instead.
            if insert_new(&mut transaction, &task).await? {
                submitted.push(Submitted {
                    task,
                    created: true,
                });
                continue;
            }
            let key = task.idempotency_key.as_deref().unwrap_or_default();
            let doc: String =
                sqlx::query_scalar("SELECT doc FROM tasks WHERE idempotency_key = $1")
                    .bind(key)
                    .fetch_one(&mut *transaction)
                    .await
                    .map_err(unavailable)?;
            let existing: Task =
                serde_json::from_str(&doc).map_err(|source| StorageError::Corrupt {
                    path: format!("postgres:tasks?idempotency_key={key}").into(),
                    source,
                })?;
            submitted.push(Submitted {
                task: existing,
                created: false,
            });
        }
        transaction.commit().await.map_err(unavailable)?;
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
             ORDER BY sequence, id
             LIMIT $5",
        )
        .bind(query.status.map(TaskStatus::as_str))
        .bind(query.plugin.as_deref())
        .bind(after.map(|c| i64::try_from(c.sequence).unwrap_or(i64::MAX)))
        .bind(after.map(|c| *c.id.as_uuid()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut tasks = rows
            .into_iter()
            .map(|(id, doc)| task_of(TaskId::from(id), &doc))
            .collect::<Result<Vec<_>, _>>()?;
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
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM tasks GROUP BY status")
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
}

/// Inserts a new task's row; `false` when its idempotency key is taken.
async fn insert_new(connection: &mut PgConnection, task: &Task) -> Result<bool, StorageError> {
    write_row(
        connection,
        task,
        "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    )
    .await
}

/// Inserts or replaces one task's row.
async fn upsert(connection: &mut PgConnection, task: &Task) -> Result<(), StorageError> {
    let on_conflict =
        "ON CONFLICT (id) DO UPDATE SET sequence = $2, plugin = $3, priority = $4, status = $5,
                           idempotency_key = $6, doc = $7, updated_at = now()";
    write_row(connection, task, on_conflict).await.map(|_| ())
}

/// Writes one task's row, `on_conflict` deciding what an existing row
/// means; `false` when nothing was written.
async fn write_row(
    connection: &mut PgConnection,
    task: &Task,
    on_conflict: &str,
) -> Result<bool, StorageError> {
    let doc = serde_json::to_string(task).map_err(|source| StorageError::Encode {
        what: format!("task {}", task.id),
        source,
    })?;
    let sql = format!(
        "INSERT INTO tasks (id, sequence, plugin, priority, status, idempotency_key, doc, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now()) {on_conflict}"
    );
    let written = sqlx::query(&sql)
        .bind(task.id.as_uuid())
        .bind(sequence_of(task))
        .bind(&task.plugin)
        .bind(i16::from(task.priority))
        .bind(task.status.as_str())
        .bind(&task.idempotency_key)
        .bind(doc)
        .execute(connection)
        .await
        .map_err(unavailable)?;
    Ok(written.rows_affected() == 1)
}
