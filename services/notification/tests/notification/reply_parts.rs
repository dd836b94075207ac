//! A reply written over the API with an HTML alternative and attachments arrives at the relay
//! as multipart/mixed ⊃ multipart/alternative (text, HTML) + the files, byte for byte, as
//! Python's `email` package parses it; the conversation lists the files; bad files get clear
//! errors.

use crate::helpers::*;
use crate::smtp_sink::SmtpSink;
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What Python's email parser makes of a received message: its tree of content types and,
/// for leaves, filename and SHA-256 of the decoded payload (text parts: the decoded text too).
const PARSE: &str = r#"
import email, email.policy, hashlib, json, sys
raw = open(sys.argv[1], "rb").read()
msg = email.message_from_bytes(raw, policy=email.policy.default)
def walk(p):
    node = {"type": p.get_content_type()}
    if p.is_multipart():
        node["parts"] = [walk(c) for c in p.iter_parts()]
    else:
        data = p.get_payload(decode=True)
        node["sha256"] = hashlib.sha256(data).hexdigest()
        node["len"] = len(data)
        node["filename"] = p.get_filename()
        node["disposition"] = p.get_content_disposition()
        if p.get_content_maintype() == "text" and node["disposition"] != "attachment":
            node["text"] = p.get_content()
    return node
print(json.dumps(walk(msg)))
"#;

fn parse_with_python(mail: &str) -> Value {
    let dir = postvak_platform::testkit::TempDir::new();
    let eml = dir.path().join("m.eml");
    std::fs::write(&eml, mail).unwrap();
    let script = dir.path().join("parse.py");
    std::fs::write(&script, PARSE).unwrap();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&eml)
        .output()
        .expect("python3 is needed to parse the received mail");
    assert!(
        out.status.success(),
        "python could not parse the mail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha(b: &[u8]) -> String {
    hex_of(&Sha256::digest(b))
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn a_reply_with_html_and_attachments_arrives_as_multipart_with_exact_bytes() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        sink.start(false).await;
        env.start_notification_to(&sink);
        let app = env.spawn_app().await;
        let t = &env.acme;
        let c = env
            .deliver(
                t,
                &mail(
                    &t.address,
                    "parts@example.org",
                    "Invoice",
                    "",
                    "Where is it?",
                ),
            )
            .await;
        // Every byte value, so a wrong transfer encoding shows.
        let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let csv = "id;name\r\n1;Zoë\r\n".as_bytes().to_vec();
        let html = "<p>Here is your <b>invoice</b> — and the list.</p>";
        let r = app
            .call(
                "POST",
                &format!("/v1/conversations/{}/replies", c.conversation_id),
                &t.alice,
                Some(json!({
                    "body": "Here is your invoice — and the list.",
                    "body_html": html,
                    "attachments": [
                        {"filename": "invoice.bin", "content_type": "application/octet-stream",
                         "content_base64": b64(&binary)},
                        {"filename": "list.csv", "content_type": "text/csv",
                         "content_base64": b64(&csv)}
                    ]
                })),
            )
            .await;
        assert_eq!(r.status, 201, "{backend:?} {:?}", r.body);
        assert_eq!(r.body["attachments"], 2);
        assert_eq!(r.body["body_html"], html);
        let message_id = r.body["id"].as_str().unwrap().to_owned();

        let got = sink.wait_for(1).await;
        let tree = parse_with_python(&got[0]);
        assert_eq!(tree["type"], "multipart/mixed", "{tree}");
        let parts = tree["parts"].as_array().unwrap();
        assert_eq!(parts.len(), 3, "{tree}");
        assert_eq!(parts[0]["type"], "multipart/alternative");
        let alt = parts[0]["parts"].as_array().unwrap();
        assert_eq!(alt[0]["type"], "text/plain");
        assert_eq!(
            alt[0]["text"].as_str().unwrap().trim_end(),
            "Here is your invoice — and the list."
        );
        assert_eq!(alt[1]["type"], "text/html");
        assert_eq!(alt[1]["text"].as_str().unwrap().trim_end(), html);
        assert_eq!(parts[1]["type"], "application/octet-stream");
        assert_eq!(parts[1]["filename"], "invoice.bin");
        assert_eq!(parts[1]["disposition"], "attachment");
        assert_eq!(parts[1]["len"], binary.len());
        assert_eq!(parts[1]["sha256"], sha(&binary));
        assert_eq!(parts[2]["type"], "text/csv");
        assert_eq!(parts[2]["filename"], "list.csv");
        assert_eq!(parts[2]["sha256"], sha(&csv), "{tree}");

        // The conversation shows the reply's files like an inbound message's.
        let conv = app
            .call(
                "GET",
                &format!("/v1/conversations/{}", c.conversation_id),
                &t.alice,
                None,
            )
            .await;
        assert_eq!(conv.status, 200);
        let msg = conv.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == message_id.as_str())
            .unwrap()
            .clone();
        let files = msg["attachment_list"].as_array().unwrap();
        assert_eq!(files.len(), 2, "{msg}");
        assert_eq!(files[0]["filename"], "invoice.bin");
        assert_eq!(files[0]["content_type"], "application/octet-stream");
        assert_eq!(files[0]["size"], binary.len());
        assert_eq!(files[0]["sha256"], sha(&binary));
        assert_eq!(files[1]["filename"], "list.csv");
        assert_eq!(files[1]["size"], csv.len());
        assert_eq!(msg["body_html"], html);
        sink.stop().await;
    }
}

#[tokio::test]
async fn an_inbound_mail_with_an_attachment_lists_it_in_the_conversation() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let t = &env.acme;
        let raw = format!(
            "From: Eve <eve@example.org>\r\nTo: {}\r\nSubject: Scan\r\nMessage-ID: <scan@example.org>\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n\
             --b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n",
            t.address
        );
        let d = env.deliver(t, raw.as_bytes()).await;
        let conv = app
            .call(
                "GET",
                &format!("/v1/conversations/{}", d.conversation_id),
                &t.alice,
                None,
            )
            .await;
        let m = &conv.body["messages"][0];
        assert_eq!(m["attachments"], 1, "{backend:?} {m}");
        assert_eq!(m["attachment_list"][0]["filename"], "scan.pdf");
        assert_eq!(m["attachment_list"][0]["content_type"], "application/pdf");
        assert_eq!(m["attachment_list"][0]["size"], 9);
    }
}

#[tokio::test]
async fn bad_attachments_get_clear_errors_and_queue_nothing() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let app = env.spawn_app().await;
    let t = &env.acme;
    let c = env
        .deliver(
            t,
            &mail(&t.address, "bad@example.org", "Files", "", "Send them."),
        )
        .await;
    let path = format!("/v1/conversations/{}/replies", c.conversation_id);
    let att = |name: &str, ct: &str, data: &str| {
        json!({"body": "See attached.", "attachments": [
            {"filename": name, "content_type": ct, "content_base64": data}]})
    };
    let over_ten_mib = b64(&vec![7u8; (10 << 20) + 1024]);
    for (body, status, code) in [
        (
            att("a.txt", "text/plain", "not base64!"),
            422,
            "invalid_attachment_base64",
        ),
        (
            att("a.txt", "text plain", "aGk="),
            422,
            "invalid_attachment_content_type",
        ),
        (
            att("a.txt", "text/plain; charset=utf-8", "aGk="),
            422,
            "invalid_attachment_content_type",
        ),
        (
            att("../etc/passwd", "text/plain", "aGk="),
            422,
            "invalid_attachment_filename",
        ),
        (
            att("", "text/plain", "aGk="),
            422,
            "invalid_attachment_filename",
        ),
        (
            att("big.bin", "application/octet-stream", &over_ten_mib),
            413,
            "attachments_too_large",
        ),
        (
            json!({"body": "x", "body_html": "y".repeat(600 << 10)}),
            413,
            "reply_body_too_large",
        ),
        (
            json!({"body": "x", "attachments": (0..21)
                .map(|i| json!({"filename": format!("{i}.txt"), "content_type": "text/plain", "content_base64": "aGk="}))
                .collect::<Vec<_>>()}),
            422,
            "too_many_attachments",
        ),
        (
            json!({"body": "y".repeat(16 << 20)}),
            413,
            "reply_too_large",
        ),
    ] {
        let r = app.call("POST", &path, &t.alice, Some(body)).await;
        assert_eq!(r.status, status, "{:?}", r.body);
        assert_eq!(r.body["code"], code, "{:?}", r.body);
        assert_eq!(r.content_type, "application/problem+json");
    }
    // None of them became a message.
    let conv = app
        .call(
            "GET",
            &format!("/v1/conversations/{}", c.conversation_id),
            &t.alice,
            None,
        )
        .await;
    assert_eq!(conv.body["messages"].as_array().unwrap().len(), 1);
}
