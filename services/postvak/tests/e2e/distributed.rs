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
        env.ok(&["admin", "create-inbox", "--tenant", &tenant, "--name", &format!("Inbox {i}"), "--address", &format!("in{i}@acme.example")]);
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
    let page: serde_json::Value = c.get(server.url("/v1/inboxes")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
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
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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
