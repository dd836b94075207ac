//! Replies go out through a real relay (aiosmtpd, STARTTLS + AUTH) as the inbox.

use crate::helpers::*;
use crate::smtp_sink::SmtpSink;
use postvak_notification::NotificationSettings;
use postvak_proto::events::notification::{REPLY_FAILED, ReplyFailedV1};

fn header<'a>(mail: &'a str, name: &str) -> Option<&'a str> {
    let head = mail.split("\r\n\r\n").next()?;
    head.split("\r\n")
        .find(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l.as_bytes()[name.len()] == b':'
        })
        .map(|l| l[name.len() + 1..].trim())
}

#[tokio::test]
async fn a_reply_arrives_at_the_relay_from_the_inbox_with_its_threading_headers() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        sink.start(false).await;
        env.start_notification_to(&sink);
        let t = &env.acme;
        let first = env
            .deliver(
                t,
                &mail(
                    &t.address,
                    "m1@example.org",
                    "Printer on fire",
                    "",
                    "It burns.",
                ),
            )
            .await;
        env.deliver(
            t,
            &mail(
                &t.address,
                "m2@example.org",
                "Re: Printer on fire",
                "In-Reply-To: <m1@example.org>\r\nReferences: <m1@example.org>",
                "Still burning.",
            ),
        )
        .await;
        let id = env
            .reply(t, first.conversation_id, "We are on our way.\nBring water.")
            .await;
        let got = sink.wait_for(1).await;
        assert_eq!(got.len(), 1, "{backend:?}");
        let m = &got[0];
        assert!(
            header(m, "From").unwrap().contains("<support@acme.test>"),
            "{m}"
        );
        assert_eq!(header(m, "X-Envelope-From"), Some("support@acme.test"));
        assert_eq!(header(m, "X-Envelope-To"), Some("eve@example.org"));
        assert_eq!(
            header(m, "Message-ID"),
            Some(format!("<{id}@acme.test>").as_str())
        );
        assert_eq!(header(m, "In-Reply-To"), Some("<m2@example.org>"));
        assert_eq!(
            header(m, "References"),
            Some("<m1@example.org> <m2@example.org>")
        );
        assert_eq!(header(m, "Subject"), Some("Re: Printer on fire"));
        assert_eq!(header(m, "Reply-To"), Some("support+r-token@acme.test"));
        assert!(header(m, "Content-Type").unwrap().starts_with("text/plain"));
        assert!(m.contains("We are on our way.\r\nBring water."), "{m}");
        let s = env.wait_for_state(t, id, "sent").await;
        assert_eq!(s.attempts, 1);
        // Exactly once: nothing more arrives.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(sink.received().len(), 1);
        sink.stop().await;
    }
}

#[tokio::test]
async fn replies_go_out_over_implicit_tls_and_share_the_pooled_connection() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        sink.start_mode("smtps").await;
        env.start_notification(NotificationSettings {
            outbound_smtp: postvak_notification::OutboundSmtpSettings {
                security: postvak_notification::SmtpSecurity::Tls,
                ..sink.settings()
            },
            ..Default::default()
        });
        let t = &env.acme;
        let first = env
            .deliver(
                t,
                &mail(&t.address, "s1@example.org", "Over TLS", "", "Hello."),
            )
            .await;
        let mut ids = Vec::new();
        for n in 0..3 {
            let id = env
                .reply(t, first.conversation_id, &format!("Answer {n}."))
                .await;
            // One after the other, so each finds the previous one's connection parked.
            env.wait_for_state(t, id, "sent").await;
            ids.push(id);
        }
        let got = sink.wait_for(3).await;
        assert_eq!(got.len(), 3, "{backend:?}");
        for (n, m) in got.iter().enumerate() {
            assert!(m.contains(&format!("Answer {n}.")), "{m}");
            assert_eq!(header(m, "X-Envelope-From"), Some("support@acme.test"));
        }
        // Reused within seconds: one connection, one TLS handshake and login.
        let ports: std::collections::BTreeSet<_> =
            got.iter().map(|m| header(m, "X-Peer-Port")).collect();
        assert_eq!(ports.len(), 1, "{backend:?}: {ports:?}");
        assert!(ports.iter().all(Option::is_some));
        sink.stop().await;
    }
}

#[tokio::test]
async fn a_relay_that_is_down_gets_the_mail_once_it_is_back() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        env.start_notification_to(&sink);
        let t = &env.acme;
        let c = env
            .deliver(t, &mail(&t.address, "down@example.org", "Hello", "", "Hi."))
            .await;
        let id = env.reply(t, c.conversation_id, "Answer.").await;
        // Refused connections are retried with backoff.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let s = postvak_notification::outbound::status(&t.ctx, id)
                .await
                .unwrap();
            if let Some(s) = s
                && s.attempts >= 2
            {
                assert_ne!(s.state, "sent");
                assert!(s.last_error.is_some());
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no retries");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        sink.start(false).await;
        let got = sink.wait_for(1).await;
        assert!(got[0].contains("Answer."));
        env.wait_for_state(t, id, "sent").await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(sink.received().len(), 1, "{backend:?}: sent once");
        sink.stop().await;
    }
}

#[tokio::test]
async fn a_rejected_reply_becomes_reply_failed_for_its_conversation() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        sink.start(true).await;
        env.start_notification_to(&sink);
        let t = &env.acme;
        let c = env
            .deliver(t, &mail(&t.address, "rej@example.org", "Hello", "", "Hi."))
            .await;
        let id = env.reply(t, c.conversation_id, "Answer.").await;
        let s = env.wait_for_state(t, id, "failed").await;
        assert_eq!(s.attempts, 1, "a 5xx is not retried");
        let events = t
            .ctx
            .read_stream(&postvak_notification::outbound::failure_stream(id))
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, REPLY_FAILED);
        let f: ReplyFailedV1 = events[0].payload().unwrap();
        assert_eq!(f.conversation_id, c.conversation_id);
        assert_eq!(f.inbox_id, t.inbox);
        assert_eq!(f.reason, "rejected");
        assert_eq!(f.smtp_code, Some(550));
        assert!(f.detail.contains("Relaying denied"), "{}", f.detail);
        assert!(sink.received().is_empty());
        // The conversation itself still loads and works.
        env.service.load(&t.ctx, c.conversation_id).await.unwrap();
        sink.stop().await;
    }
}

/// A relay that accepts connections and never says a word.
fn silent_relay() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming() {
            held.push(c);
        }
    });
    port
}

#[tokio::test]
async fn a_mail_interrupted_while_sending_is_not_resent_but_reported_uncertain() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let t = &env.acme;
        let c = env
            .deliver(
                t,
                &mail(&t.address, "crash@example.org", "Hello", "", "Hi."),
            )
            .await;
        // "Process one" claims the mail and is killed mid-SMTP.
        let first = env
            .start_crashable(NotificationSettings {
                outbound_smtp: postvak_notification::OutboundSmtpSettings {
                    host: "127.0.0.1".into(),
                    port: silent_relay(),
                    security: postvak_notification::SmtpSecurity::None,
                    timeout_ms: 60_000,
                    sending_lease_ms: 1_000,
                    ..Default::default()
                },
                ..Default::default()
            })
            .await;
        let id = env.reply(t, c.conversation_id, "Answer.").await;
        env.wait_for_state(t, id, "sending").await;
        first.crash().await;

        // "Process two" has a working relay, and still does not send it blindly.
        let mut sink = SmtpSink::new();
        sink.start(false).await;
        env.start_notification(NotificationSettings {
            outbound_smtp: postvak_notification::OutboundSmtpSettings {
                sending_lease_ms: 1_000,
                ..sink.settings()
            },
            ..Default::default()
        });
        let s = env.wait_for_state(t, id, "failed").await;
        assert_eq!(s.attempts, 1);
        let events = t
            .ctx
            .read_stream(&postvak_notification::outbound::failure_stream(id))
            .await
            .unwrap();
        let f: ReplyFailedV1 = events[0].payload().unwrap();
        assert_eq!(f.reason, "uncertain", "{backend:?}");
        // The reply never went out again; the only mail may be the alert to its author,
        // which goes through the same relay (and now often arrives this early).
        let replies: Vec<String> = sink
            .received()
            .into_iter()
            .filter(|m| header(m, "X-Envelope-To") == Some("eve@example.org"))
            .collect();
        assert!(replies.is_empty(), "{backend:?}: resent: {replies:?}");
        sink.stop().await;
    }
}

#[tokio::test]
async fn a_crash_during_a_burst_sends_every_reply_and_none_twice() {
    // The issue's burst: 1,000 replies, over 20 conversations.
    const N: usize = 1_000;
    const CONVERSATIONS: usize = 20;
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let t = &env.acme;
        let mut conversations = Vec::new();
        for c in 0..CONVERSATIONS {
            let opened = env
                .deliver(
                    t,
                    &mail(
                        &t.address,
                        &format!("burst{c}@example.org"),
                        &format!("Burst {c}"),
                        "",
                        "Hi.",
                    ),
                )
                .await;
            conversations.push(opened.conversation_id);
        }
        let mut sink = SmtpSink::new();
        sink.start(false).await;
        let settings = NotificationSettings {
            outbound_smtp: postvak_notification::OutboundSmtpSettings {
                sending_lease_ms: 1_000,
                ..sink.settings()
            },
            ..Default::default()
        };
        let mut ids = Vec::new();
        for i in 0..N {
            let c = conversations[i % CONVERSATIONS];
            ids.push(env.reply(t, c, &format!("Reply {i}.")).await);
        }
        // All 1,000 are queued when the sender starts; kill it a third of the way through.
        let first = env.start_crashable(settings.clone()).await;
        sink.wait_for(N / 3).await;
        first.crash().await;
        env.start_notification(settings);

        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        let (sent, uncertain) = loop {
            let (mut s, mut u, mut open) = (0, 0, 0);
            for id in &ids {
                match postvak_notification::outbound::status(&t.ctx, *id)
                    .await
                    .unwrap()
                    .map(|s| s.state)
                    .as_deref()
                {
                    Some("sent") => s += 1,
                    Some("failed") => u += 1,
                    _ => open += 1,
                }
            }
            if open == 0 {
                break (s, u);
            }
            assert!(tokio::time::Instant::now() < deadline, "{open} still open");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        // Replies only: an uncertain one also alerts its author through the same relay.
        let got: Vec<String> = sink
            .received()
            .into_iter()
            .filter(|m| header(m, "X-Envelope-To") == Some("eve@example.org"))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for m in &got {
            let mid = header(m, "Message-ID").unwrap().to_owned();
            assert!(seen.insert(mid.clone()), "{backend:?}: {mid} arrived twice");
        }
        // Every reply was sent, except those caught mid-SMTP, which are reported and not
        // resent (and may or may not have arrived: ADR 0006).
        assert_eq!(sent + uncertain, N);
        assert!(
            got.len() >= sent && got.len() <= N,
            "{} arrived, {sent} sent",
            got.len()
        );
        assert!(
            uncertain <= 8,
            "at most one per connection in flight: {uncertain}"
        );
        sink.stop().await;
    }
}

/// Reads a Server-Sent Events response until a frame contains `needle`.
async fn sse_until(mut resp: reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout_at(deadline, resp.chunk()).await;
        let Ok(Ok(Some(chunk))) = next else {
            panic!("no {needle:?} on the stream; got {seen}");
        };
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(frame) = seen.split("\n\n").find(|f| f.contains(needle)) {
            return frame.to_owned();
        }
    }
}

#[tokio::test]
async fn a_refused_reply_shows_on_its_conversation_and_alerts_its_author() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        sink.start_mode("reject_customers").await;
        env.start_notification_to(&sink);
        let app = env.spawn_app().await;
        let t = &env.acme;
        let c = env
            .deliver(t, &mail(&t.address, "bad@example.org", "Hello", "", "Hi."))
            .await;
        let path = format!("/v1/conversations/{}", c.conversation_id);
        // Alice follows the live stream from the start of the log.
        let stream = app
            .client
            .get(format!("{}/v1/stream", app.base))
            .bearer_auth(&t.alice.token)
            .header("Last-Event-ID", "0-0")
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        let id = env.reply(t, c.conversation_id, "Answer.").await;

        // The conversation shows the refusal on the outbound message.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let delivery = loop {
            let r = app.call("GET", &path, &t.alice, None).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            let m = r.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["id"] == id.to_string())
                .cloned()
                .unwrap();
            if m["delivery"]["state"] == "failed" {
                break m["delivery"].clone();
            }
            assert_eq!(m["delivery"]["state"], "queued", "{backend:?}: {m}");
            assert!(tokio::time::Instant::now() < deadline, "never failed: {m}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(delivery["reason"], "rejected", "{delivery}");
        assert_eq!(delivery["smtp_code"], 550, "{delivery}");
        assert!(
            delivery["detail"]
                .as_str()
                .unwrap()
                .contains("Recipient address rejected"),
            "{delivery}"
        );
        // The inbound message has no delivery state.
        let r = app.call("GET", &path, &t.alice, None).await;
        let inbound = r.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["direction"] == "inbound")
            .cloned()
            .unwrap();
        assert!(inbound.get("delivery").is_none(), "{inbound}");

        // The conversation's own stream records it, once, written by its owner.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let failed = loop {
            let events = t
                .ctx
                .read_stream(&postvak_platform::store::StreamRef::new(
                    "conversation",
                    format!("conv-{}", c.conversation_id),
                ))
                .await
                .unwrap();
            let found: Vec<_> = events
                .iter()
                .filter(|e| e.event_type == "reply.delivery_failed")
                .collect();
            if let [one] = found.as_slice() {
                break (*one).clone();
            }
            assert!(found.is_empty(), "recorded twice");
            assert!(tokio::time::Instant::now() < deadline, "no event");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let p: postvak_proto::events::conversation::ReplyDeliveryFailedV1 =
            failed.payload().unwrap();
        assert_eq!(p.message_id, id);
        assert_eq!(p.smtp_code, Some(550));
        assert!(p.permanent);
        assert_eq!(p.author, Some(t.alice.id));
        let state = env.service.load(&t.ctx, c.conversation_id).await.unwrap();
        assert!(state.state.failed_replies.contains(&id));

        // Alice sees it live …
        let frame = sse_until(stream, "reply.delivery_failed").await;
        assert!(frame.contains("event: conversation"), "{frame}");
        assert!(frame.contains(&c.conversation_id.to_string()), "{frame}");
        // … and by mail (her own address is accepted by the relay; the customer's was not).
        let got = sink.wait_for(1).await;
        let alert = &got[0];
        assert_eq!(
            header(alert, "X-Envelope-To"),
            Some("alice@acme.test"),
            "{alert}"
        );
        assert_eq!(
            header(alert, "Subject"),
            Some("[Postvak] Your reply was not delivered")
        );
        assert!(alert.contains(&c.conversation_id.to_string()), "{alert}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(sink.received().len(), 1, "{backend:?}: one alert");
        sink.stop().await;
    }
}

#[tokio::test]
async fn a_sent_reply_shows_sent_on_its_conversation_without_moving_its_version() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        sink.start(false).await;
        env.start_notification_to(&sink);
        let app = env.spawn_app().await;
        let t = &env.acme;
        let c = env
            .deliver(t, &mail(&t.address, "ok@example.org", "Hello", "", "Hi."))
            .await;
        let path = format!("/v1/conversations/{}", c.conversation_id);
        let before = std::time::SystemTime::now();
        let id = env.reply(t, c.conversation_id, "Answer.").await;
        let version = env
            .service
            .load(&t.ctx, c.conversation_id)
            .await
            .unwrap()
            .events
            .len();
        sink.wait_for(1).await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let delivery = loop {
            let r = app.call("GET", &path, &t.alice, None).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            let m = r.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["id"] == id.to_string())
                .cloned()
                .unwrap();
            if m["delivery"]["state"] == "sent" {
                break m["delivery"].clone();
            }
            assert_eq!(m["delivery"]["state"], "queued", "{backend:?}: {m}");
            assert!(tokio::time::Instant::now() < deadline, "never sent: {m}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(delivery["smtp_code"], 250, "{delivery}");
        assert!(delivery.get("reason").is_none(), "{delivery}");
        let at = time::OffsetDateTime::parse(
            delivery["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!(
            at >= time::OffsetDateTime::from(before) - time::Duration::seconds(1),
            "{delivery}"
        );
        // The fact is on the outbox's stream, once; the conversation's version did not move.
        let events = t
            .ctx
            .read_stream(&postvak_notification::outbound::failure_stream(id))
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].event_type,
            postvak_proto::events::notification::REPLY_SENT
        );
        let s: postvak_proto::events::notification::ReplySentV1 = events[0].payload().unwrap();
        assert_eq!((s.conversation_id, s.attempts), (c.conversation_id, 1));
        let after = env.service.load(&t.ctx, c.conversation_id).await.unwrap();
        assert_eq!(after.events.len(), version, "{backend:?}");
        sink.stop().await;
    }
}

/// Verifies a received mail's DKIM signature with dkimpy (installed with pip when missing),
/// the public key served by a DNS override for `<selector>._domainkey.<domain>`.
fn dkim_verifies(mail: &[u8], txt_name: &str, txt: &str) -> bool {
    let have = std::process::Command::new("python3")
        .args(["-c", "import dkim"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        let out = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "dkimpy"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pip could not install dkimpy (needed to verify DKIM): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = postvak_platform::testkit::TempDir::new();
    let path = dir.path().join("mail.eml");
    std::fs::write(&path, mail).unwrap();
    let script = r#"
import sys, dkim
name, txt, path = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3]
def dns(q, timeout=5):
    return txt if q.rstrip(b".") == name else None
try:
    ok = dkim.verify(open(path, "rb").read(), dnsfunc=dns)
except Exception:
    ok = False
print("verified" if ok else "failed")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, txt_name, txt, path.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    said.trim() == "verified"
}

#[tokio::test]
async fn a_reply_from_a_domain_with_a_dkim_key_is_signed_and_the_signature_verifies() {
    use base64::Engine;
    // Throw-away RSA keys (PKCS#1 PEM) and their public halves as DKIM TXT records.
    let keys = postvak_platform::testkit::TempDir::new();
    let make = |name: &str| {
        let key = keys.path().join(name);
        let out = std::process::Command::new("openssl")
            .args([
                "genrsa",
                "-traditional",
                "-out",
                key.to_str().unwrap(),
                "2048",
            ])
            .output()
            .expect("openssl is needed to make the test DKIM key");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new("openssl")
            .args([
                "rsa",
                "-in",
                key.to_str().unwrap(),
                "-pubout",
                "-outform",
                "DER",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let txt = format!(
            "v=DKIM1; k=rsa; p={}",
            base64::engine::general_purpose::STANDARD.encode(&out.stdout)
        );
        (key, txt)
    };
    let (key, txt) = make("dkim.pem");
    let (_, other) = make("other.pem");
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        sink.start(false).await;
        env.start_notification(NotificationSettings {
            outbound_smtp: postvak_notification::OutboundSmtpSettings {
                dkim: vec![postvak_notification::DkimKeySettings {
                    domain: "ACME.test".into(),
                    selector: "pv1".into(),
                    private_key_file: key.clone(),
                    algorithm: postvak_notification::DkimAlgorithm::Rsa,
                }],
                ..sink.settings()
            },
            ..Default::default()
        });
        let t = &env.acme;
        let first = env
            .deliver(
                t,
                &mail(&t.address, "d1@example.org", "Signed?", "", "Please sign."),
            )
            .await;
        env.reply(t, first.conversation_id, "Signed answer.\nTwo lines.")
            .await;
        let got = sink.wait_for(1).await;
        let m = &got[0];
        assert!(header(m, "DKIM-Signature").is_some(), "unsigned: {m}");
        let head = m.split("\r\n\r\n").next().unwrap();
        assert!(head.contains("d=acme.test;"), "{head}");
        assert!(head.contains("s=pv1;"), "{head}");
        assert!(
            dkim_verifies(m.as_bytes(), "pv1._domainkey.acme.test", &txt),
            "{backend:?}: {m}"
        );
        // The check can fail: a changed body or a wrong key does not verify.
        let tampered = m.replace("Signed answer.", "Signed answer!");
        assert!(!dkim_verifies(
            tampered.as_bytes(),
            "pv1._domainkey.acme.test",
            &txt
        ));
        assert!(!dkim_verifies(
            m.as_bytes(),
            "pv1._domainkey.acme.test",
            &other
        ));
        sink.stop().await;
    }
}
