//! A reply and its parent committed at the same instant by two ingest processes share one
//! conversation (ADR 0021). Deterministic: the test holds a lock that stops the first
//! delivery's transaction after its thread lookup and before its commit, starts the second
//! delivery while the first is stopped there, and lets both go only once the second waits too.

use crate::helpers::*;
use postvak_ingest::{Ingestor, pipeline};
use sqlx::Connection;
use std::time::{Duration, Instant};

/// Backends of this database waiting for a lock, as the owner sees them.
async fn waiting(owner: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(owner)
    .await
    .unwrap()
}

async fn wait_for_waiting(owner: &mut sqlx::PgConnection, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while waiting(owner).await < n {
        assert!(
            Instant::now() < deadline,
            "{n} deliveries never reached their lock wait"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn_delivery(
    env: &TestEnv,
    ingestor: Ingestor,
    raw: Vec<u8>,
) -> tokio::task::JoinHandle<pipeline::Delivery> {
    let (ctx, inbox) = (env.ctx.clone(), env.inbox);
    tokio::spawn(async move {
        let raw = std::sync::Arc::new(raw);
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
    })
}

/// `first` and `second` race; returns both deliveries.
async fn race(
    env: &TestEnv,
    first: Vec<u8>,
    second: Vec<u8>,
) -> (pipeline::Delivery, pipeline::Delivery) {
    // Two ingest processes: each its own pipeline and commit stage over the same database.
    let (a, b) = (
        Ingestor::new(env.cells.clone()),
        Ingestor::new(env.cells.clone()),
    );
    // Warm both (index key, data key) so that nothing but the delivery itself takes locks.
    let mut owner = sqlx::PgConnection::connect(&env.url).await.unwrap();
    let mut blocker = sqlx::PgConnection::connect(&env.url).await.unwrap();
    // A delivery's transaction writes `ingest_messages` after its lookup, its events and its
    // blobs, in its last statement before COMMIT: a SHARE lock on the table stops it there.
    sqlx::raw_sql("BEGIN; LOCK TABLE ingest_messages IN SHARE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let first = spawn_delivery(env, a, first);
    wait_for_waiting(&mut owner, 1).await;
    let second = spawn_delivery(env, b, second);
    // The second waits too: for the first's thread lock (or, were there none, for the table
    // lock after a lookup that could not see the first's index rows).
    wait_for_waiting(&mut owner, 2).await;
    sqlx::raw_sql("COMMIT").execute(&mut blocker).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .expect("first delivery finished")
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("second delivery finished")
        .unwrap();
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reply_and_parent_at_the_same_instant_share_a_conversation_postgres() {
    let env = TestEnv::new(Backend::Postgres).await;
    // Warm-up: the tenant's index key and data key exist before the race.
    env.deliver(env.inbox, &mail("warm@example.org", "warm", "", "warm"))
        .await;

    // The parent commits first, the reply is looked up while the parent is in flight.
    let parent = mail(
        "parent-1@example.org",
        "Question",
        "",
        "Where is my parcel?",
    );
    let reply = mail(
        "reply-1@example.org",
        "Re: Question",
        "In-Reply-To: <parent-1@example.org>\r\nReferences: <parent-1@example.org>",
        "Also: it was a gift.",
    );
    let (p, r) = race(&env, parent, reply).await;
    assert!(!p.duplicate && !r.duplicate);
    assert_eq!(
        p.conversation_id, r.conversation_id,
        "the reply joins its parent's conversation"
    );
    assert!(!r.new_thread);

    // The other way round: the reply is in flight when its parent arrives; the parent finds
    // the conversation the reply opened under the parent's Message-ID.
    let reply = mail(
        "reply-2@example.org",
        "Re: Invoice",
        "In-Reply-To: <parent-2@example.org>",
        "Forgot the attachment.",
    );
    let parent = mail(
        "parent-2@example.org",
        "Invoice",
        "",
        "Here is the invoice.",
    );
    let (r, p) = race(&env, reply, parent).await;
    assert_eq!(
        p.conversation_id, r.conversation_id,
        "the parent joins the conversation its earlier-arriving reply opened"
    );

    // What a consumer sees: the stored events say the same.
    let msgs = env.messages().await;
    let conv = |id: &str| {
        msgs.iter()
            .find(|m| m.message_id_header.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("{id} stored"))
            .conversation_id
    };
    assert_eq!(conv("parent-1@example.org"), conv("reply-1@example.org"));
    assert_eq!(conv("parent-2@example.org"), conv("reply-2@example.org"));
    assert_ne!(conv("parent-1@example.org"), conv("parent-2@example.org"));
}
