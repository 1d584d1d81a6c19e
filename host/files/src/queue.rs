//! The embedded queue: an in-process binary heap with an id index.
//!
//! Two heaps share one index: `ready` ordered by (priority, sequence) and
//! `delayed` ordered by due time. Removal is lazy: the index is the truth, and
//! a heap item whose push token no longer matches the index is skipped when it
//! surfaces. Every push gets a fresh token, so a stale item can never be
//! mistaken for a later push of the same id.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use taskflow_backend::queue::{Delivery, Queue, QueueDepth, QueueEntry, QueueError};
use taskflow_model::task::{PRIORITY_HIGHEST, PRIORITY_LOWEST, TaskId};

/// Stands in for "forever" when a wait or delay is too long to add to now.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Stale heap items tolerated before a removal compacts the heaps, so a
/// cancel-heavy workload cannot grow them without bound.
const STALE_SLACK: usize = 64;

/// The embedded default queue. Every operation is O(log n) and never waits
/// on the lock across an `.await`; a waiting [`pop`](Queue::pop) wakes as
/// soon as an entry is pushed.
#[derive(Default)]
pub struct LocalQueue {
    state: Mutex<State>,
    /// Wakes waiting poppers: `notify_one` when an entry becomes ready,
    /// `notify_waiters` when a delayed entry falls due earlier than any
    /// waiter's timer.
    wake: Notify,
}

impl LocalQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics half-way through changing `State`, so a poisoned
        // lock still guards consistent data; refusing it would stop every worker.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a queued id stands, and which push put it there.
struct Slot {
    entry: QueueEntry,
    token: u64,
    /// `Some` while the entry waits out its delay.
    due: Option<Instant>,
}

/// Field order is the heap order: priority, then sequence; the token only
/// breaks ties between items that are stale anyway.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct ReadyItem {
    priority: u8,
    sequence: u64,
    token: u64,
    id: TaskId,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct DelayedItem {
    due: Instant,
    token: u64,
    id: TaskId,
}

#[derive(Default)]
struct State {
    ready: BinaryHeap<Reverse<ReadyItem>>,
    delayed: BinaryHeap<Reverse<DelayedItem>>,
    index: HashMap<TaskId, Slot>,
    /// Live ready entries by priority (index 0 unused).
    ready_counts: [u64; PRIORITY_LOWEST as usize + 1],
    delayed_count: u64,
    next_token: u64,
}

impl State {
    fn is_live(&self, id: &TaskId, token: u64) -> bool {
        self.index.get(id).is_some_and(|slot| slot.token == token)
    }

    fn ready_total(&self) -> u64 {
        self.ready_counts.iter().sum()
    }

    /// Adds an entry unless its id is already queued; returns whether it did.
    fn insert(&mut self, entry: QueueEntry, due: Option<Instant>) -> bool {
        if self.index.contains_key(&entry.id) {
            return false;
        }
        let token = self.next_token;
        self.next_token += 1;
        match due {
            None => self.push_ready(&entry, token),
            Some(due) => {
                self.delayed.push(Reverse(DelayedItem {
                    due,
                    token,
                    id: entry.id,
                }));
                self.delayed_count += 1;
            }
        }
        self.index.insert(entry.id, Slot { entry, token, due });
        true
    }

    fn push_ready(&mut self, entry: &QueueEntry, token: u64) {
        self.ready.push(Reverse(ReadyItem {
            priority: entry.priority,
            sequence: entry.sequence,
            token,
            id: entry.id,
        }));
        self.ready_counts[usize::from(entry.priority)] += 1;
    }

    /// Moves every delayed entry due by `now` to the ready heap.
    fn promote_due(&mut self, now: Instant) {
        while let Some(Reverse(item)) = self.delayed.peek() {
            if item.due > now {
                break;
            }
            let (id, token) = (item.id, item.token);
            self.delayed.pop();
            let Some(slot) = self.index.get_mut(&id).filter(|slot| slot.token == token) else {
                continue; // removed while delayed
            };
            slot.due = None;
            let entry = slot.entry.clone();
            self.delayed_count -= 1;
            self.push_ready(&entry, token);
        }
    }

    /// The earliest due time of a live delayed entry, discarding stale items on top.
    fn next_due(&mut self) -> Option<Instant> {
        while let Some(Reverse(item)) = self.delayed.peek() {
            if self.is_live(&item.id, item.token) {
                return Some(item.due);
            }
            self.delayed.pop();
        }
        None
    }

    /// Takes the best live ready entry out of the queue.
    fn pop_ready(&mut self) -> Option<Delivery> {
        while let Some(Reverse(item)) = self.ready.pop() {
            if !self.is_live(&item.id, item.token) {
                continue;
            }
            let slot = self.index.remove(&item.id)?;
            self.ready_counts[usize::from(item.priority)] -= 1;
            return Some(Delivery::first(slot.entry, format!("local:{}", item.token)));
        }
        None
    }

    fn remove(&mut self, id: TaskId) -> bool {
        let Some(slot) = self.index.remove(&id) else {
            return false;
        };
        if slot.due.is_some() {
            self.delayed_count -= 1;
        } else {
            self.ready_counts[usize::from(slot.entry.priority)] -= 1;
        }
        self.compact_if_sparse();
        true
    }

    /// Drops stale heap items once they outnumber the live ones; amortised
    /// O(1) per removal.
    fn compact_if_sparse(&mut self) {
        let live_ready = usize::try_from(self.ready_total()).unwrap_or(usize::MAX);
        if self.ready.len() > live_ready.saturating_mul(2) + STALE_SLACK {
            let index = &self.index;
            self.ready.retain(|Reverse(item)| {
                index
                    .get(&item.id)
                    .is_some_and(|slot| slot.token == item.token)
            });
        }
        let live_delayed = usize::try_from(self.delayed_count).unwrap_or(usize::MAX);
        if self.delayed.len() > live_delayed.saturating_mul(2) + STALE_SLACK {
            let index = &self.index;
            self.delayed.retain(|Reverse(item)| {
                index
                    .get(&item.id)
                    .is_some_and(|slot| slot.token == item.token)
            });
        }
    }
}

fn instant_after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + FAR_FUTURE)
}

#[async_trait::async_trait]
impl Queue for LocalQueue {
    async fn push(&self, entry: QueueEntry, delay: Duration) -> Result<(), QueueError> {
        // The ready counts are indexed by priority.
        if !(PRIORITY_HIGHEST..=PRIORITY_LOWEST).contains(&entry.priority) {
            return Err(QueueError::InvalidPriority(entry.priority));
        }
        let due = (!delay.is_zero()).then(|| instant_after(delay));
        let wake_waiters = {
            let mut state = self.lock();
            let earliest_due = state.next_due();
            if !state.insert(entry, due) {
                return Ok(());
            }
            match due {
                None => WakeUp::One,
                // Waiters sleep until the earliest due time they saw; only an
                // earlier one needs them to look again.
                Some(due) if earliest_due.is_none_or(|earliest| due < earliest) => WakeUp::All,
                Some(_) => WakeUp::Nobody,
            }
        };
        match wake_waiters {
            WakeUp::One => self.wake.notify_one(),
            WakeUp::All => self.wake.notify_waiters(),
            WakeUp::Nobody => {}
        }
        Ok(())
    }

    async fn pop(&self, wait: Duration) -> Result<Option<Delivery>, QueueError> {
        let deadline = instant_after(wait);
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            // Register before looking, so a push between the look and the
            // sleep below still wakes this popper.
            woken.as_mut().enable();
            let now = Instant::now();
            let next_due = {
                let mut state = self.lock();
                state.promote_due(now);
                if let Some(delivery) = state.pop_ready() {
                    let more_ready = state.ready_total() > 0;
                    drop(state);
                    // Wake-ups are not strictly one per entry (one stored permit
                    // may cover several pushes; depth() promotes due entries
                    // silently), so pass one on while work remains.
                    if more_ready {
                        self.wake.notify_one();
                    }
                    return Ok(Some(delivery));
                }
                state.next_due()
            };
            if now >= deadline {
                return Ok(None);
            }
            let wake_at = next_due.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn ack(&self, _delivery: &Delivery) -> Result<(), QueueError> {
        // A local entry leaves the queue when popped; nothing can redeliver it.
        Ok(())
    }

    async fn remove(&self, id: TaskId) -> Result<bool, QueueError> {
        Ok(self.lock().remove(id))
    }

    async fn contains(&self, id: TaskId) -> Result<Option<bool>, QueueError> {
        Ok(Some(self.lock().index.contains_key(&id)))
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let mut state = self.lock();
        state.promote_due(Instant::now());
        let ready = (PRIORITY_HIGHEST..=PRIORITY_LOWEST)
            .map(|priority| (priority, state.ready_counts[usize::from(priority)]))
            .collect();
        let total = state.ready_total() + state.delayed_count;
        Ok(QueueDepth {
            ready,
            delayed: state.delayed_count,
            total,
        })
    }
}

/// Whom a push must wake.
enum WakeUp {
    One,
    All,
    Nobody,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn entry(priority: u8, sequence: u64) -> QueueEntry {
        QueueEntry {
            id: TaskId::new(),
            priority,
            sequence,
            plugin: String::new(),
        }
    }

    /// Pops with a wait far longer than the test's 10 s limit: a pop that
    /// returns only because its own wait ran out (a lost wake-up, which the
    /// final look at the deadline would otherwise hide) fails the test.
    async fn pop_woken(queue: &LocalQueue) -> Option<Delivery> {
        let pop = queue.pop(Duration::from_secs(3600));
        tokio::time::timeout(Duration::from_secs(10), pop)
            .await
            .expect("pop was woken")
            .expect("pop")
    }

    async fn pop_now(queue: &LocalQueue) -> Option<QueueEntry> {
        queue
            .pop(Duration::ZERO)
            .await
            .expect("pop")
            .map(|delivery| delivery.entry)
    }

    #[tokio::test]
    async fn higher_priority_pops_first() {
        let queue = LocalQueue::new();
        let low = entry(9, 1);
        let high = entry(1, 2);
        let mid = entry(5, 3);
        for e in [&low, &high, &mid] {
            queue.push(e.clone(), Duration::ZERO).await.expect("push");
        }
        assert_eq!(pop_now(&queue).await, Some(high));
        assert_eq!(pop_now(&queue).await, Some(mid));
        assert_eq!(pop_now(&queue).await, Some(low));
        assert_eq!(pop_now(&queue).await, None);
    }

    #[tokio::test]
    async fn equal_priorities_pop_in_sequence_order() {
        let queue = LocalQueue::new();
        let entries: Vec<_> = (0..50).map(|sequence| entry(3, sequence)).collect();
        // Push out of order: the sequence, not push order, decides.
        for e in entries.iter().rev() {
            queue.push(e.clone(), Duration::ZERO).await.expect("push");
        }
        for expected in &entries {
            assert_eq!(pop_now(&queue).await.as_ref(), Some(expected));
        }
    }

    #[tokio::test]
    async fn waiting_pop_wakes_on_push() {
        let queue = Arc::new(LocalQueue::new());
        let pushed = entry(5, 1);
        let producer = {
            let queue = queue.clone();
            let pushed = pushed.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                queue.push(pushed, Duration::ZERO).await.expect("push");
            })
        };
        let delivery = pop_woken(&queue).await;
        assert_eq!(delivery.map(|d| d.entry), Some(pushed));
        producer.await.expect("producer");
    }

    // tokio's paused clock needs its `test-util` feature, which this crate
    // does not enable; these tests use short real delays and assert only order
    // and visibility, never how long anything took.

    #[tokio::test]
    async fn pop_times_out_with_none() {
        let queue = LocalQueue::new();
        assert_eq!(
            queue.pop(Duration::from_millis(50)).await.expect("pop"),
            None
        );
    }

    #[tokio::test]
    async fn delayed_entry_is_invisible_until_due() {
        let queue = LocalQueue::new();
        let delayed = entry(1, 1);
        let ready = entry(9, 2);
        queue
            .push(delayed.clone(), Duration::from_secs(1))
            .await
            .expect("push");
        queue
            .push(ready.clone(), Duration::ZERO)
            .await
            .expect("push");
        // The lower-priority ready entry goes first: the delayed one is not visible yet.
        assert_eq!(pop_now(&queue).await, Some(ready));
        assert_eq!(pop_now(&queue).await, None);
        let depth = queue.depth().await.expect("depth");
        assert_eq!((depth.delayed, depth.total), (1, 1));
        assert!(queue.contains(delayed.id).await.expect("contains") == Some(true));
        // A waiting pop wakes at the due time.
        let popped = pop_woken(&queue).await;
        assert_eq!(popped.map(|d| d.entry), Some(delayed));
    }

    #[tokio::test]
    async fn an_earlier_delayed_entry_wakes_a_waiter_sleeping_for_a_later_one() {
        let queue = Arc::new(LocalQueue::new());
        let late = entry(1, 1);
        let soon = entry(1, 2);
        queue
            .push(late.clone(), Duration::from_secs(3600))
            .await
            .expect("push");
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { pop_woken(&queue).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue
            .push(soon.clone(), Duration::from_millis(100))
            .await
            .expect("push");
        assert_eq!(waiter.await.expect("waiter").map(|d| d.entry), Some(soon));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delayed_entries_due_together_reach_every_waiter() {
        let queue = Arc::new(LocalQueue::new());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { pop_woken(&queue).await })
            })
            .collect();
        let entries: Vec<_> = (0..3).map(|sequence| entry(4, sequence)).collect();
        for e in &entries {
            queue
                .push(e.clone(), Duration::from_millis(200))
                .await
                .expect("push");
        }
        let pushed: HashSet<_> = entries.iter().map(|e| e.id).collect();
        let mut popped = HashSet::new();
        for waiter in waiters {
            let delivery = waiter
                .await
                .expect("waiter")
                .expect("each waiter gets an entry");
            popped.insert(delivery.entry.id);
        }
        assert_eq!(popped, pushed);
    }

    #[tokio::test]
    async fn remove_drops_a_queued_entry() {
        let queue = LocalQueue::new();
        let cancelled = entry(1, 1);
        let kept = entry(1, 2);
        let delayed = entry(1, 3);
        queue
            .push(cancelled.clone(), Duration::ZERO)
            .await
            .expect("push");
        queue
            .push(kept.clone(), Duration::ZERO)
            .await
            .expect("push");
        queue
            .push(delayed.clone(), Duration::from_secs(60))
            .await
            .expect("push");

        assert!(queue.remove(cancelled.id).await.expect("remove"));
        assert!(!queue.remove(cancelled.id).await.expect("remove again"));
        assert!(queue.remove(delayed.id).await.expect("remove delayed"));
        assert!(queue.contains(cancelled.id).await.expect("contains") == Some(false));
        assert_eq!(queue.depth().await.expect("depth").total, 1);
        assert_eq!(pop_now(&queue).await, Some(kept));
        assert_eq!(pop_now(&queue).await, None);
    }

    #[tokio::test]
    async fn pushing_a_queued_id_again_keeps_one_entry() {
        let queue = LocalQueue::new();
        let first = entry(3, 1);
        queue
            .push(first.clone(), Duration::ZERO)
            .await
            .expect("push");
        queue
            .push(
                QueueEntry {
                    priority: 1,
                    ..first.clone()
                },
                Duration::ZERO,
            )
            .await
            .expect("push again");
        assert_eq!(queue.depth().await.expect("depth").total, 1);
        assert_eq!(pop_now(&queue).await, Some(first));
        assert_eq!(pop_now(&queue).await, None);
    }

    #[tokio::test]
    async fn out_of_range_priority_is_rejected() {
        let queue = LocalQueue::new();
        for priority in [0, 11] {
            let err = queue
                .push(entry(priority, 1), Duration::ZERO)
                .await
                .expect_err("invalid priority");
            assert!(matches!(err, QueueError::InvalidPriority(p) if p == priority));
        }
    }

    #[tokio::test]
    async fn depth_counts_ready_by_priority_and_delayed() {
        let queue = LocalQueue::new();
        for (priority, sequence) in [(1, 1), (1, 2), (7, 3)] {
            queue
                .push(entry(priority, sequence), Duration::ZERO)
                .await
                .expect("push");
        }
        queue
            .push(entry(2, 4), Duration::from_secs(60))
            .await
            .expect("push");

        let depth = queue.depth().await.expect("depth");
        assert_eq!(depth.ready.len(), 10, "every priority is listed");
        assert_eq!(depth.ready[&1], 2);
        assert_eq!(depth.ready[&2], 0);
        assert_eq!(depth.ready[&7], 1);
        assert_eq!(depth.delayed, 1);
        assert_eq!(depth.total, 4);
    }

    #[tokio::test]
    async fn many_removals_keep_the_heap_compact() {
        let queue = LocalQueue::new();
        let entries: Vec<_> = (0..1000).map(|sequence| entry(5, sequence)).collect();
        for e in &entries {
            queue.push(e.clone(), Duration::ZERO).await.expect("push");
        }
        for e in &entries[..990] {
            assert!(queue.remove(e.id).await.expect("remove"));
        }
        assert!(queue.lock().ready.len() <= 10 * 2 + STALE_SLACK + 1);
        for expected in &entries[990..] {
            assert_eq!(pop_now(&queue).await.as_ref(), Some(expected));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_producers_and_consumers_deliver_each_id_once() {
        const PRODUCERS: u64 = 4;
        const PER_PRODUCER: u64 = 2_000;
        let queue = Arc::new(LocalQueue::new());
        let producers_done = Arc::new(AtomicBool::new(false));

        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let queue = queue.clone();
                let producers_done = producers_done.clone();
                tokio::spawn(async move {
                    let mut received = Vec::new();
                    loop {
                        match queue.pop(Duration::from_millis(20)).await.expect("pop") {
                            Some(delivery) => {
                                queue.ack(&delivery).await.expect("ack");
                                received.push(delivery.entry.id);
                            }
                            None if producers_done.load(Ordering::SeqCst)
                                && queue.depth().await.expect("depth").total == 0 =>
                            {
                                return received;
                            }
                            None => {}
                        }
                    }
                })
            })
            .collect();

        let producers: Vec<_> = (0..PRODUCERS)
            .map(|producer| {
                let queue = queue.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for n in 0..PER_PRODUCER {
                        let e = QueueEntry {
                            id: TaskId::new(),
                            priority: (n % 10) as u8 + 1,
                            sequence: producer * PER_PRODUCER + n,
                            plugin: String::new(),
                        };
                        ids.push(e.id);
                        // A few short delays exercise the timer path too.
                        let delay = if n % 100 == 0 {
                            Duration::from_millis(5)
                        } else {
                            Duration::ZERO
                        };
                        queue.push(e, delay).await.expect("push");
                    }
                    ids
                })
            })
            .collect();

        let mut pushed = Vec::new();
        for producer in producers {
            pushed.extend(producer.await.expect("producer"));
        }
        producers_done.store(true, Ordering::SeqCst);
        let mut delivered = Vec::new();
        for consumer in consumers {
            delivered.extend(consumer.await.expect("consumer"));
        }

        assert_eq!(
            delivered.len(),
            pushed.len(),
            "no id delivered twice or lost"
        );
        let delivered: HashSet<_> = delivered.into_iter().collect();
        let pushed: HashSet<_> = pushed.into_iter().collect();
        assert_eq!(delivered, pushed);
    }
}
