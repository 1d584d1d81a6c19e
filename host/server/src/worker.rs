//! The worker pool: N loops that take the next task from the queue and run
//! it through the [`TaskService`], until shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::service::TaskService;

/// How long one `pop` waits before checking for shutdown again.
const POLL_WAIT: Duration = Duration::from_millis(500);

/// Running workers. Dropping the pool without [`shutdown`](Self::shutdown)
/// aborts them.
pub struct WorkerPool {
    stop: watch::Sender<bool>,
    workers: JoinSet<()>,
    service: Arc<TaskService>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl WorkerPool {
    /// Starts `count` workers.
    pub fn start(service: Arc<TaskService>, count: usize) -> Self {
        let (stop, stopped) = watch::channel(false);
        let outage = Arc::new(AtomicBool::new(false));
        let mut workers = JoinSet::new();
        for index in 0..count {
            workers.spawn(work(
                service.clone(),
                stopped.clone(),
                index,
                outage.clone(),
            ));
        }
        tracing::info!(workers = count, "workers started");
        Self {
            stop,
            workers,
            service,
        }
    }

    /// Stops taking new tasks, gives running ones `grace` to finish, then
    /// interrupts the rest and marks them pending so the next start runs
    /// them; gives back what the queue fetched that no worker took.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(grace, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "tasks still running after the grace period; interrupting them"
            );
            self.workers.abort_all();
            while self.workers.join_next().await.is_some() {}
            self.service.release_running().await;
        }
        self.service.release_held().await;
        tracing::info!("workers stopped");
    }
}

async fn work(
    service: Arc<TaskService>,
    stopped: watch::Receiver<bool>,
    index: usize,
    outage: Arc<AtomicBool>,
) {
    loop {
        if *stopped.borrow() {
            break;
        }
        // Not cut short by a stop: a pop ends within POLL_WAIT (a second on
        // SQS), and what it fetched is then run or given back, not left to
        // wait out its lease.
        let delivery = service.queue().pop(POLL_WAIT).await;
        match delivery {
            Ok(delivery) => {
                // Logged once per outage, by whichever worker sees it end.
                if outage.swap(false, Ordering::Relaxed) {
                    tracing::info!(worker = index, "the queue answers again");
                }
                match delivery {
                    Some(delivery) if *stopped.borrow() => service.give_back(delivery).await,
                    Some(delivery) => service.process(delivery).await,
                    None => {}
                }
            }
            Err(e) => {
                if !outage.swap(true, Ordering::Relaxed) {
                    tracing::error!(worker = index, error = %e, "cannot read from the queue; retrying until it answers");
                }
                tokio::time::sleep(POLL_WAIT).await;
            }
        }
    }
}
