//! Templates of the tenant or of an inbox, with variables filled in when used.

use crate::helpers::*;
use postvak_core::access::TenantRole;
use serde_json::json;

#[tokio::test]
async fn a_template_is_rendered_with_the_contact_the_agent_and_the_inbox() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let admin = env.user("admin@acme.test", TenantRole::Admin).await;
        let d = env
            .deliver(env.inbox, &mail("m1@example.org", "Help", "", "Broken."))
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;

        let body = json!({
            "name": "Thanks",
            "subject": "About your request to {{inbox.name}}",
            "body": "Dear {{contact.name}},\n\nthank you.\n\n{{agent.signature}}"
        });
        // Only a tenant admin manages the tenant's templates.
        let r = app.post("/v1/templates", &env.alice, body.clone()).await;
        assert_eq!(r.status, 403, "{backend:?}: {r:?}");
        let r = app
            .post(
                "/v1/templates",
                &admin,
                json!({"name": "Bad", "body": "Hi {{contact.email}}"}),
            )
            .await;
        assert_eq!(r.status, 422);
        assert_eq!(r.body["code"], "unknown_template_variable");
        let created = app.post("/v1/templates", &admin, body).await;
        assert_eq!(created.status, 201, "{backend:?}: {created:?}");
        let tid = created.body["id"].as_str().unwrap().to_owned();

        // A template of an inbox Alice can't read is invisible to her.
        let other = env.add_inbox("Sales", "sales@acme.test").await;
        let hidden = app
            .post(
                "/v1/templates",
                &admin,
                json!({"name": "Sales only", "body": "x", "inbox_id": other}),
            )
            .await;
        assert_eq!(hidden.status, 201, "{hidden:?}");
        let listed = app.get("/v1/templates", &env.alice).await;
        let names: Vec<&str> = listed.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["Thanks"], "{backend:?}");
        let hid = hidden.body["id"].as_str().unwrap();
        assert_eq!(
            app.get(&format!("/v1/templates/{hid}"), &env.alice)
                .await
                .status,
            404
        );

        let r = app
            .post(
                &format!(
                    "/v1/conversations/{}/templates/{tid}/render",
                    d.conversation_id
                ),
                &env.alice,
                json!(null),
            )
            .await;
        assert_eq!(r.status, 200, "{backend:?}: {r:?}");
        assert_eq!(r.body["subject"], "About your request to Support");
        assert_eq!(
            r.body["body"], "Dear Eve Customer,\n\nthank you.\n\nalice@acme.test",
            "{backend:?}"
        );

        // Edited with If-Match; a stale one is refused.
        let r = app
            .call(
                "PUT",
                &format!("/v1/templates/{tid}"),
                &admin,
                Some(json!({"name": "Thanks!", "body": "Hi {{contact.name}}"})),
                &[("If-Match", "\"1\"")],
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.etag.as_deref(), Some("\"2\""));
        let r = app
            .call(
                "PUT",
                &format!("/v1/templates/{tid}"),
                &admin,
                Some(json!({"name": "Old", "body": "x"})),
                &[("If-Match", "\"1\"")],
            )
            .await;
        assert_eq!(r.status, 409);
        let r = app
            .call("DELETE", &format!("/v1/templates/{tid}"), &admin, None, &[])
            .await;
        assert_eq!(r.status, 204);
    }
}
