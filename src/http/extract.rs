//! Extractors that answer bad input with [`ApiError`] (Courier's error
//! shape) instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::domain::{ApiKeyId, DeliveryId, MessageId, SubscriptionId};

/// A JSON body. Errors name the offending field; an oversized body is 413.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::bad_request(format!("cannot read the request body: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON body that may be left out entirely (an empty body is `None`).
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::bad_request(format!("cannot read the request body: {rejection}"))
            }
        })?;
        // JSON's whitespace only: a form feed is not "no body".
        let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let start = bytes.iter().position(|b| !is_space(b)).unwrap_or(bytes.len());
        let end = bytes.iter().rposition(|b| !is_space(b)).map_or(start, |i| i + 1);
        let text = &bytes[start..end.max(start)];
        if text.is_empty() || text == b"null" {
            return Ok(OptionalJson(None));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// Parses a JSON object, naming the path of the first problem. Every body
/// hookrelay takes is an object (serde would also read a struct from an
/// array of its fields, which no client means).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if !bytes.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid JSON body at `{path}`: {inner}"))
        }
    })?;
    de.end().map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// The configured body limit, put in request extensions so that a 413 can
/// say what the limit is.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// The raw query string's pairs, in order, with repeats kept.
#[derive(Debug, Default)]
pub struct QueryPairs(pub Vec<(String, String)>);

/// Most query parameters one request may carry.
pub const MAX_QUERY_PAIRS: usize = 1_000;
/// Most distinct values one multi-value parameter may carry.
pub const MAX_VALUES: usize = 100;
/// Longest value of a multi-value parameter, in characters.
pub const MAX_VALUE_CHARS: usize = 256;

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let mut pairs = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if pairs.len() == MAX_QUERY_PAIRS {
                return Err(ApiError::bad_request(format!("at most {MAX_QUERY_PAIRS} query parameters")));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(QueryPairs(pairs))
    }
}

impl QueryPairs {
    /// Refuses parameters not in `known`, naming the first one.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::bad_request(format!(
                "unknown query parameter `{k}`; expected one of: {}",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// The single value of `name`; a repeat is refused.
    pub fn one(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::bad_request(format!("query parameter `{name}` may be given only once")));
        }
        Ok(first)
    }

    /// Every distinct value of `name`, in order of first appearance, also
    /// splitting comma-separated lists: at most [`MAX_VALUES`] of at most
    /// [`MAX_VALUE_CHARS`] characters, so that no caller can make one query
    /// carry thousands of terms.
    pub fn many(&self, name: &str) -> Result<Vec<&str>, ApiError> {
        let mut distinct: Vec<&str> = Vec::new();
        let values = self
            .0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty());
        for value in values {
            if value.chars().count() > MAX_VALUE_CHARS {
                return Err(ApiError::bad_request(format!(
                    "each `{name}` value must be at most {MAX_VALUE_CHARS} characters"
                )));
            }
            if !distinct.contains(&value) {
                if distinct.len() == MAX_VALUES {
                    return Err(ApiError::bad_request(format!("at most {MAX_VALUES} distinct `{name}` values")));
                }
                distinct.push(value);
            }
        }
        Ok(distinct)
    }
}

/// An id that names a resource in a path (`/messages/{id}`).
pub trait PathId: Sized {
    /// What the id names, for "no {what} with this id".
    const WHAT: &'static str;
    fn parse_id(s: &str) -> Option<Self>;
}

impl PathId for MessageId {
    const WHAT: &'static str = "message";
    fn parse_id(s: &str) -> Option<Self> {
        MessageId::parse(s).ok()
    }
}

impl PathId for SubscriptionId {
    const WHAT: &'static str = "subscription";
    fn parse_id(s: &str) -> Option<Self> {
        SubscriptionId::parse(s).ok()
    }
}

impl PathId for DeliveryId {
    const WHAT: &'static str = "delivery";
    fn parse_id(s: &str) -> Option<Self> {
        DeliveryId::parse(s).ok()
    }
}

impl PathId for ApiKeyId {
    const WHAT: &'static str = "API key";
    fn parse_id(s: &str) -> Option<Self> {
        ApiKeyId::parse(s).ok()
    }
}

/// The id in a route's `{id}`. One that cannot exist (the wrong shape) is
/// simply not found.
#[derive(Debug)]
pub struct IdPath<T>(pub T);

impl<S: Send + Sync, T: PathId> FromRequestParts<S> for IdPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) =
            Path::<String>::from_request_parts(parts, state).await.map_err(|e| ApiError::bad_request(e.body_text()))?;
        T::parse_id(&raw).map(IdPath).ok_or_else(not_found::<T>)
    }
}

/// 404 for an id of kind `T` that names nothing.
pub fn not_found<T: PathId>() -> ApiError {
    ApiError::NotFound(format!("no {} with this id", T::WHAT))
}
