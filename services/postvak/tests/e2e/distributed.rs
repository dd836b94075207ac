//! Distributed mode: PostgreSQL + NATS JetStream, as in Kubernetes.

use crate::helpers::*;
use postvak_platform::testkit::{self, TempDir};
use std::time::{Duration, Instant};

struct Env {
    dir: TempDir,
    db_url: String,
    prefix: String,
    master: String,
}

impl Env {
    async fn new() -> Env {
        Env {
            dir: TempDir::new(),
            db_url: testkit::fresh_postgres_database().await,
            prefix: testkit::unique_prefix(),
            master: postvak_platform::crypto::MasterKey::generate_base64(),
        }
    }

    fn command(&self) -> std::process::Command {
        let mut c = command(&self.dir);
        c.env("POSTVAK_CELLS__EU1__DATABASE_URL", &self.db_url)
            .env("POSTVAK_CELLS__EU1__NATS_URL", testkit::nats_url())
            .env("POSTVAK_BUS__PREFIX", &self.prefix)
            .env("POSTVAK_SECURITY__MASTER_KEY", &self.master);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let mut c = self.command();
        c.args(args);
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "postvak {args:?}: {out}{err}");
        out.trim().to_owned()
    }
}

#[tokio::test]
async fn postgres_and_nats_relay_every_event_and_audit_detects_tampering() {
    let env = Env::new().await;
    env.ok(&["migrate"]);
    let tenant = env.ok(&["admin", "create-tenant", "--name", "Acme"]);
    for i in 0..5 {
        env.ok(&[
            "admin",
            "create-inbox",
            "--tenant",
            &tenant,
            "--name",
            &format!("Inbox {i}"),
            "--address",
            &format!("in{i}@acme.example"),
        ]);
    }
    let key = env.ok(&["admin", "issue-key", "--tenant", &tenant]);
    // 1 tenant + 5 inboxes + 1 key = 7 events.
    let server = Server::start({
        let mut c = env.command();
        c.arg("serve");
        c
    });
    let c = client();
    let ready = c.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    let page: serde_json::Value = c
        .get(server.url("/v1/inboxes"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 5);

    // The relay publishes every committed event to the cell's JetStream stream, once.
    let nats = async_nats::connect(testkit::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let name = postvak_proto::subjects::jetstream_name(&env.prefix, "eu1");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut count = 0;
    while Instant::now() < deadline {
        if let Ok(mut s) = js.get_stream(&name).await {
            count = s.info().await.unwrap().state.messages;
            if count >= 7 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count, 7, "events on JetStream");
    assert!(server.stop().success());

    assert!(env.ok(&["audit", "verify"]).contains("intact"));

    // Tamper as a superuser would (the app role can't): flip a payload byte.
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args([env.db_url.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql(
        "SET session_replication_role = replica; \
         UPDATE events SET payload = set_byte(payload, 20, get_byte(payload, 20) # 1) \
         WHERE global_position = (SELECT max(global_position) FROM events)",
    );
    let mut cmd = env.command();
    cmd.args(["audit", "verify"]);
    let (code, out, err) = run(cmd);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("Modified"), "{out}");
}

/// Two cells (regions): each tenant's events live only in its own cell's database, and each
/// cell relays to its own stream.
#[tokio::test]
async fn tenants_live_only_in_their_cell() {
    let env = Env::new().await;
    let db_us = testkit::fresh_postgres_database().await;
    let two = |mut c: std::process::Command| {
        c.env("POSTVAK_CELLS__US1__DATABASE_URL", &db_us)
            .env("POSTVAK_CELLS__US1__NATS_URL", testkit::nats_url())
            .env("POSTVAK_DEFAULT_CELL", "eu1")
            .env("POSTVAK_DIRECTORY_DATABASE_URL", &env.db_url);
        c
    };
    let ok = |args: &[&str]| {
        let mut c = two(env.command());
        c.args(args);
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "postvak {args:?}: {out}{err}");
        out.trim().to_owned()
    };
    ok(&["migrate"]);
    let eu = ok(&[
        "admin",
        "create-tenant",
        "--name",
        "Huisarts Noord",
        "--cell",
        "eu1",
    ]);
    let us = ok(&[
        "admin",
        "create-tenant",
        "--name",
        "Clinic West",
        "--cell",
        "us1",
    ]);
    ok(&[
        "admin",
        "create-inbox",
        "--tenant",
        &eu,
        "--name",
        "Intake",
        "--address",
        "intake@noord.example",
    ]);
    ok(&[
        "admin",
        "create-inbox",
        "--tenant",
        &us,
        "--name",
        "Intake",
        "--address",
        "intake@west.example",
    ]);
    let count = |db: &str, tenant: &str| -> i64 {
        let out = std::process::Command::new("psql")
            .args([
                db,
                "-At",
                "-c",
                &format!("SELECT count(*) FROM events WHERE tenant_id = '{tenant}'"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    assert_eq!((count(&env.db_url, &eu), count(&env.db_url, &us)), (2, 0));
    assert_eq!((count(&db_us, &us), count(&db_us, &eu)), (2, 0));
    let server = Server::start({
        let mut c = two(env.command());
        c.arg("serve");
        c
    });
    let ready: serde_json::Value = client()
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "cell:eu1:database",
            "cell:eu1:bus",
            "cell:us1:database",
            "cell:us1:bus"
        ]
    );
    let nats = async_nats::connect(testkit::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    for cell in ["eu1", "us1"] {
        let name = postvak_proto::subjects::jetstream_name(&env.prefix, cell);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = match js.get_stream(&name).await {
                Ok(mut s) => s.info().await.unwrap().state.messages,
                Err(_) => 0,
            };
            if n == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cell {cell}: {n} events on its stream"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
