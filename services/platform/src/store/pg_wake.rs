//! Waking log tailers across processes on PostgreSQL.
//!
//! In distributed mode the relay, the SSE streams and the workers that commit events are in
//! different processes; an in-process [`Notify`] reaches none of them, so a tailer found
//! another process's commit only at its next poll (the relay's every 500 ms, a stream's every
//! second). Two hops through the relay made a mail wait up to a second before routing saw it.
//!
//! `LISTEN`/`NOTIFY` carries the hint:
//! - A process that committed events announces it ([`Wake::announce`]): local tailers wake at
//!   once, and one background task sends `NOTIFY postvak_log` on a connection of its own (one
//!   statement, asynchronous commit), after the commit, never inside the appending
//!   transaction. (A `NOTIFY` in the appending
//!   transaction would take PostgreSQL's notify-queue lock at commit and hold it through the
//!   commit's WAL flush, serialising every appending transaction of the cluster.) Announcements
//!   made while one `NOTIFY` is in flight are folded into the next, so a busy process sends at
//!   most one per round trip plus [`COALESCE`].
//! - The first tailer of a process ([`Wake::signal`]) starts one listener task holding a
//!   dedicated pool connection; every notification wakes this process's tailers.
//!
//! The notification is only a hint: it carries nothing, may be lost (a listener reconnecting,
//! a crash between commit and `NOTIFY`), and tailers still poll, so correctness never depends
//! on it. Both tasks hold only weak references and end within [`IDLE_CHECK`] after the store is
//! dropped or its pool closed.

use sqlx::postgres::{PgConnection, PgListener, PgPool};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// The channel every store of a database announces on.
pub const CHANNEL: &str = "postvak_log";
/// The announcer's connection commits asynchronously: the hint need not survive a crash and
/// should not wait for a WAL flush of its own. Set once, so each announcement is one
/// statement (its own transaction) and one round trip.
const ANNOUNCER_SETUP: &str = "SET synchronous_commit TO off";
const NOTIFY_SQL: &str = "NOTIFY postvak_log";
/// Pause after each `NOTIFY`: announcements arriving meanwhile go out together.
const COALESCE: Duration = Duration::from_millis(1);
/// How often the idle tasks look whether their store is still there.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// Pause before retrying after the database refused.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Wake {
    pool: PgPool,
    /// What this process's tailers wait on.
    signal: Arc<Notify>,
    /// Commits of this process not yet announced (`notify_one` keeps a permit, so none is
    /// missed while a `NOTIFY` is in flight).
    pending: Arc<Notify>,
    announcer: OnceLock<()>,
    listener: OnceLock<()>,
}

impl Wake {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            signal: Arc::new(Notify::new()),
            pending: Arc::new(Notify::new()),
            announcer: OnceLock::new(),
            listener: OnceLock::new(),
        }
    }

    /// This process committed events: wake its tailers and tell the other processes.
    pub(crate) fn announce(&self) {
        self.signal.notify_waiters();
        if self.announcer.get().is_none()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
            && self.announcer.set(()).is_ok()
        {
            rt.spawn(announce_loop(
                self.pool.clone(),
                Arc::downgrade(&self.pending),
            ));
        }
        self.pending.notify_one();
    }

    /// What tailers wait on: notified after this process's commits and, once this has been
    /// called inside a runtime, after other processes' announcements.
    pub(crate) fn signal(&self) -> Arc<Notify> {
        if self.listener.get().is_none()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
            && self.listener.set(()).is_ok()
        {
            rt.spawn(listen_loop(self.pool.clone(), Arc::downgrade(&self.signal)));
        }
        self.signal.clone()
    }
}

async fn announce_loop(pool: PgPool, pending: Weak<Notify>) {
    // A connection of its own (taken out of the pool), set up once.
    let mut conn: Option<PgConnection> = None;
    loop {
        let Some(p) = pending.upgrade() else { return };
        if pool.is_closed() {
            return;
        }
        tokio::select! {
            () = p.notified() => {}
            () = tokio::time::sleep(IDLE_CHECK) => continue,
        }
        drop(p);
        let sent = match conn.as_mut() {
            Some(c) => sqlx::raw_sql(NOTIFY_SQL).execute(c).await.map(|_| ()),
            None => match announcer(&pool).await {
                Ok(mut c) => {
                    let r = sqlx::raw_sql(NOTIFY_SQL).execute(&mut c).await.map(|_| ());
                    conn = Some(c);
                    r
                }
                Err(e) => Err(e),
            },
        };
        match sent {
            Ok(()) => tokio::time::sleep(COALESCE).await,
            Err(e) => {
                // Tailers in other processes find the events at their next poll.
                tracing::debug!(error = %e, "cannot announce appended events");
                conn = None;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// The announcer's own connection.
async fn announcer(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::raw_sql(ANNOUNCER_SETUP).execute(&mut conn).await?;
    Ok(conn)
}

async fn listen_loop(pool: PgPool, signal: Weak<Notify>) {
    'connect: loop {
        if signal.strong_count() == 0 || pool.is_closed() {
            return;
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for appended events");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::debug!(error = %e, "cannot listen for appended events");
            tokio::time::sleep(RETRY).await;
            continue;
        }
        loop {
            let received = tokio::select! {
                r = listener.try_recv() => Some(r),
                () = tokio::time::sleep(IDLE_CHECK) => None,
            };
            let Some(s) = signal.upgrade() else { return };
            match received {
                // A notification; or the connection was lost (and is reopened by the next
                // call) — notifications may have been missed, so wake the tailers either way.
                Some(Ok(_)) => s.notify_waiters(),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "lost the listening connection");
                    s.notify_waiters();
                    drop(s);
                    tokio::time::sleep(RETRY).await;
                    continue 'connect;
                }
                None => {
                    if pool.is_closed() {
                        return;
                    }
                }
            }
        }
    }
}
