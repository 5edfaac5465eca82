//! The worker's two faces to the rest of hookrelay: the ingest writer's
//! hand-off of committed deliveries, and the handle the API holds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::admission::Admission;
use super::attempt::attempt;
use super::backoff::RetryPolicy;
use super::client::Client;
use crate::clock::now_ms;
use crate::domain::SubscriptionId;
use crate::domain::outbox::{DeliveryState, Job, Lease, Recorded};
use crate::domain::subscription::Subscription;
use crate::store::{Admitted, Handoff};

/// What the rest of hookrelay may ask of the worker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeliveryHandle {
    pub(super) wake: Arc<Notify>,
    pub(super) changed: Arc<Notify>,
    pub(super) client: Client,
    pub(super) policy: RetryPolicy,
    pub(super) worker: String,
    pub(super) lease: Duration,
}

impl DeliveryHandle {
    /// New deliveries were committed in this process outside the ingest path.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A subscription was created, changed or deleted.
    pub fn subscriptions_changed(&self) {
        self.changed.notify_one();
    }

    /// This process's name as a lease holder.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// A lease held by this process, starting now.
    pub fn lease(&self) -> Lease {
        Lease { worker: self.worker.clone(), until: now_ms() + i64::try_from(self.lease.as_millis()).unwrap_or(60_000) }
    }

    /// One attempt now, outside the queue (test pings). A retryable failure
    /// ends the delivery as failed: pings are not retried.
    pub async fn attempt_once(&self, subscription: &Subscription, job: Job) -> Recorded {
        let mut recorded = attempt(&self.client, &self.policy, subscription, &job).await.recorded;
        if recorded.state == DeliveryState::Pending {
            recorded.state = DeliveryState::Failed;
            recorded.next_attempt_at = None;
        }
        recorded
    }
}

/// The batch writer's way in: new deliveries admitted by their
/// subscription's budget ([`Admission`]) are inserted leased to this
/// process and arrive on a channel once committed.
#[derive(Debug)]
pub(super) struct WriterHandoff {
    pub(super) tx: mpsc::Sender<Vec<Job>>,
    pub(super) admission: Arc<Admission>,
    pub(super) worker: String,
    pub(super) lease: Duration,
}

impl Handoff for WriterHandoff {
    fn admit(&self, subscriptions: &[&SubscriptionId], now: i64) -> Admitted {
        if !self.admission.accepting() {
            return Admitted::nothing();
        }
        let (taken, counts) = self.admission.admit(subscriptions);
        let lease = Lease {
            worker: self.worker.clone(),
            until: now + i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 2),
        };
        let admission = self.admission.clone();
        Admitted::new(lease, taken, move || {
            for (id, n) in &counts {
                admission.left(id, *n);
            }
        })
    }

    fn take(&self, admitted: Admitted, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        if self.tx.try_send(jobs).is_ok() {
            admitted.keep();
        } else {
            // They stay leased; when the lease expires any process claims
            // them. Dropping the admission gives their room back.
            tracing::warn!(
                "the delivery worker did not take committed deliveries; they wait for their lease to expire"
            );
        }
    }
}
