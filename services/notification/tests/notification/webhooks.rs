//! Tenant webhooks: managed over the API by admins, signed per Standard Webhooks (checked by a
//! real receiver), isolated per endpoint, dead-lettered and redelivered.

use crate::helpers::*;
use crate::receiver::{Mode, Receiver};
use postvak_notification::{NotificationSettings, WebhookSettings};
use serde_json::json;
use std::time::Duration;

fn settings() -> NotificationSettings {
    NotificationSettings {
        webhooks: WebhookSettings {
            timeout_ms: 1_000,
            per_endpoint_concurrency: 2,
            // Small, so that one tenant's endpoints could take every slot and one endpoint's
            // backlog is larger than a dispatcher page.
            per_tenant_concurrency: 3,
            total_concurrency: 6,
            retry_base_ms: 100,
            retry_max_ms: 300,
            max_attempts: 3,
            // The test receivers listen here.
            allow_private: vec!["127.0.0.1/32".into()],
        },
        ..Default::default()
    }
}

async fn subscribe(app: &TestApp, t: &Tenant, r: &Receiver, events: &[&str]) -> String {
    let resp = app
        .call(
            "POST",
            "/v1/webhooks",
            &t.admin,
            Some(json!({"url": r.url, "events": events})),
        )
        .await;
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    let secret = resp.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    r.set_secret(&secret);
    resp.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn admins_subscribe_and_receive_signed_events_that_verify() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        env.start_notification(settings());
        let app = env.spawn_app().await;
        let t = &env.acme;
        let r = Receiver::start(Mode::Accept, env.cancel.clone()).await;

        // Agents may not; bad input is a problem+json.
        let denied = app
            .call(
                "POST",
                "/v1/webhooks",
                &t.alice,
                Some(json!({"url": r.url, "events": ["convo.created"]})),
            )
            .await;
        assert_eq!(denied.status, 403);
        assert_eq!(denied.body["code"], "tenant_admin_required");
        let bad = app
            .call(
                "POST",
                "/v1/webhooks",
                &t.admin,
                Some(json!({"url": r.url, "events": ["convo.exploded"]})),
            )
            .await;
        assert_eq!(bad.status, 422);
        assert_eq!(bad.content_type, "application/problem+json");
        assert_eq!(bad.body["code"], "invalid_webhook");

        let id = subscribe(
            &app,
            t,
            &r,
            &[
                "convo.created",
                "convo.customer.reply.created",
                "convo.agent.reply.created",
            ],
        )
        .await;
        let listed = app.call("GET", "/v1/webhooks", &t.admin, None).await;
        assert_eq!(listed.status, 200);
        assert_eq!(listed.body["items"][0]["id"], id.as_str());
        assert!(
            listed.body["items"][0].get("secret").is_none(),
            "the secret is shown once"
        );

        let d = env
            .deliver(
                t,
                &mail(&t.address, "w1@example.org", "Hooked", "", "Hello."),
            )
            .await;
        let created = r.wait_for("convo.created", Duration::from_secs(20)).await;
        assert_eq!(
            created.body["data"]["conversation_id"],
            d.conversation_id.to_string()
        );
        assert_eq!(created.body["data"]["inbox_id"], t.inbox.to_string());
        let customer = r
            .wait_for("convo.customer.reply.created", Duration::from_secs(20))
            .await;
        assert_ne!(customer.id, created.id);
        env.reply(t, d.conversation_id, "Hi back.").await;
        let agent = r
            .wait_for("convo.agent.reply.created", Duration::from_secs(20))
            .await;
        assert_eq!(agent.body["data"]["event"]["body_text"], "Hi back.");
        assert_eq!(r.bad_signatures(), 0, "{backend:?}");

        // The receiver answered before the outcome was recorded: poll.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let deliveries = app
                .call(
                    "GET",
                    &format!("/v1/webhooks/{id}/deliveries"),
                    &t.admin,
                    None,
                )
                .await;
            assert_eq!(deliveries.status, 200);
            let items = deliveries.body["items"].as_array().unwrap().clone();
            assert_eq!(items.len(), 3, "{items:?}");
            if items
                .iter()
                .all(|i| i["state"] == "delivered" && i["attempts"] == 1)
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{items:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Another tenant sees none of it.
        let other = env.tenant("Globex", "help@globex.test").await;
        let foreign = app
            .call(
                "GET",
                &format!("/v1/webhooks/{id}/deliveries"),
                &other.admin,
                None,
            )
            .await;
        assert_eq!(foreign.status, 404);

        let gone = app
            .call("DELETE", &format!("/v1/webhooks/{id}"), &t.admin, None)
            .await;
        assert_eq!(gone.status, 204);
        let again = app
            .call("DELETE", &format!("/v1/webhooks/{id}"), &t.admin, None)
            .await;
        assert_eq!(again.status, 404);
    }
}

#[tokio::test]
async fn an_endpoint_that_hangs_does_not_delay_another_tenant() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        env.start_notification(settings());
        let app = env.spawn_app().await;
        let slow_tenant = &env.acme;
        let fast_tenant = env.tenant("Globex", "help@globex.test").await;
        let slow = Receiver::start(Mode::Hang, env.cancel.clone()).await;
        let fast = Receiver::start(Mode::Accept, env.cancel.clone()).await;
        // Three subscriptions to the hanging endpoint: 3 × 2 requests would fill all 6 slots.
        for _ in 0..3 {
            subscribe(
                &app,
                slow_tenant,
                &slow,
                &["convo.created", "convo.customer.reply.created"],
            )
            .await;
        }
        subscribe(&app, &fast_tenant, &fast, &["convo.created"]).await;

        // The slow tenant's endpoint gets a backlog: every request hangs until the timeout.
        for i in 0..8 {
            env.deliver(
                slow_tenant,
                &mail(
                    &slow_tenant.address,
                    &format!("s{i}@example.org"),
                    "Slow",
                    "",
                    ".",
                ),
            )
            .await;
        }
        let started = tokio::time::Instant::now();
        env.deliver(
            &fast_tenant,
            &mail(&fast_tenant.address, "f1@example.org", "Fast", "", "."),
        )
        .await;
        let got = fast
            .wait_for("convo.created", Duration::from_secs(10))
            .await;
        // 48 hanging requests, 3 at a time, 1 s each: the backlog alone takes ≥ 16 s.
        assert!(
            got.at.duration_since(started) < Duration::from_secs(4),
            "{backend:?}: the fast tenant waited {:?}",
            got.at.duration_since(started)
        );
        assert!(slow.received().is_empty());
    }
}

#[tokio::test]
async fn a_failing_endpoint_ends_in_the_dead_letter_list_and_can_be_redelivered() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        env.start_notification(settings());
        let app = env.spawn_app().await;
        let t = &env.acme;
        let r = Receiver::start(Mode::Fail, env.cancel.clone()).await;
        let id = subscribe(&app, t, &r, &["convo.created"]).await;
        env.deliver(t, &mail(&t.address, "dead@example.org", "Dead", "", "."))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let dead = loop {
            let resp = app
                .call(
                    "GET",
                    &format!("/v1/webhooks/{id}/deliveries"),
                    &t.admin,
                    None,
                )
                .await;
            let items = resp.body["items"].as_array().cloned().unwrap_or_default();
            if let Some(d) = items.iter().find(|d| d["state"] == "dead") {
                break d.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never dead: {items:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(dead["attempts"], 3);
        assert_eq!(dead["last_status"], 500);

        r.set_mode(Mode::Accept);
        let delivery = dead["id"].as_str().unwrap();
        let resp = app
            .call(
                "POST",
                &format!("/v1/webhooks/{id}/deliveries/{delivery}/redeliver"),
                &t.admin,
                None,
            )
            .await;
        assert_eq!(resp.status, 202, "{:?}", resp.body);
        let got = r.wait_for("convo.created", Duration::from_secs(10)).await;
        assert_eq!(got.id, delivery, "the same webhook-id on redelivery");
        let missing = app
            .call(
                "POST",
                &format!(
                    "/v1/webhooks/{id}/deliveries/{}/redeliver",
                    uuid::Uuid::now_v7()
                ),
                &t.admin,
                None,
            )
            .await;
        assert_eq!(missing.status, 404);
    }
}

#[tokio::test]
async fn webhooks_to_internal_addresses_are_refused_at_creation_and_at_connection() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        // The API allows loopback (the operator's allow-list), the deliverer does not: it
        // stands for a name that pointed elsewhere when it was checked and at 127.0.0.1 now.
        let mut strict = settings();
        strict.webhooks.allow_private.clear();
        strict.webhooks.max_attempts = 2;
        env.start_notification(strict);
        let app = env.spawn_app().await;
        let t = &env.acme;
        let r = Receiver::start(Mode::Accept, env.cancel.clone()).await;

        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.7/hook",
            "http://192.168.1.1/hook",
            "http://[::ffff:127.0.0.2]/hook",
            "http://127.0.0.2:9/hook",
            "http://[fd00:ec2::254]/",
            "http://0.0.0.0:80/",
        ] {
            let resp = app
                .call(
                    "POST",
                    "/v1/webhooks",
                    &t.admin,
                    Some(json!({"url": url, "events": ["convo.created"]})),
                )
                .await;
            assert_eq!(resp.status, 422, "{url}: {:?}", resp.body);
            assert_eq!(resp.content_type, "application/problem+json");
            assert_eq!(resp.body["code"], "webhook_destination_forbidden", "{url}");
        }
        let unknown = app
            .call(
                "POST",
                "/v1/webhooks",
                &t.admin,
                Some(
                    json!({"url": "http://no-such-host.invalid/hook", "events": ["convo.created"]}),
                ),
            )
            .await;
        assert_eq!(unknown.status, 422);
        assert_eq!(unknown.body["code"], "webhook_destination_unresolvable");

        // Allowed at creation (a name and a literal), refused when connecting.
        let port = r.url.split(':').nth(2).unwrap().split('/').next().unwrap();
        let by_name = subscribe_url(&app, t, &format!("http://localhost:{port}/hook")).await;
        let by_ip = subscribe_url(&app, t, &r.url).await;
        env.deliver(t, &mail(&t.address, "ssrf@example.org", "Hi", "", "."))
            .await;
        for id in [by_name, by_ip] {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let dead = loop {
                let d = app
                    .call(
                        "GET",
                        &format!("/v1/webhooks/{id}/deliveries"),
                        &t.admin,
                        None,
                    )
                    .await;
                let items = d.body["items"].as_array().unwrap().clone();
                if let Some(x) = items.iter().find(|d| d["state"] == "dead") {
                    break x.clone();
                }
                assert!(tokio::time::Instant::now() < deadline, "{items:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert!(dead.get("last_status").is_none(), "{dead}");
            assert!(
                dead["last_error"].as_str().unwrap().contains("not allowed"),
                "{backend:?}: {dead}"
            );
        }
        assert!(r.received().is_empty(), "a request reached the receiver");
    }
}

async fn subscribe_url(app: &TestApp, t: &Tenant, url: &str) -> String {
    let resp = app
        .call(
            "POST",
            "/v1/webhooks",
            &t.admin,
            Some(json!({"url": url, "events": ["convo.created"]})),
        )
        .await;
    assert_eq!(resp.status, 201, "{url}: {:?}", resp.body);
    resp.body["id"].as_str().unwrap().to_owned()
}
