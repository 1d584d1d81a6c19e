//! The batch completer: the outcomes of the tasks a host runs, written
//! together. Each worker still waits for its own answer (written, or the
//! lease was lost), but the outcomes that arrive while earlier writes are in
//! flight go out as one statement and one commit: under load a commit
//! carries dozens of outcomes, while a lone one goes out at once.
//!
//! Rows are locked in id order, as the heartbeat's renewal locks them, so
//! two batches touching the same tasks wait for each other instead of
//! deadlocking. A retry meeting a cancel request on its row is written as
//! the cancel the writer prepared beside it ([`Saved::Cancelled`]).

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use taskflow_backend::storage::{Saved, StorageError};
use taskflow_model::task::Task;

use super::{encode, visible_at};

/// Most outcomes in one statement.
const MAX_BATCH: usize = 256;
/// Statements in flight at once; outcomes arriving meanwhile wait and join
/// the next batch.
const IN_FLIGHT: usize = 4;

/// One fenced write of a task's outcome, and who waits for it.
struct Outcome {
    id: uuid::Uuid,
    status: &'static str,
    doc: String,
    visible_at: Option<chrono::DateTime<chrono::Utc>>,
    /// For a retry: the task cancelled, written instead should a cancel
    /// have been requested.
    cancelled_doc: Option<String>,
    token: i64,
    reply: oneshot::Sender<Result<Saved, String>>,
}

/// The handle writers send outcomes through. Cheap to clone; the
/// completer stops when the last handle is dropped.
#[derive(Clone, Debug)]
pub(super) struct Completer {
    outcomes: mpsc::UnboundedSender<Outcome>,
}

impl Completer {
    /// Starts the completer over `pool`.
    pub(super) fn start(pool: PgPool) -> Self {
        let (outcomes, received) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, received));
        Self { outcomes }
    }

    /// Saves `task` if it is still running under the claim `token` (as a
    /// cancel when it is a retry and a cancel was requested).
    pub(super) async fn save(&self, task: &Task, token: u64) -> Result<Saved, StorageError> {
        let stopped = || StorageError::Unavailable("the batch completer stopped".into());
        let (reply, answer) = oneshot::channel();
        self.outcomes
            .send(Outcome {
                id: *task.id.as_uuid(),
                status: task.status.as_str(),
                doc: encode(task)?,
                visible_at: visible_at(task),
                cancelled_doc: Saved::outcome(task, true)
                    .as_ref()
                    .map(encode)
                    .transpose()?,
                token: i64::try_from(token).unwrap_or(i64::MAX),
                reply,
            })
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(StorageError::Unavailable)
    }
}

/// Gathers outcomes into batches and writes them, until every handle is gone.
async fn run(pool: PgPool, mut outcomes: mpsc::UnboundedReceiver<Outcome>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut next: Option<Outcome> = None;
    loop {
        // A free slot first: while every slot is busy, outcomes pile up.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match next.take() {
            Some(outcome) => outcome,
            None => match outcomes.recv().await {
                Some(outcome) => outcome,
                None => return,
            },
        };
        let mut ids = HashSet::from([first.id]);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match outcomes.try_recv() {
                // One write per task in a statement.
                Ok(outcome) if !ids.insert(outcome.id) => {
                    next = Some(outcome);
                    break;
                }
                Ok(outcome) => batch.push(outcome),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            write(&pool, batch).await;
            drop(slot);
        });
    }
}

/// Writes one batch and answers each writer.
async fn write(pool: &PgPool, batch: Vec<Outcome>) {
    let mut ids = Vec::with_capacity(batch.len());
    let mut statuses = Vec::with_capacity(batch.len());
    let mut docs = Vec::with_capacity(batch.len());
    let mut visible = Vec::with_capacity(batch.len());
    let mut cancelled_docs = Vec::with_capacity(batch.len());
    let mut tokens = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for outcome in batch {
        ids.push(outcome.id);
        statuses.push(outcome.status);
        docs.push(outcome.doc);
        visible.push(outcome.visible_at);
        cancelled_docs.push(outcome.cancelled_doc);
        tokens.push(outcome.token);
        replies.push((outcome.id, outcome.reply));
    }
    // `locked` reads each row's cancel request under its lock: a retry
    // (`c.cancel_doc` set) meeting one is written as the cancel. A row that
    // already holds this very outcome under this token (but for the times
    // the writer stamps anew at each try) took it before: the answer to that
    // statement was lost and the writer tries again. It is written. (The
    // CASE keeps the documents unparsed in the usual case, a running row.)
    let written: Result<Vec<(uuid::Uuid, bool)>, sqlx::Error> = sqlx::query_as(
        "WITH u AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[], $6::text[])
                 AS u(id, status, doc, visible_at, token, cancel_doc)
         ), locked AS MATERIALIZED (
             SELECT t.id, t.cancel_requested FROM tasks t WHERE t.id = ANY($1) ORDER BY t.id FOR UPDATE
         ), c AS (
             SELECT u.*, (l.cancel_requested AND u.cancel_doc IS NOT NULL) AS cancels
             FROM u JOIN locked l ON l.id = u.id
         )
         UPDATE tasks t SET
                status = CASE WHEN c.cancels THEN 'cancelled' ELSE c.status END,
                doc = CASE WHEN c.cancels THEN c.cancel_doc ELSE c.doc END,
                visible_at = CASE WHEN c.cancels THEN NULL ELSE c.visible_at END,
                updated_at = now(),
                lease_expires_at = CASE WHEN c.status = 'running' THEN t.lease_expires_at END,
                cancel_requested = c.status = 'running' AND t.cancel_requested,
                progress = CASE WHEN c.status = 'running' THEN t.progress END
         FROM c
         WHERE t.id = c.id AND t.lease_token = c.token
           AND CASE WHEN t.status = 'running' THEN true
                    ELSE t.status <> 'running'
                        AND (t.doc::jsonb - 'finished_at' - 'retry_at') = (c.doc::jsonb - 'finished_at' - 'retry_at') END
         RETURNING t.id, c.cancels",
    )
    .bind(ids)
    .bind(statuses)
    .bind(docs)
    .bind(visible)
    .bind(tokens)
    .bind(cancelled_docs)
    .fetch_all(pool)
    .await;
    match written {
        Ok(written) => {
            let written: std::collections::HashMap<uuid::Uuid, bool> =
                written.into_iter().collect();
            for (id, reply) in replies {
                let saved = match written.get(&id) {
                    Some(true) => Saved::Cancelled,
                    Some(false) => Saved::Written,
                    None => Saved::Lost,
                };
                let _ = reply.send(Ok(saved));
            }
        }
        Err(e) => {
            let text = format!("PostgreSQL: {e}");
            for (_, reply) in replies {
                let _ = reply.send(Err(text.clone()));
            }
        }
    }
}
