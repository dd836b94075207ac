//! Shared drafts: visible to participants, versioned with If-Match, one editor at a time.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn a_shared_draft_is_edited_by_one_agent_at_a_time_against_its_latest_version() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let d = env
            .deliver(env.inbox, &mail("m1@example.org", "Help", "", "Broken."))
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let base = format!("/v1/conversations/{}/drafts", d.conversation_id);

        let created = app
            .post(&base, &env.alice, json!({"body": "Dear Eve, we"}))
            .await;
        assert_eq!(created.status, 201, "{backend:?}: {created:?}");
        assert_eq!(created.etag.as_deref(), Some("\"1\""));
        assert_eq!(created.body["locked_by"], json!(env.alice.id));
        let draft = format!("{base}/{}", created.body["id"].as_str().unwrap());

        // Visible to the other participants, the `read` member included.
        let listed = app.get(&base, &env.reader).await;
        assert_eq!(listed.status, 200);
        assert_eq!(listed.body["items"][0]["body"], "Dear Eve, we");
        // …who may not write one.
        let r = app.post(&base, &env.reader, json!({"body": "x"})).await;
        assert_eq!(r.status, 403, "{backend:?}");

        // Bob can't save while Alice holds the lock.
        let r = app
            .call(
                "PUT",
                &draft,
                &env.bob,
                Some(json!({"body": "Hi"})),
                &[("If-Match", "\"1\"")],
            )
            .await;
        assert_eq!(r.status, 409, "{backend:?}: {r:?}");
        assert_eq!(r.body["code"], "draft_locked");
        assert_eq!(r.body["holder"], json!(env.alice.id));
        // Alice saves; a save against the old version is stale; no If-Match is 428.
        let r = app
            .call(
                "PUT",
                &draft,
                &env.alice,
                Some(json!({"body": "Dear Eve, we fixed it."})),
                &[("If-Match", "\"1\"")],
            )
            .await;
        assert_eq!(r.status, 200, "{backend:?}: {r:?}");
        assert_eq!(r.etag.as_deref(), Some("\"2\""));
        let r = app
            .call(
                "PUT",
                &draft,
                &env.alice,
                Some(json!({"body": "x"})),
                &[("If-Match", "\"1\"")],
            )
            .await;
        assert_eq!(r.status, 409);
        assert_eq!(r.body["code"], "stale_draft");
        let r = app
            .call("PUT", &draft, &env.alice, Some(json!({"body": "x"})), &[])
            .await;
        assert_eq!(r.status, 428);

        // Alice lets go; Bob takes the lock and edits; now Alice is locked out.
        let r = app
            .call("DELETE", &format!("{draft}/lock"), &env.alice, None, &[])
            .await;
        assert_eq!(r.status, 200);
        assert!(r.body.get("locked_by").is_none(), "{r:?}");
        let r = app
            .post(&format!("{draft}/lock"), &env.bob, json!(null))
            .await;
        assert_eq!(r.status, 200, "{backend:?}: {r:?}");
        assert_eq!(r.body["locked_by"], json!(env.bob.id));
        let r = app
            .call(
                "PUT",
                &draft,
                &env.bob,
                Some(json!({"body": "Dear Eve, fixed. Bob"})),
                &[("If-Match", "\"2\"")],
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["updated_by"], json!(env.bob.id));
        let r = app
            .post(&format!("{draft}/lock"), &env.alice, json!(null))
            .await;
        assert_eq!(r.status, 409);
        let r = app.call("DELETE", &draft, &env.alice, None, &[]).await;
        assert_eq!(r.status, 409, "not while Bob edits");
        let r = app
            .call("DELETE", &draft, &env.bob, None, &[("If-Match", "\"3\"")])
            .await;
        assert_eq!(r.status, 204, "{r:?}");
        assert_eq!(app.get(&draft, &env.alice).await.status, 404);
    }
}

#[tokio::test]
async fn an_expired_lock_lets_someone_else_edit() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let d = env
            .deliver(env.inbox, &mail("m1@example.org", "Help", "", "Broken."))
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let base = format!("/v1/conversations/{}/drafts", d.conversation_id);
        let created = app.post(&base, &env.alice, json!({"body": "Draft"})).await;
        assert_eq!(created.status, 201);
        let id: uuid::Uuid = created.body["id"].as_str().unwrap().parse().unwrap();
        let draft = format!("{base}/{id}");
        let r = app
            .post(&format!("{draft}/lock"), &env.bob, json!(null))
            .await;
        assert_eq!(r.status, 409, "{backend:?}");

        // Two minutes pass (the lock's expiry moved into the past).
        let mut tx = env
            .cells
            .default_cell()
            .db()
            .tenant_tx(env.tenant, true)
            .await
            .unwrap();
        postvak_platform::on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE conversation_drafts SET lock_expires_us = lock_expires_us - 121000000 \
             WHERE tenant_id = $1 AND draft_id = $2"
        )
        .bind(env.tenant.0)
        .bind(id)
        .execute(c)
        .await
        .map(|_| ()))
        .unwrap();
        tx.commit().await.unwrap();

        let r = app.get(&draft, &env.bob).await;
        assert!(
            r.body.get("locked_by").is_none(),
            "{backend:?}: expired: {r:?}"
        );
        let r = app
            .call(
                "PUT",
                &draft,
                &env.bob,
                Some(json!({"body": "Bob's now"})),
                &[("If-Match", "\"1\"")],
            )
            .await;
        assert_eq!(r.status, 200, "{backend:?}: {r:?}");
        assert_eq!(r.body["locked_by"], json!(env.bob.id));
    }
}
