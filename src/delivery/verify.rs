//! Checking a received webhook the way a subscriber does: what
//! `hookrelay verify` runs for someone debugging their endpoint.
//!
//! Pure: headers, body, secret and the clock come in as arguments. The
//! cryptography is [`signing`]'s (`verify_standard`, `verify_courier`); this
//! module only reads the captured headers, picks the scheme, and gathers what
//! explains a verdict (the signature's age, whether the signature would match
//! at its own time or without a trailing newline, what the payload is).
//! Nothing here ever formats the secret. A `whpk_` public key checks the
//! `v1a` (ed25519) entries of a Standard Webhooks header, a `whsec_` secret
//! its `v1` entries; entries the key cannot check are counted and named. A `whpk_` public key checks the
//! `v1a` (ed25519) entries of a Standard Webhooks header, a `whsec_` secret
//! its `v1` entries; entries the key cannot check are counted and named.

use std::fmt;

use serde_json::Value;

use crate::clock::rfc3339;
use crate::domain::signing::{self, Scheme, SignatureError, VerifyKey};

const STANDARD_HEADERS: [&str; 3] = ["webhook-id", "webhook-timestamp", "webhook-signature"];
const COURIER_HEADER: &str = "courier-signature";

/// Request headers as captured: names lower-cased, values trimmed, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

/// Why a header line cannot be used. Values are never quoted back: a
/// captured request may carry credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("expected `Name: value`")]
    NoColon,
    #[error("the header name is empty or has characters a header name cannot have")]
    BadName,
    #[error("`{0}` is given twice with different values")]
    Conflict(String),
}

/// A [`HeaderError`] on a line of a headers file (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct HeadersFileError {
    pub line: usize,
    pub error: HeaderError,
}

impl Headers {
    pub fn new() -> Self {
        Headers::default()
    }

    /// Adds one `Name: value` line. Repeating a header with the same value
    /// is harmless; with another value it is refused, because which one the
    /// endpoint saw cannot be known (and signature headers do not survive
    /// being comma-joined the way HTTP joins repeated headers).
    pub fn add_line(&mut self, line: &str) -> Result<(), HeaderError> {
        let (name, value) = line.split_once(':').ok_or(HeaderError::NoColon)?;
        let name = name.trim().to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(HeaderError::BadName);
        }
        let value = value.trim();
        match self.get(&name) {
            Some(existing) if existing == value => Ok(()),
            Some(_) => Err(HeaderError::Conflict(name)),
            None => {
                self.0.push((name, value.to_owned()));
                Ok(())
            }
        }
    }

    /// Adds the `Name: value` lines of a file. Blank lines are skipped, and
    /// so are a leading request line (`POST /hook HTTP/1.1`) and HTTP/2
    /// pseudo-headers (`:path: /hook`), so that a captured request head can
    /// be pasted as it is.
    pub fn add_file(&mut self, text: &str) -> Result<(), HeadersFileError> {
        let mut first = true;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let request_line = first && is_request_line(line);
            first = false;
            if request_line || line.starts_with(':') {
                continue;
            }
            self.add_line(line).map_err(|error| HeadersFileError { line: i + 1, error })?;
        }
        Ok(())
    }

    /// A header's value; `name` is lower-case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A header's value when present and not empty.
    fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }
}

/// `METHOD target HTTP/x`.
fn is_request_line(line: &str) -> bool {
    let parts: Vec<&str> = line.split_whitespace().collect();
    matches!(parts.as_slice(), [method, _, version]
        if version.starts_with("HTTP/") && method.bytes().all(|b| b.is_ascii_uppercase()))
}

/// What to check.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub secret: &'a VerifyKey,
    pub headers: &'a Headers,
    /// The raw body, exactly as received.
    pub body: &'a [u8],
    /// The scheme to check; `None` detects it from the headers.
    pub scheme: Option<Scheme>,
    /// The time to check against, epoch ms.
    pub now_ms: i64,
    pub tolerance_seconds: i64,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid(SignatureError),
    /// Neither `webhook-signature` nor `courier-signature` is present.
    NoSignatureHeader,
    /// Both are present and no scheme was chosen.
    Ambiguous,
}

/// A verdict and what explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub verdict: Verdict,
    /// The scheme checked (`None` when it could not be told).
    pub scheme: Option<Scheme>,
    /// `webhook-id` (Standard Webhooks).
    pub id: Option<String>,
    /// When the request was signed (epoch ms), if the header says.
    pub signed_at_ms: Option<i64>,
    pub now_ms: i64,
    pub tolerance_seconds: i64,
    /// Signature entries in the header this key can check: `v1,` entries
    /// for a secret, `v1a,` entries for a public key, or `signature=` parts.
    pub signatures: usize,
    /// Standard Webhooks entries of the other kind, which this key cannot
    /// check (`v1a,` for a secret, `v1,` for a public key).
    pub unchecked: usize,
    /// Whether the key checked with is an ed25519 public key (`whpk_`).
    pub public_key: bool,
    /// For a time failure: whether the signature matches at its own time.
    pub matches_ignoring_time: Option<bool>,
    /// For a mismatch: whether the body would match without its trailing
    /// line break (which a body file saved by an editor usually gains).
    pub matches_without_trailing_newline: bool,
    /// What the body says it is, when it is a JSON object.
    pub payload: Option<PayloadSummary>,
}

/// The identifying fields of a hookrelay payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadSummary {
    pub kind: Option<String>,
    pub message_id: Option<String>,
    pub status: Option<String>,
    pub seq: Option<i64>,
}

impl PayloadSummary {
    fn of(body: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let data = &value["data"];
        value.is_object().then(|| PayloadSummary {
            kind: text(&value["type"]),
            message_id: text(&data["id"]),
            status: text(&data["status"]),
            seq: data["seq"].as_i64(),
        })
    }
}

/// Checks a request and explains the verdict.
pub fn verify(check: &Check<'_>) -> Report {
    let headers = check.headers;
    let mut report = Report {
        verdict: Verdict::Valid,
        scheme: None,
        id: headers.non_empty("webhook-id").map(str::to_owned),
        signed_at_ms: None,
        now_ms: check.now_ms,
        tolerance_seconds: check.tolerance_seconds,
        signatures: 0,
        unchecked: 0,
        public_key: matches!(check.secret, VerifyKey::Ed25519Public(_)),
        matches_ignoring_time: None,
        matches_without_trailing_newline: false,
        payload: PayloadSummary::of(check.body),
    };
    let standard = headers.non_empty("webhook-signature").is_some();
    let courier = headers.non_empty(COURIER_HEADER).is_some();
    let scheme = match (check.scheme, standard, courier) {
        // The ed25519 scheme differs only in its entries, which the key decides.
        (Some(Scheme::StandardWebhooksEd25519), _, _) => Scheme::StandardWebhooks,
        (Some(scheme), _, _) => scheme,
        (None, true, false) => Scheme::StandardWebhooks,
        (None, false, true) => Scheme::Courier,
        (None, false, false) => {
            report.verdict = Verdict::NoSignatureHeader;
            return report;
        }
        (None, true, true) => {
            report.verdict = Verdict::Ambiguous;
            return report;
        }
    };
    report.scheme = Some(scheme);
    match scheme {
        Scheme::StandardWebhooks | Scheme::StandardWebhooksEd25519 => {
            report.signed_at_ms = headers
                .non_empty("webhook-timestamp")
                .and_then(|t| t.parse::<i64>().ok())
                .map(|s| s.saturating_mul(1000));
            let entries = headers.non_empty("webhook-signature").unwrap_or_default().split_whitespace();
            let prefix = check.secret.entry_prefix();
            let other = if prefix == "v1," { "v1a," } else { "v1," };
            for entry in entries {
                report.signatures += usize::from(entry.starts_with(prefix));
                report.unchecked += usize::from(entry.starts_with(other));
            }
        }
        Scheme::Courier => {
            let header = headers.non_empty(COURIER_HEADER).unwrap_or_default();
            let parts = || header.split(',').filter_map(|p| p.trim().split_once('='));
            report.signed_at_ms = parts().find(|(k, _)| *k == "t").and_then(|(_, v)| v.parse().ok());
            report.signatures = parts().filter(|(k, _)| *k == "signature").count();
        }
    }

    let run =
        |body: &[u8], now_ms: i64| check_scheme(scheme, check.secret, headers, body, now_ms, check.tolerance_seconds);
    let outcome = run(check.body, check.now_ms);
    match &outcome {
        Err(SignatureError::TooOld | SignatureError::InFuture) => {
            report.matches_ignoring_time = report.signed_at_ms.map(|at| run(check.body, at).is_ok());
        }
        Err(SignatureError::NoMatch) => {
            // One final `\n` or `\r\n`, as an editor adds on saving.
            let trimmed = check.body.strip_suffix(b"\n").map(|b| b.strip_suffix(b"\r").unwrap_or(b));
            report.matches_without_trailing_newline = trimmed.is_some_and(|b| run(b, check.now_ms).is_ok());
        }
        _ => {}
    }
    report.verdict = match outcome {
        Ok(()) => Verdict::Valid,
        Err(e) => Verdict::Invalid(e),
    };
    report
}

fn check_scheme(
    scheme: Scheme,
    secret: &VerifyKey,
    headers: &Headers,
    body: &[u8],
    now_ms: i64,
    tolerance_seconds: i64,
) -> Result<(), SignatureError> {
    let required = |name: &'static str| headers.non_empty(name).ok_or(SignatureError::Missing(name));
    match (scheme, secret) {
        (Scheme::StandardWebhooks | Scheme::StandardWebhooksEd25519, _) => {
            let [id, timestamp, signature] = STANDARD_HEADERS.map(required);
            signing::verify_standard(secret, id?, timestamp?, signature?, body, now_ms, tolerance_seconds)
        }
        (Scheme::Courier, VerifyKey::Hmac(secret)) => {
            signing::verify_courier(secret, required(COURIER_HEADER)?, body, now_ms, tolerance_seconds)
        }
        (Scheme::Courier, VerifyKey::Ed25519Public(_)) => {
            required(COURIER_HEADER)?;
            Err(SignatureError::WrongKey)
        }
    }
}

fn scheme_name(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::StandardWebhooks | Scheme::StandardWebhooksEd25519 => "Standard Webhooks",
        Scheme::Courier => "Courier",
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// How far `at` is from `now`, in words.
fn distance(at_ms: i64, now_ms: i64) -> String {
    let seconds = (now_ms.div_euclid(1000)) - at_ms.div_euclid(1000);
    match seconds {
        0 => "the same second as now".to_owned(),
        s if s > 0 => format!("{s} s before now"),
        s => format!("{} s after now", -s),
    }
}

impl fmt::Display for Report {
    /// The verdict on the first line (`valid: ...` / `invalid: ...`), then
    /// the details, one per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.verdict, self.scheme) {
            (Verdict::Valid, Some(scheme)) => writeln!(f, "valid: {} signature verified", scheme_name(scheme))?,
            (Verdict::Valid, None) => writeln!(f, "valid")?,
            (Verdict::Invalid(e), Some(scheme)) => writeln!(f, "invalid ({}): {e}", scheme_name(scheme))?,
            (Verdict::Invalid(e), None) => writeln!(f, "invalid: {e}")?,
            (Verdict::NoSignatureHeader, _) => writeln!(
                f,
                "invalid: no signature header (hookrelay sends webhook-signature, or courier-signature for \
                 subscriptions using the Courier scheme)"
            )?,
            (Verdict::Ambiguous, _) => writeln!(
                f,
                "cannot tell the scheme: both webhook-signature and courier-signature are present; choose one \
                 with --scheme"
            )?,
        }
        let Some(scheme) = self.scheme else { return Ok(()) };
        if let Some(id) = &self.id
            && scheme == Scheme::StandardWebhooks
        {
            writeln!(f, "  webhook-id:  {id}")?;
        }
        if let Some(at) = self.signed_at_ms {
            let shown = match scheme {
                Scheme::StandardWebhooks | Scheme::StandardWebhooksEd25519 => (at / 1000).to_string(),
                Scheme::Courier => at.to_string(),
            };
            writeln!(
                f,
                "  signed at:   {shown} = {}, {} (tolerance {} s)",
                rfc3339(at),
                distance(at, self.now_ms),
                self.tolerance_seconds
            )?;
        }
        let key = if self.public_key { "this public key" } else { "this secret" };
        let (mine, other) = if self.public_key { ("v1a", "v1") } else { ("v1", "v1a") };
        let entries = match scheme {
            Scheme::StandardWebhooks | Scheme::StandardWebhooksEd25519 => {
                plural(self.signatures, &format!("{mine} entry"), &format!("{mine} entries"))
            }
            Scheme::Courier => plural(self.signatures, "signature", "signatures"),
        };
        let matching = match self.verdict {
            Verdict::Valid => format!(", one of which matches {key}"),
            Verdict::Invalid(SignatureError::NoMatch) if self.signatures > 0 => {
                format!(", none of which matches {key}")
            }
            _ => String::new(),
        };
        writeln!(f, "  signatures:  {entries}{matching}")?;
        if self.unchecked > 0 {
            let which = plural(self.unchecked, &format!("{other} entry"), &format!("{other} entries"));
            let needs = if self.public_key {
                "a v1 entry is an HMAC signature: check it with the subscription's whsec_ secret"
            } else {
                "a v1a entry is an ed25519 signature: check it with the subscription's whpk_ public key \
                 (GET /subscriptions/{id}/secret)"
            };
            writeln!(f, "               also {which}, which {key} cannot check ({needs})")?;
        }
        if let Some(p) = &self.payload {
            let mut parts = Vec::new();
            if let Some(kind) = &p.kind {
                parts.push(format!("type {kind}"));
            }
            if let Some(id) = &p.message_id {
                parts.push(format!("message {id}"));
            }
            if let Some(status) = &p.status {
                parts.push(format!("status {status}"));
            }
            if let Some(seq) = p.seq {
                parts.push(format!("seq {seq}"));
            }
            let unverified = if self.verdict == Verdict::Valid { "" } else { " (unverified)" };
            if !parts.is_empty() {
                writeln!(f, "  payload:     {}{unverified}", parts.join(", "))?;
            }
        }
        match (&self.verdict, self.matches_ignoring_time, self.signed_at_ms) {
            (Verdict::Invalid(SignatureError::TooOld | SignatureError::InFuture), Some(true), Some(at)) => writeln!(
                f,
                "  note: the signature itself matches {key}; only the time is off. To check an old \
                 capture, add --now {}",
                at.div_euclid(1000)
            )?,
            (Verdict::Invalid(SignatureError::TooOld | SignatureError::InFuture), Some(false), _) => {
                writeln!(f, "  note: the signature does not match {key} at its own time either")?
            }
            _ => {}
        }
        if self.verdict == Verdict::Invalid(SignatureError::NoMatch) && self.signatures > 0 {
            if self.matches_without_trailing_newline {
                writeln!(
                    f,
                    "  hint: it matches without the line break at the end of the body: the body file gained it \
                     when saved (use `printf '%s'` or save without a final newline)"
                )?;
            } else {
                writeln!(
                    f,
                    "  hint: use the subscription's current secret (GET /subscriptions/{{id}}/secret) and the \
                     body exactly as received (raw bytes, not re-serialized JSON)"
                )?;
            }
        }
        if let Verdict::Invalid(SignatureError::Missing(_)) = self.verdict {
            let expected = match scheme {
                Scheme::StandardWebhooks | Scheme::StandardWebhooksEd25519 => {
                    "webhook-id, webhook-timestamp and webhook-signature"
                }
                Scheme::Courier => "courier-signature",
            };
            writeln!(f, "  hint: {} requests carry {expected}", scheme_name(scheme))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::signing::KeyKind;

    /// The Standard Webhooks published vector (webhooks.md §2, vector A).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> VerifyKey {
        VerifyKey::parse(SECRET).expect("valid secret")
    }

    fn other_secret() -> VerifyKey {
        VerifyKey::parse(signing::SigningKey::generate(KeyKind::Hmac).expect("entropy").expose()).expect("secret")
    }

    fn vector_headers() -> Headers {
        let mut h = Headers::new();
        h.add_file(&format!("webhook-id: {ID}\nwebhook-timestamp: {TS}\nwebhook-signature: {SIGNATURE}\n"))
            .expect("headers");
        h
    }

    fn check<'a>(secret: &'a VerifyKey, headers: &'a Headers, body: &'a [u8], now_s: i64) -> Check<'a> {
        Check { secret, headers, body, scheme: None, now_ms: now_s * 1000, tolerance_seconds: 300 }
    }

    #[test]
    fn the_published_vector_is_valid() {
        let (s, h) = (secret(), vector_headers());
        let report = verify(&check(&s, &h, BODY, TS));
        assert_eq!(report.verdict, Verdict::Valid);
        assert_eq!(report.scheme, Some(Scheme::StandardWebhooks));
        assert_eq!(report.id.as_deref(), Some(ID));
        assert_eq!(report.signed_at_ms, Some(TS * 1000));
        assert_eq!(report.signatures, 1);
        let text = report.to_string();
        assert!(text.starts_with("valid: Standard Webhooks signature verified\n"), "{text}");
        assert!(text.contains("2021-02-25T15:02:10.000Z, the same second as now"), "{text}");
        assert!(!text.contains(SECRET) && !text.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{text}");
    }

    #[test]
    fn a_captured_request_head_parses() {
        let capture = format!(
            "\r\nPOST /hooks/hookrelay?x=1 HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\n\
             Webhook-Id: {ID}\r\n\r\nWEBHOOK-TIMESTAMP:{TS}\r\n:authority: example.com\r\n\
             webhook-signature:   {SIGNATURE}  \r\nX-Odd: a: b\r\n"
        );
        let mut h = Headers::new();
        h.add_file(&capture).expect("a capture");
        assert_eq!(h.get("webhook-id"), Some(ID));
        assert_eq!(h.get("webhook-timestamp"), Some("1614265330"));
        assert_eq!(h.get("webhook-signature"), Some(SIGNATURE));
        assert_eq!(h.get("host"), Some("example.com"));
        assert_eq!(h.get("x-odd"), Some("a: b"), "only the first colon separates");
        let s = secret();
        assert_eq!(verify(&check(&s, &h, BODY, TS)).verdict, Verdict::Valid);
        // The same header again is fine; a different value is not.
        assert_eq!(h.add_line(&format!("Webhook-Id: {ID}")), Ok(()));
        assert_eq!(h.add_line("webhook-id: msg_other"), Err(HeaderError::Conflict("webhook-id".into())));
    }

    #[test]
    fn bad_header_lines_name_their_line() {
        let mut h = Headers::new();
        let err = h.add_file("POST /hook HTTP/1.1\nwebhook-id: x\njust words\n").expect_err("no colon");
        assert_eq!(err, HeadersFileError { line: 3, error: HeaderError::NoColon });
        assert_eq!(err.to_string(), "line 3: expected `Name: value`");
        // A request line is only skipped first.
        let err = Headers::new().add_file("a: b\nPOST /hook HTTP/1.1\n").expect_err("late request line");
        assert_eq!(err.line, 2);
        let err = Headers::new().add_file("bad name: v\n").expect_err("space in a name");
        assert_eq!(err.error, HeaderError::BadName);
        assert_eq!(Headers::new().add_line(": v"), Err(HeaderError::BadName));
        assert!(is_request_line("POST https://example.com:8443/hook HTTP/2"));
        assert!(!is_request_line("webhook-id: a b HTTP/1.1"));
    }

    #[test]
    fn missing_headers_are_named() {
        let s = secret();
        for missing in STANDARD_HEADERS {
            let mut h = Headers::new();
            for (name, value) in STANDARD_HEADERS.iter().zip([ID, "1614265330", SIGNATURE]) {
                if *name != missing {
                    h.add_line(&format!("{name}: {value}")).expect("line");
                }
            }
            let mut c = check(&s, &h, BODY, TS);
            c.scheme = Some(Scheme::StandardWebhooks);
            let report = verify(&c);
            assert_eq!(report.verdict, Verdict::Invalid(SignatureError::Missing(missing)), "{missing}");
            assert!(report.to_string().contains(&format!("missing {missing}")), "{report}");
        }
        // Without a signature header the scheme cannot be detected.
        let mut h = Headers::new();
        h.add_line(&format!("webhook-id: {ID}")).expect("line");
        let report = verify(&check(&s, &h, BODY, TS));
        assert_eq!(report.verdict, Verdict::NoSignatureHeader);
        assert!(report.to_string().starts_with("invalid: no signature header"), "{report}");
        // An empty value counts as missing.
        let mut h = vector_headers();
        h.0.retain(|(n, _)| n != "webhook-id");
        h.add_line("webhook-id:").expect("line");
        assert_eq!(verify(&check(&s, &h, BODY, TS)).verdict, Verdict::Invalid(SignatureError::Missing("webhook-id")));
    }

    #[test]
    fn a_wrong_secret_matches_nothing() {
        let other = other_secret();
        let h = vector_headers();
        let report = verify(&check(&other, &h, BODY, TS));
        assert_eq!(report.verdict, Verdict::Invalid(SignatureError::NoMatch));
        assert!(!report.matches_without_trailing_newline);
        let text = report.to_string();
        assert!(text.starts_with("invalid (Standard Webhooks): no signature matches\n"), "{text}");
        assert!(text.contains("1 v1 entry, none of which matches this secret"), "{text}");
        assert!(text.contains("GET /subscriptions/{id}/secret"), "{text}");
        let VerifyKey::Hmac(other) = other else { unreachable!("a secret") };
        assert!(!text.contains(other.expose()), "{text}");
    }

    #[test]
    fn a_body_that_gained_a_newline_is_explained() {
        let (s, h) = (secret(), vector_headers());
        for ending in [&b"\n"[..], b"\r\n"] {
            let body = [BODY, ending].concat();
            let report = verify(&check(&s, &h, &body, TS));
            assert_eq!(report.verdict, Verdict::Invalid(SignatureError::NoMatch), "still invalid: bytes are bytes");
            assert!(report.matches_without_trailing_newline);
            assert!(report.to_string().contains("without the line break"), "{report}");
        }
        let two = [BODY, b"\n\n"].concat();
        assert!(!verify(&check(&s, &h, &two, TS)).matches_without_trailing_newline, "only one line break is excused");
        // A changed body is not excused.
        let report = verify(&check(&s, &h, br#"{"test": 2432232315}"#, TS));
        assert!(!report.matches_without_trailing_newline);
    }

    #[test]
    fn stale_and_future_timestamps() {
        let (s, h) = (secret(), vector_headers());
        let report = verify(&check(&s, &h, BODY, TS + 301));
        assert_eq!(report.verdict, Verdict::Invalid(SignatureError::TooOld));
        assert_eq!(report.matches_ignoring_time, Some(true));
        let text = report.to_string();
        assert!(text.contains("the timestamp is too old"), "{text}");
        assert!(text.contains("301 s before now (tolerance 300 s)"), "{text}");
        assert!(text.contains("add --now 1614265330"), "{text}");
        assert_eq!(verify(&check(&s, &h, BODY, TS + 300)).verdict, Verdict::Valid, "the edge is inside");
        let report = verify(&check(&s, &h, BODY, TS - 301));
        assert_eq!(report.verdict, Verdict::Invalid(SignatureError::InFuture));
        assert!(report.to_string().contains("301 s after now"), "{report}");
        // Stale and forged: the note says so.
        let other = other_secret();
        let report = verify(&check(&other, &h, BODY, TS + 3_600));
        assert_eq!(report.matches_ignoring_time, Some(false));
        assert!(report.to_string().contains("does not match this secret at its own time either"), "{report}");
        // A wider tolerance accepts it.
        let mut c = check(&s, &h, BODY, TS + 3_600);
        c.tolerance_seconds = 3_600;
        assert_eq!(verify(&c).verdict, Verdict::Valid);
    }

    #[test]
    fn rotation_headers_verify_with_either_secret() {
        let new = signing::SigningKey::generate(KeyKind::Hmac).expect("entropy");
        let old = signing::SigningKey::parse(SECRET).expect("secret");
        let header = signing::standard_signature_header(&[&new, &old], ID, TS, BODY);
        let mut h = Headers::new();
        h.add_file(&format!("webhook-id: {ID}\nwebhook-timestamp: {TS}\nwebhook-signature: {header}\n"))
            .expect("headers");
        let (new, old) = (VerifyKey::parse(new.expose()).expect("key"), secret());
        for s in [&new, &old] {
            let report = verify(&check(s, &h, BODY, TS));
            assert_eq!(report.verdict, Verdict::Valid);
            assert_eq!(report.signatures, 2);
        }
    }

    #[test]
    fn courier_requests() {
        let s = secret();
        let key = signing::SigningKey::parse(SECRET).expect("secret");
        let t_ms = TS * 1000 + 250;
        let mut h = Headers::new();
        h.add_line(&format!("Courier-Signature: {}", signing::courier_signature(&[&key], t_ms, BODY))).expect("line");
        let report = verify(&check(&s, &h, BODY, TS));
        assert_eq!(report.verdict, Verdict::Valid);
        assert_eq!(report.scheme, Some(Scheme::Courier));
        assert_eq!((report.signed_at_ms, report.signatures), (Some(t_ms), 1));
        assert!(report.to_string().starts_with("valid: Courier signature verified"), "{report}");
        assert_eq!(verify(&check(&s, &h, b"{}", TS)).verdict, Verdict::Invalid(SignatureError::NoMatch));
        assert_eq!(verify(&check(&s, &h, BODY, TS + 400)).verdict, Verdict::Invalid(SignatureError::TooOld));
        // Forcing the other scheme names what is missing.
        let mut c = check(&s, &h, BODY, TS);
        c.scheme = Some(Scheme::StandardWebhooks);
        assert_eq!(verify(&c).verdict, Verdict::Invalid(SignatureError::Missing("webhook-id")));
        // Both kinds of header: the scheme must be chosen.
        let mut both = vector_headers();
        both.add_line(&format!("courier-signature: {}", signing::courier_signature(&[&key], t_ms, BODY)))
            .expect("line");
        assert_eq!(verify(&check(&s, &both, BODY, TS)).verdict, Verdict::Ambiguous);
        let mut c = check(&s, &both, BODY, TS);
        c.scheme = Some(Scheme::Courier);
        assert_eq!(verify(&c).verdict, Verdict::Valid);
    }

    #[test]
    fn payloads_are_summarized() {
        let body = br#"{"type":"message:updated","timestamp":"2025-01-01T00:00:00.000Z","data":{"id":"order-42","status":"DELIVERED","seq":3}}"#;
        let summary = PayloadSummary::of(body).expect("json object");
        assert_eq!(summary.kind.as_deref(), Some("message:updated"));
        assert_eq!(summary.message_id.as_deref(), Some("order-42"));
        assert_eq!(summary.status.as_deref(), Some("DELIVERED"));
        assert_eq!(summary.seq, Some(3));
        assert_eq!(PayloadSummary::of(b"not json"), None);
        assert_eq!(PayloadSummary::of(b"[1]"), None);
        let s = secret();
        let mut h = Headers::new();
        let VerifyKey::Hmac(secret) = &s else { unreachable!("a secret") };
        let signature = signing::standard_signature(secret, ID, TS, body);
        h.add_file(&format!("webhook-id: {ID}\nwebhook-timestamp: {TS}\nwebhook-signature: {signature}\n"))
            .expect("headers");
        let line = "  payload:     type message:updated, message order-42, status DELIVERED, seq 3\n";
        assert!(verify(&check(&s, &h, body, TS)).to_string().contains(line));
        let unverified =
            "  payload:     type message:updated, message order-42, status DELIVERED, seq 3 (unverified)\n";
        assert!(verify(&check(&s, &h, body, TS + 301)).to_string().contains(unverified));
    }

    #[test]
    fn public_keys_check_v1a_entries_and_name_the_rest() {
        // The Standard Webhooks libraries' published ed25519 vector.
        let signing_key = signing::SigningKey::parse("whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=").expect("key");
        let v1a = "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";
        let public = VerifyKey::parse(&signing_key.verification_key()).expect("whpk_");
        let mut h = Headers::new();
        h.add_file(&format!("webhook-id: {ID}\nwebhook-timestamp: {TS}\nwebhook-signature: {v1a}\n")).expect("headers");
        let report = verify(&check(&public, &h, BODY, TS));
        assert_eq!(report.verdict, Verdict::Valid);
        assert_eq!((report.signatures, report.unchecked), (1, 0));
        let text = report.to_string();
        assert!(text.contains("1 v1a entry, one of which matches this public key"), "{text}");

        // A secret cannot check a v1a entry, and says so instead of "0 v1 entries".
        let report = verify(&check(&secret(), &h, BODY, TS));
        assert_eq!(report.verdict, Verdict::Invalid(SignatureError::NoMatch));
        let text = report.to_string();
        assert!(text.contains("0 v1 entries\n"), "{text}");
        assert!(text.contains("also 1 v1a entry, which this secret cannot check"), "{text}");
        assert!(text.contains("whpk_ public key"), "{text}");

        // Both kinds during a rotation: each key checks its own.
        let both = format!("{SIGNATURE} {v1a}");
        let mut h = Headers::new();
        h.add_file(&format!("webhook-id: {ID}\nwebhook-timestamp: {TS}\nwebhook-signature: {both}\n"))
            .expect("headers");
        for key in [&public, &secret()] {
            let report = verify(&check(key, &h, BODY, TS));
            assert_eq!(report.verdict, Verdict::Valid);
            assert_eq!((report.signatures, report.unchecked), (1, 1));
        }
        // A public key has nothing to check in a Courier header.
        let mut h = Headers::new();
        h.add_line("courier-signature: t=1,signature=00").expect("line");
        assert_eq!(verify(&check(&public, &h, BODY, TS)).verdict, Verdict::Invalid(SignatureError::WrongKey));
    }
}
