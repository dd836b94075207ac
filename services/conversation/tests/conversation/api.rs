//! The REST API through a real HTTP server: two agents, collisions, permissions, replies.

use crate::helpers::*;
use postvak_core::access::{InboxRole, TenantRole};
use serde_json::json;
use uuid::Uuid;

async fn with_conversation(env: &TestEnv) -> Uuid {
    let d = env
        .deliver(
            env.inbox,
            &mail("m1@example.org", "Printer on fire", "", "It burns."),
        )
        .await;
    env.wait_for_conversation(d.conversation_id, 1).await;
    d.conversation_id
}

#[tokio::test]
async fn two_agents_claim_at_once_and_exactly_one_gets_409_naming_the_holder() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let id = with_conversation(&env).await;
        let path = format!("/v1/conversations/{id}/claim");
        let (a, b) = tokio::join!(
            app.call("POST", &path, &env.alice, None, &[]),
            app.call("POST", &path, &env.bob, None, &[])
        );
        let mut statuses = [a.status, b.status];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "{backend:?}: {a:?} {b:?}");
        let (won, lost, winner) = if a.status == 200 {
            (a, b, env.alice.id)
        } else {
            (b, a, env.bob.id)
        };
        assert_eq!(won.body["assignee"], json!(winner));
        assert_eq!(lost.body["code"], "conversation_claimed");
        assert_eq!(lost.body["holder"], json!(winner));
        assert!(lost.content_type.starts_with("application/problem+json"));
        // The list shows it assigned to the winner.
        let mine = app
            .get(&format!("/v1/conversations?assignee={winner}"), &env.alice)
            .await;
        assert_eq!(mine.status, 200);
        assert_eq!(mine.body["items"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_reply_against_a_stale_view_is_refused_with_what_changed() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let id = with_conversation(&env).await;
        let seen = app
            .get(&format!("/v1/conversations/{id}"), &env.alice)
            .await;
        assert_eq!(seen.status, 200);
        let etag = seen.etag.clone().unwrap();
        // Meanwhile the customer writes again.
        env.deliver(
            env.inbox,
            &mail(
                "m2@example.org",
                "Re: Printer on fire",
                "In-Reply-To: <m1@example.org>",
                "Now the desk too.",
            ),
        )
        .await;
        env.wait_for_conversation(id, 2).await;
        let r = app
            .call(
                "POST",
                &format!("/v1/conversations/{id}/replies"),
                &env.alice,
                Some(json!({"body": "Use the extinguisher."})),
                &[("If-Match", &etag)],
            )
            .await;
        assert_eq!(r.status, 409, "{backend:?}: {r:?}");
        assert_eq!(r.body["code"], "stale_conversation");
        assert_eq!(
            r.body["changes"][0]["change"],
            "conversation.message_received"
        );
        assert_eq!(r.body["new_messages"][0]["snippet"], "Now the desk too.");
        // With the fresh ETag it goes through, as the inbox.
        let fresh = r.etag.unwrap();
        let ok = app
            .call(
                "POST",
                &format!("/v1/conversations/{id}/replies"),
                &env.alice,
                Some(json!({"body": "Use the extinguisher."})),
                &[("If-Match", &fresh)],
            )
            .await;
        assert_eq!(ok.status, 201, "{ok:?}");
        assert_eq!(ok.body["from"][0]["address"], "support@acme.test");
        assert_eq!(ok.body["to"][0]["address"], "eve@example.org");
        assert_eq!(ok.body["in_reply_to"], json!(["m2@example.org"]));
        assert_eq!(
            ok.body["references"],
            json!(["m1@example.org", "m2@example.org"])
        );
        assert_eq!(ok.body["subject"], "Re: Printer on fire");
        let header = ok.body["message_id_header"].as_str().unwrap();
        assert!(header.ends_with("@acme.test"), "{header}");
        // Kept as the shared mailbox's sent item, and queued for sending.
        let detail = app.get(&format!("/v1/conversations/{id}"), &env.bob).await;
        assert_eq!(detail.body["messages"][2]["direction"], "outbound");
        assert_eq!(
            detail.body["messages"][2]["body_text"],
            "Use the extinguisher."
        );
        let events = env
            .ctx
            .read_stream(&postvak_platform::store::StreamRef::new(
                "conversation",
                format!("conv-{id}"),
            ))
            .await
            .unwrap();
        let queued = events
            .iter()
            .find(|e| e.event_type == "reply.queued")
            .unwrap();
        let p: postvak_proto::events::conversation::MessageV1 = queued.payload().unwrap();
        assert_eq!(p.from[0].address, "support@acme.test");
        assert_eq!(p.conversation_id, id);
        assert_eq!(p.author, Some(env.alice.id));
    }
}

#[tokio::test]
async fn a_read_member_may_look_but_not_act_and_others_see_nothing() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let id = with_conversation(&env).await;
        assert_eq!(
            app.get(&format!("/v1/conversations/{id}"), &env.reader)
                .await
                .status,
            200
        );
        for (method, path, body) in [
            (
                "POST",
                format!("/v1/conversations/{id}/replies"),
                Some(json!({"body": "hi"})),
            ),
            (
                "POST",
                format!("/v1/conversations/{id}/notes"),
                Some(json!({"body": "hi"})),
            ),
            (
                "PUT",
                format!("/v1/conversations/{id}/assignee"),
                Some(json!({"user_id": env.alice.id})),
            ),
            ("POST", format!("/v1/conversations/{id}/claim"), None),
        ] {
            let r = app.call(method, &path, &env.reader, body, &[]).await;
            assert_eq!(r.status, 403, "{backend:?} {method} {path}: {r:?}");
            assert_eq!(r.body["code"], "inbox_permission_required");
        }
        // No grant at all: it does not exist. Joined the inbox later: not a participant.
        let stranger = env.user("stranger@acme.test", TenantRole::Agent).await;
        let late = env.agent("late@acme.test", InboxRole::Reply).await;
        for who in [&stranger, &late] {
            assert_eq!(
                app.get(&format!("/v1/conversations/{id}"), who)
                    .await
                    .status,
                404
            );
            let r = app
                .post(
                    &format!("/v1/conversations/{id}/notes"),
                    who,
                    json!({"body": "x"}),
                )
                .await;
            assert_eq!(r.status, 404);
            let list = app.get("/v1/conversations", who).await;
            assert_eq!(list.body["items"], json!([]));
        }
        // Added explicitly, the late member takes part.
        let add = app
            .post(
                &format!("/v1/conversations/{id}/participants"),
                &env.alice,
                json!({"user_id": late.id}),
            )
            .await;
        assert_eq!(add.status, 200, "{add:?}");
        assert_eq!(
            app.get(&format!("/v1/conversations/{id}"), &late)
                .await
                .status,
            200
        );
    }
}

#[tokio::test]
async fn handed_to_a_hub_and_archived_from_the_first_inbox_it_stays_live_for_the_hub() {
    let env = TestEnv::new(Backend::Postgres).await;
    let app = env.spawn_app().await;
    let id = with_conversation(&env).await;
    let hub = env.add_inbox("Hub", "hub@acme.test").await;
    let hubber = env.user("dave@acme.test", TenantRole::Agent).await;
    env.directory
        .grant_inbox(
            &env.ctx,
            hub,
            postvak_core::access::Grantee::User(hubber.id),
            InboxRole::Reply,
            None,
            None,
        )
        .await
        .unwrap();
    let r = app
        .post(
            &format!("/v1/conversations/{id}/participants"),
            &env.alice,
            json!({"inbox_id": hub}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body["participants"]
            .as_array()
            .unwrap()
            .contains(&json!(hubber.id))
    );
    let r = app
        .post(
            &format!("/v1/conversations/{id}/archive"),
            &env.alice,
            json!({"inbox_id": env.inbox}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let first = app
        .get(
            &format!("/v1/conversations?inbox={}", env.inbox),
            &env.alice,
        )
        .await;
    assert_eq!(
        first.body["items"],
        json!([]),
        "gone from the first inbox's view"
    );
    let archived = app
        .get(
            &format!("/v1/conversations?inbox={}&archived=true", env.inbox),
            &env.alice,
        )
        .await;
    assert_eq!(archived.body["items"].as_array().unwrap().len(), 1);
    let hub_view = app
        .get(&format!("/v1/conversations?inbox={hub}"), &hubber)
        .await;
    assert_eq!(hub_view.body["items"][0]["id"], json!(id), "{hub_view:?}");
    assert_eq!(hub_view.body["items"][0]["status"], "open");
    // The hub can't archive it as well: nobody would see it.
    let r = app
        .post(
            &format!("/v1/conversations/{id}/archive"),
            &hubber,
            json!({"inbox_id": hub}),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["code"], "no_other_participant");
}

#[tokio::test]
async fn filters_pagination_changes_and_idempotent_posts() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let app = env.spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let d = env
            .deliver(
                env.inbox,
                &mail(
                    &format!("p{n}@example.org"),
                    &format!("Case {n}"),
                    "",
                    "body",
                ),
            )
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        ids.push(d.conversation_id);
    }
    // Pages of two, newest first, no duplicates.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/conversations?limit=2&cursor={c}"),
            None => "/v1/conversations?limit=2".to_owned(),
        };
        let page = app.get(&q, &env.alice).await;
        assert_eq!(page.status, 200, "{page:?}");
        for item in page.body["items"].as_array().unwrap() {
            seen.push(Uuid::parse_str(item["id"].as_str().unwrap()).unwrap());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);

    let id = ids[0];
    let base = format!("/v1/conversations/{id}");
    for (method, path, body) in [
        (
            "PUT",
            format!("{base}/status"),
            json!({"status": "pending"}),
        ),
        (
            "PUT",
            format!("{base}/priority"),
            json!({"priority": "urgent"}),
        ),
        ("POST", format!("{base}/tags"), json!({"tag": "Billing"})),
        (
            "PUT",
            format!("{base}/snooze"),
            json!({"until": "2999-01-01T00:00:00Z"}),
        ),
    ] {
        let r = app.call(method, &path, &env.alice, Some(body), &[]).await;
        assert_eq!(r.status, 200, "{method} {path}: {r:?}");
    }
    let c = app.get(&base, &env.alice).await.body;
    assert_eq!(c["status"], "pending");
    assert_eq!(c["priority"], "urgent");
    assert_eq!(c["tags"], json!(["billing"]));
    assert!(c["snoozed_until"].is_string());
    for (q, n) in [
        ("status=pending", 1),
        ("status=open", 4),
        ("tag=billing", 1),
        ("snoozed=true", 1),
        ("snoozed=false", 4),
        ("unassigned=true", 5),
    ] {
        let r = app.get(&format!("/v1/conversations?{q}"), &env.alice).await;
        assert_eq!(r.body["items"].as_array().unwrap().len(), n, "{q}: {r:?}");
    }
    let r = app
        .get(
            &format!("/v1/conversations?participant={}", env.bob.id),
            &env.alice,
        )
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 5);

    // Idempotency-Key: the replay returns the first response and adds nothing.
    let note = |key: &'static str| {
        let app = app.clone();
        let path = format!("{base}/notes");
        let alice = &env.alice;
        async move {
            app.call(
                "POST",
                &path,
                alice,
                Some(json!({"body": "@bob look", "mentions": [env.bob.id]})),
                &[("Idempotency-Key", key)],
            )
            .await
        }
    };
    let first = note("k-1").await;
    assert_eq!(first.status, 201, "{first:?}");
    let again = note("k-1").await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body);
    let detail = app.get(&base, &env.alice).await.body;
    assert_eq!(detail["notes"].as_array().unwrap().len(), 1);
    assert_eq!(detail["notes"][0]["mentions"], json!([env.bob.id]));
    let reused = app
        .call(
            "POST",
            &format!("{base}/notes"),
            &env.alice,
            Some(json!({"body": "other"})),
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!(reused.status, 422);
    assert_eq!(reused.body["code"], "idempotency_key_reused");

    // Merge: the second conversation's messages move to the first.
    let r = app
        .post(
            &format!("/v1/conversations/{}/merge", ids[1]),
            &env.alice,
            json!({"into": id}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let merged = app.get(&base, &env.alice).await.body;
    assert_eq!(merged["messages"].as_array().unwrap().len(), 2, "{merged}");
    let gone = app
        .get(&format!("/v1/conversations/{}", ids[1]), &env.alice)
        .await
        .body;
    assert_eq!(gone["merged_into"], json!(id));
    let list = app.get("/v1/conversations", &env.alice).await.body;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        4,
        "merged ones leave the list"
    );

    // A merge is one transaction: into a conversation that was itself merged away, it is
    // refused and the source stays as it was (it used to be marked merged into a target that
    // never took it).
    let refused = app
        .post(
            &format!("/v1/conversations/{}/merge", ids[2]),
            &env.alice,
            json!({"into": ids[1]}),
        )
        .await;
    assert!(
        (400..500).contains(&refused.status),
        "merging into a merged-away conversation: {refused:?}"
    );
    let kept = app
        .get(&format!("/v1/conversations/{}", ids[2]), &env.alice)
        .await
        .body;
    assert_eq!(kept["id"], json!(ids[2]), "{kept}");
    assert!(kept["merged_into"].is_null(), "{kept}");
    let list = app.get("/v1/conversations", &env.alice).await.body;
    assert_eq!(list["items"].as_array().unwrap().len(), 4, "{list}");
}

#[tokio::test]
async fn an_agent_writes_first_from_the_inbox_address() {
    let env = TestEnv::new(Backend::Postgres).await;
    let app = env.spawn_app().await;
    let r = app
        .post(
            "/v1/conversations",
            &env.alice,
            json!({"inbox_id": env.inbox, "to": [{"address": "Eve@Example.org"}], "subject": "Your order", "body": "It shipped."}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let d = app
        .get(&format!("/v1/conversations/{id}"), &env.alice)
        .await
        .body;
    assert_eq!(d["messages"][0]["from"][0]["address"], "support@acme.test");
    assert_eq!(d["messages"][0]["to"][0]["address"], "eve@example.org");
    assert_eq!(d["messages"][0]["subject"], "Your order");
    // The reader can't write first.
    let r = app
        .post(
            "/v1/conversations",
            &env.reader,
            json!({"inbox_id": env.inbox, "to": [{"address": "eve@example.org"}], "subject": "x", "body": "y"}),
        )
        .await;
    assert_eq!(r.status, 403);
}

/// A change decided from a state read before someone else's change (`change_from`, what a
/// reply does with the state it checked permissions on) lands on the current state: nothing
/// is lost, an `If-Match` of the current version is not called stale, and one of the old
/// version is, naming the current one.
#[tokio::test]
async fn a_change_from_an_outdated_state_answers_about_the_current_one() {
    use postvak_conversation::ServiceError;
    use postvak_core::conversation::{Actor, ConversationCommand};
    let tag = |t: &str| {
        let t = t.to_owned();
        move |_: &postvak_core::conversation::Conversation| {
            Ok(vec![ConversationCommand::AddTag {
                tag: t.clone(),
                by: Actor::System,
                at_us: 1_700_000_000_000_000,
            }])
        }
    };
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let d = env
            .deliver(env.inbox, &mail("known@example.org", "Known", "", "Hello"))
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let id = d.conversation_id;
        let old = env.service.state(&env.ctx, id).await.unwrap();
        let changed = env
            .service
            .change(&env.ctx, id, None, tag("first"))
            .await
            .unwrap();
        let current = changed.state.version;
        assert!(current > old.version, "{backend:?}");

        let ch = env
            .service
            .change_from(
                &env.ctx,
                id,
                Some(current),
                Some(old.clone()),
                tag("second"),
            )
            .await
            .unwrap();
        assert_eq!(ch.state.version, current + 1, "{backend:?}");
        let tags: Vec<&str> = ch.state.tags.iter().map(String::as_str).collect();
        assert_eq!(tags, ["first", "second"], "{backend:?}");

        let err = env
            .service
            .change_from(
                &env.ctx,
                id,
                Some(old.version),
                Some(old.clone()),
                tag("third"),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, ServiceError::Stale { seen, current: now } if seen == old.version && now == current + 1),
            "{backend:?}: {err:?}"
        );
    }
}
