//! Downloads: the bytes behind a conversation's file ids (bodies, attachments, inline images,
//! reply files) and an inbound message's original, for whoever may read the conversation and
//! nobody else — mail delivered through ingest's real pipeline, fetched over real HTTP.

use crate::helpers::*;
use base64::Engine;
use postvak_core::access::{Grantee, InboxRole, TenantRole};
use postvak_directory::identity::SessionKind;
use postvak_platform::cell::Principal;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A PNG signature and a few bytes that are not UTF-8: what arrives must be these bytes.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00logo";
const PDF: &[u8] = b"%PDF-1.4\n\xe2\xe3\xcf\xd3 the invoice\n%%EOF";
const TEXT: &str = "Hello, the invoice is attached.\r\nGr\u{fc}\u{df}e, Eve";
const HTML: &str = "<p>Hello, <img src=\"cid:logo@x\"> the invoice is attached.</p>\
                    <script>alert(document.cookie)</script>";

/// A mail with a text and an HTML body, an inline image the HTML refers to, and a PDF with a
/// non-ASCII name (RFC 2231).
fn mail_with_files(message_id: &str) -> Vec<u8> {
    format!(
        "From: Eve Customer <eve@example.org>\r\nTo: support@acme.test\r\nSubject: Invoice\r\n\
         Message-ID: <{message_id}>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0100\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"mixed\"\r\n\r\n\
         --mixed\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
         --alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         {TEXT}\r\n\
         --alt\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n\
         --rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{HTML}\r\n\
         --rel\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\
         Content-ID: <logo@x>\r\nContent-Disposition: inline; filename=\"logo.png\"\r\n\r\n\
         {png}\r\n--rel--\r\n--alt--\r\n\
         --mixed\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf\r\n\r\n\
         {pdf}\r\n--mixed--\r\n",
        png = B64.encode(PNG),
        pdf = B64.encode(PDF),
    )
    .into_bytes()
}

/// A download as the client sees it.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn fetch(app: &TestApp, path: &str, who: &Agent, headers: &[(&str, &str)]) -> Got {
    let mut req = app
        .client
        .get(format!("{}{path}", app.base))
        .bearer_auth(&who.token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    Got {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.unwrap().to_vec(),
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn id(v: &Value) -> Uuid {
    v.as_str()
        .unwrap_or_else(|| panic!("not an id: {v}"))
        .parse()
        .unwrap()
}

/// Delivers `raw` and returns the conversation id and its first message as the API shows it.
async fn delivered(env: &TestEnv, app: &TestApp, raw: &[u8]) -> (Uuid, Value) {
    let d = env.deliver(env.inbox, raw).await;
    env.wait_for_conversation(d.conversation_id, 1).await;
    let c = app
        .get(
            &format!("/v1/conversations/{}", d.conversation_id),
            &env.alice,
        )
        .await;
    assert_eq!(c.status, 200, "{c:?}");
    (d.conversation_id, c.body["messages"][0].clone())
}

/// An agent of another tenant (same cells), with a conversation of their own.
async fn foreign_agent(env: &TestEnv) -> (Agent, Uuid) {
    let tenant = env.directory.create_tenant("Other", None).await.unwrap();
    let ctx = env
        .cells
        .context(tenant, Principal::Service { name: "test" })
        .await
        .unwrap();
    let inbox = env
        .directory
        .create_inbox(&ctx, "Help", &["help@other.test".to_owned()])
        .await
        .unwrap()
        .id;
    let user = env
        .directory
        .create_user(&ctx, "mallory@other.test", "Mallory", TenantRole::Admin)
        .await
        .unwrap();
    env.directory
        .grant_inbox(
            &ctx,
            inbox,
            Grantee::User(user.id),
            InboxRole::Admin,
            None,
            None,
        )
        .await
        .unwrap();
    let s = env
        .directory
        .create_session(tenant, user.id, SessionKind::Bearer, &[])
        .await
        .unwrap();
    let raw = b"From: Zed <zed@example.net>\r\nTo: help@other.test\r\nSubject: Theirs\r\n\
                Message-ID: <theirs@example.net>\r\n\r\nTheir own mail.\r\n"
        .to_vec();
    let parsed = postvak_ingest::Ingestor::parse(std::sync::Arc::new(raw.clone()))
        .await
        .unwrap();
    let d = env
        .ingestor
        .deliver_to_inbox(
            &ctx,
            inbox,
            &raw,
            &parsed,
            None,
            Default::default(),
            postvak_ingest::pipeline::Source::Api,
        )
        .await
        .unwrap();
    (
        Agent {
            id: user.id,
            token: s.token,
        },
        d.conversation_id,
    )
}

#[tokio::test]
async fn bodies_attachments_inline_images_and_the_original_download_byte_for_byte() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let raw = mail_with_files("files-1@example.org");
        let (conv, m) = delivered(&env, &app, &raw).await;
        let base = format!("/v1/conversations/{conv}");

        // The text body: UTF-8, as an attachment by default, never sniffed, sandboxed.
        let text = fetch(
            &app,
            &format!("{base}/files/{}", id(&m["text_blob_id"])),
            &env.reader,
            &[],
        )
        .await;
        assert_eq!(text.status, 200, "{backend:?}: {text:?}");
        assert_eq!(String::from_utf8(text.body.clone()).unwrap(), TEXT);
        assert_eq!(text.header("content-type"), "text/plain; charset=utf-8");
        assert_eq!(
            text.header("content-disposition"),
            "attachment; filename=\"message.txt\"; filename*=UTF-8''message.txt"
        );
        assert_eq!(text.header("etag"), format!("\"{}\"", sha(&text.body)));
        assert_eq!(text.header("cache-control"), "private, no-cache");
        assert_eq!(text.header("x-content-type-options"), "nosniff");
        assert_eq!(
            text.header("content-length"),
            text.body.len().to_string().as_str()
        );

        // The HTML body, script and all, but sandboxed and never inline.
        let html_path = format!("{base}/files/{}", id(&m["html_blob_id"]));
        let html = fetch(&app, &html_path, &env.alice, &[]).await;
        assert_eq!(html.status, 200, "{backend:?}: {html:?}");
        assert_eq!(String::from_utf8(html.body.clone()).unwrap(), HTML);
        assert_eq!(html.header("content-type"), "text/html; charset=utf-8");
        assert!(
            html.header("content-security-policy")
                .starts_with("sandbox;"),
            "{html:?}"
        );
        assert!(
            html.header("content-security-policy")
                .contains("default-src 'none'")
        );
        assert_eq!(html.header("x-content-type-options"), "nosniff");
        assert!(
            html.header("content-disposition")
                .starts_with("attachment; filename=\"message.html\"")
        );
        let inline_html = fetch(
            &app,
            &format!("{html_path}?disposition=inline"),
            &env.alice,
            &[],
        )
        .await;
        assert_eq!(inline_html.status, 400, "{backend:?}: {inline_html:?}");
        assert_eq!(inline_html.json()["code"], "inline_not_allowed");
        assert_eq!(
            inline_html.header("content-type"),
            "application/problem+json"
        );

        // The attachments, as listed: the inline image and the PDF.
        let list = m["attachment_list"].as_array().unwrap();
        assert_eq!(list.len(), 2, "{backend:?}: {m}");
        let logo = list.iter().find(|a| a["inline"] == true).unwrap();
        let pdf = list.iter().find(|a| a["inline"] == false).unwrap();
        // The HTML's `cid:` names the inline image's file.
        assert_eq!(logo["content_id"], "logo@x", "{backend:?}: {logo}");
        assert!(pdf.get("content_id").is_none(), "{pdf}");
        let logo_path = format!("{base}/files/{}", id(&logo["id"]));
        let got = fetch(&app, &logo_path, &env.alice, &[]).await;
        assert_eq!(got.status, 200, "{backend:?}: {got:?}");
        assert_eq!(got.body, PNG);
        assert_eq!(got.header("content-type"), "image/png");
        assert_eq!(
            got.header("etag"),
            format!("\"{}\"", logo["sha256"].as_str().unwrap())
        );
        assert_eq!(logo["sha256"], sha(PNG));
        assert_eq!(
            got.header("content-disposition"),
            "attachment; filename=\"logo.png\"; filename*=UTF-8''logo.png"
        );
        let inline = fetch(
            &app,
            &format!("{logo_path}?disposition=inline"),
            &env.alice,
            &[],
        )
        .await;
        assert_eq!(inline.status, 200, "{backend:?}: {inline:?}");
        assert_eq!(inline.body, PNG);
        assert!(
            inline
                .header("content-disposition")
                .starts_with("inline; filename=\"logo.png\"")
        );
        let bad = fetch(
            &app,
            &format!("{logo_path}?disposition=sideways"),
            &env.alice,
            &[],
        )
        .await;
        assert_eq!(bad.status, 400, "{backend:?}: {bad:?}");

        let got = fetch(
            &app,
            &format!("{base}/files/{}", id(&pdf["id"])),
            &env.alice,
            &[],
        )
        .await;
        assert_eq!(got.status, 200, "{backend:?}: {got:?}");
        assert_eq!(got.body, PDF);
        assert_eq!(got.header("content-type"), "application/pdf");
        assert_eq!(got.header("etag"), format!("\"{}\"", sha(PDF)));
        assert_eq!(
            got.header("content-disposition"),
            "attachment; filename=\"Rechnung M_rz.pdf\"; \
             filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf"
        );
        assert!(
            got.headers.get("content-security-policy").is_none(),
            "a PDF viewer does not run sandboxed: {got:?}"
        );

        // The original, exactly the bytes that were sent.
        let message = id(&m["id"]);
        let orig = fetch(
            &app,
            &format!("{base}/messages/{message}/raw"),
            &env.reader,
            &[],
        )
        .await;
        assert_eq!(orig.status, 200, "{backend:?}: {orig:?}");
        assert_eq!(orig.body, raw);
        assert_eq!(orig.header("content-type"), "message/rfc822");
        assert_eq!(
            orig.header("content-disposition"),
            "attachment; filename=\"message.eml\"; filename*=UTF-8''message.eml"
        );
        assert_eq!(orig.header("etag"), format!("\"{}\"", sha(&raw)));
        assert!(
            orig.header("content-security-policy")
                .starts_with("sandbox")
        );
        // An id that is no message of this conversation is not found.
        let unknown = fetch(
            &app,
            &format!("{base}/messages/{}/raw", Uuid::now_v7()),
            &env.alice,
            &[],
        )
        .await;
        assert_eq!(unknown.status, 404, "{backend:?}: {unknown:?}");
        assert_eq!(unknown.json()["code"], "not_found");
    }
}

#[tokio::test]
async fn if_none_match_with_the_current_etag_answers_304_without_a_body() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let (conv, m) = delivered(&env, &app, &mail_with_files("etag-1@example.org")).await;
        let pdf = m["attachment_list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["inline"] == false)
            .unwrap()
            .clone();
        let path = format!("/v1/conversations/{conv}/files/{}", id(&pdf["id"]));
        let etag = format!("\"{}\"", pdf["sha256"].as_str().unwrap());
        for sent in [etag.clone(), format!("\"other\", W/{etag}"), "*".to_owned()] {
            let r = fetch(&app, &path, &env.alice, &[("If-None-Match", &sent)]).await;
            assert_eq!(r.status, 304, "{backend:?} {sent}: {r:?}");
            assert!(r.body.is_empty());
            assert_eq!(r.header("etag"), etag);
            assert_eq!(r.header("cache-control"), "private, no-cache");
        }
        let r = fetch(&app, &path, &env.alice, &[("If-None-Match", "\"stale\"")]).await;
        assert_eq!(r.status, 200, "{backend:?}: {r:?}");
        assert_eq!(r.body, PDF);
        let orig = format!("/v1/conversations/{conv}/messages/{}/raw", id(&m["id"]));
        let first = fetch(&app, &orig, &env.alice, &[]).await;
        let again = fetch(
            &app,
            &orig,
            &env.alice,
            &[("If-None-Match", first.header("etag"))],
        )
        .await;
        assert_eq!(again.status, 304, "{backend:?}: {again:?}");
    }
}

#[tokio::test]
async fn nobody_outside_the_conversation_gets_its_files_and_ids_do_not_travel() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let (conv, m) = delivered(&env, &app, &mail_with_files("idor-1@example.org")).await;
        let pdf_id = id(&m["attachment_list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["inline"] == false)
            .unwrap()["id"]);
        let text_id = id(&m["text_blob_id"]);
        let message = id(&m["id"]);
        let paths = [
            format!("/v1/conversations/{conv}/files/{pdf_id}"),
            format!("/v1/conversations/{conv}/files/{text_id}"),
            format!("/v1/conversations/{conv}/messages/{message}/raw"),
        ];
        for p in &paths {
            assert_eq!(fetch(&app, p, &env.alice, &[]).await.status, 200, "{p}");
        }
        let missing = fetch(
            &app,
            &format!("/v1/conversations/{}/files/{pdf_id}", Uuid::now_v7()),
            &env.alice,
            &[],
        )
        .await;
        assert_eq!(missing.status, 404);
        let not_found = missing.json();

        // No grant on the inbox, or joined after the conversation started: 404, the same body
        // as a conversation that does not exist.
        let stranger = env.user("stranger@acme.test", TenantRole::Agent).await;
        let late = env.agent("late@acme.test", InboxRole::Reply).await;
        // Another tenant's admin, with their own conversation.
        let (mallory, theirs) = foreign_agent(&env).await;
        for who in [&stranger, &late, &mallory] {
            for p in &paths {
                let r = fetch(&app, p, who, &[]).await;
                assert_eq!(r.status, 404, "{backend:?} {p}: {r:?}");
                assert_eq!(r.json(), not_found, "{backend:?} {p}");
            }
        }
        // Their own conversation does not lend them our files either.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while app
            .get(&format!("/v1/conversations/{theirs}"), &mallory)
            .await
            .status
            != 200
        {
            assert!(tokio::time::Instant::now() < deadline, "their conversation");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for p in [
            format!("/v1/conversations/{theirs}/files/{pdf_id}"),
            format!("/v1/conversations/{theirs}/messages/{message}/raw"),
        ] {
            let r = fetch(&app, &p, &mallory, &[]).await;
            assert_eq!(r.status, 404, "{backend:?} {p}: {r:?}");
        }

        // Another conversation of the same tenant: its ids are not this one's files.
        let (other, om) = delivered(
            &env,
            &app,
            &mail("other-1@example.org", "Other", "", "Something else."),
        )
        .await;
        assert_ne!(other, conv);
        for p in [
            format!("/v1/conversations/{other}/files/{pdf_id}"),
            format!("/v1/conversations/{other}/files/{text_id}"),
            format!("/v1/conversations/{other}/messages/{message}/raw"),
            format!("/v1/conversations/{conv}/files/{}", id(&om["text_blob_id"])),
            format!("/v1/conversations/{conv}/messages/{}/raw", id(&om["id"])),
        ] {
            let r = fetch(&app, &p, &env.alice, &[]).await;
            assert_eq!(r.status, 404, "{backend:?} {p}: {r:?}");
            assert_eq!(r.json(), not_found, "{backend:?} {p}");
        }
    }
}

/// The contact holding `address`, once the contacts consumer linked it to a conversation.
async fn linked_contact(env: &TestEnv, address: &str) -> Uuid {
    let svc = postvak_conversation::contacts::Contacts::new(env.cells.clone());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(id) = svc.find_by_address(&env.ctx, address).await.unwrap()
            && let Some(c) = svc.get(&env.ctx, id).await.unwrap()
            && c.conversation_count >= 1
        {
            return id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no contact for {address}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reply_files_download_and_answer_410_once_erased() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let (conv, _) = delivered(
            &env,
            &app,
            &mail("ask-1@example.org", "Contract", "", "Send me the contract."),
        )
        .await;
        let contract = b"%PDF-1.7\n\x00\x01\x02 the contract".to_vec();
        let notes = "line one\nline two\n".as_bytes().to_vec();
        let reply = app
            .post(
                &format!("/v1/conversations/{conv}/replies"),
                &env.alice,
                json!({"body": "Here it is.", "attachments": [
                    {"filename": "contract.pdf", "content_type": "application/pdf",
                     "content_base64": B64.encode(&contract)},
                    {"filename": "notes.txt", "content_type": "text/plain",
                     "content_base64": B64.encode(&notes)}
                ]}),
            )
            .await;
        assert_eq!(reply.status, 201, "{backend:?}: {reply:?}");
        let list = reply.body["attachment_list"].as_array().unwrap().clone();
        let path = |i: usize| format!("/v1/conversations/{conv}/files/{}", id(&list[i]["id"]));

        let got = fetch(&app, &path(0), &env.bob, &[]).await;
        assert_eq!(got.status, 200, "{backend:?}: {got:?}");
        assert_eq!(got.body, contract);
        assert_eq!(got.header("content-type"), "application/pdf");
        assert_eq!(got.header("etag"), format!("\"{}\"", sha(&contract)));
        assert_eq!(list[0]["sha256"], sha(&contract));
        assert_eq!(
            got.header("content-disposition"),
            "attachment; filename=\"contract.pdf\"; filename*=UTF-8''contract.pdf"
        );
        let inline = fetch(
            &app,
            &format!("{}?disposition=inline", path(1)),
            &env.reader,
            &[],
        )
        .await;
        assert_eq!(inline.status, 200, "{backend:?}: {inline:?}");
        assert_eq!(inline.body, notes);
        assert_eq!(inline.header("content-type"), "text/plain; charset=utf-8");
        assert!(
            inline
                .header("content-disposition")
                .starts_with("inline; filename=\"notes.txt\"")
        );
        // A reply has no stored original.
        let raw = fetch(
            &app,
            &format!(
                "/v1/conversations/{conv}/messages/{}/raw",
                id(&reply.body["id"])
            ),
            &env.alice,
            &[],
        )
        .await;
        assert_eq!(raw.status, 404, "{backend:?}: {raw:?}");

        // The customer is erased: the reply's files are gone, and say so.
        let eve = linked_contact(&env, "eve@example.org").await;
        let admin = env.user("dpo@acme.test", TenantRole::Admin).await;
        let erased = app
            .call("DELETE", &format!("/v1/contacts/{eve}"), &admin, None, &[])
            .await;
        assert_eq!(erased.status, 200, "{backend:?}: {erased:?}");
        for (i, file) in list.iter().enumerate() {
            let tag = format!("\"{}\"", file["sha256"].as_str().unwrap());
            for headers in [vec![], vec![("If-None-Match", tag.as_str())]] {
                let r = fetch(&app, &path(i), &env.alice, &headers).await;
                assert_eq!(r.status, 410, "{backend:?} {i}: {r:?}");
                assert_eq!(r.json()["code"], "file_erased");
                assert_eq!(r.header("content-type"), "application/problem+json");
            }
        }
        // The conversation still lists them (ADR 0024); the inbound mail stays readable (ADR 0012).
        let c = app
            .get(&format!("/v1/conversations/{conv}"), &env.alice)
            .await;
        assert_eq!(
            c.body["messages"][1]["attachment_list"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let text = fetch(
            &app,
            &format!(
                "/v1/conversations/{conv}/files/{}",
                id(&c.body["messages"][0]["text_blob_id"])
            ),
            &env.alice,
            &[],
        )
        .await;
        assert_eq!(text.status, 200, "{backend:?}: {text:?}");
    }
}
