//! Draft providers: a real HTTP receiver in the test stands for the tenant's CRM/AI endpoint,
//! checks the Standard Webhooks signature as a consumer would, and answers with a suggestion.

use crate::helpers::*;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use postvak_conversation::suggest::{ProviderPolicy, SuggestSettings};
use postvak_core::access::TenantRole;
use postvak_platform::netguard::AddressPolicy;
use serde_json::json;
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the receiver got, and whether its signature verified.
#[derive(Debug, Clone)]
struct Got {
    verified: bool,
    id: String,
    body: serde_json::Value,
}

/// The provider: answers every request with `status` and `answer`.
#[derive(Clone)]
struct Receiver {
    secret: Arc<Mutex<String>>,
    got: Arc<Mutex<Vec<Got>>>,
    status: u16,
    answer: serde_json::Value,
}

fn verify(secret: &str, req: &HttpRequest, body: &[u8]) -> bool {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, ts, sigs) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let Ok(ts_n) = ts.parse::<i64>() else {
        return false;
    };
    // A consumer refuses old or future timestamps (5 minutes either way).
    if (time::OffsetDateTime::now_utc().unix_timestamp() - ts_n).abs() > 300 {
        return false;
    }
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    sigs.split(' ').any(|s| s == expected)
}

async fn receive(state: web::Data<Receiver>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let secret = state.secret.lock().unwrap().clone();
    let got = Got {
        verified: verify(&secret, &req, &body),
        id: req
            .headers()
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    };
    state.got.lock().unwrap().push(got);
    let status = actix_web::http::StatusCode::from_u16(state.status).unwrap();
    if state.answer.is_null() {
        HttpResponse::build(status).finish()
    } else {
        HttpResponse::build(status).json(&state.answer)
    }
}

/// Starts the receiver on a free port; returns it and its URL.
fn start_receiver(env: &TestEnv, status: u16, answer: serde_json::Value) -> (Receiver, String) {
    let r = Receiver {
        secret: Arc::new(Mutex::new(String::new())),
        got: Arc::new(Mutex::new(Vec::new())),
        status,
        answer,
    };
    let data = web::Data::new(r.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/suggest", web::post().to(receive))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    let cancel = env.cancel.clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        handle.stop(false).await;
    });
    (r, format!("http://127.0.0.1:{port}/suggest"))
}

/// The conversation API with the operator's exception for providers on 127.0.0.1.
async fn spawn_app_allowing_loopback(env: &TestEnv) -> TestApp {
    let auth: postvak_platform::auth::SharedAuthenticator = Arc::new(env.directory.clone());
    let cells = web::Data::new(env.cells.clone());
    let directory = web::Data::new(env.directory.clone());
    let auth = web::Data::new(auth);
    let policy = web::Data::new(ProviderPolicy(
        AddressPolicy::new(&["127.0.0.1/32".into()]).unwrap(),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(cells.clone())
            .app_data(directory.clone())
            .app_data(auth.clone())
            .app_data(policy.clone())
            .app_data(postvak_platform::http::json_config())
            .app_data(postvak_platform::http::path_config())
            .configure(postvak_conversation::api::routes)
    })
    .workers(2)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    let cancel = env.cancel.clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        handle.stop(false).await;
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::new(),
    }
}

fn start_worker(env: &TestEnv, retry_base_ms: u64) {
    postvak_conversation::suggest::start(
        &env.cells,
        env.cells.default_cell(),
        SuggestSettings {
            allow_private: vec!["127.0.0.1/32".into()],
            retry_base_ms,
            timeout_ms: 5_000,
            ..Default::default()
        },
        env.cancel.clone(),
    );
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_customer_message_gets_a_suggested_draft_and_sending_it_counts_as_accepted() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let admin = env.user("admin@acme.test", TenantRole::Admin).await;
        let (receiver, url) = start_receiver(
            &env,
            200,
            json!({"body": "Dear Eve, please restart the printer.", "subject": "Re: Printer"}),
        );
        // Without the operator's exception a loopback provider is refused, and only admins
        // may register one.
        let strict = env.spawn_app().await;
        let r = strict
            .post("/v1/draft-providers", &admin, json!({"url": url}))
            .await;
        assert_eq!(r.status, 422, "{backend:?}: {r:?}");
        assert_eq!(r.body["code"], "draft_provider_destination_forbidden");
        let r = strict
            .post(
                "/v1/draft-providers",
                &admin,
                json!({"url": "http://169.254.169.254/latest"}),
            )
            .await;
        assert_eq!(r.body["code"], "draft_provider_destination_forbidden");
        let r = strict
            .post("/v1/draft-providers", &admin, json!({"url": "ftp://x"}))
            .await;
        assert_eq!(r.body["code"], "invalid_draft_provider_url");

        let app = spawn_app_allowing_loopback(&env).await;
        let r = app
            .post("/v1/draft-providers", &env.alice, json!({"url": url}))
            .await;
        assert_eq!(r.status, 403, "{r:?}");
        let r = app
            .post(
                "/v1/draft-providers",
                &admin,
                json!({"url": url, "inbox_id": env.inbox}),
            )
            .await;
        assert_eq!(r.status, 201, "{backend:?}: {r:?}");
        let provider = r.body["id"].as_str().unwrap().to_owned();
        let secret = r.body["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("whsec_"));
        *receiver.secret.lock().unwrap() = secret.clone();
        // The secret is never shown again.
        let r = app
            .get(&format!("/v1/draft-providers/{provider}"), &admin)
            .await;
        assert_eq!(r.status, 200);
        assert!(r.body.get("secret").is_none(), "{:?}", r.body);
        assert_eq!(r.body["enabled"], true);
        let r = app.get("/v1/draft-providers", &admin).await;
        assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
        assert!(!r.body.to_string().contains(&secret));

        start_worker(&env, 50);
        let d = env
            .deliver(
                env.inbox,
                &mail(
                    "p1@example.org",
                    "Printer",
                    "",
                    "The printer shows error 42.",
                ),
            )
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;

        // The provider was asked once, signed, with the conversation's context.
        let got = wait_for("a request", async || {
            receiver.got.lock().unwrap().first().cloned()
        })
        .await;
        assert!(got.verified, "{backend:?}: signature did not verify");
        let b = &got.body;
        assert_eq!(b["type"], "draft.suggestion_requested");
        assert_eq!(b["provider_id"], provider.as_str());
        assert_eq!(b["conversation_id"], json!(d.conversation_id));
        assert_eq!(b["subject"], "Printer");
        assert_eq!(b["contact"]["address"], "eve@example.org");
        assert_eq!(b["contact"]["name"], "Eve Customer");
        let msgs = b["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0]["direction"], "inbound");
        assert!(
            msgs[0]["text"]
                .as_str()
                .unwrap()
                .contains("The printer shows error 42."),
            "{b}"
        );
        assert!(!got.id.is_empty());

        // The suggestion is a shared draft, marked as such.
        let drafts = format!("/v1/conversations/{}/drafts", d.conversation_id);
        let draft = wait_for("a suggested draft", async || {
            let r = app.get(&drafts, &env.alice).await;
            r.body["items"].as_array().unwrap().first().cloned()
        })
        .await;
        assert_eq!(draft["suggested"], true, "{draft}");
        assert_eq!(draft["suggested_by"], provider.as_str());
        assert_eq!(draft["body"], "Dear Eve, please restart the printer.");
        assert_eq!(draft["subject"], "Re: Printer");
        assert!(draft.get("locked_by").is_none(), "{draft}");
        let draft_id = draft["id"].as_str().unwrap().to_owned();
        assert_eq!(receiver.got.lock().unwrap().len(), 1, "asked once");

        // A reply naming a draft the conversation lacks is refused; nothing is sent.
        let replies = format!("/v1/conversations/{}/replies", d.conversation_id);
        let r = app
            .post(
                &replies,
                &env.alice,
                json!({"body": "x", "draft_id": uuid::Uuid::now_v7()}),
            )
            .await;
        assert_eq!(r.status, 422, "{r:?}");
        assert_eq!(r.body["code"], "unknown_draft");

        // Sending from the suggestion: the draft goes, the acceptance is recorded once.
        let r = app
            .post(
                &replies,
                &env.alice,
                json!({"body": draft["body"], "draft_id": draft_id}),
            )
            .await;
        assert_eq!(r.status, 201, "{backend:?}: {r:?}");
        let reply_id = r.body["id"].as_str().unwrap().to_owned();
        let r = app.get(&drafts, &env.alice).await;
        assert!(r.body["items"].as_array().unwrap().is_empty(), "{r:?}");
        let events = env
            .ctx
            .read_stream(&postvak_conversation::suggest::suggestion_stream(
                draft_id.parse().unwrap(),
            ))
            .await
            .unwrap();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            ["draft.suggested", "draft.suggestion_accepted"],
            "{backend:?}"
        );
        let accepted: postvak_proto::events::draft::SuggestionAcceptedV1 =
            events[1].payload().unwrap();
        assert_eq!(accepted.reply_id.to_string(), reply_id);
        assert_eq!(accepted.by, Some(env.alice.id));
        assert!(!accepted.edited);
        assert_eq!(accepted.provider_id.to_string(), provider);

        // Switched off, it is not asked any more; deleted, it is gone.
        let r = app
            .call(
                "PUT",
                &format!("/v1/draft-providers/{provider}"),
                &admin,
                Some(json!({"url": url, "enabled": false})),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["enabled"], false);
        let d2 = env
            .deliver(
                env.inbox,
                &mail("p2@example.org", "Other", "", "Another question."),
            )
            .await;
        env.wait_for_conversation(d2.conversation_id, 1).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(receiver.got.lock().unwrap().len(), 1, "{backend:?}");
        let r = app
            .call(
                "DELETE",
                &format!("/v1/draft-providers/{provider}"),
                &admin,
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, 204);
        let r = app
            .get(&format!("/v1/draft-providers/{provider}"), &admin)
            .await;
        assert_eq!(r.status, 404);
    }
}

#[tokio::test]
async fn a_failing_provider_is_retried_a_bounded_number_of_times_and_leaves_no_draft() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let admin = env.user("admin@acme.test", TenantRole::Admin).await;
        let (receiver, url) = start_receiver(&env, 503, serde_json::Value::Null);
        let app = spawn_app_allowing_loopback(&env).await;
        let r = app
            .post("/v1/draft-providers", &admin, json!({"url": url}))
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        *receiver.secret.lock().unwrap() = r.body["secret"].as_str().unwrap().to_owned();
        start_worker(&env, 50);
        let d = env
            .deliver(env.inbox, &mail("f1@example.org", "Help", "", "Broken."))
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        wait_for("three attempts", async || {
            (receiver.got.lock().unwrap().len() >= 3).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let got = receiver.got.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "{backend:?}: max_attempts is 3");
        // The same webhook-id on every attempt, so the provider can dedupe.
        assert!(got.iter().all(|g| g.id == got[0].id && g.verified));
        let r = app
            .get(
                &format!("/v1/conversations/{}/drafts", d.conversation_id),
                &env.alice,
            )
            .await;
        assert!(r.body["items"].as_array().unwrap().is_empty(), "{r:?}");
    }
}
