//! Keyset paging shared by every list route: the cursor, which is the
//! position `(time, id)` of the last row returned written as
//! `<epoch ms>.<id>`, and the page size.
//!
//! A cursor is plain text on purpose: every string of its documented shape
//! is a position (there is no "malformed but well-formed" cursor), a person
//! can read one, and the OpenAPI description states it exactly. Keep the
//! same filters when following it; an empty cursor is the first page.

use super::error::ApiError;
use super::extract::QueryPairs;

/// The shape of a message-list cursor (message ids may hold `.`; the time,
/// before the first `.`, never does).
pub const MESSAGE_CURSOR: &str = "^[0-9]{1,15}\\.[A-Za-z0-9._:@-]{1,128}$";
/// The shape of a delivery-list cursor.
pub const DELIVERY_CURSOR: &str = "^[0-9]{1,15}\\.[A-Za-z0-9_-]{1,64}$";

/// The cursor for a page ending at `(at, id)`.
pub fn encode(at: i64, id: &impl std::fmt::Display) -> String {
    format!("{at}.{id}")
}

/// The position a cursor names; `None` when it does not have the shape.
pub fn decode<Id>(cursor: &str, parse_id: impl FnOnce(&str) -> Option<Id>) -> Option<(i64, Id)> {
    let (at, id) = cursor.split_once('.')?;
    if at.is_empty() || at.len() > 15 || !at.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((at.parse().ok()?, parse_id(id)?))
}

/// The `cursor` parameter: absent or empty is the first page.
pub fn cursor<Id>(q: &QueryPairs, parse_id: impl FnOnce(&str) -> Option<Id>) -> Result<Option<(i64, Id)>, ApiError> {
    match q.one("cursor")? {
        None | Some("") => Ok(None),
        Some(c) => decode(c, parse_id).map(Some).ok_or_else(|| {
            ApiError::bad_request("`cursor` is malformed: pass `paging.cursor` from the previous page as it is")
        }),
    }
}

/// The `limit` parameter: 1 to `max`, `default` when absent.
pub fn limit(q: &QueryPairs, default: usize, max: usize) -> Result<usize, ApiError> {
    match q.one("limit")? {
        None => Ok(default),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| ApiError::bad_request(format!("`limit` must be an integer from 1 to {max}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeliveryId, MessageId};

    #[test]
    fn cursors_round_trip_and_refuse_other_shapes() {
        let id = MessageId::parse("order.1:a@b").expect("id");
        let c = encode(1_700_000_000_000, &id);
        assert_eq!(c, "1700000000000.order.1:a@b");
        assert_eq!(decode(&c, |s| MessageId::parse(s).ok()), Some((1_700_000_000_000, id)));
        let delivery = DeliveryId::generate();
        let c = encode(5, &delivery);
        assert_eq!(decode(&c, |s| DeliveryId::parse(s).ok()), Some((5, delivery)));
        for bad in ["", "x", ".id", "12.", "-1.id", "1234567890123456.id", "12.bad id", "a1.id"] {
            assert_eq!(decode(bad, |s| MessageId::parse(s).ok()), None, "{bad}");
        }
        // Every string of the documented shape is a cursor.
        let re_like = |s: &str| s.split_once('.').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty());
        assert!(re_like("123456789012345.x") && decode("123456789012345.x", |s| MessageId::parse(s).ok()).is_some());
    }
}
