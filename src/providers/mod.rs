//! Provider callbacks: one module per provider, each with a pure `verify`
//! (authenticity, checked on the raw bytes, compared in constant time) and a
//! pure `parse` (verified raw body to normalized events). Nothing here does
//! I/O or reads the clock: time comes in as `now`, and the one network need
//! (Amazon SNS signing certificates) is served by the caller through
//! [`Source::certificate_url`] and a [`CertificateStore`].
//!
//! A *source* is one configured provider account (`[[sources]]` in the
//! configuration), reached at `POST /callbacks/{name}`. Several accounts of
//! one provider may coexist.

pub mod common;

pub mod brevo;
pub mod mailgun;
pub mod mailjet;
pub mod postmark;
pub mod resend;
pub mod sendgrid;
pub mod ses;
pub mod sparkpost;
pub mod twilio;
pub mod vonage;

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode};

use crate::config::{ConfigError, FieldError, SourceConfig};
use crate::domain::{NormalizedEvent, ProviderName, Target};

/// What verifiers and parsers see of a callback request.
#[derive(Debug, Clone, Copy)]
pub struct CallbackRequest<'a> {
    pub method: &'a Method,
    /// The URL the provider called, rebuilt from `server.public_url` (never
    /// from the Host header, which a proxy may rewrite), with the query.
    pub url: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// When the request arrived (epoch ms): the event time for payloads
    /// that carry none.
    pub received_at: i64,
}

/// Why a callback is not believed to come from the provider. The edge
/// answers 401 without saying which; the kind is logged (never secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("signature does not match")]
    BadSignature,
    #[error("credentials do not match")]
    BadCredentials,
    #[error("timestamp outside the allowed window")]
    Stale,
    #[error("signing certificate not allowed: {0}")]
    Certificate(&'static str),
    #[error("SNS topic not allowed for this source")]
    TopicNotAllowed,
}

/// A single-use token a callback was signed with, and when its signature
/// stops being accepted (epoch ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleUse {
    pub token: String,
    pub expires_at: i64,
}

/// What verification vouches for besides authenticity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// The signature covers a single-use token rather than the body
    /// (Mailgun): the token may not come again with another body.
    pub single_use: Option<SingleUse>,
}

/// A verified body that cannot be understood. The message names what is
/// wrong without quoting the body. Its text is the 400 answer's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body, or an element of it, is not shaped as the provider sends
    /// it (not JSON, not an object, not an array of events, ...).
    #[error("{0}")]
    Shape(&'static str),
    /// The body is JSON the decoder could not read, with its reason.
    #[error("invalid JSON body: {0}")]
    Json(String),
    /// A part of the request (a form, a JSON body) could not be decoded.
    #[error("unreadable {0}")]
    Unreadable(&'static str),
    /// A field the provider always sends is absent or not of its type.
    #[error("missing {0}")]
    Missing(Cow<'static, str>),
    /// The provider asks for something hookrelay refuses (an SNS
    /// `SubscribeURL` outside Amazon's hosts), with the reason.
    #[error("SubscribeURL refused: {0}")]
    Refused(&'static str),
    /// Element `index` of a batch could not be read.
    #[error("element {index}: {reason}")]
    Element { index: usize, reason: Box<ParseError> },
    /// No element of a batch could be read; the first one's reason.
    #[error("none of the {skipped} events can be read; {first}")]
    NoElement { skipped: usize, first: Box<ParseError> },
}

/// One normalized event and the message it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    pub target: Target,
    pub event: NormalizedEvent,
}

/// Something a callback asks of hookrelay besides recording events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Amazon SNS asks to confirm a subscription; done only for allowed topics.
    ConfirmSubscription { topic_arn: String, subscribe_url: String },
    /// Nothing to record (pings, test notices, unsubscribe confirmations).
    Ignore { why: &'static str },
}

/// The result of parsing one request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    pub callbacks: Vec<Callback>,
    pub action: Option<Action>,
    /// Elements of a batch that could not be read and were left out, with
    /// the first one's reason. A batch is refused only when none of it can
    /// be read: refusing it whole would make the provider retry (and then
    /// drop) the good events with the bad one.
    pub skipped: usize,
    pub skip_reason: Option<ParseError>,
}

impl Parsed {
    pub fn events(callbacks: Vec<Callback>) -> Self {
        Parsed { callbacks, ..Parsed::default() }
    }

    pub fn ignore(why: &'static str) -> Self {
        Parsed { action: Some(Action::Ignore { why }), ..Parsed::default() }
    }
}

/// Collects the events of a batch body element by element, leaving out the
/// elements that cannot be read.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    parsed: Parsed,
}

impl Batch {
    pub fn with_capacity(n: usize) -> Self {
        Batch { parsed: Parsed { callbacks: Vec::with_capacity(n), ..Parsed::default() } }
    }

    pub fn push(&mut self, callback: Callback) {
        self.parsed.callbacks.push(callback);
    }

    /// Leaves out element `index` of the batch.
    pub fn skip(&mut self, index: usize, error: ParseError) {
        self.parsed.skipped += 1;
        if self.parsed.skip_reason.is_none() {
            self.parsed.skip_reason = Some(ParseError::Element { index, reason: Box::new(error) });
        }
    }

    pub fn add(&mut self, index: usize, result: Result<Callback, ParseError>) {
        match result {
            Ok(callback) => self.push(callback),
            Err(e) => self.skip(index, e),
        }
    }

    /// Parses every element of a batch body with `parse`, leaving out the
    /// elements that cannot be read; `empty` as in [`Batch::finish`].
    pub fn parse_each<T>(
        items: &[T],
        empty: &'static str,
        mut parse: impl FnMut(&T) -> Result<Callback, ParseError>,
    ) -> Result<Parsed, ParseError> {
        let mut batch = Batch::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            batch.add(i, parse(item));
        }
        batch.finish(empty)
    }

    /// The batch's events; an error when every element was unreadable, and
    /// `empty` as the reason to ignore a batch that held no events at all.
    pub fn finish(self, empty: &'static str) -> Result<Parsed, ParseError> {
        let mut parsed = self.parsed;
        if !parsed.callbacks.is_empty() {
            return Ok(parsed);
        }
        match parsed.skip_reason.take() {
            Some(reason) if parsed.skipped == 1 => Err(reason),
            Some(reason) => Err(ParseError::NoElement { skipped: parsed.skipped, first: Box::new(reason) }),
            None => Ok(Parsed::ignore(empty)),
        }
    }
}

/// Per-source parsing context.
#[derive(Debug, Clone)]
pub struct ParseContext {
    /// The provider name messages are correlated under (`sendgrid`, `ses`, ...).
    pub provider: ProviderName,
    /// The metadata key carrying hookrelay's message id (`hookrelay_id`).
    pub id_field: String,
    /// Whether opens and clicks the provider flags as machine-made (Apple
    /// Mail Privacy Protection, link scanners) may move the status.
    pub machine_events_change_status: bool,
}

/// Signing certificates fetched by the caller, by URL.
pub trait CertificateStore {
    fn get(&self, url: &str) -> Option<Arc<[u8]>>;
}

/// A store holding nothing (every provider but SES, and tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCertificates;

impl CertificateStore for NoCertificates {
    fn get(&self, _: &str) -> Option<Arc<[u8]>> {
        None
    }
}

/// Declares the providers once: the enum, [`ProviderKind::ALL`] and each
/// one's name and module come from this one list, so none can be left out
/// of `ALL` (and taken for an unknown provider) while the enum has it.
macro_rules! providers {
    ($($kind:ident => $module:ident, $name:literal;)*) => {
        /// The providers hookrelay understands.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ProviderKind {
            $($kind),*
        }

        impl ProviderKind {
            pub const ALL: &'static [ProviderKind] = &[$(ProviderKind::$kind),*];

            /// The name used in configuration and on messages.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ProviderKind::$kind => $name),*
                }
            }

            /// The configuration fields this provider uses (besides `name`,
            /// `provider`, `id_field`); any other field set on its source is refused.
            fn accepts(self) -> &'static [&'static str] {
                match self {
                    $(ProviderKind::$kind => $module::ACCEPTS),*
                }
            }

            /// Parses a verified request.
            fn parse(self, req: &CallbackRequest<'_>, ctx: &ParseContext) -> Result<Parsed, ParseError> {
                match self {
                    $(ProviderKind::$kind => $module::parse(req, ctx)),*
                }
            }
        }
    };
}

providers! {
    SendGrid => sendgrid, "sendgrid";
    Postmark => postmark, "postmark";
    Mailgun => mailgun, "mailgun";
    Ses => ses, "ses";
    Twilio => twilio, "twilio";
    Resend => resend, "resend";
    Mailjet => mailjet, "mailjet";
    Brevo => brevo, "brevo";
    SparkPost => sparkpost, "sparkpost";
    Vonage => vonage, "vonage";
}

impl ProviderKind {
    pub fn parse_name(s: &str) -> Option<Self> {
        ProviderKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

/// Each provider's credentials, checked and decoded at start-up.
#[derive(Debug)]
enum Credentials {
    SendGrid(sendgrid::Credentials),
    Mailgun(mailgun::Credentials),
    Ses(ses::Credentials),
    Twilio(twilio::Credentials),
    Resend(resend::Credentials),
    Vonage(vonage::Credentials),
    /// Postmark, Mailjet, Brevo and SparkPost sign nothing.
    Unsigned(common::Unsigned),
}

/// One configured provider account.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub kind: ProviderKind,
    pub context: ParseContext,
    credentials: Credentials,
    /// Whether callbacks must carry HTTP basic credentials: a refusal then
    /// carries a `Basic` challenge, which some providers wait for before
    /// they send the credentials (Twilio).
    pub basic_auth: bool,
}

impl Source {
    /// Builds a source from its configuration; the error names the field.
    pub fn from_config(cfg: &SourceConfig) -> Result<Source, FieldError> {
        let kind = ProviderKind::parse_name(&cfg.provider).ok_or_else(|| {
            let all: Vec<_> = ProviderKind::ALL.iter().map(|k| k.as_str()).collect();
            FieldError::new(
                "provider",
                format!("unknown provider `{}`; expected one of {}", cfg.provider, all.join(", ")),
            )
        })?;
        if let Some(field) = cfg.set_fields().into_iter().find(|f| !kind.accepts().contains(f)) {
            return Err(FieldError::new(field, format!("not used by {} sources", kind.as_str())));
        }
        if cfg.id_field.is_empty() || cfg.id_field.len() > 64 {
            return Err(FieldError::new("id_field", "must be 1 to 64 characters"));
        }
        let credentials = match kind {
            ProviderKind::SendGrid => Credentials::SendGrid(sendgrid::Credentials::from_config(cfg)?),
            ProviderKind::Mailgun => Credentials::Mailgun(mailgun::Credentials::from_config(cfg)?),
            ProviderKind::Ses => Credentials::Ses(ses::Credentials::from_config(cfg)?),
            ProviderKind::Twilio => Credentials::Twilio(twilio::Credentials::from_config(cfg)?),
            ProviderKind::Resend => Credentials::Resend(resend::Credentials::from_config(cfg)?),
            ProviderKind::Vonage => Credentials::Vonage(vonage::Credentials::from_config(cfg)?),
            ProviderKind::Postmark => Credentials::Unsigned(postmark::credentials(cfg)?),
            ProviderKind::Mailjet => Credentials::Unsigned(mailjet::credentials(cfg)?),
            ProviderKind::Brevo => Credentials::Unsigned(brevo::credentials(cfg)?),
            ProviderKind::SparkPost => Credentials::Unsigned(sparkpost::credentials(cfg)?),
        };
        let provider = ProviderName::from_trusted(kind.as_str().to_owned());
        Ok(Source {
            name: cfg.name.clone(),
            kind,
            context: ParseContext { provider, id_field: cfg.id_field.clone(), machine_events_change_status: false },
            credentials,
            basic_auth: cfg.username.is_some(),
        })
    }

    /// The signing certificate this request needs fetched, if any (SES when
    /// no certificate is pinned). The URL is checked before it is returned:
    /// only https, Amazon SNS hosts, `.pem` paths.
    pub fn certificate_url(&self, req: &CallbackRequest<'_>) -> Result<Option<String>, VerifyError> {
        match &self.credentials {
            Credentials::Ses(c) => ses::certificate_url(req, c),
            _ => Ok(None),
        }
    }

    /// Checks that the request comes from the provider.
    pub fn verify(
        &self,
        req: &CallbackRequest<'_>,
        now: i64,
        certificates: &dyn CertificateStore,
    ) -> Result<Verified, VerifyError> {
        let authentic = match &self.credentials {
            Credentials::Mailgun(c) => {
                return mailgun::verify_token(req, c, now).map(|token| Verified { single_use: Some(token) });
            }
            Credentials::SendGrid(c) => sendgrid::verify(req, c, now),
            Credentials::Ses(c) => ses::verify(req, c, now, certificates),
            Credentials::Twilio(c) => twilio::verify(req, c, now),
            Credentials::Resend(c) => resend::verify(req, c, now),
            Credentials::Vonage(c) => vonage::verify(req, c, now),
            Credentials::Unsigned(c) => c.verify(req),
        };
        authentic.map(|()| Verified::default())
    }

    /// Parses a verified request.
    pub fn parse(&self, req: &CallbackRequest<'_>) -> Result<Parsed, ParseError> {
        self.kind.parse(req, &self.context)
    }

    /// The status for a body that verified but cannot be parsed. Mailgun
    /// reads 406 as "rejected, do not retry"; others get 400.
    pub fn parse_error_status(&self) -> StatusCode {
        match self.kind {
            ProviderKind::Mailgun => StatusCode::NOT_ACCEPTABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the provider may deliver callbacks with GET (Vonage SMS
    /// delivery receipts default to GET with a query string).
    pub fn accepts_get(&self) -> bool {
        self.kind == ProviderKind::Vonage
    }

    /// Topic ARNs whose SNS subscriptions may be confirmed.
    pub fn allows_topic(&self, topic_arn: &str) -> bool {
        match &self.credentials {
            Credentials::Ses(c) => c.allows_topic(topic_arn),
            _ => false,
        }
    }
}

/// Builds every configured source (checking its credentials); errors name
/// the source and field, e.g. `sources[1].public_keys`.
pub fn sources(configs: &[SourceConfig]) -> Result<Vec<Source>, ConfigError> {
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(configs.len());
    for (i, source) in configs.iter().enumerate() {
        let part = format!("sources[{i}]");
        let valid_name = !source.name.is_empty()
            && source.name.len() <= 64
            && source.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(FieldError::new("name", "1 to 64 characters of a-z, 0-9, - and _").at(&part));
        }
        if !names.insert(source.name.as_str()) {
            return Err(FieldError::new("name", format!("`{}` is used by another source", source.name)).at(&part));
        }
        out.push(Source::from_config(source).map_err(|e| e.at(&part))?);
    }
    Ok(out)
}
