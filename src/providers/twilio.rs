//! Not implemented yet: sources of this provider are refused at start-up.

use super::{CallbackRequest, ParseContext, ParseError, Parsed, VerifyError};
use crate::config::SourceConfig;

/// Configuration fields this provider's sources use.
pub const ACCEPTS: &[&str] = &[];

#[derive(Debug)]
pub struct Credentials;

impl Credentials {
    pub fn from_config(_: &SourceConfig) -> Result<Self, String> {
        Err("provider: not supported yet".into())
    }
}

pub fn verify(_: &CallbackRequest<'_>, _: &Credentials, _: i64) -> Result<(), VerifyError> {
    Err(VerifyError::BadSignature)
}

pub fn parse(_: &CallbackRequest<'_>, _: &ParseContext) -> Result<Parsed, ParseError> {
    Err(ParseError::new("not supported yet"))
}
