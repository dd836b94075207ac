//! Agents hear about assignments and mentions by mail (through the real relay), one by one or
//! as a digest, per their own preference set over the API.

use crate::helpers::*;
use crate::smtp_sink::SmtpSink;
use postvak_core::conversation::{Actor, ConversationCommand};
use postvak_notification::{NotificationSettings, OutboundSmtpSettings};
use serde_json::json;
use uuid::Uuid;

fn now_us() -> i64 {
    postvak_platform::store::micros(time::OffsetDateTime::now_utc())
}

fn to_of(m: &str) -> String {
    m.lines()
        .find_map(|l| l.strip_prefix("X-Envelope-To: "))
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn assignment_and_mentions_are_mailed_one_by_one_or_as_a_digest() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        sink.start(false).await;
        env.start_notification(NotificationSettings {
            outbound_smtp: OutboundSmtpSettings {
                notification_from: "Postvak <notify@postvak.test>".into(),
                ..sink.settings()
            },
            ..Default::default()
        });
        let app = env.spawn_app().await;
        let t = &env.acme;
        let c = env
            .deliver(
                t,
                &mail(&t.address, "agents@example.org", "Help", "", "Please."),
            )
            .await;
        let id = c.conversation_id;
        let alice_email = env
            .directory
            .get_user(&t.ctx, t.alice.id)
            .await
            .unwrap()
            .email;
        let admin_email = env
            .directory
            .get_user(&t.ctx, t.admin.id)
            .await
            .unwrap()
            .email;

        // The admin assigns it to Alice: Alice gets a mail.
        env.assign(t, id, t.alice.id).await;
        let got = sink.wait_for(1).await;
        assert_eq!(to_of(&got[0]), alice_email, "{backend:?}");
        assert!(got[0].contains("Subject: [Postvak] A conversation was assigned to you"));
        assert!(got[0].contains(&id.to_string()));
        assert!(got[0].contains("Auto-Submitted: auto-generated"));

        // The admin wants a digest every 2 s; Alice mentions them twice.
        let put = app
            .call(
                "PUT",
                "/v1/me/notification-preferences",
                &t.admin,
                Some(json!({"delivery": "digest", "digest_secs": 2})),
            )
            .await;
        assert_eq!(put.status, 200, "{:?}", put.body);
        let bad = app
            .call(
                "PUT",
                "/v1/me/notification-preferences",
                &t.admin,
                Some(json!({"delivery": "sometimes"})),
            )
            .await;
        assert_eq!(bad.status, 422);
        let got = app
            .call("GET", "/v1/me/notification-preferences", &t.admin, None)
            .await;
        assert_eq!(got.body["delivery"], "digest");
        for body in ["@admin look", "@admin again"] {
            env.service
                .change(&t.ctx, id, None, |_| {
                    Ok(vec![ConversationCommand::AddNote {
                        note_id: Uuid::now_v7(),
                        body: body.into(),
                        mentions: vec![t.admin.id],
                        by: Actor::User(t.alice.id),
                        at_us: now_us(),
                    }])
                })
                .await
                .unwrap();
        }
        let got = sink.wait_for(2).await;
        assert_eq!(to_of(&got[1]), admin_email);
        assert!(
            got[1].contains("Subject: [Postvak] 2 notifications"),
            "{}",
            got[1]
        );
        assert!(got[1].contains("Alice mentioned you in conversation"));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(sink.received().len(), 2, "one digest, not one mail each");
        sink.stop().await;
    }
}

/// Two notification processes of one cell mail a notification once: the mailer holds the
/// user's due row while it sends (ADR 0041). The relay answers 3 s after it has the message;
/// the other process's dispatcher reads the due rows every 200 ms, so without the hold it
/// would send the same pending notification well within that time.
#[tokio::test]
async fn two_notification_processes_mail_a_notification_once() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        sink.start_mode("slow").await;
        let settings = || NotificationSettings {
            outbound_smtp: OutboundSmtpSettings {
                notification_from: "Postvak <notify@postvak.test>".into(),
                ..sink.settings()
            },
            ..Default::default()
        };
        env.start_notification(settings());
        env.start_notification(settings());
        let t = &env.acme;
        let c = env
            .deliver(
                t,
                &mail(&t.address, "once@example.org", "Help", "", "Please."),
            )
            .await;
        env.assign(t, c.conversation_id, t.alice.id).await;
        let got = sink.wait_for(1).await;
        assert!(
            got[0].contains(&c.conversation_id.to_string()),
            "{backend:?}"
        );
        // The first send is answered 3 s after the sink has it; a second send of the same
        // notification by the other process would be in by then.
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let got = sink.received();
        assert_eq!(
            got.len(),
            1,
            "{backend:?}: one assignment, mailed {} times:\n{}",
            got.len(),
            got.join("\n----\n")
        );
        sink.stop().await;
    }
}

/// A notification recorded while the mailer is still sending the user's previous one is mailed
/// as soon as that send ends, not held back until the next sweep (a minute later). The relay
/// answers 3 s after it has the first message, so the second assignment is recorded while the
/// first send is still open.
#[tokio::test]
async fn a_notification_recorded_during_a_send_is_mailed_right_after_it() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        sink.start_mode("slow").await;
        env.start_notification(NotificationSettings {
            outbound_smtp: OutboundSmtpSettings {
                notification_from: "Postvak <notify@postvak.test>".into(),
                ..sink.settings()
            },
            ..Default::default()
        });
        let t = &env.acme;
        let mut ids = Vec::new();
        for from in ["first@example.org", "second@example.org"] {
            let c = env
                .deliver(t, &mail(&t.address, from, "Help", "", "Please."))
                .await;
            ids.push(c.conversation_id);
        }
        let assign = |id: Uuid| env.assign(t, id, t.alice.id);
        assign(ids[0]).await;
        // The relay has the first mail and holds its answer for 3 s.
        let got = sink.wait_for(1).await;
        assert!(got[0].contains(&ids[0].to_string()), "{backend:?}");
        assign(ids[1]).await;
        // Within `wait_for`'s 30 s, so not at the sweep 60 s after the first send.
        let got = sink.wait_for(2).await;
        assert!(
            got[1].contains("Subject: [Postvak] A conversation was assigned to you"),
            "{}",
            got[1]
        );
        assert!(got[1].contains(&ids[1].to_string()), "{backend:?}");
        sink.stop().await;
    }
}
