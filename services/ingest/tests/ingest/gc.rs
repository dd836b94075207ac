//! Blob garbage collection: blobs no stored message references are removed by the periodic
//! sweeper once older than the grace period; every blob a message names stays readable.

use crate::helpers::*;
use postvak_ingest::Ingestor;
use postvak_ingest::gc::{BlobGcSettings, BlobSweeper};
use sqlx::Connection;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Runs owner SQL (what the application role may not do) against the test's database.
async fn owner(env: &TestEnv, backend: Backend, sql: String) {
    match backend {
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&env.url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        }
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&env.url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        }
    }
}

fn uuid_lit(backend: Backend, id: Uuid) -> String {
    match backend {
        Backend::Postgres => format!("'{id}'::uuid"),
        Backend::Sqlite => format!("X'{}'", id.simple()),
    }
}

/// Makes every blob (or one) look stored two days ago.
fn age_sql(backend: Backend, blob: Option<Uuid>) -> String {
    let filter = blob.map_or(String::new(), |b| {
        format!(" WHERE blob_id = {}", uuid_lit(backend, b))
    });
    match backend {
        Backend::Postgres => {
            format!("UPDATE ingest_blobs SET created_at = now() - interval '2 days'{filter}")
        }
        Backend::Sqlite => {
            format!("UPDATE ingest_blobs SET created_at = unixepoch() - 2 * 86400{filter}")
        }
    }
}

/// An orphan blob (no message names it), as a failed write of an older version left them.
fn orphan_sql(env: &TestEnv, backend: Backend, blob: Uuid, key: Uuid, old: bool) -> String {
    let tenant = uuid_lit(backend, env.ctx.tenant().0);
    let (b, k) = (uuid_lit(backend, blob), uuid_lit(backend, key));
    match backend {
        Backend::Postgres => format!(
            "INSERT INTO ingest_blobs (tenant_id, blob_id, key_id, size, sealed, created_at) \
             VALUES ({tenant}, {b}, {k}, 3, '\\x010203', now() - interval '{}')",
            if old { "2 days" } else { "1 minute" }
        ),
        Backend::Sqlite => format!(
            "INSERT INTO ingest_blobs (tenant_id, blob_id, key_id, size, sealed, created_at) \
             VALUES ({tenant}, {b}, {k}, 3, X'010203', unixepoch() - {})",
            if old { 2 * 86400 } else { 60 }
        ),
    }
}

async fn blob_exists(env: &TestEnv, id: Uuid) -> bool {
    let n: i64 = if env.url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(&env.url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM ingest_blobs WHERE blob_id = $1")
            .bind(id)
            .fetch_one(&mut c)
            .await
            .unwrap()
    } else {
        let mut c = sqlx::SqliteConnection::connect(&env.url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM ingest_blobs WHERE blob_id = ?1")
            .bind(id)
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    n == 1
}

fn with_attachment(message_id: &str, text: &str, attachment: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\nTo: support@acme.test\r\nSubject: Contract\r\n\
         Message-ID: <{message_id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n\
         --B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n\
         --B\r\nContent-Type: application/pdf; name=\"contract.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"contract.pdf\"\r\n\
         Content-Transfer-Encoding: 7bit\r\n\r\n{attachment}\r\n--B--\r\n"
    )
    .into_bytes()
}

/// Every blob a stored message names opens (what a user downloading it would get).
async fn every_message_blob_opens(env: &TestEnv, except: Option<Uuid>) {
    for m in env.messages().await {
        if Some(m.message_id) == except {
            continue;
        }
        let ids = std::iter::once(m.raw.blob_id)
            .chain(m.text_body.iter().map(|b| b.blob_id))
            .chain(m.html_body.iter().map(|b| b.blob_id))
            .chain(m.attachments.iter().map(|a| a.blob.blob_id));
        for id in ids {
            assert!(
                env.ingestor
                    .read_blob(&env.ctx, id)
                    .await
                    .unwrap()
                    .is_some(),
                "blob {id} of a stored message was removed"
            );
        }
    }
}

async fn unreferenced_blobs_are_swept_after_the_grace_period(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let a = env
        .deliver(
            env.inbox,
            &with_attachment("a@example.org", "first", "%PDF shared"),
        )
        .await;
    env.deliver(
        env.inbox,
        &with_attachment("b@example.org", "second", "%PDF shared"),
    )
    .await;
    let msgs = env.messages().await;
    let shared = msgs[0].attachments[0].blob.blob_id;
    assert_eq!(
        msgs[1].attachments[0].blob.blob_id, shared,
        "one blob, stored once"
    );
    let a_msg = msgs
        .iter()
        .find(|m| m.message_id == a.message_id)
        .unwrap()
        .clone();

    // Messages stored before references were recorded: their references come from the log.
    owner(&env, backend, "DELETE FROM ingest_blob_refs".into()).await;
    // Everything old, so only references protect the messages' blobs.
    owner(&env, backend, age_sql(backend, None)).await;
    let (old_orphan, young_orphan) = (Uuid::new_v4(), Uuid::new_v4());
    owner(
        &env,
        backend,
        orphan_sql(&env, backend, old_orphan, a_msg.raw.blob_id, true),
    )
    .await;
    owner(
        &env,
        backend,
        orphan_sql(&env, backend, young_orphan, a_msg.raw.blob_id, false),
    )
    .await;

    let report = env
        .ingestor
        .sweep_blobs(&env.ctx, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        report.backfilled, 2,
        "both messages' references recovered from the log"
    );
    assert_eq!(report.removed, 1, "{report:?}");
    assert!(
        !blob_exists(&env, old_orphan).await,
        "the old orphan is gone"
    );
    assert!(
        blob_exists(&env, young_orphan).await,
        "an orphan within the grace period stays"
    );
    every_message_blob_opens(&env, None).await;

    // A message whose references were removed (erasure, retention): its own blobs go, the
    // attachment another message also names stays. The periodic sweeper does it.
    let refs_of_a = match backend {
        Backend::Postgres => format!(
            "DELETE FROM ingest_blob_refs WHERE message_id = '{}'::uuid",
            a.message_id
        ),
        Backend::Sqlite => format!(
            "DELETE FROM ingest_blob_refs WHERE message_id = X'{}'",
            a.message_id.simple()
        ),
    };
    owner(&env, backend, refs_of_a).await;
    let sweeper = BlobSweeper::new(
        Ingestor::new(env.cells.clone()),
        BlobGcSettings {
            enabled: true,
            interval_secs: 1,
            grace_secs: 3600,
        },
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let handles = sweeper.start(&env.cells, cancel.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while blob_exists(&env, a_msg.raw.blob_id).await {
        assert!(
            Instant::now() < deadline,
            "the sweeper never removed the raw mail of a"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    for h in handles {
        h.await.unwrap();
    }
    assert!(!blob_exists(&env, a_msg.text_body.as_ref().unwrap().blob_id).await);
    assert!(
        blob_exists(&env, shared).await,
        "the shared attachment is still named by b"
    );
    assert!(blob_exists(&env, young_orphan).await);
    let b = msgs.iter().find(|m| m.message_id != a.message_id).unwrap();
    assert_eq!(
        env.ingestor
            .read_blob(&env.ctx, shared)
            .await
            .unwrap()
            .unwrap(),
        b"%PDF shared"
    );
    assert!(
        env.ingestor
            .read_blob(&env.ctx, b.raw.blob_id)
            .await
            .unwrap()
            .is_some()
    );

    // A new delivery of a blob that was swept stores it again (nothing half-present).
    let again = env
        .deliver(
            env.inbox,
            &with_attachment("c@example.org", "first", "%PDF shared"),
        )
        .await;
    assert!(!again.duplicate);
    every_message_blob_opens(&env, Some(a.message_id)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreferenced_blobs_are_swept_after_the_grace_period_sqlite() {
    unreferenced_blobs_are_swept_after_the_grace_period(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreferenced_blobs_are_swept_after_the_grace_period_postgres() {
    unreferenced_blobs_are_swept_after_the_grace_period(Backend::Postgres).await;
}
