//! Migrations over data the schema before them held.

use postvak_platform::db::{migrate, migrate_up_to};
use postvak_platform::testkit::{fresh_postgres_database, fresh_sqlite_database};
use sqlx::Connection;
use uuid::Uuid;

/// A 16-byte term of the old `conversation_search` and the bigint term the search code
/// computes for the same word: the first 8 bytes, big-endian.
fn legacy_term(n: u8) -> (Vec<u8>, i64) {
    let bytes: Vec<u8> = (0..16)
        .map(|i| n.wrapping_mul(37).wrapping_add(i * 11) ^ 0x80)
        .collect();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    (bytes, i64::from_be_bytes(first))
}

const TENANT: Uuid = Uuid::from_u128(0x7e);
const A: Uuid = Uuid::from_u128(0xa);
const B: Uuid = Uuid::from_u128(0xb);

/// Old rows: A has terms 1 and 2, B has 2 and 3 (a word both share).
const LEGACY: [(Uuid, u8); 4] = [(A, 1), (A, 2), (B, 2), (B, 3)];
const INSERT_LEGACY: &str =
    "INSERT INTO conversation_search (tenant_id, term, conversation_id) VALUES ($1, $2, $3)";

/// What each term finds after the migration.
fn expected() -> [(u8, Vec<Uuid>); 4] {
    [(1, vec![A]), (2, vec![A, B]), (3, vec![B]), (4, vec![])]
}

#[tokio::test]
async fn the_per_term_search_index_becomes_one_document_per_conversation_on_postgres() {
    let url = fresh_postgres_database().await;
    migrate_up_to(&url, 22).await.expect("migrations up to 22");
    let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
    for (conv, n) in LEGACY {
        sqlx::query(INSERT_LEGACY)
            .bind(TENANT)
            .bind(legacy_term(n).0)
            .bind(conv)
            .execute(&mut c)
            .await
            .expect("legacy row");
    }
    migrate(&url).await.expect("migration 23 over legacy rows");
    for (n, want) in expected() {
        let got: Vec<Uuid> = sqlx::query_scalar(
            "SELECT conversation_id FROM conversation_search_docs \
             WHERE tenant_id = $1 AND terms @> ARRAY[$2::bigint] ORDER BY conversation_id",
        )
        .bind(TENANT)
        .bind(legacy_term(n).1)
        .fetch_all(&mut c)
        .await
        .expect("search");
        assert_eq!(got, want, "term {n}");
    }
    let old: Option<String> = sqlx::query_scalar("SELECT to_regclass('conversation_search')::text")
        .fetch_one(&mut c)
        .await
        .expect("regclass");
    assert_eq!(old, None, "the per-term table is gone");
}

#[tokio::test]
async fn the_per_term_search_index_becomes_one_document_per_conversation_on_sqlite() {
    let (_dir, url) = fresh_sqlite_database();
    migrate_up_to(&url, 22).await.expect("migrations up to 22");
    let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open");
    for (conv, n) in LEGACY {
        sqlx::query(INSERT_LEGACY)
            .bind(TENANT)
            .bind(legacy_term(n).0)
            .bind(conv)
            .execute(&mut c)
            .await
            .expect("legacy row");
    }
    drop(c);
    migrate(&url).await.expect("migration 23 over legacy rows");
    let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open");
    for (n, want) in expected() {
        let got: Vec<Uuid> = sqlx::query_scalar(
            "SELECT conversation_id FROM conversation_search_docs WHERE tenant_id = $1 AND doc_rowid IN \
             (SELECT rowid FROM conversation_search_fts WHERE conversation_search_fts MATCH $2) \
             ORDER BY conversation_id",
        )
        .bind(TENANT)
        .bind(format!("{:016x}", legacy_term(n).1 as u64))
        .fetch_all(&mut c)
        .await
        .expect("search");
        assert_eq!(got, want, "term {n}");
    }
}
