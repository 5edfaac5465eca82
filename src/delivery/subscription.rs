//! The checks a subscription's settings pass (headers, destination URL).
//! Pure. The record itself is [`crate::domain::subscription`]'s.

use std::net::IpAddr;

use super::ssrf::AddressPolicy;

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
        let local = AddressPolicy::new(&["127.0.0.0/8".parse().expect("cidr")]);
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
}
