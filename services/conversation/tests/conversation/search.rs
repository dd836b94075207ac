//! Search without plaintext: a blind index of words, and the canary — a word of a message body
//! is nowhere in the database in plaintext (SQLite file bytes, `pg_dump`), yet search finds it.

use crate::helpers::*;
use postvak_core::access::{InboxRole, TenantRole};
use serde_json::json;
use uuid::Uuid;

fn ids(r: &Resp) -> Vec<Uuid> {
    r.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {r:?}"))
        .iter()
        .map(|c| c["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// The conversations a search finds for `agent`.
async fn found(app: &TestApp, agent: &Agent, q: &str) -> Vec<Uuid> {
    let r = app.get(&format!("/v1/conversations?q={q}"), agent).await;
    assert_eq!(r.status, 200, "{q}: {r:?}");
    ids(&r)
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
                .expect("pg_dump runs");
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
async fn canary_a_body_word_is_not_in_the_database_in_plaintext_yet_search_finds_it() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let d = env
            .deliver(
                env.inbox,
                &mail(
                    "canary@example.org",
                    "Zebrasubject question",
                    "",
                    "Our Quokkacanary printer is broken.",
                ),
            )
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let id = d.conversation_id;
        // A note and a reply are indexed too.
        let note = app
            .post(
                &format!("/v1/conversations/{id}/notes"),
                &env.alice,
                json!({"body": "Wombatnote: call them back"}),
            )
            .await;
        assert_eq!(note.status, 201, "{backend:?}: {note:?}");
        let reply = app
            .post(
                &format!("/v1/conversations/{id}/replies"),
                &env.alice,
                json!({"body": "Try the Platypusreply trick."}),
            )
            .await;
        assert_eq!(reply.status, 201, "{backend:?}: {reply:?}");
        // Another conversation that must not match.
        let other = env
            .deliver(
                env.inbox,
                &mail("other@example.org", "Lunch", "", "Sandwiches today."),
            )
            .await;
        env.wait_for_conversation(other.conversation_id, 1).await;

        let dump = database_bytes(&env, backend).await;
        assert!(
            contains(&dump, "conversation_search"),
            "{backend:?}: the dump holds the schema"
        );
        for word in [
            "Quokkacanary",
            "Zebrasubject",
            "Wombatnote",
            "Platypusreply",
        ] {
            assert!(
                !contains(&dump, word),
                "{backend:?}: {word} found in plaintext"
            );
        }

        for q in [
            "QUOKKACANARY",
            "quokkacanary printer",
            "zebrasubject",
            "wombatnote",
            "platypusreply",
            "quokka*",
        ] {
            let r = app
                .get(
                    &format!(
                        "/v1/conversations?q={}",
                        q.replace(' ', "%20").replace('*', "%2A")
                    ),
                    &env.bob,
                )
                .await;
            assert_eq!(r.status, 200, "{backend:?} {q}: {r:?}");
            assert_eq!(ids(&r), vec![id], "{backend:?} {q}");
        }
        // Every word must match; unknown words find nothing.
        let none = app
            .get("/v1/conversations?q=quokkacanary%20sandwiches", &env.bob)
            .await;
        assert_eq!(ids(&none), Vec::<Uuid>::new(), "{backend:?}");
        let lunch = app.get("/v1/conversations?q=sandwiches", &env.bob).await;
        assert_eq!(ids(&lunch), vec![other.conversation_id], "{backend:?}");
        // Search combines with the other filters.
        let closed = app
            .get("/v1/conversations?q=quokkacanary&status=closed", &env.bob)
            .await;
        assert_eq!(ids(&closed), Vec::<Uuid>::new(), "{backend:?}");
        // A query without words is a 400 problem.
        let bad = app.get("/v1/conversations?q=%3F%21", &env.bob).await;
        assert_eq!(bad.status, 400, "{backend:?}");
        assert_eq!(bad.body["code"], "invalid_search");
    }
}

/// A word deep in a long text body (after 5 KB) and a word of an HTML-only mail (its text
/// rendered from the HTML) are found, neither is in the database in plaintext, and the bound
/// holds: a word after the first 1,000 distinct words of a body is not indexed.
#[tokio::test]
async fn search_finds_words_deep_in_long_and_html_only_bodies_without_plaintext() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let filler = "The quick brown fox jumps over the lazy dog.\n".repeat(120);
        assert!(filler.len() > 5 * 1024);
        let long = env
            .deliver(
                env.inbox,
                &mail(
                    "long@example.org",
                    "Printer",
                    "",
                    &format!("{filler}At the very end: Narwhaldeep toner.\n"),
                ),
            )
            .await;
        let html = format!(
            "<html><body><div>{}</div><p>Please check the <b>Axolotlhtml</b> tray.</p></body></html>",
            "<p>Some padding text here.</p>".repeat(200)
        );
        let html_only = env
            .deliver(
                env.inbox,
                &mail(
                    "html@example.org",
                    "Tray",
                    "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8",
                    &html,
                ),
            )
            .await;
        let many: String = (0..1_100).map(|i| format!("word{i:04} ")).collect();
        let bounded = env
            .deliver(
                env.inbox,
                &mail(
                    "many@example.org",
                    "Many words",
                    "",
                    &format!("{many}\nOcelotbeyond\n"),
                ),
            )
            .await;
        for d in [&long, &html_only, &bounded] {
            env.wait_for_conversation(d.conversation_id, 1).await;
        }

        let search = |q: &'static str| found(&app, &env.bob, q);
        assert_eq!(
            search("narwhaldeep").await,
            vec![long.conversation_id],
            "{backend:?}"
        );
        assert_eq!(
            search("narwhal%2A").await,
            vec![long.conversation_id],
            "{backend:?}"
        );
        assert_eq!(
            search("axolotlhtml%20tray").await,
            vec![html_only.conversation_id],
            "{backend:?}"
        );
        // The 1,000th distinct word is indexed, what comes after the bound is not.
        assert_eq!(
            search("word0997").await,
            vec![bounded.conversation_id],
            "{backend:?}"
        );
        assert_eq!(search("word1050").await, Vec::<Uuid>::new(), "{backend:?}");
        assert_eq!(
            search("ocelotbeyond").await,
            Vec::<Uuid>::new(),
            "{backend:?}"
        );

        let dump = database_bytes(&env, backend).await;
        assert!(contains(&dump, "conversation_search"), "{backend:?}");
        for word in ["Narwhaldeep", "Axolotlhtml", "word0997"] {
            assert!(
                !contains(&dump, word),
                "{backend:?}: {word} found in plaintext"
            );
        }
    }
}

#[tokio::test]
async fn search_answers_only_conversations_the_caller_may_read() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let d = env
            .deliver(
                env.inbox,
                &mail("m1@example.org", "Help", "", "Secret Narwhalword inside."),
            )
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let q = "/v1/conversations?q=narwhalword";
        // A `read` member who took part from the start finds it.
        assert_eq!(
            ids(&app.get(q, &env.reader).await),
            vec![d.conversation_id],
            "{backend:?}"
        );
        // Someone who joined the inbox later is not a participant: nothing.
        let carol = env.agent("carol@acme.test", InboxRole::Reply).await;
        assert_eq!(
            ids(&app.get(q, &carol).await),
            Vec::<Uuid>::new(),
            "{backend:?}"
        );
        // Without any grant: nothing.
        let stranger = env.user("stranger@acme.test", TenantRole::Agent).await;
        assert_eq!(
            ids(&app.get(q, &stranger).await),
            Vec::<Uuid>::new(),
            "{backend:?}"
        );
        // A tenant admin sees everything.
        let admin = env.user("admin@acme.test", TenantRole::Admin).await;
        assert_eq!(
            ids(&app.get(q, &admin).await),
            vec![d.conversation_id],
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn a_merged_conversation_s_words_find_the_target() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let a = env
            .deliver(
                env.inbox,
                &mail("a@example.org", "First", "", "Alpacaword."),
            )
            .await;
        let b = env
            .deliver(
                env.inbox,
                &mail("b@example.org", "Second", "", "Bisonword."),
            )
            .await;
        env.wait_for_conversation(a.conversation_id, 1).await;
        env.wait_for_conversation(b.conversation_id, 1).await;
        let m = app
            .post(
                &format!("/v1/conversations/{}/merge", b.conversation_id),
                &env.alice,
                json!({"into": a.conversation_id}),
            )
            .await;
        assert!(m.status < 300, "{backend:?}: {m:?}");
        let r = app.get("/v1/conversations?q=bisonword", &env.alice).await;
        assert_eq!(ids(&r), vec![a.conversation_id], "{backend:?}");
    }
}

/// The pending entries of the search index (PostgreSQL's `pgstatginindex`), read as the
/// database's owner.
async fn pending_tuples(env: &TestEnv) -> i64 {
    let pool = sqlx::PgPool::connect(&env.url).await.unwrap();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        .execute(&pool)
        .await
        .expect("the pgstattuple extension (PostgreSQL's contrib) is installed");
    let n: i64 = sqlx::query_scalar(
        "SELECT pending_tuples FROM pgstatginindex('conversation_search_docs_terms')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    n
}

/// ADR 0036: a write only appends its search terms to the index's pending list (no write
/// merges it), the merge runs as the application's role, found words are found before and
/// after it, a second merge while one runs returns at once, and the merging task empties the
/// list of later writes by itself.
#[tokio::test]
async fn the_search_index_pending_list_is_merged_off_the_write_path() {
    use postvak_conversation::search_merge::{self, SearchIndexSettings};
    let env = TestEnv::new(Backend::Postgres).await;
    let app = env.spawn_app().await;
    let search = |q: &'static str| found(&app, &env.bob, q);
    let body: String = (0..400).map(|i| format!("filler{i:03} ")).collect();
    let first = env
        .deliver(
            env.inbox,
            &mail(
                "pending-1@example.org",
                "Pending",
                "",
                &format!("{body}\nQuokkapending\n"),
            ),
        )
        .await;
    env.wait_for_conversation(first.conversation_id, 1).await;
    let before = pending_tuples(&env).await;
    assert!(before > 0, "the write left its terms in the pending list");
    assert_eq!(search("quokkapending").await, vec![first.conversation_id]);

    let db = env.ctx.cell().db();
    let merged = search_merge::merge_pending(db).await.unwrap();
    assert!(merged > 0, "pages merged: {merged}");
    assert_eq!(pending_tuples(&env).await, 0);
    assert_eq!(search("quokkapending").await, vec![first.conversation_id]);
    assert_eq!(search("filler123").await, vec![first.conversation_id]);

    // While another process merges (it holds the merge's lock), a merge returns at once.
    let owner = sqlx::PgPool::connect(&env.url).await.unwrap();
    let mut held = owner.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(7136042508273512449)")
        .execute(&mut *held)
        .await
        .unwrap();
    let second = env
        .deliver(
            env.inbox,
            &mail("pending-2@example.org", "Pending two", "", "Wombatpending"),
        )
        .await;
    env.wait_for_conversation(second.conversation_id, 1).await;
    let skipped = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        search_merge::merge_pending(db),
    )
    .await
    .expect("a merge does not queue behind another")
    .unwrap();
    assert_eq!(skipped, 0);
    assert!(pending_tuples(&env).await > 0);
    held.rollback().await.unwrap();
    owner.close().await;

    // The task merges what later writes appended.
    let tasks = search_merge::start(
        &env.cells,
        &SearchIndexSettings { merge_every_ms: 50 },
        env.cancel.clone(),
    );
    assert_eq!(tasks.len(), 1, "one task for the one PostgreSQL cell");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while pending_tuples(&env).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the merging task left the pending list full"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(search("wombatpending").await, vec![second.conversation_id]);

    // None when turned off, and none on SQLite (FTS5 has no pending list).
    assert!(
        search_merge::start(
            &env.cells,
            &SearchIndexSettings { merge_every_ms: 0 },
            env.cancel.clone()
        )
        .is_empty()
    );
    let sqlite = TestEnv::new(Backend::Sqlite).await;
    assert!(
        search_merge::start(
            &sqlite.cells,
            &SearchIndexSettings { merge_every_ms: 50 },
            sqlite.cancel.clone()
        )
        .is_empty()
    );
    assert_eq!(
        search_merge::merge_pending(sqlite.ctx.cell().db())
            .await
            .unwrap(),
        0
    );
}

/// ADR 0040: on PostgreSQL a prefix is expanded through the tenant's vocabulary (a document
/// holds its words only), the expansion is as precise as the prefix, and a document indexed
/// before the vocabulary existed (its prefixes in the document, none in the vocabulary) is
/// still found by prefix, next to documents indexed after it.
#[tokio::test]
async fn a_prefix_is_found_through_the_vocabulary_and_in_documents_indexed_before_it() {
    let env = TestEnv::new(Backend::Postgres).await;
    let app = env.spawn_app().await;
    let search = |q: &'static str| found(&app, &env.bob, q);
    let sorted = |mut v: Vec<Uuid>| {
        v.sort();
        v
    };
    let mut ids = Vec::new();
    for (n, word) in ["Kangaroobanana", "Kangarooplum"].into_iter().enumerate() {
        let d = env
            .deliver(
                env.inbox,
                &mail(
                    &format!("vocab-{n}@example.org"),
                    "Fruit",
                    "",
                    &format!("Please send the {word} today."),
                ),
            )
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        ids.push(d.conversation_id);
    }
    let (banana, plum) = (ids[0], ids[1]);
    assert_eq!(
        sorted(search("kangaroo%2A").await),
        sorted(vec![banana, plum])
    );
    assert_eq!(search("kangaroob%2A").await, vec![banana]);
    assert_eq!(search("kangarooplum%2A").await, vec![plum]);
    assert_eq!(search("kangarooz%2A").await, Vec::<Uuid>::new());

    let pool = sqlx::PgPool::connect(&env.url).await.unwrap();
    let words: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM conversation_search_docs d, unnest(d.terms) AS t(term) \
         WHERE EXISTS (SELECT 1 FROM conversation_search_prefixes v WHERE v.prefix = t.term)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(words, 0, "a document holds no prefix terms");
    // What a document indexed before migration 0026 looks like: its words' prefixes in the
    // document itself, and a vocabulary that never heard of them.
    sqlx::query(
        "UPDATE conversation_search_docs d SET terms = d.terms || ARRAY(SELECT v.prefix \
         FROM conversation_search_prefixes v WHERE v.tenant_id = d.tenant_id AND v.word = ANY(d.terms))",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM conversation_search_prefixes")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(
        sorted(search("kangaroo%2A").await),
        sorted(vec![banana, plum])
    );
    assert_eq!(search("kangaroob%2A").await, vec![banana]);

    let cherry = env
        .deliver(
            env.inbox,
            &mail(
                "vocab-2@example.org",
                "Fruit",
                "",
                "And one Kangaroocherry.",
            ),
        )
        .await;
    env.wait_for_conversation(cherry.conversation_id, 1).await;
    assert_eq!(
        sorted(search("kangaroo%2A").await),
        sorted(vec![banana, plum, cherry.conversation_id])
    );
    assert_eq!(search("kangarooc%2A").await, vec![cherry.conversation_id]);
}

/// ADR 0040: two transactions that learn the same new words in opposite orders (a seeder's or
/// a batch's several documents) both commit. With a unique key, each insert waited for the
/// other transaction, and PostgreSQL killed one of them as a deadlock.
#[tokio::test]
async fn two_writers_of_the_same_new_words_in_opposite_orders_both_commit() {
    let env = TestEnv::new(Backend::Postgres).await;
    let pool = sqlx::PgPool::connect(&env.url).await.unwrap();
    let tenant = Uuid::new_v4();
    let insert =
        "INSERT INTO conversation_search_prefixes (tenant_id, prefix, word) VALUES ($1, $2, $3)";
    let mut a = pool.begin().await.unwrap();
    let mut b = pool.begin().await.unwrap();
    for (tx, word) in [(&mut a, 10_i64), (&mut b, 20)] {
        sqlx::query(insert)
            .bind(tenant)
            .bind(word / 10)
            .bind(word)
            .execute(&mut **tx)
            .await
            .unwrap();
    }
    // Each now writes the other's word.
    let (ra, rb) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(
            sqlx::query(insert)
                .bind(tenant)
                .bind(2_i64)
                .bind(20_i64)
                .execute(&mut *a),
            sqlx::query(insert)
                .bind(tenant)
                .bind(1_i64)
                .bind(10_i64)
                .execute(&mut *b),
        )
    })
    .await
    .expect("neither insert waits for the other transaction");
    ra.expect("the first writer's insert");
    rb.expect("the second writer's insert");
    a.commit().await.unwrap();
    b.commit().await.unwrap();
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM conversation_search_prefixes WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, 4, "both words, once from each writer");
    pool.close().await;
}
