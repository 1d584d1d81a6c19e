//! One behavioural contract for every queue (`taskflow_backend::contract::queue`),
//! run against each: the in-process heap, the PostgreSQL tasks table, and
//! SQS (moto) with PostgreSQL beside it, each with leases of 2 s; and each
//! check run once more on a queue broken on purpose in the way it checks,
//! where it must fail.

use std::sync::Arc;
use std::time::Duration;

use taskflow_aws::SqsQueue;
use taskflow_aws::sqs::{SqsSettings, parse_bands};
use taskflow_backend::contract::queue::broken::{Broken, Fault};
use taskflow_backend::contract::queue::{self as contract, OTHER_OWNER, OWNER, Promises, Subject};
use taskflow_backend::queue::Queue;
use taskflow_backend::storage::TaskStore;
use taskflow_files::{FileStore, LocalQueue};
use taskflow_postgres::{PgQueue, PgStore};
use taskflow_tests::{aws, pg};

/// Every queue's lease here.
const LEASE: Duration = Duration::from_secs(2);
/// Deliveries before an SQS message is a dead letter here.
const MAX_RECEIVES: u32 = 2;

/// What the heap and the tasks table promise: exact order, entries taken
/// out by `remove`, depth by priority, no dead letters.
const IN_ORDER: Promises = Promises {
    lease: LEASE,
    ordered: true,
    removes: true,
    counted_as: |p| p,
    max_receives: None,
};

/// A queue under test, with what it needs kept alive and cleaned up.
struct Harness {
    name: &'static str,
    subject: Subject,
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    async fn local() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn TaskStore> = Arc::new(
            FileStore::open(dir.path(), false)
                .await
                .expect("file store"),
        );
        Self {
            name: "local",
            subject: Subject {
                queue: Arc::new(LocalQueue::new()),
                store,
                promises: IN_ORDER,
                other: None,
                owner: OWNER,
            },
            schema: None,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Self {
        let (schema, options) = pg::fresh_schema().await;
        let store = PgStore::connect(options, 8)
            .await
            .expect("PostgreSQL store");
        let queue = PgQueue::start(store.clone(), OWNER.into(), LEASE)
            .await
            .expect("PostgreSQL queue");
        let other = PgQueue::start(store.clone(), OTHER_OWNER.into(), LEASE)
            .await
            .expect("PostgreSQL queue");
        Self {
            name: "postgres",
            subject: Subject {
                queue: Arc::new(queue),
                store: Arc::new(store),
                promises: IN_ORDER,
                other: Some(Arc::new(other)),
                owner: OWNER,
            },
            schema: Some(schema),
            _dir: None,
        }
    }

    async fn sqs() -> Self {
        let (schema, options) = pg::fresh_schema().await;
        let store = PgStore::connect(options, 8)
            .await
            .expect("PostgreSQL store");
        let prefix = aws::fresh_prefix();
        aws::create_queues(&prefix, 3, MAX_RECEIVES).await;
        let settings = SqsSettings {
            prefix,
            bands: parse_bands("1-3,4-7,8-10").expect("bands"),
            lease: LEASE,
        };
        let queue = SqsQueue::start(aws::sqs().await, settings.clone())
            .await
            .expect("SQS queue");
        let other = SqsQueue::start(aws::sqs().await, settings)
            .await
            .expect("SQS queue");
        Self {
            name: "sqs",
            subject: Subject {
                queue: Arc::new(queue),
                store: Arc::new(store),
                promises: Promises {
                    lease: LEASE,
                    ordered: false,
                    removes: false,
                    counted_as: |p| match p {
                        1..=3 => 1,
                        4..=7 => 4,
                        _ => 8,
                    },
                    max_receives: Some(MAX_RECEIVES),
                },
                other: Some(Arc::new(other)),
                owner: OWNER,
            },
            schema: Some(schema),
            _dir: None,
        }
    }

    async fn finish(self) {
        if let Some(schema) = &self.schema {
            pg::drop_schema(schema).await;
        }
    }
}

/// Runs `check` on a fresh queue of each kind.
async fn each<F: Future<Output = ()>>(check: impl Fn(Subject) -> F) {
    for harness in [
        Harness::local().await,
        Harness::postgres().await,
        Harness::sqs().await,
    ] {
        eprintln!("queue contract on {}", harness.name);
        check(harness.subject.clone()).await;
        harness.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_delivers_each_entry_highest_priority_first() {
    each(contract::delivers_each_entry_highest_priority_first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_keeps_a_delayed_entry_until_it_is_due() {
    each(contract::keeps_a_delayed_entry_until_it_is_due).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_delivers_a_batch_push() {
    each(contract::delivers_a_batch_push).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_queue_brings_back_an_acknowledged_delivery() {
    each(contract::an_acknowledged_delivery_never_comes_back).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_holds_an_unacknowledged_delivery_for_its_lease() {
    each(contract::an_unacknowledged_delivery_comes_back_counted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shared_queue_holds_a_delivery_a_host_is_not_running() {
    each(contract::a_host_holds_no_delivery_it_is_not_running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_keeps_a_retry_for_its_delay() {
    each(contract::a_retry_waits_out_its_delay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_queue_counts_an_answered_delivery_toward_dead_letters() {
    each(contract::an_answered_delivery_never_becomes_a_dead_letter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_gives_back_what_a_stopping_host_holds() {
    each(contract::a_stopping_host_hands_back_everything_it_holds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_keeps_an_extended_delivery_out_of_sight() {
    each(contract::an_extended_delivery_stays_out_of_sight).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_queue_runs_a_removed_entry() {
    each(contract::a_removed_entry_is_not_run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_counts_its_depth() {
    each(contract::depth_counts_ready_entries_by_priority_and_delayed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_queues_keep_submission_order_within_a_priority() {
    each(contract::equal_priorities_come_in_submission_order).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_has_dead_letters_only_where_it_promises_them() {
    each(contract::an_entry_delivered_too_often_is_a_dead_letter).await;
}

/// Which queue a broken one wraps.
#[derive(Clone, Copy)]
enum Kind {
    Local,
    Postgres,
    Sqs,
}

/// Each check fails on a queue broken in the way it checks (the queue it
/// breaks is the one whose mechanism the check is about: SQS where
/// acknowledging, extending and dead letters do something).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_fails_on_a_queue_broken_its_way() {
    type Check = fn(Subject) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
    let cases: [(&str, Check, Fault, Kind); 14] = [
        (
            "priority",
            |s| Box::pin(contract::delivers_each_entry_highest_priority_first(s)),
            Fault::Swapped,
            Kind::Local,
        ),
        (
            "delayed",
            |s| Box::pin(contract::keeps_a_delayed_entry_until_it_is_due(s)),
            Fault::DelayIgnored,
            Kind::Local,
        ),
        (
            "acknowledged",
            |s| Box::pin(contract::an_acknowledged_delivery_never_comes_back(s)),
            Fault::AckIgnored,
            Kind::Sqs,
        ),
        (
            "unacknowledged",
            |s| Box::pin(contract::an_unacknowledged_delivery_comes_back_counted(s)),
            Fault::PopAcks,
            Kind::Sqs,
        ),
        (
            "retry",
            |s| Box::pin(contract::a_retry_waits_out_its_delay(s)),
            Fault::DelayIgnored,
            Kind::Local,
        ),
        (
            "answered",
            |s| {
                Box::pin(contract::an_answered_delivery_never_becomes_a_dead_letter(
                    s,
                ))
            },
            Fault::RetryUnanswered,
            Kind::Sqs,
        ),
        (
            "stopping (tasks table)",
            |s| Box::pin(contract::a_stopping_host_hands_back_everything_it_holds(s)),
            Fault::HeldDropped,
            Kind::Postgres,
        ),
        (
            "stopping (SQS)",
            |s| Box::pin(contract::a_stopping_host_hands_back_everything_it_holds(s)),
            Fault::HeldDropped,
            Kind::Sqs,
        ),
        (
            "extended",
            |s| Box::pin(contract::an_extended_delivery_stays_out_of_sight(s)),
            Fault::ExtendIgnored,
            Kind::Sqs,
        ),
        (
            "removed",
            |s| Box::pin(contract::a_removed_entry_is_not_run(s)),
            Fault::RemoveIgnored,
            Kind::Local,
        ),
        (
            "depth",
            |s| Box::pin(contract::depth_counts_ready_entries_by_priority_and_delayed(s)),
            Fault::DepthEmpty,
            Kind::Local,
        ),
        (
            "order",
            |s| Box::pin(contract::equal_priorities_come_in_submission_order(s)),
            Fault::Swapped,
            Kind::Local,
        ),
        (
            "dead letters",
            |s| Box::pin(contract::an_entry_delivered_too_often_is_a_dead_letter(s)),
            Fault::DeadLettersHidden,
            Kind::Sqs,
        ),
        (
            "holding",
            |s| Box::pin(contract::a_host_holds_no_delivery_it_is_not_running(s)),
            Fault::Swapped,
            Kind::Postgres,
        ),
    ];
    for (name, check, fault, kind) in cases {
        let harness = match kind {
            Kind::Local => Harness::local().await,
            Kind::Postgres => Harness::postgres().await,
            Kind::Sqs => Harness::sqs().await,
        };
        let mut subject = harness.subject.clone();
        subject.queue = Arc::new(Broken::new(subject.queue.clone(), fault)) as Arc<dyn Queue>;
        eprintln!(
            "the {name} check on {} broken by {fault:?} (a panic is expected)",
            harness.name
        );
        let ran = tokio::spawn(check(subject)).await;
        assert!(
            ran.as_ref().is_err_and(tokio::task::JoinError::is_panic),
            "the {name} check passed on a queue broken by {fault:?}"
        );
        harness.finish().await;
    }
}
