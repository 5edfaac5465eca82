//! Subscriptions: who hears about status changes, how requests to them are
//! signed, and the checks their settings pass. Pure.

use std::net::IpAddr;

use super::signing::{Scheme, SigningKey};
use super::ssrf::AddressPolicy;
use crate::domain::{Status, SubscriptionId};

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

/// Most custom headers on one subscription.
pub const MAX_HEADERS: usize = 20;

/// Header names a subscription may not set: hop-by-hop headers, headers
/// hookrelay computes, and the signature headers.
pub const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "content-type",
    "courier-signature",
    "expect",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
];

/// Checks custom headers; names come back lower-cased.
pub fn validate_headers(headers: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    if headers.len() > MAX_HEADERS {
        return Err(format!("at most {MAX_HEADERS} headers"));
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let lower = name.trim().to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(format!("`{name}` is not a valid header name"));
        }
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) || lower.starts_with("webhook-") || lower.starts_with("proxy-") {
            return Err(format!("`{name}` is set by hookrelay or is hop-by-hop, and cannot be configured"));
        }
        if value.chars().count() > 1024 || http::HeaderValue::from_str(value).is_err() {
            return Err(format!("the value of `{name}` is not a valid header value (at most 1024 visible characters)"));
        }
        // Names are case-insensitive: given twice in different cases, the
        // last value wins, as for a repeated key in a JSON object.
        out.retain(|(n, _)| *n != lower);
        out.push((lower, value.clone()));
    }
    Ok(out)
}

/// Checks a destination URL: http or https, a host, at most 2048
/// characters, and, when the host is an address (or `localhost`), one the
/// policy permits. Names are checked again on every connection, against the
/// addresses they resolve to.
pub fn validate_url(url: &str, policy: &AddressPolicy) -> Result<reqwest::Url, String> {
    if url.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a valid URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be http or https".into());
    }
    if parsed.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    let blocked = |ip: IpAddr| {
        format!(
            "points at {ip}, which is not a public address; subscribers on private networks need \
             delivery.allow_cidrs (e.g. [\"{ip}/32\"])"
        )
    };
    match parsed.host() {
        None => return Err("must have a host".into()),
        Some(url::Host::Ipv4(ip)) if !policy.permits(IpAddr::V4(ip)) => return Err(blocked(IpAddr::V4(ip))),
        Some(url::Host::Ipv6(ip)) if !policy.permits(IpAddr::V6(ip)) => return Err(blocked(IpAddr::V6(ip))),
        Some(url::Host::Domain(d)) => {
            if !crate::domain::host::is_dns_name(d) {
                return Err(format!("has a host name the DNS cannot hold (`{d}`)"));
            }
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            let loopback = IpAddr::from([127, 0, 0, 1]);
            if (d == "localhost" || d.ends_with(".localhost")) && !policy.permits(loopback) {
                return Err(blocked(loopback));
            }
        }
        _ => {}
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::super::signing::KeyKind;
    use super::*;

    #[test]
    fn urls() {
        let open = AddressPolicy::default();
        assert!(validate_url("https://hooks.example.com/x?y=1", &open).is_ok());
        for bad in [
            "ftp://example.com",
            "https://",
            "not a url",
            "http://127.0.0.1/hook",
            "http://10.0.0.5/hook",
            "http://169.254.169.254/latest",
            "http://[::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://0x7f.1/x",
            "http://2130706433/x",
            "http://localhost:8080/x",
            "http://api.localhost/x",
            "https://example.com/#frag",
            "http://0.aa*/x",
            "https://exa!mple.com/",
        ] {
            assert!(validate_url(bad, &open).is_err(), "{bad}");
        }
        let err = validate_url("http://127.0.0.1:9/x", &open).expect_err("blocked");
        assert!(err.contains("allow_cidrs"), "{err}");
        let local = AddressPolicy::new(&["127.0.0.0/8".into()]).expect("cidr");
        assert!(validate_url("http://127.0.0.1:9/x", &local).is_ok());
        assert!(validate_url("http://localhost:9/x", &local).is_ok());
    }

    #[test]
    fn headers() {
        let ok = validate_headers(&[("X-Team".into(), "billing".into()), ("Authorization".into(), "Bearer t".into())])
            .expect("valid");
        assert_eq!(ok[0], ("x-team".into(), "billing".into()));
        for bad in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "webhook-id",
            "Webhook-Signature",
            "courier-signature",
            "Connection",
            "bad header",
            "Proxy-Foo",
        ] {
            assert!(validate_headers(&[(bad.into(), "v".into())]).is_err(), "{bad}");
        }
        assert!(validate_headers(&[("x-a".into(), "line\nbreak".into())]).is_err());
        let twice = validate_headers(&[("x-a".into(), "1".into()), ("X-A".into(), "2".into())]).expect("valid");
        assert_eq!(twice, [("x-a".to_owned(), "2".to_owned())], "the last one wins");
        let many: Vec<_> = (0..21).map(|i| (format!("x-{i}"), "v".to_owned())).collect();
        assert!(validate_headers(&many).is_err());
    }

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
