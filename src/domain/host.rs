//! Host names as the DNS can resolve them, and networks as operators write
//! them. Pure.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

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

/// A network in CIDR notation (`10.0.0.0/8`, `127.0.0.1/32`, `::1/128`),
/// checked where it is read: a configuration naming a bad one does not load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn net(&self) -> IpNet {
        self.0
    }
}

/// Why a text is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a CIDR (like 10.0.0.0/8)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shown: String = text.chars().take(64).collect();
        text.trim().parse::<IpNet>().map(Cidr).map_err(|_| CidrError(shown))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_in_cidr_notation() {
        let net: Cidr = " 10.0.0.0/8 ".parse().expect("cidr");
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert_eq!("::1/128".parse::<Cidr>().expect("v6").to_string(), "::1/128");
        let err = "10.0.0.0".parse::<Cidr>().expect_err("no prefix");
        assert_eq!(err.to_string(), "`10.0.0.0` is not a CIDR (like 10.0.0.0/8)");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        let parsed: Vec<Cidr> = serde_json::from_str(r#"["127.0.0.1/32"]"#).expect("serde");
        assert_eq!(serde_json::to_string(&parsed).expect("json"), r#"["127.0.0.1/32"]"#);
        assert!(serde_json::from_str::<Vec<Cidr>>(r#"["localhost"]"#).is_err());
    }

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
