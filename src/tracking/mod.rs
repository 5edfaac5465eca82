//! Open and click tracking: signed tokens, the machine-hit rules, the HTML
//! rewriter, and [`Tracking`], which turns configuration into tracked URLs
//! and verified hits into ingest commands. Pure: time comes in as `now`;
//! the HTTP edge (`http::tracking`) does the I/O.
//!
//! - [`token`]: the token format, signing and constant-time verification
//!   under a rotating set of keys.
//! - [`target`]: which URLs a click may redirect to (checked when signing
//!   and again before redirecting).
//! - [`machine`]: proxy, prefetch, scanner and bot classification.
//! - [`rewrite`]: links and pixel in an HTML email, with `lol_html`.

pub mod machine;
pub mod recent;
pub mod rewrite;
pub mod target;
pub mod token;

use serde_json::Value;

use crate::config::{ConfigError, FieldError, TrackingConfig, TrackingKey};
use crate::domain::event::hashed_dedupe_key;
use crate::domain::{MessageId, NormalizedEvent, Status, Target};
use crate::plan::Command;
use machine::AgentClass;
use target::TargetError;
use token::{Claims, Keyring, TokenError, TokenKind};

/// A transparent 1x1 GIF (43 bytes), the smallest image every mail client
/// renders.
pub const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Path prefixes of the public endpoints.
pub const OPEN_PATH: &str = "/t/o/";
pub const CLICK_PATH: &str = "/t/c/";

/// Tracking as configured: the keys, where tracked URLs point, and the
/// rules for machine hits and repeats.
#[derive(Debug, Clone)]
pub struct Tracking {
    /// `None` when no key is configured: nothing can be signed or verified.
    keys: Option<Keyring>,
    /// The public base URL, without a trailing slash.
    public_url: String,
    machine_events_change_status: bool,
    scanner_window_ms: i64,
    dedupe_window_ms: i64,
    /// Hits queued lately, so repeats are not queued again.
    pub recent: std::sync::Arc<recent::RecentHits>,
}

/// Why a URL could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("open and click tracking is not configured: set [tracking] keys")]
    NotConfigured,
    #[error("the URL {0}")]
    Target(#[from] TargetError),
}

/// A verified hit, ready to be queued.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub kind: TokenKind,
    pub class: AgentClass,
    pub message_id: MessageId,
    /// Where a click redirects (exactly as signed).
    pub url: Option<String>,
    pub command: Command,
}

/// What the edge knows about a request, besides the token.
#[derive(Debug, Clone, Copy)]
pub struct HitRequest<'a> {
    pub head: bool,
    pub user_agent: Option<&'a str>,
    /// When the request arrived, epoch ms.
    pub now: i64,
}

/// Checks configured tracking keys, naming the one at fault
/// (`tracking.keys[1].secret`): ids are valid and distinct, secrets long
/// enough to sign with.
pub fn check_keys(keys: &[TrackingKey]) -> Result<(), ConfigError> {
    for (i, key) in keys.iter().enumerate() {
        let part = format!("tracking.keys[{i}]");
        if !token::valid_key_id(&key.id) {
            return Err(FieldError::new("id", token::KeyError::BadId.to_string()).at(&part));
        }
        if keys[..i].iter().any(|k| k.id == key.id) {
            return Err(FieldError::new("id", format!("`{}` is used by another key", key.id)).at(&part));
        }
        if key.secret.expose().len() < token::MIN_SECRET_LEN {
            let message =
                format!("must be at least {} characters (e.g. `openssl rand -base64 32`)", token::MIN_SECRET_LEN);
            return Err(FieldError::new("secret", message).at(&part));
        }
    }
    Ok(())
}

impl Tracking {
    /// Builds tracking from its configuration (validated at load, so a bad
    /// key is an error here only when the config was built by hand).
    pub fn from_config(config: &TrackingConfig, public_url: String) -> Result<Tracking, token::KeyError> {
        let keys = if config.keys.is_empty() {
            None
        } else {
            Some(Keyring::new(config.keys.iter().map(|k| (k.id.as_str(), k.secret.expose().as_bytes())))?)
        };
        Ok(Tracking {
            keys,
            public_url: public_url.trim_end_matches('/').to_owned(),
            machine_events_change_status: config.machine_events_change_status,
            scanner_window_ms: i64::try_from(config.scanner_window_seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
            dedupe_window_ms: i64::try_from(config.dedupe_window_seconds.max(1).saturating_mul(1000))
                .unwrap_or(i64::MAX),
            recent: std::sync::Arc::new(recent::RecentHits::new(
                i64::try_from(config.dedupe_window_seconds.max(1).saturating_mul(1000)).unwrap_or(i64::MAX),
            )),
        })
    }

    /// Tracking with no keys: the pixel answers, nothing is recorded or signed.
    pub fn disabled() -> Tracking {
        Tracking {
            keys: None,
            public_url: String::new(),
            machine_events_change_status: false,
            scanner_window_ms: 0,
            dedupe_window_ms: 60_000,
            recent: std::sync::Arc::new(recent::RecentHits::new(60_000)),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.keys.is_some()
    }

    /// The id of the key signing new tokens.
    pub fn signing_key_id(&self) -> Option<&str> {
        self.keys.as_ref().map(Keyring::signing_key_id)
    }

    fn keys(&self) -> Result<&Keyring, SignError> {
        self.keys.as_ref().ok_or(SignError::NotConfigured)
    }

    /// The open pixel's URL for a message.
    pub fn open_url(&self, message_id: &MessageId, now: i64) -> Result<String, SignError> {
        let token = self.keys()?.sign(&Claims::open(message_id.clone(), issue_time(now)));
        Ok(format!("{}{OPEN_PATH}{token}", self.public_url))
    }

    /// The tracked form of `url` for a message, and the target as signed
    /// (normalized).
    pub fn click_url(&self, message_id: &MessageId, url: &str, now: i64) -> Result<(String, String), SignError> {
        let keys = self.keys()?;
        let claims = Claims::click(message_id.clone(), url, issue_time(now))?;
        let token = keys.sign(&claims);
        Ok((format!("{}{CLICK_PATH}{token}", self.public_url), claims.url.unwrap_or_default()))
    }

    /// Verifies a token and builds the event its hit records.
    pub fn hit(&self, kind: TokenKind, token: &str, req: &HitRequest<'_>) -> Result<Hit, TokenError> {
        let keys = self.keys.as_ref().ok_or(TokenError::UnknownKey)?;
        let claims = keys.verify(token, kind)?;
        let since_issue_ms = req.now.saturating_sub(i64::from(claims.issued_at) * 1000);
        let class = machine::classify(
            &machine::Request { kind, head: req.head, user_agent: req.user_agent, since_issue_ms },
            self.scanner_window_ms,
        );
        let event = self.event(&claims, class, req.now);
        let command = Command::Event {
            target: Target { id: Some(claims.message_id.clone()), provider: None },
            event: Box::new(event),
            create: true,
            want_message: false,
            guard: None,
        };
        Ok(Hit { kind, class, message_id: claims.message_id, url: claims.url, command })
    }

    /// The OPENED or CLICKED event for a verified hit.
    ///
    /// Dedupe: repeated opens and clicks are real (a person reads a mail
    /// twice), but a burst of identical hits (client retries, a proxy and
    /// its prefetch, a scanner re-checking) must not flood the history. The
    /// key is the message, the kind, the URL, the agent class and the
    /// `dedupe_window` the hit falls in: one event per combination per
    /// window, so what anyone holding a link can add is bounded.
    fn event(&self, claims: &Claims, class: AgentClass, now: i64) -> NormalizedEvent {
        let status = match claims.kind {
            TokenKind::Open => Status::Opened,
            TokenKind::Click => Status::Clicked,
        };
        let bucket = now.div_euclid(self.dedupe_window_ms);
        let key = hashed_dedupe_key(
            "track",
            &[
                claims.message_id.as_str().as_bytes(),
                claims.kind.as_str().as_bytes(),
                claims.url.as_deref().unwrap_or("").as_bytes(),
                class.as_str().as_bytes(),
                &bucket.to_be_bytes(),
            ],
        );
        let mut event = NormalizedEvent::status(status, now, key);
        if let Some(url) = &claims.url {
            event.detail.insert("url".into(), Value::from(url.as_str()));
        }
        event.detail.insert("user_agent_class".into(), Value::from(class.as_str()));
        if class.is_machine() {
            // The providers' convention (`common::machine`).
            event.detail.insert("machine".into(), Value::Bool(true));
            event.affects_status = self.machine_events_change_status;
        }
        event
    }
}

/// Unix seconds for a token (saturating: u32 lasts until 2106).
fn issue_time(now_ms: i64) -> u32 {
    u32::try_from(now_ms.div_euclid(1000).max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrackingKey;
    use crate::domain::Secret;

    const NOW: i64 = 1_700_000_000_000;
    const CHROME: &str =
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36";

    fn tracking(change: bool) -> Tracking {
        let config = TrackingConfig {
            keys: vec![TrackingKey { id: "k1".into(), secret: Secret::new("0123456789abcdef0123456789abcdef") }],
            machine_events_change_status: change,
            ..TrackingConfig::default()
        };
        Tracking::from_config(&config, "https://relay.example/".into()).expect("valid")
    }

    fn token_of(url: &str) -> &str {
        url.rsplit('/').next().unwrap_or("")
    }

    fn event_of(hit: &Hit) -> &NormalizedEvent {
        match &hit.command {
            Command::Event { event, create: true, target, .. } if target.id.as_ref() == Some(&hit.message_id) => event,
            other => panic!("unexpected command {other:?}"),
        }
    }

    #[test]
    fn urls_and_hits() {
        let t = tracking(false);
        let id = MessageId::parse("m-1").expect("id");
        let open = t.open_url(&id, NOW).expect("open url");
        assert!(open.starts_with("https://relay.example/t/o/"), "{open}");
        let (click, target) = t.click_url(&id, "HTTPS://Shop.example/p?a=1", NOW).expect("click url");
        assert!(click.starts_with("https://relay.example/t/c/"), "{click}");
        assert_eq!(target, "https://shop.example/p?a=1");

        let later = HitRequest { head: false, user_agent: Some(CHROME), now: NOW + 3_600_000 };
        let hit = t.hit(TokenKind::Click, token_of(&click), &later).expect("valid");
        assert_eq!(hit.url.as_deref(), Some("https://shop.example/p?a=1"));
        let event = event_of(&hit);
        assert_eq!(event.effective_status(), Some(Status::Clicked));
        assert_eq!(event.detail.get("url"), Some(&Value::from("https://shop.example/p?a=1")));
        assert_eq!(event.detail.get("user_agent_class"), Some(&Value::from("browser")));
        assert_eq!(event.detail.get("machine"), None);
        assert_eq!(event.ts, NOW + 3_600_000);

        let hit = t.hit(TokenKind::Open, token_of(&open), &later).expect("valid");
        assert_eq!(event_of(&hit).effective_status(), Some(Status::Opened));
        assert_eq!(t.hit(TokenKind::Click, token_of(&open), &later).map(|_| ()), Err(TokenError::WrongKind));
    }

    #[test]
    fn machine_hits_are_flagged_and_by_default_move_nothing() {
        let id = MessageId::parse("m-1").expect("id");
        for change in [false, true] {
            let t = tracking(change);
            let open = t.open_url(&id, NOW).expect("open url");
            let mpp = HitRequest { head: false, user_agent: Some("Mozilla/5.0"), now: NOW + 1000 };
            let hit = t.hit(TokenKind::Open, token_of(&open), &mpp).expect("valid");
            assert_eq!(hit.class, AgentClass::AppleMpp);
            let event = event_of(&hit);
            assert_eq!(event.detail.get("machine"), Some(&Value::Bool(true)));
            assert_eq!(event.affects_status, change);
            // A click seconds after issue is a scanner's.
            let (click, _) = t.click_url(&id, "https://e.example/", NOW).expect("click url");
            let soon = HitRequest { head: false, user_agent: Some(CHROME), now: NOW + 2_000 };
            assert_eq!(t.hit(TokenKind::Click, token_of(&click), &soon).map(|h| h.class), Ok(AgentClass::Scanner));
        }
    }

    #[test]
    fn repeats_within_a_window_share_a_key() {
        let t = tracking(false);
        let id = MessageId::parse("m-1").expect("id");
        let (click, _) = t.click_url(&id, "https://e.example/", NOW).expect("click url");
        let key = |now: i64, ua: &str| {
            let req = HitRequest { head: false, user_agent: Some(ua), now };
            event_of(&t.hit(TokenKind::Click, token_of(&click), &req).expect("valid")).dedupe_key.clone()
        };
        let base = (NOW / 60_000 + 10) * 60_000;
        assert_eq!(key(base, CHROME), key(base + 59_999, CHROME), "same window");
        assert_ne!(key(base, CHROME), key(base + 60_000, CHROME), "next window");
        assert_ne!(key(base, CHROME), key(base, "curl/8"), "another agent class");
        let (other, _) = t.click_url(&id, "https://e.example/other", NOW).expect("click url");
        let req = HitRequest { head: false, user_agent: Some(CHROME), now: base };
        let other_key = event_of(&t.hit(TokenKind::Click, token_of(&other), &req).expect("valid")).dedupe_key.clone();
        assert_ne!(key(base, CHROME), other_key, "another link");
    }

    #[test]
    fn without_keys_nothing_is_signed_or_followed() {
        let t = Tracking::disabled();
        let id = MessageId::parse("m-1").expect("id");
        assert_eq!(t.open_url(&id, NOW), Err(SignError::NotConfigured));
        let signed = tracking(false).click_url(&id, "https://e.example/", NOW).expect("click url").0;
        let req = HitRequest { head: false, user_agent: Some(CHROME), now: NOW };
        assert!(t.hit(TokenKind::Click, token_of(&signed), &req).is_err());
    }

    /// Every link href in `html`, in order, read back with the same parser.
    fn hrefs(html: &str) -> Vec<String> {
        let mut out = Vec::new();
        let settings = lol_html::RewriteStrSettings::new().append_element_content_handler(lol_html::element!(
            "a[href], area[href]",
            |el: &mut lol_html::html_content::Element<'_, '_>| {
                out.push(el.get_attribute("href").unwrap_or_default());
                Ok(())
            }
        ));
        lol_html::rewrite_str(html, settings).expect("parse");
        out
    }

    #[test]
    fn a_real_newsletter_is_rewritten_link_by_link() {
        let t = tracking(false);
        let id = MessageId::parse("newsletter-42").expect("id");
        let html = include_str!("../../fixtures/tracking/newsletter.html");
        let mut sign = |target: &str| t.click_url(&id, target, NOW).ok().map(|(url, _)| url);
        let pixel = t.open_url(&id, NOW).expect("open url");
        let out = rewrite::rewrite(html, Some(&mut sign), Some(&pixel)).expect("rewrite");

        // None of these is a tracked link; each must come out as written.
        enum Want {
            Tracked(&'static str),
            Kept(&'static str),
        }
        use Want::{Kept, Tracked};
        let want = [
            Tracked("https://news.example.com/view?issue=42&u=8f3a"),
            Tracked("https://shop.example.com/?utm_source=newsletter&utm_medium=email&utm_campaign=w42"),
            Tracked("https://news.example.com/issues/42/articles/cafe-culture.html"),
            Tracked("https://blog.example.com/2026/05/r%C3%A9sum%C3%A9s?ref=w42&lang=fr#comments"),
            Kept("mailto:editor@news.example.com?subject=Issue%2042&amp;body=Hi"),
            Kept("tel:+1-555-0100"),
            Kept("sms:+15550100"),
            Kept("#top"),
            Tracked("https://events.example.com/meetup"),
            Tracked("https://shop.example.com/sale"),
            Tracked("https://map.example.com/store?id=7&z=3"),
            Kept("javascript:void(0)"),
            Tracked("https://cdn.example.com/whitepaper.pdf"),
            Kept("https://news.example.com/unsubscribe?u=8f3a&amp;sig=abc"),
            Kept("https://news.example.com/preferences?u=8f3a"),
        ];
        let got = hrefs(&out.html);
        assert_eq!(got.len(), want.len(), "{got:#?}");
        let later = HitRequest { head: false, user_agent: Some(CHROME), now: NOW + 3_600_000 };
        for (href, want) in got.iter().zip(&want) {
            match want {
                Tracked(target) => {
                    let token = href.strip_prefix("https://relay.example/t/c/").expect("a tracked link");
                    let hit = t.hit(TokenKind::Click, token, &later).expect("a valid token");
                    assert_eq!(hit.url.as_deref(), Some(*target));
                    assert_eq!(hit.message_id, id);
                }
                Kept(raw) => assert_eq!(href, raw),
            }
        }
        assert_eq!((out.links_tracked, out.links_untouched, out.pixel_inserted), (8, 7, true));

        // Comments, including Outlook's conditional buttons, are untouched.
        let mut rest = html;
        let mut comments = 0;
        while let Some(start) = rest.find("<!--") {
            let end = rest[start + 4..].find("-->").map(|e| start + 4 + e + 3).expect("closed comment");
            let comment = &rest[start..end];
            assert!(out.html.contains(comment), "comment changed: {comment}");
            comments += 1;
            rest = &rest[end..];
        }
        assert_eq!(comments, 5);
        // The marker is gone; the pixel is there once, right before </BODY>.
        assert!(!out.html.to_ascii_lowercase().contains("data-hookrelay-notrack"));
        assert_eq!(out.html.matches(pixel.as_str()).count(), 1);
        let pixel_tag = format!(r#"<img src="{pixel}" width="1" height="1" alt="" style="display:none">"#);
        assert!(out.html.contains(&format!("{pixel_tag}</BODY>")), "pixel before the body's end");
        // Text, entities and everything outside hrefs stay byte for byte.
        let blank_links = |s: &str| {
            let settings = lol_html::RewriteStrSettings::new().append_element_content_handler(lol_html::element!(
                "a[href], area[href]",
                |el: &mut lol_html::html_content::Element<'_, '_>| {
                    el.set_attribute("href", "")?;
                    el.remove_attribute(rewrite::NO_TRACK_ATTRIBUTE);
                    Ok(())
                }
            ));
            lol_html::rewrite_str(&s.replace(&pixel_tag, ""), settings).expect("parse")
        };
        let before = blank_links(html);
        assert!(before.contains("caf&eacute;s &amp; more&nbsp;&zwnj;"));
        assert_eq!(blank_links(&out.html), before);
    }

    #[test]
    fn the_pixel_is_a_1x1_gif() {
        assert_eq!(PIXEL_GIF.len(), 43);
        assert_eq!(&PIXEL_GIF[..6], b"GIF89a");
        assert_eq!((PIXEL_GIF[6], PIXEL_GIF[8]), (1, 1), "width and height");
        assert_eq!(PIXEL_GIF.last(), Some(&0x3b), "trailer");
    }

    #[test]
    fn configured_keys_are_checked_by_name() {
        let key = |id: &str, secret: &str| TrackingKey { id: id.into(), secret: crate::domain::Secret::new(secret) };
        let good = "0123456789abcdef0123456789abcdef";
        assert!(check_keys(&[key("k2", good), key("k1", good)]).is_ok());
        for (keys, at) in [
            (vec![key("k1", "short")], "tracking.keys[0].secret"),
            (vec![key("k 1", good)], "tracking.keys[0].id"),
            (vec![key("k1", good), key("k1", good)], "tracking.keys[1].id"),
        ] {
            let err = check_keys(&keys).expect_err(at).to_string();
            assert!(err.contains(at), "{at}: {err}");
        }
    }
}
