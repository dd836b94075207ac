//! Contacts: senders and recipients filed from real mail (through ingest's pipeline), found by
//! a blind index, VIP and edits with `If-Match`, merge, history, GDPR export, and erasure by
//! destroying the contact's key — checked in the database itself.

use crate::helpers::*;
use postvak_conversation::contacts::Contacts;
use postvak_core::access::{InboxRole, TenantRole};
use postvak_platform::store::{EventData, LogPosition};
use postvak_proto::events::contact as cev;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

fn raw(from: &str, cc: &str, message_id: &str, subject: &str, body: &str) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: Support <support@acme.test>\r\nSubject: {subject}\r\n\
         Message-ID: <{message_id}>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0100\r\n"
    );
    if !cc.is_empty() {
        m.push_str(&format!("Cc: {cc}\r\n"));
    }
    m.push_str("\r\n");
    m.push_str(body);
    m.push_str("\r\n");
    m.into_bytes()
}

/// Polls until the contact holding `address` exists in the read model with at least
/// `conversations` conversations; returns its id.
async fn wait_for_contact(env: &TestEnv, address: &str, conversations: u64) -> Uuid {
    let svc = Contacts::new(env.cells.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(id) = svc.find_by_address(&env.ctx, address).await.unwrap()
            && let Some(c) = svc.get(&env.ctx, id).await.unwrap()
            && c.status == "active"
            && c.conversation_count >= conversations
        {
            return id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no contact for {address} with {conversations} conversations"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(r: &Resp) -> Vec<Uuid> {
    r.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {r:?}"))
        .iter()
        .map(|c| c["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn mail_files_senders_and_recipients_as_contacts_found_again_by_address() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let first = env
            .deliver(
                env.inbox,
                &raw(
                    "Eve Customer <Eve@Example.org>",
                    "Carl Partner <carl@partner.example>",
                    "c1@example.org",
                    "Printer",
                    "It is broken.",
                ),
            )
            .await;
        env.wait_for_conversation(first.conversation_id, 1).await;
        let eve = wait_for_contact(&env, "eve@example.org", 1).await;
        let carl = wait_for_contact(&env, "carl@partner.example", 1).await;
        assert_ne!(eve, carl);

        let r = app.get(&format!("/v1/contacts/{eve}"), &env.alice).await;
        assert_eq!(r.status, 200, "{backend:?}: {r:?}");
        assert_eq!(r.body["name"], "Eve Customer");
        assert_eq!(r.body["addresses"], json!(["eve@example.org"]));
        assert_eq!(r.body["status"], "active");
        assert_eq!(r.body["vip"], false);
        assert!(r.etag.is_some());

        // The same person again, spelled differently, in a new conversation: the same contact.
        let second = env
            .deliver(
                env.inbox,
                &raw(
                    "\"Eve\" < EVE@example.ORG >",
                    "",
                    "c2@example.org",
                    "Another thing",
                    "Hello again.",
                ),
            )
            .await;
        assert_ne!(second.conversation_id, first.conversation_id);
        env.wait_for_conversation(second.conversation_id, 1).await;
        assert_eq!(wait_for_contact(&env, "eve@example.org", 2).await, eve);
        let found = app
            .get("/v1/contacts?address=%20EVE@Example.org%20", &env.alice)
            .await;
        assert_eq!(found.status, 200, "{backend:?}: {found:?}");
        assert_eq!(ids(&found), vec![eve], "{backend:?}");
        // The first name seen is kept.
        let r = app.get(&format!("/v1/contacts/{eve}"), &env.alice).await;
        assert_eq!(r.body["name"], "Eve Customer", "{backend:?}");
        assert_eq!(r.body["conversation_count"], 2, "{backend:?}");

        // Their conversation history, newest change first.
        let h = app
            .get(&format!("/v1/contacts/{eve}/conversations"), &env.alice)
            .await;
        assert_eq!(h.status, 200, "{backend:?}: {h:?}");
        assert_eq!(
            ids(&h),
            vec![second.conversation_id, first.conversation_id],
            "{backend:?}"
        );

        // A reply's recipients become contacts too.
        let reply = app
            .post(
                &format!("/v1/conversations/{}/replies", first.conversation_id),
                &env.alice,
                json!({"body": "Looping in Dora.", "to": [{"address": "eve@example.org"}],
                       "cc": [{"name": "Dora", "address": "dora@elsewhere.example"}]}),
            )
            .await;
        assert_eq!(reply.status, 201, "{backend:?}: {reply:?}");
        let dora = wait_for_contact(&env, "dora@elsewhere.example", 1).await;
        assert!(![eve, carl].contains(&dora));

        // The inbox's own address is never a contact; nobody else is either.
        let admin = env.user("admin@acme.test", TenantRole::Admin).await;
        let all = app.get("/v1/contacts", &admin).await;
        assert_eq!(all.status, 200);
        let mut got = ids(&all);
        got.sort();
        let mut want = vec![eve, carl, dora];
        want.sort();
        assert_eq!(got, want, "{backend:?}");
        assert!(
            app.get("/v1/contacts?address=support@acme.test", &admin)
                .await
                .body["items"]
                .as_array()
                .unwrap()
                .is_empty()
        );

        // Someone without a conversation with the contact: it doesn't exist for them.
        let stranger = env.user("stranger@acme.test", TenantRole::Agent).await;
        assert_eq!(
            app.get(&format!("/v1/contacts/{eve}"), &stranger)
                .await
                .status,
            404,
            "{backend:?}"
        );
        assert_eq!(
            ids(&app.get("/v1/contacts", &stranger).await),
            Vec::<Uuid>::new()
        );
        // Bad input is a problem with a code.
        let bad = app
            .get("/v1/contacts?address=not-an-address", &env.alice)
            .await;
        assert_eq!(bad.status, 400);
        assert_eq!(bad.body["code"], "invalid_address");
    }
}

#[tokio::test]
async fn vip_flag_and_edits_with_if_match_and_filters() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let d = env
            .deliver(
                env.inbox,
                &raw("Vera <vera@bigcorp.example>", "", "v1@x", "Hi", "Hi."),
            )
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let vera = wait_for_contact(&env, "vera@bigcorp.example", 1).await;
        let r = app.get(&format!("/v1/contacts/{vera}"), &env.alice).await;
        let etag = r.etag.clone().unwrap();

        // A `read` member may look but not change.
        let denied = app
            .call(
                "PATCH",
                &format!("/v1/contacts/{vera}"),
                &env.reader,
                Some(json!({"vip": true})),
                &[],
            )
            .await;
        assert_eq!(denied.status, 403, "{backend:?}: {denied:?}");
        assert_eq!(denied.body["code"], "inbox_permission_required");

        let up = app
            .call(
                "PATCH",
                &format!("/v1/contacts/{vera}"),
                &env.alice,
                Some(json!({"vip": true, "organisation": " Big  Corp ", "notes": "Key account"})),
                &[("If-Match", &etag)],
            )
            .await;
        assert_eq!(up.status, 200, "{backend:?}: {up:?}");
        assert_eq!(up.body["vip"], true);
        assert_eq!(up.body["organisation"], "Big  Corp");
        assert_eq!(up.body["notes"], "Key account");
        assert_ne!(up.etag.as_deref(), Some(etag.as_str()));

        // A change against the old view is refused.
        let stale = app
            .call(
                "PATCH",
                &format!("/v1/contacts/{vera}"),
                &env.bob,
                Some(json!({"vip": false})),
                &[("If-Match", &etag)],
            )
            .await;
        assert_eq!(stale.status, 409, "{backend:?}: {stale:?}");
        assert_eq!(stale.body["code"], "stale_contact");

        let other = env
            .deliver(
                env.inbox,
                &raw("olaf@small.example", "", "o1@x", "Yo", "Yo."),
            )
            .await;
        env.wait_for_conversation(other.conversation_id, 1).await;
        let olaf = wait_for_contact(&env, "olaf@small.example", 1).await;
        assert_eq!(
            ids(&app.get("/v1/contacts?vip=true", &env.alice).await),
            vec![vera]
        );
        assert_eq!(
            ids(&app.get("/v1/contacts?vip=false", &env.alice).await),
            vec![olaf]
        );
        assert_eq!(
            ids(&app
                .get("/v1/contacts?organisation=big%20corp", &env.alice)
                .await),
            vec![vera],
            "{backend:?}"
        );
        // Pagination: one per page, then the rest.
        let p1 = app.get("/v1/contacts?limit=1", &env.alice).await;
        assert_eq!(ids(&p1).len(), 1);
        let cursor = p1.body["next_cursor"].as_str().unwrap().to_owned();
        let p2 = app
            .get(&format!("/v1/contacts?limit=1&cursor={cursor}"), &env.alice)
            .await;
        assert_eq!(ids(&p2).len(), 1);
        assert_ne!(ids(&p1), ids(&p2));
        assert!(p2.body.get("next_cursor").is_none(), "{p2:?}");

        // An address that belongs to someone else can't be taken.
        let clash = app
            .call(
                "PATCH",
                &format!("/v1/contacts/{vera}"),
                &env.alice,
                Some(json!({"addresses": ["vera@bigcorp.example", "OLAF@small.example"]})),
                &[],
            )
            .await;
        assert_eq!(clash.status, 409, "{backend:?}: {clash:?}");
        assert_eq!(clash.body["code"], "contact_address_taken");
        let invalid = app
            .call(
                "PATCH",
                &format!("/v1/contacts/{vera}"),
                &env.alice,
                Some(json!({"addresses": []})),
                &[],
            )
            .await;
        assert_eq!(invalid.status, 422);
        assert_eq!(invalid.body["code"], "invalid_contact");
    }
}

#[tokio::test]
async fn merging_duplicates_moves_addresses_and_conversations_to_the_survivor() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let a = env
            .deliver(
                env.inbox,
                &raw("Mia <mia@work.example>", "", "m1@x", "A", "A."),
            )
            .await;
        let b = env
            .deliver(
                env.inbox,
                &raw("Mia H. <mia@home.example>", "", "m2@x", "B", "B."),
            )
            .await;
        env.wait_for_conversation(a.conversation_id, 1).await;
        env.wait_for_conversation(b.conversation_id, 1).await;
        let work = wait_for_contact(&env, "mia@work.example", 1).await;
        let home = wait_for_contact(&env, "mia@home.example", 1).await;
        assert_ne!(work, home);

        let m = app
            .post(
                &format!("/v1/contacts/{home}/merge"),
                &env.alice,
                json!({"into": work}),
            )
            .await;
        assert_eq!(m.status, 200, "{backend:?}: {m:?}");
        assert_eq!(m.body["id"], work.to_string());
        assert_eq!(
            m.body["addresses"],
            json!(["mia@work.example", "mia@home.example"])
        );
        assert_eq!(m.body["conversation_count"], 2);

        // The duplicate answers 410 naming the survivor.
        let gone = app.get(&format!("/v1/contacts/{home}"), &env.alice).await;
        assert_eq!(gone.status, 410, "{backend:?}: {gone:?}");
        assert_eq!(gone.body["code"], "contact_merged");
        assert_eq!(gone.body["merged_into"], work.to_string());
        assert!(gone.content_type.starts_with("application/problem+json"));

        // The duplicate's address and conversations now find the survivor.
        assert_eq!(
            ids(&app
                .get("/v1/contacts?address=mia@home.example", &env.alice)
                .await),
            vec![work],
            "{backend:?}"
        );
        let mut h = ids(&app
            .get(&format!("/v1/contacts/{work}/conversations"), &env.alice)
            .await);
        h.sort();
        let mut want = vec![a.conversation_id, b.conversation_id];
        want.sort();
        assert_eq!(h, want, "{backend:?}");
        assert_eq!(ids(&app.get("/v1/contacts", &env.alice).await), vec![work]);

        // New mail from the merged-away address lands on the survivor.
        let c = env
            .deliver(env.inbox, &raw("mia@home.example", "", "m3@x", "C", "C."))
            .await;
        env.wait_for_conversation(c.conversation_id, 1).await;
        assert_eq!(wait_for_contact(&env, "mia@home.example", 3).await, work);

        // Merging into itself is refused.
        let selfm = app
            .post(
                &format!("/v1/contacts/{work}/merge"),
                &env.alice,
                json!({"into": work}),
            )
            .await;
        assert_eq!(selfm.status, 422);
        assert_eq!(selfm.body["code"], "merge_into_self");
    }
}

#[tokio::test]
async fn export_holds_the_contact_their_messages_and_the_original_eml() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let mail = raw(
            "Otto Export <otto@example.net>",
            "",
            "e1@x",
            "Exportsubject",
            "Exportbodyword inside.",
        );
        let d = env.deliver(env.inbox, &mail).await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let otto = wait_for_contact(&env, "otto@example.net", 1).await;
        let reply = app
            .post(
                &format!("/v1/conversations/{}/replies", d.conversation_id),
                &env.alice,
                json!({"body": "Exportreplyword."}),
            )
            .await;
        assert_eq!(reply.status, 201);

        let x = app
            .get(&format!("/v1/contacts/{otto}/export"), &env.alice)
            .await;
        assert_eq!(x.status, 200, "{backend:?}: {x:?}");
        assert_eq!(x.body["contact"]["name"], "Otto Export");
        let convs = x.body["conversations"].as_array().unwrap();
        assert_eq!(convs.len(), 1);
        assert_eq!(convs[0]["id"], d.conversation_id.to_string());
        let text = serde_json::to_string(&convs[0]["messages"]).unwrap();
        assert!(text.contains("Exportsubject"), "{text}");
        assert!(text.contains("Exportreplyword"), "{text}");
        let originals = x.body["original_messages"].as_array().unwrap();
        assert_eq!(originals.len(), 1, "{backend:?}: {originals:?}");
        assert_eq!(originals[0]["available"], true);
        use base64::Engine;
        let eml = base64::engine::general_purpose::STANDARD
            .decode(originals[0]["eml_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(eml, mail, "{backend:?}: the original, byte for byte");

        // An agent who can't see the contact's conversations gets nothing.
        let stranger = env.agent_without_grant("nosy@acme.test").await;
        assert_eq!(
            app.get(&format!("/v1/contacts/{otto}/export"), &stranger)
                .await
                .status,
            404
        );
    }
}

impl TestEnv {
    async fn agent_without_grant(&self, email: &str) -> Agent {
        self.user(email, TenantRole::Agent).await
    }
}

/// Every byte the database holds, as the operator would see it on disk or in a dump.
async fn database_bytes(env: &TestEnv, backend: Backend) -> Vec<u8> {
    match backend {
        Backend::Sqlite => {
            let path = env.url.trim_start_matches("sqlite://").to_owned();
            let dir = std::path::Path::new(&path).parent().unwrap().to_owned();
            let mut all = Vec::new();
            for entry in std::fs::read_dir(dir).unwrap() {
                all.extend(std::fs::read(entry.unwrap().path()).unwrap());
            }
            all
        }
        Backend::Postgres => {
            let out = tokio::process::Command::new("pg_dump")
                .arg("--no-owner")
                .arg(&env.url)
                .output()
                .await
                .expect("pg_dump runs (install postgresql-client)");
            assert!(
                out.status.success(),
                "pg_dump: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }
    }
}

fn contains(hay: &[u8], word: &str) -> bool {
    let lower = hay.to_ascii_lowercase();
    let w = word.to_ascii_lowercase();
    lower.windows(w.len()).any(|x| x == w.as_bytes())
}

#[tokio::test]
async fn erasure_destroys_the_contact_key_the_chain_still_verifies_and_new_mail_starts_afresh() {
    const NAME: &str = "Quirinus Erasmusson";
    const ADDRESS: &str = "quirinus.erasmusson@example.com";
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let d = env
            .deliver(
                env.inbox,
                &raw(
                    &format!("{NAME} <{ADDRESS}>"),
                    "",
                    "q1@x",
                    "Erase me",
                    "Please.",
                ),
            )
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let q = wait_for_contact(&env, ADDRESS, 1).await;
        let up = app
            .call(
                "PATCH",
                &format!("/v1/contacts/{q}"),
                &env.alice,
                Some(json!({"organisation": "Erasmusson Holding", "notes": "Erasmusnote"})),
                &[],
            )
            .await;
        assert_eq!(up.status, 200, "{backend:?}: {up:?}");

        // Only tenant admins erase.
        let denied = app
            .call(
                "DELETE",
                &format!("/v1/contacts/{q}"),
                &env.alice,
                None,
                &[],
            )
            .await;
        assert_eq!(denied.status, 403, "{backend:?}: {denied:?}");
        assert_eq!(denied.body["code"], "tenant_admin_required");
        let admin = env.user("dpo@acme.test", TenantRole::Admin).await;
        let erased = app
            .call("DELETE", &format!("/v1/contacts/{q}"), &admin, None, &[])
            .await;
        assert_eq!(erased.status, 200, "{backend:?}: {erased:?}");

        // The API answers the erased state, and nothing about the person.
        for who in [&admin, &env.alice] {
            let r = app.get(&format!("/v1/contacts/{q}"), who).await;
            assert_eq!(r.status, 200, "{backend:?}: {r:?}");
            assert_eq!(r.body["status"], "erased");
            assert!(r.body.get("name").is_none(), "{r:?}");
            assert!(r.body.get("organisation").is_none(), "{r:?}");
            assert!(r.body.get("notes").is_none(), "{r:?}");
            assert_eq!(r.body["addresses"], json!([]));
        }
        // Their address no longer finds them; the conversation is still there.
        assert_eq!(
            ids(&app
                .get(&format!("/v1/contacts?address={ADDRESS}"), &admin)
                .await),
            Vec::<Uuid>::new()
        );
        assert_eq!(
            ids(&app
                .get(&format!("/v1/contacts/{q}/conversations"), &admin)
                .await),
            vec![d.conversation_id]
        );
        // Erasing again changes nothing.
        let again = app
            .post(&format!("/v1/contacts/{q}/erase"), &admin, json!({}))
            .await;
        assert_eq!(again.status, 200, "{backend:?}: {again:?}");

        // Not in plaintext anywhere in the database.
        let dump = database_bytes(&env, backend).await;
        assert!(
            contains(&dump, "contact_addresses"),
            "{backend:?}: the dump holds the schema"
        );
        for canary in ["Erasmusson", ADDRESS, "Erasmusnote"] {
            assert!(
                !contains(&dump, canary),
                "{backend:?}: {canary} in plaintext"
            );
        }

        // Nor decryptable from anything the contact owns: every event of the contact's stream
        // is either shredded (its key is gone) or an id-only record without the person in it.
        let store = &env.ctx.cell().store;
        let events = store
            .read_stream(
                env.tenant,
                &postvak_platform::store::StreamRef::new(
                    cev::STREAM_CONTACT,
                    format!("contact-{q}"),
                ),
                1,
            )
            .await
            .unwrap();
        assert!(events.len() >= 3, "{backend:?}: {events:?}");
        let mut shredded = 0;
        for e in &events {
            match &e.data {
                EventData::Shredded => shredded += 1,
                EventData::Json(v) => {
                    let text = v.to_string();
                    for canary in ["Quirinus", "Erasmusson", "erasmusnote"] {
                        assert!(
                            !contains(text.as_bytes(), canary),
                            "{backend:?}: {} holds {canary}",
                            e.event_type
                        );
                    }
                    assert!(
                        [cev::CONTACT_CONVERSATION_LINKED, cev::CONTACT_ERASED]
                            .contains(&e.event_type.as_str()),
                        "{backend:?}: {} readable after erasure",
                        e.event_type
                    );
                }
            }
        }
        assert_eq!(shredded, 2, "{backend:?}: created and updated are shredded");
        let erased_event = events
            .iter()
            .find(|e| e.event_type == cev::CONTACT_ERASED)
            .unwrap();
        assert_eq!(
            erased_event.metadata.actor.as_deref(),
            Some(format!("user:{}", admin.id).as_str()),
            "{backend:?}: the audit record names who erased"
        );
        // The same, seen from the relay's side: no contact event in the whole log opens to the
        // person.
        let mut after = LogPosition::START;
        loop {
            let page = store.read_log(after, 500, Some(env.tenant)).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            for s in page.iter().filter(|s| s.stream_type == cev::STREAM_CONTACT) {
                if let EventData::Json(v) = store.open(s).await.unwrap().data {
                    assert!(
                        !contains(v.to_string().as_bytes(), "erasmusson"),
                        "{backend:?}"
                    );
                }
            }
        }

        // The log was not rewritten: the hash chain still verifies.
        let report = store.verify(Some(env.tenant)).await.unwrap();
        assert!(report.is_intact(), "{backend:?}: {report:?}");

        // New mail from the same address is a new contact.
        let d2 = env
            .deliver(
                env.inbox,
                &raw(
                    &format!("{NAME} <{ADDRESS}>"),
                    "",
                    "q2@x",
                    "Back again",
                    "Hi.",
                ),
            )
            .await;
        env.wait_for_conversation(d2.conversation_id, 1).await;
        let fresh = wait_for_contact(&env, ADDRESS, 1).await;
        assert_ne!(fresh, q, "{backend:?}");
        let r = app.get(&format!("/v1/contacts/{fresh}"), &admin).await;
        assert_eq!(r.body["status"], "active");
        assert_eq!(r.body["name"], NAME);
        assert_eq!(r.body["conversation_count"], 1);
        // The erased one stays erased.
        assert_eq!(
            app.get(&format!("/v1/contacts/{q}"), &admin).await.body["status"],
            "erased"
        );
    }
}

#[tokio::test]
async fn contacts_created_by_hand_need_a_tenant_admin_and_free_addresses() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let body = json!({"name": "Hand Made", "addresses": ["Hand@Made.example"], "vip": true});
        let denied = app.post("/v1/contacts", &env.alice, body.clone()).await;
        assert_eq!(denied.status, 403);
        let admin = env.user("admin@acme.test", TenantRole::Admin).await;
        let made = app.post("/v1/contacts", &admin, body.clone()).await;
        assert_eq!(made.status, 201, "{backend:?}: {made:?}");
        assert_eq!(made.body["addresses"], json!(["hand@made.example"]));
        let again = app.post("/v1/contacts", &admin, body).await;
        assert_eq!(again.status, 409, "{backend:?}: {again:?}");
        assert_eq!(again.body["code"], "contact_address_taken");
        // Without a conversation an agent doesn't see it.
        let id = made.body["id"].as_str().unwrap();
        let inbox_agent = env.agent("late@acme.test", InboxRole::Reply).await;
        assert_eq!(
            app.get(&format!("/v1/contacts/{id}"), &inbox_agent)
                .await
                .status,
            404
        );
        // Mail from that address is filed to it.
        let d = env
            .deliver(
                env.inbox,
                &raw("hand@made.example", "", "h1@x", "Hi", "Hi."),
            )
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        assert_eq!(
            wait_for_contact(&env, "hand@made.example", 1)
                .await
                .to_string(),
            id
        );
    }
}

#[tokio::test]
async fn rebuild_restores_contacts_from_the_log_without_making_new_ones() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let a = env
            .deliver(
                env.inbox,
                &raw("Rita <rita@example.org>", "", "r1@x", "A", "A."),
            )
            .await;
        let b = env
            .deliver(
                env.inbox,
                &raw("rita@example.org", "sam@example.org", "r2@x", "B", "B."),
            )
            .await;
        env.wait_for_conversation(a.conversation_id, 1).await;
        env.wait_for_conversation(b.conversation_id, 1).await;
        let rita = wait_for_contact(&env, "rita@example.org", 2).await;
        let sam = wait_for_contact(&env, "sam@example.org", 1).await;
        let vip = app
            .call(
                "PATCH",
                &format!("/v1/contacts/{rita}"),
                &env.alice,
                Some(json!({"vip": true})),
                &[],
            )
            .await;
        assert_eq!(vip.status, 200);

        // The read model is lost …
        let mut tx = env
            .ctx
            .cell()
            .db()
            .tenant_tx(env.tenant, true)
            .await
            .unwrap();
        for sql in [
            "DELETE FROM contacts WHERE tenant_id = $1",
            "DELETE FROM contact_addresses WHERE tenant_id = $1",
            "DELETE FROM contact_conversations WHERE tenant_id = $1",
        ] {
            postvak_platform::on_tx!(&mut tx, |c| sqlx::query(sql)
                .bind(env.tenant.0)
                .execute(c)
                .await
                .map(|_| ()))
            .unwrap();
        }
        tx.commit().await.unwrap();
        assert_eq!(
            app.get(&format!("/v1/contacts/{rita}"), &env.alice)
                .await
                .status,
            404
        );

        // … and rebuilt from the log: the same contacts, nothing new.
        let applied = postvak_conversation::contacts::rebuild(&env.cells, &env.ctx)
            .await
            .unwrap();
        assert!(applied >= 4, "{backend:?}: {applied}");
        let r = app.get(&format!("/v1/contacts/{rita}"), &env.alice).await;
        assert_eq!(r.status, 200, "{backend:?}: {r:?}");
        assert_eq!(r.body["vip"], true);
        assert_eq!(r.body["name"], "Rita");
        assert_eq!(r.body["conversation_count"], 2);
        let admin = env.user("admin@acme.test", TenantRole::Admin).await;
        let mut all = ids(&app.get("/v1/contacts", &admin).await);
        all.sort();
        let mut want = vec![rita, sam];
        want.sort();
        assert_eq!(all, want, "{backend:?}");
        assert_eq!(
            ids(&app
                .get("/v1/contacts?address=SAM@example.org", &env.alice)
                .await),
            vec![sam]
        );
    }
}

#[tokio::test]
async fn reply_files_are_in_the_export_and_gone_after_erasure() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let d = env
            .deliver(
                env.inbox,
                &raw(
                    "Fenna Files <fenna@example.net>",
                    "",
                    "f1@x",
                    "Files",
                    "Send me the contract.",
                ),
            )
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let fenna = wait_for_contact(&env, "fenna@example.net", 1).await;
        let contract = b"%PDF-1.4 the contract".to_vec();
        let reply = app
            .post(
                &format!("/v1/conversations/{}/replies", d.conversation_id),
                &env.alice,
                json!({"body": "Here it is.", "attachments": [
                    {"filename": "contract.pdf", "content_type": "application/pdf",
                     "content_base64": b64.encode(&contract)}
                ]}),
            )
            .await;
        assert_eq!(reply.status, 201, "{backend:?}: {reply:?}");
        let file_id: Uuid = reply.body["attachment_list"][0]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let message_id = reply.body["id"].as_str().unwrap().to_owned();

        // The export holds the file with its content.
        let x = app
            .get(&format!("/v1/contacts/{fenna}/export"), &env.alice)
            .await;
        assert_eq!(x.status, 200, "{backend:?}: {x:?}");
        let files = x.body["reply_files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{backend:?}: {:?}", x.body);
        let f = &files[0];
        assert_eq!(f["file_id"], file_id.to_string());
        assert_eq!(f["message_id"], message_id);
        assert_eq!(f["conversation_id"], d.conversation_id.to_string());
        assert_eq!(f["filename"], "contract.pdf");
        assert_eq!(f["content_type"], "application/pdf");
        assert_eq!(f["size"], contract.len());
        assert_eq!(f["available"], true);
        assert_eq!(
            b64.decode(f["content_base64"].as_str().unwrap()).unwrap(),
            contract
        );

        // Erased: the file can no longer be read, and the export says so.
        let admin = env.user("dpo@acme.test", TenantRole::Admin).await;
        let erased = app
            .call(
                "DELETE",
                &format!("/v1/contacts/{fenna}"),
                &admin,
                None,
                &[],
            )
            .await;
        assert_eq!(erased.status, 200, "{backend:?}: {erased:?}");
        assert_eq!(
            postvak_conversation::files::read(&env.ctx, file_id)
                .await
                .unwrap(),
            None,
            "{backend:?}: the file is still readable"
        );
        let x = app
            .get(&format!("/v1/contacts/{fenna}/export"), &admin)
            .await;
        assert_eq!(x.status, 200, "{backend:?}: {x:?}");
        let f = &x.body["reply_files"][0];
        assert_eq!(f["file_id"], file_id.to_string(), "{:?}", x.body);
        assert_eq!(f["available"], false);
        assert!(f.get("content_base64").is_none(), "{f}");
        assert!(f["reason"].as_str().unwrap().contains("erased"), "{f}");
    }
}
