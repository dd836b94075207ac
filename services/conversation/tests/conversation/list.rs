//! The conversation list agrees with the conversations themselves: for every filter (alone and
//! combined), paging through the list with a small page gives exactly the conversations whose
//! own state (as `GET /v1/conversations/{id}` shows it) matches, newest change first, on both
//! backends — for a tenant admin and for an agent, who sees only what they take part in.

use crate::helpers::*;
use postvak_core::access::{InboxRole, TenantRole};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

#[tokio::test]
async fn every_list_filter_agrees_with_each_conversation_postgres() {
    list_filters_agree(Backend::Postgres).await;
}

#[tokio::test]
async fn every_list_filter_agrees_with_each_conversation_sqlite() {
    list_filters_agree(Backend::Sqlite).await;
}

/// All pages of a list query (page size 3), as conversation ids in order.
async fn all_pages(app: &TestApp, who: &Agent, query: &str) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if query.is_empty() { "" } else { "&" };
        let q = match &cursor {
            Some(c) => format!("/v1/conversations?{query}{sep}limit=3&cursor={c}"),
            None => format!("/v1/conversations?{query}{sep}limit=3"),
        };
        let page = app.get(&q, who).await;
        assert_eq!(page.status, 200, "{q}: {page:?}");
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 3, "{q}: {page:?}");
        for item in items {
            out.push(Uuid::parse_str(item["id"].as_str().unwrap()).unwrap());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(out.len() < 1_000, "{q}: the cursor never ends");
    }
    out
}

async fn list_filters_agree(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let app = env.spawn_app().await;
    let admin = env.user("admin@acme.test", TenantRole::Admin).await;
    let hub = env.add_inbox("Hub", "hub@acme.test").await;
    // Carol joins the inbox after the first conversations: she takes part only in later ones.
    let mut ids = Vec::new();
    let mut carol = None;
    for n in 0..12 {
        if n == 6 {
            carol = Some(env.agent("carol@acme.test", InboxRole::Reply).await);
        }
        let inbox = if n % 4 == 3 { hub } else { env.inbox };
        let d = env
            .deliver(
                inbox,
                &mail(
                    &format!("l{n}@example.org"),
                    &format!("Case {n}"),
                    "",
                    "body",
                ),
            )
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        ids.push(d.conversation_id);
    }
    let call = |method: &'static str, path: String, body: Value| {
        let app = app.clone();
        let admin = &admin;
        async move {
            let r = app.call(method, &path, admin, Some(body), &[]).await;
            assert!(r.status < 300, "{method} {path}: {r:?}");
        }
    };
    let c = |i: usize| format!("/v1/conversations/{}", ids[i]);
    call(
        "PUT",
        format!("{}/status", c(0)),
        json!({"status": "pending"}),
    )
    .await;
    call(
        "PUT",
        format!("{}/status", c(1)),
        json!({"status": "closed"}),
    )
    .await;
    call(
        "PUT",
        format!("{}/status", c(5)),
        json!({"status": "closed"}),
    )
    .await;
    for i in [1, 2, 8] {
        call(
            "PUT",
            format!("{}/assignee", c(i)),
            json!({"user_id": env.bob.id}),
        )
        .await;
    }
    call(
        "PUT",
        format!("{}/assignee", c(4)),
        json!({"user_id": env.alice.id}),
    )
    .await;
    for i in [2, 4, 9, 3] {
        call("POST", format!("{}/tags", c(i)), json!({"tag": "vip"})).await;
    }
    call(
        "PUT",
        format!("{}/snooze", c(6)),
        json!({"until": "2999-01-01T00:00:00Z"}),
    )
    .await;
    // Handed to the hub and archived from the first inbox's view.
    call(
        "POST",
        format!("{}/participants", c(2)),
        json!({"inbox_id": hub}),
    )
    .await;
    call(
        "POST",
        format!("{}/archive", c(2)),
        json!({"inbox_id": env.inbox}),
    )
    .await;
    // Bob joins one hub conversation explicitly.
    call(
        "POST",
        format!("{}/participants", c(11)),
        json!({"user_id": env.bob.id}),
    )
    .await;
    // Merged conversations leave the list.
    call("POST", format!("{}/merge", c(10)), json!({"into": ids[9]})).await;

    // The truth: each conversation as it shows itself.
    let mut state: BTreeMap<Uuid, Value> = BTreeMap::new();
    for id in &ids {
        let r = app.get(&format!("/v1/conversations/{id}"), &admin).await;
        assert_eq!(r.status, 200, "{r:?}");
        state.insert(*id, r.body);
    }
    let since = state[&ids[6]]["updated_at"].as_str().unwrap().to_owned();
    let since_us = micros(&since);
    let has_inbox =
        |c: &Value, inbox: Uuid, archived: bool| {
            c["inboxes"].as_array().unwrap().iter().any(|i| {
                i["inbox_id"] == json!(inbox) && i["archived"].as_bool().unwrap() == archived
            })
        };
    let takes_part =
        |c: &Value, user: Uuid| c["participants"].as_array().unwrap().contains(&json!(user));
    type Pred<'a> = Box<dyn Fn(&Value) -> bool + 'a>;
    let bob = env.bob.id;
    let main = env.inbox;
    let cases: Vec<(String, Pred)> = vec![
        (String::new(), Box::new(|_| true)),
        (
            format!("inbox={main}"),
            Box::new(move |c| has_inbox(c, main, false)),
        ),
        (
            format!("inbox={main}&archived=true"),
            Box::new(move |c| has_inbox(c, main, true)),
        ),
        (
            format!("inbox={hub}"),
            Box::new(move |c| has_inbox(c, hub, false)),
        ),
        (
            format!("inbox={main}&status=open"),
            Box::new(move |c| has_inbox(c, main, false) && c["status"] == "open"),
        ),
        (
            format!("inbox={main}&status=closed&assignee={bob}"),
            Box::new(move |c| {
                has_inbox(c, main, false) && c["status"] == "closed" && c["assignee"] == json!(bob)
            }),
        ),
        (
            "status=pending".into(),
            Box::new(|c| c["status"] == "pending"),
        ),
        ("status=open".into(), Box::new(|c| c["status"] == "open")),
        (
            format!("assignee={bob}"),
            Box::new(move |c| c["assignee"] == json!(bob)),
        ),
        (
            "unassigned=true".into(),
            Box::new(|c| c["assignee"].is_null()),
        ),
        (
            "tag=vip".into(),
            Box::new(|c| c["tags"].as_array().unwrap().contains(&json!("vip"))),
        ),
        (
            format!("inbox={main}&tag=vip&unassigned=true"),
            Box::new(move |c| {
                has_inbox(c, main, false)
                    && c["tags"].as_array().unwrap().contains(&json!("vip"))
                    && c["assignee"].is_null()
            }),
        ),
        (
            "snoozed=true".into(),
            Box::new(|c| c["snoozed_until"].is_string()),
        ),
        (
            "snoozed=false".into(),
            Box::new(|c| c["snoozed_until"].is_null()),
        ),
        (
            format!("participant={bob}"),
            Box::new(move |c| takes_part(c, bob)),
        ),
        (
            format!("participant={bob}&inbox={hub}"),
            Box::new(move |c| takes_part(c, bob) && has_inbox(c, hub, false)),
        ),
        (
            format!("updated_since={since}"),
            Box::new(move |c| micros(c["updated_at"].as_str().unwrap()) >= since_us),
        ),
    ];
    let expected = |pred: &dyn Fn(&Value) -> bool, who: Option<Uuid>| -> Vec<Uuid> {
        let mut v: Vec<(&Uuid, &Value)> = state
            .iter()
            .filter(|(_, c)| c["merged_into"].is_null())
            .filter(|(_, c)| who.is_none_or(|u| takes_part(c, u)))
            .filter(|(_, c)| pred(c))
            .collect();
        v.sort_by_key(|(id, c)| {
            std::cmp::Reverse((micros(c["updated_at"].as_str().unwrap()), **id))
        });
        v.into_iter().map(|(id, _)| *id).collect()
    };
    let mut nonempty = 0;
    for (q, pred) in &cases {
        let want = expected(pred.as_ref(), None);
        nonempty += usize::from(!want.is_empty());
        assert_eq!(all_pages(&app, &admin, q).await, want, "admin: ?{q}");
        // Bob (an agent) sees the same filtered to what he takes part in; the hub's view is
        // not found for him (he holds no grant there, only one of its conversations).
        if q.contains(&hub.to_string()) {
            let r = app.get(&format!("/v1/conversations?{q}"), &env.bob).await;
            assert_eq!(r.status, 404, "bob: ?{q}: {r:?}");
        } else {
            let want = expected(pred.as_ref(), Some(bob));
            assert_eq!(all_pages(&app, &env.bob, q).await, want, "bob: ?{q}");
        }
    }
    assert!(
        nonempty >= cases.len() - 1,
        "the cases should select something"
    );
    // Carol joined after the first six: she takes part in the later ones of her inbox only.
    let carol = carol.unwrap();
    let carol_sees = all_pages(&app, &carol, "").await;
    assert_eq!(carol_sees, expected(&|_| true, Some(carol.id)));
    let mut later: Vec<Uuid> = [6, 8, 9].iter().map(|&i| ids[i]).collect();
    later.sort();
    let mut got = carol_sees.clone();
    got.sort();
    assert_eq!(
        got, later,
        "carol: the conversations of her inbox opened after she joined"
    );
}

fn micros(rfc3339: &str) -> i128 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    t.unix_timestamp_nanos() / 1_000
}
