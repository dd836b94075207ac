//! kill -9 of the SMTP process while clients stream 1,000 mails: every mail that got its 250
//! exists exactly once after the restart, and the senders' retries add each missing one once.

use crate::helpers::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const MAILS: usize = 1000;
const CLIENTS: usize = 4;
const KILL_AFTER: usize = 250;

async fn spawn_daemon(env: &TestEnv) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postvak-ingest-smtpd"))
        .env("POSTVAK_INGEST_DATABASE_URL", &env.url)
        .env("POSTVAK_INGEST_MASTER_KEY", &env.master_b64)
        .env(
            "POSTVAK_INGEST_SMTP",
            r#"{"addr":"127.0.0.1:0","max_messages_per_minute_per_peer":0}"#,
        )
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the daemon starts within a minute")
        .unwrap()
        .expect("the daemon printed its port");
    let port = line.strip_prefix("listening ").unwrap().parse().unwrap();
    (child, port)
}

fn crash_mail(i: usize) -> Vec<u8> {
    // 2–10 KB each.
    let body = format!(
        "mail {i}\n{}",
        "lorem ipsum dolor sit amet ".repeat(80 + (i * 37) % 300)
    );
    mail(
        &format!("crash-{i}@example.org"),
        &format!("crash {i}"),
        "",
        &body,
    )
}

/// Sends mails `i ≡ k (mod CLIENTS)` in order until the connection breaks; records each 250.
async fn stream(port: u16, k: usize, acked: Arc<Mutex<HashSet<usize>>>) -> usize {
    let Ok(mut c) = RawSmtp::connect(port).await else {
        return 0;
    };
    let mut sent = 0;
    for i in (k..MAILS).step_by(CLIENTS) {
        match c.send("support@acme.test", &crash_mail(i)).await {
            Ok(250) => {
                acked.lock().unwrap().insert(i);
                sent += 1;
            }
            Ok(code) => panic!("mail {i} answered {code}"),
            Err(_) => break,
        }
    }
    sent
}

async fn counts(env: &TestEnv) -> HashMap<usize, usize> {
    let mut out = HashMap::new();
    for m in env.messages().await {
        let id = m.message_id_header.unwrap();
        let i: usize = id
            .strip_prefix("crash-")
            .unwrap()
            .strip_suffix("@example.org")
            .unwrap()
            .parse()
            .unwrap();
        *out.entry(i).or_insert(0) += 1;
    }
    out
}

async fn kill_9_while_streaming_loses_and_doubles_nothing(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (mut daemon, port) = spawn_daemon(&env).await;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| tokio::spawn(stream(port, k, acked.clone())))
        .collect();
    // kill -9 in the middle of the stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < KILL_AFTER {
        assert!(tokio::time::Instant::now() < deadline, "the stream stalled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked: HashSet<usize> = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= KILL_AFTER && acked.len() < MAILS,
        "killed after {} acks",
        acked.len()
    );

    // Restart: every acknowledged mail is there exactly once; nothing is there twice.
    let (mut daemon, port) = spawn_daemon(&env).await;
    let after_crash = counts(&env).await;
    for i in &acked {
        assert_eq!(
            after_crash.get(i),
            Some(&1),
            "acknowledged mail {i} after the crash"
        );
    }
    assert!(after_crash.values().all(|&n| n == 1));
    let unacked_but_stored = after_crash.keys().filter(|i| !acked.contains(i)).count();

    // The senders retry everything they have not seen acknowledged — and, to be thorough,
    // everything else too: each mail ends up stored exactly once.
    let again = Arc::new(Mutex::new(HashSet::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| tokio::spawn(stream(port, k, again.clone())))
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(again.lock().unwrap().len(), MAILS);
    let end = counts(&env).await;
    assert_eq!(end.len(), MAILS);
    assert!(end.values().all(|&n| n == 1), "a mail was doubled");
    eprintln!(
        "{backend:?}: killed after {} acks; {unacked_but_stored} more were committed without their 250",
        acked.len()
    );
    daemon.start_kill().unwrap();
    let _ = daemon.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_streaming_loses_and_doubles_nothing_sqlite() {
    kill_9_while_streaming_loses_and_doubles_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_streaming_loses_and_doubles_nothing_postgres() {
    kill_9_while_streaming_loses_and_doubles_nothing(Backend::Postgres).await;
}
