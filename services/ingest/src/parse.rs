//! Turning raw MIME into what ingest stores: pure, no I/O, total (any bytes give a result, never
//! a panic). mail-parser decodes charsets (every one `encoding_rs` knows), transfer encodings
//! and RFC 2047 words; what it can't decode is kept raw and flagged.

use mail_parser::{
    Address, HeaderName, HeaderValue, Message, MessageParser, MimeHeaders, PartType,
};
use postvak_proto::events::ingest::{AuthResultV1, HeaderSummaryV1, MailboxV1, MessageFlagsV1};
use sha2::{Digest, Sha256};

/// Longest Message-ID we index (RFC 5322 lines are at most 998 characters).
const MAX_ID_LEN: usize = 998;
/// Most `References` entries kept: the newest ones matter for threading.
pub const MAX_REFERENCES: usize = 200;
const SNIPPET_CHARS: usize = 200;

/// An attachment or inline part, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAttachment {
    pub content_type: String,
    pub filename: Option<String>,
    pub content_id: Option<String>,
    pub inline: bool,
    pub data: Vec<u8>,
}

/// A parsed mail: everything ingest records about it besides the raw bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedMail {
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    /// Oldest first, as in the header.
    pub references: Vec<String>,
    pub headers: HeaderSummaryV1,
    pub text: Option<String>,
    pub html: Option<String>,
    pub snippet: String,
    pub attachments: Vec<ParsedAttachment>,
    pub flags: MessageFlagsV1,
    pub auth_results: Vec<AuthResultV1>,
    /// SHA-256 of the message without trace headers, line endings normalised.
    pub content_hash: [u8; 32],
    /// SHA-256 of the raw bytes.
    pub raw_sha256: [u8; 32],
}

/// Parses any bytes. Never fails: a message that does not parse at all is flagged `unparsed`.
pub fn parse(raw: &[u8]) -> ParsedMail {
    let mut out = ParsedMail {
        content_hash: content_hash(raw),
        raw_sha256: Sha256::digest(raw).into(),
        ..ParsedMail::default()
    };
    let Some(msg) = MessageParser::new().parse(raw) else {
        out.flags.unparsed = true;
        return out;
    };
    out.message_id = msg.message_id().and_then(normalize_id);
    out.in_reply_to = ids(msg.header(HeaderName::InReplyTo));
    let mut refs = ids(msg.header(HeaderName::References));
    if refs.len() > MAX_REFERENCES {
        refs.drain(..refs.len() - MAX_REFERENCES);
    }
    out.references = refs;
    out.headers = HeaderSummaryV1 {
        subject: msg.subject().map(clean_text),
        from: mailboxes(msg.from()),
        sender: mailboxes(msg.sender()),
        reply_to: mailboxes(msg.reply_to()),
        to: mailboxes(msg.to()),
        cc: mailboxes(msg.cc()),
        date: msg.date().filter(|d| d.is_valid()).map(|d| d.to_rfc3339()),
        list_id: raw_headers(&msg, "list-id")
            .into_iter()
            .next()
            .map(|v| clean_text(&v)),
    };
    let texts: Vec<String> = msg
        .text_bodies()
        .filter_map(|p| match &p.body {
            PartType::Text(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    out.text = if texts.is_empty() {
        // HTML only: a text rendering for search and previews.
        msg.body_text(0).map(|t| t.into_owned())
    } else {
        Some(texts.join("\n\n"))
    };
    let htmls: Vec<String> = msg
        .html_bodies()
        .filter_map(|p| match &p.body {
            PartType::Html(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    out.html = (!htmls.is_empty()).then(|| htmls.join("\n"));
    out.snippet = snippet(out.text.as_deref().unwrap_or(""));
    for part in msg.attachments() {
        let content_type = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_owned(),
            })
            .unwrap_or_else(|| match part.body {
                PartType::Message(_) => "message/rfc822".to_owned(),
                PartType::Text(_) => "text/plain".to_owned(),
                PartType::Html(_) => "text/html".to_owned(),
                _ => "application/octet-stream".to_owned(),
            })
            .to_ascii_lowercase();
        let disposition_inline = part.content_disposition().map(|d| d.is_inline());
        let content_id = part.content_id().and_then(normalize_id);
        out.attachments.push(ParsedAttachment {
            inline: disposition_inline.unwrap_or(content_id.is_some()),
            content_type,
            filename: part.attachment_name().map(clean_text),
            content_id,
            data: part.contents().to_vec(),
        });
    }
    out.flags = flags(&msg);
    out.auth_results = raw_headers(&msg, "authentication-results")
        .iter()
        .flat_map(|v| parse_authentication_results(v))
        .collect();
    out
}

fn flags(msg: &Message<'_>) -> MessageFlagsV1 {
    let first = |name: &str| {
        raw_headers(msg, name)
            .into_iter()
            .next()
            .map(|v| v.trim().to_ascii_lowercase())
    };
    let auto_submitted = first("auto-submitted")
        .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
        .is_some_and(|v| !v.is_empty() && v != "no");
    let precedence = first("precedence").unwrap_or_default();
    let auto_reply = auto_submitted
        || first("x-autoreply").is_some()
        || first("x-autorespond").is_some()
        || first("x-autogenerated").is_some_and(|v| v.contains("reply"))
        || precedence == "auto_reply";
    let bulk =
        matches!(precedence.as_str(), "bulk" | "list" | "junk") || first("list-id").is_some();
    let is_dsn = msg.parts.iter().any(|p| {
        p.content_type().is_some_and(|ct| {
            let t = ct.ctype().to_ascii_lowercase();
            let sub = ct
                .subtype()
                .map(str::to_ascii_lowercase)
                .unwrap_or_default();
            (t == "multipart"
                && sub == "report"
                && ct
                    .attribute("report-type")
                    .is_some_and(|r| r.eq_ignore_ascii_case("delivery-status")))
                || (t == "message" && sub == "delivery-status")
        })
    });
    let from_daemon = mailboxes(msg.from()).iter().any(|m| {
        m.address.as_deref().is_some_and(|a| {
            let local = a.split('@').next().unwrap_or("").to_ascii_lowercase();
            local == "mailer-daemon" || local == "postmaster"
        })
    });
    MessageFlagsV1 {
        auto_reply,
        bounce: is_dsn || from_daemon,
        bulk,
        unparsed: false,
        encoding_problem: msg.parts.iter().any(|p| p.is_encoding_problem),
    }
}

/// Every value of a header (case-insensitive name), unfolded, as raw text.
fn raw_headers(msg: &Message<'_>, name: &str) -> Vec<String> {
    msg.root_part()
        .headers
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .filter_map(|h| {
            msg.raw_message
                .get(h.offset_start as usize..h.offset_end as usize)
                .map(|b| unfold(&String::from_utf8_lossy(b)))
        })
        .collect()
}

fn unfold(s: &str) -> String {
    s.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn clean_text(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first [`SNIPPET_CHARS`] characters of the text as [`clean_text`] would make it, with
/// `…` when there is more — reading only as far as needed: cleaning a whole 50 KB body to keep
/// 200 characters was 14 % of ingest's CPU.
fn snippet(text: &str) -> String {
    let mut out = String::with_capacity(SNIPPET_CHARS + 8);
    let mut n = 0;
    let words = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty());
    for word in words {
        if n > 0 {
            if n == SNIPPET_CHARS {
                out.push('…');
                return out;
            }
            out.push(' ');
            n += 1;
        }
        for c in word.chars() {
            if n == SNIPPET_CHARS {
                out.push('…');
                return out;
            }
            out.push(c);
            n += 1;
        }
    }
    out
}

/// A Message-ID without angle brackets and surrounding space; `None` when empty or absurd.
pub fn normalize_id(s: &str) -> Option<String> {
    let t = s
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!t.is_empty() && t.len() <= MAX_ID_LEN && !t.chars().any(char::is_whitespace))
        .then(|| t.to_owned())
}

fn ids(v: Option<&HeaderValue<'_>>) -> Vec<String> {
    let mut out: Vec<String> = match v {
        Some(HeaderValue::Text(t)) => normalize_id(t).into_iter().collect(),
        Some(HeaderValue::TextList(l)) => l.iter().filter_map(|t| normalize_id(t)).collect(),
        _ => Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    out.retain(|id| seen.insert(id.clone()));
    out
}

fn mailboxes(a: Option<&Address<'_>>) -> Vec<MailboxV1> {
    let Some(a) = a else { return Vec::new() };
    a.iter()
        .map(|addr| MailboxV1 {
            name: addr.name().map(clean_text).filter(|n| !n.is_empty()),
            address: addr
                .address()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        })
        .filter(|m| m.name.is_some() || m.address.is_some())
        .collect()
}

/// Parses one `Authentication-Results` value (RFC 8601):
/// `authserv-id [version]; method=result (comment) ptype.prop=value; …`. Lenient: what it
/// can't read it skips.
pub fn parse_authentication_results(value: &str) -> Vec<AuthResultV1> {
    let text = strip_comments(value);
    let mut segments = text.split(';');
    let authserv_id = segments
        .next()
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("")
        .to_ascii_lowercase();
    segments
        .filter_map(|seg| {
            let first = seg.split_whitespace().next()?;
            let (method, result) = first.split_once('=')?;
            let method = method
                .split('/')
                .next()
                .unwrap_or(method)
                .trim()
                .to_ascii_lowercase();
            let result = result.trim().to_ascii_lowercase();
            (!method.is_empty()
                && !result.is_empty()
                && method
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .then(|| AuthResultV1 {
                authserv_id: authserv_id.clone(),
                method,
                result,
            })
        })
        .collect()
}

fn strip_comments(s: &str) -> String {
    let mut depth = 0usize;
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => escaped = true,
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Header fields added in transit: two copies of one mail that took different routes differ in
/// these and nothing else.
const TRACE_HEADERS: &[&str] = &[
    "received",
    "return-path",
    "delivered-to",
    "x-original-to",
    "x-received",
    "authentication-results",
    "arc-seal",
    "arc-message-signature",
    "arc-authentication-results",
    "received-spf",
    "x-spam-status",
    "x-spam-score",
    "x-spam-flag",
    "x-spam-level",
    "x-spam-checker-version",
];

/// SHA-256 of a message without its trace headers, with CRLF/CR normalised to LF and trailing
/// blank lines ignored: the "same mail" test of dedupe.
pub fn content_hash(raw: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut lines = split_lines(raw);
    let mut in_headers = true;
    let mut skipping = false;
    let mut body_lines: Vec<&[u8]> = Vec::new();
    for line in lines.by_ref() {
        if in_headers {
            if line.is_empty() {
                in_headers = false;
                h.update(b"\n");
                continue;
            }
            let continuation = matches!(line.first(), Some(b' ' | b'\t'));
            if !continuation {
                skipping = line
                    .iter()
                    .position(|&b| b == b':')
                    .map(|i| {
                        let name = &line[..i];
                        if name.is_ascii() {
                            // The common case, without a copy per header line.
                            let name = name.trim_ascii();
                            TRACE_HEADERS
                                .iter()
                                .any(|t| t.as_bytes().eq_ignore_ascii_case(name))
                        } else {
                            let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
                            TRACE_HEADERS.contains(&name.as_str())
                        }
                    })
                    .unwrap_or(false);
            }
            if !skipping {
                h.update(line);
                h.update(b"\n");
            }
        } else {
            body_lines.push(line);
        }
    }
    while body_lines.last().is_some_and(|l| l.is_empty()) {
        body_lines.pop();
    }
    for l in body_lines {
        h.update(l);
        h.update(b"\n");
    }
    h.finalize().into()
}

/// Lines without their terminators (LF, CRLF or a lone CR).
fn split_lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = raw;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(i) => {
                let line = &rest[..i];
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
                Some(line)
            }
            None => {
                let line = rest;
                rest = &[];
                Some(line)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The snippet as it was made before (clean everything, then cut).
    fn snippet_reference(text: &str) -> String {
        let t = clean_text(text);
        match t.char_indices().nth(SNIPPET_CHARS) {
            Some((i, _)) => format!("{}…", &t[..i]),
            None => t,
        }
    }

    #[test]
    fn the_snippet_is_the_cleaned_text_cut() {
        let long = "word ".repeat(100);
        for text in [
            "",
            "   ",
            "a",
            " \t\r\nhello\u{7}world\u{0}  again\u{2003}end ",
            "x".repeat(SNIPPET_CHARS).as_str(),
            format!("{} ", "x".repeat(SNIPPET_CHARS)).as_str(),
            format!("{} y", "x".repeat(SNIPPET_CHARS - 1)).as_str(),
            format!("{} y", "x".repeat(SNIPPET_CHARS)).as_str(),
            format!("{}ü€😀", "é".repeat(SNIPPET_CHARS - 2)).as_str(),
            long.as_str(),
        ] {
            assert_eq!(snippet(text), snippet_reference(text), "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_snippet_matches_the_reference(text in "(\\PC|[ \t\r\n\u{0}-\u{1f}\u{2003}]){0,400}") {
            proptest::prop_assert_eq!(snippet(&text), snippet_reference(&text));
        }
    }
    use proptest::prelude::*;

    #[test]
    fn trace_headers_and_line_endings_do_not_change_the_content_hash() {
        let a = b"Received: from a\r\n by b\r\nSubject: hi\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n";
        let b = b"Return-Path: <z@q>\nSubject: hi\nMessage-ID: <x@y>\n\nbody\n\n";
        let c = b"Subject: hi\nMessage-ID: <x@y>\n\nbody changed\n";
        assert_eq!(content_hash(a), content_hash(b));
        assert_ne!(content_hash(a), content_hash(c));
    }

    #[test]
    fn authentication_results_are_read() {
        let r = parse_authentication_results(
            "mx.example.com; spf=pass (sender IP is 1.2.3.4) smtp.mailfrom=a@b.c; \
             dkim=fail (bad sig) header.d=b.c; dmarc=pass header.from=b.c",
        );
        let got: Vec<_> = r
            .iter()
            .map(|a| (a.method.as_str(), a.result.as_str()))
            .collect();
        assert_eq!(got, [("spf", "pass"), ("dkim", "fail"), ("dmarc", "pass")]);
        assert!(r.iter().all(|a| a.authserv_id == "mx.example.com"));
        assert!(parse_authentication_results("mx.example.com; none").is_empty());
    }

    #[test]
    fn auto_replies_and_bounces_are_flagged() {
        let p = parse(b"From: a@b\r\nAuto-Submitted: auto-replied\r\nSubject: away\r\n\r\nx\r\n");
        assert!(p.flags.auto_reply && !p.flags.bounce);
        let p = parse(b"From: a@b\r\nAuto-Submitted: no\r\n\r\nx\r\n");
        assert!(!p.flags.auto_reply);
        let p = parse(b"From: a@b\r\nPrecedence: auto_reply\r\n\r\nx\r\n");
        assert!(p.flags.auto_reply);
        let dsn = b"From: MAILER-DAEMON@mx.example\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nStatus: 5.0.0\r\n--b--\r\n";
        assert!(parse(dsn).flags.bounce);
    }

    #[test]
    fn ids_are_normalised() {
        let p = parse(
            b"Message-ID: < a@b >\r\nIn-Reply-To: <p@q>\r\nReferences: <r@s>\r\n <p@q>\r\n\r\nx",
        );
        assert_eq!(p.message_id.as_deref(), Some("a@b"));
        assert_eq!(p.in_reply_to, ["p@q"]);
        assert_eq!(p.references, ["r@s", "p@q"]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let p = parse(&raw);
            prop_assert_eq!(p.raw_sha256, <[u8; 32]>::from(Sha256::digest(&raw)));
        }

        #[test]
        fn mime_shaped_garbage_never_panics(
            headers in proptest::collection::vec("[A-Za-z-]{1,20}: [ -~]{0,60}", 0..12),
            ct in prop::sample::select(vec![
                "multipart/mixed; boundary=\"b\"", "multipart/report; report-type=delivery-status; boundary=b",
                "text/plain; charset=iso-2022-jp", "text/html; charset=bogus-8", "message/rfc822",
                "multipart/alternative; boundary=", "application/octet-stream",
            ]),
            cte in prop::sample::select(vec!["base64", "quoted-printable", "8bit", "x-uuencode", "garbage"]),
            body in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let mut raw = Vec::new();
            for h in &headers {
                raw.extend_from_slice(h.as_bytes());
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(format!("Content-Type: {ct}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n").as_bytes());
            raw.extend_from_slice(b"--b\r\nContent-Type: text/plain; charset=\"=?x?q?y?=\"\r\n\r\n");
            raw.extend_from_slice(&body);
            raw.extend_from_slice(b"\r\n--b--\r\n");
            let _ = parse(&raw);
        }
    }
}
