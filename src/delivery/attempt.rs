//! One attempt: sign, send, and decide what comes of the delivery (success,
//! a retry at a time, or the end). No state of its own; the scheduler runs
//! it as a task and hands the outcome to the recorder.

use super::backoff::{Attempt, Next, RetryPolicy, classify_status};
use super::client::Client;
use crate::clock::now_ms;
use crate::domain::outbox::{AttemptRecord, DeliveryState, Health, Job, Recorded};
use crate::domain::signing;
use crate::domain::subscription::Subscription;

/// The outcome of one attempt, for the scheduler and the recorder.
#[derive(Debug)]
pub struct Done {
    pub recorded: Recorded,
    pub health: Health,
}

/// Sends one attempt and decides what comes of the delivery.
pub async fn attempt(client: &Client, policy: &RetryPolicy, sub: &Subscription, job: &Job) -> Done {
    let started_at = now_ms();
    let signature =
        signing::headers(sub.scheme, &sub.signing_secrets(started_at), job.id.as_str(), started_at, &job.payload);
    let headers: Vec<(&str, &str)> = sub
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(signature.iter().map(|(n, v)| (*n, v.as_str())))
        .collect();
    let response = client.post(&sub.url, &headers, job.payload.clone(), started_at).await;
    let verdict = match response.status {
        Some(status) => classify_status(status, response.retry_after),
        None => Attempt::Retryable { retry_after: None },
    };
    let attempts = job.attempts + 1;
    let (state, next_attempt_at) = match policy.next(verdict, attempts, now_ms(), fastrand::f64()) {
        Next::Succeeded => (DeliveryState::Succeeded, None),
        Next::RetryAt(at) => (DeliveryState::Pending, Some(at)),
        Next::Failed => (DeliveryState::Failed, None),
        Next::Dead => (DeliveryState::Dead, None),
    };
    let health = match verdict {
        Attempt::Success => Health::Succeeded,
        Attempt::Gone => Health::Gone,
        Attempt::Retryable { .. } | Attempt::Permanent => Health::Failed,
    };
    let latency = response.latency.as_secs_f64();
    metrics::histogram!("hookrelay_delivery_attempt_seconds").record(latency);
    let outcome = match state {
        DeliveryState::Succeeded => "succeeded",
        DeliveryState::Pending => "retry_scheduled",
        DeliveryState::Failed => "failed",
        DeliveryState::Dead => "dead",
    };
    metrics::counter!("hookrelay_deliveries_total", "outcome" => outcome).increment(1);
    if state != DeliveryState::Succeeded {
        tracing::debug!(
            delivery.id = %job.id, subscription.id = %sub.id, attempt = attempts, status = ?response.status,
            error = response.error.as_deref().unwrap_or(""), "delivery attempt failed"
        );
    }
    Done {
        health,
        recorded: Recorded {
            id: job.id.clone(),
            subscription_id: sub.id.clone(),
            lease_until: job.lease_until,
            state,
            attempts,
            next_attempt_at,
            attempt: AttemptRecord {
                attempt: attempts,
                started_at,
                latency_ms: i64::try_from(response.latency.as_millis()).unwrap_or(i64::MAX),
                status_code: response.status,
                error: response.error,
                response_excerpt: response.excerpt,
            },
        },
    }
}
