//! API keys and what each may do. Pure.
//!
//! A key carries one or more scopes: `read` (the message logs, histogram and
//! deliveries: what a support person needs), `send` (registering messages,
//! reporting events, rewriting for tracking: what a sending service needs)
//! and `admin` (everything, subscriptions and keys included). Keys are kept
//! as SHA-256 hashes; what identifies one to a person is its id, its name
//! and the first characters of the key (`prefix`).

use std::fmt;

use super::ids::ApiKeyId;

/// One right an API key can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read message logs, histograms and deliveries.
    Read,
    /// Register messages, report events, rewrite HTML for tracking.
    Send,
    /// Everything, including subscriptions and API keys.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Send, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Send => "send",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str().eq_ignore_ascii_case(s.trim()))
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Send => 2,
            Scope::Admin => 4,
        }
    }
}

/// The scopes of one key (a small set).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub const ADMIN: Scopes = Scopes(4);

    pub fn of(scopes: &[Scope]) -> Scopes {
        Scopes(scopes.iter().fold(0, |bits, s| bits | s.bit()))
    }

    /// Parses a comma-separated list (`read,send`); an empty or unknown
    /// name is an error naming it.
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut bits = 0;
        for name in text.split(',') {
            let scope = Scope::parse(name)
                .ok_or_else(|| format!("unknown scope `{}`; expected read, send or admin", name.trim()))?;
            bits |= scope.bit();
        }
        Ok(Scopes(bits))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether a route needing `needed` may be used: `admin` may do anything.
    pub fn allow(self, needed: Scope) -> bool {
        self.0 & (needed.bit() | Scope::Admin.bit()) != 0
    }

    pub fn list(self) -> Vec<Scope> {
        Scope::ALL.into_iter().filter(|s| self.0 & s.bit() != 0).collect()
    }
}

impl fmt::Display for Scopes {
    /// `read,send`, as stored.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.list().into_iter().map(Scope::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// A stored API key: everything but the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub name: String,
    /// The key's first characters (`hr_AbC123`), to recognise it by; `None`
    /// for keys stored before prefixes were kept.
    pub prefix: Option<String>,
    /// SHA-256 of the key, hex.
    pub hash: String,
    pub scopes: Scopes,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// Characters of a key kept as its prefix: `hr_` and six of the 43 random
/// ones (36 bits: enough to tell keys apart, far too few to guess one).
pub const PREFIX_LEN: usize = 9;

/// The prefix shown for `key`.
pub fn prefix_of(key: &str) -> String {
    key.chars().take(PREFIX_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_allows_everything_and_the_others_only_themselves() {
        let read = Scopes::of(&[Scope::Read]);
        assert!(read.allow(Scope::Read) && !read.allow(Scope::Send) && !read.allow(Scope::Admin));
        let send = Scopes::of(&[Scope::Send]);
        assert!(!send.allow(Scope::Read) && send.allow(Scope::Send) && !send.allow(Scope::Admin));
        let both = Scopes::of(&[Scope::Read, Scope::Send]);
        assert!(both.allow(Scope::Read) && both.allow(Scope::Send) && !both.allow(Scope::Admin));
        for scope in Scope::ALL {
            assert!(Scopes::ADMIN.allow(scope));
        }
        assert!(!Scopes::default().allow(Scope::Read));
    }

    #[test]
    fn scopes_parse_and_print() {
        assert_eq!(Scopes::parse("read, SEND"), Ok(Scopes::of(&[Scope::Read, Scope::Send])));
        assert_eq!(Scopes::parse("admin").map(|s| s.to_string()), Ok("admin".into()));
        assert_eq!(Scopes::of(&[Scope::Send, Scope::Read]).to_string(), "read,send");
        assert!(Scopes::parse("write").expect_err("unknown").contains("`write`"));
        assert!(Scopes::parse("read,").is_err(), "an empty name is refused");
        assert_eq!(prefix_of("hr_ABCDEFGHIJ"), "hr_ABCDEF");
    }
}
