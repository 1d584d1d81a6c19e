//! The behavioural contracts of the seams (feature `contract`): what every
//! [`TaskStore`] must do (the functions at this level), what every queue
//! must do ([`queue`]), and what every blob store must do ([`blobs`]).
//!
//! A backend proves itself by running each function against a fresh
//! instance of itself from its tests (the workspace's `tests/tests/storage.rs`,
//! `postgres.rs`, `queues.rs` and `blobs.rs` do it for every backend here);
//! each panics, naming what broke, where the backend breaks the contract.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use taskflow_model::FailureKind;
use taskflow_model::task::{Begin, NewTask, Task, TaskError, TaskId, TaskStatus};

use crate::storage::{
    Change, Claim, Held, LeaseState, ListQuery, Published, Renewed, Saved, StorageError, TaskStore,
};

/// A valid pending task of `plugin` with submission number `sequence`.
pub fn task(plugin: &str, sequence: u64) -> Task {
    let new = NewTask {
        plugin: plugin.into(),
        payload: json!({ "n": sequence }),
        ..NewTask::default()
    };
    new.validate(sequence).expect("valid task")
}

/// Every sequence `query` lists, following `next_cursor` to the end.
async fn page_through(store: &dyn TaskStore, mut query: ListQuery) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let page = store.list(&query).await.expect("list");
        assert!(page.tasks.len() <= query.limit);
        seen.extend(page.tasks.into_iter().map(|t| t.sequence));
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return seen,
        }
    }
}

/// A task's history (every attempt with its host, outcome, error and the
/// plugin's log lines, untrusted text and all) is kept whole through claims,
/// leased saves and a retry; a claim starts the next attempt in it.
pub async fn attempts_and_their_logs_are_kept(store: &dyn TaskStore) {
    use taskflow_model::attempt::{AttemptOutcome, LogLevel, LogLine, LogStream, RunLogs};

    let ttl = Duration::from_secs(60);
    let submitted = store
        .insert(vec![task("echo", 0)])
        .await
        .expect("insert")
        .remove(0)
        .task;
    let id = submitted.id;
    let line = |message: &str, stream| LogLine {
        at: chrono::Utc::now(),
        stream,
        level: (stream == LogStream::Log).then_some(LogLevel::Warn),
        message: message.into(),
    };
    // The claim every worker makes.
    let claim = async |owner: &str| match store.claim(id, owner, ttl).await.expect("claim") {
        Claim::Run(claimed) => claimed.token,
        other => panic!("{owner} could not claim the task: {other:?}"),
    };
    let hostile = "<script>alert('x')</script> & \u{0} \"quoted\" ünïcode";

    // Attempt 1 on host-a fails and is retried.
    let token = claim("host-a").await;
    let mut running = store.load(id).await.expect("load").expect("stored");
    assert_eq!(
        running.history.len(),
        1,
        "a claim starts an attempt in the history"
    );
    assert_eq!(running.history[0].outcome, AttemptOutcome::Running);
    assert_eq!(running.history[0].host, "host-a");
    assert_eq!(running.history[0].number, 1);
    running.last_error = Some(TaskError {
        kind: FailureKind::Retryable,
        message: hostile.into(),
    });
    running.end_attempt(
        AttemptOutcome::Retried,
        Some("digest-1"),
        RunLogs {
            lines: vec![
                line(hostile, LogStream::Log),
                line("out", LogStream::Stdout),
            ],
            dropped: 3,
            skipped: 0,
        },
        chrono::Utc::now(),
    );
    running.status = TaskStatus::Pending;
    assert_eq!(
        store.save_leased(&running, token).await.expect("save"),
        Saved::Written
    );

    // Attempt 2 on host-b fails for good; then a retry and attempt 3.
    let token = claim("host-b").await;
    let mut running = store.load(id).await.expect("load").expect("stored");
    running.end_attempt(
        AttemptOutcome::Failed,
        Some("digest-2"),
        RunLogs::default(),
        chrono::Utc::now(),
    );
    running.status = TaskStatus::Failed;
    running.finished_at = Some(chrono::Utc::now());
    store.save_leased(&running, token).await.expect("save");
    let retried = store
        .update(
            id,
            Box::new(|task: &mut Task, _: &LeaseState| match task.retry() {
                Ok(()) => Change::Save,
                Err(_) => Change::Keep,
            }),
        )
        .await
        .expect("update")
        .expect("stored");
    assert!(
        matches!(retried.change, Change::Save),
        "a failed task can be retried"
    );
    claim("host-c").await;

    let stored = store.load(id).await.expect("load").expect("stored");
    let outcomes: Vec<_> = stored
        .history
        .iter()
        .map(|a| (a.number, a.host.as_str(), a.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, "host-a", AttemptOutcome::Retried),
            (2, "host-b", AttemptOutcome::Failed),
            (3, "host-c", AttemptOutcome::Running),
        ]
    );
    let first = &stored.history[0];
    assert_eq!(first.plugin_digest.as_deref(), Some("digest-1"));
    assert_eq!(
        first.error.as_ref().map(|e| e.message.as_str()),
        Some(hostile)
    );
    assert_eq!(first.logs.len(), 2);
    assert_eq!(
        first.logs[0].message, hostile,
        "log text is kept as written"
    );
    assert_eq!(first.logs[0].level, Some(LogLevel::Warn));
    assert_eq!(first.logs[1].stream, LogStream::Stdout);
    assert_eq!(first.logs_dropped, 3);
    assert!(first.finished_at.is_some() && first.duration().is_some());
    assert_eq!(stored.attempts, 3);
    assert!(stored.max_attempts >= 3, "a retry allows one more attempt");
}

/// Heartbeats: the latest of each host is listed, by name; a host silent
/// since `since` is left out, and one silent since `forget_before` is
/// deleted.
pub async fn hosts_report_their_heartbeats(store: &dyn TaskStore) {
    use taskflow_model::api::{HostBeat, PluginVersion};

    let now = chrono::Utc::now();
    let beat = |name: &str, running: usize, ago: i64| HostBeat {
        name: name.into(),
        version: "1.2.3".into(),
        workers: 4,
        running,
        plugins: vec![PluginVersion {
            name: "echo".into(),
            digest: "ab".repeat(32),
            load_ms: Some(12),
            runs: {
                let mut runs = taskflow_model::api::VersionRuns::default();
                runs.record(true, Duration::from_millis(3));
                runs.record(false, Duration::from_secs(2));
                runs
            },
        }],
        started_at: now - chrono::Duration::hours(1),
        seen_at: now - chrono::Duration::seconds(ago),
    };
    let long_ago = now - chrono::Duration::days(1);
    store
        .beat(&beat("host-b", 1, 0), long_ago)
        .await
        .expect("beat");
    store
        .beat(&beat("host-a", 2, 5), long_ago)
        .await
        .expect("beat");
    store
        .beat(&beat("host-a", 3, 0), long_ago)
        .await
        .expect("beat again");
    let hosts = store
        .hosts(now - chrono::Duration::minutes(1))
        .await
        .expect("hosts");
    assert_eq!(hosts, [beat("host-a", 3, 0), beat("host-b", 1, 0)]);

    // host-c went quiet ten minutes ago: not alive in the last minute, still
    // known for the last hour, and forgotten once heartbeats say so.
    store
        .beat(&beat("host-c", 0, 600), long_ago)
        .await
        .expect("beat");
    let names = async |since: chrono::Duration| -> Vec<String> {
        store
            .hosts(now - since)
            .await
            .expect("hosts")
            .into_iter()
            .map(|h| h.name)
            .collect()
    };
    assert_eq!(
        names(chrono::Duration::minutes(1)).await,
        ["host-a", "host-b"]
    );
    assert_eq!(
        names(chrono::Duration::hours(1)).await,
        ["host-a", "host-b", "host-c"]
    );
    store
        .beat(&beat("host-a", 0, 0), now - chrono::Duration::minutes(5))
        .await
        .expect("beat");
    assert_eq!(
        names(chrono::Duration::hours(1)).await,
        ["host-a", "host-b"]
    );
}

/// Lists come in submission order, filtered by status and plugin, in pages
/// that neither skip nor repeat; bad cursors and limits are refused.
pub async fn lists_filter_and_page_in_submission_order(store: &dyn TaskStore) {
    // Saved out of submission order: listing sorts by sequence.
    let mut tasks = Vec::new();
    for sequence in (0..25).rev() {
        let mut t = task(if sequence % 2 == 0 { "echo" } else { "resize" }, sequence);
        if sequence % 3 == 0 {
            t.status = TaskStatus::Completed;
        }
        store.save(&t).await.expect("save");
        tasks.push(t);
    }
    tasks.sort_by_key(|t| t.sequence);

    let every: Vec<u64> = (0..25).collect();
    assert_eq!(
        page_through(
            store,
            ListQuery {
                limit: 4,
                ..ListQuery::default()
            }
        )
        .await,
        every
    );
    assert_eq!(
        page_through(
            store,
            ListQuery {
                limit: 25,
                ..ListQuery::default()
            }
        )
        .await,
        every
    );
    let completed_echo: Vec<u64> = (0..25).filter(|s| s % 2 == 0 && s % 3 == 0).collect();
    let query = ListQuery {
        status: Some(TaskStatus::Completed),
        plugin: Some("echo".into()),
        limit: 2,
        ..ListQuery::default()
    };
    assert_eq!(page_through(store, query).await, completed_echo);
    let first = store
        .list(&ListQuery {
            limit: 3,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(first.tasks, tasks[..3]);
    assert_eq!(store.all().await.expect("all"), tasks);

    let bad = ListQuery {
        limit: 3,
        cursor: Some("nonsense".into()),
        ..ListQuery::default()
    };
    assert!(matches!(
        store.list(&bad).await,
        Err(StorageError::InvalidCursor(_))
    ));
    let zero = ListQuery {
        limit: 0,
        ..ListQuery::default()
    };
    assert!(matches!(
        store.list(&zero).await,
        Err(StorageError::InvalidLimit)
    ));
}

/// Every filter of a list (priority, host, error kind, submission time,
/// idempotency key, and several at once) picks just the tasks the model's
/// rule picks, in pages.
pub async fn lists_filter_by_every_field(store: &dyn TaskStore) {
    let start = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
        .expect("time")
        .with_timezone(&Utc);
    let mut tasks = Vec::new();
    for sequence in 0..30u64 {
        let mut t = task("echo", sequence);
        t.priority = u8::try_from(sequence % 3).expect("small") + 1;
        t.created_at = start + chrono::Duration::minutes(i64::try_from(sequence).expect("small"));
        t.host = (sequence % 5 != 4).then(|| format!("host-{}", sequence % 2));
        if sequence % 4 == 0 {
            t.status = TaskStatus::Failed;
            t.last_error = Some(TaskError {
                kind: if sequence % 8 == 0 {
                    FailureKind::Timeout
                } else {
                    FailureKind::Trap
                },
                message: "no".into(),
            });
        }
        t.idempotency_key = (sequence % 7 == 0).then(|| format!("key-{sequence}"));
        store.save(&t).await.expect("save");
        tasks.push(t);
    }
    let minute = |n: i64| Some(start + chrono::Duration::minutes(n));
    let queries = [
        ListQuery {
            priority: Some(2),
            ..ListQuery::default()
        },
        ListQuery {
            host: Some("host-1".into()),
            ..ListQuery::default()
        },
        ListQuery {
            error_kind: Some(FailureKind::Timeout),
            ..ListQuery::default()
        },
        ListQuery {
            submitted_after: minute(10),
            submitted_before: minute(20),
            ..ListQuery::default()
        },
        ListQuery {
            submitted_after: minute(25),
            ..ListQuery::default()
        },
        ListQuery {
            idempotency_key: Some("key-14".into()),
            ..ListQuery::default()
        },
        ListQuery {
            idempotency_key: Some("key-missing".into()),
            ..ListQuery::default()
        },
        ListQuery {
            status: Some(TaskStatus::Failed),
            priority: Some(1),
            host: Some("host-0".into()),
            submitted_before: minute(25),
            ..ListQuery::default()
        },
    ];
    for query in queries {
        let expected: Vec<u64> = tasks
            .iter()
            .filter(|t| query.matches_task(t))
            .map(|t| t.sequence)
            .collect();
        let listed = page_through(
            store,
            ListQuery {
                limit: 3,
                ..query.clone()
            },
        )
        .await;
        assert_eq!(listed, expected, "{query:?}");
    }
    // The rule is not vacuous: spelled out for three of them.
    let by_host = ListQuery {
        host: Some("host-1".into()),
        limit: 50,
        ..ListQuery::default()
    };
    assert_eq!(
        page_through(store, by_host).await,
        [1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 25, 27]
    );
    let timeouts = ListQuery {
        error_kind: Some(FailureKind::Timeout),
        limit: 50,
        ..ListQuery::default()
    };
    assert_eq!(page_through(store, timeouts).await, [0, 8, 16, 24]);
    let keyed = ListQuery {
        idempotency_key: Some("key-14".into()),
        limit: 50,
        ..ListQuery::default()
    };
    assert_eq!(page_through(store, keyed).await, [14]);
}

/// `insert` numbers new tasks in order, after every stored (or restored)
/// one, and returns the stored task for an idempotency key seen before.
pub async fn insert_numbers_tasks_and_honours_idempotency_keys(store: &dyn TaskStore) {
    let batch: Vec<Task> = (0..3).map(|_| task("echo", 0)).collect();
    let inserted = store.insert(batch.clone()).await.expect("insert");
    assert!(inserted.iter().all(|s| s.created));
    let sequences: Vec<u64> = inserted.iter().map(|s| s.task.sequence).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "increasing: {sequences:?}"
    );
    for (submitted, original) in inserted.iter().zip(&batch) {
        assert_eq!(submitted.task.id, original.id);
        assert_eq!(
            store.load(original.id).await.expect("load").as_ref(),
            Some(&submitted.task),
            "stored as returned"
        );
    }

    let keyed = |key: &str| Task {
        idempotency_key: Some(key.into()),
        ..task("echo", 0)
    };
    let first = store
        .insert(vec![keyed("order-1")])
        .await
        .expect("insert")
        .remove(0);
    assert!(first.created);
    let again = store
        .insert(vec![keyed("order-1"), task("echo", 0)])
        .await
        .expect("insert");
    assert!(!again[0].created, "the key was seen");
    assert_eq!(again[0].task, first.task, "the stored task comes back");
    assert!(again[1].created && again[1].task.sequence > first.task.sequence);
    assert_eq!(
        store
            .find_by_idempotency_key("order-1")
            .await
            .expect("find"),
        Some(first.task)
    );

    let mut restored = task("echo", 1_000);
    restored.status = TaskStatus::Completed;
    store.restore(&restored).await.expect("restore");
    let after = store
        .insert(vec![task("echo", 0)])
        .await
        .expect("insert")
        .remove(0);
    assert!(
        after.task.sequence > 1_000,
        "numbered after the restored task: {}",
        after.task.sequence
    );
    assert!(store.insert(vec![]).await.expect("empty insert").is_empty());
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        (counts[&TaskStatus::Pending], counts[&TaskStatus::Completed]),
        (6, 1)
    );
}

/// Inserts racing with one idempotency key create one task.
pub async fn racing_inserts_with_one_key_create_one_task(store: std::sync::Arc<dyn TaskStore>) {
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let task = Task {
                    idempotency_key: Some("race".into()),
                    ..task("echo", 0)
                };
                store.insert(vec![task]).await.expect("insert").remove(0)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for racer in racers {
        outcomes.push(racer.await.expect("join"));
    }
    let created: Vec<_> = outcomes.iter().filter(|s| s.created).collect();
    assert_eq!(created.len(), 1, "one task for one key");
    assert!(outcomes.iter().all(|s| s.task.id == created[0].task.id));
    assert_eq!(
        store.counts().await.expect("counts")[&TaskStatus::Pending],
        1
    );
}

/// Claims `id` for `owner` through `update`, as a worker does; the token,
/// or `None` when the task was not claimable.
pub async fn claim(store: &dyn TaskStore, id: TaskId, owner: &str, ttl: Duration) -> Option<u64> {
    let owner = owner.to_string();
    let change = Box::new(move |task: &mut Task, _: &LeaseState| {
        match task.begin_attempt(&owner, chrono::Utc::now()) {
            Begin::Started => Change::Claim { owner, ttl },
            _ => Change::Keep,
        }
    });
    let updated = store
        .update(id, change)
        .await
        .expect("update")
        .expect("task exists");
    matches!(updated.change, Change::Claim { .. }).then_some(updated.token)
}

/// The store's claim, the one every worker makes: it says what it found
/// (run it, wait, skip, busy elsewhere) and takes over a task whose lease
/// ran out, or fails it when no attempt is left.
pub async fn claims_say_what_they_found(store: &dyn TaskStore) {
    let long = Duration::from_secs(60);
    assert_eq!(
        store
            .claim(TaskId::new(), "host-a", long)
            .await
            .expect("claim"),
        Claim::Skip,
        "an unknown task is not run"
    );
    let mut waiting = task("echo", 0);
    waiting.retry_at = Some(chrono::Utc::now() + chrono::Duration::seconds(30));
    let mut last_try = task("echo", 0);
    last_try.max_attempts = 1;
    let ids: Vec<TaskId> = store
        .insert(vec![task("echo", 0), waiting, last_try])
        .await
        .expect("insert")
        .into_iter()
        .map(|s| s.task.id)
        .collect();
    let (id, waiting, last_try) = (ids[0], ids[1], ids[2]);

    let Claim::Run(first) = store.claim(id, "host-a", long).await.expect("claim") else {
        panic!("a pending task is claimed");
    };
    assert_eq!(
        (
            first.task.status,
            first.task.attempts,
            first.task.host.as_deref()
        ),
        (TaskStatus::Running, 1, Some("host-a"))
    );
    assert_eq!(
        store.load(id).await.expect("load").expect("stored"),
        first.task,
        "the claimed task is the stored one"
    );
    assert_eq!(
        store.claim(id, "host-b", long).await.expect("claim"),
        Claim::Busy,
        "a task running under a live lease is another host's"
    );
    match store.claim(waiting, "host-a", long).await.expect("claim") {
        Claim::NotDue(wait) => assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
            "waits out its backoff: {wait:?}"
        ),
        other => panic!("a task waiting out a backoff is not due: {other:?}"),
    }

    // Its host stops renewing: the lease runs out, the next claim takes over.
    let Claim::Run(stopped) = store
        .claim(last_try, "host-a", Duration::from_millis(1))
        .await
        .expect("claim")
    else {
        panic!("a pending task is claimed");
    };
    let mut done = first.task.clone();
    done.status = TaskStatus::Completed;
    done.finished_at = Some(chrono::Utc::now());
    assert_eq!(
        store.save_leased(&done, first.token).await.expect("save"),
        Saved::Written
    );
    assert_eq!(
        store.claim(id, "host-b", long).await.expect("claim"),
        Claim::Skip,
        "a finished task is not run again"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        store.claim(last_try, "host-b", long).await.expect("claim"),
        Claim::Skip,
        "a task whose last attempt was lost with its host is not run again"
    );
    let failed = store.load(last_try).await.expect("load").expect("stored");
    assert_eq!(failed.status, TaskStatus::Failed, "{failed:?}");
    assert_eq!(
        store
            .save_leased(&stopped.task, stopped.token)
            .await
            .expect("save"),
        Saved::Lost,
        "the stopped host's lease is gone"
    );

    let retried = store.insert(vec![task("echo", 0)]).await.expect("insert")[0]
        .task
        .id;
    let Claim::Run(gone) = store
        .claim(retried, "host-a", Duration::from_millis(1))
        .await
        .expect("claim")
    else {
        panic!("a pending task is claimed");
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let Claim::Run(taken) = store.claim(retried, "host-b", long).await.expect("claim") else {
        panic!("a task whose lease ran out is taken over");
    };
    assert!(taken.token > gone.token, "under a greater token");
    assert_eq!(
        (taken.task.attempts, taken.task.host.as_deref()),
        (2, Some("host-b")),
        "its next attempt, on the host that took it over"
    );
}

/// A lease fences its holder: one claim at a time, renewals and writes only
/// with the current token, cancel requests, progress and log lines travel
/// through the store, and an expired lease is found, taken back once, and claimed anew
/// under a greater token that the old holder's writes cannot match.
pub async fn leases_fence_their_holders(store: &dyn TaskStore) {
    let id = store.insert(vec![task("echo", 0)]).await.expect("insert")[0]
        .task
        .id;
    let long = Duration::from_secs(60);
    let first = claim(store, id, "host-a", long)
        .await
        .expect("a pending task is claimable");
    assert_eq!(
        claim(store, id, "host-b", long).await,
        None,
        "a running task is not claimable twice"
    );
    let running = store.load(id).await.expect("load").expect("stored");
    assert_eq!((running.status, running.attempts), (TaskStatus::Running, 1));
    assert_eq!(
        running.host.as_deref(),
        Some("host-a"),
        "the task names the host running it"
    );
    assert!(
        store.expired(100).await.expect("expired").is_empty(),
        "a fresh lease is not expired"
    );

    // Renewal by the holder only, carrying progress and the newest log
    // lines (how many came before them too); a cancel request reaches it.
    let lines = taskflow_model::attempt::RunLogs {
        lines: vec![taskflow_model::attempt::LogLine {
            at: Utc::now(),
            stream: taskflow_model::attempt::LogStream::Log,
            level: Some(taskflow_model::attempt::LogLevel::Info),
            message: "halfway <b>there</b> \u{0}".into(),
        }],
        dropped: 2,
        skipped: 7,
    };
    let held = [Held {
        id,
        token: first,
        progress: 40,
        logs: Some(lines.clone()),
    }];
    assert!(
        store
            .renew("host-b", &held, long)
            .await
            .expect("renew")
            .is_empty(),
        "only the owner renews"
    );
    let renewed = store.renew("host-a", &held, long).await.expect("renew");
    assert_eq!(
        renewed,
        vec![Renewed {
            id,
            cancel_requested: false
        }]
    );
    let published = store.published(id).await.expect("published");
    assert_eq!(
        published,
        Some(Published {
            progress: 40,
            logs: lines.clone()
        })
    );
    // Unchanged lines are not sent again, and stay.
    let unchanged = [Held {
        id,
        token: first,
        progress: 50,
        logs: None,
    }];
    store
        .renew("host-a", &unchanged, long)
        .await
        .expect("renew");
    assert_eq!(
        store.published(id).await.expect("published"),
        Some(Published {
            progress: 50,
            logs: lines.clone()
        })
    );
    let stale = [Held {
        id,
        token: first + 1000,
        progress: 0,
        logs: None,
    }];
    assert!(
        store
            .renew("host-a", &stale, long)
            .await
            .expect("renew")
            .is_empty(),
        "a wrong token renews nothing"
    );
    let request = store
        .update(id, Box::new(|_, _| Change::RequestCancel))
        .await
        .expect("update")
        .expect("task");
    assert_eq!(request.token, first);
    assert!(store.renew("host-a", &held, long).await.expect("renew")[0].cancel_requested);

    // The lease runs out: the reaper finds it and takes it back once.
    let short = [Held {
        id,
        token: first,
        progress: 40,
        logs: None,
    }];
    store
        .renew("host-a", &short, Duration::from_millis(1))
        .await
        .expect("renew short");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.expired(100).await.expect("expired"), vec![id]);
    let take_back = || {
        Box::new(|task: &mut Task, lease: &LeaseState| {
            if task.status == TaskStatus::Running && lease.expired {
                task.interrupt(chrono::Utc::now());
                Change::Save
            } else {
                Change::Keep
            }
        })
    };
    let reaped = store
        .update(id, take_back())
        .await
        .expect("reap")
        .expect("task");
    assert_eq!(
        (reaped.change, reaped.task.status),
        (Change::Save, TaskStatus::Pending)
    );
    assert_eq!(
        store
            .update(id, take_back())
            .await
            .expect("reap again")
            .expect("task")
            .change,
        Change::Keep
    );
    assert!(store.expired(100).await.expect("expired").is_empty());

    // The old holder comes back: nothing it writes sticks.
    let mut late = running.clone();
    late.status = TaskStatus::Completed;
    assert_eq!(
        store.save_leased(&late, first).await.expect("late write"),
        Saved::Lost,
        "a pending task refuses the old holder"
    );
    let second = claim(store, id, "host-b", long)
        .await
        .expect("claimable again");
    assert!(second > first, "tokens grow: {second} after {first}");
    assert_eq!(
        store.published(id).await.expect("published"),
        Some(Published::default()),
        "a new attempt starts with nothing published"
    );
    assert_eq!(
        store.save_leased(&late, first).await.expect("late write"),
        Saved::Lost,
        "a new claim refuses the old holder"
    );
    assert!(
        store
            .renew("host-a", &held, long)
            .await
            .expect("renew")
            .is_empty()
    );
    let now = store.load(id).await.expect("load").expect("stored");
    assert_eq!(
        (now.status, now.attempts),
        (TaskStatus::Running, 2),
        "the old holder changed nothing"
    );

    // The new holder finishes: the lease ends with it.
    let mut done = now.clone();
    done.status = TaskStatus::Completed;
    assert_eq!(
        store.save_leased(&done, second).await.expect("write"),
        Saved::Written
    );
    assert_eq!(
        store.load(id).await.expect("load").expect("stored").status,
        TaskStatus::Completed
    );
    // The same outcome saved again (its first answer lost) finds it there;
    // any other is refused.
    let mut again = done.clone();
    again.finished_at = Some(chrono::Utc::now());
    assert_eq!(
        store
            .save_leased(&again, second)
            .await
            .expect("write again"),
        Saved::Written,
        "the holder's own outcome, saved again"
    );
    let mut other = done.clone();
    other.status = TaskStatus::Failed;
    assert_eq!(
        store
            .save_leased(&other, second)
            .await
            .expect("write another"),
        Saved::Lost,
        "a finished task has no lease"
    );
    assert_eq!(store.published(id).await.expect("published"), None);
    assert_eq!(
        claim(store, id, "host-a", long).await,
        None,
        "a finished task is not claimable"
    );
    assert!(
        store
            .update(TaskId::new(), take_back())
            .await
            .expect("update unknown")
            .is_none()
    );
}

/// The stored status of task `id`.
async fn status_of(store: &dyn TaskStore, id: TaskId) -> TaskStatus {
    store.load(id).await.expect("load").expect("stored").status
}

/// A cancel requested while a task runs outlives the attempt: when the
/// holder then saves a retry (the attempt failed, retryably), the task is
/// recorded cancelled, not pending, and is not claimable again. A result
/// or a final failure saved after a cancel request stands: that attempt
/// had finished before the interruption reached it.
pub async fn a_retry_saved_after_a_cancel_request_is_a_cancel(store: &dyn TaskStore) {
    let long = Duration::from_secs(60);
    let requested = || Box::new(|_: &mut Task, _: &LeaseState| Change::RequestCancel);
    let ids: Vec<TaskId> = store
        .insert(vec![task("echo", 0), task("echo", 0)])
        .await
        .expect("insert")
        .into_iter()
        .map(|s| s.task.id)
        .collect();
    let (retried, completed) = (ids[0], ids[1]);

    let token = claim(store, retried, "host-a", long).await.expect("claim");
    store
        .update(retried, requested())
        .await
        .expect("request cancel")
        .expect("task");
    let mut retry = store.load(retried).await.expect("load").expect("stored");
    retry.status = TaskStatus::Pending;
    retry.retry_at = Some(chrono::Utc::now());
    assert_eq!(
        store
            .save_leased(&retry, token)
            .await
            .expect("save the retry"),
        Saved::Cancelled,
        "the store says the retry became a cancel"
    );
    let stored = store.load(retried).await.expect("load").expect("stored");
    assert_eq!(
        (stored.status, stored.attempts, stored.retry_at),
        (TaskStatus::Cancelled, 1, None)
    );
    assert!(stored.finished_at.is_some());
    assert_eq!(
        claim(store, retried, "host-b", long).await,
        None,
        "a cancelled task is not claimable"
    );
    assert!(store.expired(100).await.expect("expired").is_empty());

    // Without a cancel request, a retry is a retry.
    let token = claim(store, completed, "host-a", long)
        .await
        .expect("claim");
    let mut again = store.load(completed).await.expect("load").expect("stored");
    again.status = TaskStatus::Pending;
    assert_eq!(
        store.save_leased(&again, token).await.expect("save"),
        Saved::Written
    );
    assert_eq!(status_of(store, completed).await, TaskStatus::Pending);
    // A result saved after a cancel request stands.
    let token = claim(store, completed, "host-a", long)
        .await
        .expect("claim");
    store
        .update(completed, requested())
        .await
        .expect("request cancel")
        .expect("task");
    let mut done = store.load(completed).await.expect("load").expect("stored");
    done.status = TaskStatus::Completed;
    done.finished_at = Some(chrono::Utc::now());
    assert_eq!(
        store.save_leased(&done, token).await.expect("save"),
        Saved::Written
    );
    assert_eq!(status_of(store, completed).await, TaskStatus::Completed);
}

/// Hosts racing to claim one task: exactly one wins.
pub async fn racing_claims_have_one_winner(store: std::sync::Arc<dyn TaskStore>) {
    let id = store.insert(vec![task("echo", 0)]).await.expect("insert")[0]
        .task
        .id;
    let racers: Vec<_> = (0..16)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                claim(
                    store.as_ref(),
                    id,
                    &format!("host-{n}"),
                    Duration::from_secs(60),
                )
                .await
            })
        })
        .collect();
    let mut winners = 0;
    for racer in racers {
        winners += usize::from(racer.await.expect("join").is_some());
    }
    assert_eq!(winners, 1);
    assert_eq!(
        store
            .load(id)
            .await
            .expect("load")
            .expect("stored")
            .attempts,
        1
    );
}

/// The outbox of a store that keeps one (for a queue outside it): a
/// pending task never marked enqueued goes to one sweeper at a time, once
/// old enough; to a sweeper again once the first one's hold has passed
/// without it being marked; never once marked.
pub async fn unsent_tasks_go_to_one_sweeper_at_a_time(store: std::sync::Arc<dyn TaskStore>) {
    use std::collections::HashSet;
    let hold = Duration::from_secs(2);
    let ids: HashSet<TaskId> = store
        .insert((0..30).map(|n| task("echo", n)).collect())
        .await
        .expect("insert")
        .into_iter()
        .map(|s| s.task.id)
        .collect();
    assert!(
        store
            .claim_unsent(Duration::from_secs(3600), hold, 100)
            .await
            .expect("claim")
            .is_empty(),
        "a task just stored may still be on its way to the queue"
    );
    let sweepers: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_unsent(Duration::ZERO, hold, 20).await })
        })
        .collect();
    let mut taken = Vec::new();
    for sweeper in sweepers {
        let claimed: HashSet<TaskId> = sweeper
            .await
            .expect("join")
            .expect("claim")
            .iter()
            .map(|t| t.id)
            .collect();
        taken.push(claimed);
    }
    assert!(
        taken[0].is_disjoint(&taken[1]),
        "two sweepers took the same tasks: {:?}",
        taken[0].intersection(&taken[1]).collect::<Vec<_>>()
    );
    let all: HashSet<TaskId> = taken[0].union(&taken[1]).copied().collect();
    assert_eq!(
        all, ids,
        "between them, the sweepers took every unsent task"
    );
    assert!(
        store
            .claim_unsent(Duration::ZERO, hold, 100)
            .await
            .expect("claim")
            .is_empty(),
        "a claimed task is not taken again within its hold"
    );
    let sent: Vec<TaskId> = taken[0].iter().copied().collect();
    store.mark_enqueued(&sent).await.expect("mark");
    tokio::time::sleep(hold + Duration::from_millis(200)).await;
    let again: HashSet<TaskId> = store
        .claim_unsent(Duration::ZERO, hold, 100)
        .await
        .expect("claim")
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(
        again, taken[1],
        "after the hold, what was not marked sent is taken again, and only that"
    );
}

/// What every [`Queue`](crate::queue::Queue) must do: the tasks it
/// carries are in the store beside it (the tasks-table queue reads them
/// there), so each check inserts its tasks
/// first, and a worker's part (claiming, recording the outcome) is played
/// as the service plays it. Each check runs on a fresh queue with short
/// leases; [`broken`] holds the queues each check is seen to fail on.
pub mod queue {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use taskflow_model::task::{Task, TaskId, TaskStatus};

    use crate::queue::{Delivery, Queue, QueueEntry};
    use crate::storage::{Change, Claim, LeaseState, Saved, TaskStore};

    use super::task;

    /// What a queue under test promises beyond what every queue does.
    #[derive(Clone, Copy)]
    pub struct Promises {
        /// Its lease: how long a delivery not acknowledged stays out of sight.
        pub lease: Duration,
        /// Equal priorities are delivered in submission order (an SQS
        /// standard queue does not promise it).
        pub ordered: bool,
        /// `remove` takes the entry out (SQS cannot delete a message by its
        /// task: the entry comes up and its claim drops it).
        pub removes: bool,
        /// The priority `depth` counts an entry of priority p under (SQS
        /// counts per band, under the band's first priority).
        pub counted_as: fn(u8) -> u8,
        /// Deliveries after which an entry is a dead letter, where the queue
        /// has dead letters.
        pub max_receives: Option<u32>,
    }

    /// A queue under test and the store of its tasks.
    #[derive(Clone)]
    pub struct Subject {
        /// The queue.
        pub queue: Arc<dyn Queue>,
        /// The store its tasks are in.
        pub store: Arc<dyn TaskStore>,
        /// What it promises.
        pub promises: Promises,
        /// Another host's queue on the same backend, for a shared queue,
        /// claiming for [`OTHER_OWNER`].
        pub other: Option<Arc<dyn Queue>>,
        /// The host that claims the deliveries of `queue`.
        pub owner: &'static str,
    }

    /// The host a subject's queue claims for.
    pub const OWNER: &str = "contract";
    /// The host the other queue of a shared subject claims for.
    pub const OTHER_OWNER: &str = "contract-2";

    impl Subject {
        /// The other host's view of a shared queue.
        fn other_host(&self) -> Option<Subject> {
            self.other.clone().map(|queue| Subject {
                queue,
                owner: OTHER_OWNER,
                other: None,
                ..self.clone()
            })
        }
    }

    /// The first delivery within `limit`, asked for in short waits (a long
    /// poll of one SQS band does not see another band's entry meanwhile).
    async fn pop_within(queue: &dyn Queue, limit: Duration) -> Option<Delivery> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Some(delivery) = queue
                .pop(left.min(Duration::from_millis(500)))
                .await
                .expect("pop")
            {
                return Some(delivery);
            }
        }
    }

    /// The delivery of an entry made to wait `delay` from `since`: none
    /// before, one within a few times the delay after.
    async fn delivered_after(queue: &dyn Queue, since: Instant, delay: Duration) -> Delivery {
        let early = pop_within(queue, delay / 3).await;
        assert!(
            early.is_none() || since.elapsed() >= delay,
            "delivered {:?} into a {delay:?} delay",
            since.elapsed()
        );
        let delivery = match early {
            Some(delivery) => delivery,
            None => pop_within(queue, delay * 5)
                .await
                .expect("delivered once due"),
        };
        assert!(
            since.elapsed() >= delay - Duration::from_millis(200),
            "delivered {:?} into a {delay:?} delay",
            since.elapsed()
        );
        delivery
    }

    async fn stored(store: &dyn TaskStore, tasks: Vec<Task>) -> Vec<Task> {
        store
            .insert(tasks)
            .await
            .expect("insert")
            .into_iter()
            .map(|s| s.task)
            .collect()
    }

    /// Stores `tasks` and pushes each, in order.
    async fn queued(subject: &Subject, tasks: Vec<Task>) -> Vec<Task> {
        let tasks = stored(subject.store.as_ref(), tasks).await;
        for task in &tasks {
            let delay = task
                .retry_at
                .and_then(|at| (at - chrono::Utc::now()).to_std().ok())
                .unwrap_or_default();
            subject
                .queue
                .push(QueueEntry::from(task), delay)
                .await
                .expect("push");
        }
        tasks
    }

    fn at_priority(priority: u8) -> Task {
        Task {
            priority,
            ..task("echo", 0)
        }
    }

    /// Starts the task of `delivery` as a worker does: the store's claim of
    /// the delivered id.
    async fn start(subject: &Subject, delivery: &Delivery) -> (Task, u64) {
        let id = delivery.entry.id;
        match subject
            .store
            .claim(id, subject.owner, subject.promises.lease)
            .await
            .expect("claim")
        {
            Claim::Run(claimed) => (claimed.task, claimed.token),
            other => panic!("task {id} is claimable when delivered: {other:?}"),
        }
    }

    /// Runs the task of `delivery` to completed and acknowledges it.
    async fn complete(subject: &Subject, delivery: &Delivery) {
        let (mut task, token) = start(subject, delivery).await;
        task.status = TaskStatus::Completed;
        task.finished_at = Some(chrono::Utc::now());
        assert_eq!(
            subject.store.save_leased(&task, token).await.expect("save"),
            Saved::Written
        );
        subject.queue.ack(delivery).await.expect("ack");
    }

    /// Pops until `wait` passes with nothing, completing each delivery.
    async fn drain(subject: &Subject, wait: Duration) -> Vec<QueueEntry> {
        let mut popped = Vec::new();
        while let Some(delivery) = pop_within(subject.queue.as_ref(), wait).await {
            complete(subject, &delivery).await;
            popped.push(delivery.entry);
            assert!(popped.len() <= 100, "deliveries without end: {popped:?}");
        }
        popped
    }

    /// Each pushed entry is delivered, a higher priority before a lower one
    /// (1 and 10: in different bands on SQS); the queue answers its
    /// readiness check.
    pub async fn delivers_each_entry_highest_priority_first(subject: Subject) {
        subject.queue.check().await.expect("ready");
        let low = queued(&subject, vec![at_priority(10), at_priority(10)]).await;
        let urgent = queued(&subject, vec![at_priority(1)]).await;
        let first = pop_within(subject.queue.as_ref(), Duration::from_secs(2))
            .await
            .expect("a delivery");
        assert_eq!(first.entry.id, urgent[0].id, "priority 1 first");
        assert_eq!((first.entry.priority, first.receive_count), (1, 1));
        complete(&subject, &first).await;
        let rest: HashSet<TaskId> = drain(&subject, Duration::from_secs(1))
            .await
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(rest, low.iter().map(|t| t.id).collect::<HashSet<_>>());
    }

    /// An acknowledged delivery never comes back, not even once its lease
    /// has passed.
    pub async fn an_acknowledged_delivery_never_comes_back(subject: Subject) {
        let tasks = queued(&subject, vec![at_priority(5)]).await;
        let delivery = pop_within(subject.queue.as_ref(), Duration::from_secs(3))
            .await
            .expect("a delivery");
        assert_eq!(delivery.entry.id, tasks[0].id);
        complete(&subject, &delivery).await;
        let again = pop_within(
            subject.queue.as_ref(),
            subject.promises.lease * 2 + Duration::from_secs(1),
        )
        .await;
        assert!(
            again.is_none(),
            "an acknowledged delivery came back: {again:?}"
        );
    }

    /// A delivery is not delivered again while its lease holds; one never
    /// acknowledged comes back after the lease, counted, on a queue that
    /// redelivers (on the others the reaper, not the queue, brings its
    /// task back).
    pub async fn an_unacknowledged_delivery_comes_back_counted(subject: Subject) {
        let tasks = queued(&subject, vec![at_priority(5)]).await;
        let first = pop_within(subject.queue.as_ref(), Duration::from_secs(3))
            .await
            .expect("a delivery");
        assert_eq!((first.entry.id, first.receive_count), (tasks[0].id, 1));
        let held = pop_within(subject.queue.as_ref(), subject.promises.lease / 2).await;
        assert!(held.is_none(), "delivered twice within its lease: {held:?}");
        let again = pop_within(subject.queue.as_ref(), subject.promises.lease * 3).await;
        if subject.queue.redelivers() {
            let again = again.expect("the unacknowledged delivery comes back");
            assert_eq!((again.entry.id, again.receive_count), (tasks[0].id, 2));
            complete(&subject, &again).await;
        } else {
            assert!(again.is_none(), "delivered again by itself: {again:?}");
        }
    }

    /// A host holds no delivery it is not running: of three entries, when
    /// one host takes one, another host gets the other two at once, not
    /// once the first host's lease has run out.
    pub async fn a_host_holds_no_delivery_it_is_not_running(subject: Subject) {
        let Some(other) = subject.other_host() else {
            return;
        };
        let tasks = queued(&subject, (0..3).map(|_| at_priority(5)).collect()).await;
        let first = pop_within(subject.queue.as_ref(), Duration::from_secs(3))
            .await
            .expect("a delivery");
        let mut delivered = vec![first.entry.id];
        for _ in 0..2 {
            let delivery = pop_within(other.queue.as_ref(), subject.promises.lease / 2)
                .await
                .unwrap_or_else(|| {
                    panic!("the other host gets nothing: the first holds what it does not run")
                });
            delivered.push(delivery.entry.id);
            complete(&other, &delivery).await;
        }
        complete(&subject, &first).await;
        delivered.sort();
        let mut ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        ids.sort();
        assert_eq!(delivered, ids);
    }

    /// A retry (the task recorded pending with its backoff, then the
    /// delivery retried) is not delivered before its delay, and is after.
    pub async fn a_retry_waits_out_its_delay(subject: Subject) {
        let delay = Duration::from_secs(3);
        queued(&subject, vec![at_priority(5)]).await;
        let delivery = pop_within(subject.queue.as_ref(), Duration::from_secs(3))
            .await
            .expect("a delivery");
        let (mut task, token) = start(&subject, &delivery).await;
        task.status = TaskStatus::Pending;
        task.retry_at =
            Some(chrono::Utc::now() + chrono::Duration::from_std(delay).expect("delay"));
        assert_eq!(
            subject.store.save_leased(&task, token).await.expect("save"),
            Saved::Written
        );
        let retried = Instant::now();
        subject.queue.retry(&delivery, delay).await.expect("retry");
        let again = delivered_after(subject.queue.as_ref(), retried, delay).await;
        assert_eq!(again.entry.id, task.id);
        assert_eq!(
            again.receive_count, 1,
            "a retry was answered for: the next delivery is fresh"
        );
        complete(&subject, &again).await;
    }

    /// Deliveries a host answered for (retried after a failure, handed back
    /// unrun) never count toward dead letters: an entry retried more often
    /// than the queue's `max_receives` comes back fresh each time and is no
    /// dead letter.
    pub async fn an_answered_delivery_never_becomes_a_dead_letter(subject: Subject) {
        let tasks = queued(&subject, vec![at_priority(5)]).await;
        let rounds = subject.promises.max_receives.unwrap_or(2) + 2;
        for round in 1..=rounds {
            let delivery = pop_within(subject.queue.as_ref(), subject.promises.lease * 2)
                .await
                .unwrap_or_else(|| panic!("round {round}: a retried entry is delivered again"));
            assert_eq!(delivery.entry.id, tasks[0].id);
            assert_eq!(
                delivery.receive_count, 1,
                "round {round}: an answered delivery is followed by a fresh one"
            );
            // Handed back unrun: the attempt does not count.
            let (mut task, token) = start(&subject, &delivery).await;
            task.status = TaskStatus::Pending;
            task.attempts = task.attempts.saturating_sub(1);
            assert_eq!(
                subject.store.save_leased(&task, token).await.expect("save"),
                Saved::Written
            );
            subject
                .queue
                .retry(&delivery, Duration::ZERO)
                .await
                .expect("retry");
        }
        assert!(
            subject
                .queue
                .dead_letters()
                .await
                .expect("dead letters")
                .is_empty(),
            "an entry answered for each time is no dead letter"
        );
        let last = pop_within(subject.queue.as_ref(), subject.promises.lease * 2)
            .await
            .expect("delivered after its last retry");
        complete(&subject, &last).await;
    }

    /// Gives back `delivery` as a stopping host does: its task claimed,
    /// pending again (the attempt not counted), then the entry delivered
    /// again at once.
    async fn give_back(subject: &Subject, delivery: &Delivery) {
        let (mut task, token) = start(subject, delivery).await;
        task.status = TaskStatus::Pending;
        task.attempts = task.attempts.saturating_sub(1);
        assert_eq!(
            subject.store.save_leased(&task, token).await.expect("save"),
            Saved::Written
        );
        subject
            .queue
            .retry(delivery, Duration::ZERO)
            .await
            .expect("give back");
    }

    /// A `pop` dropped before it returns (a worker stopping) loses nothing:
    /// what it fetched is held, a stopping host gives back all it holds,
    /// and that reaches another host at once, well within the lease it
    /// would otherwise wait out, as a fresh delivery.
    pub async fn a_stopping_host_hands_back_everything_it_holds(subject: Subject) {
        let tasks = queued(&subject, (0..3).map(|_| at_priority(1)).collect()).await;
        let cut = Instant::now();
        let mut running = Vec::new();
        for _ in 0..3 {
            // Dropped at its first wait.
            if let Ok(popped) =
                tokio::time::timeout(Duration::ZERO, subject.queue.pop(Duration::from_secs(1)))
                    .await
            {
                running.extend(popped.expect("pop"));
            }
        }
        // What the dropped pops asked for arrives meanwhile.
        tokio::time::sleep(subject.promises.lease / 4).await;
        let held = subject.queue.held();
        if subject.queue.is_shared() {
            assert!(!held.is_empty(), "the dropped pops fetched nothing");
        }
        for delivery in &running {
            complete(&subject, delivery).await;
        }
        for delivery in &held {
            give_back(&subject, delivery).await;
        }
        let receiver = subject.other_host().unwrap_or_else(|| subject.clone());
        let mut rest = Vec::new();
        while running.len() + rest.len() < tasks.len()
            && let Some(delivery) =
                pop_within(receiver.queue.as_ref(), subject.promises.lease / 4).await
        {
            assert!(
                cut.elapsed() < subject.promises.lease,
                "delivered again only once its lease ran out: {delivery:?}"
            );
            assert_eq!(delivery.receive_count, 1, "given back fresh: {delivery:?}");
            complete(&receiver, &delivery).await;
            rest.push(delivery.entry.id);
        }
        let mut seen: Vec<TaskId> = running.iter().map(|d| d.entry.id).collect();
        seen.extend(rest);
        seen.sort();
        let mut all: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        all.sort();
        assert_eq!(seen, all, "each task run once, none waiting out a lease");
    }

    /// A delivery extended while its task runs stays out of sight past the
    /// lease it was delivered with.
    pub async fn an_extended_delivery_stays_out_of_sight(subject: Subject) {
        let lease = subject.promises.lease;
        queued(&subject, vec![at_priority(5)]).await;
        let delivery = pop_within(subject.queue.as_ref(), Duration::from_secs(3))
            .await
            .expect("a delivery");
        let (mut task, token) = start(&subject, &delivery).await;
        subject
            .queue
            .extend(std::slice::from_ref(&delivery), lease * 4)
            .await
            .expect("extend");
        let seen = pop_within(subject.queue.as_ref(), lease * 2 + Duration::from_secs(1)).await;
        assert!(seen.is_none(), "an extended delivery came back: {seen:?}");
        task.status = TaskStatus::Completed;
        assert_eq!(
            subject.store.save_leased(&task, token).await.expect("save"),
            Saved::Written
        );
        subject.queue.ack(&delivery).await.expect("ack");
    }

    /// A task cancelled while queued: `remove` takes its entry out (where
    /// the queue can), `contains` no longer finds it, and it is not run.
    pub async fn a_removed_entry_is_not_run(subject: Subject) {
        let tasks = queued(&subject, vec![at_priority(5), at_priority(5)]).await;
        let (gone, kept) = (tasks[0].id, tasks[1].id);
        let found = subject.queue.contains(gone).await.expect("contains");
        assert_ne!(
            found,
            Some(false),
            "a queued entry is found where it can be"
        );
        subject
            .store
            .update(
                gone,
                Box::new(|task: &mut Task, _: &LeaseState| {
                    task.cancel(chrono::Utc::now());
                    Change::Save
                }),
            )
            .await
            .expect("cancel")
            .expect("task");
        subject.queue.remove(gone).await.expect("remove");
        let found = subject.queue.contains(gone).await.expect("contains");
        assert_ne!(found, Some(true), "a removed entry is not found");
        if subject.promises.removes {
            assert_eq!(found, Some(false), "a queue that removes can look it up");
        }
        let mut delivered = Vec::new();
        while let Some(delivery) = pop_within(subject.queue.as_ref(), Duration::from_secs(1)).await
        {
            delivered.push(delivery.entry.id);
            assert!(
                delivered.len() <= 10,
                "deliveries without end: {delivered:?}"
            );
            if delivery.entry.id == kept {
                complete(&subject, &delivery).await;
            } else {
                // What a worker does with a cancelled task's entry.
                subject.queue.ack(&delivery).await.expect("ack");
            }
        }
        if subject.promises.removes {
            assert_eq!(delivered, [kept]);
        } else {
            assert!(delivered.contains(&kept), "{delivered:?}");
        }
    }

    /// `depth` counts what is ready by priority and what waits out a delay.
    pub async fn depth_counts_ready_entries_by_priority_and_delayed(subject: Subject) {
        let mut later = at_priority(9);
        later.retry_at = Some(chrono::Utc::now() + chrono::Duration::seconds(120));
        let mut tasks = vec![
            at_priority(2),
            at_priority(2),
            at_priority(2),
            at_priority(7),
        ];
        tasks.push(later);
        queued(&subject, tasks).await;
        let counted_as = subject.promises.counted_as;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let depth = subject.queue.depth().await.expect("depth");
            let ready_at = |p: u8| depth.ready.get(&counted_as(p)).copied().unwrap_or(0);
            let right = depth.total == 5
                && depth.delayed == 1
                && ready_at(2) == 3
                && ready_at(7) == 1
                && depth.ready.values().sum::<u64>() == 4
                && depth.ready.len() == 10;
            if right {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "3 ready at priority 2, 1 at 7 and 1 delayed, not {depth:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Equal priorities are delivered in submission order where the queue
    /// promises it.
    pub async fn equal_priorities_come_in_submission_order(subject: Subject) {
        if !subject.promises.ordered {
            return;
        }
        let tasks = queued(&subject, (0..6).map(|_| at_priority(5)).collect()).await;
        let delivered: Vec<TaskId> = drain(&subject, Duration::from_secs(1))
            .await
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            delivered,
            tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
            "submission order"
        );
    }

    /// A delivery never acknowledged through `max_receives` deliveries
    /// becomes a dead letter, counted, and is gone once buried; a queue
    /// without dead letters never has any.
    pub async fn an_entry_delivered_too_often_is_a_dead_letter(subject: Subject) {
        let tasks = queued(&subject, vec![at_priority(5)]).await;
        let Some(max) = subject.promises.max_receives else {
            let delivery = pop_within(subject.queue.as_ref(), Duration::from_secs(3)).await;
            assert!(delivery.is_some());
            assert!(
                subject
                    .queue
                    .dead_letters()
                    .await
                    .expect("dead letters")
                    .is_empty()
            );
            return;
        };
        let mut receives = 0;
        let deadline = Instant::now() + subject.promises.lease * (max + 4);
        let dead = loop {
            assert!(
                Instant::now() < deadline,
                "no dead letter after {receives} receives"
            );
            let dead = subject.queue.dead_letters().await.expect("dead letters");
            if !dead.is_empty() {
                break dead;
            }
            if let Some(delivery) = pop_within(subject.queue.as_ref(), Duration::from_secs(1)).await
            {
                receives += 1;
                assert_eq!(delivery.receive_count, receives);
            }
        };
        assert_eq!(receives, max, "dead after {max} deliveries");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].id, tasks[0].id);
        assert!(dead[0].receive_count >= max, "{dead:?}");
        subject.queue.bury(&dead).await.expect("bury");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            subject
                .queue
                .dead_letters()
                .await
                .expect("dead letters")
                .is_empty()
        );
    }

    /// A delayed entry (pushed with a delay) stays out of sight until due.
    pub async fn keeps_a_delayed_entry_until_it_is_due(subject: Subject) {
        let delay = Duration::from_secs(2);
        let mut later = at_priority(5);
        later.retry_at =
            Some(chrono::Utc::now() + chrono::Duration::from_std(delay).expect("delay"));
        let pushed = Instant::now();
        let later = queued(&subject, vec![later]).await.remove(0);
        let delivery = delivered_after(subject.queue.as_ref(), pushed, delay).await;
        assert_eq!(delivery.entry.id, later.id);
        complete(&subject, &delivery).await;
    }

    /// Entries pushed together are each delivered once.
    pub async fn delivers_a_batch_push(subject: Subject) {
        let tasks = stored(
            subject.store.as_ref(),
            (0..25).map(|n| at_priority(1 + (n % 10) as u8)).collect(),
        )
        .await;
        subject
            .queue
            .push_all(tasks.iter().map(QueueEntry::from).collect())
            .await
            .expect("push all");
        let popped = drain(&subject, Duration::from_secs(1)).await;
        let ids: HashSet<TaskId> = popped.iter().map(|e| e.id).collect();
        assert_eq!(ids, tasks.iter().map(|t| t.id).collect::<HashSet<_>>());
        assert_eq!(ids.len(), popped.len(), "each once");
    }

    /// Queues that break the contract on purpose, one way each, so that
    /// every check above is seen to fail on a queue that does not keep it.
    pub mod broken {
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use taskflow_model::task::TaskId;

        use crate::queue::{DeadLetter, Delivery, Queue, QueueDepth, QueueEntry, QueueError};

        /// The one way a [`Broken`] queue breaks the contract.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Fault {
            /// `ack` does nothing.
            AckIgnored,
            /// `pop` acknowledges what it delivers at once.
            PopAcks,
            /// `retry` and `push` ignore their delay.
            DelayIgnored,
            /// `extend` does nothing.
            ExtendIgnored,
            /// `remove` leaves the entry (and says it took it out).
            RemoveIgnored,
            /// `depth` says the queue is empty.
            DepthEmpty,
            /// Two deliveries at hand come out in reverse.
            Swapped,
            /// `dead_letters` finds none.
            DeadLettersHidden,
            /// `retry` does nothing: the delivery is left to come back by
            /// itself once its lease runs out, counted as unanswered.
            RetryUnanswered,
            /// `held` gives nothing back (what it held is dropped).
            HeldDropped,
        }

        /// A queue that breaks the contract in the way `fault` says.
        pub struct Broken {
            inner: Arc<dyn Queue>,
            fault: Fault,
            held: Mutex<Option<Delivery>>,
        }

        impl Broken {
            /// `inner`, broken by `fault`.
            pub fn new(inner: Arc<dyn Queue>, fault: Fault) -> Self {
                Self {
                    inner,
                    fault,
                    held: Mutex::new(None),
                }
            }

            fn delay(&self, delay: Duration) -> Duration {
                if self.fault == Fault::DelayIgnored {
                    Duration::ZERO
                } else {
                    delay
                }
            }
        }

        #[async_trait::async_trait]
        impl Queue for Broken {
            async fn push(&self, entry: QueueEntry, delay: Duration) -> Result<(), QueueError> {
                self.inner.push(entry, self.delay(delay)).await
            }

            async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
                if self.fault == Fault::RetryUnanswered {
                    return Ok(());
                }
                self.inner.retry(delivery, self.delay(delay)).await
            }

            async fn extend(
                &self,
                deliveries: &[Delivery],
                ttl: Duration,
            ) -> Result<(), QueueError> {
                if self.fault == Fault::ExtendIgnored {
                    return Ok(());
                }
                self.inner.extend(deliveries, ttl).await
            }

            fn redelivers(&self) -> bool {
                self.inner.redelivers()
            }

            async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
                if self.fault == Fault::DeadLettersHidden {
                    return Ok(Vec::new());
                }
                self.inner.dead_letters().await
            }

            async fn bury(&self, dead: &[DeadLetter]) -> Result<(), QueueError> {
                self.inner.bury(dead).await
            }

            async fn pop(&self, wait: Duration) -> Result<Option<Delivery>, QueueError> {
                let held = self
                    .held
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                if held.is_some() {
                    return Ok(held);
                }
                let Some(delivery) = self.inner.pop(wait).await? else {
                    return Ok(None);
                };
                match self.fault {
                    Fault::PopAcks => {
                        self.inner.ack(&delivery).await?;
                        Ok(Some(delivery))
                    }
                    Fault::Swapped => match self.inner.pop(Duration::from_millis(200)).await? {
                        Some(second) => {
                            *self
                                .held
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some(delivery);
                            Ok(Some(second))
                        }
                        None => Ok(Some(delivery)),
                    },
                    _ => Ok(Some(delivery)),
                }
            }

            async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
                if self.fault == Fault::AckIgnored {
                    return Ok(());
                }
                self.inner.ack(delivery).await
            }

            async fn remove(&self, id: TaskId) -> Result<bool, QueueError> {
                if self.fault == Fault::RemoveIgnored {
                    return Ok(true);
                }
                self.inner.remove(id).await
            }

            async fn contains(&self, id: TaskId) -> Result<Option<bool>, QueueError> {
                self.inner.contains(id).await
            }

            async fn depth(&self) -> Result<QueueDepth, QueueError> {
                if self.fault == Fault::DepthEmpty {
                    return Ok(QueueDepth {
                        ready: (1..=10).map(|p| (p, 0)).collect(),
                        ..QueueDepth::default()
                    });
                }
                self.inner.depth().await
            }

            async fn check(&self) -> Result<(), QueueError> {
                self.inner.check().await
            }

            fn held(&self) -> Vec<Delivery> {
                let held = self.inner.held();
                if self.fault == Fault::HeldDropped {
                    return Vec::new();
                }
                held
            }

            fn is_shared(&self) -> bool {
                self.inner.is_shared()
            }

            fn needs_outbox(&self) -> bool {
                self.inner.needs_outbox()
            }
        }
    }
}

/// What every [`BlobStore`](crate::blobs::BlobStore) must do, and the
/// claim check over it.
pub mod blobs {
    use std::sync::Arc;

    use bytes::Bytes;
    use serde_json::json;
    use taskflow_model::task::{TaskId, TaskOutput};

    use crate::blobs::{BlobError, BlobStore, ClaimCheck, payload_key, plugin_key, result_key};

    use super::task;

    /// Bytes that are not text: every byte value, over and over.
    fn binary(len: usize) -> Bytes {
        (0..=255u8).cycle().take(len).collect::<Vec<u8>>().into()
    }

    /// What is put comes back byte for byte, from empty to 5 MiB, under
    /// every kind of key the host writes; the store answers its check.
    pub async fn puts_come_back_byte_for_byte(blobs: &dyn BlobStore) {
        blobs.check().await.expect("ready");
        let id = TaskId::new();
        for (key, bytes) in [
            (payload_key(id), Bytes::new()),
            (result_key(id, 7), binary(70_000)),
            (plugin_key(&"ab".repeat(32)), binary(5 * 1024 * 1024)),
        ] {
            blobs.put(&key, bytes.clone()).await.expect("put");
            let back = blobs.get(&key).await.expect("get").expect("stored");
            assert_eq!(back.len(), bytes.len(), "{key}: size");
            assert!(back == bytes, "{key}: the bytes differ");
        }
    }

    /// A key never written reads as nothing; a put replaces; a delete
    /// removes only its key, and deleting what is not there is no error.
    pub async fn keys_are_replaced_and_deleted_one_by_one(blobs: &dyn BlobStore) {
        let (one, two) = (payload_key(TaskId::new()), payload_key(TaskId::new()));
        assert_eq!(blobs.get(&one).await.expect("get"), None);
        blobs
            .put(&one, Bytes::from_static(b"first"))
            .await
            .expect("put");
        blobs
            .put(&one, Bytes::from_static(b"second"))
            .await
            .expect("put again");
        blobs
            .put(&two, Bytes::from_static(b"other"))
            .await
            .expect("put");
        assert_eq!(
            blobs.get(&one).await.expect("get"),
            Some(Bytes::from_static(b"second"))
        );
        blobs.delete(&one).await.expect("delete");
        assert_eq!(blobs.get(&one).await.expect("get"), None);
        blobs.delete(&one).await.expect("delete again");
        assert_eq!(
            blobs.get(&two).await.expect("get"),
            Some(Bytes::from_static(b"other")),
            "a delete removes only its own key"
        );
    }

    /// Listing gives the keys under a prefix in key order, a page at a
    /// time from just after a key, with when each was written; a batch
    /// delete removes exactly its keys, absent ones included.
    pub async fn keys_are_listed_in_order_and_deleted_in_batches(blobs: &dyn BlobStore) {
        let prefix = format!("listing-{}/", TaskId::new());
        let keys: Vec<String> = (0..7).map(|n| format!("{prefix}{n:02}")).collect();
        let before = chrono::Utc::now() - chrono::Duration::seconds(5);
        for key in keys.iter().rev() {
            blobs.put(key, Bytes::from_static(b"x")).await.expect("put");
        }
        blobs
            .put("elsewhere/00", Bytes::from_static(b"x"))
            .await
            .expect("put");
        let first = blobs.list(&prefix, None, 3).await.expect("list");
        assert_eq!(
            first.iter().map(|b| &b.key).collect::<Vec<_>>(),
            keys[..3].iter().collect::<Vec<_>>()
        );
        let after = chrono::Utc::now() + chrono::Duration::seconds(5);
        assert!(
            first
                .iter()
                .all(|b| b.written_at > before && b.written_at < after),
            "written just now: {first:?}"
        );
        let rest = blobs
            .list(&prefix, Some(&first[2].key), 100)
            .await
            .expect("list");
        assert_eq!(
            rest.iter().map(|b| &b.key).collect::<Vec<_>>(),
            keys[3..].iter().collect::<Vec<_>>(),
            "from just after the given key, only under the prefix"
        );
        let doomed = vec![keys[1].clone(), keys[4].clone(), format!("{prefix}absent")];
        blobs.delete_many(&doomed).await.expect("delete many");
        let left = blobs.list(&prefix, None, 100).await.expect("list");
        assert_eq!(
            left.iter().map(|b| b.key.as_str()).collect::<Vec<_>>(),
            [&keys[0], &keys[2], &keys[3], &keys[5], &keys[6]]
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
        );
        assert!(
            blobs.get("elsewhere/00").await.expect("get").is_some(),
            "other prefixes untouched"
        );
    }

    /// Over this store, the claim check keeps bodies up to its threshold in
    /// the record and larger ones in the store, with their size and
    /// SHA-256; reads give them back, and a body that went missing or was
    /// altered is reported, never handed on.
    pub async fn the_claim_check_keeps_large_bodies_and_checks_them(blobs: Arc<dyn BlobStore>) {
        let check = ClaimCheck::new(blobs.clone(), 1024);
        let mut small = task("echo", 1);
        assert_eq!(check.store_payload(&mut small).await.expect("store"), None);
        assert!(small.payload_blob.is_none() && small.payload == json!({"n": 1}));

        let mut large = task("echo", 2);
        let text = "ü".repeat(2000);
        large.payload = json!({ "text": text });
        let sent = large.payload_bytes();
        let moved = check.store_payload(&mut large).await.expect("store");
        assert_eq!(moved, Some(json!({ "text": text })));
        let blob = large.payload_blob.clone().expect("in the blob store");
        assert_eq!(blob.key, payload_key(large.id));
        assert_eq!(blob.size, sent.len() as u64);
        assert_eq!(blob.sha256.len(), 64);
        assert_eq!(large.payload, serde_json::Value::Null, "not in the record");
        assert_eq!(check.payload(&large).await.expect("payload"), sent);

        check
            .store_result(&mut large, &sent, 3)
            .await
            .expect("store result");
        assert!(large.result.is_none());
        let result_blob = large.result_blob.clone().expect("result in the store");
        assert_eq!(result_blob.key, result_key(large.id, 3));
        let mut read = large.clone();
        check.resolve(&mut read).await.expect("resolve");
        assert_eq!(read.payload, json!({ "text": text }));
        assert_eq!(read.result, Some(TaskOutput::Json(json!({ "text": text }))));
        assert!(read.payload_blob.is_none() && read.result_blob.is_none());

        let mut short = task("echo", 3);
        check
            .store_result(&mut short, b"not json", 1)
            .await
            .expect("store small result");
        assert!(short.result_blob.is_none() && short.result.is_some());

        // Altered: same size, other bytes.
        let mut altered = sent.clone();
        altered[10] ^= 1;
        blobs
            .put(&blob.key, altered.into())
            .await
            .expect("overwrite");
        let error = check.payload(&large).await.expect_err("altered payload");
        assert!(
            matches!(&error, BlobError::Corrupt { reason, .. } if reason.contains("SHA-256")),
            "{error}"
        );
        blobs.delete(&blob.key).await.expect("delete");
        let error = check
            .resolve(&mut large.clone())
            .await
            .expect_err("missing");
        assert!(matches!(error, BlobError::Missing(_)), "{error}");
    }
}

/// A task finished `ago` in `status`, stored as a backup restores it.
async fn finished(store: &dyn TaskStore, sequence: u64, status: TaskStatus, ago: Duration) -> Task {
    let mut task = task("echo", sequence);
    task.status = status;
    task.attempts = 1;
    task.finished_at = Some(chrono::Utc::now() - chrono::Duration::from_std(ago).expect("age"));
    store.restore(&task).await.expect("restore");
    task
}

/// What the store counts agrees with what it holds.
async fn counts_agree(store: &dyn TaskStore, when: &str) {
    let mut held = std::collections::BTreeMap::new();
    for task in store.all().await.expect("all") {
        *held.entry(task.status).or_insert(0_u64) += 1;
    }
    let counts = store.counts().await.expect("counts");
    for status in TaskStatus::ALL {
        assert_eq!(
            counts[&status],
            held.get(&status).copied().unwrap_or(0),
            "{status} tasks counted {when}"
        );
    }
}

/// Retention: `expire` deletes finished tasks of one status that finished
/// before the cutoff, oldest first, a batch at a time, says which with the
/// keys of their bodies, and touches nothing else: not newer ones, not
/// other statuses, never a pending or running task. Counts follow every
/// change, before and after they are compacted.
pub async fn expire_deletes_only_finished_tasks_past_their_age(store: &dyn TaskStore) {
    let hour = Duration::from_secs(3600);
    let mut old_completed = Vec::new();
    for n in 0..5_u64 {
        // Restored in an order other than their age.
        let ago = hour * (2 + u32::try_from((n * 3) % 5).expect("small"));
        old_completed.push((ago, finished(store, n, TaskStatus::Completed, ago).await));
    }
    old_completed.sort_by_key(|(ago, _)| std::cmp::Reverse(*ago));
    let mut with_bodies = task("echo", 5);
    with_bodies.status = TaskStatus::Completed;
    with_bodies.finished_at = Some(chrono::Utc::now() - chrono::Duration::hours(30));
    let body = |key: &str| taskflow_model::task::BlobRef {
        key: key.to_string(),
        size: 1,
        sha256: "0".repeat(64),
    };
    with_bodies.payload_blob = Some(body("payloads/ab/with-bodies"));
    with_bodies.result_blob = Some(body("results/ab/with-bodies/1"));
    store.restore(&with_bodies).await.expect("restore");
    let recent = finished(store, 6, TaskStatus::Completed, Duration::from_secs(60)).await;
    let old_failed = finished(store, 7, TaskStatus::Failed, hour * 2).await;
    let old_cancelled = finished(store, 8, TaskStatus::Cancelled, hour * 2).await;
    let pending = store.insert(vec![task("echo", 9)]).await.expect("insert")[0]
        .task
        .clone();
    let running = store.insert(vec![task("echo", 10)]).await.expect("insert")[0]
        .task
        .id;
    claim(store, running, "host-a", Duration::from_secs(60))
        .await
        .expect("claimable");
    counts_agree(store, "before retention").await;

    let cutoff = chrono::Utc::now() - chrono::Duration::hours(1);
    for status in [TaskStatus::Pending, TaskStatus::Running] {
        assert!(
            store
                .expire(status, chrono::Utc::now(), 100)
                .await
                .expect("expire")
                .is_empty(),
            "a {status} task is never expired"
        );
    }
    let first = store
        .expire(TaskStatus::Completed, cutoff, 2)
        .await
        .expect("expire");
    let ids = |expired: &[crate::storage::Expired]| {
        expired
            .iter()
            .map(|e| e.id)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        ids(&first),
        [with_bodies.id, old_completed[0].1.id].into(),
        "the oldest first, at most the limit"
    );
    let first: Vec<_> = [with_bodies.id, old_completed[0].1.id]
        .iter()
        .map(|id| first.iter().find(|e| e.id == *id).expect("expired").clone())
        .collect();
    assert_eq!(
        first[0]
            .blobs
            .iter()
            .collect::<std::collections::BTreeSet<_>>(),
        ["payloads/ab/with-bodies", "results/ab/with-bodies/1"]
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .iter()
            .collect(),
        "the keys of its bodies"
    );
    assert!(first[1].blobs.is_empty(), "no bodies, no keys");
    counts_agree(store, "after a first batch").await;
    let rest = store
        .expire(TaskStatus::Completed, cutoff, 100)
        .await
        .expect("expire");
    assert_eq!(
        ids(&rest),
        old_completed[1..].iter().map(|(_, t)| t.id).collect()
    );
    assert!(
        store
            .expire(TaskStatus::Completed, cutoff, 100)
            .await
            .expect("expire")
            .is_empty(),
        "nothing due is left"
    );
    for gone in first.iter().chain(&rest) {
        assert_eq!(store.load(gone.id).await.expect("load"), None);
    }
    for kept in [
        recent.id,
        old_failed.id,
        old_cancelled.id,
        pending.id,
        running,
    ] {
        assert!(
            store.load(kept).await.expect("load").is_some(),
            "{kept} must stay"
        );
    }
    store.compact_counts().await.expect("compact");
    counts_agree(store, "after compaction").await;
    let failed = store
        .expire(TaskStatus::Failed, cutoff, 100)
        .await
        .expect("expire");
    assert_eq!(ids(&failed), [old_failed.id].into());
    store.delete(pending.id).await.expect("delete");
    counts_agree(store, "after more changes").await;
    store.compact_counts().await.expect("compact");
    counts_agree(store, "after a second compaction").await;
    assert_eq!(
        store.counts().await.expect("counts")[&TaskStatus::Completed],
        1,
        "the recent completed task only"
    );
}
