//! A delivery commits once: the event, its blobs and the message's index rows together, or
//! nothing. A failure injected (as the database owner, with a trigger) at the event or at the
//! last write leaves nothing a user or a consumer could see; the retry stores the mail once.

use crate::helpers::*;
use postvak_ingest::{Ingestor, pipeline};
use postvak_platform::store::LogPosition;
use sqlx::Connection;

/// Runs owner SQL (DDL the application role may not run) against the test's database.
async fn owner_sql(env: &TestEnv, backend: Backend, sql: &'static str) {
    match backend {
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&env.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&env.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
    }
}

/// Rows in one of ingest's tables, counted as the owner (no row-level security in the way).
async fn rows(env: &TestEnv, backend: Backend, table: &'static str) -> i64 {
    let sql = match table {
        "ingest_blobs" => "SELECT count(*) FROM ingest_blobs",
        "ingest_messages" => "SELECT count(*) FROM ingest_messages",
        "ingest_thread_index" => "SELECT count(*) FROM ingest_thread_index",
        "events" => "SELECT count(*) FROM events WHERE stream_type = 'inbound_message'",
        other => panic!("unknown table {other}"),
    };
    match backend {
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&env.url).await.unwrap();
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap();
            c.close().await.unwrap();
            n
        }
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&env.url).await.unwrap();
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap();
            c.close().await.unwrap();
            n
        }
    }
}

fn fail_on(backend: Backend, table: &str) -> &'static str {
    match (backend, table) {
        (Backend::Postgres, "events") => {
            "CREATE FUNCTION pv_test_fail() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$; \
             CREATE TRIGGER pv_test_fail BEFORE INSERT ON events \
             FOR EACH ROW EXECUTE FUNCTION pv_test_fail();"
        }
        (Backend::Postgres, "ingest_messages") => {
            "CREATE FUNCTION pv_test_fail() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$; \
             CREATE TRIGGER pv_test_fail BEFORE INSERT ON ingest_messages \
             FOR EACH ROW EXECUTE FUNCTION pv_test_fail();"
        }
        (Backend::Sqlite, "events") => {
            "CREATE TRIGGER pv_test_fail BEFORE INSERT ON events \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        }
        (Backend::Sqlite, "ingest_messages") => {
            "CREATE TRIGGER pv_test_fail BEFORE INSERT ON ingest_messages \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        }
        _ => panic!("no failure for {table}"),
    }
}

fn heal(backend: Backend, table: &str) -> &'static str {
    match (backend, table) {
        (Backend::Postgres, "events") => {
            "DROP TRIGGER pv_test_fail ON events; DROP FUNCTION pv_test_fail();"
        }
        (Backend::Postgres, "ingest_messages") => {
            "DROP TRIGGER pv_test_fail ON ingest_messages; DROP FUNCTION pv_test_fail();"
        }
        (Backend::Sqlite, _) => "DROP TRIGGER pv_test_fail;",
        _ => panic!("no failure for {table}"),
    }
}

async fn try_deliver(env: &TestEnv, raw: &[u8]) -> Result<pipeline::Delivery, String> {
    let raw = std::sync::Arc::new(raw.to_vec());
    let parsed = Ingestor::parse(raw.clone()).await.unwrap();
    env.ingestor
        .deliver_to_inbox(
            &env.ctx,
            env.inbox,
            &raw,
            &parsed,
            None,
            Default::default(),
            pipeline::Source::Api,
        )
        .await
        .map_err(|e| e.to_string())
}

async fn failed_delivery_leaves_nothing_and_retry_stores_once(backend: Backend) {
    let env = TestEnv::new(backend).await;
    // With an attachment: three blobs (raw, text, attachment) ride in the transaction.
    let raw = mail(
        "atomic@example.org",
        "all or nothing",
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"",
        "--B\nContent-Type: text/plain\n\nbody text\n--B\nContent-Type: application/pdf\n\
         Content-Disposition: attachment; filename=\"a.pdf\"\nContent-Transfer-Encoding: base64\n\n\
         JVBERi0xLjQKJcfsj6IK\n--B--\n",
    );
    for table in ["events", "ingest_messages"] {
        owner_sql(&env, backend, fail_on(backend, table)).await;
        let err = try_deliver(&env, &raw).await.unwrap_err();
        assert!(
            err.contains("injected failure"),
            "failing at {table}: {err}"
        );
        owner_sql(&env, backend, heal(backend, table)).await;
        // Nothing visible: no message listed, no event in the log, no blob, no index row.
        assert!(env.messages().await.is_empty(), "failing at {table}");
        let log = env
            .ctx
            .cell()
            .store
            .read_log(LogPosition::START, 1000, Some(env.ctx.tenant()))
            .await
            .unwrap();
        assert!(
            log.iter().all(|e| e.stream_type != "inbound_message"),
            "failing at {table}: an event of the failed delivery is in the log"
        );
        for t in [
            "events",
            "ingest_blobs",
            "ingest_messages",
            "ingest_thread_index",
        ] {
            assert_eq!(
                rows(&env, backend, t).await,
                0,
                "{t} after failing at {table}"
            );
        }
    }

    // The sender retries: stored once, and a further retry is a duplicate of it.
    let first = try_deliver(&env, &raw).await.unwrap();
    assert!(!first.duplicate);
    let again = try_deliver(&env, &raw).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    assert_eq!(msgs[0].message_id, first.message_id);
    assert_eq!(env.blob(msgs[0].raw.blob_id).await, raw);
    assert_eq!(msgs[0].attachments.len(), 1);
    assert_eq!(
        env.blob(msgs[0].attachments[0].blob.blob_id).await,
        b"%PDF-1.4\n%\xc7\xec\x8f\xa2\n"
    );
    assert_eq!(rows(&env, backend, "events").await, 1);
    assert_eq!(rows(&env, backend, "ingest_messages").await, 1);
    assert_eq!(rows(&env, backend, "ingest_blobs").await, 3);
    assert!(rows(&env, backend, "ingest_thread_index").await >= 1);
}

#[tokio::test]
async fn failed_delivery_leaves_nothing_and_retry_stores_once_sqlite() {
    failed_delivery_leaves_nothing_and_retry_stores_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn failed_delivery_leaves_nothing_and_retry_stores_once_postgres() {
    failed_delivery_leaves_nothing_and_retry_stores_once(Backend::Postgres).await;
}

/// Many sessions deliver the same mail at once: one stores it, every other answers with its ids.
async fn concurrent_same_mail_is_stored_once(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let raw = mail("race@example.org", "race", "", "who wins");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (ingestor, ctx, inbox, raw) = (
            env.ingestor.clone(),
            env.ctx.clone(),
            env.inbox,
            std::sync::Arc::new(raw.clone()),
        );
        tasks.push(tokio::spawn(async move {
            let parsed = Ingestor::parse(raw.clone()).await.unwrap();
            ingestor
                .deliver_to_inbox(
                    &ctx,
                    inbox,
                    &raw,
                    &parsed,
                    None,
                    Default::default(),
                    pipeline::Source::Smtp,
                )
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    assert_eq!(ids.iter().filter(|d| !d.duplicate).count(), 1, "{ids:#?}");
    assert!(ids.iter().all(|d| d.message_id == ids[0].message_id));
    assert_eq!(env.messages().await.len(), 1);
    assert_eq!(rows(&env, backend, "events").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_same_mail_is_stored_once_sqlite() {
    concurrent_same_mail_is_stored_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_same_mail_is_stored_once_postgres() {
    concurrent_same_mail_is_stored_once(Backend::Postgres).await;
}

/// 24 sessions deliver at once (on SQLite the commit stage then carries several mails per
/// transaction, and a reply and its parent arriving together share a conversation: the lookup
/// sees the batch's earlier rows); one mail whose write fails fails alone — the rest are
/// stored, once.
async fn group_commit_threads_within_a_batch_and_isolates_a_failure(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let poison = mail(
        "poison@example.org",
        "poison",
        "",
        "this one cannot be stored",
    );
    let trigger = match backend {
        Backend::Postgres => format!(
            "CREATE FUNCTION pv_test_fail() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$; \
             CREATE TRIGGER pv_test_fail BEFORE INSERT ON ingest_blobs FOR EACH ROW \
             WHEN (NEW.size = {}) EXECUTE FUNCTION pv_test_fail();",
            poison.len()
        ),
        Backend::Sqlite => format!(
            "CREATE TRIGGER pv_test_fail BEFORE INSERT ON ingest_blobs WHEN NEW.size = {} \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            poison.len()
        ),
    };
    match backend {
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&env.url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(trigger))
                .execute(&mut c)
                .await
                .unwrap();
        }
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&env.url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(trigger))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
    let mut mails = vec![poison.clone()];
    for i in 0..11 {
        mails.push(mail(
            &format!("root-{i}@example.org"),
            "root",
            "",
            &format!("root {i}"),
        ));
        mails.push(mail(
            &format!("reply-{i}@example.org"),
            "Re: root",
            &format!("In-Reply-To: <root-{i}@example.org>"),
            &format!("reply {i}"),
        ));
    }
    mails.push(mail("last@example.org", "last", "", "last"));
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(mails.len()));
    let tasks: Vec<_> = mails
        .iter()
        .map(|raw| {
            let (ingestor, ctx, inbox, raw, barrier) = (
                env.ingestor.clone(),
                env.ctx.clone(),
                env.inbox,
                std::sync::Arc::new(raw.clone()),
                barrier.clone(),
            );
            tokio::spawn(async move {
                let parsed = Ingestor::parse(raw.clone()).await.unwrap();
                barrier.wait().await;
                ingestor
                    .deliver_to_inbox(
                        &ctx,
                        inbox,
                        &raw,
                        &parsed,
                        None,
                        Default::default(),
                        pipeline::Source::Smtp,
                    )
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let err = results[0].as_ref().unwrap_err();
    assert!(err.contains("injected failure"), "{err}");
    assert!(
        results[1..]
            .iter()
            .all(|r| r.as_ref().is_ok_and(|d| !d.duplicate)),
        "{results:#?}"
    );
    let msgs = env.messages().await;
    assert_eq!(msgs.len(), mails.len() - 1);
    assert_eq!(rows(&env, backend, "events").await, mails.len() as i64 - 1);
    // Both backends commit through the group-commit stage, which threads the mails of a batch
    // in arrival order (and across batches, PostgreSQL's thread locks: ADR 0021).
    for i in 0..11 {
        let conv = |id: String| {
            msgs.iter()
                .find(|m| m.message_id_header.as_deref() == Some(id.as_str()))
                .unwrap_or_else(|| panic!("{id} stored"))
                .conversation_id
        };
        assert_eq!(
            conv(format!("root-{i}@example.org")),
            conv(format!("reply-{i}@example.org")),
            "a reply and its root arriving together share a conversation"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_threads_within_a_batch_and_isolates_a_failure_sqlite() {
    group_commit_threads_within_a_batch_and_isolates_a_failure(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_threads_within_a_batch_and_isolates_a_failure_postgres() {
    group_commit_threads_within_a_batch_and_isolates_a_failure(Backend::Postgres).await;
}
