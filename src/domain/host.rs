//! Host names as the DNS can resolve them. Pure.

/// Whether `host` (as a URL parser leaves it: lower case, IDNA-encoded) is a
/// name the DNS can hold: dot-separated labels of 1 to 63 letters, digits,
/// `-` and `_` (Docker service names), neither starting nor ending with `-`,
/// 253 characters at most, an optional final dot. Anything else (`*`, `%`,
/// `!`, an empty label) names no host that could answer, however a URL
/// parser forgives it.
pub fn is_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_dns_can_hold() {
        for good in ["example.com", "hooks.example.com.", "a", "my_service", "xn--bcher-kva.de", "a-b.c"] {
            assert!(is_dns_name(good), "{good}");
        }
        let long_label = "a".repeat(64);
        for bad in ["", ".", "a..b", "-a.com", "a-.com", "0.aa*", "a%20b.com", "a!b.com", &long_label] {
            assert!(!is_dns_name(bad), "{bad}");
        }
        assert!(is_dns_name(&"a.".repeat(127)), "253 and a final dot");
        assert!(!is_dns_name(&"a.".repeat(128)), "longer than 253");
    }
}
