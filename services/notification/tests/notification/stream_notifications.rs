//! An agent connected to `/v1/stream` receives `event: notification` when a conversation is
//! assigned to them or they are mentioned — and not when they turned `stream` off.

use crate::helpers::*;
use crate::smtp_sink::SmtpSink;
use postvak_core::conversation::{Actor, ConversationCommand};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

fn now_us() -> i64 {
    postvak_platform::store::micros(time::OffsetDateTime::now_utc())
}

/// An open `/v1/stream` of one agent, read event by event.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    async fn open(app: &TestApp, who: &Agent) -> Self {
        let resp = app
            .client
            .get(format!("{}/v1/stream", app.base))
            .bearer_auth(&who.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut s = Self {
            resp,
            buf: String::new(),
        };
        // The first frame (`retry:`) says the stream is running from the head of the log.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !s.buf.contains("retry:") {
            s.read_some(deadline).await;
        }
        s
    }

    async fn read_some(&mut self, deadline: tokio::time::Instant) -> bool {
        match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
            Ok(Ok(Some(b))) => {
                self.buf.push_str(&String::from_utf8_lossy(&b));
                true
            }
            Ok(other) => panic!("the stream ended: {other:?}"),
            Err(_) => false,
        }
    }

    /// The next `event: notification`'s data (skipping other events), or `None` by `wait`.
    async fn next_notification(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                if frame.lines().any(|l| l == "event: notification") {
                    let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
                    return Some(serde_json::from_str(data).unwrap());
                }
            }
            if !self.read_some(deadline).await {
                return None;
            }
        }
    }
}

async fn mention(env: &TestEnv, t: &Tenant, conversation: Uuid, who: Uuid) {
    env.service
        .change(&t.ctx, conversation, None, |_| {
            Ok(vec![ConversationCommand::AddNote {
                note_id: Uuid::now_v7(),
                body: "@alice have a look".into(),
                mentions: vec![who],
                by: Actor::Admin(t.admin.id),
                at_us: now_us(),
            }])
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn an_agent_on_the_stream_is_told_when_assigned_or_mentioned() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let mut sink = SmtpSink::new();
        sink.start(false).await;
        env.start_notification_to(&sink);
        let app = env.spawn_app().await;
        let t = &env.acme;
        let c = env
            .deliver(
                t,
                &mail(&t.address, "sse@example.org", "Help", "", "Please."),
            )
            .await;
        let id = c.conversation_id;
        let mut alice = Stream::open(&app, &t.alice).await;
        let mut admin = Stream::open(&app, &t.admin).await;

        env.assign(t, id, t.alice.id).await;
        let n = alice
            .next_notification(Duration::from_secs(20))
            .await
            .expect("no notification for the assignment");
        assert_eq!(n["kind"], "assigned", "{backend:?} {n}");
        assert_eq!(n["conversation_id"], id.to_string());
        assert_eq!(n["actor"], t.admin.id.to_string());

        mention(&env, t, id, t.alice.id).await;
        let n = alice
            .next_notification(Duration::from_secs(20))
            .await
            .expect("no notification for the mention");
        assert_eq!(n["kind"], "mentioned", "{n}");
        assert_eq!(n["conversation_id"], id.to_string());

        // Nobody else's stream carries Alice's notifications.
        assert!(
            admin
                .next_notification(Duration::from_millis(1500))
                .await
                .is_none()
        );

        // Alice turns the stream off: a mention in another conversation is not pushed; on
        // again, the next mention is.
        let prefs =
            |stream: bool| json!({"delivery": "each", "digest_secs": 3600, "stream": stream});
        let r = app
            .call(
                "PUT",
                "/v1/me/notification-preferences",
                &t.alice,
                Some(prefs(false)),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["stream"], false);
        let quiet = env
            .deliver(
                t,
                &mail(&t.address, "quiet@example.org", "Quiet", "", "Shh."),
            )
            .await
            .conversation_id;
        mention(&env, t, quiet, t.alice.id).await;
        // Recorded (it is mailed), but not pushed.
        sink.wait_for(3).await;
        let r = app
            .call(
                "PUT",
                "/v1/me/notification-preferences",
                &t.alice,
                Some(prefs(true)),
            )
            .await;
        assert_eq!(r.body["stream"], true);
        let loud = env
            .deliver(t, &mail(&t.address, "loud@example.org", "Loud", "", "Hey."))
            .await
            .conversation_id;
        mention(&env, t, loud, t.alice.id).await;
        let n = alice
            .next_notification(Duration::from_secs(20))
            .await
            .expect("no notification after turning the stream on");
        assert_eq!(
            n["conversation_id"],
            loud.to_string(),
            "the mention made while the stream was off was pushed"
        );
        sink.stop().await;
    }
}
