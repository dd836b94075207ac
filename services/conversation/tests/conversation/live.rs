//! `/v1/stream` read by a real HTTP client: agent B sees agent A's presence and a new note;
//! resume with `Last-Event-ID`; heartbeats; a non-participant sees nothing of it.

use crate::helpers::*;
use futures::StreamExt;
use postvak_core::access::{Grantee, InboxRole, TenantRole};
use postvak_directory::Directory;
use postvak_directory::identity::SessionKind;
use postvak_ingest::{Ingestor, pipeline};
use postvak_platform::cell::{Principal, TenantContext};
use postvak_platform::store::TenantId;
use postvak_platform::testkit;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone, Default)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: String,
    comment: bool,
}

struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(app: &TestApp, who: &Agent, last_event_id: Option<&str>) -> Self {
        let mut req = app
            .client
            .get(format!("{}/v1/stream?heartbeat_secs=1", app.base))
            .bearer_auth(&who.token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            resp,
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..i + 2).collect();
                let mut f = Frame::default();
                for line in raw.lines() {
                    if line.starts_with(':') {
                        f.comment = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        f.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        f.event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        f.data.push_str(v);
                    }
                }
                return f;
            }
            let chunk = self.resp.chunk().await.unwrap().expect("stream ended");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The first frame matching `pred` within 15 s; the frames before it.
    async fn until(&mut self, pred: impl Fn(&Frame) -> bool) -> (Frame, Vec<Frame>) {
        let mut skipped = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let f = self.next().await;
                if pred(&f) {
                    return f;
                }
                skipped.push(f);
            }
        })
        .await;
        match found {
            Ok(f) => (f, skipped),
            Err(_) => panic!("no matching frame; saw {skipped:?}"),
        }
    }
}

fn data(f: &Frame) -> serde_json::Value {
    serde_json::from_str(&f.data).unwrap()
}

#[tokio::test]
async fn agent_b_sees_agent_a_s_presence_and_new_note_over_sse() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let d = env
            .deliver(env.inbox, &mail("m1@example.org", "Help", "", "Broken."))
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let id = d.conversation_id;
        let carol = env.agent("carol@acme.test", InboxRole::Reply).await;

        let mut b = Sse::open(&app, &env.bob, None).await;
        let mut outsider = Sse::open(&app, &carol, None).await;
        // The streams are open once the first bytes came (`retry:`).
        b.next().await;
        outsider.next().await;

        let r = app
            .post(
                &format!("/v1/conversations/{id}/presence"),
                &env.alice,
                json!({"state": "replying"}),
            )
            .await;
        assert_eq!(r.status, 204, "{backend:?}: {r:?}");
        let (p, _) = b.until(|f| f.event.as_deref() == Some("presence")).await;
        let p = data(&p);
        assert_eq!(p["conversation_id"], json!(id), "{backend:?}");
        assert_eq!(p["user_id"], json!(env.alice.id));
        assert_eq!(p["state"], "replying");

        let note = app
            .post(
                &format!("/v1/conversations/{id}/notes"),
                &env.alice,
                json!({"body": "On it"}),
            )
            .await;
        assert_eq!(note.status, 201);
        let (n, _) = b
            .until(|f| {
                f.event.as_deref() == Some("conversation")
                    && data(f)["change"] == "conversation.note_added"
            })
            .await;
        assert_eq!(data(&n)["conversation_id"], json!(id), "{backend:?}");
        assert_eq!(data(&n)["version"], json!(3), "opened, mail, note");
        let note_pos = n.id.clone().expect("an id");

        // Heartbeats come when nothing else does.
        let (h, _) = b.until(|f| f.comment).await;
        assert!(h.comment);

        // Carol joined the inbox later: not a participant, so she saw neither.
        let (_, before) = outsider.until(|f| f.comment).await;
        let (_, more) = outsider.until(|f| f.comment).await;
        for f in before.iter().chain(&more) {
            assert!(f.comment || f.event.is_none(), "{backend:?}: {f:?}");
        }

        // A status change after the note; resuming after the note gets just that.
        let s = app
            .call(
                "PUT",
                &format!("/v1/conversations/{id}/status"),
                &env.alice,
                Some(json!({"status": "pending"})),
                &[],
            )
            .await;
        assert_eq!(s.status, 200, "{s:?}");
        drop(b);
        let mut again = Sse::open(&app, &env.bob, Some(&note_pos)).await;
        let (c, skipped) = again
            .until(|f| f.event.as_deref() == Some("conversation"))
            .await;
        assert_eq!(
            data(&c)["change"],
            "conversation.status_changed",
            "{backend:?}"
        );
        assert!(skipped.iter().all(|f| f.event.is_none()));

        // A presence for a conversation that doesn't exist is a 404.
        let r = app
            .post(
                &format!("/v1/conversations/{}/presence", Uuid::now_v7()),
                &env.alice,
                json!({"state": "viewing"}),
            )
            .await;
        assert_eq!(r.status, 404);
        let bad = app
            .call(
                "GET",
                "/v1/stream",
                &env.bob,
                None,
                &[("Last-Event-ID", "nonsense")],
            )
            .await;
        assert_eq!(bad.status, 400);
    }
}

/// Distributed mode: two conversation processes (each its own pools and NATS connection) on
/// one PostgreSQL database and one NATS prefix. Bob's stream on process B shows Alice's
/// presence posted on process A, each signal once; Alice on A sees Bob's; an agent of another
/// tenant, on either process, sees none of it.
#[tokio::test]
async fn presence_crosses_processes_once_and_stays_in_its_tenant() {
    init_logs();
    let url = testkit::fresh_postgres_database().await;
    postvak_platform::db::migrate(&url).await.unwrap();
    let prefix = testkit::unique_prefix();
    let cancel = tokio_util::sync::CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    // The processes of one deployment share its master key.
    let master = testkit::master_key();
    let cells_a = nats_cells(&url, &prefix, master.clone()).await;
    let cells_b = nats_cells(&url, &prefix, master).await;
    let cell_a = cells_a.default_cell();
    tokio::spawn(postvak_platform::relay::run_relay(
        cell_a.store.clone(),
        cell_a.bus.clone(),
        postvak_platform::relay::RelayOptions::new(postvak_ingest::standalone::CELL),
        cancel.clone(),
    ));
    // Process A also runs the background work (mail in → conversation).
    postvak_conversation::start_consumers(&cells_a, cell_a.clone(), cancel.clone());
    let dir_a = Directory::new(cells_a.clone());
    let dir_b = Directory::new(cells_b.clone());
    let app_a = spawn_api(&cells_a, &dir_a, &cancel);
    let app_b = spawn_api(&cells_b, &dir_b, &cancel);

    // Two tenants, each with an inbox and agents (made through process A).
    let setup = |name: &'static str, address: &'static str| {
        let (cells, dir) = (cells_a.clone(), dir_a.clone());
        async move {
            let tenant = dir.create_tenant(name, None).await.unwrap();
            let ctx = cells
                .context(tenant, Principal::Service { name: "test" })
                .await
                .unwrap();
            let inbox = dir
                .create_inbox(&ctx, "Support", &[address.to_owned()])
                .await
                .unwrap()
                .id;
            (tenant, ctx, inbox)
        }
    };
    let agent = |tenant: TenantId, ctx: TenantContext, inbox: Uuid, email: &'static str| {
        let dir = dir_a.clone();
        async move {
            let user = dir
                .create_user(&ctx, email, email, TenantRole::Agent)
                .await
                .unwrap();
            dir.grant_inbox(
                &ctx,
                inbox,
                Grantee::User(user.id),
                InboxRole::Reply,
                None,
                None,
            )
            .await
            .unwrap();
            let s = dir
                .create_session(tenant, user.id, SessionKind::Bearer, &[])
                .await
                .unwrap();
            Agent {
                id: user.id,
                token: s.token,
            }
        }
    };
    let (acme, acme_ctx, acme_inbox) = setup("Acme", "support@acme.test").await;
    let (other, other_ctx, other_inbox) = setup("Other", "help@other.test").await;
    let alice = agent(acme, acme_ctx.clone(), acme_inbox, "alice@acme.test").await;
    let bob = agent(acme, acme_ctx.clone(), acme_inbox, "bob@acme.test").await;
    let dave = agent(other, other_ctx.clone(), other_inbox, "dave@other.test").await;

    let raw = Arc::new(mail("x1@example.org", "Help", "", "Broken."));
    let parsed = Ingestor::parse(raw.clone()).await.unwrap();
    let d = Ingestor::new(cells_a.clone())
        .deliver_to_inbox(
            &acme_ctx,
            acme_inbox,
            &raw,
            &parsed,
            None,
            Default::default(),
            pipeline::Source::Api,
        )
        .await
        .unwrap();
    let id = d.conversation_id;
    // The conversation is readable on process B (the consumer on A opened it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = app_b
            .call("GET", &format!("/v1/conversations/{id}"), &bob, None, &[])
            .await;
        if r.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "conversation not opened: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut bob_on_b = Sse::open(&app_b, &bob, None).await;
    let mut alice_on_a = Sse::open(&app_a, &alice, None).await;
    let mut dave_on_b = Sse::open(&app_b, &dave, None).await;
    let mut dave_on_a = Sse::open(&app_a, &dave, None).await;
    for s in [
        &mut bob_on_b,
        &mut alice_on_a,
        &mut dave_on_b,
        &mut dave_on_a,
    ] {
        s.next().await;
    }

    // A third process on the cell's NATS, listening to every tenant's presence signals.
    let observer = postvak_platform::bus::nats::NatsBus::connect(
        &testkit::nats_url(),
        &prefix,
        postvak_ingest::standalone::CELL,
    )
    .await
    .unwrap();
    let mut wire = observer
        .client()
        .subscribe(format!(
            "{prefix}.{}.sig.presence.*",
            postvak_ingest::standalone::CELL
        ))
        .await
        .unwrap();
    observer.client().flush().await.unwrap();

    // Alice (on A) is viewing: Bob (on B) sees it.
    presence(&app_a, id, &alice, "viewing").await;
    // It crossed over NATS, on a subject naming the tenant, with ids only.
    let m = tokio::time::timeout(Duration::from_secs(10), wire.next())
        .await
        .expect("a presence signal on NATS")
        .unwrap();
    assert_eq!(
        m.subject.as_str(),
        format!(
            "{prefix}.{}.sig.presence.{}",
            postvak_ingest::standalone::CELL,
            acme.0.simple()
        )
    );
    let signal: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(signal["tenant_id"], json!(acme.0));
    assert_eq!(signal["user_id"], json!(alice.id));
    assert_eq!(signal["state"], "viewing");
    let (p, _) = bob_on_b
        .until(|f| f.event.as_deref() == Some("presence"))
        .await;
    let p = data(&p);
    assert_eq!(p["conversation_id"], json!(id));
    assert_eq!(p["user_id"], json!(alice.id));
    assert_eq!(p["state"], "viewing");

    // Bob (on B) is replying: Alice (on A) sees it.
    presence(&app_b, id, &bob, "replying").await;
    let (p, _) = alice_on_a
        .until(|f| f.event.as_deref() == Some("presence"))
        .await;
    let p = data(&p);
    assert_eq!(p["user_id"], json!(bob.id));
    assert_eq!(p["state"], "replying");

    // One signal, one frame: Alice's "replying" reaches Bob's stream exactly once (and
    // never Alice's own).
    presence(&app_a, id, &alice, "replying").await;
    let (_, frames) = bob_on_b.until(|f| f.comment).await;
    let (_, more) = bob_on_b.until(|f| f.comment).await;
    let replying: Vec<_> = frames
        .iter()
        .chain(&more)
        .filter(|f| f.event.as_deref() == Some("presence") && data(f)["state"] == "replying")
        .collect();
    assert_eq!(replying.len(), 1, "{frames:?} {more:?}");
    assert_eq!(data(replying[0])["user_id"], json!(alice.id));
    let (_, own) = alice_on_a.until(|f| f.comment).await;
    let (_, own_more) = alice_on_a.until(|f| f.comment).await;
    assert!(
        own.iter()
            .chain(&own_more)
            .all(|f| f.event.as_deref() != Some("presence")),
        "{own:?} {own_more:?}"
    );

    // The other tenant's agent, on either process, saw none of Acme's presence.
    for s in [&mut dave_on_b, &mut dave_on_a] {
        let (_, before) = s.until(|f| f.comment).await;
        let (_, after) = s.until(|f| f.comment).await;
        for f in before.iter().chain(&after) {
            assert!(f.comment || f.event.is_none(), "{f:?}");
        }
    }
}

async fn presence(app: &TestApp, id: Uuid, who: &Agent, state: &str) {
    let r = app
        .post(
            &format!("/v1/conversations/{id}/presence"),
            who,
            json!({ "state": state }),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
}
