//! An inbox with its own SMTP relay (set over the API by a tenant admin) sends its replies
//! there — a second aiosmtpd with STARTTLS and a login of its own — and not through the
//! platform's default relay; the password is never shown nor recorded in an event.

use crate::helpers::*;
use crate::smtp_sink::SmtpSink;
use postvak_notification::NotificationSettings;
use postvak_proto::events::notification::{SMTP_RELAY_REMOVED, SMTP_RELAY_SET, SmtpRelaySetV1};
use serde_json::json;

fn envelope_to(m: &str) -> &str {
    m.lines()
        .find_map(|l| l.strip_prefix("X-Envelope-To: "))
        .unwrap_or("")
}

#[tokio::test]
async fn an_inbox_with_its_own_relay_sends_through_it_and_not_the_default() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut default = SmtpSink::new();
        default.start(false).await;
        let mut own = SmtpSink::with_login(&default, "inbox-relay", "inb0x-pw");
        own.start(false).await;
        let mut smtp = default.settings();
        smtp.allow_private = vec!["127.0.0.1/32".into()];
        env.start_notification(NotificationSettings {
            outbound_smtp: smtp,
            ..Default::default()
        });
        let app = env.spawn_app().await;
        let t = &env.acme;
        let path = format!("/v1/inboxes/{}/smtp-relay", t.inbox);
        let body = json!({
            "host": "127.0.0.1", "port": own.port, "security": "starttls",
            "username": "inbox-relay", "password": "inb0x-pw"
        });

        // Only tenant admins manage it.
        let r = app.call("PUT", &path, &t.alice, Some(body.clone())).await;
        assert_eq!(r.status, 403, "{backend:?} {:?}", r.body);
        let r = app.call("GET", &path, &t.admin, None).await;
        assert_eq!(r.status, 404, "no relay yet: {:?}", r.body);

        let r = app.call("PUT", &path, &t.admin, Some(body)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["host"], "127.0.0.1");
        assert_eq!(r.body["port"], own.port);
        assert_eq!(r.body["security"], "starttls");
        assert_eq!(r.body["username"], "inbox-relay");
        assert_eq!(r.body["has_password"], true);
        assert!(r.body.get("password").is_none(), "{:?}", r.body);
        assert!(!r.body.to_string().contains("inb0x-pw"));
        let got = app.call("GET", &path, &t.admin, None).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body, r.body);

        // A reply of this inbox arrives at its own relay, through its login.
        let c = env
            .deliver(t, &mail(&t.address, "own@example.org", "Hello", "", "Hi."))
            .await;
        let id = env
            .reply(t, c.conversation_id, "Through our own relay.")
            .await;
        let got = own.wait_for(1).await;
        assert!(got[0].contains("Through our own relay."), "{}", got[0]);
        assert_eq!(envelope_to(&got[0]), "eve@example.org");
        env.wait_for_state(t, id, "sent").await;
        assert!(
            default.received().is_empty(),
            "the default relay got the inbox's reply"
        );

        // Another tenant's inbox (no relay of its own) still uses the default.
        let other = env.tenant("Globex", "help@globex.test").await;
        let oc = env
            .deliver(
                &other,
                &mail(&other.address, "globex@example.org", "Hi", "", "Hello."),
            )
            .await;
        env.reply(&other, oc.conversation_id, "Through the default.")
            .await;
        let got = default.wait_for(1).await;
        assert!(got[0].contains("Through the default."));
        assert_eq!(own.received().len(), 1);

        // Replaced without the password (same username): the stored one is kept.
        let r = app
            .call(
                "PUT",
                &path,
                &t.admin,
                Some(json!({"host": "127.0.0.1", "port": own.port, "username": "inbox-relay"})),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["has_password"], true);
        assert_eq!(r.body["revision"], 2);

        // The audit trail: both changes, never the password.
        let events = t
            .ctx
            .cell()
            .store
            .read_stream(
                t.tenant,
                &postvak_notification::relays::audit_stream(t.inbox),
                1,
            )
            .await
            .unwrap();
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.event_type == SMTP_RELAY_SET));
        let first: SmtpRelaySetV1 = events[0].payload().unwrap();
        assert!(first.has_password && first.password_changed);
        assert_eq!(first.username.as_deref(), Some("inbox-relay"));
        let second: SmtpRelaySetV1 = events[1].payload().unwrap();
        assert!(second.has_password && !second.password_changed);
        for e in &events {
            let stored = format!("{:?}", e.data);
            assert!(!stored.contains("inb0x-pw"), "{stored}");
            assert_eq!(
                e.metadata.actor.as_deref(),
                Some(format!("user:{}", t.admin.id).as_str())
            );
        }

        // Removed: the inbox sends through the default relay again.
        let r = app.call("DELETE", &path, &t.admin, None).await;
        assert_eq!(r.status, 204, "{:?}", r.body);
        assert_eq!(app.call("GET", &path, &t.admin, None).await.status, 404);
        assert_eq!(app.call("DELETE", &path, &t.admin, None).await.status, 404);
        env.reply(t, c.conversation_id, "Back on the default.")
            .await;
        let got = default.wait_for(2).await;
        assert!(got[1].contains("Back on the default."), "{}", got[1]);
        assert_eq!(own.received().len(), 1);
        let events = t
            .ctx
            .cell()
            .store
            .read_stream(
                t.tenant,
                &postvak_notification::relays::audit_stream(t.inbox),
                3,
            )
            .await
            .unwrap();
        assert_eq!(events[0].event_type, SMTP_RELAY_REMOVED);
        own.stop().await;
        default.stop().await;
    }
}

#[tokio::test]
async fn bad_relay_settings_get_clear_errors() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let t = &env.acme;
        let path = format!("/v1/inboxes/{}/smtp-relay", t.inbox);
        for (body, status, code) in [
            // The test server allows 127.0.0.1/32 only.
            (
                json!({"host": "10.1.2.3", "port": 587}),
                422,
                "smtp_relay_host_forbidden",
            ),
            (
                json!({"host": "169.254.169.254"}),
                422,
                "smtp_relay_host_forbidden",
            ),
            (
                json!({"host": "no-such-host.invalid"}),
                422,
                "smtp_relay_host_unresolvable",
            ),
            (
                json!({"host": "127.0.0.1", "security": "ssl"}),
                422,
                "invalid_smtp_relay",
            ),
            (json!({"host": "relay example"}), 422, "invalid_smtp_relay"),
            (
                json!({"host": "127.0.0.1", "port": 0}),
                422,
                "invalid_smtp_relay",
            ),
            (
                json!({"host": "127.0.0.1", "security": "none", "username": "u", "password": "p"}),
                422,
                "invalid_smtp_relay",
            ),
            (
                json!({"host": "127.0.0.1", "password": "p"}),
                422,
                "invalid_smtp_relay",
            ),
            (
                json!({"host": "127.0.0.1", "username": "u"}),
                422,
                "smtp_relay_password_required",
            ),
            (
                json!({"host": "127.0.0.1", "pasword": "typo"}),
                400,
                "invalid_json",
            ),
        ] {
            let r = app.call("PUT", &path, &t.admin, Some(body.clone())).await;
            assert_eq!(r.status, status, "{backend:?} {body} → {:?}", r.body);
            assert_eq!(r.body["code"], code, "{body} → {:?}", r.body);
            assert_eq!(r.content_type, "application/problem+json");
        }
        // Nothing was stored by any of them.
        assert_eq!(app.call("GET", &path, &t.admin, None).await.status, 404);
        // Another tenant's (or no) inbox answers like a missing one.
        let missing = format!("/v1/inboxes/{}/smtp-relay", uuid::Uuid::now_v7());
        let r = app
            .call(
                "PUT",
                &missing,
                &t.admin,
                Some(json!({"host": "127.0.0.1"})),
            )
            .await;
        assert_eq!(r.status, 404, "{:?}", r.body);
        let other = env.tenant("Globex", "help@globex.test").await;
        let theirs = format!("/v1/inboxes/{}/smtp-relay", other.inbox);
        assert_eq!(app.call("GET", &theirs, &t.admin, None).await.status, 404);
    }
}

async fn conversation(env: &TestEnv, t: &Tenant, from: &str) -> uuid::Uuid {
    let raw = mail(&t.address, from, "Hello", "", "Hi.");
    env.deliver(t, &raw).await.conversation_id
}

/// Polls the outbox until `message_id` has a `last_error`.
async fn wait_for_error(
    t: &Tenant,
    message_id: uuid::Uuid,
) -> postvak_notification::outbound::OutboundStatus {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = postvak_notification::outbound::status(&t.ctx, message_id)
            .await
            .unwrap();
        if let Some(s) = &s
            && s.last_error.is_some()
        {
            return s.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mail {message_id} never got an error: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_misconfigured_default_relay_holds_only_its_own_mail() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut default = SmtpSink::new();
        default.start(false).await;
        let mut own = SmtpSink::with_login(&default, "inbox-relay", "inb0x-pw");
        own.start(false).await;
        let ca = default.settings().ca_cert_file.unwrap();
        let dir = postvak_platform::testkit::TempDir::new();
        let late_ca = dir.path().join("ca.pem");
        let mut smtp = default.settings();
        smtp.allow_private = vec!["127.0.0.1/32".into()];
        // The default relay cannot be built: its CA file is missing when the service starts.
        smtp.ca_cert_file = Some(late_ca.clone());
        // And one domain's DKIM key is unreadable.
        smtp.dkim = vec![postvak_notification::DkimKeySettings {
            domain: "initech.test".into(),
            selector: "s1".into(),
            private_key_file: dir.path().join("missing.pem"),
            algorithm: Default::default(),
        }];
        env.start_notification(NotificationSettings {
            outbound_smtp: smtp,
            ..Default::default()
        });
        // Inbox relays' pools are built at their first mail, by when the CA is there (the
        // default relay was built, and failed, at start).
        std::fs::copy(&ca, &late_ca).unwrap();
        let app = env.spawn_app().await;
        let relay = json!({
            "host": "127.0.0.1", "port": own.port, "security": "starttls",
            "username": "inbox-relay", "password": "inb0x-pw"
        });
        let acme = &env.acme;
        let initech = env.tenant("Initech", "help@initech.test").await;
        let globex = env.tenant("Globex", "help@globex.test").await;
        for t in [acme, &initech] {
            let path = format!("/v1/inboxes/{}/smtp-relay", t.inbox);
            let r = app.call("PUT", &path, &t.admin, Some(relay.clone())).await;
            assert_eq!(r.status, 200, "{backend:?} {:?}", r.body);
        }
        let (ca_, ci, cg) = (
            conversation(&env, acme, "a@example.org").await,
            conversation(&env, &initech, "i@example.org").await,
            conversation(&env, &globex, "g@example.org").await,
        );

        // Globex has no relay of its own: its reply waits, saying why, with no attempt used.
        let held = env.reply(&globex, cg, "Through the broken default.").await;
        let s = wait_for_error(&globex, held).await;
        assert_eq!(s.state, "queued", "{backend:?} {s:?}");
        assert_eq!(s.attempts, 0, "{s:?}");
        let why = s.last_error.unwrap();
        assert!(
            why.contains("default SMTP relay is misconfigured") && why.contains("CA certificate"),
            "{why}"
        );
        // Initech's own relay works, but its domain's DKIM key does not: held too.
        let unsigned = env.reply(&initech, ci, "Never unsigned.").await;
        let s = wait_for_error(&initech, unsigned).await;
        assert_eq!(s.state, "queued", "{s:?}");
        assert_eq!(s.attempts, 0, "{s:?}");
        let why = s.last_error.unwrap();
        assert!(why.contains("DKIM key for initech.test"), "{why}");

        // Acme's own relay keeps sending, also after the others were held (and retried).
        let first = env.reply(acme, ca_, "Through our own relay.").await;
        env.wait_for_state(acme, first, "sent").await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let second = env.reply(acme, ca_, "And again.").await;
        env.wait_for_state(acme, second, "sent").await;
        let got = own.wait_for(2).await;
        assert_eq!(got.len(), 2, "{backend:?}");
        assert!(got[0].contains("Through our own relay."), "{}", got[0]);
        assert!(got[1].contains("And again."), "{}", got[1]);
        assert!(default.received().is_empty());
        for (t, id) in [(&globex, held), (&initech, unsigned)] {
            let s = postvak_notification::outbound::status(&t.ctx, id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!((s.state.as_str(), s.attempts), ("queued", 0), "{s:?}");
        }
        own.stop().await;
        default.stop().await;
    }
}
