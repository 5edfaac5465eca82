//! The ingest pipeline: one bounded queue from every edge to one batch
//! writer, which applies a whole batch in ONE transaction and only then
//! answers each waiting request (group commit). On PostgreSQL the next batch
//! forms and commits while the previous one is still committing
//! (`ingest.writers`): the status rules give the same result in any order of
//! arrival, rows are locked in one order, and two batches that both create
//! one message settle it by retrying the later one.
//!
//! Why group commit: a durable commit costs an fsync. Sharing it between
//! every request that arrived while the previous commit was in flight turns
//! "one fsync per callback" into "one fsync per batch", so throughput grows
//! with load instead of collapsing, and nothing is acknowledged before it is
//! on disk.
//!
//! Why a bounded queue that refuses instead of waiting: a full queue means
//! the database is not keeping up. Answering 503 with `Retry-After` at once
//! hands the backlog back to the providers, who retry, instead of holding
//! their connections until they time out (and retry anyway).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::IngestConfig;
use crate::plan::{Command, Outcome};
use crate::store::{Backend, Handoff, Store, StoreError};

/// Why a submission was not applied. Nothing was acknowledged; the caller
/// answers 503 (or 500 for `Internal`) and the sender retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the ingest queue is full")]
    Overloaded,
    #[error("the database is unavailable")]
    Unavailable,
    #[error("hookrelay is shutting down")]
    ShuttingDown,
    #[error("the batch could not be applied")]
    Internal,
}

type Reply = oneshot::Sender<Result<Vec<Outcome>, IngestError>>;

struct Request {
    commands: Vec<Command>,
    reply: Reply,
}

/// The edges' handle on the queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Ingest {
    tx: mpsc::Sender<Request>,
    /// Longest a request waits for its answer (queue time plus commit).
    wait: Duration,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("commands", &self.commands.len()).finish()
    }
}

impl Ingest {
    /// Creates the queue and the writer that drains it.
    pub fn new(store: Arc<dyn Store>, config: &IngestConfig) -> (Ingest, BatchWriter) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let commit_timeout = Duration::from_millis(config.commit_timeout_ms);
        // SQLite has one writer: concurrent batches would only queue for it.
        let writers = if store.backend() == Backend::Sqlite { 1 } else { config.writers.max(1) };
        let writer = BatchWriter {
            store,
            rx,
            max_events: config.batch_max_events,
            max_wait: Duration::from_millis(config.batch_max_wait_ms),
            commit_timeout,
            handoff: None,
            writers,
        };
        (Ingest { tx, wait: commit_timeout * 3 }, writer)
    }

    /// Queues commands and waits until they are committed. Refuses at once
    /// when the queue is full.
    pub async fn submit(&self, commands: Vec<Command>) -> Result<Vec<Outcome>, IngestError> {
        self.enqueue(commands)?.outcome().await
    }

    /// Queues commands and returns at once, without waiting for the commit
    /// (tracking hits, which answer before their event is written); the
    /// [`Pending`] answer can be awaited elsewhere. Refuses at once when the
    /// queue is full.
    pub fn enqueue(&self, commands: Vec<Command>) -> Result<Pending, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send(Request { commands, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("hookrelay_ingest_rejected_total", "reason" => "queue_full").increment(1);
                IngestError::Overloaded
            }
            mpsc::error::TrySendError::Closed(_) => IngestError::ShuttingDown,
        })?;
        Ok(Pending { answer, wait: self.wait })
    }

    /// Requests waiting in the queue.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Requests the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

/// The answer to queued commands, available once their batch commits.
/// Dropping it changes nothing: the commands are applied all the same.
#[derive(Debug)]
pub struct Pending {
    answer: oneshot::Receiver<Result<Vec<Outcome>, IngestError>>,
    wait: Duration,
}

impl Pending {
    /// Waits for the commit (at most the queue's wait).
    pub async fn outcome(self) -> Result<Vec<Outcome>, IngestError> {
        match tokio::time::timeout(self.wait, self.answer).await {
            Ok(answer) => answer.unwrap_or(Err(IngestError::ShuttingDown)),
            // Not acknowledged: the sender retries, and a commit that lands
            // after all is deduplicated then.
            Err(_) => Err(IngestError::Unavailable),
        }
    }
}

/// Drains the queue into batched transactions.
#[derive(Debug)]
pub struct BatchWriter {
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Request>,
    max_events: usize,
    max_wait: Duration,
    commit_timeout: Duration,
    handoff: Option<Arc<dyn Handoff>>,
    /// Batches committing at once.
    writers: usize,
}

/// How often a batch that lost a race with another writer is retried.
const CONFLICT_RETRIES: usize = 8;

/// Requests gathered into one transaction.
struct Batch {
    sizes: Vec<usize>,
    replies: Vec<Reply>,
    commands: Arc<[Command]>,
}

/// Commits batches and answers their requests; shared by concurrent commits.
#[derive(Debug)]
struct Committer {
    store: Arc<dyn Store>,
    commit_timeout: Duration,
    handoff: Option<Arc<dyn Handoff>>,
}

impl BatchWriter {
    /// Hands committed deliveries to `handoff` for immediate attempts.
    pub fn with_handoff(mut self, handoff: Arc<dyn Handoff>) -> Self {
        self.handoff = Some(handoff);
        self
    }

    fn committer(&self) -> Committer {
        Committer { store: self.store.clone(), commit_timeout: self.commit_timeout, handoff: self.handoff.clone() }
    }

    /// Runs until `shutdown` fires, then stops accepting, commits what is
    /// queued and returns once every batch is answered.
    ///
    /// A batch starts as soon as the previous one has committed (group
    /// commit), or earlier, on another connection, when a writer is free and
    /// a quarter of `batch_max_events` is already waiting: a second
    /// transaction only pays off when it has that much to carry.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let committer = Arc::new(self.committer());
        let parallel_min = (self.max_events / 4).max(1);
        let mut running = JoinSet::new();
        let mut waiting: Vec<Request> = Vec::new();
        let mut events = 0;
        let mut accepting = true;
        let mut exhausted = false;
        loop {
            let free = running.len() < self.writers;
            if !waiting.is_empty() && free && (running.is_empty() || events >= parallel_min || exhausted) {
                let first = std::mem::take(&mut waiting);
                events = 0;
                let batch = self.collect(first).await;
                let committer = committer.clone();
                running.spawn(async move { committer.commit(batch).await });
                continue;
            }
            if exhausted && waiting.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if accepting => {
                    // Refuse new requests; those queued are still committed.
                    accepting = false;
                    self.rx.close();
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
                job = self.rx.recv(), if !exhausted && events < self.max_events => match job {
                    Some(job) => {
                        events += job.commands.len();
                        waiting.push(job);
                    }
                    None => exhausted = true,
                },
            }
        }
        while running.join_next().await.is_some() {}
        tracing::debug!("ingest writer drained");
    }

    /// Applies whatever is queued now as one batch; returns false when the
    /// queue was empty (tests drive the writer with this).
    pub async fn run_once(&mut self) -> bool {
        match self.rx.try_recv() {
            Ok(job) => {
                let batch = self.collect(vec![job]).await;
                self.committer().commit(batch).await;
                true
            }
            Err(_) => false,
        }
    }

    /// `jobs` and what is queued behind them, up to the batch size (waiting
    /// up to `max_wait` for more when it is set).
    async fn collect(&mut self, mut jobs: Vec<Request>) -> Batch {
        let mut events: usize = jobs.iter().map(|j| j.commands.len()).sum();
        while events < self.max_events {
            match self.rx.try_recv() {
                Ok(job) => {
                    events += job.commands.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        if events < self.max_events && !self.max_wait.is_zero() {
            let deadline = tokio::time::Instant::now() + self.max_wait;
            while events < self.max_events {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(job)) => {
                        events += job.commands.len();
                        jobs.push(job);
                    }
                    _ => break,
                }
            }
        }
        metrics::gauge!("hookrelay_ingest_queue_depth").set(self.rx.len() as f64);
        metrics::histogram!("hookrelay_ingest_batch_events").record(events as f64);
        let mut sizes = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut commands = Vec::with_capacity(events);
        for job in jobs {
            sizes.push(job.commands.len());
            replies.push(job.reply);
            commands.extend(job.commands);
        }
        Batch { sizes, replies, commands: commands.into() }
    }
}

impl Committer {
    async fn commit(&self, batch: Batch) {
        let Batch { sizes, replies, commands } = batch;
        match self.apply(commands.clone()).await {
            Ok(outcomes) => answer(sizes, replies, outcomes),
            Err(e @ (StoreError::Other(_) | StoreError::Conflict(_))) if replies.len() > 1 => {
                // One request broke the batch (bad data, or a conflict that
                // keeps coming back): apply each request on its own so that
                // only that one fails.
                tracing::warn!(error = %e, requests = replies.len(), "batch failed; retrying requests one by one");
                let mut start = 0;
                for (size, reply) in sizes.into_iter().zip(replies) {
                    let part: Arc<[Command]> = commands[start..start + size].to_vec().into();
                    start += size;
                    let result = self.apply(part).await.map_err(|e| failure(&e));
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let err = failure(&e);
                for reply in replies {
                    let _ = reply.send(Err(err));
                }
            }
        }
    }
    async fn apply(&self, commands: Arc<[Command]>) -> Result<Vec<Outcome>, StoreError> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let now = now_ms();
            let result = tokio::time::timeout(
                self.commit_timeout,
                self.store.apply_batch(commands.clone(), now, self.handoff.clone()),
            )
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the commit timed out".into())));
            metrics::histogram!("hookrelay_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
            match result {
                Err(StoreError::Conflict(e)) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    metrics::counter!("hookrelay_ingest_conflicts_total").increment(1);
                    tracing::debug!(error = %e, attempt, "batch conflicted with another writer; retrying");
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=5 * attempt as u64))).await;
                }
                Ok(result) => {
                    metrics::counter!("hookrelay_ingest_batches_total", "result" => "committed").increment(1);
                    metrics::counter!("hookrelay_db_write_transactions_total", "kind" => "ingest").increment(1);
                    // What the worker did not admit waits in the outbox; the
                    // worker claims it once its subscription has room.
                    if let Some(h) = &self.handoff {
                        h.take(result.admitted, result.handoff);
                    }
                    return Ok(result.outcomes);
                }
                Err(e) => {
                    metrics::counter!("hookrelay_ingest_batches_total", "result" => "failed").increment(1);
                    return Err(e);
                }
            }
        }
    }
}

fn failure(e: &StoreError) -> IngestError {
    match e {
        StoreError::Unavailable(source) => {
            tracing::warn!(error = %source, "database unavailable; answering 503");
            IngestError::Unavailable
        }
        StoreError::Conflict(source) => {
            tracing::warn!(error = %source, "batch kept conflicting; answering 503");
            IngestError::Unavailable
        }
        StoreError::Other(source) => {
            tracing::error!(error = %source, "batch failed");
            IngestError::Internal
        }
    }
}

fn answer(sizes: Vec<usize>, replies: Vec<Reply>, outcomes: Vec<Outcome>) {
    let mut outcomes = outcomes.into_iter();
    for (size, reply) in sizes.into_iter().zip(replies) {
        let mine: Vec<Outcome> = outcomes.by_ref().take(size).collect();
        // The requester may have gone away; its events are committed anyway.
        let _ = reply.send(Ok(mine));
    }
}
