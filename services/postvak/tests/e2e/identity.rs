//! Identity and access through the real binary on PostgreSQL + NATS (row-level security armed):
//! the RBAC matrix, handover by expiry, local login with TOTP, cookie sessions and CSRF,
//! logout and expiry, tenant isolation with RLS alone.

use crate::helpers::*;
use postvak_platform::testkit::{self, TempDir};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PLATFORM_TOKEN: &str = "platform-admin-token-for-tests-0123456789";

struct Stack {
    _dir: TempDir,
    db_url: String,
    server: Server,
}

async fn stack() -> Stack {
    let dir = TempDir::new();
    let db_url = testkit::fresh_postgres_database().await;
    let setup = |c: &mut std::process::Command| {
        c.env("POSTVAK_CELLS__EU1__DATABASE_URL", &db_url)
            .env("POSTVAK_CELLS__EU1__NATS_URL", testkit::nats_url())
            .env("POSTVAK_BUS__PREFIX", testkit::unique_prefix())
            .env(
                "POSTVAK_SECURITY__MASTER_KEY",
                "LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGL6VTk=",
            )
            .env("POSTVAK_SECURITY__PLATFORM_ADMIN_TOKEN", PLATFORM_TOKEN);
    };
    let mut m = command(&dir);
    setup(&mut m);
    m.arg("migrate");
    let (code, out, err) = run(m);
    assert_eq!(code, 0, "{out}{err}");
    let mut s = command(&dir);
    setup(&mut s);
    s.arg("serve");
    Stack {
        server: Server::start(s),
        db_url,
        _dir: dir,
    }
}

async fn call(
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = client().request(method, server.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn ok(server: &Server, method: Method, path: &str, token: &str, body: Value) -> Value {
    let (s, v) = call(server, method.clone(), path, Some(token), Some(body)).await;
    assert!(s.is_success(), "{method} {path}: {s} {v}");
    v
}

/// A tenant with an owner, and a user per role, each logged in with a password.
struct Tenant {
    id: String,
    admin_key: String,
    inbox: String,
    tokens: Vec<(&'static str, String)>,
    user_ids: Vec<(&'static str, String)>,
}

impl Tenant {
    fn token(&self, who: &str) -> &str {
        &self.tokens.iter().find(|(n, _)| *n == who).unwrap().1
    }
    fn user(&self, who: &str) -> &str {
        &self.user_ids.iter().find(|(n, _)| *n == who).unwrap().1
    }
}

async fn login(server: &Server, tenant: &str, email: &str) -> String {
    let v = ok(
        server,
        Method::POST,
        "/v1/auth/login",
        "",
        json!({"tenant_id": tenant, "email": email, "password": "correct horse battery"}),
    )
    .await;
    v["token"].as_str().unwrap().to_owned()
}

async fn tenant(server: &Server, name: &str) -> Tenant {
    let (s, created) = call(
        server,
        Method::POST,
        "/v1/tenants",
        Some(PLATFORM_TOKEN),
        Some(json!({"name": name, "owner_email": format!("owner@{name}.example"), "owner_name": "Olga Owner"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let id = created["tenant"]["id"].as_str().unwrap().to_owned();
    let admin_key = created["api_key"]["token"].as_str().unwrap().to_owned();
    let owner_id = created["owner"]["id"].as_str().unwrap().to_owned();
    ok(
        server,
        Method::PUT,
        &format!("/v1/users/{owner_id}/password"),
        &admin_key,
        json!({"password": "correct horse battery"}),
    )
    .await;
    let inbox = ok(
        server,
        Method::POST,
        "/v1/inboxes",
        &admin_key,
        json!({"name": "Intake", "addresses": [format!("intake@{name}.example")]}),
    )
    .await;
    let inbox = inbox["id"].as_str().unwrap().to_owned();
    let mut tokens = vec![(
        "owner",
        login(server, &id, &format!("owner@{name}.example")).await,
    )];
    let mut user_ids = vec![("owner", owner_id)];
    for (who, role, grant) in [
        ("admin", "admin", None),
        ("agent", "agent", Some("reply")),
        ("reader", "agent", Some("read")),
        ("viewer", "viewer", Some("admin")),
        ("outsider", "agent", None),
    ] {
        let email = format!("{who}@{name}.example");
        let u = ok(
            server,
            Method::POST,
            "/v1/users",
            &admin_key,
            json!({"email": email, "display_name": who, "role": role, "password": "correct horse battery"}),
        )
        .await;
        let uid = u["id"].as_str().unwrap().to_owned();
        if let Some(g) = grant {
            ok(
                server,
                Method::POST,
                &format!("/v1/inboxes/{inbox}/members"),
                &admin_key,
                json!({"user_id": uid, "role": g}),
            )
            .await;
        }
        tokens.push((who, login(server, &id, &email).await));
        user_ids.push((who, uid));
    }
    let read_key = ok(
        server,
        Method::POST,
        "/v1/api-keys",
        &admin_key,
        json!({"name": "ro", "scopes": ["read"]}),
    )
    .await;
    tokens.push(("key-read", read_key["token"].as_str().unwrap().to_owned()));
    tokens.push(("key-admin", admin_key.clone()));
    Tenant {
        id,
        admin_key,
        inbox,
        tokens,
        user_ids,
    }
}

/// (method, path, body maker, expected status per principal)
type Case = (Method, String, Box<dyn FnMut() -> Option<Value>>, [u16; 9]);

#[tokio::test]
async fn rbac_matrix_every_route_every_role() {
    let st = stack().await;
    let s = &st.server;
    let t = tenant(s, "acme").await;
    let x = t.inbox.clone();
    let agent = t.user("agent").to_owned();
    let who = [
        "owner",
        "admin",
        "agent",
        "reader",
        "viewer",
        "outsider",
        "key-read",
        "key-admin",
        "anonymous",
    ];
    // Expected status per principal, in the order of `who`.
    let mut n = 0u32;
    let mut uniq = || {
        n += 1;
        n
    };
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/v1/me".into(),
            Box::new(|| None),
            [200, 200, 200, 200, 200, 200, 200, 200, 401],
        ),
        (
            Method::GET,
            "/v1/users".into(),
            Box::new(|| None),
            [200, 200, 200, 200, 200, 200, 200, 200, 401],
        ),
        (
            Method::GET,
            format!("/v1/users/{agent}"),
            Box::new(|| None),
            [200, 200, 200, 200, 200, 200, 200, 200, 401],
        ),
        (
            Method::GET,
            "/v1/teams".into(),
            Box::new(|| None),
            [200, 200, 200, 200, 200, 200, 200, 200, 401],
        ),
        (
            Method::GET,
            "/v1/inboxes".into(),
            Box::new(|| None),
            [200, 200, 200, 200, 200, 200, 200, 200, 401],
        ),
        (
            Method::GET,
            format!("/v1/inboxes/{x}"),
            Box::new(|| None),
            [200, 200, 200, 200, 200, 404, 200, 200, 401],
        ),
        (
            Method::GET,
            format!("/v1/inboxes/{x}/members"),
            Box::new(|| None),
            [200, 200, 200, 200, 200, 404, 200, 200, 401],
        ),
        (
            Method::PATCH,
            format!("/v1/inboxes/{x}"),
            Box::new(|| Some(json!({"signature": "— The intake team"}))),
            [200, 200, 403, 403, 403, 404, 403, 200, 401],
        ),
        (
            Method::POST,
            format!("/v1/inboxes/{x}/members"),
            Box::new(move || Some(json!({"user_id": agent, "role": "read"}))),
            [201, 201, 403, 403, 403, 404, 403, 201, 401],
        ),
        (
            Method::GET,
            "/v1/api-keys".into(),
            Box::new(|| None),
            [200, 200, 403, 403, 403, 403, 403, 200, 401],
        ),
        (
            Method::GET,
            "/v1/security".into(),
            Box::new(|| None),
            [200, 200, 403, 403, 403, 403, 403, 200, 401],
        ),
        (
            Method::PUT,
            "/v1/security".into(),
            Box::new(|| Some(json!({"mfa_required": false}))),
            [200, 200, 403, 403, 403, 403, 403, 200, 401],
        ),
        (
            Method::GET,
            "/v1/tenants".into(),
            Box::new(|| None),
            [401, 401, 401, 401, 401, 401, 401, 401, 401],
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, mut body, expected) in cases {
        for (i, w) in who.iter().enumerate() {
            let token = (*w != "anonymous").then(|| t.token(w));
            let (status, v) = call(s, method.clone(), &path, token, body()).await;
            if status.as_u16() != expected[i] {
                failures.push(format!(
                    "{method} {path} as {w}: {status} (expected {}) {v}",
                    expected[i]
                ));
            }
            if !status.is_success() {
                assert_eq!(
                    v["status"],
                    status.as_u16(),
                    "problem body for {method} {path} as {w}: {v}"
                );
                assert!(v["code"].is_string(), "{v}");
            }
        }
    }
    // Resource-creating routes, each with a fresh body.
    let creating: Vec<(Method, &str, [u16; 9])> = vec![
        (
            Method::POST,
            "/v1/users",
            [201, 201, 403, 403, 403, 403, 403, 201, 401],
        ),
        (
            Method::POST,
            "/v1/teams",
            [201, 201, 403, 403, 403, 403, 403, 201, 401],
        ),
        (
            Method::POST,
            "/v1/inboxes",
            [201, 201, 403, 403, 403, 403, 403, 201, 401],
        ),
        (
            Method::POST,
            "/v1/api-keys",
            [201, 201, 403, 403, 403, 403, 403, 201, 401],
        ),
    ];
    for (method, path, expected) in creating {
        for (i, w) in who.iter().enumerate() {
            let k = uniq();
            let body = match path {
                "/v1/users" => {
                    json!({"email": format!("new{k}@acme.example"), "display_name": "New"})
                }
                "/v1/teams" => json!({"name": format!("Team {k}"), "skills": ["billing"]}),
                "/v1/inboxes" => {
                    json!({"name": format!("Inbox {k}"), "addresses": [format!("box{k}@acme.example")]})
                }
                _ => json!({"name": format!("key {k}"), "scopes": ["read"]}),
            };
            let token = (*w != "anonymous").then(|| t.token(w));
            let (status, v) = call(s, method.clone(), path, token, Some(body)).await;
            if status.as_u16() != expected[i] {
                failures.push(format!(
                    "{method} {path} as {w}: {status} (expected {}) {v}",
                    expected[i]
                ));
            }
        }
    }
    // Self-service: a user sets their own password; others' only as an administrator.
    for w in ["agent", "reader", "viewer", "outsider"] {
        let me = t.user(w).to_owned();
        let (status, v) = call(
            s,
            Method::PUT,
            &format!("/v1/users/{me}/password"),
            Some(t.token(w)),
            Some(json!({"password": "correct horse battery"})),
        )
        .await;
        if status != 204 {
            failures.push(format!("own password as {w}: {status} {v}"));
        }
        let owner = t.user("owner").to_owned();
        let (status, v) = call(
            s,
            Method::PUT,
            &format!("/v1/users/{owner}/password"),
            Some(t.token(w)),
            Some(json!({"password": "pwned pwned pwned"})),
        )
        .await;
        if status != 403 {
            failures.push(format!("owner's password as {w}: {status} {v}"));
        }
    }
    // An admin can't make an owner; an owner can.
    let agent = t.user("agent").to_owned();
    let (status, v) = call(
        s,
        Method::PATCH,
        &format!("/v1/users/{agent}"),
        Some(t.token("admin")),
        Some(json!({"role": "owner"})),
    )
    .await;
    if status != 403 || v["code"] != "owner_required" {
        failures.push(format!("admin makes owner: {status} {v}"));
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn read_member_is_refused_with_a_clear_code_and_another_tenant_sees_404() {
    let st = stack().await;
    let s = &st.server;
    let a = tenant(s, "alpha").await;
    let b = tenant(s, "beta").await;
    let (status, v) = call(
        s,
        Method::PATCH,
        &format!("/v1/inboxes/{}", a.inbox),
        Some(a.token("reader")),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(v["code"], "inbox_permission_required");
    // Every route with another tenant's ids answers like a missing id.
    let missing = "0190c5d2-0000-7000-8000-000000000000";
    for path in [
        format!("/v1/inboxes/{}", a.inbox),
        format!("/v1/inboxes/{}/members", a.inbox),
        format!("/v1/users/{}", a.user("agent")),
    ] {
        let (sb, vb) = call(s, Method::GET, &path, Some(b.token("owner")), None).await;
        let generic = path
            .replace(&a.inbox, missing)
            .replace(a.user("agent"), missing);
        let (sm, vm) = call(s, Method::GET, &generic, Some(b.token("owner")), None).await;
        assert_eq!((sb, &vb), (StatusCode::NOT_FOUND, &vm), "{path}");
        assert_eq!(sm, 404);
    }
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("/v1/inboxes/{}", a.inbox),
            json!({"name": "hijack"}),
        ),
        (
            Method::POST,
            format!("/v1/inboxes/{}/members", a.inbox),
            json!({"user_id": b.user("agent"), "role": "admin"}),
        ),
        (
            Method::PATCH,
            format!("/v1/users/{}", a.user("agent")),
            json!({"disabled": true}),
        ),
        (
            Method::PUT,
            format!("/v1/teams/{}/members/{}", missing, a.user("agent")),
            json!({}),
        ),
    ] {
        let (status, v) = call(s, method.clone(), &path, Some(&b.admin_key), Some(body)).await;
        assert_eq!(status, 404, "{method} {path}: {v}");
        assert_eq!(v["code"], "not_found");
    }
    // A's agent can still work: nothing of A changed.
    let (status, v) = call(
        s,
        Method::GET,
        &format!("/v1/inboxes/{}", a.inbox),
        Some(a.token("agent")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["name"], "Intake");
}

#[tokio::test]
async fn handover_grant_expires_by_itself() {
    let st = stack().await;
    let s = &st.server;
    let t = tenant(s, "handover").await;
    // Grant windows have second precision.
    let until = (time::OffsetDateTime::now_utc() + time::Duration::seconds(3))
        .replace_nanosecond(0)
        .unwrap();
    let outsider = t.user("outsider").to_owned();
    let g = ok(
        s,
        Method::POST,
        &format!("/v1/inboxes/{}/members", t.inbox),
        &t.admin_key,
        json!({"user_id": outsider, "role": "reply", "valid_until": until.format(&time::format_description::well_known::Rfc3339).unwrap()}),
    )
    .await;
    assert_eq!(g["role"], "reply");
    let path = format!("/v1/inboxes/{}", t.inbox);
    let (status, _) = call(s, Method::GET, &path, Some(t.token("outsider")), None).await;
    assert_eq!(status, 200, "the old holder works until the handover ends");
    // Nobody revokes anything: the grant simply stops at valid_until.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = call(s, Method::GET, &path, Some(t.token("outsider")), None).await;
        if status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "grant still works after valid_until"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(time::OffsetDateTime::now_utc() >= until);
    // A grant whose window lies in the past never works.
    let reader_past = ok(s, Method::POST, "/v1/users", &t.admin_key, json!({"email": "late@handover.example", "display_name": "Late", "password": "correct horse battery"})).await;
    let past = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    ok(
        s,
        Method::POST,
        &format!("/v1/inboxes/{}/members", t.inbox),
        &t.admin_key,
        json!({"user_id": reader_past["id"], "role": "read", "valid_from": (past - time::Duration::hours(1)).format(&time::format_description::well_known::Rfc3339).unwrap(), "valid_until": past.format(&time::format_description::well_known::Rfc3339).unwrap()}),
    )
    .await;
    let late = login(s, &t.id, "late@handover.example").await;
    let (status, _) = call(s, Method::GET, &path, Some(&late), None).await;
    assert_eq!(status, 404);
}

fn totp_code(secret_b32: &str) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_b32).unwrap();
    totp_rs::Builder::new()
        .with_secret(secret.as_bytes().to_vec())
        .build()
        .unwrap()
        .generate_current()
        .to_string()
}

#[tokio::test]
async fn local_login_with_totp_cookie_sessions_logout_and_expiry() {
    let st = stack().await;
    let s = &st.server;
    let t = tenant(s, "login").await;
    let agent = t.user("agent").to_owned();

    let (status, v) = call(s, Method::POST, "/v1/auth/login", None, Some(json!({"tenant_id": t.id, "email": "agent@login.example", "password": "wrong password!!"}))).await;
    assert_eq!(
        (status.as_u16(), v["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let (status, v) = call(s, Method::POST, "/v1/auth/login", None, Some(json!({"tenant_id": t.id, "email": "nobody@login.example", "password": "correct horse battery"}))).await;
    assert_eq!(
        (status.as_u16(), v["code"].as_str()),
        (401, Some("invalid_credentials"))
    );

    // Enrol TOTP as the agent; a wrong code does not confirm it.
    let enrol = ok(
        s,
        Method::POST,
        &format!("/v1/users/{agent}/totp"),
        t.token("agent"),
        json!({}),
    )
    .await;
    let secret = enrol["secret"].as_str().unwrap().to_owned();
    assert!(
        enrol["otpauth_url"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let (status, _) = call(
        s,
        Method::POST,
        &format!("/v1/users/{agent}/totp/confirm"),
        Some(t.token("agent")),
        Some(json!({"code": "000000"})),
    )
    .await;
    assert_eq!(status, 422);
    let code = totp_code(&secret);
    let (status, v) = call(
        s,
        Method::POST,
        &format!("/v1/users/{agent}/totp/confirm"),
        Some(t.token("agent")),
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(status, 204, "{v}");

    let creds = json!({"tenant_id": t.id, "email": "agent@login.example", "password": "correct horse battery"});
    let (status, v) = call(s, Method::POST, "/v1/auth/login", None, Some(creds.clone())).await;
    assert_eq!(
        (status.as_u16(), v["code"].as_str()),
        (401, Some("totp_required"))
    );
    // The code used to confirm can't be replayed.
    let mut with_code = creds.clone();
    with_code["totp"] = json!(code);
    let (status, v) = call(s, Method::POST, "/v1/auth/login", None, Some(with_code)).await;
    assert_eq!(
        (status.as_u16(), v["code"].as_str()),
        (401, Some("invalid_totp")),
        "{v}"
    );

    // The tenant requires MFA: a user without a generator can't log in.
    ok(
        s,
        Method::PUT,
        "/v1/security",
        &t.admin_key,
        json!({"mfa_required": true}),
    )
    .await;
    let (status, v) = call(s, Method::POST, "/v1/auth/login", None, Some(json!({"tenant_id": t.id, "email": "reader@login.example", "password": "correct horse battery"}))).await;
    assert_eq!(
        (status.as_u16(), v["code"].as_str()),
        (401, Some("mfa_enrollment_required"))
    );
    ok(
        s,
        Method::PUT,
        "/v1/security",
        &t.admin_key,
        json!({"mfa_required": false}),
    )
    .await;

    // Cookie session: works for reads, state changes need the CSRF header, logout ends it.
    let c = client();
    let resp = c.post(s.url("/v1/auth/login")).json(&json!({"tenant_id": t.id, "email": "owner@login.example", "password": "correct horse battery", "session": "cookie"})).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set_cookie.contains("HttpOnly")
            && set_cookie.contains("Secure")
            && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let body: Value = resp.json().await.unwrap();
    assert!(
        body.get("token").is_none(),
        "a cookie session's token stays in the cookie"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let me = c
        .get(s.url("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let csrf = c
        .post(s.url("/v1/teams"))
        .header("cookie", &cookie)
        .json(&json!({"name": "Night shift"}))
        .send()
        .await
        .unwrap();
    assert_problem(csrf, 403, "csrf_header_required").await;
    let made = c
        .post(s.url("/v1/teams"))
        .header("cookie", &cookie)
        .header("x-postvak-csrf", "1")
        .json(&json!({"name": "Night shift"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let out = c
        .post(s.url("/v1/auth/logout"))
        .header("cookie", &cookie)
        .header("x-postvak-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let after = c
        .get(s.url("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_problem(after, 401, "unauthenticated").await;

    // Bearer session expiry (as if 12 hours passed) and logout.
    let outsider = t.token("outsider").to_owned();
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args([st.db_url.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql(&format!(
        "UPDATE sessions SET expires_at = expires_at - 13*3600 WHERE user_id = '{}'",
        t.user("outsider")
    ));
    let (status, v) = call(s, Method::GET, "/v1/me", Some(&outsider), None).await;
    assert_eq!(
        (status.as_u16(), v["code"].as_str()),
        (401, Some("session_expired"))
    );
    let viewer = t.token("viewer").to_owned();
    let (status, _) = call(s, Method::POST, "/v1/auth/logout", Some(&viewer), None).await;
    assert_eq!(status, 204);
    let (status, _) = call(s, Method::GET, "/v1/me", Some(&viewer), None).await;
    assert_eq!(status, 401);

    // Disabling a user ends their sessions; a revoked key stops at once.
    let reader_token = t.token("reader").to_owned();
    ok(
        s,
        Method::PATCH,
        &format!("/v1/users/{}", t.user("reader")),
        &t.admin_key,
        json!({"disabled": true}),
    )
    .await;
    let (status, _) = call(s, Method::GET, "/v1/me", Some(&reader_token), None).await;
    assert_eq!(status, 401);
    let keys = ok(s, Method::GET, "/v1/api-keys", &t.admin_key, Value::Null).await;
    let ro = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ro")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = call(s, Method::GET, "/v1/me", Some(t.token("key-read")), None).await;
    assert_eq!(status, 200);
    let (status, _) = call(
        s,
        Method::DELETE,
        &format!("/v1/api-keys/{ro}"),
        Some(&t.admin_key),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, v) = call(s, Method::GET, "/v1/me", Some(t.token("key-read")), None).await;
    assert_eq!(status, 401, "{v}");
}

#[tokio::test]
async fn row_level_security_alone_keeps_tenants_apart() {
    let st = stack().await;
    let s = &st.server;
    let a = tenant(s, "rls-a").await;
    let b = tenant(s, "rls-b").await;
    // As the application role, with the tenant set to B and no tenant condition in the query.
    let q = |tenant: Option<&str>, sql: &str| -> (bool, String) {
        let set = tenant
            .map(|t| format!("SELECT set_config('postvak.tenant_id', '{t}', false);"))
            .unwrap_or_default();
        let out = std::process::Command::new("psql")
            .args([
                st.db_url.as_str(),
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("SET ROLE postvak_app; {set} {sql}"),
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (okq, out) = q(
        Some(&b.id),
        &format!(
            "SELECT count(*) FROM inboxes WHERE inbox_id = '{}'",
            a.inbox
        ),
    );
    assert!(okq && out.trim().ends_with('0'), "{out}");
    let (okq, out) = q(Some(&b.id), "SELECT count(DISTINCT tenant_id) FROM users");
    assert!(
        okq && out.trim().ends_with('1'),
        "B sees only its own users: {out}"
    );
    let (okq, out) = q(None, "SELECT count(*) FROM users");
    assert!(
        okq && out.trim().ends_with('0'),
        "no tenant set: no rows: {out}"
    );
    let (okq, out) = q(
        Some(&b.id),
        &format!(
            "UPDATE inboxes SET name = 'x' WHERE inbox_id = '{}'",
            a.inbox
        ),
    );
    assert!(okq && out.contains("UPDATE 0"), "{out}");
    let (okq, out) = q(
        Some(&b.id),
        &format!(
            "INSERT INTO teams (tenant_id, team_id, name) VALUES ('{}', gen_random_uuid(), 'x')",
            a.id
        ),
    );
    assert!(!okq && out.contains("row-level security"), "{out}");
    let (okq, out) = q(Some(&b.id), "DELETE FROM events");
    assert!(!okq && out.contains("permission denied"), "{out}");
}
