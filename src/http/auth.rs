//! API-key authentication and scopes. Only SHA-256 hashes of keys are kept,
//! in memory and in the database; a presented key is hashed and compared in
//! constant time against every known hash. Each route needs one scope
//! ([`required_scope`]); a key without it gets 403.
//!
//! Stored keys are reloaded every few seconds (and at once when an unknown
//! key is presented, at most once a second), so a key created or revoked by
//! another process is honoured within [`REFRESH_EVERY`]. When a key was last
//! used is gathered in memory and written in one statement per interval:
//! authenticating a request never writes to the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::ApiError;
use crate::clock::now_ms;
use crate::domain::Secret;
use crate::domain::api_key::prefix_of;
use crate::domain::{ApiKeyId, ApiKeyRecord, Scope, Scopes};
use crate::store::{Store, StoreError};

/// Prefix of generated keys, so they are recognisable in a secret scanner.
const KEY_PREFIX: &str = "hr_";

/// How often stored keys are reloaded and last-used times written.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// An unknown key makes the store be read again at most this often, so
/// that bad keys cannot hammer the database.
const UNKNOWN_KEY_RELOAD: Duration = Duration::from_secs(1);

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

/// A new key and its record (to store; the key is shown once).
pub fn new_key(name: &str, scopes: Scopes, now: i64) -> Result<(String, ApiKeyRecord), getrandom::Error> {
    let key = generate_key()?;
    let record = ApiKeyRecord {
        id: ApiKeyId::generate(),
        name: name.to_owned(),
        prefix: Some(prefix_of(&key)),
        hash: hash_key(&key),
        scopes,
        created_at: now,
        last_used_at: None,
    };
    Ok((key, record))
}

/// Who is calling: the key's id (`None` for a key from the configuration)
/// and its scopes. Handlers find it in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Option<ApiKeyId>,
    pub scopes: Scopes,
}

#[derive(Debug, Clone)]
struct Known {
    digest: [u8; 32],
    caller: Caller,
}

/// The keys hookrelay accepts: those from the configuration (admin) and
/// those stored in the database.
pub struct ApiKeys {
    configured: Vec<Known>,
    stored: RwLock<(Arc<Vec<Known>>, Instant)>,
    used: Mutex<HashMap<ApiKeyId, i64>>,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("configured", &self.configured.len()).finish_non_exhaustive()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn decode_hash(hex_hash: &str) -> Option<[u8; 32]> {
    hex::decode(hex_hash).ok()?.try_into().ok()
}

fn known(records: &[ApiKeyRecord]) -> Vec<Known> {
    records
        .iter()
        .filter_map(|r| {
            Some(Known { digest: decode_hash(&r.hash)?, caller: Caller { key: Some(r.id.clone()), scopes: r.scopes } })
        })
        .collect()
}

impl ApiKeys {
    /// Loads the stored keys. A database that cannot be read now is retried
    /// on the first unknown key rather than failing start-up.
    pub async fn load(configured: &[Secret], store: Arc<dyn Store>) -> Self {
        let stored = match store.api_keys().await {
            Ok(records) => known(&records),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read stored API keys yet");
                Vec::new()
            }
        };
        ApiKeys {
            configured: configured
                .iter()
                .map(|k| Known { digest: digest(k.expose()), caller: Caller { key: None, scopes: Scopes::ADMIN } })
                .collect(),
            stored: RwLock::new((Arc::new(stored), Instant::now())),
            used: Mutex::new(HashMap::new()),
            store,
        }
    }

    /// Keys given in the configuration.
    pub fn configured_len(&self) -> usize {
        self.configured.len()
    }

    fn find(candidates: &[Known], presented: &[u8; 32]) -> Option<Caller> {
        // Visit every candidate so timing does not reveal which one matched.
        let mut found = None;
        for c in candidates {
            if bool::from(c.digest.ct_eq(presented)) {
                found = Some(c.caller.clone());
            }
        }
        found
    }

    fn stored(&self) -> Arc<Vec<Known>> {
        self.stored.read().map_or_else(|_| Arc::new(Vec::new()), |s| s.0.clone())
    }

    /// The caller `key` belongs to, if it is a valid API key.
    pub async fn check(&self, key: &str) -> Option<Caller> {
        let presented = digest(key);
        if let Some(caller) = Self::find(&self.configured, &presented) {
            return Some(caller);
        }
        if let Some(caller) = Self::find(&self.stored(), &presented) {
            self.note_use(&caller);
            return Some(caller);
        }
        // Unknown: perhaps a key added since (by another process). Look at
        // most once per interval, without holding the lock while waiting
        // for the database.
        let due = match self.stored.write() {
            Ok(mut stored) if stored.1.elapsed() >= UNKNOWN_KEY_RELOAD => {
                stored.1 = Instant::now();
                true
            }
            _ => false,
        };
        if due {
            self.reload().await;
        }
        let caller = Self::find(&self.stored(), &presented)?;
        self.note_use(&caller);
        Some(caller)
    }

    fn note_use(&self, caller: &Caller) {
        if let (Some(id), Ok(mut used)) = (&caller.key, self.used.lock()) {
            used.insert(id.clone(), now_ms());
        }
    }

    /// Reads the stored keys again (a revoked key stops working here).
    pub async fn reload(&self) {
        match self.store.api_keys().await {
            Ok(records) => {
                let fresh = Arc::new(known(&records));
                if let Ok(mut stored) = self.stored.write() {
                    *stored = (fresh, Instant::now());
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reload API keys"),
        }
    }

    /// Writes the last-used times gathered since the previous flush.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let used: Vec<(ApiKeyId, i64)> = match self.used.lock() {
            Ok(mut used) => used.drain().collect(),
            Err(_) => return Ok(()),
        };
        self.store.touch_api_keys(&used).await
    }

    /// Until `shutdown`: every [`REFRESH_EVERY`], writes last-used times and
    /// reloads the stored keys; writes once more on the way out.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "cannot record when API keys were last used");
            }
            self.reload().await;
        }
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, "cannot record when API keys were last used");
        }
    }
}

/// The scope a route needs. Reading the logs (messages, their histograms,
/// exports and Kratos's view, deliveries) is `read`; the sender API is
/// `send`; everything else (subscriptions, retries and replays, API keys)
/// is `admin`. A route not named here needs `admin`.
pub fn required_scope(method: &Method, route: &str) -> Scope {
    let reading = *method == Method::GET || *method == Method::HEAD;
    let read_routes = route == "/messages"
        || route.starts_with("/messages/")
        || route.starts_with("/deliveries/")
        || route.starts_with("/admin/courier/")
        || route == "/subscriptions/{id}/deliveries";
    let send_routes = matches!(
        route,
        "/messages"
            | "/messages/{id}/events"
            | "/messages/{id}/cancel"
            | "/messages/{id}/resend"
            | "/tracking/rewrite"
            | "/tracking/links"
    );
    if reading && read_routes {
        Scope::Read
    } else if *method == Method::POST && send_routes {
        Scope::Send
    } else {
        Scope::Admin
    }
}

/// Middleware for routes that need `Authorization: Bearer <key>` with the
/// route's scope.
pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    let caller = match key {
        Some(key) if !key.is_empty() => state.keys.check(key).await.ok_or(ApiError::Unauthorized)?,
        _ => return Err(ApiError::Unauthorized),
    };
    let route = req.extensions().get::<MatchedPath>().map_or("", |p| p.as_str());
    let needed = required_scope(req.method(), route);
    if !caller.scopes.allow(needed) {
        return Err(ApiError::Forbidden(format!(
            "this API key's scopes ({}) do not include `{}`, which {} {route} needs",
            caller.scopes,
            needed.as_str(),
            req.method()
        )));
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
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
        let (key, record) = new_key("support", Scopes::of(&[Scope::Read]), 5).expect("entropy");
        assert_eq!(record.hash, hash_key(&key));
        assert_eq!(record.prefix.as_deref(), Some(&key[..9]));
        assert!(record.id.as_str().starts_with("key_"));
    }

    #[test]
    fn matching_checks_every_candidate() {
        let caller = |scopes| Caller { key: None, scopes };
        let keys = [
            Known { digest: digest("one"), caller: caller(Scopes::ADMIN) },
            Known { digest: digest("two"), caller: caller(Scopes::of(&[Scope::Read])) },
        ];
        assert_eq!(ApiKeys::find(&keys, &digest("two")).map(|c| c.scopes), Some(Scopes::of(&[Scope::Read])));
        assert!(ApiKeys::find(&keys, &digest("three")).is_none());
        assert!(ApiKeys::find(&[], &digest("one")).is_none());
    }

    #[test]
    fn routes_need_the_scopes_a_support_person_and_a_sender_expect() {
        use Scope::{Admin, Read, Send};
        for (method, route, scope) in [
            (Method::GET, "/messages", Read),
            (Method::GET, "/messages/{id}", Read),
            (Method::GET, "/messages/{id}/history", Read),
            (Method::GET, "/subscriptions/{id}/deliveries", Read),
            (Method::GET, "/deliveries/{id}", Read),
            (Method::POST, "/messages", Send),
            (Method::POST, "/messages/{id}/events", Send),
            (Method::POST, "/messages/{id}/cancel", Send),
            (Method::POST, "/tracking/rewrite", Send),
            (Method::POST, "/tracking/links", Send),
            (Method::GET, "/subscriptions", Admin),
            (Method::GET, "/subscriptions/{id}/secret", Admin),
            (Method::POST, "/subscriptions", Admin),
            (Method::POST, "/deliveries/{id}/retry", Admin),
            (Method::GET, "/api-keys", Admin),
            (Method::DELETE, "/api-keys/{id}", Admin),
            (Method::GET, "/anything-new", Admin),
        ] {
            assert_eq!(required_scope(&method, route), scope, "{method} {route}");
        }
    }
}
