//! Threading decisions, pure: which conversation of an inbox a parsed mail belongs to, given
//! what the inbox has seen. Never by subject, never across inboxes (every lookup is per inbox,
//! every token is bound to its inbox by a MAC).
//!
//! Order of evidence:
//! 1. a valid reply token in the recipient address (`support+<token>@…`);
//! 2. one of our own outbound Message-IDs in `In-Reply-To` or `References`;
//! 3. a Message-ID the inbox has seen: `In-Reply-To` first, then `References` newest first,
//!    then the mail's own Message-ID (a reply that arrived earlier named it);
//! 4. otherwise a new conversation.
//!
//! After the mail is stored, its own Message-ID and every id it references are recorded for
//! the conversation (first claim wins), so a later reply — or an earlier message arriving
//! late — joins it.

use crate::keys::IndexKey;
use crate::parse::ParsedMail;
use std::collections::HashMap;
use uuid::Uuid;

/// What threaded a message (stored as `thread_match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadMatch {
    ReplyToken,
    OwnMessageId,
    InReplyTo,
    References,
    MessageId,
    None,
}

impl ThreadMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReplyToken => "reply_token",
            Self::OwnMessageId => "own_message_id",
            Self::InReplyTo => "in_reply_to",
            Self::References => "references",
            Self::MessageId => "message_id",
            Self::None => "none",
        }
    }
}

/// Message-IDs to look up in the inbox's index, most telling first.
pub fn lookup_order(mail: &ParsedMail) -> Vec<(&str, ThreadMatch)> {
    let mut out: Vec<(&str, ThreadMatch)> = Vec::new();
    fn push<'a>(id: &'a str, m: ThreadMatch, out: &mut Vec<(&'a str, ThreadMatch)>) {
        if !out.iter().any(|(x, _)| *x == id) {
            out.push((id, m));
        }
    }
    for id in &mail.in_reply_to {
        push(id, ThreadMatch::InReplyTo, &mut out);
    }
    for id in mail.references.iter().rev() {
        push(id, ThreadMatch::References, &mut out);
    }
    if let Some(id) = &mail.message_id {
        push(id, ThreadMatch::MessageId, &mut out);
    }
    out
}

/// Every Message-ID the mail makes known to its conversation.
pub fn ids_to_record(mail: &ParsedMail) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let all = mail
        .message_id
        .iter()
        .chain(&mail.in_reply_to)
        .chain(&mail.references);
    for id in all {
        if !out.contains(&id.as_str()) {
            out.push(id);
        }
    }
    out
}

/// Steps 1–2: what the mail itself proves, without any lookup.
pub fn by_token(
    key: &IndexKey,
    inbox: Uuid,
    reply_token: Option<&str>,
    mail: &ParsedMail,
) -> Option<(Uuid, ThreadMatch)> {
    if let Some(conv) = reply_token.and_then(|t| key.verify_reply_token(inbox, t)) {
        return Some((conv, ThreadMatch::ReplyToken));
    }
    mail.in_reply_to
        .iter()
        .chain(mail.references.iter().rev())
        .find_map(|id| key.conversation_of_outbound_id(inbox, id))
        .map(|c| (c, ThreadMatch::OwnMessageId))
}

/// Step 3: the first id (in [`lookup_order`]) the inbox's index knows. `found` maps blind
/// indexes to conversations.
pub fn by_index(
    key: &IndexKey,
    mail: &ParsedMail,
    found: &HashMap<String, Uuid>,
) -> Option<(Uuid, ThreadMatch)> {
    lookup_order(mail)
        .into_iter()
        .find_map(|(id, m)| found.get(&key.message_id_hash(id)).map(|c| (*c, m)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;
    use proptest::prelude::*;

    /// A whole inbox's threading with an in-memory index, as the pipeline does it.
    fn thread_all(key: &IndexKey, inbox: Uuid, mails: &[ParsedMail]) -> Vec<Uuid> {
        let mut index: HashMap<String, Uuid> = HashMap::new();
        let mut out = Vec::new();
        for m in mails {
            let conv = by_token(key, inbox, None, m)
                .or_else(|| by_index(key, m, &index))
                .map(|(c, _)| c)
                .unwrap_or_else(Uuid::now_v7);
            for id in ids_to_record(m) {
                index.entry(key.message_id_hash(id)).or_insert(conv);
            }
            out.push(conv);
        }
        out
    }

    #[test]
    fn replies_join_out_of_order_mails_join_and_subjects_never_do() {
        let key = IndexKey::generate();
        let inbox = Uuid::now_v7();
        let a = parse(b"Message-ID: <a@x>\r\nSubject: Hello\r\n\r\n1");
        let b = parse(b"Message-ID: <b@x>\r\nIn-Reply-To: <a@x>\r\nSubject: Re: Hello\r\n\r\n2");
        let c = parse(b"Message-ID: <c@x>\r\nSubject: Re: Hello\r\n\r\n3");
        let e = parse(b"Message-ID: <e@x>\r\nReferences: <d@x>\r\n\r\n5");
        let d = parse(b"Message-ID: <d@x>\r\n\r\n4");
        let t = thread_all(&key, inbox, &[a, b, c, e, d]);
        assert_eq!(t[0], t[1]);
        assert_ne!(t[0], t[2], "same subject alone never threads");
        assert_eq!(t[3], t[4], "a late original joins the reply that named it");
        assert_ne!(t[0], t[3]);
    }

    #[test]
    fn our_outbound_ids_thread_even_without_an_index() {
        let key = IndexKey::generate();
        let inbox = Uuid::now_v7();
        let conv = Uuid::now_v7();
        let ours = key.outbound_message_id(inbox, conv, "pv.example");
        let raw = format!("Message-ID: <r@x>\r\nIn-Reply-To: <{ours}>\r\n\r\nhi");
        let m = parse(raw.as_bytes());
        assert_eq!(
            by_token(&key, inbox, None, &m),
            Some((conv, ThreadMatch::OwnMessageId))
        );
        assert_eq!(by_token(&key, Uuid::now_v7(), None, &m), None);
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic_threading(
            mid in "[ -~]{0,40}", irt in "[ -~]{0,80}", refs in "[ -~]{0,200}", token in "[ -~]{0,60}"
        ) {
            let key = IndexKey::generate();
            let raw = format!("Message-ID: {mid}\r\nIn-Reply-To: {irt}\r\nReferences: {refs}\r\n\r\nx");
            let m = parse(raw.as_bytes());
            let _ = by_token(&key, Uuid::nil(), Some(&token), &m);
            let _ = by_index(&key, &m, &HashMap::new());
            let _ = thread_all(&key, Uuid::nil(), &[m.clone(), m]);
        }
    }
}
