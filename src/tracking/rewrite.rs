//! Rewriting an HTML email for tracking, with a streaming HTML rewriter
//! (`lol_html`, the tokenizer behind Cloudflare's HTMLRewriter), never with
//! regular expressions. Pure: the signing is a callback, no I/O.
//!
//! What is rewritten: the `href` of every `<a>` and `<area>` whose target is
//! an absolute `http`/`https` URL (after decoding character references, so
//! `&amp;` in a query is signed as `&`), and relative links when the
//! document has a `<base href>` that is an absolute `http`/`https` URL
//! (the first one in the document, as browsers do, wherever it stands).
//!
//! What is left alone: `mailto:`, `tel:`, `sms:` and every other scheme,
//! in-page `#anchors`, relative links without a usable `<base>`, links the
//! signer refuses (see `target`), links marked `data-hookrelay-notrack`
//! (the marker itself is removed), and anything inside comments, such as
//! Outlook's `<!--[if mso]>` buttons: comments are not elements.
//!
//! The open pixel goes just before the first `</body>`, or at the very end
//! when the document has no body end tag.

use std::cell::Cell;
use std::rc::Rc;

use lol_html::html_content::{ContentType, Element};
use lol_html::{RewriteStrSettings, element, end, end_tag, rewrite_str};
use url::Url;

/// The marker that keeps a link untracked.
pub const NO_TRACK_ATTRIBUTE: &str = "data-hookrelay-notrack";

/// The rewritten document and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub html: String,
    /// Links now pointing at the click redirect.
    pub links_tracked: usize,
    /// Links left as they were (other schemes, anchors, marked, refused).
    pub links_untouched: usize,
    pub pixel_inserted: bool,
}

/// Signs one link: gets the absolute target, returns its tracked URL, or
/// `None` to leave the link as it is.
pub type SignLink<'a> = &'a mut dyn FnMut(&str) -> Option<String>;

/// The HTML could not be processed.
#[derive(Debug, thiserror::Error)]
#[error("cannot rewrite the HTML: {0}")]
pub struct RewriteError(String);

/// Rewrites `html`. `link` receives each trackable target (absolute,
/// decoded) and returns its tracked URL, or `None` to leave the link as it
/// is; without `link` no link is touched. With `pixel_url` the open pixel is
/// inserted.
pub fn rewrite(html: &str, link: Option<SignLink<'_>>, pixel_url: Option<&str>) -> Result<Rewritten, RewriteError> {
    let base = if link.is_some() { document_base(html)? } else { None };
    let tracked = Cell::new(0usize);
    let untouched = Cell::new(0usize);
    let body_seen = Cell::new(false);
    // Shared with the `</body>` handler, which must be 'static.
    let pixel_done = Rc::new(Cell::new(false));
    let pixel = pixel_url.map(pixel_html);

    let mut link = link;
    let links = element!("a[href], area[href]", |el: &mut Element<'_, '_>| {
        if el.has_attribute(NO_TRACK_ATTRIBUTE) {
            el.remove_attribute(NO_TRACK_ATTRIBUTE);
            untouched.set(untouched.get() + 1);
            return Ok(());
        }
        let Some(sign) = link.as_mut() else {
            untouched.set(untouched.get() + 1);
            return Ok(());
        };
        let raw = el.get_attribute("href").unwrap_or_default();
        match resolve(&raw, base.as_ref()).and_then(|target| sign(&target)) {
            Some(tracked_url) => {
                el.set_attribute("href", &htmlize::escape_attribute(&tracked_url))?;
                tracked.set(tracked.get() + 1);
            }
            None => untouched.set(untouched.get() + 1),
        }
        Ok(())
    });
    let body = element!("body", |el: &mut Element<'_, '_>| {
        if let Some(pixel) = &pixel
            && !body_seen.replace(true)
        {
            let (pixel, done) = (pixel.clone(), pixel_done.clone());
            // Only when `</body>` is really there; otherwise the end of the
            // document takes the pixel.
            el.on_end_tag(end_tag!(move |end| {
                if !done.replace(true) {
                    end.before(&pixel, ContentType::Html);
                }
                Ok(())
            }))?;
        }
        Ok(())
    });
    let document_end = end!(|end| {
        if let Some(pixel) = &pixel
            && !pixel_done.replace(true)
        {
            end.append(pixel, ContentType::Html);
        }
        Ok(())
    });
    let settings = RewriteStrSettings::new()
        .append_element_content_handler(links)
        .append_element_content_handler(body)
        .append_document_content_handler(document_end);
    let html = rewrite_str(html, settings).map_err(|e| RewriteError(e.to_string()))?;
    Ok(Rewritten {
        html,
        links_tracked: tracked.get(),
        links_untouched: untouched.get(),
        pixel_inserted: pixel_url.is_some(),
    })
}

/// The pixel's markup; `url` is escaped for the attribute.
fn pixel_html(url: &str) -> String {
    format!(r#"<img src="{}" width="1" height="1" alt="" style="display:none">"#, htmlize::escape_attribute(url))
}

/// The document's base URL: the first `<base>` with an `href`, if that is
/// an absolute `http`/`https` URL (an email has no URL of its own to
/// resolve a relative base against).
fn document_base(html: &str) -> Result<Option<Url>, RewriteError> {
    // Cheap test first: most emails have no <base>.
    if !html.as_bytes().windows(5).any(|w| w.eq_ignore_ascii_case(b"<base")) {
        return Ok(None);
    }
    let mut first: Option<String> = None;
    let settings =
        RewriteStrSettings::new().append_element_content_handler(element!("base[href]", |el: &mut Element<'_, '_>| {
            if first.is_none() {
                first = el.get_attribute("href");
            }
            Ok(())
        }));
    rewrite_str(html, settings).map_err(|e| RewriteError(e.to_string()))?;
    Ok(first.and_then(|raw| {
        let decoded = htmlize::unescape_attribute(raw.as_str());
        let url = Url::parse(trim_ascii_whitespace(&decoded)).ok()?;
        matches!(url.scheme(), "http" | "https").then_some(url)
    }))
}

/// The absolute `http`/`https` target of an `href` attribute value as
/// written in the source, or `None` when the link is not one to track.
pub fn resolve(raw: &str, base: Option<&Url>) -> Option<String> {
    let decoded = htmlize::unescape_attribute(raw);
    // Browsers strip leading and trailing ASCII whitespace from URLs.
    let href = trim_ascii_whitespace(&decoded);
    if href.is_empty() || href.starts_with('#') {
        return None;
    }
    match scheme(href) {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => Some(href.to_owned()),
        Some(_) => None,
        None => {
            let joined = base?.join(href).ok()?;
            matches!(joined.scheme(), "http" | "https").then(|| joined.into())
        }
    }
}

/// The scheme of an absolute URL (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`).
fn scheme(href: &str) -> Option<&str> {
    let colon = href.find(':')?;
    let s = &href[..colon];
    let mut bytes = s.bytes();
    let first = bytes.next()?;
    (first.is_ascii_alphabetic() && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
        .then_some(s)
}

fn trim_ascii_whitespace(s: &str) -> &str {
    s.trim_matches(|c: char| matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tracks every target as `T[target]` so tests can see what was signed.
    fn fake(target: &str) -> Option<String> {
        Some(format!("https://relay.example/t/c/{}", target.replace('&', "~")))
    }

    fn run(html: &str) -> Rewritten {
        let mut sign = fake;
        rewrite(html, Some(&mut sign), Some("https://relay.example/t/o/PIXEL")).expect("rewrite")
    }

    const PIXEL: &str =
        r#"<img src="https://relay.example/t/o/PIXEL" width="1" height="1" alt="" style="display:none">"#;

    #[test]
    fn links_are_tracked_and_the_pixel_closes_the_body() {
        let out = run(r#"<html><body><p><a href="https://shop.example/a?x=1&amp;y=2">Shop</a></p></body></html>"#);
        assert_eq!(
            out.html,
            format!(
                r#"<html><body><p><a href="https://relay.example/t/c/https://shop.example/a?x=1~y=2">Shop</a></p>{PIXEL}</body></html>"#
            )
        );
        assert_eq!((out.links_tracked, out.links_untouched, out.pixel_inserted), (1, 0, true));
    }

    #[test]
    fn entities_are_decoded_before_signing_and_output_is_escaped() {
        let mut seen = Vec::new();
        let mut sign = |t: &str| {
            seen.push(t.to_owned());
            Some(format!("https://relay.example/t/c/x?a={t}"))
        };
        let html = r#"<a href="https://e.example/?a=1&amp;b=2&#38;c=3&#x26;d=&quot;q&quot;&copy=4&lt=5">x</a>"#;
        let out = rewrite(html, Some(&mut sign), None).expect("rewrite");
        // `&copy=` and `&lt=` stay as written inside an attribute (WHATWG's
        // legacy-entity rule), everything else is decoded.
        assert_eq!(seen, [r#"https://e.example/?a=1&b=2&c=3&d="q"&copy=4&lt=5"#]);
        assert_eq!(
            out.html,
            r#"<a href="https://relay.example/t/c/x?a=https://e.example/?a=1&amp;b=2&amp;c=3&amp;d=&quot;q&quot;&amp;copy=4&amp;lt=5">x</a>"#
        );
    }

    #[test]
    fn what_is_left_alone() {
        let html = concat!(
            r#"<a href="mailto:news@example.com">m</a>"#,
            r#"<a href="tel:+15551234">t</a>"#,
            r#"<a href="sms:+15551234">s</a>"#,
            r##"<a href="#top">anchor</a>"##,
            r#"<a href="javascript:alert(1)">js</a>"#,
            r#"<a href="/relative">rel</a>"#,
            r#"<a href="//cdn.example/x">proto-relative</a>"#,
            r#"<a href="https://user:pw@example.com/">userinfo</a>"#,
            r#"<a>no href</a>"#,
            r#"<a href="https://unsub.example/u?id=1" data-hookrelay-notrack>unsubscribe</a>"#,
            r#"<!-- <a href="https://in-a-comment.example/">c</a> -->"#,
            r#"<!--[if mso]><v:roundrect href="https://mso.example/"></v:roundrect><![endif]-->"#,
            r#"<link href="https://fonts.example/css" rel="stylesheet"><img src="https://img.example/a.png">"#,
        );
        let mut sign = |t: &str| crate::tracking::target::check(t).ok().and_then(|t| fake(&t));
        let out = rewrite(html, Some(&mut sign), None).expect("rewrite");
        let want = html.replace(" data-hookrelay-notrack", "");
        assert_eq!(out.html, want);
        assert_eq!((out.links_tracked, out.links_untouched, out.pixel_inserted), (0, 9, false));
    }

    #[test]
    fn uppercase_tags_and_attributes() {
        let out = run(r#"<BODY><A HREF="HTTPS://Shop.Example/X">x</A><AREA Href='http://map.example/'></BODY>"#);
        assert_eq!(
            out.html,
            format!(
                r#"<BODY><A HREF="https://relay.example/t/c/HTTPS://Shop.Example/X">x</A><AREA Href="https://relay.example/t/c/http://map.example/">{PIXEL}</BODY>"#
            )
        );
        assert_eq!(out.links_tracked, 2);
    }

    #[test]
    fn a_base_makes_relative_links_absolute_wherever_it_stands() {
        // The first <base href> counts, even after the links (as in browsers).
        let html = r##"<a href="sale?x=1">a</a><a href="//cdn.example/y">b</a><base href="https://shop.example/en/"><base href="https://ignored.example/"><a href="#top">c</a>"##;
        let out = run(html);
        assert_eq!(
            out.html,
            format!(
                r##"<a href="https://relay.example/t/c/https://shop.example/en/sale?x=1">a</a><a href="https://relay.example/t/c/https://cdn.example/y">b</a><base href="https://shop.example/en/"><base href="https://ignored.example/"><a href="#top">c</a>{PIXEL}"##
            )
        );
        // A relative or non-http base is no base.
        for base in [r#"<base href="/en/">"#, r#"<base href="javascript:x">"#, r#"<base target="_blank">"#] {
            let out = run(&format!(r#"{base}<a href="sale">a</a>"#));
            assert_eq!(out.links_tracked, 0, "{base}");
        }
    }

    #[test]
    fn the_pixel_without_a_body_end_tag_goes_at_the_end() {
        assert_eq!(run("<p>Hi</p>").html, format!("<p>Hi</p>{PIXEL}"));
        assert_eq!(run("<html><body><p>Hi</p>").html, format!("<html><body><p>Hi</p>{PIXEL}"));
        // Only once, before the first </body>.
        assert_eq!(run("<body>a</body><body>b</body>").html, format!("<body>a{PIXEL}</body><body>b</body>"));
        // A </body> in a comment or a script is not the body's end.
        assert_eq!(
            run("<body><!-- </body> --><script>'</body>'</script></body>").html,
            format!("<body><!-- </body> --><script>'</body>'</script>{PIXEL}</body>")
        );
    }

    #[test]
    fn opens_only_or_clicks_only() {
        let html = r#"<body><a href="https://e.example/">x</a></body>"#;
        let out = rewrite(html, None, Some("https://relay.example/t/o/P")).expect("rewrite");
        assert_eq!(out.links_tracked, 0);
        assert!(out.html.contains(r#"href="https://e.example/""#));
        let mut sign = fake;
        let out = rewrite(html, Some(&mut sign), None).expect("rewrite");
        assert_eq!((out.links_tracked, out.pixel_inserted), (1, false));
        assert!(!out.html.contains("<img"));
    }

    #[test]
    fn hrefs_resolve_like_a_browser() {
        let base = Url::parse("https://b.example/dir/").ok();
        for (raw, base, want) in [
            ("  https://e.example/ \n", None, Some("https://e.example/")),
            ("HTTP://e.example", None, Some("HTTP://e.example")),
            ("https://e.example/?a&amp;b", None, Some("https://e.example/?a&b")),
            ("", None, None),
            ("#", None, None),
            ("mailto:x@e.example", base.as_ref(), None),
            ("Tel:+1", None, None),
            ("page.html", None, None),
            ("page.html", base.as_ref(), Some("https://b.example/dir/page.html")),
            ("../up", base.as_ref(), Some("https://b.example/up")),
            ("#frag", base.as_ref(), None),
        ] {
            assert_eq!(resolve(raw, base).as_deref(), want, "{raw:?}");
        }
    }
}
