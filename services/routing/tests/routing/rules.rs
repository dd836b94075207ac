//! Rules, dry-run, availability and the rule worker, end to end in one process: the real
//! directory, mail through ingest's pipeline, the conversation service (consumers and its
//! `conversation.apply` server) and the routing rules consumer and worker, on SQLite +
//! in-process bus, PostgreSQL (row-level security armed) + the in-process bus, and PostgreSQL +
//! NATS JetStream (`crate::backend`).

use crate::timers::now_us;
use actix_web::{App, HttpServer, web};
use postvak_conversation::Conversations;
use postvak_core::access::{Grantee, InboxRole, TenantRole};
use postvak_core::conversation::{Actor, ConversationCommand, Status};
use postvak_directory::Directory;
use postvak_directory::identity::SessionKind;
use postvak_ingest::{Ingestor, pipeline};
use postvak_platform::auth::SharedAuthenticator;
use postvak_platform::cell::{Cells, Principal, TenantContext};
use postvak_platform::on_tx;
use postvak_platform::store::{StreamRef, TenantId};
use postvak_proto::events::routing as rev;
use postvak_proto::rest::routing::DecidedAction;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backend::{BACKENDS, Backend, Scratch};

struct Who {
    id: Uuid,
    token: String,
}

struct Env {
    cells: Cells,
    conversations: Conversations,
    ingestor: Ingestor,
    tenant: TenantId,
    ctx: TenantContext,
    inbox: Uuid,
    admin: Who,
    alice: Who,
    bob: Who,
    team: Uuid,
    base: String,
    client: reqwest::Client,
    cancel: CancellationToken,
    _scratch: Scratch,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    body: Value,
}

impl Env {
    async fn new(backend: Backend) -> Env {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let cancel = CancellationToken::new();
        let (cells, scratch) = crate::backend::open(backend, &cancel).await;
        let dir = Directory::new(cells.clone());
        let tenant = dir.create_tenant("Acme", None).await.unwrap();
        let ctx = cells
            .context(tenant, Principal::Service { name: "test" })
            .await
            .unwrap();
        let inbox = dir
            .create_inbox(&ctx, "Support", &["support@acme.test".to_owned()])
            .await
            .unwrap()
            .id;
        let session = |user: Uuid| {
            let dir = dir.clone();
            async move {
                Who {
                    id: user,
                    token: dir
                        .create_session(tenant, user, SessionKind::Bearer, &[])
                        .await
                        .unwrap()
                        .token,
                }
            }
        };
        let mut users = Vec::new();
        for (email, role) in [
            ("admin@acme.test", TenantRole::Admin),
            ("alice@acme.test", TenantRole::Agent),
            ("bob@acme.test", TenantRole::Agent),
        ] {
            let u = dir.create_user(&ctx, email, email, role).await.unwrap();
            if role == TenantRole::Agent {
                dir.grant_inbox(
                    &ctx,
                    inbox,
                    Grantee::User(u.id),
                    InboxRole::Reply,
                    None,
                    None,
                )
                .await
                .unwrap();
            }
            users.push(session(u.id).await);
        }
        let team = dir
            .create_team(&ctx, "Billing", &["german".to_owned()])
            .await
            .unwrap()
            .id;
        for u in &users[1..] {
            dir.set_team_member(&ctx, team, u.id, true).await.unwrap();
        }
        let mut users = users.into_iter();
        let (admin, alice, bob) = (
            users.next().unwrap(),
            users.next().unwrap(),
            users.next().unwrap(),
        );
        postvak_conversation::start_consumers(&cells, cells.default_cell(), cancel.clone());
        postvak_routing::start_rules(&cells, cells.default_cell(), cancel.clone());

        let auth: SharedAuthenticator = Arc::new(dir.clone());
        let (c, d, a) = (
            web::Data::new(cells.clone()),
            web::Data::new(dir.clone()),
            web::Data::new(auth),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(c.clone())
                .app_data(d.clone())
                .app_data(a.clone())
                .app_data(postvak_platform::http::json_config())
                .app_data(postvak_platform::http::path_config())
                .configure(postvak_routing::routes)
                .configure(postvak_conversation::api::routes)
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        tokio::spawn({
            let cancel = cancel.clone();
            async move {
                cancel.cancelled().await;
                handle.stop(false).await;
            }
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        Env {
            conversations: Conversations::new(cells.clone()),
            ingestor: Ingestor::new(cells.clone()),
            cells,
            tenant,
            ctx,
            inbox,
            admin,
            alice,
            bob,
            team,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            cancel,
            _scratch: scratch,
        }
    }

    async fn call(&self, method: &str, path: &str, who: &Who, body: Option<Value>) -> Resp {
        let mut req = self
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", self.base),
            )
            .bearer_auth(&who.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    async fn rule(&self, body: Value) -> Uuid {
        let r = self
            .call(
                "POST",
                &format!("/v1/inboxes/{}/rules", self.inbox),
                &self.admin,
                Some(body),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.body["id"].as_str().unwrap().parse().unwrap()
    }

    async fn availability(&self, who: &Who, body: Value) -> Resp {
        self.call(
            "PUT",
            &format!("/v1/users/{}/availability", who.id),
            who,
            Some(body),
        )
        .await
    }

    /// `GET /v1/users/{id}/availability` as that user.
    async fn availability_of(&self, who: &Who) -> Resp {
        self.call(
            "GET",
            &format!("/v1/users/{}/availability", who.id),
            who,
            None,
        )
        .await
    }

    async fn deliver(&self, raw: &[u8]) -> pipeline::Delivery {
        let raw = Arc::new(raw.to_vec());
        let parsed = Ingestor::parse(raw.clone()).await.unwrap();
        self.ingestor
            .deliver_to_inbox(
                &self.ctx,
                self.inbox,
                &raw,
                &parsed,
                None,
                Default::default(),
                pipeline::Source::Smtp,
            )
            .await
            .unwrap()
    }

    /// Delivers "Hi" from eve@example.org with `message_id` and `subject`.
    async fn deliver_hi(&self, message_id: &str, subject: &str) -> pipeline::Delivery {
        self.deliver(&mail(message_id, "eve@example.org", subject, "", "Hi"))
            .await
    }

    /// Polls until `check` accepts the conversation.
    async fn wait<F>(
        &self,
        id: Uuid,
        what: &str,
        check: F,
    ) -> postvak_proto::rest::conversation::ConversationDetail
    where
        F: Fn(&postvak_proto::rest::conversation::ConversationDetail) -> bool,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(c) = self.conversations.get(&self.ctx, id).await
                && check(&c)
            {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "conversation {id}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the rule queue is empty (every queued event handled).
    async fn drained(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut tx = self.cells.default_cell().db().begin().await.unwrap();
            let n: i64 = on_tx!(&mut tx, |c| sqlx::query_scalar(
                "SELECT COUNT(*) FROM routing_rule_queue"
            )
            .fetch_one(c)
            .await)
            .unwrap();
            tx.commit().await.unwrap();
            if n == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rule queue not drained"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until `n` rules fired for the conversation, then until the queue is drained (the
    /// decisions were sent).
    async fn wait_fired(&self, conv: Uuid, n: usize) -> Vec<rev::RuleFiredV1> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let fired = self.fired(conv).await;
            if fired.len() >= n {
                self.drained().await;
                return fired;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} rules did not fire for {conv}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fired(&self, conv: Uuid) -> Vec<rev::RuleFiredV1> {
        self.ctx
            .read_stream(&StreamRef::new(
                rev::STREAM_DECISION,
                format!("decisions-{conv}"),
            ))
            .await
            .unwrap()
            .iter()
            .filter(|e| e.event_type == rev::RULE_FIRED)
            .map(|e| e.payload().unwrap())
            .collect()
    }
}

fn mail(id: &str, from: &str, subject: &str, extra: &str, body: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Customer <{from}>\r\nTo: support@acme.test\r\nSubject: {subject}\r\n\
         Message-ID: <{id}>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0100\r\n"
    );
    if !extra.is_empty() {
        m.push_str(extra);
        m.push_str("\r\n");
    }
    m.push_str("\r\n");
    m.push_str(body);
    m.push_str("\r\n");
    m.into_bytes()
}

fn round_robin(team: Uuid) -> Value {
    json!({"name": "Billing round-robin", "actions": [
        {"type": "assign_team", "team": team, "strategy": "round_robin"},
        {"type": "add_tag", "tag": "billing"}
    ]})
}

#[tokio::test]
async fn rules_are_managed_validated_and_ordered_by_inbox_admins() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        let base = format!("/v1/inboxes/{}/rules", env.inbox);
        // An agent without the admin role on the inbox may not.
        let r = env.call("GET", &base, &env.alice, None).await;
        assert_eq!(r.status, 403, "{backend:?}: {r:?}");
        assert_eq!(r.body["code"], "inbox_permission_required");

        let bad = env
            .call("POST", &base, &env.admin, Some(json!({"name": "Bad", "conditions": [
                {"type": "subject_regex", "pattern": "(unclosed"}], "actions": [{"type": "close"}]})))
            .await;
        assert_eq!(bad.status, 422, "{bad:?}");
        assert_eq!(bad.body["code"], "invalid_regex");
        let huge = env
            .call("POST", &base, &env.admin, Some(json!({"name": "Huge", "conditions": [
                {"type": "body_regex", "pattern": "\\w{500}\\w{500}"}], "actions": [{"type": "close"}]})))
            .await;
        assert_eq!(huge.body["code"], "invalid_regex", "{huge:?}");
        for body in [
            json!({"name": "No actions", "actions": []}),
            json!({"name": "x", "actions": [{"type": "assign_team", "strategy": "fastest", "team": env.team}]}),
            json!({"name": "x", "actions": [{"type": "set_priority", "priority": "sky-high"}]}),
            json!({"name": "x", "match": "some", "actions": [{"type": "close"}]}),
            json!({"name": "x", "conditions": [{"type": "channel", "values": ["fax"]}], "actions": [{"type": "close"}]}),
        ] {
            let r = env
                .call("POST", &base, &env.admin, Some(body.clone()))
                .await;
            assert_eq!(r.status, 422, "{body}: {r:?}");
            assert_eq!(r.body["code"], "invalid_rule", "{body}");
        }
        let r = env
            .call(
                "POST",
                &base,
                &env.admin,
                Some(json!({"name": "x", "actions": [{"type": "explode"}]})),
            )
            .await;
        assert!(r.status == 400 || r.status == 422, "{r:?}");
        assert!(r.body["code"].is_string());

        let a = env
            .rule(json!({"name": "A", "actions": [{"type": "add_tag", "tag": "a"}]}))
            .await;
        let b = env
            .rule(json!({"name": "B", "stop_processing": true, "actions": [{"type": "close"}]}))
            .await;
        let c = env.rule(round_robin(env.team)).await;
        let list = env.call("GET", &base, &env.admin, None).await;
        let names: Vec<&str> = list.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["A", "B", "Billing round-robin"], "{backend:?}");
        assert_eq!(
            list.body["items"][2]["actions"][0]["strategy"],
            "round_robin"
        );
        assert_eq!(list.body["items"][0]["triggers"], json!(["opened"]));

        let r = env
            .call(
                "POST",
                &format!("{base}/reorder"),
                &env.admin,
                Some(json!({"rule_ids": [c, a]})),
            )
            .await;
        assert_eq!(r.body["code"], "invalid_rule_order", "{r:?}");
        let r = env
            .call(
                "POST",
                &format!("{base}/reorder"),
                &env.admin,
                Some(json!({"rule_ids": [c, a, b]})),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let order: Vec<&str> = r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(order, [c.to_string(), a.to_string(), b.to_string()]);

        let r = env
            .call("PUT", &format!("{base}/{a}"), &env.admin, Some(json!({"name": "A2", "enabled": false, "actions": [{"type": "add_tag", "tag": "a2"}]})))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["position"], 1);
        let r = env
            .call("GET", &format!("{base}/{a}"), &env.admin, None)
            .await;
        assert_eq!(r.body["name"], "A2");
        assert_eq!(r.body["enabled"], false);
        let r = env
            .call("DELETE", &format!("{base}/{b}"), &env.admin, None)
            .await;
        assert_eq!(r.status, 204);
        let r = env
            .call("GET", &format!("{base}/{b}"), &env.admin, None)
            .await;
        assert_eq!(r.status, 404);
        let r = env
            .call("DELETE", &format!("{base}/{b}"), &env.admin, None)
            .await;
        assert_eq!(r.status, 404);
        let r = env.call("GET", &base, &env.admin, None).await;
        assert_eq!(r.body["items"].as_array().unwrap().len(), 2);

        // The read model is sealed: no rule text in the clear.
        let mut tx = env
            .cells
            .default_cell()
            .db()
            .tenant_tx(env.tenant, false)
            .await
            .unwrap();
        let bodies: Vec<Vec<u8>> = on_tx!(&mut tx, |x| sqlx::query_scalar(
            "SELECT body FROM routing_rules"
        )
        .fetch_all(x)
        .await)
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(bodies.len(), 2);
        assert!(
            bodies
                .iter()
                .all(|b| !String::from_utf8_lossy(b).contains("round_robin"))
        );
    }
}

#[tokio::test]
async fn dry_run_shows_which_rules_would_fire_and_changes_nothing() {
    let env = Env::new(Backend::Sqlite).await;
    let vip = env
        .rule(json!({"name": "VIP", "stop_processing": true,
            "conditions": [{"type": "vip", "values": ["@bigcorp.example", "ceo@acme-customer.test"]}],
            "actions": [{"type": "set_priority", "priority": "urgent"}, {"type": "assign_user", "user": env.bob.id}]}))
        .await;
    let refund = env
        .rule(json!({"name": "Refunds", "match": "any",
            "conditions": [{"type": "subject_regex", "pattern": "refund|money back"}, {"type": "body_words", "values": ["chargeback"]}],
            "actions": [{"type": "add_tag", "tag": "billing"}, {"type": "assign_team", "team": env.team, "strategy": "round_robin"}]}))
        .await;
    let path = format!("/v1/inboxes/{}/rules/dry-run", env.inbox);
    let r = env
        .call("POST", &path, &env.admin, Some(json!({"from": "ann@example.org", "to": ["support@acme.test"], "subject": "I want a REFUND"})))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let fired = r.body["fired"].as_array().unwrap();
    assert_eq!(fired.len(), 1, "{r:?}");
    assert_eq!(fired[0]["rule_id"], refund.to_string());
    let first_pick = fired[0]["actions"][1]["user"].clone();
    assert!(
        first_pick == json!(env.alice.id) || first_pick == json!(env.bob.id),
        "{r:?}"
    );
    assert_eq!(
        fired[0]["actions"][0],
        json!({"type": "add_tag", "tag": "billing"})
    );
    // Nothing moved: the same question gets the same answer.
    let again = env
        .call(
            "POST",
            &path,
            &env.admin,
            Some(json!({"from": "ann@example.org", "subject": "I want a REFUND"})),
        )
        .await;
    assert_eq!(again.body["fired"][0]["actions"][1]["user"], first_pick);

    // A VIP stops the evaluation.
    let r = env
        .call(
            "POST",
            &path,
            &env.admin,
            Some(json!({"from": "Boss@BigCorp.example", "subject": "refund"})),
        )
        .await;
    let fired = r.body["fired"].as_array().unwrap();
    assert_eq!(fired.len(), 1, "{r:?}");
    assert_eq!(fired[0]["rule_id"], vip.to_string());
    assert_eq!(
        fired[0]["actions"],
        json!([{"type": "set_priority", "priority": "urgent"}, {"type": "assign", "user": env.bob.id}])
    );
    let r = env
        .call(
            "POST",
            &path,
            &env.admin,
            Some(json!({"from": "x@example.org", "subject": "hello"})),
        )
        .await;
    assert_eq!(r.body["fired"], json!([]));
    let r = env
        .call(
            "POST",
            &path,
            &env.admin,
            Some(json!({"from": "x@example.org", "channel": "pigeon"})),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["code"], "invalid_channel");
    let r = env
        .call(
            "POST",
            &path,
            &env.alice,
            Some(json!({"from": "x@example.org"})),
        )
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn inbound_mail_is_assigned_round_robin_and_the_events_name_the_rule() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        let rule = env.rule(round_robin(env.team)).await;
        let mut assignees = Vec::new();
        for i in 0..4 {
            let d = env
                .deliver_hi(&format!("rr{i}@example.org"), "Invoice")
                .await;
            let c = env
                .wait(d.conversation_id, "assigned", |c| {
                    c.conversation.assignee.is_some()
                })
                .await;
            assert_eq!(
                c.conversation.tags,
                vec!["billing".to_owned()],
                "{backend:?}"
            );
            assignees.push(c.conversation.assignee.unwrap());

            // The assignment names the rule; routing recorded why.
            let loaded = env
                .conversations
                .load(&env.ctx, d.conversation_id)
                .await
                .unwrap();
            let assigned = loaded
                .events
                .iter()
                .find(|e| e.event_type == "conversation.assigned")
                .unwrap();
            assert_eq!(
                assigned.metadata.actor,
                Some(format!("rule:{rule}")),
                "{backend:?}"
            );
            assert_eq!(assigned.metadata.causation_id, Some(rule));
            let fired = env.fired(d.conversation_id).await;
            assert_eq!(fired.len(), 1);
            assert_eq!(fired[0].rule_id, rule);
            assert_eq!(fired[0].rule_name, "Billing round-robin");
            assert_eq!(fired[0].trigger, "opened");
            assert_eq!(
                assigned.metadata.correlation_id,
                Some(fired[0].trigger_event_id)
            );
        }
        let alice = assignees.iter().filter(|a| **a == env.alice.id).count();
        let bob = assignees.iter().filter(|a| **a == env.bob.id).count();
        assert_eq!((alice, bob), (2, 2), "{backend:?}: {assignees:?}");
        assert_ne!(assignees[0], assignees[1]);
        let r = env.availability_of(&env.alice).await;
        assert_eq!(r.body["open_assigned"], 2, "{r:?}");
        assert_eq!(r.body["status"], "online");
    }
}

#[tokio::test]
async fn assignment_skips_unavailable_and_full_agents() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        env.rule(json!({"name": "Least loaded", "actions": [
            {"type": "assign_team", "team": env.team, "strategy": "least_loaded"}]}))
            .await;
        let r = env
            .availability(&env.alice, json!({"status": "away"}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["status"], "away");
        let r = env
            .availability(&env.bob, json!({"status": "online", "capacity": 1}))
            .await;
        assert_eq!(r.body["capacity"], 1);
        // Validation and who may set it.
        let r = env
            .availability(&env.bob, json!({"status": "asleep"}))
            .await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (422, Some("invalid_availability"))
        );
        let r = env
            .call(
                "PUT",
                &format!("/v1/users/{}/availability", env.bob.id),
                &env.alice,
                Some(json!({"status": "away"})),
            )
            .await;
        assert_eq!(r.status, 403, "{r:?}");
        let r = env
            .call(
                "PUT",
                &format!("/v1/users/{}/availability", env.bob.id),
                &env.admin,
                Some(json!({"status": "online", "capacity": 1})),
            )
            .await;
        assert_eq!(r.status, 200, "an admin may: {r:?}");

        let first = env
            .deliver(&mail("cap1@example.org", "eve@example.org", "One", "", "1"))
            .await;
        let c = env
            .wait(first.conversation_id, "assigned", |c| {
                c.conversation.assignee.is_some()
            })
            .await;
        assert_eq!(
            c.conversation.assignee,
            Some(env.bob.id),
            "{backend:?}: alice is away"
        );
        // Bob is full, Alice away: nobody takes the second one.
        let second = env
            .deliver(&mail("cap2@example.org", "eve@example.org", "Two", "", "2"))
            .await;
        let fired = env.wait_fired(second.conversation_id, 1).await;
        assert_eq!(fired.len(), 1, "{backend:?}");
        assert_eq!(
            fired[0].actions[0],
            postvak_proto::rest::routing::DecidedAction::NoAssignee {
                team: Some(env.team),
                strategy: "least_loaded".into(),
            }
        );
        let c = env
            .conversations
            .get(&env.ctx, second.conversation_id)
            .await
            .unwrap();
        assert_eq!(c.conversation.assignee, None);
        // Alice is back: the next one is hers.
        env.availability(&env.alice, json!({"status": "online"}))
            .await;
        let third = env
            .deliver(&mail(
                "cap3@example.org",
                "eve@example.org",
                "Three",
                "",
                "3",
            ))
            .await;
        let c = env
            .wait(third.conversation_id, "assigned", |c| {
                c.conversation.assignee.is_some()
            })
            .await;
        assert_eq!(c.conversation.assignee, Some(env.alice.id), "{backend:?}");

        // Bob goes out of office handing his conversation over (to Alice, the one left).
        let r = env
            .availability(
                &env.bob,
                json!({"status": "out_of_office", "reassign": true}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let c = env
            .wait(first.conversation_id, "reassigned", |c| {
                c.conversation.assignee == Some(env.alice.id)
            })
            .await;
        assert_eq!(c.conversation.assignee, Some(env.alice.id));
        let fired = env.fired(first.conversation_id).await;
        assert_eq!(fired.last().unwrap().trigger, "reassign");
    }
}

#[tokio::test]
async fn an_auto_reply_rule_never_answers_an_auto_reply() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        let created = env
            .call(
                "POST",
                "/v1/templates",
                &env.admin,
                Some(json!({"name": "Ack", "body": "Thanks {{contact.name}}, we are on it."})),
            )
            .await;
        assert_eq!(created.status, 201, "{created:?}");
        let created = created.body;
        let template: Uuid = created["id"].as_str().unwrap().parse().unwrap();
        env.rule(json!({"name": "Acknowledge", "actions": [{"type": "auto_reply", "template_id": template}]}))
            .await;

        let human = env
            .deliver(&mail(
                "h@example.org",
                "eve@example.org",
                "Help",
                "",
                "Please",
            ))
            .await;
        let c = env
            .wait(human.conversation_id, "auto-replied", |c| {
                c.messages.iter().any(|m| m.direction == "outbound")
            })
            .await;
        let out = c
            .messages
            .iter()
            .find(|m| m.direction == "outbound")
            .unwrap();
        assert_eq!(
            out.body_text.as_deref(),
            Some("Thanks Customer, we are on it."),
            "{backend:?}"
        );

        let robot = env
            .deliver(&mail(
                "ooo@example.org",
                "robot@example.org",
                "Out of office",
                "Auto-Submitted: auto-replied",
                "Away",
            ))
            .await;
        assert_eq!(
            env.wait_fired(robot.conversation_id, 1).await.len(),
            1,
            "the rule fired…"
        );
        let c = env
            .conversations
            .get(&env.ctx, robot.conversation_id)
            .await
            .unwrap();
        assert!(
            c.messages.iter().all(|m| m.direction == "inbound"),
            "{backend:?}: …but no reply to an auto-reply"
        );
    }
}

#[tokio::test]
async fn a_redelivered_event_never_acts_twice() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        env.rule(round_robin(env.team)).await;
        let d = env.deliver_hi("dup@example.org", "Invoice").await;
        let c = env
            .wait(d.conversation_id, "assigned", |c| {
                c.conversation.assignee.is_some()
            })
            .await;
        let version = c.conversation.version;
        let first = c.conversation.assignee;
        env.drained().await;
        let fired = env.fired(d.conversation_id).await;
        assert_eq!(fired.len(), 1);

        // The consumer's event comes again (a redelivery, or a crash before the queue row was
        // removed): the worker finds the recorded decision and resends it under the same key.
        let mut tx = env.cells.default_cell().db().begin().await.unwrap();
        on_tx!(&mut tx, |x| sqlx::query(
            "INSERT INTO routing_rule_queue (event_id, tenant_id, conversation_id, inbox_id, trigger, message_id, queued_at) \
             VALUES ($1, $2, $3, $4, 'opened', NULL, 0)"
        )
        .bind(fired[0].trigger_event_id)
        .bind(env.tenant.0)
        .bind(d.conversation_id)
        .bind(env.inbox)
        .execute(x)
        .await
        .map(|_| ()))
        .unwrap();
        tx.commit().await.unwrap();
        env.drained().await;

        let c = env
            .conversations
            .get(&env.ctx, d.conversation_id)
            .await
            .unwrap();
        assert_eq!(
            c.conversation.version, version,
            "{backend:?}: nothing applied twice"
        );
        assert_eq!(c.conversation.assignee, first);
        assert_eq!(
            env.fired(d.conversation_id).await.len(),
            1,
            "{backend:?}: one decision"
        );
        let loaded = env
            .conversations
            .load(&env.ctx, d.conversation_id)
            .await
            .unwrap();
        assert_eq!(
            loaded
                .events
                .iter()
                .filter(|e| e.event_type == "conversation.assigned")
                .count(),
            1
        );
    }
}

/// Through the conversation API: replies and notes refused as stale (409) and a reply written
/// from a template are what `GET /v1/metrics` counts as duplicate replies prevented and
/// template use — and a rebuild from the log counts the same.
#[tokio::test]
async fn stale_refusals_and_template_replies_reach_the_metrics() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        postvak_routing::timers::start(env.cells.default_cell(), env.cancel.clone());
        let d = env
            .deliver(&mail("m@c.example", "c@c.example", "Help", "", "Hello?"))
            .await;
        let conv = d.conversation_id;
        env.wait(conv, "opened", |_| true).await;
        let url = |p: &str| format!("{}/v1/conversations/{conv}/{p}", env.base);
        let post = |who: &Who, p: &str, body: Value, etag: Option<u64>| {
            let mut r = env.client.post(url(p)).bearer_auth(&who.token).json(&body);
            if let Some(v) = etag {
                r = r.header("If-Match", format!("\"{v}\""));
            }
            async move {
                let r = r.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let seen = env.conversations.get(&env.ctx, conv).await.unwrap();
        let v = seen.conversation.version;
        // Alice writes first; Bob's reply and note, written against the same view, are refused.
        let (s, _) = post(&env.alice, "notes", json!({"body": "mine"}), Some(v)).await;
        assert_eq!(s, 201, "{backend:?}");
        let (s, b) = post(&env.bob, "replies", json!({"body": "Hi!"}), Some(v)).await;
        assert_eq!((s, b["code"].as_str()), (409, Some("stale_conversation")));
        let (s, b) = post(&env.bob, "notes", json!({"body": "also"}), Some(v)).await;
        assert_eq!((s, b["code"].as_str()), (409, Some("stale_conversation")));
        // A template of the inbox; a reply from it; a reply naming no template is refused.
        let t = env
            .call(
                "POST",
                "/v1/templates",
                &env.admin,
                Some(json!({"name": "Thanks", "body": "Thanks!", "inbox_id": env.inbox})),
            )
            .await;
        assert_eq!(t.status, 201, "{t:?}");
        let template = t.body["id"].as_str().unwrap().to_owned();
        let (s, b) = post(
            &env.alice,
            "replies",
            json!({"body": "Thanks!", "template_id": Uuid::now_v7()}),
            None,
        )
        .await;
        assert_eq!((s, b["code"].as_str()), (422, Some("unknown_template")));
        let (s, _) = post(
            &env.alice,
            "replies",
            json!({"body": "Thanks!", "template_id": template}),
            None,
        )
        .await;
        assert_eq!(s, 201, "{backend:?}");

        let path = format!("/v1/metrics?inbox_id={}", env.inbox);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let counts = |m: &Value| {
            (
                m["duplicate_replies_prevented"].as_u64(),
                m["template_uses"].as_u64(),
            )
        };
        loop {
            let m = env.call("GET", &path, &env.admin, None).await;
            assert_eq!(m.status, 200, "{m:?}");
            if counts(&m.body) == (Some(2), Some(1)) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend:?}: metrics {:?}",
                m.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Bob's own: the two refusals.
        let m = env
            .call(
                "GET",
                &format!("{path}&user_id={}", env.bob.id),
                &env.admin,
                None,
            )
            .await;
        assert_eq!(counts(&m.body), (Some(2), Some(0)), "{m:?}");
        postvak_routing::metrics::rebuild(&env.ctx).await.unwrap();
        let m = env.call("GET", &path, &env.admin, None).await;
        assert_eq!(counts(&m.body), (Some(2), Some(1)), "rebuilt: {m:?}");
    }
}

/// The rules of [`a_vip_contact_rule_follows_the_contacts_vip_mark`]: VIP contacts go to Bob
/// as urgent; everyone else is only tagged, so each mail's decision can be awaited.
async fn vip_contact_rules(env: &Env) -> (Uuid, Uuid) {
    let vip = env
        .rule(json!({"name": "VIP contacts", "stop_processing": true,
            "conditions": [{"type": "vip_contact"}],
            "actions": [{"type": "set_priority", "priority": "urgent"},
                        {"type": "assign_user", "user": env.bob.id},
                        {"type": "add_tag", "tag": "vip"}]}))
        .await;
    let rest = env
        .rule(json!({"name": "Everyone else",
            "actions": [{"type": "add_tag", "tag": "general"}]}))
        .await;
    (vip, rest)
}

/// Delivers a mail from `from` and answers the rules that fired for it, once applied.
async fn routed(env: &Env, n: &str, from: &str) -> (Uuid, Vec<Uuid>) {
    let d = env
        .deliver(&mail(
            &format!("vip-{n}@example.org"),
            from,
            &format!("Question {n}"),
            "",
            "Hello",
        ))
        .await;
    let fired = env.wait_fired(d.conversation_id, 1).await;
    (d.conversation_id, fired.iter().map(|f| f.rule_id).collect())
}

#[tokio::test]
async fn a_vip_contact_rule_follows_the_contacts_vip_mark() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        let (vip, rest) = vip_contact_rules(&env).await;
        let r = env
            .call(
                "POST",
                "/v1/contacts",
                &env.admin,
                Some(json!({"name": "Carla CEO", "addresses": ["ceo@bigcustomer.test"]})),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let carla = r.body["id"].as_str().unwrap().to_owned();

        // Not VIP yet: the general rule.
        let (_, fired) = routed(&env, "1", "ceo@bigcustomer.test").await;
        assert_eq!(fired, vec![rest], "{backend:?}");

        // Marked VIP over the API; the very next mail (no waiting) is routed as VIP, whatever
        // the case of its From.
        let r = env
            .call(
                "PATCH",
                &format!("/v1/contacts/{carla}"),
                &env.admin,
                Some(json!({"vip": true})),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["vip"], true);
        let (conv, fired) = routed(&env, "2", "CEO@BigCustomer.test").await;
        assert_eq!(fired, vec![vip], "{backend:?}");
        let c = env
            .wait(conv, "assigned to Bob", |c| {
                c.conversation.assignee == Some(env.bob.id)
            })
            .await;
        assert_eq!(c.conversation.priority, "urgent");
        assert_eq!(c.conversation.tags, vec!["vip".to_owned()]);
        // A colleague at the same domain is not a VIP.
        let (_, fired) = routed(&env, "3", "assistant@bigcustomer.test").await;
        assert_eq!(fired, vec![rest], "{backend:?}");

        // The dry-run sees the same.
        let path = format!("/v1/inboxes/{}/rules/dry-run", env.inbox);
        let r = env
            .call(
                "POST",
                &path,
                &env.admin,
                Some(json!({"from": "ceo@bigcustomer.test"})),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["sender_is_vip_contact"], true, "{r:?}");
        assert_eq!(r.body["fired"][0]["rule_id"], vip.to_string());
        let r = env
            .call(
                "POST",
                &path,
                &env.admin,
                Some(json!({"from": "assistant@bigcustomer.test"})),
            )
            .await;
        assert_eq!(r.body["sender_is_vip_contact"], false, "{r:?}");
        assert_eq!(r.body["fired"][0]["rule_id"], rest.to_string());

        // Unmarked: general again.
        let r = env
            .call(
                "PATCH",
                &format!("/v1/contacts/{carla}"),
                &env.admin,
                Some(json!({"vip": false})),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let (_, fired) = routed(&env, "4", "ceo@bigcustomer.test").await;
        assert_eq!(fired, vec![rest], "{backend:?}");

        // Merged: a VIP duplicate makes the survivor VIP, for both its addresses.
        let r = env
            .call(
                "POST",
                "/v1/contacts",
                &env.admin,
                Some(json!({"addresses": ["carla@home.test"], "vip": true})),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let duplicate = r.body["id"].as_str().unwrap().to_owned();
        let r = env
            .call(
                "POST",
                &format!("/v1/contacts/{duplicate}/merge"),
                &env.admin,
                Some(json!({"into": carla})),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["vip"], true, "{r:?}");
        let (_, fired) = routed(&env, "5", "ceo@bigcustomer.test").await;
        assert_eq!(fired, vec![vip], "{backend:?}: the survivor's own address");
        let (_, fired) = routed(&env, "6", "carla@home.test").await;
        assert_eq!(fired, vec![vip], "{backend:?}: the duplicate's address");

        // Erased: neither address is a VIP any more (their next mail makes a new contact).
        let r = env
            .call("DELETE", &format!("/v1/contacts/{carla}"), &env.admin, None)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let (_, fired) = routed(&env, "7", "carla@home.test").await;
        assert_eq!(fired, vec![rest], "{backend:?}");
        let (_, fired) = routed(&env, "8", "ceo@bigcustomer.test").await;
        assert_eq!(fired, vec![rest], "{backend:?}");

        // Routing's table is rebuilt from the log to the same answer.
        let n = postvak_routing::vip::rebuild(&env.ctx).await.unwrap();
        assert!(n >= 6, "{n} contact events");
        assert!(
            !postvak_routing::vip::is_vip_contact(&env.ctx, "carla@home.test")
                .await
                .unwrap()
        );
        let r = env
            .call(
                "POST",
                &path,
                &env.admin,
                Some(json!({"from": "carla@home.test"})),
            )
            .await;
        assert_eq!(r.body["sender_is_vip_contact"], false, "{r:?}");
    }
}

#[tokio::test]
async fn a_vip_contact_condition_is_written_and_read_back() {
    let env = Env::new(Backend::Sqlite).await;
    let id = env
        .rule(
            json!({"name": "VIP", "conditions": [{"type": "vip_contact"}],
            "actions": [{"type": "add_tag", "tag": "vip"}]}),
        )
        .await;
    let r = env
        .call(
            "GET",
            &format!("/v1/inboxes/{}/rules/{id}", env.inbox),
            &env.admin,
            None,
        )
        .await;
    assert_eq!(
        r.body["conditions"],
        json!([{"type": "vip_contact"}]),
        "{r:?}"
    );
    // A stray field is refused, as for every condition.
    let r = env
        .call(
            "POST",
            &format!("/v1/inboxes/{}/rules", env.inbox),
            &env.admin,
            Some(
                json!({"name": "Bad", "conditions": [{"type": "vip_contact", "values": ["x"]}],
                "actions": [{"type": "add_tag", "tag": "vip"}]}),
            ),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
}

/// Mails arriving together are decided in one batch of the rule worker: the round-robin
/// pointer and the agents' workloads move from one decision to the next within it, as if the
/// mails had come one by one, and the pointer is kept for the mail after.
#[tokio::test]
async fn a_burst_of_mails_is_assigned_as_if_they_came_one_by_one() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        env.rule(round_robin(env.team)).await;
        let mut ids = Vec::new();
        for i in 0..8 {
            let d = env
                .deliver_hi(&format!("burst{i}@example.org"), "Invoice")
                .await;
            ids.push(d.conversation_id);
        }
        let mut assignees = Vec::new();
        for id in &ids {
            let c = env
                .wait(*id, "assigned", |c| c.conversation.assignee.is_some())
                .await;
            assignees.push(c.conversation.assignee.unwrap());
        }
        let alice = assignees.iter().filter(|a| **a == env.alice.id).count();
        assert_eq!(
            (alice, assignees.len() - alice),
            (4, 4),
            "{backend:?}: {assignees:?}"
        );
        for id in &ids {
            assert_eq!(env.fired(*id).await.len(), 1, "{backend:?}: decided once");
        }
        env.drained().await;
        // The pointer was kept after the burst: it names the agent the burst's last decision
        // (in queue order, which concurrent filing may make differ from delivery order) gave a
        // mail to, and the next mail goes to the other one.
        let t = env.ctx.tenant();
        let mut tx = env
            .cells
            .default_cell()
            .db()
            .tenant_tx(t, false)
            .await
            .unwrap();
        let pointers: Vec<Uuid> = on_tx!(&mut tx, |c| sqlx::query_scalar(
            "SELECT last_user FROM routing_pointers WHERE tenant_id = $1"
        )
        .bind(t.0)
        .fetch_all(c)
        .await)
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(pointers.len(), 1, "{backend:?}: one round-robin pointer");
        assert!(assignees.contains(&pointers[0]), "{backend:?}");
        let d = env.deliver_hi("after-burst@example.org", "Invoice").await;
        let c = env
            .wait(d.conversation_id, "assigned", |c| {
                c.conversation.assignee.is_some()
            })
            .await;
        let next = c.conversation.assignee.unwrap();
        assert_ne!(next, pointers[0], "{backend:?}");
    }
}

/// Least loaded over a burst decided in one batch: each decision counts the ones before it,
/// so nobody is given more than their capacity.
#[tokio::test]
async fn a_burst_never_fills_an_agent_over_capacity() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        for who in [&env.alice, &env.bob] {
            let r = env
                .availability(who, json!({"status": "online", "capacity": 2}))
                .await;
            assert_eq!(r.status, 200, "{r:?}");
        }
        env.rule(json!({"name": "Least loaded", "actions": [
            {"type": "assign_team", "team": env.team, "strategy": "least_loaded"}]}))
            .await;
        let mut burst = Vec::new();
        for i in 0..6 {
            let d = env
                .deliver_hi(&format!("full{i}@example.org"), "Question")
                .await;
            burst.push(d.conversation_id);
        }
        let mut unassigned = 0;
        for id in &burst {
            let fired = env.wait_fired(*id, 1).await;
            assert_eq!(fired.len(), 1, "{backend:?}");
            if fired[0]
                .actions
                .iter()
                .any(|a| matches!(a, DecidedAction::NoAssignee { .. }))
            {
                unassigned += 1;
            }
        }
        assert_eq!(unassigned, 2, "{backend:?}");
        for who in [&env.alice, &env.bob] {
            let r = env.availability_of(who).await;
            assert_eq!(r.body["open_assigned"], 2, "{backend:?}: {r:?}");
        }
    }
}

/// Runs one command on a conversation as the admin.
async fn change(env: &Env, id: Uuid, cmd: ConversationCommand) {
    env.conversations
        .change(&env.ctx, id, None, |_| Ok(vec![cmd.clone()]))
        .await
        .unwrap();
}

/// Polls until Alice's and Bob's `open_assigned` are `want`.
async fn wait_open_assigned(env: &Env, backend: Backend, want: (i64, i64), after: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut got = Vec::new();
        for who in [&env.alice, &env.bob] {
            let r = env.availability_of(who).await;
            got.push(r.body["open_assigned"].as_i64().unwrap_or(-1));
        }
        if (got[0], got[1]) == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{backend:?}, after {after}: (Alice, Bob) open assigned {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An agent's open assigned conversations — what least-loaded and capacity decide by — follow
/// every change of their conversations: assignment, reassignment, closing, reopening,
/// unassignment and merging (counted as the facts change, ADR 0042).
#[tokio::test]
async fn an_agents_open_count_follows_every_change_of_their_conversations() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let d = env
                .deliver_hi(&format!("open{i}@example.org"), "Hello")
                .await;
            env.wait(d.conversation_id, "opened", |_| true).await;
            ids.push(d.conversation_id);
        }
        let by = || Actor::Admin(env.admin.id);
        let assign = |user: Uuid| ConversationCommand::Assign {
            assignee: user,
            by: by(),
            at_us: now_us(),
        };
        let status = |status: Status| ConversationCommand::SetStatus {
            status,
            by: by(),
            at_us: now_us(),
        };
        change(&env, ids[0], assign(env.alice.id)).await;
        change(&env, ids[1], assign(env.alice.id)).await;
        change(&env, ids[2], assign(env.bob.id)).await;
        wait_open_assigned(&env, backend, (2, 1), "three assignments").await;
        change(&env, ids[1], assign(env.bob.id)).await;
        wait_open_assigned(&env, backend, (1, 2), "a reassignment").await;
        change(&env, ids[0], status(Status::Closed)).await;
        wait_open_assigned(&env, backend, (0, 2), "closing").await;
        change(&env, ids[0], status(Status::Open)).await;
        wait_open_assigned(&env, backend, (1, 2), "reopening").await;
        change(&env, ids[0], status(Status::Pending)).await;
        wait_open_assigned(&env, backend, (1, 2), "pending (still open)").await;
        change(
            &env,
            ids[2],
            ConversationCommand::Unassign {
                by: by(),
                at_us: now_us(),
            },
        )
        .await;
        wait_open_assigned(&env, backend, (1, 1), "an unassignment").await;
        env.conversations
            .merge(&env.ctx, ids[1], ids[0], None, by(), |_| Ok(()))
            .await
            .unwrap();
        wait_open_assigned(&env, backend, (1, 0), "merging Bob's into Alice's").await;
    }
}
