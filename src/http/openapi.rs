//! The OpenAPI description, completed with the answers every route shares.
//!
//! Each handler documents its own successes and the errors particular to
//! it; the answers that come from the layers around every handler are added
//! here, once, so that no operation can forget one: 401 and 403 on routes
//! that take an API key, 400 and 413 on routes that read a body, 400 on
//! routes that read query parameters (an unknown or malformed one), and 503
//! on every route that reaches the database or the ingest queue (the
//! database is down, or hookrelay is overloaded; retry after
//! `Retry-After`). Schemathesis checks the result against the real server
//! in CI (`.ci/schemathesis`).

use serde_json::{Value, json};

/// Routes that answer without the database (probes and documents).
const NO_DATABASE: &[&str] = &["/healthz", "/metrics", "/openapi.json", "/t/o/{token}", "/t/c/{token}"];

/// An absolute http(s) URL whose host is a DNS name (at most five labels
/// here, a letter-only last one; not `localhost`), with a path and query of
/// URL characters. A query needs a path before it, and holds no character a
/// browser would escape, so the URL as given is as long as the URL as
/// stored. Subscriber URLs are checked again, against the addresses their
/// names resolve to, on every connection.
macro_rules! url_pattern {
    ($host:literal) => {
        concat!(
            "^[Hh][Tt][Tt][Pp][Ss]?://",
            $host,
            "(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~!$&'()*+,;=:@/-]*(\\?[A-Za-z0-9._~!$&()*+,;=:@/?-]*)?)?$"
        )
    };
}
const SUBSCRIBER_URL: &str =
    url_pattern!("([A-Za-z0-9_]([A-Za-z0-9_-]{0,38}[A-Za-z0-9_])?\\.){1,4}([A-Za-z]{2,8}|[A-Za-z]{10,63})");
/// A tracked link's target may also be an IPv4 address.
const LINK_URL: &str = url_pattern!(
    "(([A-Za-z0-9_]([A-Za-z0-9_-]{0,38}[A-Za-z0-9_])?\\.){1,4}([A-Za-z]{2,8}|[A-Za-z]{10,63})\
     |((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9]))"
);

/// Canonical base64 of 24 to 64 bytes, after an optional `whsec_`.
const HMAC_SECRET: &str = "^(whsec_)?(([A-Za-z0-9+/]{4}){8,20}([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?\
                           |([A-Za-z0-9+/]{4}){21}([A-Za-z0-9+/][AQgw]==)?)$";

/// `whsk_` and the canonical base64 of a 32-byte ed25519 seed.
const ED25519_KEY: &str = "^whsk_([A-Za-z0-9+/]{4}){10}[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=$";

/// A header name a subscription may set (a token, not one hookrelay sets
/// itself or a hop-by-hop one).
fn header_names() -> Value {
    let ci = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    let forbidden: Vec<String> =
        crate::delivery::subscription::FORBIDDEN_HEADERS.iter().map(|h| format!("^{}$", ci(h))).collect();
    let prefixes = format!("^({}|{})", ci("webhook-"), ci("proxy-"));
    json!({
        "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
        "not": {"anyOf": forbidden.into_iter().chain([prefixes]).map(|p| json!({"pattern": p})).collect::<Vec<_>>()}
    })
}

/// Rules the derive cannot state, as JSON Schema keywords merged into the
/// named component schema (`properties` entries are merged field by field).
fn schema_rules() -> Vec<(&'static str, Value)> {
    // A provider message id (one with something in it: a blank one counts
    // as absent) is only meaningful with the provider it belongs to.
    let needs_provider = json!({
        "if": {"required": ["provider_message_id"],
               "properties": {"provider_message_id": {"type": "string", "pattern": "\\S"}}},
        "then": {"required": ["provider"], "properties": {"provider": {"type": "string"}}}
    });
    let headers = json!({
        "maxProperties": crate::delivery::subscription::MAX_HEADERS,
        "propertyNames": header_names(),
        "additionalProperties": {"type": "string", "pattern": "^[^\\u0000-\\u0008\\u000A-\\u001F\\u007F]{0,1024}$"}
    });
    let subscription = json!({"properties": {
        "url": {"pattern": SUBSCRIBER_URL, "maxLength": 2048},
        "description": {"maxLength": 512},
        "statuses": {"minItems": 1},
        "headers": headers,
    }});
    let mut create = subscription.clone();
    create["if"] = json!({"required": ["signature_scheme"],
                          "properties": {"signature_scheme": {"const": "standard-webhooks-ed25519"}}});
    create["then"] = json!({"properties": {"secret": {"pattern": ED25519_KEY}}});
    create["else"] = json!({"properties": {"secret": {"pattern": HMAC_SECRET}}});
    vec![
        ("RegisterRequest", needs_provider.clone()),
        ("EventRequest", needs_provider),
        ("CreateSubscription", create),
        ("UpdateSubscription", subscription),
        ("RotateSecret", json!({"properties": {"secret": {"anyOf": [{"pattern": HMAC_SECRET}, {"pattern": ED25519_KEY}]}}})),
        ("CreateKey", json!({"properties": {"name": {"pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"}}})),
        ("LinkRequest", json!({"properties": {"url": {"pattern": LINK_URL, "maxLength": 2048}}})),
    ]
    .into_iter()
    .chain(
        ["LinkRequest", "RewriteRequest"]
            .map(|name| (name, json!({"properties": {"message_id": {"pattern": "^[A-Za-z0-9._:@-]{1,128}$"}}}))),
    )
    .collect()
}

/// Merges `rule` into `schema`: keywords are set, `properties` entries
/// are extended keyword by keyword.
fn merge(schema: &mut serde_json::Map<String, Value>, rule: Value) {
    let Value::Object(rule) = rule else { return };
    for (key, value) in rule {
        match (key.as_str(), value, schema.get_mut("properties")) {
            ("properties", Value::Object(props), Some(Value::Object(existing))) => {
                for (name, keywords) in props {
                    match (existing.get_mut(&name), keywords) {
                        (Some(Value::Object(field)), Value::Object(keywords)) => field.extend(keywords),
                        (_, keywords) => {
                            existing.insert(name, keywords);
                        }
                    }
                }
            }
            (_, value, _) => {
                schema.insert(key, value);
            }
        }
    }
}

/// Adds the shared answers to every operation of `doc` (an OpenAPI 3
/// document) and the cross-field rules to its schemas.
pub fn complete(doc: &mut Value) {
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        for (name, rule) in schema_rules() {
            if let Some(Value::Object(schema)) = schemas.get_mut(name) {
                merge(schema, rule);
            }
        }
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            if !matches!(method.as_str(), "get" | "post" | "put" | "patch" | "delete" | "head") {
                continue;
            }
            let protected = op.get("security").is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty()));
            let has_body = op.get("requestBody").is_some();
            let has_query =
                op.get("parameters").and_then(Value::as_array).is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
            let mut add = |status: &str, description: &str| {
                responses.entry(status.to_owned()).or_insert_with(|| error_response(description));
            };
            if protected {
                add("401", "Missing or invalid API key (`Authorization: Bearer <key>`)");
                add("403", "The API key's scopes do not include the one this route needs");
            }
            if has_body {
                add("400", "The body is not valid: the message names the field");
                add("413", "The body is larger than `server.body_limit_bytes`");
            }
            if has_query {
                add("400", "A query parameter is unknown or not valid: the message names it");
            }
            if !NO_DATABASE.contains(&path.as_str()) {
                add("503", "The database is unavailable or hookrelay is overloaded: retry after `Retry-After`");
            }
        }
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_answers_are_added_once_and_never_replace_an_operation_s_own() {
        let mut doc = json!({"paths": {
            "/messages": {
                "get": {"security": [{"api_key": []}], "parameters": [{"name": "limit", "in": "query"}],
                        "responses": {"200": {"description": "ok"}, "400": {"description": "mine"}}},
                "post": {"security": [{"api_key": []}], "requestBody": {}, "responses": {}}
            },
            "/healthz": {"get": {"responses": {"200": {"description": "ok"}}}}
        }});
        complete(&mut doc);
        let get = &doc["paths"]["/messages"]["get"]["responses"];
        assert_eq!(get["400"]["description"], "mine");
        for status in ["401", "403", "503"] {
            assert!(get[status].is_object(), "{status}");
        }
        let post = &doc["paths"]["/messages"]["post"]["responses"];
        for status in ["400", "401", "403", "413", "503"] {
            assert!(post[status].is_object(), "{status}");
        }
        let health = doc["paths"]["/healthz"]["get"]["responses"].as_object().expect("responses");
        assert_eq!(health.keys().collect::<Vec<_>>(), ["200"]);
    }
}
