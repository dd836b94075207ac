//! Commands over both buses: request/reply, idempotency keys, no responders, timeouts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use crate::bus::{logs, nats_bus, pg_store, sqlite_store};
use async_trait::async_trait;
use postvak_platform::bus::inproc::InProcessBus;
use postvak_platform::bus::{Bus, BusError};
use postvak_platform::command::{
    CommandError, CommandHandler, SendCommandError, command_envelope, send_command, serve_command,
};
use postvak_platform::db::{Db, DbTx};
use postvak_platform::store::TenantId;
use postvak_proto::Problem;
use postvak_proto::command::{CommandEnvelope, CommandReply};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Counts its runs; refuses `{"n": -1}` (a business refusal, which is stored like a success);
/// fails without deciding on `{"n": -2}` (nothing stored).
#[derive(Default)]
struct Doubler {
    runs: AtomicUsize,
}

#[async_trait]
impl CommandHandler for Doubler {
    async fn handle(
        &self,
        _tx: &mut DbTx,
        command: &CommandEnvelope,
    ) -> Result<CommandReply, CommandError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let n = command.payload["n"].as_i64().unwrap_or(0);
        match n {
            -2 => Err(CommandError::Unavailable("dependency down".into())),
            -1 => Ok(CommandReply::Err {
                problem: Problem::new(422, "negative", "Negative numbers are refused", None),
            }),
            n => Ok(CommandReply::Ok {
                payload: json!({ "doubled": n * 2, "run": run }),
            }),
        }
    }
}

async fn idempotent_request_reply(bus: Arc<dyn Bus>, db: Db) {
    let cancel = CancellationToken::new();
    let handler = Arc::new(Doubler::default());
    let server = serve_command(
        bus.clone(),
        db,
        "math",
        "double",
        handler.clone(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let tenant = TenantId(Uuid::now_v7());
    let timeout = Duration::from_secs(5);

    let env = command_envelope(tenant, "key-1", None, &json!({ "n": 21 })).unwrap();
    let first = send_command(bus.as_ref(), "math", "double", &env, timeout)
        .await
        .unwrap();
    assert_eq!(first, json!({ "doubled": 42, "run": 1 }));
    // The same key again: the stored reply, the handler does not run.
    let second = send_command(bus.as_ref(), "math", "double", &env, timeout)
        .await
        .unwrap();
    assert_eq!(second, first);
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1);

    // A new key runs the handler.
    let env2 = command_envelope(tenant, "key-2", None, &json!({ "n": 1 })).unwrap();
    let third = send_command(bus.as_ref(), "math", "double", &env2, timeout)
        .await
        .unwrap();
    assert_eq!(third, json!({ "doubled": 2, "run": 2 }));

    // A key reused for another payload, or by another tenant, is refused.
    let reused = command_envelope(tenant, "key-1", None, &json!({ "n": 5 })).unwrap();
    let err = send_command(bus.as_ref(), "math", "double", &reused, timeout)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SendCommandError::Rejected(p) if p.code == "idempotency_key_reused"),
        "{err:?}"
    );
    let other_tenant =
        command_envelope(TenantId(Uuid::now_v7()), "key-1", None, &json!({ "n": 21 })).unwrap();
    let err = send_command(bus.as_ref(), "math", "double", &other_tenant, timeout)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SendCommandError::Rejected(p) if p.code == "idempotency_key_reused"),
        "{err:?}"
    );

    // A refusal is a reply like any other: stored, replayed.
    let refused = command_envelope(tenant, "key-3", None, &json!({ "n": -1 })).unwrap();
    for _ in 0..2 {
        let err = send_command(bus.as_ref(), "math", "double", &refused, timeout)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SendCommandError::Rejected(p) if p.code == "negative" && p.status == 422),
            "{err:?}"
        );
    }
    assert_eq!(handler.runs.load(Ordering::SeqCst), 3);

    // A handler failure stores nothing: the retry runs the handler again.
    let failing = command_envelope(tenant, "key-4", None, &json!({ "n": -2 })).unwrap();
    for _ in 0..2 {
        let err = send_command(bus.as_ref(), "math", "double", &failing, timeout)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SendCommandError::Rejected(p) if p.code == "command_unavailable"),
            "{err:?}"
        );
    }
    assert_eq!(handler.runs.load(Ordering::SeqCst), 5);

    // Concurrent duplicates of one key: one run, one answer for all.
    let concurrent = command_envelope(tenant, "key-5", None, &json!({ "n": 7 })).unwrap();
    let replies = futures::future::join_all((0..8).map(|_| {
        let bus = bus.clone();
        let env = concurrent.clone();
        async move { send_command(bus.as_ref(), "math", "double", &env, timeout).await }
    }))
    .await;
    for r in &replies {
        assert_eq!(r.as_ref().unwrap(), &json!({ "doubled": 14, "run": 6 }));
    }
    assert_eq!(handler.runs.load(Ordering::SeqCst), 6);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

async fn no_responders_and_timeouts(bus: Arc<dyn Bus>) {
    let env = command_envelope(TenantId(Uuid::now_v7()), "k", None, &json!({})).unwrap();
    let started = Instant::now();
    let err = bus
        .request("nobody", "home", &env, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::NoResponders { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // A server that never answers: the sender times out.
    let mut silent = bus.serve("slow", "never").await.unwrap();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(c) = silent.next().await {
            held.push(c);
        }
    });
    let started = Instant::now();
    let err = bus
        .request("slow", "never", &env, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    keep.abort();
}

/// Several servers of one command share the requests.
async fn servers_share_the_load(bus: Arc<dyn Bus>, db: Db) {
    let cancel = CancellationToken::new();
    let a = Arc::new(Doubler::default());
    let b = Arc::new(Doubler::default());
    for h in [a.clone(), b.clone()] {
        serve_command(bus.clone(), db.clone(), "math", "share", h, cancel.clone())
            .await
            .unwrap();
    }
    let tenant = TenantId(Uuid::now_v7());
    for i in 0..20 {
        let env = command_envelope(tenant, format!("share-{i}"), None, &json!({ "n": i })).unwrap();
        send_command(bus.as_ref(), "math", "share", &env, Duration::from_secs(5))
            .await
            .unwrap();
    }
    let (ra, rb) = (a.runs.load(Ordering::SeqCst), b.runs.load(Ordering::SeqCst));
    assert_eq!(ra + rb, 20);
    assert!(ra > 0 && rb > 0, "{ra} / {rb}");
    cancel.cancel();
}

#[tokio::test]
async fn commands_over_nats_with_postgres_are_idempotent() {
    logs();
    let (_url, store) = pg_store().await;
    let bus: Arc<dyn Bus> = Arc::new(nats_bus().await);
    idempotent_request_reply(bus.clone(), store.db().clone()).await;
    no_responders_and_timeouts(bus.clone()).await;
    servers_share_the_load(bus, store.db().clone()).await;
}

#[tokio::test]
async fn commands_in_process_with_sqlite_are_idempotent() {
    logs();
    let (_dir, _url, store) = sqlite_store().await;
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new(store.clone()));
    idempotent_request_reply(bus.clone(), store.db().clone()).await;
    no_responders_and_timeouts(bus.clone()).await;
    servers_share_the_load(bus, store.db().clone()).await;
}

#[tokio::test]
async fn traceparent_travels_with_a_nats_command() {
    logs();
    let bus = nats_bus().await;
    let mut stream = bus.serve("trace", "me").await.unwrap();
    let server = tokio::spawn(async move {
        let c = stream.next().await.unwrap();
        let tp = c.envelope.traceparent.clone();
        c.responder
            .reply(CommandReply::Ok {
                payload: json!({ "traceparent": tp }),
            })
            .await
            .unwrap();
    });
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut env = command_envelope(TenantId(Uuid::now_v7()), "t", None, &json!({})).unwrap();
    env.traceparent = Some(tp.to_owned());
    let reply = send_command(&bus, "trace", "me", &env, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply, json!({ "traceparent": tp }));
    server.await.unwrap();
}

/// Reads with a second connection from the pool its command's transaction came from, as
/// `conversation.apply` does when it loads the conversation.
struct SecondConnection {
    db: Db,
}

#[async_trait]
impl CommandHandler for SecondConnection {
    async fn handle(
        &self,
        _tx: &mut DbTx,
        command: &CommandEnvelope,
    ) -> Result<CommandReply, CommandError> {
        let Db::Postgres(pool) = &self.db else {
            panic!("not PostgreSQL")
        };
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(pool)
            .await
            .map_err(|e| CommandError::Unavailable(format!("no second connection: {e}")))?;
        Ok(CommandReply::Ok {
            payload: json!({ "n": command.payload["n"], "one": one }),
        })
    }
}

/// As many commands at once as the pool has connections, each needing a second connection:
/// every one is answered (none waits out the pool's acquire timeout and fails).
#[tokio::test]
async fn concurrent_commands_never_starve_their_pool() {
    logs();
    let (url, _store) = pg_store().await;
    let opts = postvak_platform::db::DbOptions {
        max_connections: 4,
        connect_timeout: Duration::from_secs(2),
        ..postvak_platform::db::DbOptions::default()
    };
    let db = postvak_platform::db::connect(&url, &opts).await.unwrap();
    let bus: Arc<dyn Bus> = Arc::new(nats_bus().await);
    let cancel = CancellationToken::new();
    let server = serve_command(
        bus.clone(),
        db.clone(),
        "pool",
        "read",
        Arc::new(SecondConnection { db }),
        cancel.clone(),
    )
    .await
    .unwrap();
    let tenant = TenantId(Uuid::now_v7());
    let sends = (0..16).map(|n| {
        let bus = bus.clone();
        async move {
            let env = command_envelope(tenant, format!("k-{n}"), None, &json!({ "n": n })).unwrap();
            send_command(bus.as_ref(), "pool", "read", &env, Duration::from_secs(20)).await
        }
    });
    let replies = futures::future::join_all(sends).await;
    for (n, r) in replies.into_iter().enumerate() {
        assert_eq!(r.unwrap(), json!({ "n": n, "one": 1 }), "command {n}");
    }
    cancel.cancel();
    server.await.unwrap();
}
