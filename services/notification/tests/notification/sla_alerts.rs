//! SLA warnings and breaches reach people by mail through the real relay (aiosmtpd): the
//! assignee, or the inbox's admins when nobody is assigned; with the SLA preference of their
//! own (a digest of SLA alerts while assignments still come one by one). The SLA events are
//! appended to a `routing_timer` stream in the stored shape routing records them in.

use crate::helpers::*;
use crate::smtp_sink::SmtpSink;
use postvak_core::access::{Grantee, InboxRole};
use postvak_notification::{NotificationSettings, OutboundSmtpSettings};
use postvak_platform::store::{ExpectedVersion, NewEvent, StreamRef};
use postvak_proto::events::timers::{self as tev, SlaClockEventV1};
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

/// Records an SLA event as routing's timer runner does: once, on the timer's own stream.
async fn sla_event(t: &Tenant, kind: &str, conversation: Uuid, clock: &str, at_us: i64) {
    let timer = Uuid::now_v7();
    let e = SlaClockEventV1 {
        policy_id: Uuid::now_v7(),
        policy_name: "Gold".into(),
        conversation_id: conversation,
        inbox_id: t.inbox,
        clock: clock.into(),
        due_at_us: at_us + 600_000_000,
        timer_id: timer,
        at_us,
    };
    t.ctx
        .append(
            &StreamRef::new(tev::STREAM_ROUTING_TIMER, format!("timer-{timer}")),
            ExpectedVersion::NoStream,
            vec![NewEvent::from_payload(kind, 1, &e).unwrap()],
        )
        .await
        .unwrap();
}

/// The mail with quoted-printable soft line breaks joined (long lines are wrapped).
fn unwrapped(m: &str) -> String {
    m.replace("=\r\n", "").replace("=\n", "")
}

fn subjects(mails: &[String]) -> Vec<String> {
    mails
        .iter()
        .map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn sla_alerts_reach_the_assignee_or_the_inbox_admins_per_preference() {
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
        let email = |u: Uuid| {
            let d = env.directory.clone();
            let ctx = t.ctx.clone();
            async move { d.get_user(&ctx, u).await.unwrap().email }
        };
        let (alice_email, admin_email) = (email(t.alice.id).await, email(t.admin.id).await);
        // The tenant admin also administers the inbox.
        env.directory
            .grant_inbox(
                &t.ctx,
                t.inbox,
                Grantee::User(t.admin.id),
                InboxRole::Admin,
                None,
                None,
            )
            .await
            .unwrap();
        let c = env
            .deliver(
                t,
                &mail(&t.address, "sla@example.org", "Urgent", "", "Help."),
            )
            .await;
        let id = c.conversation_id;

        // Unassigned: the warning goes to the inbox's admins (not to Alice, an agent).
        sla_event(t, tev::SLA_WARNING, id, "first_response", now_us()).await;
        let got: Vec<String> = sink
            .wait_for(1)
            .await
            .iter()
            .map(|m| unwrapped(m))
            .collect();
        assert_eq!(to_of(&got[0]), admin_email, "{backend:?}");
        assert!(
            got[0].contains("Subject: [Postvak] SLA warning"),
            "{}",
            got[0]
        );
        assert!(
            got[0].contains(&format!(
                "the first response in conversation {id} is due at"
            )),
            "{}",
            got[0]
        );
        assert!(got[0].contains("(Gold)"));

        // Assigned to Alice: the breach goes to her.
        env.assign(t, id, t.alice.id).await;
        let got = sink.wait_for(2).await;
        assert!(subjects(&got).contains(&"[Postvak] A conversation was assigned to you".into()));
        sla_event(t, tev::SLA_BREACHED, id, "first_response", now_us()).await;
        let got: Vec<String> = sink
            .wait_for(3)
            .await
            .iter()
            .map(|m| unwrapped(m))
            .collect();
        let breach = got
            .iter()
            .find(|m| m.contains("Subject: [Postvak] SLA breached"))
            .expect("a breach mail");
        assert_eq!(to_of(breach), alice_email, "{backend:?}");
        assert!(breach.contains(&format!(
            "the first response in conversation {id} was due at"
        )));

        // Alice wants SLA alerts as a digest every 2 s, everything else one by one.
        let bad = app
            .call(
                "PUT",
                "/v1/me/notification-preferences",
                &t.alice,
                Some(json!({"delivery": "each", "sla_alerts": "sometimes"})),
            )
            .await;
        assert_eq!(bad.status, 422);
        assert_eq!(bad.body["code"], "invalid_preferences");
        let put = app
            .call(
                "PUT",
                "/v1/me/notification-preferences",
                &t.alice,
                Some(json!({"delivery": "each", "digest_secs": 2, "sla_alerts": "digest"})),
            )
            .await;
        assert_eq!(put.status, 200, "{:?}", put.body);
        let prefs = app
            .call("GET", "/v1/me/notification-preferences", &t.alice, None)
            .await;
        assert_eq!(prefs.body["sla_alerts"], "digest");
        // A stale event (a replay of an old log) is not mailed; two fresh ones are digested.
        sla_event(
            t,
            tev::SLA_WARNING,
            id,
            "resolution",
            now_us() - 7_200_000_000,
        )
        .await;
        sla_event(t, tev::SLA_WARNING, id, "next_response", now_us()).await;
        sla_event(t, tev::SLA_BREACHED, id, "next_response", now_us()).await;
        let got: Vec<String> = sink
            .wait_for(4)
            .await
            .iter()
            .map(|m| unwrapped(m))
            .collect();
        let digest = got
            .iter()
            .find(|m| m.contains("notifications"))
            .expect("a digest");
        assert_eq!(to_of(digest), alice_email);
        assert!(
            digest.contains("Subject: [Postvak] 2 notifications"),
            "{backend:?}: {digest}"
        );
        assert!(digest.contains("SLA warning: the next response"));
        assert!(digest.contains("SLA breached: the next response"));
        assert!(
            !digest.contains("resolution"),
            "the stale alert is not mailed"
        );
        sink.stop().await;
    }
}
