//! Which URLs a click token may carry. Pure: no I/O.
//!
//! The same check runs when a link is signed and again before a signed
//! link is followed, so a redirect only ever goes to an absolute `http` or
//! `https` URL with a host and nothing that lets a browser, a proxy or a
//! naive URL parser read it as somewhere else.
//!
//! The check is deliberately stricter than the WHATWG URL parser (which
//! browsers use): that parser forgives `https:\\evil.example`,
//! `https:/evil.example`, `java\nscript:` and leading control characters,
//! and each forgiveness is a way two parsers disagree about where a link
//! goes. Such links are refused here; the rewriter leaves them untracked.

use url::Url;

/// Longest target accepted, in bytes (older browsers stop near 2,083).
pub const MAX_TARGET_LEN: usize = 2048;

/// Why a URL cannot be a click target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_TARGET_LEN} bytes")]
    TooLong,
    #[error("must start with http:// or https://")]
    Scheme,
    #[error("must not contain spaces, control characters or backslashes")]
    ForbiddenCharacter,
    #[error("must not contain encoded CR, LF or NUL (%0D, %0A, %00)")]
    EncodedControl,
    #[error("must not carry a user name or password")]
    UserInfo,
    #[error("must name a host")]
    NoHost,
    #[error("is not a valid URL")]
    Invalid,
}

/// Checks `raw` and returns the form that is signed and redirected to: the
/// WHATWG serialization of the URL (ASCII only, with `%`-escapes), which
/// is exactly where a browser would have gone with the original link.
///
/// The check is idempotent: a returned target passes again unchanged,
/// which is what the redirect relies on.
pub fn check(raw: &str) -> Result<String, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::Empty);
    }
    if raw.len() > MAX_TARGET_LEN {
        return Err(TargetError::TooLong);
    }
    // Whitespace and control characters anywhere (the URL parser would
    // silently drop tabs and newlines, `java\nscript:`), and backslashes
    // (which it reads as `/` in http URLs: `https:\\evil.example`).
    if raw.chars().any(|c| c.is_whitespace() || c.is_control() || c == '\\') {
        return Err(TargetError::ForbiddenCharacter);
    }
    // The scheme and `//` exactly as written, so that `http:evil.example`,
    // `https:/evil.example` and `https:///evil.example` (which the parser
    // repairs into hosts) are refused, as are `javascript:`, `data:`,
    // protocol-relative `//evil.example` and relative paths.
    let rest =
        strip_prefix_ci(raw, "https://").or_else(|| strip_prefix_ci(raw, "http://")).ok_or(TargetError::Scheme)?;
    if rest.starts_with('/') {
        return Err(TargetError::NoHost);
    }
    if contains_encoded_control(raw) {
        return Err(TargetError::EncodedControl);
    }
    let url = Url::parse(raw).map_err(|_| TargetError::Invalid)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TargetError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TargetError::UserInfo);
    }
    match url.host() {
        None => return Err(TargetError::NoHost),
        Some(url::Host::Domain(d)) if !crate::domain::host::is_dns_name(d) => return Err(TargetError::Invalid),
        Some(_) => {}
    }
    let out = String::from(url);
    if out.len() > MAX_TARGET_LEN {
        return Err(TargetError::TooLong);
    }
    // The serialization decodes nothing, but a host can be punycoded into
    // something else; whatever it became must pass the same rules.
    if contains_encoded_control(&out) || !out.is_ascii() {
        return Err(TargetError::Invalid);
    }
    Ok(out)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// `%0d`, `%0a` or `%00` in any case: harmless in a `Location` header (it
/// stays encoded), but a classic response-splitting probe for anything
/// downstream that decodes once too often.
fn contains_encoded_control(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && matches!(w[2].to_ascii_lowercase(), b'0' | b'a' | b'd'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_links_are_normalized_like_a_browser_would() {
        for (raw, want) in [
            ("https://example.com", "https://example.com/"),
            ("HTTPS://Example.COM/Path?q=1#top", "https://example.com/Path?q=1#top"),
            ("http://example.com:8080/a/../b", "http://example.com:8080/b"),
            ("https://example.com/caf\u{e9}?q=\u{e9}", "https://example.com/caf%C3%A9?q=%C3%A9"),
            ("https://b\u{fc}cher.example/", "https://xn--bcher-kva.example/"),
            ("https://example.com/?a=1&b=2", "https://example.com/?a=1&b=2"),
            ("https://example.com/share?text=a%20b", "https://example.com/share?text=a%20b"),
            ("https://[2001:db8::1]/x", "https://[2001:db8::1]/x"),
            ("https://192.0.2.1/x", "https://192.0.2.1/x"),
        ] {
            assert_eq!(check(raw).as_deref(), Ok(want), "{raw}");
            assert_eq!(check(want).as_deref(), Ok(want), "idempotent: {want}");
        }
    }

    #[test]
    fn hostile_targets_are_refused() {
        use TargetError::*;
        for (raw, why) in [
            ("", Empty),
            ("javascript:alert(1)", Scheme),
            ("JavaScript:alert(1)", Scheme),
            ("java\nscript:alert(1)", ForbiddenCharacter),
            (" javascript:alert(1)", ForbiddenCharacter),
            ("\u{1}https://example.com", ForbiddenCharacter),
            ("data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", Scheme),
            ("vbscript:msgbox(1)", Scheme),
            ("file:///etc/passwd", Scheme),
            ("ftp://example.com/x", Scheme),
            ("mailto:a@example.com", Scheme),
            ("//evil.example/x", Scheme),
            ("/relative/path", Scheme),
            ("relative/path", Scheme),
            ("#anchor", Scheme),
            ("http:evil.example", Scheme),
            ("https:/evil.example", Scheme),
            ("https:///evil.example", NoHost),
            ("https:\\\\evil.example", ForbiddenCharacter),
            ("https://example.com\\@evil.example", ForbiddenCharacter),
            ("https://example.com/\\evil.example", ForbiddenCharacter),
            ("https://trusted.example@evil.example/", UserInfo),
            ("https://user:pass@example.com/", UserInfo),
            ("https://:pass@example.com/", UserInfo),
            ("https://example.com/\r\nSet-Cookie:%20a=b", ForbiddenCharacter),
            ("https://example.com/%0d%0aSet-Cookie:%20a=b", EncodedControl),
            ("https://example.com/%0D%0ALocation:%20https://evil.example", EncodedControl),
            ("https://example.com/?x=%00", EncodedControl),
            ("https://evil.example%0d%0a/", EncodedControl),
            ("https://exa mple.com/", ForbiddenCharacter),
            ("https://example.com/\t", ForbiddenCharacter),
            ("https://example.com/\u{a0}", ForbiddenCharacter),
            ("https://example.com/\u{2028}", ForbiddenCharacter),
            ("https://", Invalid),
            ("https://exa<mple.com/", Invalid),
            ("https://%65vil.example%/", Invalid),
        ] {
            assert_eq!(check(raw), Err(why), "{raw:?}");
        }
        assert_eq!(check(&format!("https://example.com/{}", "a".repeat(MAX_TARGET_LEN))), Err(TooLong));
    }
}
