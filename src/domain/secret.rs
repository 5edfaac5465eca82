//! Secrets given to hookrelay (API keys, provider credentials, tracking
//! keys): kept as text, never printed, serialized masked.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret from the configuration; never printed, and serialized masked
/// (`hookrelay check-config` prints the configuration as TOML).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// What a secret looks like when the configuration is printed.
pub const MASKED: &str = "********";

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { MASKED })
    }
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}
