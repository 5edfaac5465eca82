//! Input values shared by several routes, and their OpenAPI schemas: times
//! (epoch milliseconds or RFC 3339 text) and integers. JSON Schema counts
//! `5.0` as an integer, and so do the clients generated from it: every
//! integer field accepts an integer-valued number.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::clock::parse_time;

/// A time given as epoch milliseconds (an integer, or an integer-valued
/// number) or RFC 3339 text.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TimeValue {
    Number(serde_json::Number),
    Text(String),
}

impl TimeValue {
    /// Epoch milliseconds, if the value is a time.
    pub fn millis(&self) -> Option<i64> {
        match self {
            TimeValue::Number(n) => integer(n),
            TimeValue::Text(t) => parse_time(t),
        }
    }
}

/// A JSON number as an `i64`, when it is a whole number in range.
pub fn integer(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    // i64::MAX is not exactly representable; stay strictly inside.
    (f.fract() == 0.0 && (-9.223_372_036_854_775e18..9.223_372_036_854_775e18).contains(&f)).then_some(f as i64)
}

/// Deserializes an optional unsigned integer that may be written as an
/// integer-valued number (`5.0`).
pub fn optional_uint<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<Option<T>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => integer(&n)
            .and_then(|i| T::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a whole number in range"))),
        Some(other) => Err(serde::de::Error::custom(format!("expected an integer, found {other}"))),
    }
}

/// Like [`optional_uint`], telling a present `null` (`Some(None)`) from an
/// absent field (`None`, with `#[serde(default)]`), for PATCH.
pub fn present_uint<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    optional_uint(d).map(Some)
}

/// The schema of a time parameter: epoch milliseconds, or RFC 3339 text.
pub fn time_schema() -> utoipa::openapi::schema::Schema {
    time_schema_of(false)
}

/// [`time_schema`], or `null`.
pub fn optional_time_schema() -> utoipa::openapi::schema::Schema {
    time_schema_of(true)
}

fn time_schema_of(nullable: bool) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    let mut one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .description(Some("epoch milliseconds")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                .description(Some("RFC 3339, e.g. 2026-12-01T00:00:00Z")),
        );
    if nullable {
        one_of = one_of.item(ObjectBuilder::new().schema_type(Type::Null));
    }
    one_of.build().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_written_as_floats_are_integers() {
        let n = |v: Value| match v {
            Value::Number(n) => n,
            _ => unreachable!("a number"),
        };
        assert_eq!(integer(&n(serde_json::json!(5))), Some(5));
        assert_eq!(integer(&n(serde_json::json!(5.0))), Some(5));
        assert_eq!(integer(&n(serde_json::json!(-2.0))), Some(-2));
        assert_eq!(integer(&n(serde_json::json!(5.5))), None);
        assert_eq!(integer(&n(serde_json::json!(1e300))), None);
        let t: TimeValue = serde_json::from_str("1700000000123.0").expect("number");
        assert_eq!(t.millis(), Some(1_700_000_000_123));
        let t: TimeValue = serde_json::from_str("\"2023-11-14T22:13:20.123Z\"").expect("text");
        assert_eq!(t.millis(), Some(1_700_000_000_123));

        #[derive(Deserialize)]
        struct Limits {
            #[serde(default, deserialize_with = "optional_uint")]
            rate: Option<u32>,
        }
        let parsed: Limits = serde_json::from_str(r#"{"rate": 1245575.0}"#).expect("a whole float");
        assert_eq!(parsed.rate, Some(1_245_575));
        assert!(serde_json::from_str::<Limits>(r#"{"rate": -1}"#).is_err());
        assert!(serde_json::from_str::<Limits>(r#"{"rate": 1.5}"#).is_err());
        assert_eq!(serde_json::from_str::<Limits>("{}").expect("absent").rate, None);
    }
}
