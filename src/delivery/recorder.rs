//! The outcome recorder: attempt outcomes and released jobs go to one task
//! that writes them in batches (delivery state, attempt log, subscription
//! health) in one transaction each, retrying through a database outage.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::clock::now_ms;
use crate::domain::DeliveryId;
use crate::domain::outbox::{Health, Recorded};
use crate::store::Store;

/// Outcomes written per transaction at most.
const RECORD_BATCH: usize = 1_000;

/// Records going to the recorder task.
#[derive(Debug)]
pub enum Record {
    Attempt(Box<Recorded>, Health),
    /// A job given back unattempted, with the lease it held.
    Release(DeliveryId, i64),
}

/// Writes outcomes in batches until the channel closes.
pub async fn record(
    store: Arc<dyn Store>,
    worker: String,
    disable_after: i64,
    mut rx: mpsc::UnboundedReceiver<Record>,
    changed: Arc<Notify>,
    wake: Arc<Notify>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < RECORD_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        flush(&store, &worker, disable_after, batch, &changed, &wake).await;
    }
}

/// Writes one batch; wakes `changed` when a subscription was disabled, and
/// `wake` when jobs went back to the outbox (so that they are claimed again
/// once the release is committed, not at the next poll).
pub async fn flush(
    store: &Arc<dyn Store>,
    worker: &str,
    disable_after: i64,
    batch: Vec<Record>,
    changed: &Notify,
    wake: &Notify,
) {
    if batch.is_empty() {
        return;
    }
    let mut records = Vec::new();
    let mut released = Vec::new();
    let mut health = Vec::new();
    for r in batch {
        match r {
            Record::Attempt(recorded, h) => {
                health.push((recorded.subscription_id.clone(), h));
                records.push(*recorded);
            }
            Record::Release(id, lease) => released.push((id, lease)),
        }
    }
    let mut wait = Duration::from_millis(200);
    for attempt in 1..=10 {
        match store.record_attempts(worker, now_ms(), &records, &released, &health, disable_after).await {
            Ok(disabled) => {
                metrics::counter!("hookrelay_db_write_transactions_total", "kind" => "delivery_outcomes").increment(1);
                for d in &disabled {
                    tracing::warn!(subscription.id = %d.subscription_id, reason = %d.reason, "subscription disabled");
                    metrics::counter!("hookrelay_subscriptions_disabled_total").increment(1);
                }
                if !disabled.is_empty() {
                    changed.notify_one();
                }
                if !released.is_empty() {
                    wake.notify_one();
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "cannot record delivery outcomes; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    // The leases expire and the deliveries are attempted again: at least
    // once, never lost.
    tracing::error!(outcomes = records.len(), "gave up recording delivery outcomes; they will be retried");
}
