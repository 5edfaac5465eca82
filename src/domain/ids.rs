//! Identifier newtypes. Each is built by a `parse` constructor that checks its
//! shape, so a value of these types is always safe to store, log and put in a
//! URL; a bare `String` id never crosses a module boundary.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("may only contain letters, digits and `{allowed}`")]
    BadChar { allowed: &'static str },
}

fn check(s: &str, max: usize, extra: &'static str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { max });
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.as_bytes().contains(&b)) {
        return Err(IdError::BadChar { allowed: extra });
    }
    Ok(())
}

/// A fresh, time-ordered identifier body (UUIDv7 as 32 lowercase hex digits).
fn fresh() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, prefix = $prefix:literal, max = $max:literal, extra = $extra:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks the shape of `s` and wraps it.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check(s, $max, $extra)?;
                Ok(Self(s.to_owned()))
            }

            /// A new time-ordered identifier.
            pub fn generate() -> Self {
                Self(format!(concat!($prefix, "{}"), fresh()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Wraps a value read back from our own database, where it was
            /// only ever written after `parse` or `generate`.
            #[allow(dead_code, reason = "not every id type is read back from the database")]
            pub(crate) fn from_trusted(s: String) -> Self {
                Self(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check(&s, $max, $extra)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

string_id!(
    /// A message's id: chosen by the sender at registration, or generated
    /// (`msg_` + UUIDv7) when the sender gives none or a provider callback
    /// arrives first.
    MessageId, prefix = "msg_", max = 128, extra = "-_.:@"
);

impl MessageId {
    /// Whether hookrelay generated this id (`msg_` + 32 hex digits) rather
    /// than a sender choosing it.
    pub fn is_generated(&self) -> bool {
        self.0.strip_prefix("msg_").is_some_and(|rest| {
            rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }
}
string_id!(
    /// A subscription (`sub_` + UUIDv7).
    SubscriptionId, prefix = "sub_", max = 64, extra = "-_"
);
string_id!(
    /// A delivery of one payload to one subscription (`dlv_` + UUIDv7); sent
    /// as `webhook-id`, so it is stable across retries.
    DeliveryId, prefix = "dlv_", max = 64, extra = "-_"
);

string_id!(
    /// An API key's id (`key_` + UUIDv7), by which it is listed and revoked;
    /// never the key itself.
    ApiKeyId, prefix = "key_", max = 64, extra = "-_"
);

/// A provider's name as it appears on messages and in the `provider` filter:
/// lowercase letters, digits, `-` and `_` (`sendgrid`, `amazon-ses`, `my_smtp`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProviderName(String);

impl ProviderName {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let lower = s.to_ascii_lowercase();
        check(&lower, 64, "-_")?;
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_trusted(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl TryFrom<String> for ProviderName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<ProviderName> for String {
    fn from(p: ProviderName) -> String {
        p.0
    }
}

/// The provider's own id for a message (`sg_message_id` prefix, SES
/// `messageId`, Twilio `MessageSid`, ...), qualified by the provider.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProviderRef {
    pub provider: ProviderName,
    pub message_id: String,
}

impl ProviderRef {
    /// Longest provider message id accepted; real ones are well under 200.
    pub const MAX_ID_LEN: usize = 512;

    /// Surrounding whitespace and angle brackets are dropped: send APIs
    /// return `<id@host>` (Mailgun, Brevo) where events carry `id@host`,
    /// and the two must match.
    pub fn new(provider: ProviderName, message_id: &str) -> Result<Self, IdError> {
        let message_id = message_id.trim();
        let message_id = message_id.strip_prefix('<').and_then(|m| m.strip_suffix('>')).map_or(message_id, str::trim);
        if message_id.is_empty() {
            return Err(IdError::Empty);
        }
        if message_id.chars().any(char::is_control) {
            return Err(IdError::BadChar { allowed: "printable characters" });
        }
        if message_id.len() > Self::MAX_ID_LEN {
            return Err(IdError::TooLong { max: Self::MAX_ID_LEN });
        }
        Ok(Self { provider, message_id: message_id.to_owned() })
    }
}

/// The channel a message went out on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
    Push,
    Chat,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
            Channel::Chat => "chat",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "email" => Some(Channel::Email),
            "sms" => Some(Channel::Sms),
            "push" => Some(Channel::Push),
            "chat" => Some(Channel::Chat),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_checked() {
        assert!(MessageId::parse("order-42:welcome@v2").is_ok());
        assert_eq!(MessageId::parse(""), Err(IdError::Empty));
        assert!(matches!(MessageId::parse("a b"), Err(IdError::BadChar { .. })));
        assert!(matches!(MessageId::parse("é"), Err(IdError::BadChar { .. })));
        assert!(matches!(MessageId::parse(&"x".repeat(129)), Err(IdError::TooLong { .. })));
        let generated = MessageId::generate();
        assert!(generated.as_str().starts_with("msg_"));
        assert!(generated.is_generated());
        assert!(!MessageId::parse("msg_mine").expect("id").is_generated());
        assert!(!MessageId::parse("order-1").expect("id").is_generated());
        assert!(MessageId::parse(generated.as_str()).is_ok());
    }

    #[test]
    fn generated_ids_sort_by_creation() {
        let a = DeliveryId::generate();
        let b = DeliveryId::generate();
        assert!(a < b);
    }

    #[test]
    fn provider_names_are_lowercased() {
        assert_eq!(ProviderName::parse("SendGrid").map(String::from), Ok("sendgrid".to_owned()));
        assert!(ProviderName::parse("send grid").is_err());
    }

    #[test]
    fn provider_refs_drop_angle_brackets() {
        let p = ProviderName::parse("mailgun").expect("name");
        let a = ProviderRef::new(p.clone(), " <2018.1@example.org> ").expect("ref");
        let b = ProviderRef::new(p.clone(), "2018.1@example.org").expect("ref");
        assert_eq!(a, b);
        assert_eq!(ProviderRef::new(p.clone(), "<>"), Err(IdError::Empty));
        assert_eq!(ProviderRef::new(p, "<only-open").map(|r| r.message_id), Ok("<only-open".to_owned()));
    }

    #[test]
    fn serde_refuses_bad_ids() {
        assert!(serde_json::from_str::<MessageId>("\"ok-id\"").is_ok());
        assert!(serde_json::from_str::<MessageId>("\"bad id\"").is_err());
    }
}
