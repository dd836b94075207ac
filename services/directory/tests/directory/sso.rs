//! OpenID Connect SSO against a real provider (npm `oidc-provider`): the full login, the MFA
//! policy, just-in-time users, and the negative matrix. Logins that the brief requires end to
//! end (happy path, bad state, tenant mix-up, missing MFA, PKCE) go browser → provider →
//! callback; forged ID tokens go through `Sso::login_with_id_token`, which the callback runs
//! after the code exchange.

use crate::oidc_harness::*;
use base64::Engine;
use postvak_core::access::TenantRole;
use postvak_directory::identity::SessionKind;
use postvak_directory::sso::SsoError;
use postvak_platform::store::TenantId;
use serde_json::{Value, json};

const LOA1: &str = "urn:postvak:loa:1";
const LOA2: &str = "urn:postvak:loa:2";

fn alice() -> Account {
    Account {
        id: "alice",
        email: "alice@a.example",
        role: Some("support-lead"),
        amr: &["pwd", "otp"],
        acr: Some(LOA2),
        email_verified: true,
    }
}

fn bob() -> Account {
    Account {
        id: "bob",
        email: "bob@a.example",
        role: Some("support"),
        amr: &["pwd"],
        acr: Some(LOA1),
        email_verified: true,
    }
}

fn eve() -> Account {
    Account {
        id: "eve",
        email: "eve@evil.example",
        role: Some("support-lead"),
        amr: &["pwd", "otp"],
        acr: Some(LOA2),
        email_verified: true,
    }
}

fn carol() -> Account {
    Account {
        id: "carol",
        email: "carol@b.example",
        role: None,
        amr: &["pwd", "otp"],
        acr: Some(LOA2),
        email_verified: true,
    }
}

/// Tenant A's policy: users of a.example, `support-lead` → admin, OTP required.
fn policy_a() -> Value {
    json!({
        "allowed_domains": ["a.example"],
        "role_claim": "pv_role",
        "role_mapping": {"support-lead": "admin", "support": "agent"},
        "default_role": "viewer",
        "required_amr": ["otp"],
        "required_acr": [LOA2],
    })
}

fn idp_a() -> IdpSpec {
    IdpSpec {
        name: "a",
        clients: vec!["tenant-a"],
        accounts: vec![alice(), bob(), eve()],
    }
}

fn idp_b() -> IdpSpec {
    IdpSpec {
        name: "b",
        clients: vec!["tenant-b"],
        accounts: vec![carol()],
    }
}

/// An app, providers A and B, tenant A on A and tenant B on B.
struct World {
    app: TestApp,
    idps: Idps,
    tenant_a: TenantId,
    tenant_b: TenantId,
    /// Tenant A's admin API key.
    key_a: String,
}

async fn world(backend: Backend) -> World {
    let app = TestApp::spawn(backend).await;
    let idps = Idps::start(&[idp_a(), idp_b()], &app.callback_url()).await;
    let (tenant_a, key_a) = app.tenant("Tenant A").await;
    let (tenant_b, key_b) = app.tenant("Tenant B").await;
    app.configure(&key_a, idps.get("a"), "tenant-a", policy_a())
        .await;
    app.configure(
        &key_b,
        idps.get("b"),
        "tenant-b",
        json!({"allowed_domains": ["b.example"], "default_role": "agent"}),
    )
    .await;
    World {
        app,
        idps,
        tenant_a,
        tenant_b,
        key_a,
    }
}

/// Browser login of `account` for `tenant`: the callback query and the state.
async fn provider_login(
    w: &World,
    tenant: TenantId,
    account: &str,
    query: &str,
) -> (String, String) {
    let started = w.app.start(tenant, query).await;
    let callback_query = Browser::new()
        .login(&started.authorize_url, account, &w.app.callback_url())
        .await;
    (callback_query, started.state)
}

// ---------------------------------------------------------------------------------------------
// The full login

#[tokio::test]
async fn full_login_creates_the_user_just_in_time_with_the_mapped_role_and_a_working_cookie_session()
 {
    let w = world(Backend::Postgres).await;
    let started = w
        .app
        .start(w.tenant_a, "redirect_uri=/inbox&session=cookie")
        .await;
    // Code flow with PKCE S256, state, nonce, and the required acr asked for.
    for p in ["code_challenge", "nonce", "state"] {
        assert!(
            query_param(&started.authorize_url, p).is_some_and(|v| v.len() >= 32),
            "{p}"
        );
    }
    assert_eq!(
        query_param(&started.authorize_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&started.authorize_url, "response_type").as_deref(),
        Some("code")
    );
    assert_eq!(
        query_param(&started.authorize_url, "acr_values").as_deref(),
        Some(LOA2)
    );

    let query = Browser::new()
        .login(&started.authorize_url, "alice", &w.app.callback_url())
        .await;
    assert_eq!(
        query_param(&format!("http://x/?{query}"), "iss").as_deref(),
        Some(w.idps.get("a").issuer.as_str())
    );
    let resp = w.app.callback(&query, Some(&started.state)).await;
    assert_eq!(
        resp.status(),
        303,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(header(&resp, "location").as_deref(), Some("/inbox"));
    let set = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let session_cookie = set
        .iter()
        .find(|c| c.starts_with("postvak_session="))
        .expect("session cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(
            session_cookie.contains(attr),
            "{session_cookie} lacks {attr}"
        );
    }
    let token = set_cookie(&resp, "postvak_session").expect("token");

    // The session works: /v1/me as the new user, of tenant A.
    let me = w
        .app
        .http
        .get(w.app.url("/v1/me"))
        .header("cookie", format!("postvak_session={token}"))
        .send()
        .await
        .unwrap();
    let (status, me) = status_json(me).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["tenant_id"], json!(w.tenant_a.0.to_string()));

    // The user was created just in time, with the mapped role, keyed on (iss, sub).
    let ctx = w.app.ctx(w.tenant_a).await;
    let users = w.app.dir.list_users(&ctx, None).await.unwrap();
    let user = users
        .iter()
        .find(|u| u.email == "alice@a.example")
        .expect("JIT user");
    assert_eq!(user.role, TenantRole::Admin);
    assert_eq!(user.display_name, "alice (test)");
    let linked = w
        .app
        .dir
        .find_user_by_identity(&w.idps.get("a").issuer, "alice")
        .await
        .unwrap();
    assert_eq!(linked, Some((w.tenant_a, user.id)));
    assert!(
        me["actor"].to_string().contains(&user.id.to_string()),
        "{me}"
    );

    // The state was single use: replaying the callback is refused.
    let replay = w.app.callback(&query, Some(&started.state)).await;
    assert_problem(replay, 400, "invalid_state").await;

    // A second login finds the same user (no duplicate).
    let (query, state) = provider_login(&w, w.tenant_a, "alice", "session=bearer").await;
    let resp = w.app.callback(&query, Some(&state)).await;
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], json!(user.id.to_string()));
    assert_eq!(
        w.app.dir.list_users(&ctx, None).await.unwrap().len(),
        users.len()
    );
}

/// The role of `email` in tenant A.
async fn role_in_a(w: &World, email: &str) -> TenantRole {
    let ctx = w.app.ctx(w.tenant_a).await;
    let users = w.app.dir.list_users(&ctx, None).await.unwrap();
    users
        .iter()
        .find(|u| u.email == email)
        .unwrap_or_else(|| panic!("{email} in {users:?}"))
        .role
}

async fn login_a(w: &World, account: &str) {
    let (query, state) = provider_login(w, w.tenant_a, account, "session=bearer").await;
    let resp = w.app.callback(&query, Some(&state)).await;
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_later_login_takes_the_role_the_provider_now_gives() {
    let w = world(Backend::Sqlite).await;
    login_a(&w, "alice").await;
    assert_eq!(role_in_a(&w, "alice@a.example").await, TenantRole::Admin);

    // The provider's group `support-lead` now means agent: the next login demotes her.
    let mut policy = policy_a();
    policy["role_mapping"] = json!({"support-lead": "agent"});
    w.app
        .configure(&w.key_a, w.idps.get("a"), "tenant-a", policy)
        .await;
    login_a(&w, "alice").await;
    assert_eq!(role_in_a(&w, "alice@a.example").await, TenantRole::Agent);

    // No mapping matches any more: the default role.
    let mut policy = policy_a();
    policy["role_mapping"] = json!({"someone-else": "admin"});
    w.app
        .configure(&w.key_a, w.idps.get("a"), "tenant-a", policy)
        .await;
    login_a(&w, "alice").await;
    assert_eq!(role_in_a(&w, "alice@a.example").await, TenantRole::Viewer);

    // Without a role claim, Postvak owns roles: a role set by hand stays.
    let ctx = w.app.ctx(w.tenant_a).await;
    let alice = w
        .app
        .dir
        .find_user_by_identity(&w.idps.get("a").issuer, "alice")
        .await
        .unwrap()
        .expect("linked")
        .1;
    w.app
        .dir
        .update_user(&ctx, alice, Some(TenantRole::Admin), None)
        .await
        .unwrap();
    let mut policy = policy_a();
    policy.as_object_mut().unwrap().remove("role_claim");
    policy.as_object_mut().unwrap().remove("role_mapping");
    w.app
        .configure(&w.key_a, w.idps.get("a"), "tenant-a", policy)
        .await;
    login_a(&w, "alice").await;
    assert_eq!(role_in_a(&w, "alice@a.example").await, TenantRole::Admin);
}

#[tokio::test]
async fn bearer_login_on_sqlite_answers_a_working_token() {
    let w = world(Backend::Sqlite).await;
    let (query, state) = provider_login(&w, w.tenant_b, "carol", "session=bearer").await;
    let resp = w.app.callback(&query, Some(&state)).await;
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("bearer token");
    let me = w
        .app
        .http
        .get(w.app.url("/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, me) = status_json(me).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["tenant_id"], json!(w.tenant_b.0.to_string()));
    let ctx = w.app.ctx(w.tenant_b).await;
    let users = w.app.dir.list_users(&ctx, None).await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(
        users[0].role,
        TenantRole::Agent,
        "no role claim: the default role"
    );
}

// ---------------------------------------------------------------------------------------------
// Refusals through the real provider

#[tokio::test]
async fn bad_state_is_refused() {
    let w = world(Backend::Postgres).await;
    let (query, state) = provider_login(&w, w.tenant_a, "alice", "session=bearer").await;

    // A state nobody issued (its cookie set to match, as an attacker could).
    let forged = "Zm9yZ2VkLXN0YXRlLXRoYXQtbm9ib2R5LWlzc3VlZC0xMjM0NTY3ODkw";
    let resp = w
        .app
        .callback(&with_param(&query, "state", Some(forged)), Some(forged))
        .await;
    assert_problem(resp, 400, "invalid_state").await;
    // No state at all.
    let resp = w
        .app
        .callback(&with_param(&query, "state", None), Some(&state))
        .await;
    assert_problem(resp, 400, "invalid_state").await;
    // The right state, but not from the browser that started the login (login CSRF).
    let resp = w.app.callback(&query, None).await;
    assert_problem(resp, 400, "invalid_state").await;
    let resp = w.app.callback(&query, Some("another-browsers-state")).await;
    assert_problem(resp, 400, "invalid_state").await;

    // None of these consumed the real pending login: it still completes, once.
    let resp = w.app.callback(&query, Some(&state)).await;
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 200, "{body}");
    let resp = w.app.callback(&query, Some(&state)).await;
    assert_problem(resp, 400, "invalid_state").await;
}

#[tokio::test]
async fn expired_pending_login_is_refused() {
    let w = world(Backend::Postgres).await;
    let (query, state) = provider_login(&w, w.tenant_a, "alice", "").await;
    w.app
        .exec(
            "UPDATE sso_logins SET created_at = created_at - 601 WHERE state = $1",
            &state,
        )
        .await;
    let body = assert_problem(
        w.app.callback(&query, Some(&state)).await,
        400,
        "invalid_state",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("too long"),
        "{body}"
    );
}

#[tokio::test]
async fn a_response_of_tenant_a_provider_is_refused_in_tenant_b_login() {
    let w = world(Backend::Postgres).await;
    let idp_a = w.idps.get("a");
    let idp_b = w.idps.get("b");
    // Alice logs in at A (a login started for tenant A); the attacker splices A's response into
    // a login started for tenant B.
    let (query_a, _state_a) = provider_login(&w, w.tenant_a, "alice", "session=bearer").await;
    let started_b = w.app.start(w.tenant_b, "session=bearer").await;
    let spliced = with_param(&query_a, "state", Some(&started_b.state));

    // 1. As sent: the response names issuer A (RFC 9207), B's login expects B.
    let body = assert_problem(
        w.app.callback(&spliced, Some(&started_b.state)).await,
        401,
        "issuer_mismatch",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&idp_a.issuer),
        "{body}"
    );

    // 2. With `iss` stripped: B announces RFC 9207, so a response without it is refused.
    let started_b = w.app.start(w.tenant_b, "session=bearer").await;
    let stripped = with_param(
        &with_param(&query_a, "state", Some(&started_b.state)),
        "iss",
        None,
    );
    assert_problem(
        w.app.callback(&stripped, Some(&started_b.state)).await,
        401,
        "issuer_mismatch",
    )
    .await;

    // 3. With `iss` forged to B's: B's token endpoint does not know A's code.
    let started_b = w.app.start(w.tenant_b, "session=bearer").await;
    let forged = with_param(
        &with_param(&query_a, "state", Some(&started_b.state)),
        "iss",
        Some(&idp_b.issuer),
    );
    assert_problem(
        w.app.callback(&forged, Some(&started_b.state)).await,
        400,
        "code_exchange_failed",
    )
    .await;

    // Nobody was created in tenant B, and nobody logged in.
    let ctx_b = w.app.ctx(w.tenant_b).await;
    assert!(w.app.dir.list_users(&ctx_b, None).await.unwrap().is_empty());
    assert_eq!(
        w.app
            .dir
            .find_user_by_identity(&idp_a.issuer, "alice")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_login_without_the_required_mfa_is_refused() {
    let w = world(Backend::Postgres).await;
    // Bob logs in with a password only (amr ["pwd"], acr loa:1); tenant A requires OTP.
    let (query, state) = provider_login(&w, w.tenant_a, "bob", "").await;
    let body = assert_problem(
        w.app.callback(&query, Some(&state)).await,
        403,
        "mfa_required",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap_or_default().contains(LOA2),
        "{body}"
    );
    let ctx = w.app.ctx(w.tenant_a).await;
    assert!(
        w.app.dir.list_users(&ctx, None).await.unwrap().is_empty(),
        "no user for a refused login"
    );

    // With only the amr requirement (no acr), the refusal names the missing method.
    let (_, key) = {
        let ctx = w.app.ctx(w.tenant_a).await;
        let k = w
            .app
            .dir
            .issue_api_key(&ctx, "admin2", &["admin".to_owned()], None, None)
            .await
            .unwrap();
        ((), k.token)
    };
    let mut policy = policy_a();
    policy["required_acr"] = json!([]);
    w.app
        .configure(&key, w.idps.get("a"), "tenant-a", policy)
        .await;
    let (query, state) = provider_login(&w, w.tenant_a, "bob", "").await;
    let body = assert_problem(
        w.app.callback(&query, Some(&state)).await,
        403,
        "mfa_required",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap_or_default().contains("otp"),
        "{body}"
    );
    // Alice, with OTP, passes the same policy.
    let (query, state) = provider_login(&w, w.tenant_a, "alice", "").await;
    assert_eq!(w.app.callback(&query, Some(&state)).await.status(), 303);
}

#[tokio::test]
async fn a_user_of_a_domain_not_allowed_is_not_created() {
    let w = world(Backend::Postgres).await;
    let (query, state) = provider_login(&w, w.tenant_a, "eve", "").await;
    let body = assert_problem(
        w.app.callback(&query, Some(&state)).await,
        403,
        "domain_not_allowed",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("evil.example"),
        "{body}"
    );
    let ctx = w.app.ctx(w.tenant_a).await;
    assert!(w.app.dir.list_users(&ctx, None).await.unwrap().is_empty());

    // An existing local user with the same email is not taken over by an unlinked identity.
    w.app
        .dir
        .create_user(&ctx, "alice@a.example", "Alice Local", TenantRole::Agent)
        .await
        .unwrap();
    let (query, state) = provider_login(&w, w.tenant_a, "alice", "").await;
    assert_problem(
        w.app.callback(&query, Some(&state)).await,
        409,
        "account_exists",
    )
    .await;
}

#[tokio::test]
async fn the_code_is_bound_to_the_pkce_verifier() {
    let w = world(Backend::Postgres).await;
    let idp = w.idps.get("a");

    // Redeeming the code without the verifier, with the client's own credentials, fails.
    let (query, _state) = provider_login(&w, w.tenant_a, "alice", "").await;
    let code = query_param(&format!("http://x/?{query}"), "code").expect("code");
    let resp = reqwest::Client::new()
        .post(format!("{}/token", idp.issuer))
        .basic_auth("tenant-a", Some(client_secret("tenant-a")))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &w.app.callback_url()),
        ])
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    // Through the callback with the stored verifier lost or replaced: refused.
    let (query, state) = provider_login(&w, w.tenant_a, "alice", "").await;
    w.app
        .exec("UPDATE sso_logins SET pkce_verifier = 'not-the-verifier-not-the-verifier-not-the-verif' WHERE state = $1", &state)
        .await;
    assert_problem(
        w.app.callback(&query, Some(&state)).await,
        400,
        "code_exchange_failed",
    )
    .await;
    let ctx = w.app.ctx(w.tenant_a).await;
    assert!(w.app.dir.list_users(&ctx, None).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_error_from_the_provider_is_a_clear_refusal() {
    let w = world(Backend::Postgres).await;
    let started = w.app.start(w.tenant_a, "").await;
    let query = format!(
        "error=access_denied&error_description=The+user+said+no&state={}",
        started.state
    );
    let body = assert_problem(
        w.app.callback(&query, Some(&started.state)).await,
        400,
        "idp_error",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("access_denied"),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------------
// Forged ID tokens, through the validation the callback runs

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(idp: &IdpInfo, client: &str, sub: &str, email: &str, nonce: &str) -> Value {
    json!({
        "iss": idp.issuer,
        "aud": client,
        "sub": sub,
        "email": email,
        "email_verified": true,
        "nonce": nonce,
        "iat": now(),
        "exp": now() + 300,
        "amr": ["pwd", "otp"],
        "acr": LOA2,
        "pv_role": "support",
    })
}

fn sign(pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("pem");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn unsigned(claims: &Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

async fn try_login(
    w: &World,
    tenant: TenantId,
    token: &str,
    nonce: &str,
) -> Result<uuid::Uuid, SsoError> {
    w.app
        .sso
        .login_with_id_token(&w.app.dir, tenant, token, nonce, SessionKind::Bearer)
        .await
        .map(|s| s.user_id)
}

#[tokio::test]
async fn forged_id_tokens_are_refused_each_with_its_code() {
    let w = world(Backend::Postgres).await;
    let a = w.idps.get("a");
    let b = w.idps.get("b");
    let nonce = "the-nonce-of-this-login-0123456789";
    let good = claims(a, "tenant-a", "dave", "dave@a.example", nonce);

    let code = |r: Result<uuid::Uuid, SsoError>| match r {
        Ok(u) => format!("accepted as {u}"),
        Err(e) => e.code().to_owned(),
    };
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong iss",
            sign(&a.private_pem, Some(&a.kid), &with("iss", json!(b.issuer))),
            "issuer_mismatch",
        ),
        (
            "wrong aud",
            sign(
                &a.private_pem,
                Some(&a.kid),
                &with("aud", json!("someone-else")),
            ),
            "audience_mismatch",
        ),
        (
            "extra untrusted aud",
            sign(
                &a.private_pem,
                Some(&a.kid),
                &with("aud", json!(["tenant-a", "someone-else"])),
            ),
            "audience_mismatch",
        ),
        (
            "expired",
            sign(
                &a.private_pem,
                Some(&a.kid),
                &with("exp", json!(now() - 60)),
            ),
            "id_token_expired",
        ),
        (
            "issued in the future",
            sign(
                &a.private_pem,
                Some(&a.kid),
                &with("iat", json!(now() + 3600)),
            ),
            "id_token_expired",
        ),
        (
            "bad nonce",
            sign(
                &a.private_pem,
                Some(&a.kid),
                &with("nonce", json!("another-login")),
            ),
            "nonce_mismatch",
        ),
        (
            "no nonce",
            sign(&a.private_pem, Some(&a.kid), &{
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("nonce");
                c
            }),
            "nonce_mismatch",
        ),
        ("alg none", unsigned(&good), "invalid_id_token"),
        (
            "unknown kid",
            sign(&a.private_pem, Some("kid-nobody-published"), &good),
            "invalid_id_token",
        ),
        (
            "a key the provider never published",
            sign(&a.rogue_pem, Some(&a.kid), &good),
            "invalid_id_token",
        ),
        (
            "HS256 with the client secret",
            {
                let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
                h.kid = Some(a.kid.clone());
                jsonwebtoken::encode(
                    &h,
                    &good,
                    &jsonwebtoken::EncodingKey::from_secret(client_secret("tenant-a").as_bytes()),
                )
                .unwrap()
            },
            "invalid_id_token",
        ),
        ("garbage", "not.a.jwt".to_owned(), "invalid_id_token"),
        (
            "no MFA",
            sign(&a.private_pem, Some(&a.kid), &with("amr", json!(["pwd"]))),
            "mfa_required",
        ),
        (
            "weak acr",
            sign(&a.private_pem, Some(&a.kid), &with("acr", json!(LOA1))),
            "mfa_required",
        ),
        (
            "email not verified",
            sign(
                &a.private_pem,
                Some(&a.kid),
                &with("email_verified", json!(false)),
            ),
            "email_not_verified",
        ),
        (
            "domain not allowed",
            sign(
                &a.private_pem,
                Some(&a.kid),
                &with("email", json!("dave@evil.example")),
            ),
            "domain_not_allowed",
        ),
    ];
    let mut failures = Vec::new();
    for (name, token, expected) in &cases {
        let got = code(try_login(&w, w.tenant_a, token, nonce).await);
        if got != *expected {
            failures.push(format!("{name}: expected {expected}, got {got}"));
        }
    }
    // A token of tenant A's provider (its key, its issuer, its client) presented to tenant B.
    let got = code(
        try_login(
            &w,
            w.tenant_b,
            &sign(&a.private_pem, Some(&a.kid), &good),
            nonce,
        )
        .await,
    );
    if got != "issuer_mismatch" {
        failures.push(format!(
            "tenant A's token in tenant B: expected issuer_mismatch, got {got}"
        ));
    }
    // Even naming B's issuer and client, A's key can't sign for B.
    let mut for_b = good.clone();
    for_b["iss"] = json!(b.issuer);
    for_b["aud"] = json!("tenant-b");
    for_b["email"] = json!("dave@b.example");
    let got = code(
        try_login(
            &w,
            w.tenant_b,
            &sign(&a.private_pem, Some(&a.kid), &for_b),
            nonce,
        )
        .await,
    );
    if got != "invalid_id_token" {
        failures.push(format!(
            "A-signed token for B: expected invalid_id_token, got {got}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let ctx = w.app.ctx(w.tenant_a).await;
    assert!(
        w.app.dir.list_users(&ctx, None).await.unwrap().is_empty(),
        "no refused token created a user"
    );
    let ctx_b = w.app.ctx(w.tenant_b).await;
    assert!(w.app.dir.list_users(&ctx_b, None).await.unwrap().is_empty());

    // The control: the same crafting with nothing wrong is accepted (so each refusal above
    // is due to its one fault), with the mapped role.
    let user = try_login(
        &w,
        w.tenant_a,
        &sign(&a.private_pem, Some(&a.kid), &good),
        nonce,
    )
    .await
    .expect("a good token");
    assert_eq!(
        w.app.dir.get_user(&ctx, user).await.unwrap().role,
        TenantRole::Agent
    );
}

// ---------------------------------------------------------------------------------------------
// Settings

#[tokio::test]
async fn settings_are_validated_and_never_show_the_secret() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let idps = Idps::start(&[idp_a()], &app.callback_url()).await;
    let idp = idps.get("a");
    let (tenant, key) = app.tenant("Tenant A").await;

    // Before configuration.
    let resp = app
        .http
        .get(app.url("/v1/sso"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 404, "sso_not_configured").await;
    let resp = app
        .http
        .get(app.url(&format!("/v1/auth/sso/{}/start", tenant.0)))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 404, "sso_not_configured").await;
    let resp = app
        .http
        .get(app.url(&format!("/v1/auth/sso/{}/start", uuid::Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 404, "sso_not_configured").await;

    let base = json!({"issuer": idp.issuer, "client_id": "tenant-a", "client_secret": client_secret("tenant-a")});
    let bad = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases = [
        (
            bad("issuer", json!("http://idp.example.com")),
            "invalid_sso_settings",
        ),
        (
            bad("issuer", json!("ftp://127.0.0.1/")),
            "invalid_sso_settings",
        ),
        (bad("issuer", json!("not a url")), "invalid_sso_settings"),
        (
            bad("issuer", json!(format!("{}?x=1", idp.issuer))),
            "invalid_sso_settings",
        ),
        (bad("client_id", json!(" ")), "invalid_sso_settings"),
        (bad("default_role", json!("superuser")), "invalid_role"),
        (bad("default_role", json!("owner")), "invalid_role"),
        (bad("role_mapping", json!({"x": "owner"})), "invalid_role"),
        (
            bad("role_mapping", json!({"x": "admin"})),
            "invalid_sso_settings",
        ),
        (
            bad("allowed_domains", json!(["*.example.com"])),
            "invalid_sso_settings",
        ),
        (
            bad("required_amr", json!(["two words"])),
            "invalid_sso_settings",
        ),
        // Discovery fails: nothing listens there.
        (
            bad("issuer", json!("http://127.0.0.1:9/nothing")),
            "invalid_sso_settings",
        ),
    ];
    for (body, code) in cases {
        let (status, resp) = app.put_sso(&key, &body).await;
        assert_eq!(
            (status, resp["code"].as_str()),
            (422, Some(code)),
            "{body} → {resp}"
        );
    }

    // A read-only key is not a tenant admin.
    let ctx = app.ctx(tenant).await;
    let reader = app
        .dir
        .issue_api_key(&ctx, "r", &["read".to_owned()], None, None)
        .await
        .unwrap();
    let (status, resp) = app.put_sso(&reader.token, &base).await;
    assert_eq!(
        (status, resp["code"].as_str()),
        (403, Some("tenant_admin_required")),
        "{resp}"
    );

    let mut good = base.clone();
    good["allowed_domains"] = json!(["@A.example", "a.example"]);
    good["role_claim"] = json!("pv_role");
    good["role_mapping"] = json!({"support-lead": "admin"});
    good["required_amr"] = json!(["otp"]);
    let (status, view) = app.put_sso(&key, &good).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["allowed_domains"], json!(["a.example"]));
    assert_eq!(view["default_role"], "viewer");
    assert_eq!(view["client_secret_set"], true);
    assert_eq!(view["redirect_uri"], json!(app.callback_url()));
    let resp = app
        .http
        .get(app.url("/v1/sso"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains(&client_secret("tenant-a")),
        "the secret leaked: {text}"
    );
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["issuer"], json!(idp.issuer));
    assert_eq!(got["required_amr"], json!(["otp"]));

    // Omitting the secret keeps it: a login still exchanges its code.
    let mut keep = good.clone();
    keep.as_object_mut().unwrap().remove("client_secret");
    keep["required_amr"] = json!([]);
    let (status, view) = app.put_sso(&key, &keep).await;
    assert_eq!(
        (status, view["client_secret_set"].as_bool()),
        (200, Some(true)),
        "{view}"
    );
    let started = app.start(tenant, "").await;
    let query = Browser::new()
        .login(&started.authorize_url, "alice", &app.callback_url())
        .await;
    assert_eq!(
        app.callback(&query, Some(&started.state)).await.status(),
        303
    );

    // The secret is in no event.
    let store = &ctx.cell().store;
    let events = store
        .read_log(
            postvak_platform::store::LogPosition::START,
            1000,
            Some(tenant),
        )
        .await
        .unwrap();
    let mut saw = false;
    for e in &events {
        let opened = store.open(e).await.unwrap();
        if opened.event_type == "tenant.sso_configured" {
            saw = true;
            let payload: Value = opened.payload().unwrap();
            assert!(!payload.to_string().contains("secret-of"), "{payload}");
        }
    }
    assert!(saw, "tenant.sso_configured was recorded");

    // Another tenant can't take the same issuer.
    let (_, key2) = app.tenant("Tenant C").await;
    let (status, resp) = app.put_sso(&key2, &base).await;
    assert_eq!(
        (status, resp["code"].as_str()),
        (409, Some("issuer_taken")),
        "{resp}"
    );

    // The start refuses an open redirect and an unknown session kind.
    for q in [
        "redirect_uri=https://evil.example/",
        "redirect_uri=//evil.example/x",
        "session=forever",
    ] {
        let resp = app
            .http
            .get(app.url(&format!("/v1/auth/sso/{}/start?{q}", tenant.0)))
            .send()
            .await
            .unwrap();
        let (status, body) = status_json(resp).await;
        assert_eq!(status, 400, "{q}: {body}");
    }
    // A URL of the API's own origin is fine.
    app.start(tenant, &format!("redirect_uri={}", app.url("/app")))
        .await;
}
