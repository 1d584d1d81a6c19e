//! Amazon SQS as the queue (`TASKFLOW_QUEUE=sqs`), with PostgreSQL as the
//! store: a message carries only a claim check (the task id, with its
//! priority and plugin as attributes); the task itself is in the database,
//! and who runs it is decided there, by its lease.
//!
//! - One standard queue per priority band (`TASKFLOW_SQS_BANDS`, default
//!   `1-3,4-7,8-10`), named `<prefix>-band-<n>`; the highest band is polled
//!   first, and only the lowest one long-polls, when the others are empty.
//!   A higher band found empty is skipped for a quarter of a second, doubling
//!   up to two seconds while it stays empty, unless this host sends to it: an
//!   empty receive costs a request and brings no task.
//! - Messages are sent and deleted ten at a time (deletes are gathered by
//!   a batch completer) and received as many at a time as workers wait,
//!   up to ten: a host holds no message it is not running.
//! - Delivery is at least once: a duplicate is dropped when its claim fails.
//!   A message stays invisible while its task runs (its visibility is
//!   extended with the lease). A delivery a host answers for without
//!   finishing it (a retry after a failure, a task handed back because its
//!   plugin is still compiling here, not due yet or run elsewhere) is sent
//!   again as a fresh message and the old one deleted: SQS counts every
//!   receive of a message toward `maxReceiveCount`, and those receives are
//!   not failures (the store counts attempts). So the dead-letter queue
//!   `<prefix>-dead-letters` (the redrive policy of the band queues) catches
//!   only a message delivered again and again with no host answering for it:
//!   a task that keeps stopping its hosts.
//! - A task accepted but whose message was never sent (the host stopped, or
//!   SQS refused, between the commit and the send) is in the store's outbox
//!   ([`Queue::needs_outbox`]): the service's sweeper sends it then.

use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use taskflow_backend::queue::{
    DeadLetter, Delivery, Queue, QueueDepth, QueueEntry, QueueError, QueueRequests, Waiting,
};
use taskflow_model::task::{PRIORITY_HIGHEST, PRIORITY_LOWEST, TaskId};

/// Messages per SQS batch request (the service's limit).
const BATCH: usize = 10;
/// The longest SQS delay and visibility change, in seconds.
const MAX_DELAY_SECS: u64 = 900;
/// Longest the batch completer gathers deletes before sending them; a
/// band with a full batch goes at once. A message deleted a moment late
/// stays invisible meanwhile (its visibility is the lease).
const DELETE_LINGER: Duration = Duration::from_secs(1);
/// How long a queue depth read is reused.
const DEPTH_CACHE: Duration = Duration::from_secs(2);
/// How long a higher band found empty is not asked again (unless this host
/// sends to it meanwhile): an empty receive is a request that carries no
/// task. The pause doubles while the band stays empty, up to the longest.
const EMPTY_BAND_PAUSE: Duration = Duration::from_millis(250);
const EMPTY_BAND_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Where the queues are and how priorities map onto them.
#[derive(Debug, Clone)]
pub struct SqsSettings {
    /// Queue names start with this: `<prefix>-band-1` …, `<prefix>-dead-letters`.
    pub prefix: String,
    /// Priorities of each band, highest band first.
    pub bands: Vec<RangeInclusive<u8>>,
    /// Lease length: messages stay invisible this long after a receive.
    pub lease: Duration,
}

/// Parses a band mapping such as `1-3,4-7,8-10`: ranges of priorities that
/// cover 1 to 10 in order, each once.
pub fn parse_bands(text: &str) -> Result<Vec<RangeInclusive<u8>>, String> {
    let mut bands = Vec::new();
    let mut next = PRIORITY_HIGHEST;
    for part in text.split(',') {
        let part = part.trim();
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        let parse = |n: &str| {
            n.trim()
                .parse::<u8>()
                .map_err(|_| format!("{part:?} is not a range such as 4-7"))
        };
        let (low, high) = (parse(low)?, parse(high)?);
        if low != next || high < low || high > PRIORITY_LOWEST {
            return Err(format!(
                "{part:?} does not continue the bands at priority {next}: give ranges covering 1 to 10 in order, e.g. 1-3,4-7,8-10"
            ));
        }
        bands.push(low..=high);
        next = high + 1;
    }
    if next != PRIORITY_LOWEST + 1 {
        return Err(format!(
            "the bands stop before priority 10 (at {}): the last range must end at 10",
            next - 1
        ));
    }
    Ok(bands)
}

/// The SQS queue. Dropping it stops its background work.
pub struct SqsQueue {
    client: Client,
    settings: SqsSettings,
    /// Band queue URLs, highest band first.
    urls: Vec<String>,
    dead_letters: String,
    /// Received for this host, not yet handed to a worker. A receive runs
    /// in a task of its own and lands here, so a `pop` dropped meanwhile
    /// (a worker stopping) loses nothing: see [`Queue::held`].
    received: Arc<Mutex<VecDeque<Delivery>>>,
    receiving: tokio::sync::Mutex<()>,
    /// Per band found empty: not worth a receive before this moment, and
    /// the pause that led there.
    empty_until: Mutex<Vec<Option<(Instant, Duration)>>>,
    waiting: AtomicUsize,
    deletes: mpsc::UnboundedSender<(usize, String)>,
    depth: Mutex<Option<(Instant, QueueDepth)>>,
    /// SQS requests made to move tasks, for the benchmark's requests per task.
    requests: Arc<AtomicUsize>,
    /// SQS requests made for stats, metrics and readiness.
    status_requests: AtomicUsize,
    stop: CancellationToken,
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("SQS {what}: {error}"))
}

/// The error an SDK call ends with, with its service message where there is one.
fn sdk_error<E: std::error::Error + aws_sdk_sqs::error::ProvideErrorMetadata + 'static>(
    what: &str,
    error: aws_sdk_sqs::error::SdkError<E>,
) -> QueueError {
    unavailable(what, crate::error_text(&error))
}

impl SqsQueue {
    /// Finds the band queues and the dead-letter queue (a missing one stops
    /// here, named), and starts the batch completer.
    pub async fn start(client: Client, settings: SqsSettings) -> Result<Self, QueueError> {
        let requests = Arc::new(AtomicUsize::new(0));
        let mut urls = Vec::new();
        for band in 1..=settings.bands.len() {
            urls.push(
                queue_url(
                    &client,
                    &format!("{}-band-{band}", settings.prefix),
                    &requests,
                )
                .await?,
            );
        }
        let dead_letters = queue_url(
            &client,
            &format!("{}-dead-letters", settings.prefix),
            &requests,
        )
        .await?;
        let (deletes, gathered) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(complete(
            client.clone(),
            urls.clone(),
            gathered,
            requests.clone(),
            stop.clone(),
        ));
        let bands = settings.bands.len();
        let queue = Self {
            client,
            settings,
            urls,
            dead_letters,
            received: Arc::new(Mutex::new(VecDeque::new())),
            receiving: tokio::sync::Mutex::new(()),
            empty_until: Mutex::new(vec![None; bands]),
            waiting: AtomicUsize::new(0),
            deletes,
            depth: Mutex::new(None),
            requests,
            status_requests: AtomicUsize::new(0),
            stop,
        };
        Ok(queue)
    }

    fn count(&self, requests: usize) {
        self.requests.fetch_add(requests, Ordering::Relaxed);
    }

    fn band_of(&self, priority: u8) -> Result<usize, QueueError> {
        self.settings
            .bands
            .iter()
            .position(|band| band.contains(&priority))
            .ok_or(QueueError::InvalidPriority(priority))
    }

    /// Marks band `band` as found empty (its pause doubles) or, when
    /// `empty` is false, worth asking again.
    fn mark_empty(&self, band: usize, empty: bool) {
        if let Some(slot) = self
            .empty_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(band)
        {
            *slot = empty.then(|| {
                let pause = slot.map_or(EMPTY_BAND_PAUSE, |(_, pause)| {
                    (pause * 2).min(EMPTY_BAND_PAUSE_MAX)
                });
                (Instant::now() + pause, pause)
            });
        }
    }

    /// Whether band `band` was found empty a moment ago.
    fn known_empty(&self, band: usize) -> bool {
        self.empty_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(band)
            .copied()
            .flatten()
            .is_some_and(|(until, _)| Instant::now() < until)
    }

    fn take(&self) -> Option<Delivery> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }

    /// Receives up to `want` messages from band `band`, long-polling
    /// `wait`, into the buffer, in a task of its own (it completes even if
    /// the caller is dropped); how many came.
    async fn receive(&self, band: usize, want: usize, wait: Duration) -> Result<usize, QueueError> {
        let receiving = Receiving {
            client: self.client.clone(),
            url: self.urls[band].clone(),
            band,
            lease: self.settings.lease,
            requests: self.requests.clone(),
            deletes: self.deletes.clone(),
            received: self.received.clone(),
        };
        tokio::spawn(receiving.run(want, wait))
            .await
            .map_err(|e| unavailable("receive", format!("stopped: {e}")))?
    }

    /// Sends one message for `entry`, out of sight for `delay`.
    async fn send(&self, entry: &QueueEntry, delay: Duration) -> Result<(), QueueError> {
        let band = self.band_of(entry.priority)?;
        self.count(1);
        self.client
            .send_message()
            .queue_url(&self.urls[band])
            .message_body(entry.id.to_string())
            .delay_seconds(seconds(delay))
            .set_message_attributes(Some(attributes(entry)))
            .send()
            .await
            .map_err(|e| sdk_error("send", e))?;
        self.mark_empty(band, false);
        Ok(())
    }

    fn delete(&self, band: usize, handle: String) {
        // The completer outlives every sender but at shutdown; a delete lost
        // then makes a duplicate delivery, which its claim drops.
        let _ = self.deletes.send((band, handle));
    }
}

/// One receive request, run apart from the `pop` that asked for it.
struct Receiving {
    client: Client,
    url: String,
    band: usize,
    lease: Duration,
    requests: Arc<AtomicUsize>,
    deletes: mpsc::UnboundedSender<(usize, String)>,
    received: Arc<Mutex<VecDeque<Delivery>>>,
}

impl Receiving {
    async fn run(self, want: usize, wait: Duration) -> Result<usize, QueueError> {
        let band = self.band;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let asked = Instant::now();
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(i32::try_from(want.clamp(1, BATCH)).unwrap_or(1))
            .wait_time_seconds(seconds(wait).min(20))
            .visibility_timeout(seconds(self.lease))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| sdk_error("receive", e))?;
        tracing::debug!(
            band,
            messages = output.messages().len(),
            ms = asked.elapsed().as_millis() as u64,
            "received"
        );
        let mut deliveries = Vec::new();
        for message in output.messages() {
            let (Some(body), Some(handle)) = (message.body(), message.receipt_handle()) else {
                continue;
            };
            let Ok(id) = body.parse::<TaskId>() else {
                tracing::warn!(body, "dropping a message that names no task");
                // The completer outlives every sender but at shutdown.
                let _ = self.deletes.send((band, handle.to_string()));
                continue;
            };
            let attribute = |name: &str| {
                message
                    .message_attributes()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value())
                    .map(str::to_string)
            };
            let receive_count = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let entry = QueueEntry {
                id,
                priority: attribute("priority")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(PRIORITY_LOWEST),
                sequence: attribute("sequence")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_default(),
                plugin: attribute("plugin").unwrap_or_default(),
            };
            deliveries.push(Delivery {
                entry,
                receipt: format!("{band}:{handle}"),
                receive_count,
            });
        }
        let count = deliveries.len();
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(deliveries);
        Ok(count)
    }
}

impl Drop for SqsQueue {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A queue's URL by name; a missing queue names itself.
async fn queue_url(
    client: &Client,
    name: &str,
    requests: &AtomicUsize,
) -> Result<String, QueueError> {
    requests.fetch_add(1, Ordering::Relaxed);
    let output = client.get_queue_url().queue_name(name).send().await.map_err(|e| match &e {
        aws_sdk_sqs::error::SdkError::ServiceError(service)
            if service.err().is_queue_does_not_exist()
                || aws_sdk_sqs::error::ProvideErrorMetadata::code(service.err()).is_some_and(|code| code.contains("NonExistentQueue")) =>
        {
            QueueError::Unavailable(format!(
                "the SQS queue {name:?} does not exist: create it (taskflow deploy does) or fix TASKFLOW_SQS_QUEUE_PREFIX"
            ))
        }
        _ => sdk_error(&format!("queue {name:?}"), e),
    })?;
    output
        .queue_url()
        .map(str::to_string)
        .ok_or_else(|| unavailable("queue lookup", format!("no URL for {name:?}")))
}

/// Whole seconds for SQS, rounded up (a wait is never cut short), at most its limit.
fn seconds(duration: Duration) -> i32 {
    let whole = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(whole.min(MAX_DELAY_SECS)).unwrap_or(0)
}

fn receipt_of(delivery: &Delivery) -> Option<(usize, &str)> {
    let (band, handle) = delivery.receipt.split_once(':')?;
    Some((band.parse().ok()?, handle))
}

/// The batch completer: gathers deletes for a moment and sends them ten to
/// a request, until `stop`.
async fn complete(
    client: Client,
    urls: Vec<String>,
    mut gathered: mpsc::UnboundedReceiver<(usize, String)>,
    requests: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut pending: HashMap<usize, Vec<String>> = HashMap::new();
    loop {
        let first = tokio::select! {
            first = gathered.recv() => first,
            () = stop.cancelled() => None,
        };
        let Some((band, handle)) = first else { return };
        pending.entry(band).or_default().push(handle);
        let linger = tokio::time::sleep(DELETE_LINGER);
        tokio::pin!(linger);
        while pending.values().all(|handles| handles.len() < BATCH) {
            tokio::select! {
                () = &mut linger => break,
                next = gathered.recv() => match next {
                    Some((band, handle)) => pending.entry(band).or_default().push(handle),
                    None => break,
                },
            }
        }
        for (band, handles) in pending.drain() {
            for chunk in handles.chunks(BATCH) {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .filter_map(|(n, handle)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(n.to_string())
                            .receipt_handle(handle)
                            .build()
                            .ok()
                    })
                    .collect();
                requests.fetch_add(1, Ordering::Relaxed);
                let sent = client
                    .delete_message_batch()
                    .queue_url(&urls[band])
                    .set_entries(Some(entries))
                    .send()
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(error = %sdk_error("delete", e), "cannot delete delivered messages; they come back and their claims drop them");
                }
            }
        }
    }
}

fn attribute(data_type: &str, value: String) -> Option<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .ok()
}

#[async_trait::async_trait]
impl Queue for SqsQueue {
    async fn push(&self, entry: QueueEntry, delay: Duration) -> Result<(), QueueError> {
        self.send(&entry, delay).await
    }

    async fn push_all(&self, entries: Vec<QueueEntry>) -> Result<(), QueueError> {
        let mut by_band: HashMap<usize, Vec<QueueEntry>> = HashMap::new();
        for entry in entries {
            by_band
                .entry(self.band_of(entry.priority)?)
                .or_default()
                .push(entry);
        }
        let mut failure = None;
        for (band, entries) in by_band {
            for chunk in entries.chunks(BATCH) {
                let batch = chunk
                    .iter()
                    .enumerate()
                    .filter_map(|(n, entry)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(n.to_string())
                            .message_body(entry.id.to_string())
                            .set_message_attributes(Some(attributes(entry)))
                            .build()
                            .ok()
                    })
                    .collect();
                self.count(1);
                match self
                    .client
                    .send_message_batch()
                    .queue_url(&self.urls[band])
                    .set_entries(Some(batch))
                    .send()
                    .await
                {
                    Ok(output) => {
                        self.mark_empty(band, false);
                        let failed: Vec<usize> = output
                            .failed()
                            .iter()
                            .filter_map(|f| f.id().parse().ok())
                            .collect();
                        if !failed.is_empty() {
                            failure = Some(unavailable(
                                "send",
                                format!("{} of {} messages refused", failed.len(), chunk.len()),
                            ));
                        }
                    }
                    Err(e) => failure = Some(sdk_error("send", e)),
                }
            }
        }
        // Some may have gone: all of them are still in the outbox, and the
        // sweeper sends them again (a duplicate is dropped by its claim).
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn pop(&self, wait: Duration) -> Result<Option<Delivery>, QueueError> {
        let _waiting = Waiting::new(&self.waiting);
        let popped = async {
            if let Some(delivery) = self.take() {
                return Ok(Some(delivery));
            }
            let _one = self.receiving.lock().await;
            if let Some(delivery) = self.take() {
                return Ok(Some(delivery));
            }
            // As many as workers wait here (up to a batch): a message
            // received for no worker would wait in this host, neither
            // running nor renewed, while other hosts' workers idle and
            // higher priorities arrive.
            let want = self.waiting.load(Ordering::Relaxed).clamp(1, BATCH);
            let last = self.urls.len() - 1;
            for band in 0..=last {
                // A higher band found empty a moment ago waits its turn
                // (a task sent there by another host starts at most
                // EMPTY_BAND_PAUSE_MAX later); only the lowest band long-polls,
                // once the others are empty.
                if band < last && self.known_empty(band) {
                    continue;
                }
                let wait = if band == last { wait } else { Duration::ZERO };
                let received = self.receive(band, want, wait).await?;
                if band < last {
                    self.mark_empty(band, received == 0);
                }
                if received > 0
                    && let Some(delivery) = self.take()
                {
                    return Ok(Some(delivery));
                }
            }
            Ok(None)
        };
        popped.await
    }

    fn held(&self) -> Vec<Delivery> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
            .collect()
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        if let Some((band, handle)) = receipt_of(delivery) {
            self.delete(band, handle.to_string());
        }
        Ok(())
    }

    /// A fresh message, then the delivered one deleted (see the module
    /// docs: a visibility change would count this answered delivery toward
    /// the dead-letter queue). Should the send fail, the delivered message
    /// comes back by itself once its visibility (the lease) runs out.
    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
        self.send(&delivery.entry, delay).await?;
        if let Some((band, handle)) = receipt_of(delivery) {
            self.delete(band, handle.to_string());
        }
        Ok(())
    }

    async fn extend(&self, deliveries: &[Delivery], ttl: Duration) -> Result<(), QueueError> {
        let mut by_band: HashMap<usize, Vec<&str>> = HashMap::new();
        for (band, handle) in deliveries.iter().filter_map(receipt_of) {
            by_band.entry(band).or_default().push(handle);
        }
        for (band, handles) in by_band {
            for chunk in handles.chunks(BATCH) {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .filter_map(|(n, handle)| {
                        ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(n.to_string())
                            .receipt_handle(*handle)
                            .visibility_timeout(seconds(ttl))
                            .build()
                            .ok()
                    })
                    .collect();
                self.count(1);
                self.client
                    .change_message_visibility_batch()
                    .queue_url(&self.urls[band])
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| sdk_error("visibility change", e))?;
            }
        }
        Ok(())
    }

    fn redelivers(&self) -> bool {
        true
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.count(1);
        let output = self
            .client
            .receive_message()
            .queue_url(&self.dead_letters)
            .max_number_of_messages(i32::try_from(BATCH).unwrap_or(10))
            .visibility_timeout(60)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| sdk_error("dead-letter receive", e))?;
        Ok(output
            .messages()
            .iter()
            .filter_map(|message| {
                let id = message.body()?.parse().ok()?;
                let receive_count = message
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                Some(DeadLetter {
                    id,
                    receive_count,
                    receipt: message.receipt_handle()?.to_string(),
                })
            })
            .collect())
    }

    async fn bury(&self, dead: &[DeadLetter]) -> Result<(), QueueError> {
        for chunk in dead.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .filter_map(|(n, d)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(n.to_string())
                        .receipt_handle(&d.receipt)
                        .build()
                        .ok()
                })
                .collect();
            self.count(1);
            self.client
                .delete_message_batch()
                .queue_url(&self.dead_letters)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_error("dead-letter delete", e))?;
        }
        Ok(())
    }

    /// SQS cannot take a message out by its task: a cancelled task's
    /// message is dropped when it comes up (its claim fails).
    async fn remove(&self, _id: TaskId) -> Result<bool, QueueError> {
        Ok(false)
    }

    /// SQS cannot look a message up by its task.
    async fn contains(&self, _id: TaskId) -> Result<Option<bool>, QueueError> {
        Ok(None)
    }

    /// Approximate message counts per band (SQS counts are approximate),
    /// read at most every two seconds; a band's count is spread over its
    /// priorities' first.
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        if let Some((at, depth)) = self
            .depth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            && at.elapsed() < DEPTH_CACHE
        {
            return Ok(depth);
        }
        let mut depth = QueueDepth {
            ready: (PRIORITY_HIGHEST..=PRIORITY_LOWEST)
                .map(|p| (p, 0))
                .collect(),
            ..QueueDepth::default()
        };
        for (band, url) in self.urls.iter().enumerate() {
            self.status_requests.fetch_add(1, Ordering::Relaxed);
            let output = self
                .client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .send()
                .await
                .map_err(|e| sdk_error("queue attributes", e))?;
            let read = |name: QueueAttributeName| {
                output
                    .attributes()
                    .and_then(|a| a.get(&name))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let (ready, delayed) = (
                read(QueueAttributeName::ApproximateNumberOfMessages),
                read(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            );
            if let Some(slot) = depth.ready.get_mut(self.settings.bands[band].start()) {
                *slot += ready;
            }
            depth.delayed += delayed;
            depth.total += ready + delayed;
        }
        *self
            .depth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), depth.clone()));
        Ok(depth)
    }

    async fn check(&self) -> Result<(), QueueError> {
        self.status_requests.fetch_add(1, Ordering::Relaxed);
        self.client
            .get_queue_attributes()
            .queue_url(&self.urls[0])
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error("readiness", e))
    }

    fn requests(&self) -> Option<QueueRequests> {
        let read = |count: &AtomicUsize| u64::try_from(count.load(Ordering::Relaxed)).unwrap_or(0);
        Some(QueueRequests {
            tasks: read(&self.requests),
            status: read(&self.status_requests),
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn needs_outbox(&self) -> bool {
        true
    }
}

fn attributes(entry: &QueueEntry) -> HashMap<String, MessageAttributeValue> {
    [
        ("priority", attribute("Number", entry.priority.to_string())),
        ("sequence", attribute("Number", entry.sequence.to_string())),
        (
            "plugin",
            (!entry.plugin.is_empty())
                .then(|| attribute("String", entry.plugin.clone()))
                .flatten(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name.to_string(), value?)))
    .collect()
}

/// The queues of `--queue sqs`: what `taskflow serve` reads for them.
#[derive(Debug, Clone, clap::Args)]
pub struct SqsArgs {
    /// Names of the SQS queues for `--queue sqs`: `<prefix>-band-1` … and
    /// `<prefix>-dead-letters` (their redrive policy). The region, the
    /// credentials and `AWS_ENDPOINT_URL` come from the usual AWS settings.
    #[arg(long, env = "TASKFLOW_SQS_QUEUE_PREFIX", default_value = "taskflow")]
    pub sqs_queue_prefix: String,

    /// Priority bands of the SQS queues, highest first: ranges covering 1 to 10.
    #[arg(long, env = "TASKFLOW_SQS_BANDS", default_value = "1-3,4-7,8-10")]
    pub sqs_bands: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_cover_every_priority_once_in_order() {
        assert_eq!(parse_bands("1-3,4-7,8-10"), Ok(vec![1..=3, 4..=7, 8..=10]));
        assert_eq!(parse_bands("1-10"), Ok(vec![1..=10]));
        assert_eq!(parse_bands("1,2-9,10"), Ok(vec![1..=1, 2..=9, 10..=10]));
        for wrong in [
            "1-3,5-10", "1-3,4-7", "2-10", "1-3,3-10", "1-11", "a-b", "3-1,4-10", "",
        ] {
            assert!(parse_bands(wrong).is_err(), "{wrong:?} was accepted");
        }
    }
}
