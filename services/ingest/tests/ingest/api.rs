//! `POST /v1/inboxes/{inbox_id}/messages/raw` through actix with the real directory's API-key
//! authentication.

use crate::helpers::*;
use actix_web::{App, test, web};
use postvak_platform::auth::SharedAuthenticator;
use std::sync::Arc;

async fn post_raw_message_is_idempotent(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let key = env
        .directory
        .issue_api_key(&env.ctx, "mailer", &["write".to_owned()], None, None)
        .await
        .unwrap();
    let reader = env
        .directory
        .issue_api_key(&env.ctx, "reader", &["read".to_owned()], None, None)
        .await
        .unwrap();
    let (other_ctx, other_inbox) = env.other_tenant("support@other.test").await;
    let auth: SharedAuthenticator = Arc::new(env.directory.clone());
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(env.cells.clone()))
            .app_data(web::Data::new(auth))
            .app_data(web::Data::new(env.directory.clone()))
            .app_data(web::Data::new(env.ingestor.clone()))
            .app_data(postvak_platform::http::path_config())
            .configure(postvak_ingest::api::routes_with(
                postvak_ingest::RawApiSettings {
                    max_message_size: 64 * 1024,
                },
            )),
    )
    .await;
    let uri = format!("/v1/inboxes/{}/messages/raw", env.inbox);
    let raw = mail("api@example.org", "via API", "", "posted");
    let post = |token: &str, body: Vec<u8>, ct: &str, idem: Option<&str>, uri: &str| {
        let mut r = test::TestRequest::post()
            .uri(uri)
            .insert_header(("Authorization", format!("Bearer {token}")))
            .insert_header(("Content-Type", ct.to_owned()))
            .set_payload(body);
        if let Some(k) = idem {
            r = r.insert_header(("Idempotency-Key", k.to_owned()));
        }
        r.to_request()
    };

    let res = test::call_service(
        &app,
        post(&key.token, raw.clone(), "message/rfc822", Some("k1"), &uri),
    )
    .await;
    assert_eq!(res.status(), 201);
    let first: serde_json::Value = test::read_body_json(res).await;
    assert_eq!(first["new_thread"], true);
    assert_eq!(first["duplicate"], false);

    // Same key, same body: the same answer, nothing new stored.
    let res = test::call_service(
        &app,
        post(&key.token, raw.clone(), "message/rfc822", Some("k1"), &uri),
    )
    .await;
    assert_eq!(res.status(), 200);
    let again: serde_json::Value = test::read_body_json(res).await;
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["duplicate"], true);
    // No key, same body: content dedupe.
    let res = test::call_service(
        &app,
        post(&key.token, raw.clone(), "message/rfc822", None, &uri),
    )
    .await;
    assert_eq!(res.status(), 200);
    // Same key, another body: refused.
    let other = mail("api2@example.org", "other", "", "different");
    let res = test::call_service(
        &app,
        post(
            &key.token,
            other.clone(),
            "message/rfc822",
            Some("k1"),
            &uri,
        ),
    )
    .await;
    assert_eq!(res.status(), 422);
    let p: serde_json::Value = test::read_body_json(res).await;
    assert_eq!(p["code"], "idempotency_key_reused");

    // Errors: problem+json with stable codes.
    let res = test::call_service(
        &app,
        post(&key.token, raw.clone(), "text/plain", None, &uri),
    )
    .await;
    assert_eq!(res.status(), 415);
    let res = test::call_service(
        &app,
        post(&reader.token, raw.clone(), "message/rfc822", None, &uri),
    )
    .await;
    assert_eq!(res.status(), 403);
    let res = test::call_service(
        &app,
        post("pvk_nope_nope", raw.clone(), "message/rfc822", None, &uri),
    )
    .await;
    assert_eq!(res.status(), 401);
    let foreign = format!("/v1/inboxes/{other_inbox}/messages/raw");
    let res = test::call_service(
        &app,
        post(&key.token, raw.clone(), "message/rfc822", None, &foreign),
    )
    .await;
    assert_eq!(res.status(), 404, "another tenant's inbox looks missing");
    let res = test::call_service(
        &app,
        post(&key.token, vec![b'x'; 70_000], "message/rfc822", None, &uri),
    )
    .await;
    assert_eq!(res.status(), 413);
    let p: serde_json::Value = test::read_body_json(res).await;
    assert_eq!(p["code"], "message_too_large");

    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].source, "api");
    assert_eq!(env.blob(msgs[0].raw.blob_id).await, raw);
    assert!(env.messages_of(&other_ctx).await.is_empty());
}

#[actix_web::test]
async fn post_raw_message_is_idempotent_sqlite() {
    post_raw_message_is_idempotent(Backend::Sqlite).await;
}

#[actix_web::test]
async fn post_raw_message_is_idempotent_postgres() {
    post_raw_message_is_idempotent(Backend::Postgres).await;
}
