//! Tenant read connections (ADR 0035) on a real PostgreSQL: row-level security sees the tenant
//! each read was taken for, a connection dropped before it finished is never reused, and the
//! connections are bounded by the pool's size.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use postvak_platform::db::{self, DbOptions};
use postvak_platform::reads::{PgReads, ReadConn, ReadTx};
use postvak_platform::store::{self, EventStore, StoreError, TenantId};
use postvak_platform::{on_tx, testkit};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A fresh database with a table under the same row-level security as every tenant table
/// (rows of two tenants in it, written by the owner), and a store acting as `postvak_app`.
async fn rig(max_connections: u32) -> (Arc<dyn EventStore>, TenantId, TenantId) {
    let url = testkit::fresh_postgres_database().await;
    db::migrate(&url).await.unwrap();
    let (a, b) = (TenantId(Uuid::now_v7()), TenantId(Uuid::now_v7()));
    let owner = db::connect(
        &url,
        &DbOptions {
            app_role: None,
            ..DbOptions::default()
        },
    )
    .await
    .unwrap();
    let db::Db::Postgres(pool) = &owner else {
        panic!("PostgreSQL expected")
    };
    sqlx::raw_sql(
        "CREATE TABLE read_probe (tenant_id uuid NOT NULL, n int NOT NULL);
         GRANT SELECT ON read_probe TO postvak_app;
         ALTER TABLE read_probe ENABLE ROW LEVEL SECURITY;
         CREATE POLICY tenant_isolation ON read_probe TO postvak_app
           USING (tenant_id = NULLIF(current_setting('postvak.tenant_id', true), '')::uuid);",
    )
    .execute(pool)
    .await
    .unwrap();
    for (t, n) in [(a, 3), (b, 2)] {
        sqlx::query("INSERT INTO read_probe SELECT $1, generate_series(1, $2)")
            .bind(t.0)
            .bind(n)
            .execute(pool)
            .await
            .unwrap();
    }
    owner.close().await;
    let store = store::open_store(
        &url,
        &DbOptions {
            max_connections,
            connect_timeout: Duration::from_millis(300),
            ..DbOptions::default()
        },
        testkit::master_key(),
    )
    .await
    .unwrap();
    (store, a, b)
}

fn reads(store: &Arc<dyn EventStore>) -> PgReads {
    store
        .reads()
        .expect("a PostgreSQL store has read connections")
        .clone()
}

/// Rows of `read_probe` the connection sees (no tenant condition of its own: only row-level
/// security filters), and the server process behind it.
async fn probe(read: &mut ReadConn) -> (i64, i32) {
    on_tx!(read, |c| sqlx::query_as(
        "SELECT (SELECT count(*) FROM read_probe), pg_backend_pid()"
    )
    .fetch_one(c)
    .await)
    .unwrap()
}

#[tokio::test]
async fn a_read_connection_sees_only_the_tenant_it_was_taken_for_across_reuse() {
    let (store, a, b) = rig(4).await;
    let reads = reads(&store);

    let mut r = reads.acquire(a).await.unwrap();
    let (rows_a, pid) = probe(&mut r).await;
    assert_eq!(rows_a, 3, "tenant A's rows only");
    r.finish();
    assert_eq!(reads.idle_count(), 1);

    // The idle connection serves tenant B: set to B, it sees B's rows only.
    let mut r = reads.acquire(b).await.unwrap();
    let (rows_b, pid_b) = probe(&mut r).await;
    assert_eq!(pid_b, pid, "the idle connection was reused");
    assert_eq!(
        rows_b, 2,
        "tenant B's rows only, on a connection last set to A"
    );
    r.finish();

    // And back to A.
    let mut r = reads.acquire(a).await.unwrap();
    assert_eq!(probe(&mut r).await, (3, pid));
    r.finish();

    // The session acts as the pool's role (row-level security applies) with generic plans.
    let mut tx = ReadTx::Conn(reads.acquire(a).await.unwrap());
    let (role, plans): (String, String) = on_tx!(&mut tx, |c| sqlx::query_as(
        "SELECT current_user::text, current_setting('plan_cache_mode')"
    )
    .fetch_one(c)
    .await)
    .unwrap();
    tx.end_read();
    assert_eq!(role, db::APP_ROLE);
    assert_eq!(plans, "force_generic_plan");
}

#[tokio::test]
async fn a_read_connection_dropped_before_it_finished_is_closed_not_reused() {
    let (store, a, _) = rig(4).await;
    let reads = reads(&store);
    let mut r = reads.acquire(a).await.unwrap();
    let (_, pid) = probe(&mut r).await;
    // An error or a cancelled request drops it without `finish`.
    drop(r);
    assert_eq!(reads.idle_count(), 0, "not offered to the next read");
    assert_eq!(reads.in_use(), 0, "its slot is free again");
    let mut r = reads.acquire(a).await.unwrap();
    let (rows, pid2) = probe(&mut r).await;
    assert_eq!(rows, 3);
    assert_ne!(pid2, pid, "a new session");
    r.finish();
    // The dropped session ends on the server (closed, not leaked).
    let mut gone = false;
    for _ in 0..100 {
        let mut r = reads.acquire(a).await.unwrap();
        let alive: bool = on_tx!(&mut r, |c| sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)"
        )
        .bind(pid)
        .fetch_one(c)
        .await)
        .unwrap();
        r.finish();
        if !alive {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the dropped read connection's session is still open");
}

#[tokio::test]
async fn read_connections_are_bounded_by_the_pool_size() {
    let (store, a, b) = rig(2).await;
    let reads = reads(&store);
    let first = reads.acquire(a).await.unwrap();
    let second = reads.acquire(b).await.unwrap();
    assert_eq!(reads.in_use(), 2);
    match reads.acquire(a).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("timed out"), "{msg}"),
        other => panic!("a third read connection past the bound: {other:?}"),
    }
    // One back: the waiting read gets it (set to its tenant).
    let waiting = tokio::spawn({
        let reads = reads.clone();
        async move {
            let mut r = reads.acquire(b).await.unwrap();
            let seen = probe(&mut r).await.0;
            r.finish();
            seen
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.finish();
    assert_eq!(waiting.await.unwrap(), 2);
    second.finish();
    assert_eq!(reads.idle_count(), 2);
}
