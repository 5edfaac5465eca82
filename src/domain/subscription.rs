//! Subscriptions: who hears about status changes and how requests to them
//! are signed. Pure records; the checks their settings pass are
//! [`crate::delivery::subscription`]'s.

use super::signing::{Scheme, SigningKey};
use super::{Status, SubscriptionId};

/// A key kept signing during a rotation, until `expires_at` (epoch ms).
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousSecret {
    pub secret: SigningKey,
    pub expires_at: i64,
}

/// A subscriber endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub url: String,
    pub description: Option<String>,
    /// Statuses to notify; `None` means all.
    pub statuses: Option<Vec<Status>>,
    /// Also notify history events that change no status.
    pub all_events: bool,
    pub scheme: Scheme,
    /// The current key, of the kind the scheme signs with.
    pub secret: SigningKey,
    pub previous_secrets: Vec<PreviousSecret>,
    /// Extra request headers, in order.
    pub headers: Vec<(String, String)>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Attempts in flight at once per process; `None` = the configured default.
    pub max_in_flight: Option<u32>,
    pub rate_limit_per_second: Option<u32>,
    /// Since when every attempt has failed (epoch ms); cleared by a success.
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Subscription {
    /// The secrets that sign an attempt at `now`: the current one first,
    /// then those still inside their rotation overlap.
    pub fn signing_secrets(&self, now: i64) -> Vec<&SigningKey> {
        std::iter::once(&self.secret)
            .chain(self.previous_secrets.iter().filter(|p| p.expires_at > now).map(|p| &p.secret))
            .collect()
    }
}

/// What a subscription wants to hear about, as far as planning is concerned.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionFilter {
    pub id: SubscriptionId,
    /// Statuses to notify; `None` means all.
    pub statuses: Option<Vec<Status>>,
    /// Also notify history events that change no status.
    pub all_events: bool,
}

impl SubscriptionFilter {
    pub fn wants_status(&self, status: Status) -> bool {
        self.statuses.as_ref().is_none_or(|s| s.contains(&status))
    }
}

#[cfg(test)]
mod tests {
    use super::super::signing::KeyKind;
    use super::*;

    #[test]
    fn rotation_window() {
        let secret = SigningKey::generate(KeyKind::Hmac).expect("entropy");
        let old = SigningKey::generate(KeyKind::Ed25519).expect("entropy");
        let expired = SigningKey::generate(KeyKind::Hmac).expect("entropy");
        let sub = Subscription {
            id: SubscriptionId::generate(),
            url: "https://example.com".into(),
            description: None,
            statuses: None,
            all_events: false,
            scheme: Scheme::StandardWebhooks,
            secret: secret.clone(),
            previous_secrets: vec![
                PreviousSecret { secret: old.clone(), expires_at: 2_000 },
                PreviousSecret { secret: expired, expires_at: 500 },
            ],
            headers: Vec::new(),
            enabled: true,
            disabled_reason: None,
            max_in_flight: None,
            rate_limit_per_second: None,
            failing_since: None,
            created_at: 0,
            updated_at: 0,
        };
        assert_eq!(sub.signing_secrets(1_000), vec![&secret, &old]);
        assert_eq!(sub.signing_secrets(3_000), vec![&secret]);
    }
}
