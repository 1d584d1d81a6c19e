//! The tasks table as a queue: due tasks claimed in priority then
//! submission order, a batch at a time, for the workers of one host.
//!
//! The claim is the store's, as every claim is: [`PgStore::claim_due`]
//! claims a batch and keeps each claim until
//! [`TaskStore::claim`](taskflow_backend::storage::TaskStore::claim) asks for
//! its task, so the queue ([`crate::PgQueue`]) delivers only ids and
//! the workers claim as they do on every queue, without a second round trip.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use sqlx::PgPool;

use taskflow_backend::storage::StorageError;
use taskflow_backend::storage::lease::{Claim, Claimed};
use taskflow_model::task::{Begin, Task, TaskId};

use super::{PgStore, encode, millis, task_of, token_of, unavailable, write_changed};

/// Claims made by [`PgStore::claim_due`] that no worker has asked for yet,
/// and rows this host cannot read. Shared by the clones of a store.
#[derive(Debug, Default)]
pub(super) struct Due {
    /// Claimed task and its claimant, by id.
    claimed: Mutex<HashMap<TaskId, (String, Claimed)>>,
    /// Pending rows this host cannot read, not claimed again.
    unreadable: Mutex<HashSet<uuid::Uuid>>,
}

impl PgStore {
    /// Claims up to `limit` due pending tasks for `owner`, highest priority
    /// then oldest submission first, each under a lease of `ttl`, and keeps
    /// the claims for [`TaskStore::claim`](taskflow_backend::storage::TaskStore::claim) of their ids by `owner`; the
    /// tasks claimed. Rows other hosts are claiming meanwhile are skipped,
    /// not waited for.
    pub async fn claim_due(
        &self,
        owner: &str,
        ttl: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<Task>, StorageError> {
        let mut unreadable = std::mem::take(&mut *lock(&self.due.unreadable));
        let claimed = claim_ready(&self.pool, owner, ttl, limit, &mut unreadable).await;
        *lock(&self.due.unreadable) = unreadable;
        let claimed = claimed?;
        let tasks = claimed.iter().map(|(task, _)| task.clone()).collect();
        lock(&self.due.claimed).extend(
            claimed
                .into_iter()
                .map(|(task, token)| (task.id, (owner.to_string(), Claimed { task, token }))),
        );
        Ok(tasks)
    }

    /// The claim of `id` that [`claim_due`](Self::claim_due) made for
    /// `owner`, handed over once.
    pub(super) fn claimed_due(&self, id: TaskId, owner: &str) -> Option<Claim> {
        let mut claimed = lock(&self.due.claimed);
        match claimed.get(&id) {
            Some((claimant, _)) if claimant == owner => claimed
                .remove(&id)
                .map(|(_, claim)| Claim::Run(Box::new(claim))),
            _ => None,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Claims up to `limit` pending tasks that are due, highest priority then
/// oldest submission first, for `owner` (the tasks table as a queue): each
/// starts its next attempt under a new lease. Rows other hosts are claiming
/// at the same moment are skipped, not waited for. A task with no attempt
/// left fails instead and is not returned.
///
/// A row this host cannot read (written by a newer version during a rolling
/// upgrade, say) is left as it is for a host that can, its id added to
/// `unreadable`, and rows in `unreadable` are not asked for again: one such
/// row never stops this host claiming the others.
async fn claim_ready(
    pool: &PgPool,
    owner: &str,
    ttl: std::time::Duration,
    limit: usize,
    unreadable: &mut std::collections::HashSet<uuid::Uuid>,
) -> Result<Vec<(Task, u64)>, StorageError> {
    let mut transaction = pool.begin().await.map_err(unavailable)?;
    let skipped: Vec<uuid::Uuid> = unreadable.iter().copied().collect();
    // Waiting tasks now due join the ready ones (up to 1000 a claim), and
    // the best of both are taken: neither scan steps over a waiting task.
    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "WITH promoted AS (
             UPDATE tasks SET visible_at = NULL WHERE id IN (
                 SELECT id FROM tasks WHERE status = 'pending' AND visible_at <= now()
                 ORDER BY visible_at LIMIT 1000 FOR UPDATE SKIP LOCKED)
             RETURNING id, priority, sequence, doc),
         ready AS (
             SELECT id, priority, sequence, doc FROM tasks
             WHERE status = 'pending' AND visible_at IS NULL AND NOT (id = ANY($2))
             ORDER BY priority, sequence
             LIMIT $1 FOR UPDATE SKIP LOCKED)
         SELECT id, doc FROM (
             SELECT * FROM promoted WHERE NOT (id = ANY($2))
             UNION ALL SELECT * FROM ready) candidates
         ORDER BY priority, sequence LIMIT $1",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(skipped)
    .fetch_all(&mut *transaction)
    .await
    .map_err(unavailable)?;
    if rows.is_empty() {
        // What was promoted stays ready for the next claim.
        transaction.commit().await.map_err(unavailable)?;
        return Ok(Vec::new());
    }
    let mut started = Vec::with_capacity(rows.len());
    for (id, doc) in rows {
        let mut task = match task_of(TaskId::from(id), &doc) {
            Ok(task) => task,
            Err(e) => {
                tracing::error!(task_id = %id, error = %e, "cannot read a pending task; leaving it to a host that can");
                unreadable.insert(id);
                continue;
            }
        };
        // The database found it due; the clock of this host has no say.
        let now = task
            .retry_at
            .map_or_else(chrono::Utc::now, |at| at.max(chrono::Utc::now()));
        match task.begin_attempt(owner, now) {
            Begin::Started => started.push(task),
            Begin::Exhausted => {
                write_changed(&mut transaction, &task).await?;
            }
            Begin::NotDue(_) | Begin::NotPending => {}
        }
    }
    let ids: Vec<uuid::Uuid> = started.iter().map(|t| *t.id.as_uuid()).collect();
    let docs = started
        .iter()
        .map(encode)
        .collect::<Result<Vec<String>, _>>()?;
    let tokens: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "UPDATE tasks t SET status = 'running', doc = u.doc, visible_at = NULL, updated_at = now(), owner = $1,
                lease_token = t.lease_token + 1, lease_expires_at = now() + $2 * interval '1 millisecond',
                cancel_requested = false, progress = 0
         FROM unnest($3::uuid[], $4::text[]) AS u(id, doc)
         WHERE t.id = u.id
         RETURNING t.id, t.lease_token",
    )
    .bind(owner)
    .bind(millis(ttl))
    .bind(ids)
    .bind(docs)
    .fetch_all(&mut *transaction)
    .await
    .map_err(unavailable)?;
    transaction.commit().await.map_err(unavailable)?;
    let tokens: std::collections::HashMap<uuid::Uuid, i64> = tokens.into_iter().collect();
    Ok(started
        .into_iter()
        .filter_map(|task| {
            tokens
                .get(task.id.as_uuid())
                .map(|token| (task, token_of(*token)))
        })
        .collect())
}
