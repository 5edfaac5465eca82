//! API-key authentication. Only SHA-256 hashes of keys are kept, in memory
//! and in the database; a presented key is hashed and compared in constant
//! time against every known hash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::RwLock;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::config::Secret;
use crate::store::Store;

/// Prefix of generated keys, so they are recognisable in a secret scanner.
const KEY_PREFIX: &str = "hr_";

/// A new random API key.
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// SHA-256 of a key, hex encoded (the stored form).
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The keys hookrelay accepts: those from the configuration and those stored
/// in the database (generated on first start or by `hookrelay api-key create`).
pub struct ApiKeys {
    configured: Vec<[u8; 32]>,
    stored: RwLock<(Vec<[u8; 32]>, Instant)>,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("configured", &self.configured.len()).finish_non_exhaustive()
    }
}

/// A stored key is looked for again at most this often, so that keys added
/// by another process are honoured without letting bad keys hammer the
/// database.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn decode_hash(hex_hash: &str) -> Option<[u8; 32]> {
    hex::decode(hex_hash).ok()?.try_into().ok()
}

impl ApiKeys {
    /// Loads the stored hashes. A database that cannot be read now is
    /// retried on the first unknown key rather than failing start-up.
    pub async fn load(configured: &[Secret], store: Arc<dyn Store>) -> Self {
        let stored = match store.api_key_hashes().await {
            Ok(hashes) => hashes.iter().filter_map(|h| decode_hash(h)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read stored API keys yet");
                Vec::new()
            }
        };
        ApiKeys {
            configured: configured.iter().map(|k| digest(k.expose())).collect(),
            stored: RwLock::new((stored, Instant::now())),
            store,
        }
    }

    fn matches(candidates: &[[u8; 32]], presented: &[u8; 32]) -> bool {
        // Visit every candidate so timing does not reveal which one matched.
        candidates.iter().fold(subtle::Choice::from(0), |acc, c| acc | c.ct_eq(presented)).into()
    }

    /// Whether `key` is a valid API key.
    pub async fn check(&self, key: &str) -> bool {
        let presented = digest(key);
        if Self::matches(&self.configured, &presented) || self.matches_stored(&presented) {
            return true;
        }
        // Unknown: perhaps a key added since (by another process). Look at
        // most once per interval, without holding the lock while waiting
        // for the database.
        let due = match self.stored.write() {
            Ok(mut stored) if stored.1.elapsed() >= REFRESH_EVERY => {
                stored.1 = Instant::now();
                true
            }
            _ => false,
        };
        if due {
            match self.store.api_key_hashes().await {
                Ok(hashes) => {
                    let fresh: Vec<[u8; 32]> = hashes.iter().filter_map(|h| decode_hash(h)).collect();
                    if let Ok(mut stored) = self.stored.write() {
                        stored.0 = fresh;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot refresh API keys"),
            }
        }
        self.matches_stored(&presented)
    }

    fn matches_stored(&self, presented: &[u8; 32]) -> bool {
        self.stored.read().is_ok_and(|stored| Self::matches(&stored.0, presented))
    }
}

/// Middleware for routes that need `Authorization: Bearer <key>`.
pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    match key {
        Some(key) if !key.is_empty() && state.keys.check(key).await => Ok(next.run(req).await),
        _ => Err(ApiError::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_hash_stably() {
        let a = generate_key().expect("entropy");
        let b = generate_key().expect("entropy");
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() > 40);
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_eq!(decode_hash(&hash_key(&a)), Some(digest(&a)));
    }

    #[test]
    fn matching_checks_every_candidate() {
        let keys = [digest("one"), digest("two")];
        assert!(ApiKeys::matches(&keys, &digest("two")));
        assert!(!ApiKeys::matches(&keys, &digest("three")));
        assert!(!ApiKeys::matches(&[], &digest("one")));
    }
}
