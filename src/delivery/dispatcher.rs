//! The delivery worker.
//!
//! One scheduler task owns the local work: a queue per subscription, served
//! round-robin, each limited by the subscription's in-flight cap and rate,
//! all under a process-wide concurrency cap. Work arrives three ways: handed
//! over by the ingest writer (inserted already leased to this process, so a
//! first attempt costs no claim), claimed from the database (due retries,
//! work committed by other processes, expired leases of crashed ones), or
//! signalled by `LISTEN/NOTIFY` and in-process wake-ups, with a poll as the
//! safety net. Claims come in two lanes, first attempts and retries, so a
//! retry backlog never starves fresh status updates, and skip subscriptions
//! this process cannot serve now, so a slow endpoint never holds the others.
//!
//! Isolation holds at any backlog because no buffer is shared: each
//! subscription holds at most its [`Admission`] budget in memory (about two
//! seconds of what its endpoint gets through), the rest waits unleased in
//! the outbox; and no subscription takes more than its share of the
//! process-wide concurrency while others have work.
//!
//! Attempts run as tasks and report to the scheduler; outcomes go to a
//! recorder task that writes them in batches (state, attempt log,
//! subscription health) in one transaction each. A lease outlives an attempt
//! (`lease_seconds` > `timeout_ms` + 5 s), and a job whose lease is about to
//! run out is released instead of started, so one delivery is never in
//! flight twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, budget};
use super::attempt::{Done, attempt};
use super::backoff::RetryPolicy;
use super::client::Client;
use super::handoff::{DeliveryHandle, WriterHandoff};
use super::rate::Bucket;
use super::recorder::{Record, flush, record};
use super::ssrf::AddressPolicy;
use crate::clock::now_ms;
use crate::config::DeliveryConfig;
use crate::domain::SubscriptionId;
use crate::domain::outbox::{Health, Job, Lease};
use crate::domain::subscription::Subscription;
use crate::store::{Claim, Handoff, Store};

/// Margin kept between a lease's end and the end of an attempt started under it.
const LEASE_MARGIN_MS: i64 = 5_000;
/// How often the subscription cache is reloaded even without a change signal.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// How often each subscription's budget follows its throughput.
const TUNE_EVERY: Duration = Duration::from_secs(1);
/// Most deliveries held in memory for all subscriptions together.
const LOCAL_LIMIT: usize = 65_536;

/// Settings derived from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub concurrency: usize,
    pub default_max_in_flight: u32,
    pub lease: Duration,
    pub poll: Duration,
    pub claim_batch: usize,
    pub timeout: Duration,
    pub disable_after_ms: i64,
    pub policy: RetryPolicy,
}

impl Settings {
    pub fn from_config(config: &DeliveryConfig) -> Self {
        Settings {
            concurrency: config.concurrency,
            default_max_in_flight: config.default_max_in_flight,
            lease: Duration::from_secs(config.lease_seconds),
            poll: Duration::from_millis(config.poll_interval_ms),
            claim_batch: config.claim_batch,
            timeout: Duration::from_millis(config.timeout_ms),
            disable_after_ms: i64::try_from(config.disable_after_failing_seconds.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            policy: RetryPolicy {
                delays: config.retry_schedule_seconds.iter().map(|s| Duration::from_secs_f64(*s)).collect(),
                jitter: config.jitter,
                max_retry_after: Duration::from_secs(config.retry_after_max_seconds),
            },
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 4)
    }

    fn timeout_ms(&self) -> i64 {
        i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX / 4)
    }
}

/// One subscription's local work.
#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Job>,
    in_flight: usize,
    bucket: Option<Bucket>,
    /// Whether it is in the round-robin order.
    scheduled: bool,
    /// Attempts finished since the last budget tuning.
    done: u32,
    /// Attempts finished per second, smoothed.
    rate: f64,
}

/// The worker. Build with [`Dispatcher::new`], then [`Dispatcher::run`].
pub struct Dispatcher {
    store: Arc<dyn Store>,
    client: Client,
    settings: Settings,
    worker: String,
    wake: Arc<Notify>,
    changed: Arc<Notify>,
    admission: Arc<Admission>,
    handoff_rx: mpsc::Receiver<Vec<Job>>,
    subscriptions: HashMap<SubscriptionId, Arc<Subscription>>,
    lanes: HashMap<SubscriptionId, Lane>,
    order: VecDeque<SubscriptionId>,
    in_flight: usize,
    queued: usize,
    attempts: JoinSet<Done>,
    /// Which subscription each running attempt is for, so a task that
    /// panicked still frees its slot.
    running: HashMap<tokio::task::Id, SubscriptionId>,
    /// Why the last claim may have left due work in the database: this
    /// worker had no room, or these lanes had enough queued. Once that
    /// changes, it claims again without waiting for the poll.
    held_back: Option<HeldBack>,
}

#[derive(Debug, Default)]
struct HeldBack {
    no_room: bool,
    lanes: Vec<SubscriptionId>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("worker", &self.worker)
            .field("in_flight", &self.in_flight)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// The worker, the ingest writer's hand-off into it, and a handle for the API.
    pub fn new(store: Arc<dyn Store>, config: &DeliveryConfig) -> (Dispatcher, Arc<dyn Handoff>, DeliveryHandle) {
        let settings = Settings::from_config(config);
        let policy = AddressPolicy::new(&config.allow_cidrs);
        let client = Client::new(
            policy,
            Duration::from_millis(config.connect_timeout_ms),
            settings.timeout,
            // Several subscriptions may share a host: keep as many idle
            // connections as attempts can run at once, so none is closed
            // only to be opened again.
            config.concurrency,
        );
        let worker = format!("w_{}", uuid::Uuid::now_v7().simple());
        let (tx, handoff_rx) = mpsc::channel(1_024);
        let admission = Arc::new(Admission::default());
        let wake = Arc::new(Notify::new());
        let changed = Arc::new(Notify::new());
        let handoff =
            Arc::new(WriterHandoff { tx, admission: admission.clone(), worker: worker.clone(), lease: settings.lease });
        let handle = DeliveryHandle {
            wake: wake.clone(),
            changed: changed.clone(),
            client: client.clone(),
            policy: settings.policy.clone(),
            worker: worker.clone(),
            lease: settings.lease,
        };
        let dispatcher = Dispatcher {
            store,
            client,
            settings,
            worker,
            wake,
            changed,
            admission,
            handoff_rx,
            subscriptions: HashMap::new(),
            lanes: HashMap::new(),
            order: VecDeque::new(),
            in_flight: 0,
            queued: 0,
            attempts: JoinSet::new(),
            running: HashMap::new(),
            held_back: None,
        };
        (dispatcher, handoff, handle)
    }

    /// Runs until `shutdown`: then stops claiming, lets attempts in flight
    /// finish within `grace`, releases what was not started and records
    /// everything before returning.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        let (record_tx, record_rx) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record(
            self.store.clone(),
            self.worker.clone(),
            self.settings.disable_after_ms,
            record_rx,
            self.changed.clone(),
            self.wake.clone(),
        ));
        let listen_stop = shutdown.child_token();
        let listener = {
            let (store, wake, changed, stop) =
                (self.store.clone(), self.wake.clone(), self.changed.clone(), listen_stop.clone());
            tokio::spawn(async move { store.listen(wake, changed, stop).await })
        };
        let stats = tokio::spawn(report_stats(self.store.clone(), shutdown.clone()));
        self.refresh().await;
        let mut last_refresh = Instant::now();
        let mut claim_due = true;
        // The poll is a fixed deadline, moved only when it fires: activity
        // (attempts ending, hand-offs) must never postpone it, or due retries
        // would wait for a quiet moment.
        let mut next_poll = Instant::now() + self.settings.poll;
        let mut tune = tokio::time::interval(TUNE_EVERY);
        tune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if claim_due {
                claim_due = self.claim(&record_tx).await;
            }
            claim_due |= self.dispatch(&record_tx);
            metrics::gauge!("hookrelay_delivery_in_flight").set(self.in_flight as f64);
            metrics::gauge!("hookrelay_delivery_local_queue").set(self.queued as f64);
            let token = self.next_token();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                // Settings first: a rotated secret or a disabled subscription
                // applies before more work is started.
                () = self.changed.notified() => {
                    self.refresh().await;
                    last_refresh = Instant::now();
                }
                Some(joined) = self.attempts.join_next_with_id(), if !self.attempts.is_empty() => {
                    claim_due |= self.joined(joined, &record_tx);
                    claim_due |= self.room_again();
                }
                Some(jobs) = self.handoff_rx.recv() => {
                    claim_due |= self.enqueue(jobs, false, &record_tx).await;
                }
                _ = tune.tick() => claim_due |= self.tune(),
                () = self.wake.notified() => claim_due = true,
                // A rate-limited lane gets its next token: dispatch, no claim.
                () = tokio::time::sleep_until(token.unwrap_or(next_poll)), if token.is_some_and(|t| t < next_poll) => {}
                () = tokio::time::sleep_until(next_poll) => {
                    claim_due = true;
                    next_poll = Instant::now() + self.settings.poll;
                    if last_refresh.elapsed() >= REFRESH_EVERY {
                        self.refresh().await;
                        last_refresh = Instant::now();
                    }
                }
            }
        }

        // Shutdown: nothing new; what is queued goes back to the database.
        self.admission.close();
        listen_stop.cancel();
        self.handoff_rx.close();
        while let Some(jobs) = self.handoff_rx.recv().await {
            for job in jobs {
                let _ = record_tx.send(Record::Release(job.id, job.lease_until));
            }
        }
        for lane in self.lanes.values_mut() {
            for job in lane.queue.drain(..) {
                let _ = record_tx.send(Record::Release(job.id, job.lease_until));
            }
        }
        let deadline = Instant::now() + grace;
        while !self.attempts.is_empty() {
            match tokio::time::timeout_at(deadline, self.attempts.join_next_with_id()).await {
                Ok(Some(joined)) => {
                    self.joined(joined, &record_tx);
                }
                Ok(None) => {}
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.attempts.len(),
                        "attempts still running at the end of the grace period; their leases will expire and they will be retried"
                    );
                    self.attempts.abort_all();
                    break;
                }
            }
        }
        drop(record_tx);
        let _ = recorder.await;
        let _ = listener.await;
        stats.abort();
        tracing::debug!("delivery worker stopped");
    }

    /// Claims due work into the local queues; returns whether to claim again
    /// at once (the claim came back full).
    async fn claim(&mut self, record_tx: &mpsc::UnboundedSender<Record>) -> bool {
        let room = LOCAL_LIMIT.saturating_sub(self.queued);
        if room == 0 {
            self.held_back = Some(HeldBack { no_room: true, lanes: Vec::new() });
            return false;
        }
        let n = room.min(self.settings.claim_batch);
        let first = (n * 3).div_ceil(4).max(1);
        let retries = n.saturating_sub(first).max(1);
        // Subscriptions whose budget is spent, or whose rate limit has two
        // seconds' worth queued, get nothing more now.
        let limited: Vec<SubscriptionId> = self
            .lanes
            .iter()
            .filter(|(_, lane)| lane.bucket.as_ref().is_some_and(|b| lane.queue.len() as f64 >= b.rate * 2.0))
            .map(|(id, _)| id.clone())
            .collect();
        self.held_back = (!limited.is_empty()).then(|| HeldBack { no_room: false, lanes: limited.clone() });
        let mut exclude = self.admission.full();
        exclude.extend(limited);
        exclude.sort_unstable();
        exclude.dedup();
        let now = now_ms();
        let claim = Claim {
            lease: Lease { worker: self.worker.clone(), until: now + self.settings.lease_ms() },
            now,
            first,
            retries,
            exclude,
        };
        match self.store.claim_deliveries(&claim).await {
            Ok(jobs) => {
                metrics::counter!("hookrelay_db_write_transactions_total", "kind" => "claim").increment(1);
                // Either lane coming back full means there is more to take.
                let firsts = jobs.iter().filter(|j| j.attempts == 0).count();
                let full = firsts >= first || jobs.len() - firsts >= retries;
                if !jobs.is_empty() {
                    metrics::counter!("hookrelay_delivery_claimed_total").increment(jobs.len() as u64);
                    self.enqueue(jobs, true, record_tx).await;
                }
                full
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim deliveries");
                false
            }
        }
    }

    /// Whether what held the last claim back has eased: room for half of
    /// the local limit again, or a rate-limited lane down to one round of
    /// attempts. (A subscription whose budget was spent says so itself,
    /// through [`Admission::left`].)
    fn room_again(&self) -> bool {
        let Some(held) = &self.held_back else { return false };
        (held.no_room && self.queued < LOCAL_LIMIT / 2)
            || held.lanes.iter().any(|id| self.lanes.get(id).is_none_or(|l| l.queue.len() < self.max_in_flight(id)))
    }

    /// Follows each subscription's throughput with its budget; returns
    /// whether one grew enough to claim what it left in the outbox.
    fn tune(&mut self) -> bool {
        let share = self.share();
        let mut claim = false;
        for (id, lane) in &mut self.lanes {
            lane.rate = 0.5 * lane.rate + 0.5 * f64::from(lane.done) / TUNE_EVERY.as_secs_f64();
            lane.done = 0;
            let max =
                self.subscriptions.get(id).and_then(|s| s.max_in_flight).unwrap_or(self.settings.default_max_in_flight);
            claim |= self.admission.set_budget(id, budget(lane.rate, (max as usize).min(share)));
        }
        claim
    }

    fn max_in_flight(&self, id: &SubscriptionId) -> usize {
        self.subscriptions.get(id).and_then(|s| s.max_in_flight).unwrap_or(self.settings.default_max_in_flight) as usize
    }

    /// Queues jobs handed over (already counted by the admission) or
    /// `claimed`; a claimed subscription's jobs beyond its budget go back
    /// to the outbox at once. Returns whether to claim again.
    async fn enqueue(&mut self, jobs: Vec<Job>, claimed: bool, record_tx: &mpsc::UnboundedSender<Record>) -> bool {
        if jobs.iter().any(|j| !self.subscriptions.contains_key(&j.subscription_id)) {
            // Created moments ago (perhaps by another process).
            self.refresh().await;
        }
        let mut claim = false;
        let mut room: HashMap<SubscriptionId, usize> = HashMap::new();
        for job in jobs {
            let usable = self.subscriptions.get(&job.subscription_id).is_some_and(|s| s.enabled);
            let admitted = usable
                && (!claimed || {
                    let left = room
                        .entry(job.subscription_id.clone())
                        .or_insert_with(|| self.admission.room(&job.subscription_id));
                    let fits = *left > 0;
                    *left = left.saturating_sub(1);
                    if fits {
                        self.admission.arrived(&job.subscription_id, 1);
                    } else {
                        self.admission.left_behind(&job.subscription_id);
                    }
                    fits
                });
            if !admitted {
                if !claimed {
                    claim |= self.admission.left(&job.subscription_id, 1);
                }
                let _ = record_tx.send(Record::Release(job.id, job.lease_until));
                continue;
            }
            let rate = self.subscriptions.get(&job.subscription_id).and_then(|s| s.rate_limit_per_second);
            let lane = self.lanes.entry(job.subscription_id.clone()).or_default();
            match (rate, &lane.bucket) {
                (Some(r), Some(b)) if (b.rate - f64::from(r)).abs() > f64::EPSILON => {
                    lane.bucket = Some(Bucket::new(r))
                }
                (Some(r), None) => lane.bucket = Some(Bucket::new(r)),
                (None, Some(_)) => lane.bucket = None,
                _ => {}
            }
            if !lane.scheduled {
                lane.scheduled = true;
                self.order.push_back(job.subscription_id.clone());
            }
            lane.queue.push_back(job);
            self.queued += 1;
        }
        claim
    }

    /// The most attempts one subscription may have running: its share of
    /// three quarters of the process-wide cap among the subscriptions with
    /// work (recent work included), so that one endpoint that holds every
    /// request never takes the slots the others need; the last quarter
    /// stays free for a subscription that wakes up.
    fn share(&self) -> usize {
        let busy = self.lanes.values().filter(|l| !l.queue.is_empty() || l.in_flight > 0 || l.rate >= 1.0).count();
        ((self.settings.concurrency * 3 / 4) / busy.max(1)).max(1)
    }

    /// Starts attempts, one per subscription per round, while limits
    /// allow; returns whether to claim (work given back made room).
    fn dispatch(&mut self, record_tx: &mpsc::UnboundedSender<Record>) -> bool {
        let now = Instant::now();
        let now_ms = now_ms();
        let share = self.share();
        let mut claim = false;
        let mut idle_visits = 0;
        while self.in_flight < self.settings.concurrency && idle_visits < self.order.len() {
            let Some(id) = self.order.pop_front() else { break };
            let max = self.max_in_flight(&id).min(share);
            let sub = self.subscriptions.get(&id).cloned();
            let Some(lane) = self.lanes.get_mut(&id) else { continue };
            let mut started = false;
            match sub.filter(|s| s.enabled) {
                None => {
                    // Deleted or disabled since it was queued: give the work back.
                    for job in lane.queue.drain(..) {
                        self.queued -= 1;
                        claim |= self.admission.left(&id, 1);
                        let _ = record_tx.send(Record::Release(job.id, job.lease_until));
                    }
                }
                Some(sub) => {
                    while let Some(job) = lane.queue.front() {
                        if job.lease_until - now_ms > self.settings.timeout_ms() + LEASE_MARGIN_MS {
                            break;
                        }
                        // Too little lease left to finish an attempt safely.
                        if let Some(job) = lane.queue.pop_front() {
                            self.queued -= 1;
                            claim |= self.admission.left(&id, 1);
                            let _ = record_tx.send(Record::Release(job.id, job.lease_until));
                        }
                    }
                    let allowed = lane.in_flight < max && !lane.queue.is_empty();
                    if allowed
                        && lane.bucket.as_mut().is_none_or(|b| b.try_take(now))
                        && let Some(job) = lane.queue.pop_front()
                    {
                        self.queued -= 1;
                        lane.in_flight += 1;
                        self.in_flight += 1;
                        started = true;
                        let (client, policy) = (self.client.clone(), self.settings.policy.clone());
                        let sub_id = sub.id.clone();
                        let task = self.attempts.spawn(async move { attempt(&client, &policy, &sub, &job).await });
                        self.running.insert(task.id(), sub_id);
                    }
                }
            }
            if lane.queue.is_empty() {
                lane.scheduled = false;
            } else {
                self.order.push_back(id);
            }
            idle_visits = if started { 0 } else { idle_visits + 1 };
        }
        claim
    }

    /// Handles an attempt task's end; returns whether to claim (its
    /// subscription has room again for work left in the outbox).
    fn joined(
        &mut self,
        joined: Result<(tokio::task::Id, Done), tokio::task::JoinError>,
        record_tx: &mpsc::UnboundedSender<Record>,
    ) -> bool {
        match joined {
            Ok((task, done)) => {
                self.running.remove(&task);
                self.finished(done, record_tx)
            }
            Err(e) => {
                // Its lease runs out and the delivery is attempted again.
                tracing::error!(error = %e, "a delivery attempt task failed");
                self.running.remove(&e.id()).is_some_and(|sub| self.free_slot(&sub))
            }
        }
    }

    fn free_slot(&mut self, sub: &SubscriptionId) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(lane) = self.lanes.get_mut(sub) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
            lane.done = lane.done.saturating_add(1);
        }
        self.admission.left(sub, 1)
    }

    fn finished(&mut self, done: Done, record_tx: &mpsc::UnboundedSender<Record>) -> bool {
        let claim = self.free_slot(&done.recorded.subscription_id.clone());
        if done.health == Health::Gone {
            tracing::warn!(subscription.id = %done.recorded.subscription_id, "the endpoint answered 410 Gone; disabling the subscription");
        }
        let _ = record_tx.send(Record::Attempt(Box::new(done.recorded), done.health));
        claim
    }

    /// The earliest moment a rate-limited lane that could otherwise start
    /// an attempt gets a token (lanes at their in-flight cap wait for an
    /// attempt to end instead, which wakes the loop anyway).
    fn next_token(&self) -> Option<Instant> {
        if self.in_flight >= self.settings.concurrency {
            return None;
        }
        self.lanes
            .iter()
            .filter(|(id, l)| !l.queue.is_empty() && l.in_flight < self.max_in_flight(id))
            .filter_map(|(_, l)| l.bucket.as_ref().filter(|b| b.tokens < 1.0).map(Bucket::next_token))
            .min()
    }

    /// Reloads every subscription.
    async fn refresh(&mut self) {
        let mut all = HashMap::new();
        let mut after: Option<SubscriptionId> = None;
        loop {
            match self.store.list_subscriptions(after.as_ref(), 500).await {
                Ok(mut page) => {
                    let more = page.len() > 500;
                    page.truncate(500);
                    after = page.last().map(|s| s.id.clone());
                    for s in page {
                        all.insert(s.id.clone(), Arc::new(s));
                    }
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load subscriptions; keeping the previous ones");
                    return;
                }
            }
        }
        self.admission.retain(|id| all.contains_key(id));
        self.subscriptions = all;
    }

    /// Claims everything due now, attempts it, waits for every attempt and
    /// records the outcomes; returns how many attempts were made. Tests
    /// drive the worker with this instead of waiting for it.
    pub async fn run_once(&mut self) -> usize {
        let (record_tx, mut record_rx) = mpsc::unbounded_channel();
        self.refresh().await;
        while let Ok(jobs) = self.handoff_rx.try_recv() {
            self.enqueue(jobs, false, &record_tx).await;
        }
        self.claim(&record_tx).await;
        let mut made = 0;
        loop {
            self.dispatch(&record_tx);
            match self.attempts.join_next_with_id().await {
                Some(joined) => {
                    made += usize::from(joined.is_ok());
                    self.joined(joined, &record_tx);
                }
                None if self.queued == 0 => break,
                // Queued but nothing could start (rate limit): wait a little.
                None => {
                    tokio::time::sleep(
                        self.next_token()
                            .map_or(Duration::from_millis(10), |t| t.saturating_duration_since(Instant::now())),
                    )
                    .await
                }
            }
        }
        drop(record_tx);
        let mut batch = Vec::new();
        while let Ok(r) = record_rx.try_recv() {
            batch.push(r);
        }
        flush(&self.store, &self.worker, self.settings.disable_after_ms, batch, &self.changed, &self.wake).await;
        made
    }
}

/// Publishes the outbox size and the age of its oldest due delivery, and
/// per subscription the pending deliveries and how long the oldest has
/// waited (labelled by subscription id: ids an operator created, so the
/// label set stays as small as the subscription list).
async fn report_stats(store: Arc<dyn Store>, stop: CancellationToken) {
    let mut shown: Vec<SubscriptionId> = Vec::new();
    loop {
        if let Ok(stats) = store.delivery_stats().await {
            let now = now_ms();
            metrics::gauge!("hookrelay_delivery_pending").set(stats.pending as f64);
            let age = stats.oldest_due.map_or(0.0, |due| ((now - due).max(0) as f64) / 1000.0);
            metrics::gauge!("hookrelay_delivery_oldest_pending_seconds").set(age);
            for (id, pending, oldest) in &stats.by_subscription {
                let label = id.as_str().to_owned();
                metrics::gauge!("hookrelay_subscription_pending", "subscription" => label.clone()).set(*pending as f64);
                metrics::gauge!("hookrelay_subscription_oldest_pending_seconds", "subscription" => label)
                    .set(((now - oldest).max(0) as f64) / 1000.0);
            }
            // A subscription with nothing pending any more reads 0, not its last backlog.
            for id in shown.iter().filter(|id| !stats.by_subscription.iter().any(|(s, _, _)| s == *id)) {
                let label = id.as_str().to_owned();
                metrics::gauge!("hookrelay_subscription_pending", "subscription" => label.clone()).set(0.0);
                metrics::gauge!("hookrelay_subscription_oldest_pending_seconds", "subscription" => label).set(0.0);
            }
            shown = stats.by_subscription.into_iter().map(|(id, _, _)| id).collect();
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}
