//! The PostgreSQL task store against a real server: at
//! `TASKFLOW_TEST_DATABASE_URL`, by default the development machines'
//! `postgres://postgres@127.0.0.1:5432/test`. A missing server fails these
//! tests; it never skips them. Each test works in a schema of its own.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use taskflow_backend::contract::{self, task};
use taskflow_backend::storage::{Claim, TaskStore};
use taskflow_model::task::{TaskId, TaskStatus};
use taskflow_postgres::PgStore;
use taskflow_server::config::{QueueBackend, StorageBackend};
use taskflow_tests::pg::{database_url, drop_schema, fresh_schema, schema_url};
use taskflow_tests::{TestHost, poll_json};

async fn store() -> (PgStore, String) {
    let (schema, options) = fresh_schema().await;
    (
        PgStore::connect(options, 8)
            .await
            .expect("connect and migrate"),
        schema,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_save_load_update_and_delete() {
    let (store, schema) = store().await;
    let mut saved = task("echo", 1);
    saved.idempotency_key = Some("order-42".into());
    saved.payload = json!({"text": "ünïcode ✓ and a \u{0} NUL", "big": 12_345_678_901_234_u64, "nested": [1, {"a": null}]});
    store.save(&saved).await.expect("save");
    assert_eq!(
        store.load(saved.id).await.expect("load"),
        Some(saved.clone())
    );
    assert_eq!(store.load(TaskId::new()).await.expect("load unknown"), None);

    saved.status = TaskStatus::Completed;
    saved.attempts = 1;
    store.save(&saved).await.expect("update");
    assert_eq!(
        store.load(saved.id).await.expect("load"),
        Some(saved.clone())
    );
    assert_eq!(
        store
            .find_by_idempotency_key("order-42")
            .await
            .expect("find"),
        Some(saved.clone())
    );
    assert_eq!(
        store
            .find_by_idempotency_key("order-43")
            .await
            .expect("find"),
        None
    );
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        counts.len(),
        TaskStatus::ALL.len(),
        "every status is present"
    );
    assert_eq!(
        (counts[&TaskStatus::Completed], counts[&TaskStatus::Pending]),
        (1, 0)
    );

    assert!(store.delete(saved.id).await.expect("delete"));
    assert!(!store.delete(saved.id).await.expect("delete again"));
    assert_eq!(store.load(saved.id).await.expect("load"), None);
    store.check().await.expect("ready");
    drop_schema(&schema).await;
}

/// The tasks-table queue's claim is the store's: `claim_due` claims due
/// tasks in priority then submission order and keeps each claim for the
/// claim of its id by the same host, once; any other host finds it busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_due_tasks_in_order_for_the_claim_of_their_ids() {
    let (store, schema) = store().await;
    let long = Duration::from_secs(60);
    let mut urgent = task("echo", 0);
    urgent.priority = 1;
    let mut later = task("echo", 0);
    later.retry_at = Some(chrono::Utc::now() + chrono::Duration::seconds(30));
    let ids: Vec<TaskId> = store
        .insert(vec![task("echo", 0), later, task("echo", 0), urgent])
        .await
        .expect("insert")
        .iter()
        .map(|s| s.task.id)
        .collect();
    let claimed: Vec<TaskId> = store
        .claim_due("host-a", long, 10)
        .await
        .expect("claim due")
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(
        claimed,
        vec![ids[3], ids[0], ids[2]],
        "priority first, then submission order; the task waiting out a backoff is not due"
    );
    let row: (String, Option<String>) =
        sqlx::query_as("SELECT status, owner FROM tasks WHERE id = $1")
            .bind(ids[0].as_uuid())
            .fetch_one(store.pool())
            .await
            .expect("row");
    assert_eq!(
        row,
        ("running".into(), Some("host-a".into())),
        "claimed in the store"
    );

    assert_eq!(
        store.claim(ids[0], "host-b", long).await.expect("claim"),
        Claim::Busy,
        "another host finds it running"
    );
    let Claim::Run(first) = store.claim(ids[0], "host-a", long).await.expect("claim") else {
        panic!("the claiming host's claim of the id hands the claim over");
    };
    assert_eq!((first.task.id, first.task.attempts), (ids[0], 1));
    assert_eq!(
        store.load(ids[0]).await.expect("load").expect("stored"),
        first.task
    );
    assert_eq!(
        store.claim(ids[0], "host-a", long).await.expect("claim"),
        Claim::Busy,
        "handed over once: it runs under the lease it was claimed with"
    );
    assert!(
        store
            .claim_due("host-b", long, 10)
            .await
            .expect("claim due")
            .is_empty(),
        "nothing else is due"
    );
    drop_schema(&schema).await;
}

/// The fleet's jobs (retention) run on one host at a time: the lead is
/// its holder's while it renews it, and another host's once it lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_at_a_time_leads_a_fleet_job() {
    let (store, schema) = store().await;
    let hold = Duration::from_millis(1500);
    assert!(store.lead("retention", "host-a", hold).await.expect("lead"));
    assert!(!store.lead("retention", "host-b", hold).await.expect("lead"));
    assert!(
        store.lead("other-job", "host-b", hold).await.expect("lead"),
        "jobs are led apart"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        store
            .lead("retention", "host-a", hold)
            .await
            .expect("renew")
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !store.lead("retention", "host-b", hold).await.expect("lead"),
        "a renewed lead holds past its first term"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        store
            .lead("retention", "host-b", hold)
            .await
            .expect("take over")
    );
    assert!(!store.lead("retention", "host-a", hold).await.expect("lead"));
    drop_schema(&schema).await;
}

/// Rows a host cannot read (written by a newer version during a rolling
/// upgrade, say): a pending one ahead of every other task, and a running one
/// whose lease expired among others. The host leaves both as they are and
/// runs every other task: pending ones, and expired ones its reaper takes
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_host_cannot_read_do_not_stop_its_claims_or_its_reaper() {
    let (store, schema) = store().await;
    let mut urgent = task("echo", 0);
    urgent.priority = 1;
    let mut tasks = vec![urgent];
    tasks.extend((1..=6).map(|n| task("echo", n)));
    let ids: Vec<TaskId> = store
        .insert(tasks)
        .await
        .expect("insert")
        .iter()
        .map(|s| s.task.id)
        .collect();
    // ids[1..4] were running on a host that stopped: their leases expire.
    for id in &ids[1..4] {
        contract::claim(&store, *id, "gone", Duration::from_millis(1))
            .await
            .expect("claimed");
    }
    let (bad_pending, bad_running) = (ids[0], ids[2]);
    sqlx::query(
        "UPDATE tasks SET doc = '{\"written by\": \"a newer version\"}' WHERE id = ANY($1)",
    )
    .bind(vec![*bad_pending.as_uuid(), *bad_running.as_uuid()])
    .execute(store.pool())
    .await
    .expect("write rows this version cannot read");

    let data = tempfile::tempdir().expect("tempdir");
    taskflow_tests::install_plugins(&data.path().join("plugins"), &["echo"]);
    let host = taskflow_tests::process::HostProcess::start_shared(
        data.path(),
        &schema_url(&schema),
        "postgres",
        &["--lease-secs", "2"],
    )
    .await;
    let client = reqwest::Client::new();
    for id in ids
        .iter()
        .filter(|id| ![bad_pending, bad_running].contains(id))
    {
        let done = poll_json(
            &client,
            &format!("{}/tasks/{id}", host.url),
            Duration::from_secs(30),
            |t| t["status"] == "completed",
        )
        .await;
        assert_eq!(done["result"]["value"], done["payload"], "{done}");
    }
    let statuses: Vec<(String,)> =
        sqlx::query_as("SELECT status FROM tasks WHERE id = ANY($1) ORDER BY sequence")
            .bind(vec![*bad_pending.as_uuid(), *bad_running.as_uuid()])
            .fetch_all(store.pool())
            .await
            .expect("statuses");
    assert_eq!(
        statuses,
        [("pending".to_string(),), ("running".to_string(),)],
        "left for a host that can read them"
    );
    host.terminate();
    drop_schema(&schema).await;
}

/// The first host on a database records the fleet's settings (queue, SQS
/// prefix, blobs, bucket); a host started on it with other ones refuses to
/// start, naming each difference, instead of taking tasks it cannot run;
/// one with the same settings joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_settings_differ_from_its_fleets_refuses_to_start() {
    let (schema, _) = fresh_schema().await;
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let config = |n: usize, queue: QueueBackend| {
        let mut config = taskflow_tests::serve_config(dirs[n].path(), 1);
        config.storage = StorageBackend::Postgres;
        config.postgres.database_url = Some(schema_url(&schema));
        config.queue = queue;
        config
    };
    let first = taskflow_server::Server::start(config(0, QueueBackend::Postgres))
        .await
        .expect("the first host records the fleet's settings");
    let refused = taskflow_server::Server::start(config(1, QueueBackend::Local))
        .await
        .map(|_| ())
        .expect_err("other settings");
    let message = format!("{refused:#}");
    assert!(
        message.contains("TASKFLOW_QUEUE is local here, postgres in the fleet"),
        "{message}"
    );
    let joined = taskflow_server::Server::start(config(2, QueueBackend::Postgres))
        .await
        .expect("the same settings join");
    drop((first, joined));
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_on_postgres_runs_tasks_and_finds_them_after_a_restart() {
    let (schema, _) = fresh_schema().await;
    let url = schema_url(&schema);
    let postgres = |config: &mut taskflow_server::config::ServeConfig| {
        config.storage = StorageBackend::Postgres;
        config.postgres.database_url = Some(url.clone());
    };
    let host = TestHost::start_with(2, false, postgres).await;
    let client = reqwest::Client::new();
    let response = client
        .post(host.at("/tasks"))
        .json(&json!({"plugin": "wordcount", "payload": {"text": "to be or not to be"}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let done = poll_json(
        &client,
        &host.at(&format!("/tasks/{id}")),
        Duration::from_secs(30),
        |t| t["status"] == "completed",
    )
    .await;
    assert_eq!(done["result"]["value"]["words"], 6);
    let ready = client.get(host.at("/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);

    // A second host shares the database: it sees the task, and its
    // startup leaves the first host's work alone.
    let second = TestHost::start_with(1, false, postgres).await;
    let seen: Value = client
        .get(second.at(&format!("/tasks/{id}")))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(seen, done);
    second.stop().await;
    host.stop().await;

    // A new host with an empty data directory: the task lives in the database.
    let host = TestHost::start_with(2, false, postgres).await;
    let task: Value = client
        .get(host.at(&format!("/tasks/{id}")))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(task, done, "the task outlives the host");
    let stats: Value = client
        .get(host.at("/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["system"]["tasks"]["completed"], 1);
    host.stop().await;
    drop_schema(&schema).await;
}

#[tokio::test]
async fn a_wrong_database_url_stops_the_host_with_a_clear_message() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = taskflow_tests::serve_config(data.path(), 1);
    config.storage = StorageBackend::Postgres;
    config.postgres.database_url = None;
    let missing = taskflow_server::Server::start(config.clone())
        .await
        .map(|_| ())
        .expect_err("no URL");
    assert!(
        format!("{missing:#}").contains("TASKFLOW_DATABASE_URL"),
        "{missing:#}"
    );
    config.postgres.database_url = Some("mysql://root@127.0.0.1/test".into());
    let wrong = taskflow_server::Server::start(config.clone())
        .await
        .map(|_| ())
        .expect_err("not PostgreSQL");
    assert!(
        format!("{wrong:#}").contains("postgres:// URL"),
        "{wrong:#}"
    );
    let server: PgConnectOptions = database_url().parse().expect("test URL");
    config.postgres.database_url = Some(format!(
        "postgres://no_such_role_here@{}:{}/{}",
        server.get_host(),
        server.get_port(),
        server.get_database().unwrap_or("test")
    ));
    let refused = taskflow_server::Server::start(config)
        .await
        .map(|_| ())
        .expect_err("unknown role");
    let message = format!("{refused:#}");
    assert!(
        message.contains("TASKFLOW_DATABASE_URL") && message.contains("no_such_role_here"),
        "{message}"
    );
}

/// A TCP forwarder to `target` on `listen`; dropping the handle (aborting
/// it) closes every connection it carries, as a network cut would.
async fn forwarder(
    listen: std::net::SocketAddr,
    target: String,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("bind forwarder");
    let addr = listener.local_addr().expect("addr");
    let handle = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            connections.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_fails_while_the_database_is_unreachable_and_recovers_with_it() {
    let (schema, _) = fresh_schema().await;
    let server: PgConnectOptions = database_url().parse().expect("test URL");
    let target = format!("{}:{}", server.get_host(), server.get_port());
    let (proxy, cut) = forwarder("127.0.0.1:0".parse().expect("addr"), target.clone()).await;
    let url = format!(
        "postgres://{}@{proxy}/{}?options=-c%20search_path%3D{schema}",
        server.get_username(),
        server.get_database().unwrap_or("test")
    );
    let host = TestHost::start_with(1, false, |config| {
        config.storage = StorageBackend::Postgres;
        config.queue = taskflow_server::config::QueueBackend::Postgres;
        config.postgres.database_url = Some(url.clone());
    })
    .await;
    let client = reqwest::Client::new();
    let up = poll_json(&client, &host.at("/ready"), Duration::from_secs(10), |r| {
        r["status"] == "ok"
    })
    .await;
    assert_eq!(
        up["backends"],
        json!({"queue": "ok", "storage": "ok", "blobs": "ok"}),
        "{up}"
    );

    cut.abort();
    let _ = cut.await;
    let down = poll_json(&client, &host.at("/ready"), Duration::from_secs(60), |r| {
        r["status"] == "unavailable"
    })
    .await;
    assert_eq!(
        down["reason"], "unreachable: queue, storage, blobs",
        "{down}"
    );
    assert_eq!(
        down["backends"],
        json!({"queue": "unavailable", "storage": "unavailable", "blobs": "unavailable"}),
        "{down}"
    );
    assert_eq!(
        client
            .get(host.at("/health"))
            .send()
            .await
            .expect("health")
            .status(),
        reqwest::StatusCode::OK,
        "alive all the same"
    );

    let (_, _restored) = forwarder(proxy, target).await;
    poll_json(&client, &host.at("/ready"), Duration::from_secs(60), |r| {
        r["status"] == "ok"
    })
    .await;
    let response = client
        .post(host.at("/tasks"))
        .json(&json!({"plugin": "echo", "payload": 1}))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    host.stop().await;
    drop_schema(&schema).await;
}

/// An idle host on the PostgreSQL queue asks the database for work about
/// twice a second, however many workers wait (32 here: before, each of
/// them claimed twice a second), and still takes a task as soon as it is
/// submitted (the notification wakes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_host_claims_about_twice_a_second_whatever_its_workers() {
    // A database of its own: hosts of other tests notify on the same
    // channel in a shared one, and this host would claim on each of those.
    let (database, url) = taskflow_tests::pg::fresh_database().await;
    let host = TestHost::start_with(32, false, |config| {
        config.storage = StorageBackend::Postgres;
        config.queue = QueueBackend::Postgres;
        config.postgres.database_url = Some(url);
    })
    .await;
    let client = reqwest::Client::new();
    let claims = || {
        taskflow_tests::metric_sum(
            &client,
            &host.url,
            "taskflow_queue_requests_total",
            &["purpose=\"tasks\""],
        )
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = claims().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let idle = claims().await - before;
    assert!(
        (4..=14).contains(&idle),
        "{idle} claims in 4 s by an idle host with 32 workers (it polls about twice a second)"
    );
    let response = client
        .post(host.at("/tasks"))
        .json(&json!({"plugin": "echo", "payload": {"after": "idle"}}))
        .send()
        .await
        .expect("submit");
    let id = response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let done = poll_json(
        &client,
        &host.at(&format!("/tasks/{id}")),
        Duration::from_secs(10),
        |t| t["status"] == "completed",
    )
    .await;
    assert_eq!(done["result"]["value"], json!({"after": "idle"}));
    host.stop().await;
    taskflow_tests::pg::drop_database(&database).await;
}
