//! Is a hit a person or a machine? Pure: the request's method, its user
//! agent and the time since the token was issued go in, a class comes out.
//!
//! The rules, first match wins, and why:
//!
//! | class | rule | machine |
//! |---|---|---|
//! | `head` | a HEAD request: link checkers and scanners probe with it, browsers never navigate with it | yes |
//! | `bot` | no user agent at all | yes |
//! | `apple_mpp` | an open whose user agent is exactly `Mozilla/5.0`: Apple Mail Privacy Protection loads every image through Apple's proxies as soon as mail arrives, with this bare user agent, whether or not anyone reads it | yes |
//! | `gmail_prefetch` | the fixed user agent Gmail uses when it prefetches images for a signed-in session before the message is shown (`... Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0`, reported by SparkPost/Bird, Jan 2022) | yes |
//! | `yahoo_mail_proxy` | `YahooMailProxy`: Yahoo's content-fetch proxy, which fetches URLs embedded in mail for security scanning | yes |
//! | `scanner` | a known mail-security product in the user agent (Barracuda, Mimecast, Proofpoint, ...) | yes |
//! | `bot` | a crawler, preview fetcher or HTTP library (`...bot/`, `crawler`, `spider`, `curl/`, `python-requests`, `HeadlessChrome`, ...) | yes |
//! | `scanner` | a click within `scanner_window` of the token's issue time: security gateways (Microsoft Defender Safe Links and the like) follow every link at delivery, with ordinary browser user agents, long before a person could | yes |
//! | `google_image_proxy` | `GoogleImageProxy`: Gmail fetches images through its proxy when the person opens the message (and caches them, so later opens are not seen) | no |
//! | `browser` | anything else | no |
//!
//! The issue time stands in for the delivery time, which is not known on
//! the hot path without a database read: tokens are normally made just
//! before sending. When HTML is rewritten long before it is sent, the
//! window never matches and only the user-agent rules apply.
//!
//! IP addresses are not used: behind a reverse proxy the peer is the proxy,
//! and Apple's relays share egress ranges with iCloud Private Relay, where
//! real people browse. Nothing here is stored but the class.

use super::token::TokenKind;

/// Who made a hit, as far as can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentClass {
    Browser,
    GoogleImageProxy,
    AppleMpp,
    GmailPrefetch,
    YahooMailProxy,
    Scanner,
    Bot,
    Head,
}

impl AgentClass {
    /// The `user_agent_class` stored in the history and used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentClass::Browser => "browser",
            AgentClass::GoogleImageProxy => "google_image_proxy",
            AgentClass::AppleMpp => "apple_mpp",
            AgentClass::GmailPrefetch => "gmail_prefetch",
            AgentClass::YahooMailProxy => "yahoo_mail_proxy",
            AgentClass::Scanner => "scanner",
            AgentClass::Bot => "bot",
            AgentClass::Head => "head",
        }
    }

    /// Whether the hit is not a person's.
    pub fn is_machine(self) -> bool {
        match self {
            AgentClass::Browser | AgentClass::GoogleImageProxy => false,
            AgentClass::AppleMpp
            | AgentClass::GmailPrefetch
            | AgentClass::YahooMailProxy
            | AgentClass::Scanner
            | AgentClass::Bot
            | AgentClass::Head => true,
        }
    }
}

/// What the rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub kind: TokenKind,
    /// A HEAD request.
    pub head: bool,
    pub user_agent: Option<&'a str>,
    /// Milliseconds from the token's issue to the hit (negative with clock skew).
    pub since_issue_ms: i64,
}

/// The user agent Gmail's image prefetch sends.
const GMAIL_PREFETCH: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
                              Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0";

/// Mail-security products that fetch links and images (lowercase).
const SCANNERS: &[&str] = &[
    "barracuda",
    "mimecast",
    "proofpoint",
    "trendmicro",
    "trend micro",
    "zscaler",
    "forcepoint",
    "fortiguard",
    "symantec",
    "sophos",
    "cisco ironport",
    "safelinks",
];

/// Crawlers, previewers and HTTP libraries (lowercase substrings).
const BOTS: &[&str] = &[
    "robot",
    "crawler",
    "spider",
    "slurp",
    "headlesschrome",
    "phantomjs",
    "puppeteer",
    "playwright",
    "selenium",
    "lighthouse",
    "curl/",
    "wget/",
    "httpie/",
    "python-requests",
    "python-urllib",
    "python-httpx",
    "aiohttp",
    "go-http-client",
    "java/",
    "okhttp",
    "apache-httpclient",
    "libwww-perl",
    "node-fetch",
    "undici",
    "axios/",
    "guzzlehttp",
    "ruby",
    "facebookexternalhit",
    "whatsapp/",
    "skypeuripreview",
    "bingpreview",
    "microsoft office existence discovery",
    "preview",
    "scan",
];

/// Classifies one hit. `scanner_window_ms` of 0 turns the timing rule off.
pub fn classify(req: &Request<'_>, scanner_window_ms: i64) -> AgentClass {
    if req.head {
        return AgentClass::Head;
    }
    let ua = req.user_agent.map(str::trim).unwrap_or("");
    if ua.is_empty() {
        return AgentClass::Bot;
    }
    if ua == "Mozilla/5.0" {
        // No browser sends a bare product token; for an image it is Apple's
        // privacy proxy, for a click some other automation.
        return match req.kind {
            TokenKind::Open => AgentClass::AppleMpp,
            TokenKind::Click => AgentClass::Bot,
        };
    }
    if ua == GMAIL_PREFETCH {
        return AgentClass::GmailPrefetch;
    }
    let lower = ua.to_ascii_lowercase();
    if lower.contains("yahoomailproxy") {
        return AgentClass::YahooMailProxy;
    }
    if lower.contains("googleimageproxy") {
        return AgentClass::GoogleImageProxy;
    }
    if SCANNERS.iter().any(|s| lower.contains(s)) {
        return AgentClass::Scanner;
    }
    if BOTS.iter().any(|s| lower.contains(s)) || names_a_bot(&lower) {
        return AgentClass::Bot;
    }
    if req.kind == TokenKind::Click && scanner_window_ms > 0 && req.since_issue_ms < scanner_window_ms {
        return AgentClass::Scanner;
    }
    AgentClass::Browser
}

/// `bot` ending a product token (`Googlebot/2.1`, `Slackbot-LinkExpanding`,
/// `Twitterbot`): followed by a delimiter or the end. A plain substring
/// match would also catch phone models such as `CUBOT X20`.
fn names_a_bot(lower: &str) -> bool {
    lower.match_indices("bot").any(|(i, _)| match lower.as_bytes().get(i + 3) {
        None => true,
        Some(b) => matches!(b, b'/' | b';' | b')' | b'-' | b'+' | b'_' | b','),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
                          Chrome/124.0.0.0 Safari/537.36";
    const IPHONE_MAIL: &str =
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
    const OUTLOOK: &str = "Mozilla/4.0 (compatible; ms-office; MSOffice 16)";
    const GMAIL_PROXY: &str =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    const CUBOT_PHONE: &str = "Mozilla/5.0 (Linux; Android 10; CUBOT X20 PRO) AppleWebKit/537.36 (KHTML, like Gecko) \
                               Chrome/120.0.0.0 Mobile Safari/537.36";

    const WINDOW: i64 = 10_000;
    const LATER: i64 = 3_600_000;

    #[test]
    fn the_rules_in_order() {
        use AgentClass::*;
        use TokenKind::{Click, Open};
        let table: &[(TokenKind, bool, Option<&str>, i64, AgentClass)] = &[
            // People.
            (Open, false, Some(CHROME), LATER, Browser),
            (Open, false, Some(IPHONE_MAIL), LATER, Browser),
            (Open, false, Some(OUTLOOK), LATER, Browser),
            (Click, false, Some(CHROME), LATER, Browser),
            (Click, false, Some(CUBOT_PHONE), LATER, Browser),
            (Open, false, Some(GMAIL_PROXY), LATER, GoogleImageProxy),
            // An open right after sending is still a person's open (a
            // password-reset mail is read at once); only clicks are timed.
            (Open, false, Some(CHROME), 500, Browser),
            // HEAD, whatever the agent.
            (Open, true, Some(CHROME), LATER, Head),
            (Click, true, Some(CHROME), LATER, Head),
            // Missing or blank agents.
            (Open, false, None, LATER, Bot),
            (Click, false, Some("   "), LATER, Bot),
            // Apple Mail Privacy Protection and Gmail's prefetch.
            (Open, false, Some("Mozilla/5.0"), LATER, AppleMpp),
            (Click, false, Some("Mozilla/5.0"), LATER, Bot),
            (Open, false, Some(GMAIL_PREFETCH), LATER, GmailPrefetch),
            (
                Open,
                false,
                Some("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"),
                LATER,
                YahooMailProxy,
            ),
            // Security products and bots.
            (Click, false, Some("Mozilla/5.0 (compatible; Barracuda Sentinel)"), LATER, Scanner),
            (Click, false, Some("Mimecast URL Protect"), LATER, Scanner),
            (
                Click,
                false,
                Some("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
                LATER,
                Bot,
            ),
            (Click, false, Some("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"), LATER, Bot),
            (Click, false, Some("Twitterbot"), LATER, Bot),
            (Click, false, Some("curl/8.5.0"), LATER, Bot),
            (Click, false, Some("python-requests/2.31.0"), LATER, Bot),
            (Click, false, Some("Go-http-client/1.1"), LATER, Bot),
            (
                Click,
                false,
                Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/120.0.0.0"),
                LATER,
                Bot,
            ),
            (Click, false, Some("facebookexternalhit/1.1"), LATER, Bot),
            (Open, false, Some("Microsoft Office Existence Discovery"), LATER, Bot),
            // Clicks within the window of the issue time are a scanner's.
            (Click, false, Some(CHROME), 0, Scanner),
            (Click, false, Some(CHROME), WINDOW - 1, Scanner),
            (Click, false, Some(CHROME), -2_000, Scanner),
            (Click, false, Some(CHROME), WINDOW, Browser),
        ];
        for &(kind, head, ua, since, want) in table {
            let req = Request { kind, head, user_agent: ua, since_issue_ms: since };
            assert_eq!(classify(&req, WINDOW), want, "{kind:?} head={head} ua={ua:?} since={since}");
        }
    }

    #[test]
    fn a_zero_window_turns_timing_off() {
        let req = Request { kind: TokenKind::Click, head: false, user_agent: Some(CHROME), since_issue_ms: 0 };
        assert_eq!(classify(&req, 0), AgentClass::Browser);
    }

    #[test]
    fn only_people_are_not_machines() {
        use AgentClass::*;
        for class in [Browser, GoogleImageProxy, AppleMpp, GmailPrefetch, YahooMailProxy, Scanner, Bot, Head] {
            assert_eq!(class.is_machine(), !matches!(class, Browser | GoogleImageProxy), "{class:?}");
        }
    }
}
