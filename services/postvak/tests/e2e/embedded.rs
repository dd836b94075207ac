//! The embedded default: `postvak` with no configuration at all.

use crate::helpers::*;
use postvak_platform::testkit::TempDir;
use serde_json::json;

#[tokio::test]
async fn first_start_serves_the_demo_tenant_and_survives_a_restart() {
    let dir = TempDir::new();
    let server = Server::start(command(&dir));
    let key = server.api_key.clone().expect("the demo API key is printed");
    assert!(key.starts_with("pvk_"), "{key}");
    let c = client();

    let health: serde_json::Value = c
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = c.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cell:local:database", "cell:local:bus"]);

    let page: serde_json::Value = c
        .get(server.url("/v1/inboxes"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(
        page["items"][0]["addresses"],
        json!(["support@demo.postvak.test"])
    );
    let inbox_id = page["items"][0]["id"].as_str().unwrap().to_owned();

    // Create an inbox and read it back.
    let created = c
        .post(server.url("/v1/inboxes"))
        .bearer_auth(&key)
        .json(&json!({"name": "Sales", "addresses": ["Sales@Demo.Postvak.Test", "deals@demo.postvak.test"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    assert_eq!(
        created["addresses"],
        json!(["deals@demo.postvak.test", "sales@demo.postvak.test"])
    );

    // Data and key survive a restart; the process stops cleanly on SIGTERM.
    let status = server.stop();
    assert!(status.success(), "exit status {status}");
    let server = Server::start(command(&dir));
    assert_eq!(
        server.api_key.as_deref(),
        Some(key.as_str()),
        "same demo key shown again"
    );
    let page: serde_json::Value = c
        .get(server.url("/v1/inboxes"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], inbox_id);

    // The log verifies.
    drop(server);
    let (code, out, err) = run({
        let mut c = command(&dir);
        c.args(["audit", "verify"]);
        c
    });
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("intact"), "{out}");
}

#[tokio::test]
async fn bad_requests_get_problem_json() {
    let dir = TempDir::new();
    let server = Server::start(command(&dir));
    let key = server.api_key.clone().unwrap();
    let c = client();

    assert_problem(
        c.get(server.url("/v1/inboxes")).send().await.unwrap(),
        401,
        "unauthenticated",
    )
    .await;
    assert_problem(
        c.get(server.url("/v1/inboxes"))
            .bearer_auth("pvk_00000000000000000000000000000000_nope")
            .send()
            .await
            .unwrap(),
        401,
        "unauthenticated",
    )
    .await;
    // A well-formed key id with the wrong secret.
    let forged = format!("{}_{}", &key[..key.rfind('_').unwrap()], "AAAA");
    assert_problem(
        c.get(server.url("/v1/inboxes"))
            .bearer_auth(forged)
            .send()
            .await
            .unwrap(),
        401,
        "unauthenticated",
    )
    .await;

    let missing = c
        .get(server.url("/v1/inboxes/0190c5d2-0000-7000-8000-000000000000"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let missing_body = assert_problem(missing, 404, "not_found").await;
    let malformed = c
        .get(server.url("/v1/inboxes/not-a-uuid"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let malformed_body = assert_problem(malformed, 404, "not_found").await;
    assert_eq!(
        missing_body, malformed_body,
        "a malformed id is indistinguishable from a missing one"
    );

    assert_problem(
        c.post(server.url("/v1/inboxes"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
        400,
        "invalid_json",
    )
    .await;
    assert_problem(
        c.post(server.url("/v1/inboxes"))
            .bearer_auth(&key)
            .json(&json!({"name": "X", "addresses": ["nobody"]}))
            .send()
            .await
            .unwrap(),
        422,
        "invalid_address",
    )
    .await;
    assert_problem(
        c.post(server.url("/v1/inboxes"))
            .bearer_auth(&key)
            .json(&json!({"name": "Dup", "addresses": ["support@demo.postvak.test"]}))
            .send()
            .await
            .unwrap(),
        409,
        "address_taken",
    )
    .await;
    assert_problem(
        c.get(server.url("/v1/inboxes?limit=0"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        400,
        "invalid_limit",
    )
    .await;
    assert_problem(
        c.get(server.url("/no/such/route")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;

    // Nothing above changed anything: still one inbox.
    let page: serde_json::Value = c
        .get(server.url("/v1/inboxes"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
}

#[tokio::test]
async fn metrics_and_openapi_are_served() {
    let dir = TempDir::new();
    let server = Server::start(command(&dir));
    let c = client();
    let _ = c.get(server.url("/healthz")).send().await.unwrap();
    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("postvak_http_requests_total"), "{metrics}");
    let doc: serde_json::Value = c
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        doc, committed,
        "docs/openapi.json is stale: run `postvak openapi --out docs/openapi.json`"
    );
}

#[tokio::test]
async fn tenants_do_not_see_each_other() {
    let dir = TempDir::new();
    // Two tenants through the CLI, before the server starts.
    let admin = |args: &[&str]| {
        let mut c = command(&dir);
        c.arg("admin").args(args);
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "{out}{err}");
        out.trim().to_owned()
    };
    let a = admin(&["create-tenant", "--name", "A"]);
    let b = admin(&["create-tenant", "--name", "B"]);
    let inbox_a = admin(&[
        "create-inbox",
        "--tenant",
        &a,
        "--name",
        "Support",
        "--address",
        "help@a.example",
    ]);
    let key_a = admin(&["issue-key", "--tenant", &a, "--scope", "read"]);
    let key_b = admin(&["issue-key", "--tenant", &b, "--scope", "admin"]);

    let server = Server::start(command(&dir));
    let c = client();
    let ok = c
        .get(server.url(&format!("/v1/inboxes/{inbox_a}")))
        .bearer_auth(&key_a)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let foreign = c
        .get(server.url(&format!("/v1/inboxes/{inbox_a}")))
        .bearer_auth(&key_b)
        .send()
        .await
        .unwrap();
    let foreign = assert_problem(foreign, 404, "not_found").await;
    let none = c
        .get(server.url("/v1/inboxes/0190c5d2-0000-7000-8000-000000000000"))
        .bearer_auth(&key_b)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign, assert_problem(none, 404, "not_found").await);
    let list: serde_json::Value = c
        .get(server.url("/v1/inboxes"))
        .bearer_auth(&key_b)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"] != inbox_a.as_str()),
        "{list}"
    );
    // B can't take A's address either.
    let taken = c
        .post(server.url("/v1/inboxes"))
        .bearer_auth(&key_b)
        .json(&json!({"name": "x", "addresses": ["help@a.example"]}))
        .send()
        .await
        .unwrap();
    assert_problem(taken, 409, "address_taken").await;
    // A read-only key can't create.
    let denied = c
        .post(server.url("/v1/inboxes"))
        .bearer_auth(&key_a)
        .json(&json!({"name": "x", "addresses": ["x@a.example"]}))
        .send()
        .await
        .unwrap();
    assert_problem(denied, 403, "tenant_admin_required").await;
    let me: serde_json::Value = c
        .get(server.url("/v1/me"))
        .bearer_auth(&key_a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["tenant_id"], a.as_str());
    assert_eq!(me["tenant_name"], "A");
}

/// A minimal OTLP/HTTP collector: records the path and content type of every POST.
fn collector() -> (u16, std::sync::mpsc::Receiver<(String, String, usize)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_owned();
                    let (mut len, mut ctype) = (0usize, String::new());
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').unwrap_or((h, ""));
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => len = v.trim().parse().unwrap_or(0),
                            "content-type" => ctype = v.trim().to_owned(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    let _ = tx.send((path, ctype, len));
                    let mut s = stream.try_clone().unwrap();
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn traces_are_exported_over_otlp_when_configured() {
    let (port, received) = collector();
    let dir = TempDir::new();
    let mut cmd = command(&dir);
    cmd.env(
        "POSTVAK_TELEMETRY__OTLP_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    );
    let server = Server::start(cmd);
    let key = server.api_key.clone().unwrap();
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            c.get(server.url("/v1/inboxes"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // Stopping flushes the batch exporter.
    assert!(server.stop().success());
    let (path, ctype, len) = received
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("no OTLP export reached the collector");
    assert_eq!(path, "/v1/traces");
    assert_eq!(ctype, "application/x-protobuf");
    assert!(len > 0);
}

#[tokio::test]
async fn mail_to_the_demo_inbox_is_accepted_and_strangers_are_refused() {
    let dir = TempDir::new();
    let server = Server::start(command(&dir));
    let port = server.smtp_port.expect("the SMTP port is printed");
    let events = |dir: &TempDir| -> u64 {
        let mut c = command(dir);
        c.args(["audit", "verify"]);
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("intact"), "{out}");
        let n = out
            .split(" events")
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap();
        n.parse().unwrap()
    };
    let before = events(&dir);
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
port = int(sys.argv[1])
m = EmailMessage()
m["From"] = "Patient <patient@example.net>"
m["To"] = "support@demo.postvak.test"
m["Subject"] = "Appointment"
m["Message-ID"] = "<e2e-1@example.net>"
m.set_content("Can I come on Tuesday?")
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.ehlo("client.example.net")
    refused = s.send_message(m)
    assert refused == {}, refused
    try:
        s.sendmail("x@example.net", ["nobody@nowhere.example"], m.as_bytes())
        print("RELAYED")
    except smtplib.SMTPRecipientsRefused as e:
        code = list(e.recipients.values())[0][0]
        print("REFUSED", code)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .output()
        .expect("python3 is needed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("REFUSED 550"),
        "never an open relay: {stdout}"
    );
    // The accepted mail became one conversation with one message; the refused one nothing.
    let key = server.api_key.clone().unwrap();
    let page = conversations_until(&server, &key, |p| {
        !p["items"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["items"][0]["message_count"], 1, "{page}");
    drop(server);
    assert!(events(&dir) > before);
}

#[tokio::test]
async fn mail_in_becomes_a_conversation_and_the_reply_goes_out_as_the_inbox() {
    let dir = TempDir::new();
    let server = Server::start(command(&dir));
    let key = server.api_key.clone().unwrap();
    let port = server.smtp_port.unwrap();
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "Pat Ient <pat@example.net>"
m["To"] = "support@demo.postvak.test"
m["Subject"] = "Prescription renewal"
m["Message-ID"] = "<rx-1@example.net>"
m.set_content("Could you renew my prescription?")
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as s:
    s.send_message(m)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = client();
    // The conversation service opens it from the message.received event, asynchronously.
    let page = conversations_until(&server, &key, |p| {
        p["items"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let conv = page["items"][0].clone();
    assert_eq!(conv["subject"], "Prescription renewal");
    assert_eq!(conv["status"], "open");
    let id = conv["id"].as_str().unwrap();
    let detail = c
        .get(server.url(&format!("/v1/conversations/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let etag = detail
        .headers()
        .get("etag")
        .expect("an ETag")
        .to_str()
        .unwrap()
        .to_owned();
    let reply = c
        .post(server.url(&format!("/v1/conversations/{id}/replies")))
        .bearer_auth(&key)
        .header("if-match", &etag)
        .json(&json!({"body": "Renewed — you can pick it up tomorrow."}))
        .send()
        .await
        .unwrap();
    assert!(
        reply.status().is_success(),
        "{}",
        reply.text().await.unwrap()
    );
    // A second reply against the same (now stale) view is refused.
    let stale = c
        .post(server.url(&format!("/v1/conversations/{id}/replies")))
        .bearer_auth(&key)
        .header("if-match", &etag)
        .json(&json!({"body": "Duplicate answer"}))
        .send()
        .await
        .unwrap();
    assert_problem(stale, 409, "stale_conversation").await;
    let detail: serde_json::Value = c
        .get(server.url(&format!("/v1/conversations/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let messages = detail["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{detail}");
    let out = messages
        .iter()
        .find(|m| m["direction"] == "outbound")
        .unwrap();
    assert_eq!(out["from"][0]["address"], "support@demo.postvak.test");
    // Message-IDs are shown without their angle brackets.
    assert_eq!(out["in_reply_to"], json!(["rx-1@example.net"]));
    let our_id = out["message_id_header"].as_str().unwrap().to_owned();
    assert!(our_id.ends_with("@demo.postvak.test"), "{our_id}");

    // The customer answers from a client that keeps only In-Reply-To, with a new subject:
    // it still lands in this conversation (never by subject).
    let answer = r#"
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "Pat Ient <pat@example.net>"
m["To"] = "support@demo.postvak.test"
m["Subject"] = "thanks!"
m["Message-ID"] = "<rx-2@example.net>"
m["In-Reply-To"] = "<" + sys.argv[2] + ">"
m.set_content("Great, thank you.")
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as s:
    s.send_message(m)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", answer, &port.to_string(), &our_id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    conversations_until(&server, &key, |page| {
        let items = page["items"].as_array().unwrap();
        assert_eq!(
            items.len(),
            1,
            "the answer must not open a new conversation: {page}"
        );
        items[0]["message_count"] == 3
    })
    .await;
}

/// A minimal SMTP sink: accepts every mail and hands over its DATA.
fn smtp_sink() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let _ = out.write_all(b"220 sink ESMTP\r\n");
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let cmd = line.trim_end().to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-sink\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("DATA") {
                        let _ = out.write_all(b"354 go on\r\n");
                        let mut data = String::new();
                        loop {
                            let mut l = String::new();
                            if reader.read_line(&mut l).unwrap_or(0) == 0 || l == ".\r\n" {
                                break;
                            }
                            data.push_str(&l);
                        }
                        let _ = tx.send(data);
                        b"250 2.0.0 queued\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = out.write_all(b"221 bye\r\n");
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = out.write_all(reply);
                    line.clear();
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn a_reply_is_sent_through_the_relay_from_the_inbox_address() {
    let (relay, mails) = smtp_sink();
    let dir = TempDir::new();
    let mut cmd = command(&dir);
    cmd.env("POSTVAK_OUTBOUND_SMTP__HOST", "127.0.0.1")
        .env("POSTVAK_OUTBOUND_SMTP__PORT", relay.to_string())
        .env("POSTVAK_OUTBOUND_SMTP__SECURITY", "none");
    let server = Server::start(cmd);
    let key = server.api_key.clone().unwrap();
    let c = client();
    let inbox: serde_json::Value = c
        .get(server.url("/v1/inboxes"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let inbox_id = inbox["items"][0]["id"].as_str().unwrap().to_owned();
    // An agent writes first: a new conversation with an outbound message.
    let created = c
        .post(server.url("/v1/conversations"))
        .bearer_auth(&key)
        .json(&json!({"inbox_id": inbox_id, "to": [{"name": "Pat", "address": "pat@example.net"}], "subject": "Your results", "body": "Your results are in."}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let mail = mails
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the reply reached the relay");
    let headers = mail.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(
        headers.contains("from: support <support@demo.postvak.test>")
            || headers.contains("from: \"support\" <support@demo.postvak.test>"),
        "{mail}"
    );
    assert!(
        headers.contains("to: pat <pat@example.net>") || headers.contains("pat@example.net"),
        "{mail}"
    );
    assert!(headers.contains("message-id: <"), "{mail}");
    assert!(
        headers.contains("reply-to:") && headers.contains("support+"),
        "{mail}"
    );
    assert!(mail.contains("Your results are in."), "{mail}");
}
